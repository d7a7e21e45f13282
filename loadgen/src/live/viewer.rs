//! One viewer: it asks for chunk N and, the moment N is complete, for N+1,
//! recording publish → first byte and publish → last byte for every chunk
//! published inside the window into its group's record. [`Ctx`] is what all
//! viewers share.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;

use mlcache::protocol::{now_ns, CacheStatus};

use super::LiveOpts;
use crate::net::Client;
use crate::report::{self, GroupRecord};

/// What every viewer of a run shares.
pub(super) struct Ctx {
    /// The run's options.
    pub(super) opts: LiveOpts,
    /// The live edge, polled from the origin.
    pub(super) edge: AtomicI64,
    /// The chunk cadence: a first byte later than this after publish is late.
    pub(super) cadence_ns: u64,
    /// Chunks published in `[start, end)` (Unix ns) are measured.
    pub(super) window: (u64, u64),
    /// Viewers stop asking then.
    pub(super) stop: Instant,
    /// One record per group.
    pub(super) records: Vec<Mutex<GroupRecord>>,
    /// Bytes delivered to all viewers.
    pub(super) bytes: AtomicU64,
    /// Bytes delivered per group.
    pub(super) group_bytes: Vec<AtomicU64>,
    /// Chunks delivered to all viewers.
    pub(super) chunks_total: AtomicU64,
    /// Errors of all viewers.
    pub(super) errors_total: AtomicU64,
    /// When the run started (Unix ns): second 0 of the timeline.
    pub(super) t0_ns: u64,
    /// Per group, publish → first byte of every chunk (window or not, so the
    /// ramp shows) by the second it was published in; at most
    /// [`TIMELINE_SECONDS`] seconds.
    pub(super) timeline: Vec<Mutex<Vec<Histogram<u64>>>>,
}

/// The timeline's bound: later seconds are not recorded.
pub(super) const TIMELINE_SECONDS: usize = 3600;

/// A small per-second histogram: two significant digits are plenty for a
/// p50/p99 line, and keep an hour of seconds cheap.
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("static bounds")
}

/// What one request got.
pub(crate) enum Fetched {
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

/// One chunk request: its publish time and when its first and last bytes
/// came, or "not yet", or another status.
pub(crate) async fn fetch(
    client: &mut Client,
    req: Request<Empty<Bytes>>,
    seq: u64,
) -> Result<Fetched, &'static str> {
    let resp = client.send(req).await.map_err(|e| {
        // Which way it failed tells a refused stream from a closed connection.
        if e.is_canceled() {
            "request canceled (connection closed before it was sent)"
        } else if e.is_incomplete_message() {
            "connection closed before the response"
        } else if e.is_closed() {
            "connection closed"
        } else if e.is_timeout() {
            "request timeout"
        } else {
            "request failed"
        }
    })?;
    let status = resp.status();
    if status != StatusCode::OK {
        let not_yet = mlcache::protocol::is_not_yet(resp.status(), resp.headers());
        // Drain so the connection stays usable.
        let _ = resp.into_body().collect().await;
        return Ok(if not_yet {
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

/// One viewer of group `g`, starting at `start_at`, on `shared` (an HTTP/2
/// handle) or its own connections.
pub(super) async fn viewer(
    ctx: Arc<Ctx>,
    g: usize,
    start_at: Instant,
    shared: Option<Client>,
    src: Option<IpAddr>,
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
                ctx.group_bytes[g].fetch_add(len, Ordering::Relaxed);
                ctx.chunks_total.fetch_add(1, Ordering::Relaxed);
                let ttfb = first_ns.saturating_sub(publish_ns);
                let second = (publish_ns.saturating_sub(ctx.t0_ns) / 1_000_000_000) as usize;
                if second < TIMELINE_SECONDS {
                    let mut t = ctx.timeline[g].lock();
                    if t.len() <= second {
                        t.resize_with(second + 1, second_histogram);
                    }
                    report::record(&mut t[second], ttfb / 1000);
                }
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
