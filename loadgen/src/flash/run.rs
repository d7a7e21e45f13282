//! The parent of a flash crowd: starts (and with `--pin`, pins) the origin
//! and the relays unless given, splits the crowd over worker processes when
//! one cannot hold it, starts them all on one shared start time, watches
//! the relays' CPU over the crowd, and merges the workers' results.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use mlcache::protocol::now_ns;

use super::report::{FlashReport, RelayUse, WorkerSummary};
use super::worker::{edge_info, run_worker, WorkerResult, WorkerSpec};
use super::FlashOpts;
use crate::child::Listening;
use crate::demo::spawn_on;
use crate::pin::{PinReport, Plan};
use crate::report::{self, histogram, Percentiles};
use crate::sys::{self, CpuMeter};

/// Descriptors kept back for everything that is not a viewer connection.
const FD_RESERVE: u64 = 128;

/// A relay the crowd goes through.
struct Relay {
    name: String,
    addr: SocketAddr,
    pid: Option<u32>,
    /// Whether viewers connect to it (an edge relay).
    edge: bool,
}

/// Starts `current_exe flash-worker --spec JSON` and reads its result line.
async fn worker_process(spec: &WorkerSpec) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the loadgen executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("flash-worker")
        .arg("--spec")
        .arg(serde_json::to_string(spec)?)
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().context("starting a flash worker")
}

/// The result line a worker printed.
fn parse_result(stdout: &[u8]) -> anyhow::Result<WorkerResult> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .context("a flash worker printed no result")?;
    Ok(serde_json::from_str(line)?)
}

