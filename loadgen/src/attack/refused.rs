//! `refused`: requests that admission must refuse before any fetch starts.
//!
//! One viewer holds a fetch open (`/vod/0?delay_head_ms=…` makes the origin
//! wait before its head), which fills `--max-inflight-fetches-per-origin 1`
//! (or the global cap). Then workers send distinct-query GETs on the same
//! origin, each a new key, over keep-alive HTTP/1.1 connections, and count
//! the statuses. The rig counts the origin's requests: the held fetch only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;
use tokio::task::JoinSet;

use super::rig::{scrape, sum};
use super::{counts, secs, Ctx, Outcome, Verdict};
use crate::net::Client;

/// Longest one refused request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest the held fetch takes to reach the relay's in-flight gauge.
const HOLD_START: Duration = Duration::from_secs(10);

/// Runs the attack.
pub async fn attack(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let n = ctx.args.requests.unwrap_or(1000).max(1);
    let workers = ctx.args.connections.unwrap_or(20).clamp(1, n);
    let (relay, origin) = (ctx.relay, ctx.origin);
    let hold_ms = ctx.args.time_limit.as_millis() as u64;
    let holder_path = format!("http://{origin}/vod/0?delay_head_ms={hold_ms}");
    let held = {
        let path = holder_path.clone();
        let stop = ctx.stop.clone();
        tokio::spawn(async move {
            let get = async {
                let mut c = Client::open(relay, None, false).await?;
                let req = Request::get(path)
                    .header("host", origin.to_string())
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let r = c.send(req).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(r.status().as_u16().to_string())
            };
            tokio::select! {
                _ = stop.cancelled() => "still waiting (held to the end)".to_string(),
                r = get => match r { Ok(s) => format!("answered {s}"), Err(e) => e },
            }
        })
    };
    // Wait for the held fetch to be in flight (the relay's own gauge).
    let t = Instant::now();
    let mut in_flight = false;
    if let Some(a) = ctx.admin {
        while t.elapsed() < HOLD_START {
            if scrape(a)
                .await
                .is_some_and(|m| sum(&m, "mlcache_open_slots") >= 1.0)
            {
                in_flight = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    anyhow::ensure!(
        in_flight,
        "the held fetch did not show in the relay's mlcache_open_slots within {}",
        secs(HOLD_START)
    );
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let retry_after = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (next, answered, statuses, retry_after) = (
            next.clone(),
            answered.clone(),
            statuses.clone(),
            retry_after.clone(),
        );
        let deadline = ctx.deadline;
        tasks.spawn(async move {
            let mut client: Option<Client> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let one = async {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = Some(Client::open(relay, None, false).await?);
                    }
                    let c = client.as_mut().ok_or("no connection")?;
                    let req = Request::get(format!("http://{origin}/vod/1?refused={i}"))
                        .header("host", origin.to_string())
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    let r = c.send(req).await.map_err(|e| format!("request: {e}"))?;
                    let status = r.status().as_u16();
                    let ra = r.headers().contains_key(http::header::RETRY_AFTER);
                    r.into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e}"))?;
                    Ok::<_, String>((status, ra))
                };
                let what = match tokio::time::timeout(REQUEST_TIMEOUT, one).await {
                    Ok(Ok((s, ra))) => {
                        if ra {
                            retry_after.fetch_add(1, Ordering::Relaxed);
                        }
                        s.to_string()
                    }
                    Ok(Err(e)) => {
                        client = None;
                        e
                    }
                    Err(_) => {
                        client = None;
                        "timeout".into()
                    }
                };
                *statuses.lock().entry(what).or_default() += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                ctx.progress(format!(
                    "answered {}/{n}: {}",
                    answered.load(Ordering::Relaxed),
                    counts(&statuses.lock())
                ));
            }
        }
    }
    let took = t0.elapsed();
    let statuses = statuses.lock().clone();
    let refused = statuses.get("503").copied().unwrap_or(0);
    held.abort();
    let holder = match held.await {
        Ok(s) => s,
        Err(_) => "still waiting (held to the end)".into(),
    };
    let cap = [
        "--max-inflight-fetches",
        "--max-inflight-fetches-per-origin",
    ]
    .iter()
    .filter_map(|f| ctx.relay_args.value(f).map(|v| format!("{f} {v}")))
    .collect::<Vec<_>>()
    .join(", ");
    let mut o = Outcome {
        viewer_grace: Duration::ZERO,
        origin_bound: Some((1, "the held fetch; 0 for the refused requests".into())),
        ..Outcome::default()
    };
    o.rows.push((
        "parameters".into(),
        format!(
            "one held fetch ({}) fills {}; then {n} GETs of distinct keys /vod/1?refused=I over {workers} HTTP/1.1 keep-alive connections",
            holder_path.trim_start_matches(&format!("http://{origin}")),
            if cap.is_empty() { "the relay's fetch cap".into() } else { cap }
        ),
    ));
    o.rows.push((
        "statuses".into(),
        format!(
            "{} in {} ({} with Retry-After)",
            counts(&statuses),
            secs(took),
            retry_after.load(Ordering::Relaxed)
        ),
    ));
    o.rows.push(("held request".into(), holder));
    o.verdicts.push(Verdict::new(
        format!("all {n} requests refused with 503"),
        format!("{refused} of {n}"),
        refused == n as u64,
    ));
    Ok(o)
}
