//! The orchestration of an LL-HLS run: checks the descriptor limit, reads
//! the stream's shape from the origin, starts every player on its ramp slot
//! (sharing HTTP/2 connections when asked), prints progress, then reads the
//! origin's request counts and works out the figures.
//!
//! The measurement window opens once the ramp is over and the last player
//! has had time to catch up from `PART-HOLD-BACK` behind the edge to the
//! edge itself (twice the hold-back, at least a second), so start-up
//! backlogs do not count as delay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::player::{player, Ctx, Kind, PlayerRecord};
use super::playlist::{self, MediaPlaylist, Playlist};
use super::{HlsGroupReport, HlsOpts, HlsReport};
use crate::net;
use crate::report::{self, Percentiles};
use crate::sys::{self, CpuMeter};

/// GETs `path` from the origin (never through a relay): status and body.
async fn origin_get(origin: SocketAddr, path: &str) -> Result<bytes::Bytes, String> {
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        net::get(origin, path, &origin.to_string()),
    )
    .await
    .map_err(|_| format!("origin did not answer {path} in 30 s"))??;
    if status != StatusCode::OK {
        return Err(format!("origin answered {status} for {path}"));
    }
    Ok(body)
}

/// Reads the origin's per-path-and-query request counts from `/stats`.
async fn origin_stats(origin: SocketAddr) -> Result<HashMap<String, u64>, String> {
    #[derive(serde::Deserialize)]
    struct Stats {
        requests: HashMap<String, u64>,
    }
    let body = origin_get(origin, "/stats").await?;
    serde_json::from_slice::<Stats>(&body)
        .map(|s| s.requests)
        .map_err(|e| format!("bad /stats: {e}"))
}

/// The stream's media playlist, read from the origin, and the
/// path-and-queries that took.
async fn probe(origin: SocketAddr, path: &str) -> anyhow::Result<(MediaPlaylist, Vec<String>)> {
    let base = format!("http://{origin}");
    let mut url = format!("{base}{path}");
    let mut asked = Vec::new();
    for _ in 0..4 {
        let key = url.strip_prefix(&base).unwrap_or(&url).to_string();
        let body = origin_get(origin, &key).await.map_err(anyhow::Error::msg)?;
        asked.push(key);
        match playlist::parse(&String::from_utf8_lossy(&body))? {
            Playlist::Media(m) => return Ok((m, asked)),
            Playlist::Multivariant(v) => {
                let first = v.first().ok_or_else(|| anyhow::anyhow!("no variants"))?;
                url = playlist::resolve(&url, &first.uri);
            }
        }
    }
    anyhow::bail!("{path}: no media playlist behind the multivariant playlists")
}

