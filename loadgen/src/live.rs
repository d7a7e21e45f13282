//! Live load: thousands of viewers follow one stream from the live edge, as
//! players do, while a small control group reads the same stream straight
//! from the origin. Added delay = relay group − control group.
//!
//! Each viewer asks for chunk N. The moment N is complete it asks for N+1.
//! For every chunk published inside the measurement window it records
//! publish → first byte (TTFB) and publish → last byte (TTLB), with the publish
//! time taken from the chunk's `mlcache-publish-ns` header. The window
//! starts once the ramp is over and ends with the run, so ramp-up does not
//! colour the figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use mlcache::protocol::{now_ns, CacheStatus};

use crate::net::{self, Client};
use crate::report::{self, rate, GroupRecord, Percentiles};
use crate::sys::{self, CpuMeter};

/// One group of viewers on one target.
#[derive(Debug, Clone)]
pub struct Group {
    /// Label in the report.
    pub name: String,
    /// Where the viewers connect.
    pub target: SocketAddr,
    /// `true`: the target is a relay (absolute-form requests); `false`: the
    /// origin itself (the control group).
    pub via_relay: bool,
    /// How many viewers.
    pub viewers: usize,
    /// A process to watch for CPU and RSS (the relay's pid), if known.
    pub pid: Option<u32>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LiveOpts {
    /// The origin (head end).
    pub origin: SocketAddr,
    /// Stream number.
    pub stream: usize,
    /// Groups; the first must be the control group on the origin.
    pub groups: Vec<Group>,
    /// Measured run length after the ramp.
    pub duration: Duration,
    /// Viewers start evenly spread over this time.
    pub ramp: Duration,
    /// Share HTTP/2 connections instead of one HTTP/1.1 connection each.
    pub h2: bool,
    /// Viewers per shared HTTP/2 connection.
    pub per_h2_conn: usize,
    /// Number of 127.0.0.x source addresses (0 = as many as needed).
    pub sources: usize,
    /// Longest one request may take.
    pub request_timeout: Duration,
    /// Bytes to push through loopback to measure its throughput (0 = skip).
    pub loopback_probe: usize,
}

/// One group's results.
#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub name: String,
    pub viewers: usize,
    pub hops: usize,
    pub chunks: u64,
    pub expected: u64,
    pub late: u64,
    pub missed: u64,
    pub not_yet: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub ttfb_ms: Percentiles,
    pub ttlb_ms: Percentiles,
    /// This group minus the control group.
    pub added_ttfb_ms: Percentiles,
    pub added_ttlb_ms: Percentiles,
    /// This group minus the previous hop's group.
    pub hop_ttfb_ms: Percentiles,
    pub hop_ttlb_ms: Percentiles,
    pub ttfb_histogram_us: Vec<(u64, u64)>,
    pub ttlb_histogram_us: Vec<(u64, u64)>,
    pub process_cpu_percent: Option<f64>,
    pub process_rss_bytes: Option<u64>,
}

/// The whole run's results.
#[derive(Debug, Serialize)]
pub struct LiveReport {
    pub stream: usize,
    pub cadence_ms: u64,
    pub chunk_size: usize,
    pub protocol: &'static str,
    pub duration_s: f64,
    pub window_chunks: u64,
    pub groups: Vec<GroupReport>,
    /// Origin requests per chunk on the relay path, inside the window.
    pub origin_requests_per_chunk: f64,
    pub origin_requests_min: u64,
    pub origin_requests_max: u64,
    pub bytes_per_sec: f64,
    pub loopback_bytes_per_sec: f64,
    /// k × chunk / B for the largest relay group: when its last viewer could
    /// finish at the earliest.
    pub physical_bound_last_viewer_ms: f64,
    pub loadgen_cpu_percent: f64,
    pub loop_lag_ms: Percentiles,
    pub total_errors: u64,
}

