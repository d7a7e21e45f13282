//! The orchestration of a live run: checks the descriptor limit, measures
//! loopback, reads the live edge from the origin (and keeps polling it),
//! starts every viewer on its ramp slot (sharing HTTP/2 connections when
//! asked), prints progress, then reads the origin's request counts and
//! builds the report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use mlcache::protocol::now_ns;

use super::viewer::{viewer, Ctx, TIMELINE_SECONDS};
use super::{GroupReport, LiveOpts, LiveReport, ProcSample, SecondStats};
use crate::net;
use crate::report::{self, rate, GroupRecord, Percentiles};
use crate::sys::{self, CpuMeter};

/// The origin's `/live/N`: where the edge is and what the stream is like.
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
    let (status, body) = net::get(origin, path, &origin.to_string()).await?;
    if status != StatusCode::OK {
        return Err(format!("origin answered {status} for {path}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("bad JSON from {path}: {e}"))
}

/// Reads stream `stream`'s [`EdgeInfo`] from the origin.
async fn edge_info(origin: SocketAddr, stream: usize) -> Result<EdgeInfo, String> {
    origin_json(origin, &format!("/live/{stream}")).await
}

/// Reads the origin's per-path request counts from `/stats`.
async fn origin_stats(origin: SocketAddr) -> Result<HashMap<String, u64>, String> {
    #[derive(serde::Deserialize)]
    struct Stats {
        requests: HashMap<String, u64>,
    }
    origin_json::<Stats>(origin, "/stats")
        .await
        .map(|s| s.requests)
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

    let relay_pids: Vec<(String, u32)> = opts
        .groups
        .iter()
        .filter(|g| g.via_relay)
        .filter_map(|g| g.pid.map(|p| (g.name.clone(), p)))
        .collect();
    let pin = crate::pin::apply(opts.pin, opts.origin_pid, &relay_pids)?;
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
        group_bytes: opts.groups.iter().map(|_| AtomicU64::new(0)).collect(),
        chunks_total: AtomicU64::new(0),
        errors_total: AtomicU64::new(0),
        t0_ns,
        timeline: opts.groups.iter().map(|_| Mutex::new(Vec::new())).collect(),
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
    let (lag, lag_task) = report::lag_meter();
    let cpu = CpuMeter::start(None);
    let watched: Vec<Option<CpuMeter>> = opts
        .groups
        .iter()
        .map(|g| g.pid.map(|p| CpuMeter::start(Some(p))))
        .collect();

    let mut tasks = JoinSet::new();
    let mut n = 0usize;
    for (g, group) in opts.groups.iter().enumerate() {
        let mut conns = net::SharedConns::new(group.target, opts.h2, opts.per_h2_conn);
        for i in 0..group.viewers {
            let src = net::source(n, sources);
            let shared = conns.for_viewer(i, src).await.map_err(anyhow::Error::msg)?;
            let start_at = t0 + opts.ramp.mul_f64(i as f64 / group.viewers.max(1) as f64);
            tasks.spawn(viewer(ctx.clone(), g, start_at, shared, src));
            n += 1;
        }
    }

    // Watched processes sampled on every progress tick, for the report's
    // CPU and RSS over time; bounded like the timeline.
    let mut samples: Vec<Vec<ProcSample>> = opts.groups.iter().map(|_| Vec::new()).collect();
    let mut last_cpu: Vec<Option<(Instant, Duration)>> = opts
        .groups
        .iter()
        .map(|g| g.pid.and_then(sys::proc_cpu).map(|c| (Instant::now(), c)))
        .collect();
    let bar = progress_bar(opts.ramp + opts.duration);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => { tasks.abort_all(); break; }
            r = tasks.join_next() => if r.is_none() { break },
            _ = tick.tick() => {
                for (i, g) in opts.groups.iter().enumerate() {
                    let (Some(pid), Some((t_prev, c_prev))) = (g.pid, last_cpu[i]) else { continue };
                    let (Some(c), Some(rss)) = (sys::proc_cpu(pid), sys::proc_rss(pid)) else { continue };
                    let now = Instant::now();
                    let wall = now.duration_since(t_prev).as_secs_f64();
                    // The interval's first tick is immediate: too short a
                    // span for a meaningful CPU share, so wait for the next.
                    if wall < 0.5 {
                        continue;
                    }
                    if samples[i].len() < TIMELINE_SECONDS {
                        samples[i].push(ProcSample {
                            t_s: now.duration_since(t0).as_secs_f64(),
                            cpu_percent: 100.0 * c.saturating_sub(c_prev).as_secs_f64() / wall,
                            rss_bytes: rss,
                        });
                    }
                    last_cpu[i] = Some((now, c));
                }
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
    let timelines: Vec<Vec<SecondStats>> = ctx
        .timeline
        .iter()
        .map(|t| {
            t.lock()
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.is_empty())
                .map(|(s, h)| {
                    let p = Percentiles::of(h);
                    SecondStats {
                        t_s: s as u64,
                        count: p.count,
                        p50: p.p50,
                        p99: p.p99,
                    }
                })
                .collect()
        })
        .collect();
    let control_ttfb = Percentiles::of(&records[0].ttfb);
    let control_ttlb = Percentiles::of(&records[0].ttlb);
    let mut groups = Vec::new();
    let (mut prev_ttfb, mut prev_ttlb) = (control_ttfb, control_ttlb);
    for (i, (r, g)) in records.iter().zip(&opts.groups).enumerate() {
        let (ttfb, ttlb) = (Percentiles::of(&r.ttfb), Percentiles::of(&r.ttlb));
        let bytes = ctx.group_bytes[i].load(Ordering::Relaxed);
        let cpu_s = watched[i].as_ref().map(|m| m.cpu().as_secs_f64());
        groups.push(GroupReport {
            bytes,
            process_cpu_s: cpu_s,
            process_cpu_s_per_gb: cpu_s.and_then(|c| crate::pin::cpu_s_per_gb(c, bytes)),
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
            per_second_ttfb_ms: timelines[i].clone(),
            process_samples: std::mem::take(&mut samples[i]),
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
        origin_requests_by_chunk: relay_seqs
            .iter()
            .copied()
            .zip(per_chunk.iter().copied())
            .collect(),
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
        pin,
    })
}

/// A progress bar on a terminal; `None` otherwise (then lines every 5 s).
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
