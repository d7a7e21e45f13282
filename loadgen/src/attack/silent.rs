//! `silent`: many TCP connections that send nothing, and a share that send
//! only the HTTP/2 connection preface (the magic and an empty SETTINGS
//! frame), then never a request.
//!
//! Each connection's task connects (a bounded number at once, from four
//! loopback source addresses), writes its preface if it has one, and reads
//! until the relay closes it, noting what the relay sent first (a 503 over
//! the connection cap, HTTP/2 frames, or nothing). The attack lasts until
//! every connection is closed or `--idle-timeout` + a margin after the last
//! one was opened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::window0::spread;
use super::{counts, secs, Ctx, Outcome, Verdict, CLOSE_MARGIN};
use crate::net;

/// Longest one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors this process keeps for everything else (origin, viewer, pipes).
const FD_RESERVE: u64 = 400;
/// The idle timeout assumed when the relay was given none.
const ASSUMED_IDLE: Duration = Duration::from_secs(10);
/// The HTTP/2 client connection preface: the magic, then an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[derive(Debug, Default)]
struct Rec {
    /// Whether the connection was opened.
    opened: bool,
    preface: bool,
    /// Time from open to the relay's close, if it closed.
    closed_after: Option<Duration>,
    /// What the relay sent first.
    answer: &'static str,
    error: Option<String>,
}