/// Runs the crowd and returns the merged report. Progress goes to stderr.
pub async fn run(opts: FlashOpts, cancel: CancellationToken) -> anyhow::Result<FlashReport> {
    anyhow::ensure!(opts.viewers > 0, "--viewers must be at least 1");
    anyhow::ensure!(opts.chunks > 0, "--chunks must be at least 1");
    // Before any child starts, so relays and workers inherit the raised limit.
    let (soft, hard) = sys::raise_fd_limit();
    let plan = if opts.pin { Some(Plan::new()?) } else { None };
    if let Some(p) = &plan {
        p.pin_self().context("pinning the loadgen")?;
    }
    let relay_cpus = plan.as_ref().map(|p| p.relay.as_slice());
    let s = |v: &str| v.to_string();

    // The origin and the relays: given, or started here.
    let mut owned: Vec<Listening> = Vec::new();
    let mut procs: Vec<(String, u32)> = vec![("loadgen".into(), std::process::id())];
    let origin = match opts.origin {
        Some(o) => {
            if let (Some(p), Some(pid)) = (&plan, opts.origin_pid) {
                crate::pin::set(pid, &p.rest).context("pinning the origin")?;
            }
            if let Some(pid) = opts.origin_pid {
                procs.push(("origin".into(), pid));
            }
            o
        }
        None => {
            let o = spawn_on(
                "origin",
                &crate::child::origin_args(opts.cadence, opts.chunk_size, &opts.publish),
                None,
            )
            .await?;
            let addr = o.addr;
            if let Some(pid) = o.pid() {
                procs.push(("origin".into(), pid));
            }
            owned.push(o);
            addr
        }
    };
    let mut relays: Vec<Relay> = Vec::new();
    if opts.relay.is_empty() {
        anyhow::ensure!((1..=2).contains(&opts.hops), "--hops must be 1 or 2");
        anyhow::ensure!(opts.edge_relays >= 1, "--edge-relays must be at least 1");
        let args = |id: String, upstream: Option<SocketAddr>| {
            let mut a = vec![
                s("relay"),
                s("--listen"),
                s("127.0.0.1:0"),
                s("--allow-origin"),
                format!("http://{origin}"),
                s("--id"),
                id,
            ];
            if let Some(u) = upstream {
                a.extend([s("--upstream"), format!("http://{u}")]);
            }
            a.extend(opts.relay_flag.iter().cloned());
            a
        };
        let upstream = if opts.hops == 2 {
            let a = spawn_on("relay A", &args(s("relay-a"), None), relay_cpus).await?;
            relays.push(Relay {
                name: "relay A".into(),
                addr: a.addr,
                pid: a.pid(),
                edge: false,
            });
            let addr = a.addr;
            owned.push(a);
            Some(addr)
        } else {
            None
        };
        for i in 0..opts.edge_relays {
            let name = if opts.edge_relays == 1 {
                s("relay B")
            } else {
                format!("relay B{}", i + 1)
            };
            let r = spawn_on(
                &name,
                &args(format!("relay-b{}", i + 1), upstream),
                relay_cpus,
            )
            .await?;
            relays.push(Relay {
                name,
                addr: r.addr,
                pid: r.pid(),
                edge: true,
            });
            owned.push(r);
        }
    } else {
        for (i, a) in opts.relay.iter().enumerate() {
            let pid = opts.relay_pid.get(i).copied();
            if let (Some(p), Some(pid)) = (&plan, pid) {
                p.pin_relays(&[pid]).context("pinning a relay")?;
            }
            relays.push(Relay {
                name: format!("relay {a}"),
                addr: *a,
                pid,
                edge: true,
            });
        }
    }
    for r in &relays {
        if let Some(pid) = r.pid {
            procs.push((r.name.clone(), pid));
        }
    }
    let targets: Vec<SocketAddr> = relays.iter().filter(|r| r.edge).map(|r| r.addr).collect();

    let info = edge_info(origin, opts.stream)
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(info.cadence_ms > 0, "the origin publishes no live cadence");

    // How many viewers one process can hold.
    let fds = soft.saturating_sub(FD_RESERVE) as usize;
    let mut per_process = if opts.h2 {
        fds * opts.per_conn.max(1)
    } else {
        fds
    };
    if opts.max_viewers_per_process > 0 {
        per_process = per_process.min(opts.max_viewers_per_process);
    }
    anyhow::ensure!(
        per_process > 0,
        "no descriptors for viewers (soft limit {soft}, hard limit {hard})"
    );
    let processes = opts.viewers.div_ceil(per_process);
    let sources = if opts.sources == 0 {
        let conns = if opts.h2 {
            opts.viewers.div_ceil(opts.per_conn.max(1))
        } else {
            opts.viewers
        };
        conns.div_ceil(crate::net::PORTS_PER_SOURCE).max(1)
    } else {
        opts.sources
    };
    // Workers need a moment to start and read the edge before the crowd.
    let lead = if processes > 1 {
        Duration::from_millis(1500)
    } else {
        Duration::from_millis(300)
    };
    let start_ns = now_ns() + lead.as_nanos() as u64;
    let spec = |first: usize| WorkerSpec {
        origin,
        stream: opts.stream,
        targets: targets.clone(),
        total: opts.viewers,
        first,
        stride: processes,
        start_ns,
        within_ns: opts.within.as_nanos() as u64,
        chunks: opts.chunks,
        h2: opts.h2,
        per_conn: opts.per_conn,
        sources,
        viewer_timeout_ms: opts.viewer_timeout.as_millis() as u64,
    };
    eprintln!(
        "flash: {} viewers within {:?} on {} edge relay(s), {} process(es) of at most {} viewers (fd soft limit {soft}), origin {origin}",
        opts.viewers,
        opts.within,
        targets.len(),
        processes,
        per_process
    );

    // Viewers bound themselves; this only catches a process that hangs.
    let bound = opts.within + opts.viewer_timeout + lead + Duration::from_secs(120);
    let results: Vec<WorkerResult>;
    let mut meters: Vec<Option<CpuMeter>> = Vec::new();
    let pin_report;
    if processes == 1 {
        pin_report = pin_read(&plan, &procs);
        let crowd = async {
            sleep_until_ns(start_ns).await;
            meters = relays
                .iter()
                .map(|r| r.pid.map(|p| CpuMeter::start(Some(p))))
                .collect();
            std::future::pending::<()>().await
        };
        let r = tokio::select! {
            r = run_worker(spec(0)) => r?,
            _ = crowd => unreachable!(),
            _ = cancel.cancelled() => anyhow::bail!("interrupted"),
            _ = tokio::time::sleep(bound) => anyhow::bail!("the crowd did not finish in {bound:?}"),
        };
        results = vec![r];
    } else {
        let mut children = Vec::new();
        for w in 0..processes {
            children.push(worker_process(&spec(w)).await?);
        }
        for (w, c) in children.iter().enumerate() {
            if let Some(pid) = c.id() {
                procs.push((format!("worker {}", w + 1), pid));
            }
        }
        pin_report = pin_read(&plan, &procs);
        sleep_until_ns(start_ns).await;
        meters = relays
            .iter()
            .map(|r| r.pid.map(|p| CpuMeter::start(Some(p))))
            .collect();
        let all = futures_join(children);
        results = tokio::select! {
            r = all => r?,
            _ = cancel.cancelled() => anyhow::bail!("interrupted"),
            _ = tokio::time::sleep(bound) => anyhow::bail!("the workers did not finish in {bound:?}"),
        };
    }
    let relay_cpu: Vec<Option<f64>> = meters
        .iter()
        .map(|m| m.as_ref().map(|m| m.cpu().as_secs_f64()))
        .collect();
    let rss: Vec<Option<u64>> = relays
        .iter()
        .map(|r| r.pid.and_then(sys::proc_rss))
        .collect();
    drop(owned);
    merge(
        &opts, &info, start_ns, processes, &relays, &relay_cpu, &rss, results, pin_report,
    )
}

/// Waits for every worker and parses its result.
async fn futures_join(children: Vec<tokio::process::Child>) -> anyhow::Result<Vec<WorkerResult>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in children.into_iter().enumerate() {
        set.spawn(async move { (i, c.wait_with_output().await) });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, o) = r?;
        let o = o.context("waiting for a flash worker")?;
        anyhow::ensure!(
            o.status.success(),
            "flash worker {} failed: {}",
            i + 1,
            o.status
        );
        out.push((i, parse_result(&o.stdout)?));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

