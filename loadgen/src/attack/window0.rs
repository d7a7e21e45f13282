//! `window0`: HTTP/2 connections that advertise SETTINGS_INITIAL_WINDOW_SIZE=0
//! and GET big VOD chunks on many streams, never reading a byte.
//!
//! Each connection is an `h2` client with a zero stream window, so the relay
//! can send response heads but no DATA. Every stream's task waits for its
//! head, then for the stream to end (the relay resetting it, or closing the
//! connection) without ever releasing flow-control capacity. A driver task
//! per connection records when the relay closed it. After the hold the
//! attack drops everything; the rig reads how far the relay's RSS went.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{counts, mib, secs, Ctx, Outcome, Verdict, CLOSE_MARGIN};
use crate::net;

/// Longest a connect plus handshake, or waiting to open a stream, may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The relay's `--send-timeout` when none is given (its default).
const RELAY_DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory above `--memory-limit` the issue allows (code, buffers, allocator).
const RSS_SLACK: u64 = 100 << 20;

/// One stream that got a response head.
struct StreamRec {
    status: u16,
    head_at: Instant,
    /// When and how the stream ended, if it did before the attack stopped.
    ended: Option<(Instant, String)>,
}

#[derive(Default)]
struct State {
    sent: AtomicU64,
    not_sent: AtomicU64,
    body_bytes: AtomicU64,
    heads: Mutex<BTreeMap<u16, u64>>,
    no_head: Mutex<BTreeMap<String, u64>>,
    streams: Mutex<Vec<StreamRec>>,
    /// Connections the relay ended: when (after the attack began) and how.
    closed: Mutex<Vec<(Duration, String)>>,
    failed: Mutex<BTreeMap<String, u64>>,
}

/// How an h2 stream or connection ended, in a few words.
pub fn describe(e: &h2::Error) -> String {
    match e.reason() {
        Some(r) if e.is_go_away() => format!("GOAWAY {r:?}"),
        Some(r) if e.is_reset() => format!("RST_STREAM {r:?}"),
        Some(r) => format!("h2 {r:?}"),
        None if e.is_io() => "connection closed".into(),
        None => e.to_string(),
    }
}

