//! `tiny-pieces`: an origin that sends a big body in 1-byte chunked frames.
//!
//! [`RawOrigin`] is a raw-TCP HTTP/1.1 server written here (no HTTP library
//! would frame a body this badly): every request gets `200`, a cacheable
//! Cache-Control, `Transfer-Encoding: chunked`, and the body one byte per
//! frame (`1\r\nX\r\n`), so the wire carries six bytes per body byte. The
//! attack sends `--viewers` viewers at once (one miss, the rest coalesced),
//! then as many again (hits), and checks every byte each viewer got
//! against the pattern as it streams in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{mib, secs, Ctx, Outcome, Verdict};
use crate::net::Client;

/// Body bytes written per `write_all` (six times as many on the wire).
const BLOCK: u64 = 16 * 1024;
/// Longest a request head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// Memory above `--memory-limit` the issue allows (code, buffers, allocator).
const RSS_SLACK: u64 = 100 << 20;

/// Byte `i` of the body: position dependent, so a lost, doubled or moved
/// piece shows.
pub fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// The raw-TCP origin.
pub struct RawOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl RawOrigin {
    /// Starts serving a body of `size` bytes in 1-byte frames.
    pub async fn start(size: u64) -> std::io::Result<RawOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (r, s) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => match a {
                        Ok((t, _)) => t,
                        // Out of descriptors or similar: back off, do not spin.
                        Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                    },
                };
                let (r, s) = (r.clone(), s.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = serve(tcp, size, &r) => {}
                    }
                });
            }
        });
        Ok(RawOrigin {
            addr,
            requests,
            stop,
        })
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(mut tcp: TcpStream, size: u64, requests: &AtomicU64) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 || head.len() > MAX_HEAD {
                return Err(std::io::Error::other("no request head"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read_head)
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    requests.fetch_add(1, Ordering::Relaxed);
    tcp.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
          Cache-Control: public, max-age=3600\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n",
    )
    .await?;
    let mut wire = Vec::with_capacity(BLOCK as usize * 6);
    let mut at = 0u64;
    while at < size {
        wire.clear();
        for i in at..(at + BLOCK).min(size) {
            wire.extend_from_slice(b"1\r\n");
            wire.push(byte_at(i));
            wire.extend_from_slice(b"\r\n");
        }
        tcp.write_all(&wire).await?;
        at = (at + BLOCK).min(size);
    }
    tcp.write_all(b"0\r\n\r\n").await?;
    tcp.shutdown().await
}

/// What one viewer got.
struct Got {
    status: u16,
    x_cache: String,
    len: u64,
    /// Body frames received (what the relay's pieces became on the wire).
    frames: u64,
    /// Offset of the first wrong byte, if any.
    wrong_at: Option<u64>,
    took: Duration,
    error: Option<String>,
}

impl Got {
    fn exact(&self, size: u64) -> bool {
        self.status == 200 && self.len == size && self.wrong_at.is_none() && self.error.is_none()
    }
}

async fn fetch(relay: SocketAddr, origin: SocketAddr) -> Got {
    let t = Instant::now();
    let mut got = Got {
        status: 0,
        x_cache: "-".into(),
        len: 0,
        frames: 0,
        wrong_at: None,
        took: Duration::ZERO,
        error: None,
    };
    let run = async {
        let mut c = Client::open(relay, None, false).await?;
        let req = Request::get(format!("http://{origin}/tiny"))
            .header("host", origin.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = c.send(req).await.map_err(|e| format!("request: {e}"))?;
        got.status = resp.status().as_u16();
        got.x_cache = resp
            .headers()
            .get(mlcache::protocol::X_CACHE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("body: {e}"))?;
            if let Ok(data) = f.into_data() {
                for (k, b) in data.iter().enumerate() {
                    let i = got.len + k as u64;
                    if got.wrong_at.is_none() && *b != byte_at(i) {
                        got.wrong_at = Some(i);
                    }
                }
                got.len += data.len() as u64;
                got.frames += 1;
            }
        }
        Ok::<_, String>(())
    };
    if let Err(e) = run.await {
        got.error = Some(e);
    }
    got.took = t.elapsed();
    got
}

/// `n` viewers at once; returns what each got.
async fn phase(ctx: &Ctx, n: usize) -> Vec<Got> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (relay, origin) = (ctx.relay, ctx.origin);
        set.spawn(fetch(relay, origin));
    }
    let mut out = Vec::new();
    let deadline = tokio::time::sleep(ctx.left());
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(g)) => out.push(g),
                Some(Err(_)) => {}
                None => break,
            },
            _ = &mut deadline => {
                set.abort_all();
                break;
            }
        }
    }
    out
}

fn summary(got: &[Got], n: usize, size: u64) -> String {
    let exact = got.iter().filter(|g| g.exact(size)).count();
    let mut cache: std::collections::BTreeMap<String, u64> = Default::default();
    for g in got {
        *cache
            .entry(format!("{} {}", g.status, g.x_cache))
            .or_default() += 1;
    }
    let slowest = got.iter().map(|g| g.took).max().unwrap_or_default();
    let (bytes, frames) = got
        .iter()
        .fold((0u64, 0u64), |(b, f), g| (b + g.len, f + g.frames));
    let mut s = format!(
        "{exact} of {n} exact ({}), slowest {}, {:.0} bytes per body frame received on average",
        super::counts(&cache),
        secs(slowest),
        bytes as f64 / frames.max(1) as f64
    );
    for g in got.iter().filter(|g| !g.exact(size)) {
        s.push_str(&format!(
            "; one got {} bytes{}{}",
            g.len,
            g.wrong_at
                .map_or(String::new(), |w| format!(", first wrong byte at {w}")),
            g.error
                .as_ref()
                .map_or(String::new(), |e| format!(", error {e}"))
        ));
    }
    s
}

/// Runs the attack.
pub async fn attack(ctx: &Ctx, origin: Option<Arc<RawOrigin>>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(origin.is_some(), "tiny-pieces needs its own raw origin");
    let size = ctx.args.size.as_u64().max(1);
    let n = ctx.args.viewers.max(1);
    ctx.progress(format!("{n} viewers fetching (misses)"));
    let misses = phase(ctx, n).await;
    ctx.progress(format!("{n} viewers fetching (hits)"));
    let hits = phase(ctx, n).await;
    let exact = misses
        .iter()
        .chain(hits.iter())
        .filter(|g| g.exact(size))
        .count();
    let mut o = Outcome {
        viewer_grace: Duration::ZERO,
        origin_bound: Some((1, "one fetch for every viewer".into())),
        ..Outcome::default()
    };
    o.rows.push((
        "parameters".into(),
        format!(
            "a {} body in 1-byte chunked frames ({} on the wire) from a raw-TCP origin; {n} viewers at once, then {n} more",
            mib(size),
            mib(size * 6 + 5)
        ),
    ));
    o.rows
        .push(("first viewers".into(), summary(&misses, n, size)));
    o.rows.push(("then".into(), summary(&hits, n, size)));
    o.verdicts.push(Verdict::new(
        "every viewer gets the exact bytes",
        format!("{exact} of {}", 2 * n),
        exact == 2 * n,
    ));
    if let Some(limit) = ctx.relay_size("--memory-limit") {
        o.rss_bound = Some((limit + RSS_SLACK, "--memory-limit + 100 MiB".into()));
    }
    Ok(o)
}