/// Runs the attack.
pub async fn attack(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let wanted = ctx.args.connections.unwrap_or(19_000).max(1);
    let limit = fd_limit();
    let n = (wanted as u64).min(limit.saturating_sub(FD_RESERVE)).max(1) as usize;
    let share = ctx.args.preface_share.clamp(0.0, 1.0);
    let idle = ctx.relay_duration("--idle-timeout");
    let bound = idle.unwrap_or(ASSUMED_IDLE) + CLOSE_MARGIN;
    let hold = ctx.args.hold.unwrap_or(bound);
    let stop = ctx.stop.child_token();
    let at_once = ctx.args.connects_at_once.max(1);
    let permits = Arc::new(Semaphore::new(at_once));
    let (opened, closed, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let preface = ((i + 1) as f64 * share) as usize > (i as f64 * share) as usize;
        let (permits, stop) = (permits.clone(), stop.clone());
        let (opened, closed, done) = (opened.clone(), closed.clone(), done.clone());
        let relay = ctx.relay;
        tasks.spawn(async move {
            let mut rec = Rec {
                preface,
                answer: "nothing",
                ..Rec::default()
            };
            let permit = permits.acquire_owned().await;
            let c = tokio::select! {
                _ = stop.cancelled() => None,
                c = tokio::time::timeout(CONNECT_TIMEOUT, net::connect(relay, net::source(i, 4))) => Some(c),
            };
            drop(permit);
            done.fetch_add(1, Ordering::Relaxed);
            let mut tcp = match c {
                None => return rec,
                Some(Ok(Ok(t))) => t,
                Some(Ok(Err(e))) => {
                    rec.error = Some(e.kind().to_string());
                    return rec;
                }
                Some(Err(_)) => {
                    rec.error = Some("connect timeout".into());
                    return rec;
                }
            };
            rec.opened = true;
            opened.fetch_add(1, Ordering::Relaxed);
            let at = Instant::now();
            if preface && tcp.write_all(PREFACE).await.is_err() {
                rec.closed_after = Some(at.elapsed());
                closed.fetch_add(1, Ordering::Relaxed);
                return rec;
            }
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return rec,
                    r = tcp.read(&mut buf) => match r {
                        Ok(0) | Err(_) => {
                            rec.closed_after = Some(at.elapsed());
                            closed.fetch_add(1, Ordering::Relaxed);
                            return rec;
                        }
                        Ok(k) => {
                            if rec.answer == "nothing" {
                                rec.answer = classify(&buf[..k]);
                            }
                        }
                    },
                }
            }
        });
    }
    let mut all_open: Option<Instant> = None;
    loop {
        let (o, c, d) = (
            opened.load(Ordering::Relaxed),
            closed.load(Ordering::Relaxed),
            done.load(Ordering::Relaxed),
        );
        if d >= n as u64 && all_open.is_none() {
            all_open = Some(Instant::now());
            eprintln!(
                "silent: {o} of {n} connections open after {}",
                secs(t0.elapsed())
            );
        }
        ctx.progress(format!(
            "connects done {d}/{n}, open {o}, closed by relay {c}"
        ));
        let all_closed = all_open.is_some() && c >= o;
        let held = all_open.is_some_and(|t| t.elapsed() >= hold);
        if all_closed || held || ctx.left().is_zero() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let open_time = all_open.map(|t| t - t0);
    // What the relay itself counts, before the attack lets go: a handshake
    // the kernel completed but the relay never accepted is not in it.
    let relay_open = match ctx.admin {
        Some(a) => super::rig::scrape(a)
            .await
            .map(|m| super::rig::sum(&m, "mlcache_connections")),
        None => None,
    };
    stop.cancel();
    let mut recs = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            recs.push(r);
        }
    }
    let opened: Vec<&Rec> = recs.iter().filter(|r| r.opened).collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &recs {
        if let Some(e) = &r.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let mut after: Vec<Duration> = opened.iter().filter_map(|r| r.closed_after).collect();
    after.sort();
    let in_time = after.iter().filter(|d| **d <= bound).count();
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    for r in &opened {
        *answers
            .entry(format!(
                "{}{}",
                if r.preface {
                    "preface → "
                } else {
                    "silent → "
                },
                r.answer
            ))
            .or_default() += 1;
    }
    let prefaced = opened.iter().filter(|r| r.preface).count();
    let prefaced_closed = opened
        .iter()
        .filter(|r| r.preface && r.closed_after.is_some_and(|d| d <= bound))
        .count();
    let mut o = Outcome {
        viewer_grace: bound,
        ..Outcome::default()
    };
    o.rows.push((
        "parameters".into(),
        format!(
            "{n} TCP connections{} ({} send the HTTP/2 preface, the rest nothing) from 4 loopback source addresses, {at_once} connects at once; watched until {} after the last was opened",
            if n < wanted {
                format!(" (of {wanted} asked; fd limit {limit})")
            } else {
                String::new()
            },
            (0..n)
                .filter(|i| ((i + 1) as f64 * share) as usize > (*i as f64 * share) as usize)
                .count(),
            secs(hold)
        ),
    ));
    o.rows.push((
        "opened".into(),
        format!(
            "{} of {n} in {} (failed: {})",
            opened.len(),
            open_time.map_or("-".into(), secs),
            counts(&errors)
        ),
    ));
    o.rows.push((
        "closed by the relay".into(),
        format!(
            "{} of {} ({in_time} within idle-timeout + {} = {}; {prefaced_closed} of {prefaced} with a preface); time from open to close: {}",
            after.len(),
            opened.len(),
            secs(CLOSE_MARGIN),
            secs(bound),
            spread(&after)
        ),
    ));
    o.rows
        .push(("first thing the relay sent".into(), counts(&answers)));
    if let Some(n) = relay_open {
        o.rows.push((
            "relay's open connections".into(),
            format!("{n} at the end of the watch (its mlcache_connections gauge)"),
        ));
    }
    o.verdicts.push(Verdict::new(
        format!(
            "every silent connection is closed by the relay within idle-timeout ({}) + {}",
            idle.map_or(format!("none given; {} assumed", secs(ASSUMED_IDLE)), secs),
            secs(CLOSE_MARGIN)
        ),
        format!("{in_time} of {}", opened.len()),
        !opened.is_empty() && in_time == opened.len(),
    ));
    Ok(o)
}

/// What the relay's first bytes on a connection were.
fn classify(b: &[u8]) -> &'static str {
    if b.starts_with(b"HTTP/1.1 503") {
        "HTTP 503"
    } else if b.starts_with(b"HTTP/") {
        "another HTTP answer"
    } else if b.len() >= 9 && b[3] == 0x4 {
        "HTTP/2 SETTINGS"
    } else if b.len() >= 9 && b[3] == 0x7 {
        "HTTP/2 GOAWAY"
    } else {
        "other bytes"
    }
}

/// This process's descriptor limit (raised to the hard limit by now).
fn fd_limit() -> u64 {
    crate::sys::raise_fd_limit().0
}