/// Runs the attack.
pub async fn attack(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let conns = ctx.args.connections.unwrap_or(250).max(1);
    let per = ctx.args.streams.unwrap_or(40).max(1);
    let chunks = ctx.args.chunks.max(1);
    let total = (conns * per) as u64;
    let send_timeout = ctx.relay_duration("--send-timeout");
    let timeout = send_timeout.unwrap_or(RELAY_DEFAULT_SEND_TIMEOUT);
    let bound = timeout + CLOSE_MARGIN;
    let hold = ctx
        .args
        .hold
        .unwrap_or((bound + Duration::from_secs(10)).max(Duration::from_secs(30)));
    let st = Arc::new(State::default());
    let stop = ctx.stop.child_token();
    let t0 = Instant::now();
    let plan = Plan {
        relay: ctx.relay,
        origin: ctx.origin,
        per,
        chunks,
        t0,
    };
    let mut tasks = JoinSet::new();
    for i in 0..conns {
        tasks.spawn(connection(i, plan, st.clone(), stop.clone()));
    }
    // Hold until `hold` after the last stream went out, or every stream has
    // ended, or the deadline.
    let mut all_out: Option<Instant> = None;
    loop {
        let sent = st.sent.load(Ordering::Relaxed);
        let done = sent + st.not_sent.load(Ordering::Relaxed);
        if done >= total && all_out.is_none() {
            all_out = Some(Instant::now());
        }
        let heads: u64 = st.heads.lock().values().sum();
        let no_head: u64 = st.no_head.lock().values().sum();
        let ended = st
            .streams
            .lock()
            .iter()
            .filter(|s| s.ended.is_some())
            .count() as u64;
        let closed = st.closed.lock().len();
        ctx.progress(format!(
            "streams sent {sent}/{total}, heads {heads} ({}), ended by relay {ended}, connections closed by relay {closed}/{conns}",
            counts(&st.heads.lock())
        ));
        let finished = done >= total && ended + no_head >= sent;
        let held = all_out.is_some_and(|t| t.elapsed() >= hold) || t0.elapsed() >= hold * 3;
        if finished || held || ctx.left().is_zero() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let attack_end = t0.elapsed();
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let streams = std::mem::take(&mut *st.streams.lock());
    let stalled: Vec<&StreamRec> = streams.iter().filter(|s| s.status == 200).collect();
    let mut ends: Vec<Duration> = stalled
        .iter()
        .filter_map(|s| s.ended.as_ref().map(|(t, _)| *t - s.head_at))
        .collect();
    ends.sort();
    let in_time = ends.iter().filter(|d| **d <= bound).count();
    let mut how: BTreeMap<String, u64> = BTreeMap::new();
    for s in &stalled {
        if let Some((_, h)) = &s.ended {
            *how.entry(h.clone()).or_default() += 1;
        }
    }
    let mut closed = std::mem::take(&mut *st.closed.lock());
    closed.sort_by_key(|(t, _)| *t);
    let mut closed_how: BTreeMap<String, u64> = BTreeMap::new();
    for (_, h) in &closed {
        *closed_how.entry(h.clone()).or_default() += 1;
    }
    let chunk = match (ctx.args.chunk_size, ctx.args.target) {
        (Some(c), _) => mib(c.as_u64()),
        (None, None) => mib(32 << 20),
        (None, Some(_)) => "the origin's chunk size".into(),
    };
    let mut o = Outcome {
        viewer_grace: Duration::ZERO,
        ..Outcome::default()
    };
    o.rows.push((
        "parameters".into(),
        format!(
            "{conns} HTTP/2 connections × {per} streams = {total} streams with SETTINGS_INITIAL_WINDOW_SIZE=0, GET /vod/0..{} ({chunks} chunks × {chunk}), never read; held {} after the last stream",
            chunks - 1,
            secs(hold)
        ),
    ));
    o.rows.push((
        "streams".into(),
        format!(
            "{} sent, {} not sent ({}); heads: {}; no head: {}; body bytes received {}",
            st.sent.load(Ordering::Relaxed),
            st.not_sent.load(Ordering::Relaxed),
            counts(&st.failed.lock()),
            counts(&st.heads.lock()),
            counts(&st.no_head.lock()),
            st.body_bytes.load(Ordering::Relaxed)
        ),
    ));
    o.rows.push((
        "stalled 200 streams".into(),
        format!(
            "{} of {} ended by the relay ({}), {} within send-timeout + {} = {}; time from head to end: {}",
            ends.len(),
            stalled.len(),
            counts(&how),
            in_time,
            secs(CLOSE_MARGIN),
            secs(bound),
            spread(&ends)
        ),
    ));
    o.rows.push((
        "connections closed by relay".into(),
        format!(
            "{} of {conns} before the attack let go at {} ({}); at: {}",
            closed.len(),
            secs(attack_end),
            counts(&closed_how),
            spread(&closed.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        ),
    ));
    o.verdicts.push(Verdict::new(
        format!(
            "every stalled stream is ended by the relay within send-timeout ({}{}) + {}",
            secs(timeout),
            if send_timeout.is_none() {
                ", the relay's default"
            } else {
                ""
            },
            secs(CLOSE_MARGIN)
        ),
        format!("{in_time} of {}", stalled.len()),
        in_time == stalled.len(),
    ));
    if let Some(limit) = ctx.relay_size("--memory-limit") {
        o.rss_bound = Some((limit + RSS_SLACK, "--memory-limit + 100 MiB".into()));
    }
    Ok(o)
}

/// `first 1.0 s, median 2.0 s, last 3.0 s` of sorted durations.
pub fn spread(sorted: &[Duration]) -> String {
    match (sorted.first(), sorted.last()) {
        (Some(a), Some(z)) => format!(
            "first {}, median {}, last {}",
            secs(*a),
            secs(sorted[sorted.len() / 2]),
            secs(*z)
        ),
        _ => "-".into(),
    }
}

/// What every connection does.
#[derive(Clone, Copy)]
struct Plan {
    relay: std::net::SocketAddr,
    origin: std::net::SocketAddr,
    /// Streams per connection.
    per: usize,
    /// Distinct chunks the streams spread over.
    chunks: u64,
    /// When the attack began.
    t0: Instant,
}

async fn connection(i: usize, plan: Plan, st: Arc<State>, stop: CancellationToken) {
    let Plan {
        relay,
        origin,
        per,
        chunks,
        t0,
    } = plan;
    let fail = |what: String, n: usize| {
        st.not_sent.fetch_add(n as u64, Ordering::Relaxed);
        *st.failed.lock().entry(what).or_default() += n as u64;
    };
    let open = async {
        let tcp = net::connect(relay, net::source(i, 4))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| format!("handshake: {}", describe(&e)))
    };
    let (mut client, conn) = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return fail(e, per),
        Err(_) => return fail("connect timeout".into(), per),
    };
    let mut streams = JoinSet::new();
    {
        let (st, stop) = (st.clone(), stop.clone());
        streams.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = conn => {
                    // Dropped by the attack itself, not closed by the relay.
                    if stop.is_cancelled() {
                        return;
                    }
                    let how = match r {
                        Ok(()) => "closed".to_string(),
                        Err(e) => describe(&e),
                    };
                    st.closed.lock().push((t0.elapsed(), how));
                }
            }
        });
    }
    for s in 0..per {
        match tokio::time::timeout(
            OPEN_TIMEOUT,
            std::future::poll_fn(|cx| client.poll_ready(cx)),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                fail(describe(&e), per - s);
                break;
            }
            Err(_) => {
                fail("no stream credit".into(), per - s);
                break;
            }
        };
        let k = (i * per + s) as u64 % chunks;
        let req = Request::get(format!("http://{origin}/vod/{k}"))
            .body(())
            .expect("static request");
        match client.send_request(req, true) {
            Ok((resp, _)) => {
                st.sent.fetch_add(1, Ordering::Relaxed);
                streams.spawn(stream(resp, st.clone(), stop.clone()));
            }
            Err(e) => {
                fail(describe(&e), per - s);
                break;
            }
        }
    }
    // The client handle keeps the connection open until the attack stops.
    stop.cancelled().await;
    drop(client);
    while streams.join_next().await.is_some() {}
}