/// Runs the load and returns the report. Progress goes to stderr.
pub async fn run(opts: HlsOpts, cancel: CancellationToken) -> anyhow::Result<HlsReport> {
    anyhow::ensure!(
        opts.groups.first().is_some_and(|g| !g.via_relay),
        "the first group must be the control group on the origin"
    );
    let total: usize = opts.groups.iter().map(|g| g.players).sum();
    let (soft, hard) = sys::raise_fd_limit();
    let conns_needed = if opts.h2 {
        opts.groups
            .iter()
            .map(|g| g.players.div_ceil(opts.per_h2_conn.max(1)))
            .sum()
    } else {
        // A playlist connection and a media connection per player, as a
        // browser opens several per host.
        2 * total
    };
    anyhow::ensure!(
        (conns_needed as u64) + 64 <= soft,
        "{conns_needed} connections need more descriptors than this process may open \
         (soft limit {soft}, hard limit {hard}); use --h2, fewer players, or several loadgen processes"
    );
    let sources = if opts.sources == 0 {
        (if opts.h2 { conns_needed } else { 2 * total })
            .div_ceil(net::PORTS_PER_SOURCE)
            .max(1)
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
    // The origin's counts are cumulative: what this run caused is the
    // difference from here.
    let stats_before = origin_stats(opts.origin)
        .await
        .map_err(anyhow::Error::msg)?;
    let (media, probe_keys) = probe(opts.origin, &opts.path).await?;
    anyhow::ensure!(
        !media.parts.is_empty() && media.server_control.can_block_reload,
        "{} is not a low-latency playlist (no EXT-X-PART, or no CAN-BLOCK-RELOAD=YES)",
        opts.path
    );
    let part_target = media.part_target_or_td();
    let hold_back = media
        .server_control
        .part_hold_back
        .unwrap_or(3.0 * part_target);
    let catch_up = Duration::from_secs_f64((2.0 * hold_back).max(1.0));
    let t0 = Instant::now();
    let window_start = t0 + opts.ramp + catch_up;
    let stop = t0 + opts.ramp + catch_up + opts.duration;
    let mut keys = HashMap::new();
    for k in probe_keys {
        keys.insert(
            k,
            super::player::KeyInfo {
                kind: Kind::Other,
                relay_in_window: false,
                control_sent: 1,
                control_unsure: 0,
            },
        );
    }
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        window_start,
        stop,
        keys: Mutex::new(keys),
        parts_total: AtomicU64::new(0),
        playlists_total: AtomicU64::new(0),
        errors_total: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        group_bytes: opts.groups.iter().map(|_| AtomicU64::new(0)).collect(),
        parse_cache: super::cache::ParseCache::new(if opts.parse_cache { 64 } else { 0 }),
    });

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
        for i in 0..group.players {
            let src = net::source(n, sources);
            let shared = conns.for_viewer(i, src).await.map_err(anyhow::Error::msg)?;
            let start_at = t0 + opts.ramp.mul_f64(i as f64 / group.players.max(1) as f64);
            let ctx = ctx.clone();
            tasks.spawn(async move { (g, player(ctx, g, start_at, shared, src).await) });
            n += 1;
        }
    }

    let bar = progress_bar(stop - t0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_line = Instant::now();
    let mut records: Vec<Vec<PlayerRecord>> = opts.groups.iter().map(|_| Vec::new()).collect();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => { tasks.abort_all(); break; }
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok((g, rec))) => records[g].push(rec),
                Some(Err(e)) => anyhow::bail!("a player failed: {e}"),
            },
            _ = tick.tick() => {
                let msg = format!(
                    "{total} players, {} parts, {} playlists, {} errors",
                    ctx.parts_total.load(Ordering::Relaxed),
                    ctx.playlists_total.load(Ordering::Relaxed),
                    ctx.errors_total.load(Ordering::Relaxed),
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
    lag_task.abort();
    anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
    let loadgen_cpu = cpu.percent();
    let mut stats = origin_stats(opts.origin)
        .await
        .map_err(anyhow::Error::msg)?;
    for (k, n) in stats.iter_mut() {
        *n = n.saturating_sub(stats_before.get(k).copied().unwrap_or(0));
    }
    let keys = std::mem::take(&mut *ctx.keys.lock());
    let lag_ms = Percentiles::of(&lag.lock());
    let group_bytes: Vec<u64> = ctx
        .group_bytes
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let mut report = build_report(
        &opts,
        &media,
        &records,
        &keys,
        &stats,
        &watched,
        (stop - window_start).as_secs_f64(),
        (
            ctx.bytes.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        ),
        loadgen_cpu,
        lag_ms,
    );
    for ((g, b), m) in report.groups.iter_mut().zip(&group_bytes).zip(&watched) {
        g.bytes = *b;
        g.process_cpu_s = m.as_ref().map(|m| m.cpu().as_secs_f64());
        g.process_cpu_s_per_gb = g
            .process_cpu_s
            .and_then(|c| crate::pin::cpu_s_per_gb(c, *b));
    }
    let (hits, parses) = ctx.parse_cache.counts();
    report.playlists_parsed = parses;
    report.playlists_from_parse_cache = hits;
    report.pin = pin;
    Ok(report)
}

/// Origin requests per key of `kind` a relay player got in the window:
/// the origin's count minus what the control group sent; keys whose control
/// count is unsure are left out (their number is returned too), and keys
/// not at exactly one are listed (at most 20) for the report.
fn per_key(
    keys: &HashMap<String, super::player::KeyInfo>,
    stats: &HashMap<String, u64>,
    kind: Kind,
    off: &mut Vec<(String, u64)>,
) -> (Vec<u64>, u64) {
    let mut unsure = 0;
    let mut out = Vec::new();
    for (k, i) in keys
        .iter()
        .filter(|(_, i)| i.kind == kind && i.relay_in_window)
    {
        if i.control_unsure > 0 {
            unsure += 1;
            continue;
        }
        let n = stats
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(i.control_sent);
        if n != 1 && off.len() < 20 {
            off.push((k.clone(), n));
        }
        out.push(n);
    }
    (out, unsure)
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    opts: &HlsOpts,
    media: &MediaPlaylist,
    records: &[Vec<PlayerRecord>],
    keys: &HashMap<String, super::player::KeyInfo>,
    stats: &HashMap<String, u64>,
    watched: &[Option<CpuMeter>],
    window_s: f64,
    (bytes, elapsed_s): (u64, f64),
    loadgen_cpu: f64,
    loop_lag_ms: Percentiles,
) -> HlsReport {
    // The control group's earliest first and last byte per part.
    let mut control: HashMap<u64, (u64, u64)> = HashMap::new();
    for r in &records[0] {
        for a in &r.arrivals {
            let e = control.entry(a.key).or_insert((a.first_ns, a.last_ns));
            e.0 = e.0.min(a.first_ns);
            e.1 = e.1.min(a.last_ns);
        }
    }
    let mut groups = Vec::new();
    for (gi, (g, recs)) in opts.groups.iter().zip(records).enumerate() {
        let (mut first, mut last) = (report::histogram(), report::histogram());
        let (mut unmatched, mut earlier, mut parts) = (0u64, 0u64, 0u64);
        let mut out = HlsGroupReport {
            name: g.name.clone(),
            players: g.players,
            ..HlsGroupReport::default()
        };
        for r in recs {
            for a in r.arrivals.iter().filter(|a| a.in_window) {
                let (f, l) = (a.first_ns, a.last_ns);
                let Some(&(cf, cl)) = control.get(&a.key) else {
                    unmatched += 1;
                    continue;
                };
                parts += 1;
                earlier += (f < cf || l < cl) as u64;
                report::record(&mut first, f.saturating_sub(cf) / 1000);
                report::record(&mut last, l.saturating_sub(cl) / 1000);
            }
            out.versions += r.versions;
            out.unchanged += r.unchanged;
            out.hinted += r.hinted;
            out.missed += r.missed;
            out.stalls += r.stalls;
            for (k, v) in &r.playlist_errors {
                *out.playlist_errors.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.part_errors {
                *out.part_errors.entry(k.clone()).or_default() += v;
            }
        }
        out.parts = parts;
        out.unmatched = unmatched;
        out.earlier_than_control = earlier;
        out.parts_per_player_per_s = parts as f64 / g.players.max(1) as f64 / window_s;
        out.added_first_byte_ms = Percentiles::of(&first);
        out.added_last_byte_ms = Percentiles::of(&last);
        out.process_cpu_percent = watched[gi].as_ref().map(|m| m.percent());
        out.process_rss_bytes = g.pid.and_then(sys::proc_rss);
        groups.push(out);
    }
    let mut off = Vec::new();
    let (per_part, unsure_parts) = per_key(keys, stats, Kind::Part, &mut off);
    let (per_version, unsure_versions) = per_key(keys, stats, Kind::Version, &mut off);
    let avg = |v: &[u64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<u64>() as f64 / v.len() as f64
        }
    };
    // Everything else the relay path asked the origin for: the
    // multivariant playlist, plain media playlist loads, the init section.
    let other: u64 = keys
        .iter()
        .filter(|(_, i)| i.kind == Kind::Other)
        .map(|(k, i)| {
            stats
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(i.control_sent)
        })
        .sum();
    let total_errors = groups
        .iter()
        .map(|g| g.playlist_errors.values().sum::<u64>() + g.part_errors.values().sum::<u64>())
        .sum();
    HlsReport {
        path: opts.path.clone(),
        protocol: if opts.h2 {
            "h2c (shared)"
        } else {
            "HTTP/1.1 (two connections per player)"
        },
        preload_hint: opts.preload_hint,
        target_duration_s: media.target_duration,
        part_target_s: media.part_target_or_td(),
        part_hold_back_s: media.server_control.part_hold_back,
        window_s,
        groups,
        parts_counted: per_part.len() as u64,
        origin_requests_per_part: avg(&per_part),
        origin_requests_per_part_min: per_part.iter().copied().min().unwrap_or(0),
        origin_requests_per_part_max: per_part.iter().copied().max().unwrap_or(0),
        versions_counted: per_version.len() as u64,
        origin_requests_per_version: avg(&per_version),
        origin_requests_per_version_min: per_version.iter().copied().min().unwrap_or(0),
        origin_requests_per_version_max: per_version.iter().copied().max().unwrap_or(0),
        origin_requests_other: other,
        uncounted_keys: unsure_parts + unsure_versions,
        keys_not_once: off,
        bytes_per_sec: bytes as f64 / elapsed_s,
        relay_players: opts
            .groups
            .iter()
            .filter(|g| g.via_relay)
            .map(|g| g.players)
            .sum(),
        total_errors,
        loadgen_cpu_percent: loadgen_cpu,
        loop_lag_ms,
        playlists_parsed: 0,
        playlists_from_parse_cache: 0,
        pin: crate::pin::PinReport::none(),
    }
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