fn pin_read(plan: &Option<Plan>, procs: &[(String, u32)]) -> PinReport {
    match plan {
        Some(p) => PinReport::read(p, procs),
        None => PinReport::none(),
    }
}

async fn sleep_until_ns(ns: u64) {
    let now = now_ns();
    if ns > now {
        tokio::time::sleep(Duration::from_nanos(ns - now)).await;
    }
}

/// Adds the workers' results up into the report.
#[allow(clippy::too_many_arguments)]
fn merge(
    opts: &FlashOpts,
    info: &super::worker::EdgeInfo,
    start_ns: u64,
    processes: usize,
    relays: &[Relay],
    relay_cpu: &[Option<f64>],
    rss: &[Option<u64>],
    results: Vec<WorkerResult>,
    pin: PinReport,
) -> anyhow::Result<FlashReport> {
    let (mut connect, mut first_chunk, mut first_byte, mut last_byte) =
        (histogram(), histogram(), histogram(), histogram());
    let mut errors = std::collections::BTreeMap::new();
    let n_edge = relays.iter().filter(|r| r.edge).count();
    let mut bytes = vec![0u64; n_edge];
    let (mut connected, mut got_first, mut chunks, mut not_yet) = (0, 0, 0, 0);
    let (mut first_connect, mut last_connected, mut last_first) = (u64::MAX, 0u64, 0u64);
    let mut workers = Vec::new();
    let mut loadgen_cpu_s = 0.0;
    for r in &results {
        report::add(
            &mut connect,
            &report::decode(&r.connect_us).map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?;
        report::add(
            &mut first_chunk,
            &report::decode(&r.first_chunk_us).map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?;
        report::add(
            &mut first_byte,
            &report::decode(&r.chunk_first_byte_us).map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?;
        report::add(
            &mut last_byte,
            &report::decode(&r.chunk_last_byte_us).map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?;
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0u64) += v;
        }
        for (b, x) in bytes.iter_mut().zip(&r.bytes_per_target) {
            *b += x;
        }
        connected += r.connected;
        got_first += r.got_first;
        chunks += r.chunks;
        not_yet += r.not_yet;
        if r.connected > 0 {
            first_connect = first_connect.min(r.first_connect_ns);
            last_connected = last_connected.max(r.last_connected_ns);
        }
        last_first = last_first.max(r.last_first_chunk_ns);
        loadgen_cpu_s += r.cpu_s;
        workers.push(WorkerSummary {
            pid: r.pid,
            viewers: r.viewers,
            cpus_allowed_list: r.cpus_allowed_list.clone(),
            cpu_s: r.cpu_s,
        });
    }
    let connect_span_s = last_connected.saturating_sub(first_connect) as f64 / 1e9;
    let mut edge_i = 0;
    let relay_uses = relays
        .iter()
        .zip(relay_cpu.iter().zip(rss))
        .map(|(r, (cpu, rss))| {
            let (viewers, b) = if r.edge {
                let v = (0..opts.viewers).filter(|i| i % n_edge == edge_i).count();
                let b = bytes[edge_i];
                edge_i += 1;
                (v, Some(b))
            } else {
                (0, None)
            };
            RelayUse {
                name: r.name.clone(),
                addr: r.addr,
                pid: r.pid,
                viewers,
                bytes: b,
                cpu_s: *cpu,
                cpu_s_per_gb: match (cpu, b) {
                    (Some(c), Some(b)) => crate::pin::cpu_s_per_gb(*c, b),
                    _ => None,
                },
                rss_bytes: *rss,
            }
        })
        .collect();
    let total_errors = errors.values().sum();
    Ok(FlashReport {
        viewers: opts.viewers,
        processes,
        protocol: if opts.h2 {
            format!("h2c, {} viewers per connection", opts.per_conn)
        } else {
            "HTTP/1.1, one connection per viewer".into()
        },
        within_ms: opts.within.as_secs_f64() * 1000.0,
        chunks_per_viewer: opts.chunks,
        cadence_ms: info.cadence_ms,
        chunk_size: info.chunk_size,
        connected,
        got_first,
        chunks,
        expected_chunks: opts.viewers as u64 * opts.chunks,
        not_yet,
        errors,
        total_errors,
        accept_rate_per_s: if connect_span_s > 0.0 {
            connected as f64 / connect_span_s
        } else {
            0.0
        },
        connect_ms: Percentiles::of(&connect),
        first_chunk_ms: Percentiles::of(&first_chunk),
        last_first_chunk_ms: if last_first > 0 {
            last_first.saturating_sub(start_ns) as f64 / 1e6
        } else {
            0.0
        },
        chunk_first_byte_ms: Percentiles::of(&first_byte),
        chunk_last_byte_ms: Percentiles::of(&last_byte),
        first_chunk_histogram_us: report::buckets(&first_chunk),
        chunk_last_byte_histogram_us: report::buckets(&last_byte),
        relays: relay_uses,
        pin,
        workers,
        loadgen_cpu_s,
    })
}