async fn stream(resp: h2::client::ResponseFuture, st: Arc<State>, stop: CancellationToken) {
    let head = tokio::select! {
        _ = stop.cancelled() => {
            *st.no_head.lock().entry("none before the attack stopped".into()).or_default() += 1;
            return;
        }
        r = resp => r,
    };
    let resp = match head {
        Ok(r) => r,
        Err(e) => {
            *st.no_head.lock().entry(describe(&e)).or_default() += 1;
            return;
        }
    };
    let status = resp.status().as_u16();
    *st.heads.lock().entry(status).or_default() += 1;
    let mut rec = StreamRec {
        status,
        head_at: Instant::now(),
        ended: None,
    };
    let mut body = resp.into_body();
    if body.is_end_stream() {
        rec.ended = Some((Instant::now(), "empty body".into()));
    } else {
        loop {
            // Never releases capacity: the window stays at 0.
            tokio::select! {
                _ = stop.cancelled() => break,
                d = body.data() => match d {
                    Some(Ok(b)) => {
                        st.body_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    None => {
                        rec.ended = Some((Instant::now(), "end of stream".into()));
                        break;
                    }
                    // An error after the stop is the attack letting go.
                    Some(Err(_)) if stop.is_cancelled() => break,
                    Some(Err(e)) => {
                        rec.ended = Some((Instant::now(), describe(&e)));
                        break;
                    }
                },
            }
        }
    }
    st.streams.lock().push(rec);
}