struct Ctx {
    opts: LiveOpts,
    edge: AtomicI64,
    cadence_ns: u64,
    window: (u64, u64),
    stop: Instant,
    records: Vec<Mutex<GroupRecord>>,
    bytes: AtomicU64,
    chunks_total: AtomicU64,
    errors_total: AtomicU64,
}

#[derive(serde::Deserialize)]
struct EdgeInfo {
    edge: i64,
    cadence_ms: u64,
    chunk_size: usize,
}

/// GETs `path` from the origin (directly, never through a relay) and parses
/// its JSON.
async fn origin_json<T: serde::de::DeserializeOwned>(
    origin: SocketAddr,
    path: &str,
) -> Result<T, String> {
    let mut c = Client::open(origin, None, false).await?;
    let req = Request::get(path)
        .header("host", origin.to_string())
        .body(Empty::new())
        .unwrap();
    let resp = c.send(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("origin answered {} for {path}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("bad JSON from {path}: {e}"))
}

async fn edge_info(origin: SocketAddr, stream: usize) -> Result<EdgeInfo, String> {
    origin_json(origin, &format!("/live/{stream}")).await
}

/// Reads the origin's per-path request counts from `/stats`.
pub async fn origin_stats(
    origin: SocketAddr,
) -> Result<std::collections::HashMap<String, u64>, String> {
    #[derive(serde::Deserialize)]
    struct Stats {
        requests: std::collections::HashMap<String, u64>,
    }
    origin_json::<Stats>(origin, "/stats")
        .await
        .map(|s| s.requests)
}

enum Fetched {
    Chunk {
        publish_ns: u64,
        first_ns: u64,
        last_ns: u64,
        len: u64,
        hit: bool,
    },
    NotYet,
    Status(StatusCode),
}

async fn fetch(
    client: &mut Client,
    req: Request<Empty<Bytes>>,
    seq: u64,
) -> Result<Fetched, &'static str> {
    let resp = client.send(req).await.map_err(|_| "request failed")?;
    let status = resp.status();
    if status != StatusCode::OK {
        let not_yet = mlcache::protocol::is_not_yet(resp.status(), resp.headers());
        // Drain so the connection stays usable.
        let _ = resp.into_body().collect().await;
        return Ok(if status == StatusCode::NOT_FOUND && not_yet {
            Fetched::NotYet
        } else {
            Fetched::Status(status)
        });
    }
    let hit = CacheStatus::of(resp.headers()) == Some(CacheStatus::Hit);
    // Encrypted chunks are opaque here: the publish time comes from the
    // header, and integrity is the viewer client's job (it holds the keys).
    let encrypted = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v == mlcache::ece::CODING);
    let header_ns = resp
        .headers()
        .get(mlcache::protocol::PUBLISH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = resp.into_body();
    let mut first_ns = 0;
    let mut prefix = Vec::with_capacity(16);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "body cut")?;
        if let Ok(data) = frame.into_data() {
            if first_ns == 0 && !data.is_empty() {
                first_ns = now_ns();
            }
            if prefix.len() < 16 {
                let take = (16 - prefix.len()).min(data.len());
                prefix.extend_from_slice(&data[..take]);
            }
            len += data.len() as u64;
        }
    }
    let last_ns = now_ns();
    if encrypted {
        let publish_ns = header_ns.ok_or("no publish time")?;
        return Ok(Fetched::Chunk {
            publish_ns,
            first_ns,
            last_ns,
            len,
            hit,
        });
    }
    if prefix.len() < 16 {
        return Err("short chunk");
    }
    let body_ns = u64::from_be_bytes(prefix[..8].try_into().expect("8 bytes"));
    let body_seq = u64::from_be_bytes(prefix[8..16].try_into().expect("8 bytes"));
    if body_seq != seq || header_ns.is_some_and(|h| h != body_ns) {
        return Err("wrong chunk");
    }
    Ok(Fetched::Chunk {
        publish_ns: body_ns,
        first_ns,
        last_ns,
        len,
        hit,
    })
}

