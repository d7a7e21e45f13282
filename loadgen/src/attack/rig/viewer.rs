//! The real viewer: while the attack runs it fetches each new live chunk
//! of its own origin through the relay, on a new HTTP/1.1 connection each
//! time (so every chunk also goes through accept and admission), and logs
//! every attempt's outcome and time for the report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use mlcache::origin::OriginHandle;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::net;

/// Longest one request of the real viewer may take, body included.
const VIEWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk size and cadence of the real viewer's live stream.
pub(super) const VIEWER_CHUNK: usize = 64 * 1024;
pub(super) const VIEWER_CADENCE: Duration = Duration::from_millis(500);

/// One chunk request of the real viewer.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    /// When it was sent.
    pub(super) at: Instant,
    /// Served in full.
    pub(super) ok: bool,
    /// `200`, or what went wrong.
    pub(super) what: String,
    /// How long it took.
    pub(super) took: Duration,
}

/// A real viewer: fetches each new live chunk through the relay on a new
/// HTTP/1.1 connection (so every chunk also goes through accept and
/// admission) and checks its status and length.
pub(super) struct Viewer {
    /// Every attempt so far.
    pub(super) log: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
}

impl Viewer {
    /// Starts viewing `origin`'s live stream 0 through `relay`.
    pub(super) fn start(relay: SocketAddr, origin: Arc<OriginHandle>) -> Viewer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (l, s) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                let seq = origin.edge(0);
                if seq >= 0 {
                    let at = Instant::now();
                    let r = tokio::select! {
                        _ = s.cancelled() => break,
                        r = tokio::time::timeout(VIEWER_TIMEOUT, fetch_chunk(relay, origin.addr, seq as u64)) => r,
                    };
                    let (ok, what) = match r {
                        Ok(Ok(())) => (true, "200".to_string()),
                        Ok(Err(e)) => (false, e),
                        Err(_) => (false, "timeout".to_string()),
                    };
                    l.lock().push(Attempt {
                        at,
                        ok,
                        what,
                        took: at.elapsed(),
                    });
                }
                // Pace: the next chunk, polled (the origin has no edge watch
                // to share), bounded so a stalled origin cannot stop the loop.
                let waited = Instant::now();
                while origin.edge(0) <= seq && waited.elapsed() < VIEWER_CADENCE * 4 {
                    tokio::select! {
                        _ = s.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        });
        Viewer { log, stop }
    }

    /// Waits until the viewer has been served `n` times.
    pub(super) async fn served(&self, n: usize, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.log.lock().iter().filter(|a| a.ok).count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The attempts sent in `[from, to)`.
    pub(super) fn attempts(&self, from: Instant, to: Instant) -> Vec<Attempt> {
        self.log
            .lock()
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .cloned()
            .collect()
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One chunk through the relay on a new connection: `Ok` only for a 200
/// with the whole chunk.
async fn fetch_chunk(relay: SocketAddr, origin: SocketAddr, seq: u64) -> Result<(), String> {
    let uri = format!("http://{origin}/live/0/{seq}");
    let (status, body) = net::get(relay, &uri, &origin.to_string()).await?;
    if status != StatusCode::OK {
        return Err(status.as_u16().to_string());
    }
    if body.len() != VIEWER_CHUNK {
        return Err(format!("short body ({} bytes)", body.len()));
    }
    Ok(())
}