async fn viewer(
    ctx: Arc<Ctx>,
    g: usize,
    start_at: Instant,
    shared: Option<Client>,
    src: Option<std::net::IpAddr>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let group = &ctx.opts.groups[g];
    let (origin, stream) = (ctx.opts.origin, ctx.opts.stream);
    let mut client = shared;
    let mut next: Option<u64> = None;
    let fail = |kind: &str| {
        ctx.errors_total.fetch_add(1, Ordering::Relaxed);
        ctx.records[g].lock().error(kind);
    };
    while Instant::now() < ctx.stop {
        let edge = ctx.edge.load(Ordering::Relaxed);
        let seq = *next.get_or_insert((edge + 1).max(0) as u64);
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match Client::open(group.target, src, ctx.opts.h2).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    fail("connect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let req = if group.via_relay {
            Request::get(format!("http://{origin}/live/{stream}/{seq}"))
        } else {
            // The marker keeps the control group's requests apart in /stats.
            Request::get(format!("http://{origin}/live/{stream}/{seq}?g=control"))
        }
        .header("host", origin.to_string())
        .body(Empty::new())
        .unwrap();
        let outcome = tokio::time::timeout(ctx.opts.request_timeout, fetch(c, req, seq)).await;
        ctx.records[g].lock().requests += 1;
        match outcome {
            Ok(Ok(Fetched::Chunk {
                publish_ns,
                first_ns,
                last_ns,
                len,
                hit,
            })) => {
                ctx.bytes.fetch_add(len, Ordering::Relaxed);
                ctx.chunks_total.fetch_add(1, Ordering::Relaxed);
                let ttfb = first_ns.saturating_sub(publish_ns);
                if publish_ns >= ctx.window.0 && publish_ns < ctx.window.1 {
                    let mut r = ctx.records[g].lock();
                    report::record(&mut r.ttfb, ttfb / 1000);
                    report::record(&mut r.ttlb, last_ns.saturating_sub(publish_ns) / 1000);
                    r.chunks += 1;
                    r.hits += hit as u64;
                    if ttfb > ctx.cadence_ns {
                        r.late += 1;
                    }
                    r.seqs.insert(seq);
                }
                next = Some(seq + 1);
            }
            Ok(Ok(Fetched::NotYet)) => ctx.records[g].lock().not_yet += 1,
            Ok(Ok(Fetched::Status(StatusCode::NOT_FOUND))) => {
                let edge = ctx.edge.load(Ordering::Relaxed);
                if (seq as i64) > edge {
                    // A plain origin's "not there yet": ask again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    let jump = (edge + 1) as u64;
                    ctx.records[g].lock().missed += jump - seq;
                    next = Some(jump);
                }
            }
            Ok(Ok(Fetched::Status(s))) => {
                fail(&format!("status {}", s.as_u16()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(kind)) => {
                fail(kind);
                if !ctx.opts.h2 {
                    client = None;
                }
            }
            Err(_) => {
                fail("timeout");
                client = None;
            }
        }
    }
}

/// Runs the load and returns the report. Progress goes to stderr.
pub async fn run(opts: LiveOpts, cancel: CancellationToken) -> anyhow::Result<LiveReport> {
    anyhow::ensure!(
        opts.groups.first().is_some_and(|g| !g.via_relay),
        "the first group must be the control group on the origin"
    );
    let total_viewers: usize = opts.groups.iter().map(|g| g.viewers).sum();
    let (soft, hard) = sys::raise_fd_limit();
    let conns_needed = if opts.h2 {
        opts.groups
            .iter()
            .map(|g| g.viewers.div_ceil(opts.per_h2_conn.max(1)))
            .sum()
    } else {
        total_viewers
    };
    anyhow::ensure!(
        (conns_needed as u64) + 64 <= soft,
        "{conns_needed} connections need more descriptors than this process may open \
         (soft limit {soft}, hard limit {hard}); use --h2, fewer viewers, or several loadgen processes"
    );
    let sources = if opts.sources == 0 {
        total_viewers.div_ceil(net::PORTS_PER_SOURCE).max(1)
    } else {
        opts.sources
    };

    let loopback = if opts.loopback_probe > 0 {
        net::loopback_throughput(opts.loopback_probe).await?
    } else {
        0.0
    };
    let info = edge_info(opts.origin, opts.stream)
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(info.cadence_ms > 0, "the origin publishes no live cadence");
    let cadence = Duration::from_millis(info.cadence_ms);
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let ramp_ns = opts.ramp.as_nanos() as u64;
    let window = (
        t0_ns + ramp_ns + cadence.as_nanos() as u64,
        t0_ns + ramp_ns + opts.duration.as_nanos() as u64,
    );
    // Viewers keep going a little past the window so its last chunks complete.
    let stop = t0 + opts.ramp + opts.duration + 2 * cadence;
    let ctx = Arc::new(Ctx {
        edge: AtomicI64::new(info.edge),
        cadence_ns: cadence.as_nanos() as u64,
        window,
        stop,
        records: opts
            .groups
            .iter()
            .map(|_| Mutex::new(GroupRecord::default()))
            .collect(),
        bytes: AtomicU64::new(0),
        chunks_total: AtomicU64::new(0),
        errors_total: AtomicU64::new(0),
        opts: opts.clone(),
    });

    // The live edge, polled from the origin a few times per chunk.
    let edge_task = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(i) = edge_info(ctx.opts.origin, ctx.opts.stream).await {
                    ctx.edge.store(i.edge, Ordering::Relaxed);
                }
                tokio::time::sleep(cadence / 4).await;
            }
        })
    };
    // Event-loop lag: how late a 10 ms timer fires.
    let lag = Arc::new(Mutex::new(report::histogram()));
    let lag_task = {
        let lag = lag.clone();
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let over = t.elapsed().saturating_sub(Duration::from_millis(10));
                report::record(&mut lag.lock(), over.as_micros() as u64);
            }
        })
    };
    let cpu = CpuMeter::start(None);
    let watched: Vec<Option<CpuMeter>> = opts
        .groups
        .iter()
        .map(|g| g.pid.map(|p| CpuMeter::start(Some(p))))
        .collect();

    let mut tasks = JoinSet::new();
    let mut n = 0usize;
    for (g, group) in opts.groups.iter().enumerate() {
        let mut h2_pool: Vec<Client> = Vec::new();
        for i in 0..group.viewers {
            let src = net::source(n, sources);
            let shared = if opts.h2 {
                let k = i / opts.per_h2_conn.max(1);
                if k >= h2_pool.len() {
                    h2_pool.push(
                        Client::open(group.target, src, true)
                            .await
                            .map_err(anyhow::Error::msg)?,
                    );
                }
                h2_pool[k].share()
            } else {
                None
            };
            let start_at = t0 + opts.ramp.mul_f64(i as f64 / group.viewers.max(1) as f64);
            tasks.spawn(viewer(ctx.clone(), g, start_at, shared, src));
            n += 1;
        }
    }

    let bar = progress_bar(opts.ramp + opts.duration);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => { tasks.abort_all(); break; }
            r = tasks.join_next() => if r.is_none() { break },
            _ = tick.tick() => {
                let msg = format!(
                    "{} viewers, {} chunks, {} errors, {}",
                    total_viewers,
                    ctx.chunks_total.load(Ordering::Relaxed),
                    ctx.errors_total.load(Ordering::Relaxed),
                    rate(ctx.bytes.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()),
                );
                match &bar {
                    Some(b) => { b.set_position(t0.elapsed().as_secs().min(b.length().unwrap_or(0))); b.set_message(msg); }
                    None if last_line.elapsed() >= Duration::from_secs(5) => {
                        eprintln!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
                        last_line = Instant::now();
                    }
                    None => {}
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    edge_task.abort();
    lag_task.abort();
    anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
    let elapsed = t0.elapsed();
    let loadgen_cpu = cpu.percent();

    let stats = origin_stats(opts.origin)
        .await
        .map_err(anyhow::Error::msg)?;
    let records: Vec<GroupRecord> = ctx
        .records
        .iter()
        .map(|m| std::mem::take(&mut *m.lock()))
        .collect();
    let window_seqs: std::collections::BTreeSet<u64> = records
        .iter()
        .flat_map(|r| r.seqs.iter().copied())
        .collect();
    let relay_seqs: Vec<u64> = records
        .iter()
        .zip(&opts.groups)
        .filter(|(_, g)| g.via_relay)
        .flat_map(|(r, _)| r.seqs.iter().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let per_chunk: Vec<u64> = relay_seqs
        .iter()
        .map(|s| {
            stats
                .get(&format!("/live/{}/{s}", opts.stream))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let control_ttfb = Percentiles::of(&records[0].ttfb);
    let control_ttlb = Percentiles::of(&records[0].ttlb);
    let mut groups = Vec::new();
    let (mut prev_ttfb, mut prev_ttlb) = (control_ttfb, control_ttlb);
    for (i, (r, g)) in records.iter().zip(&opts.groups).enumerate() {
        let (ttfb, ttlb) = (Percentiles::of(&r.ttfb), Percentiles::of(&r.ttlb));
        groups.push(GroupReport {
            name: g.name.clone(),
            viewers: g.viewers,
            hops: i,
            chunks: r.chunks,
            expected: g.viewers as u64 * window_seqs.len() as u64,
            late: r.late,
            missed: r.missed,
            not_yet: r.not_yet,
            errors: r.errors.clone(),
            ttfb_ms: ttfb,
            ttlb_ms: ttlb,
            added_ttfb_ms: ttfb.minus(&control_ttfb),
            added_ttlb_ms: ttlb.minus(&control_ttlb),
            hop_ttfb_ms: ttfb.minus(&prev_ttfb),
            hop_ttlb_ms: ttlb.minus(&prev_ttlb),
            ttfb_histogram_us: report::buckets(&r.ttfb),
            ttlb_histogram_us: report::buckets(&r.ttlb),
            process_cpu_percent: watched[i].as_ref().map(|m| m.percent()),
            process_rss_bytes: g.pid.and_then(sys::proc_rss),
        });
        if g.via_relay {
            prev_ttfb = ttfb;
            prev_ttlb = ttlb;
        }
    }
    let largest = opts
        .groups
        .iter()
        .filter(|g| g.via_relay)
        .map(|g| g.viewers)
        .max()
        .unwrap_or(0);
    let total_errors = records.iter().map(|r| r.error_count()).sum();
    let loop_lag_ms = Percentiles::of(&lag.lock());
    Ok(LiveReport {
        stream: opts.stream,
        cadence_ms: info.cadence_ms,
        chunk_size: info.chunk_size,
        protocol: if opts.h2 {
            "h2c (shared)"
        } else {
            "HTTP/1.1 (one connection per viewer)"
        },
        duration_s: elapsed.as_secs_f64(),
        window_chunks: window_seqs.len() as u64,
        groups,
        origin_requests_per_chunk: if per_chunk.is_empty() {
            0.0
        } else {
            per_chunk.iter().sum::<u64>() as f64 / per_chunk.len() as f64
        },
        origin_requests_min: per_chunk.iter().copied().min().unwrap_or(0),
        origin_requests_max: per_chunk.iter().copied().max().unwrap_or(0),
        bytes_per_sec: ctx.bytes.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        loopback_bytes_per_sec: loopback,
        physical_bound_last_viewer_ms: if loopback > 0.0 {
            1000.0 * (largest * info.chunk_size) as f64 / loopback
        } else {
            0.0
        },
        loadgen_cpu_percent: loadgen_cpu,
        loop_lag_ms,
        total_errors,
    })
}

fn progress_bar(total: Duration) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(total.as_secs());
    b.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len}s {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    Some(b)
}

impl LiveReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "live stream {}: {} B chunks every {} ms, {}, {:.1} s, {} chunks in the measurement window",
            self.stream, self.chunk_size, self.cadence_ms, self.protocol, self.duration_s, self.window_chunks
        );
        let _ = writeln!(o, "\nglass-to-glass, publish → first byte (ms)");
        let _ = writeln!(
            o,
            "{:<24} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "group", "viewers", "p50", "p90", "p99", "p99.9", "max"
        );
        for g in &self.groups {
            let _ = writeln!(o, "{:<24} {:>7} {}", g.name, g.viewers, g.ttfb_ms.row());
        }
        let _ = writeln!(o, "\nglass-to-glass, publish → last byte (ms)");
        for g in &self.groups {
            let _ = writeln!(o, "{:<24} {:>7} {}", g.name, g.viewers, g.ttlb_ms.row());
        }
        let _ = writeln!(o, "\nADDED delay vs the control group (ms)          p50      p90      p99    p99.9      max");
        for g in self.groups.iter().skip(1) {
            let _ = writeln!(o, "{:<24} first byte     {}", g.name, g.added_ttfb_ms.row());
            let _ = writeln!(o, "{:<24} last byte      {}", g.name, g.added_ttlb_ms.row());
        }
        if self.groups.len() > 2 {
            let _ = writeln!(o, "\nper hop (this group minus the hop before it)");
            for g in self.groups.iter().skip(1) {
                let _ = writeln!(o, "{:<24} first byte     {}", g.name, g.hop_ttfb_ms.row());
                let _ = writeln!(o, "{:<24} last byte      {}", g.name, g.hop_ttlb_ms.row());
            }
        }
        let _ = writeln!(
            o,
            "\n{:<24} {:>9} {:>9} {:>6} {:>6} {:>7} {:>7}  process",
            "group", "chunks", "expected", "late", "missed", "not-yet", "errors"
        );
        for g in &self.groups {
            let errs: u64 = g.errors.values().sum();
            let proc = match (g.process_cpu_percent, g.process_rss_bytes) {
                (Some(c), Some(r)) if g.viewers >= 1000 => format!(
                    "CPU {c:.0}%, RSS {:.1} MiB ({:.2} MiB per 1,000 viewers)",
                    r as f64 / 1048576.0,
                    r as f64 / 1048576.0 / (g.viewers as f64 / 1000.0)
                ),
                (Some(c), Some(r)) => format!("CPU {c:.0}%, RSS {:.1} MiB", r as f64 / 1048576.0),
                (Some(c), None) => format!("CPU {c:.0}%"),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "{:<24} {:>9} {:>9} {:>6} {:>6} {:>7} {:>7}  {}",
                g.name, g.chunks, g.expected, g.late, g.missed, g.not_yet, errs, proc
            );
            for (k, v) in &g.errors {
                let _ = writeln!(o, "    error {k}: {v}");
            }
        }
        let _ = writeln!(
            o,
            "\norigin requests per chunk (relay path): {:.2} (min {}, max {})",
            self.origin_requests_per_chunk, self.origin_requests_min, self.origin_requests_max
        );
        let _ = writeln!(o, "errors: {}", self.total_errors);
        let _ = writeln!(o, "delivered: {}", rate(self.bytes_per_sec));
        if self.loopback_bytes_per_sec > 0.0 {
            let _ = writeln!(
                o,
                "loopback throughput B = {}; physical bound for the last viewer of the largest group: {:.1} ms",
                rate(self.loopback_bytes_per_sec),
                self.physical_bound_last_viewer_ms
            );
        }
        let _ = writeln!(
            o,
            "loadgen: CPU {:.0}%, event-loop lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.loadgen_cpu_percent,
            self.loop_lag_ms.p50,
            self.loop_lag_ms.p99,
            self.loop_lag_ms.max
        );
        o
    }
}
