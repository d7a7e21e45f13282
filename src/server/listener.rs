//! The viewer listeners: HTTP/1.1 and h2c on one port, and HTTP/1.1 and h2
//! over TLS on another (`--listen-tls`), in one accept loop.
//!
//! The accept loop ([`serve`]) enforces `max-connections`: a connection
//! over the cap first displaces the longest-idle open connection, if there
//! is one, and is otherwise refused with a bare 503 (`refuse`), never
//! getting a hyper connection. Accept errors back off ([`AcceptBackoff`]).
//! Each admitted connection runs in [`conn`](super::conn) with the shared
//! hyper builder. On `shutdown` the loop drains: see the [module
//! docs](super).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::conn::connection;
use super::watch::{now_ms, ConnWatch, SIGNAL_CLOSE, SIGNAL_DRAIN, SIGNAL_STOP};
use crate::relay::Relay;

/// The relay's HTTP/2 receive windows, per stream and per connection. The
/// relay never reads a request body, so it advertises only what a peer may
/// send before it learns that (the RFC 9113 default is 65,535).
const H2_RECV_WINDOW: u32 = 64 * 1024;
/// How long a connection over the cap may take to send its first bytes
/// before it is answered anyway.
const REFUSE_WAIT: Duration = Duration::from_millis(250);
/// How long a refused connection is kept after its 503 so the client reads
/// it before the socket closes (closing with unread input would send a RST
/// that can destroy the answer in flight).
const REFUSE_LINGER: Duration = Duration::from_millis(250);
/// Most refusals in progress at once; beyond it connections are closed on
/// the spot, so refusals never hold many descriptors.
const REFUSE_MAX: usize = 256;
/// How long a connection over the cap waits for the place of an idle
/// connection it displaced.
const RECLAIM_WAIT: Duration = Duration::from_millis(250);
/// How long a connection with unread bytes is spared by the reclaim after
/// it opened or last finished a request (see `Shared::reclaim_idle`).
const UNREAD_GRACE_MS: u64 = 1_000;
/// How long an accept loop sleeps after a resource error (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), when retrying at once would only spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept-error log line per this interval per listener.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The whole answer to a connection over `max-connections`.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
cache-control: no-store\r\n\
x-cache: MISS\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 21\r\n\
\r\n\
too many connections\n";

/// Backs an accept loop off after errors and rate-limits their log lines.
pub struct AcceptBackoff {
    what: &'static str,
    window: Option<Instant>,
    failures: u64,
}

impl AcceptBackoff {
    /// For the listener named `what` in logs.
    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            window: None,
            failures: 0,
        }
    }

    /// Called when `accept` failed with `e`: logs at most once per second
    /// (with the count since the last line) and sleeps [`ACCEPT_BACKOFF`]
    /// unless the error concerned only the one connection.
    pub async fn failed(&mut self, e: &io::Error) {
        self.failures += 1;
        let now = Instant::now();
        if self
            .window
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_INTERVAL)
        {
            tracing::warn!(
                listener = self.what,
                error = %e,
                failures = self.failures,
                backoff = ?ACCEPT_BACKOFF,
                "accept failing"
            );
            self.window = Some(now);
            self.failures = 0;
        }
        let per_connection = matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
        );
        if !per_connection {
            // EMFILE, ENFILE, ENOBUFS, ENOMEM or unknown: the next accept
            // would fail the same way at once.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

/// What every viewer connection task shares.
pub(super) struct Shared {
    pub(super) relay: Arc<Relay>,
    /// For TLS connections: HTTP/1.1 or h2, whichever the client speaks.
    pub(super) builder: auto::Builder<TokioExecutor>,
    /// For clear connections found to speak h2 (prior knowledge).
    pub(super) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// Fired after `drain-delay`: connections finish what they serve.
    pub(super) drain: CancellationToken,
    /// Fired after `shutdown-grace`: connections are dropped.
    pub(super) stop: CancellationToken,
    /// Every open connection, so that one over the cap can displace the
    /// longest-idle of them.
    members: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    next: u64,
    all: std::collections::HashMap<u64, Arc<Member>>,
}

/// An open connection as the accept loop sees it: its watch, through which
/// it is also sent the reclaim, the drain and the stop.
pub(super) struct Member {
    pub(super) watch: Arc<ConnWatch>,
    /// Its socket, to see whether a request is waiting to be read.
    fd: RawFd,
}

/// Whether `fd` has bytes waiting to be read. (In the moment between a
/// connection's close and its leaving the members the number may name
/// another socket; the answer then only orders the choice of a connection
/// to displace.)
fn has_input(fd: RawFd) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through a valid pointer; on an fd
    // that is not a socket it fails and writes nothing.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    r == 0 && n > 0
}

impl Shared {
    pub(super) fn join(&self, watch: &Arc<ConnWatch>, fd: RawFd) -> u64 {
        let member = Arc::new(Member {
            watch: watch.clone(),
            fd,
        });
        let mut m = self.members.lock();
        m.next += 1;
        let id = m.next;
        m.all.insert(id, member);
        // Under the lock `signal_all` takes: a connection that joins while
        // the drain or stop is being sent gets it here or there.
        if self.drain.is_cancelled() {
            watch.signal(SIGNAL_DRAIN);
        }
        if self.stop.is_cancelled() {
            watch.signal(SIGNAL_STOP);
        }
        id
    }

    /// Sends `signal` to every open connection.
    fn signal_all(&self, signal: u8) {
        for c in self.members.lock().all.values() {
            c.watch.signal(signal);
        }
    }

    pub(super) fn leave(&self, id: u64) {
        self.members.lock().all.remove(&id);
    }

    /// Asks the connection that has been idle longest (no unfinished
    /// request; never one with a parked viewer, nor one that has just
    /// opened or finished a request and has bytes waiting) to close, as nginx reuses
    /// idle keep-alive connections when it runs out of connections. Returns
    /// whether one was asked. A scan is linear in the open connections, and
    /// happens only when a connection arrives over the cap.
    fn reclaim_idle(&self) -> bool {
        let victim = {
            let m = self.members.lock();
            // Idle since the same millisecond: the older connection (lower
            // id) goes first. In a burst, a newcomer admitted a moment ago
            // may have its request in but not yet read; displacing it would
            // close it without an answer. It is spared for
            // `UNREAD_GRACE_MS` only: bytes the relay leaves unread on
            // purpose (a partial h2 preface it peeks at) must not make a
            // flood of such sockets undisplaceable.
            let now = now_ms();
            m.all
                .iter()
                .filter(|(_, c)| {
                    let since = c.watch.idle_since.load(Ordering::Acquire);
                    c.watch.signals() == 0
                        && c.watch.open.load(Ordering::Acquire) == 0
                        && !(now.saturating_sub(since) < UNREAD_GRACE_MS && has_input(c.fd))
                })
                .min_by_key(|(id, c)| (c.watch.idle_since.load(Ordering::Acquire), **id))
                .map(|(_, c)| c.clone())
        };
        victim.map(|c| c.watch.signal(SIGNAL_CLOSE)).is_some()
    }
}

/// The hyper builders: one settings function per protocol, applied to the
/// auto builder (TLS) and to the h2 one (clear h2), so both paths serve
/// alike. Clear HTTP/1.1 is the relay's own ([`h1`](super::h1)), with the
/// same head limit.
fn builders(
    relay: &Relay,
) -> (
    auto::Builder<TokioExecutor>,
    hyper::server::conn::http2::Builder<TokioExecutor>,
) {
    let c = &relay.config;
    let max_header = c.max_header_size.as_u64() as usize;
    macro_rules! http1 {
        ($b:expr) => {
            // No h1 `header_read_timeout`: the watchdog's `idle-timeout`
            // covers a head that never completes, for h1 and h2 alike.
            $b.timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(max_header.max(8192) + 1024)
        };
    }
    macro_rules! http2 {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .max_concurrent_streams(c.max_streams_per_connection)
                .max_header_list_size(max_header as u32)
                .initial_stream_window_size(H2_RECV_WINDOW)
                .initial_connection_window_size(H2_RECV_WINDOW)
                .keep_alive_interval(c.h2_keepalive_interval)
                .keep_alive_timeout(c.h2_keepalive_timeout)
        };
    }
    let mut auto = auto::Builder::new(TokioExecutor::new());
    http1!(auto.http1());
    http2!(auto.http2());
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2!(h2);
    (auto, h2)
}

/// Accepts viewers until `shutdown` fires; then reports draining, keeps
/// accepting for `drain-delay`, closes the listener and lets in-flight
/// responses finish within `shutdown-grace`.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, shutdown: CancellationToken) {
    serve_with_tls(relay, listener, None, shutdown).await
}

/// [`serve`] on the clear `listener` and, if given, on a TLS listener with
/// its acceptor: one accept loop, so `max-connections`, the reclaim of idle
/// connections and the drain count both listeners' connections together.
pub async fn serve_with_tls(
    relay: Arc<Relay>,
    listener: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    shutdown: CancellationToken,
) {
    let max = relay.config.max_connections.min(u32::MAX as usize);
    let (builder, http2) = builders(&relay);
    let shared = Arc::new(Shared {
        builder,
        http2,
        relay: relay.clone(),
        drain: CancellationToken::new(),
        stop: CancellationToken::new(),
        members: Mutex::new(Members::default()),
    });
    let permits = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(REFUSE_MAX));
    let mut backoff = AcceptBackoff::new("viewer");
    let mut tls_backoff = AcceptBackoff::new("viewer-tls");
    let mut drain_at: Option<Pin<Box<Sleep>>> = None;
    loop {
        let (tcp, peer, secure) = tokio::select! {
            _ = shutdown.cancelled(), if drain_at.is_none() => {
                relay.set_draining();
                tracing::info!(
                    drain_delay = ?relay.config.drain_delay,
                    "draining: health check now fails; still serving until the drain delay is over"
                );
                drain_at = Some(Box::pin(tokio::time::sleep(relay.config.drain_delay)));
                continue;
            }
            _ = async { drain_at.as_mut().expect("guarded").await }, if drain_at.is_some() => break,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => (tcp, peer, None),
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
            r = async { tls.as_ref().expect("guarded").0.accept().await }, if tls.is_some() => match r {
                Ok((tcp, peer)) => (tcp, peer, tls.as_ref().map(|t| t.1.clone())),
                Err(e) => {
                    tls_backoff.failed(&e).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Queue for a place *before* asking an idle connection to
                // give up its own: the semaphore hands a released permit to
                // its queued waiters first, so the place freed for this
                // newcomer cannot go to the next one's `try_acquire` (who
                // would then find the cap full with one idle connection
                // fewer, and this one would be refused after the wait).
                let mut place = Box::pin(permits.clone().acquire_owned());
                match poll_once(place.as_mut()).await {
                    Some(Ok(permit)) => permit,
                    Some(Err(_)) => continue, // never closed
                    None if shared.reclaim_idle() => {
                        relay.metrics.connection_closed("reclaimed");
                        let (shared, refusing) = (shared.clone(), refusing.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(RECLAIM_WAIT, place).await {
                                Ok(Ok(permit)) => {
                                    connection(shared, tcp, peer, permit, secure).await
                                }
                                _ => refuse(&shared.relay, tcp, peer, &refusing, secure.is_some()),
                            }
                        });
                        continue;
                    }
                    None => {
                        drop(place);
                        refuse(&relay, tcp, peer, &refusing, secure.is_some());
                        continue;
                    }
                }
            }
        };
        tokio::spawn(connection(shared.clone(), tcp, peer, permit, secure));
    }
    drop(listener);
    drop(tls);
    let grace = relay.config.shutdown_grace;
    tracing::info!(?grace, "listener closed, draining connections");
    {
        // Cancelled under the members' lock, so `join` sees it or
        // `signal_all` sees the new member.
        let _m = shared.members.lock();
        shared.drain.cancel();
    }
    shared.signal_all(SIGNAL_DRAIN);
    // Every connection task holds a permit: all of them back means all done.
    let all = max as u32;
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("grace period over, dropping remaining connections");
        {
            let _m = shared.members.lock();
            shared.stop.cancel();
        }
        shared.signal_all(SIGNAL_STOP);
        // They drop at once on `stop`; the bound only guards against a bug.
        let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(all)).await;
    }
}

/// Polls `f` once: its output if it is ready, `None` if it is not (it is
/// then registered, e.g. queued on a semaphore, and may be polled on later,
/// from another task).
async fn poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Answers a connection over `max-connections` with a bare 503 and closes
/// it, without a hyper connection: the relay waits at most [`REFUSE_WAIT`]
/// for the client's first bytes (an HTTP/1.1 client that gets an answer
/// before it has sent its request takes it for a broken connection), writes
/// the 503 if the socket takes it at once (an h2c client, recognised by its
/// preface, is just closed: it could not read an HTTP/1.1 answer), and
/// lingers at most [`REFUSE_LINGER`] so the client reads the answer before
/// the socket closes. At most [`REFUSE_MAX`] refusals wait at once; beyond
/// that a connection is closed on the spot. A TLS connection (`secure`) is
/// always closed on the spot: an answer would need a handshake first, which
/// is exactly the work an overloaded relay should not do.
fn refuse(
    relay: &Relay,
    tcp: TcpStream,
    peer: SocketAddr,
    refusing: &Arc<Semaphore>,
    secure: bool,
) {
    relay.metrics.rejected("connections");
    relay.metrics.connection_closed("over_limit");
    relay.metrics.shed_log.note("connections");
    tracing::debug!(%peer, secure, "refused connection over max-connections");
    if secure {
        return;
    }
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut tcp = tcp;
        let mut first = [0u8; 4];
        let read = tokio::time::timeout(REFUSE_WAIT, async {
            loop {
                if tcp.readable().await.is_err() {
                    return 0;
                }
                // Readiness can be spurious: only a read tells.
                match tcp.try_read(&mut first) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Ok(n) => return n,
                    Err(_) => return 0,
                }
            }
        })
        .await
        .unwrap_or(0);
        let h2c = read == first.len() && &first == b"PRI ";
        discard_ready(&tcp);
        if !h2c {
            let _ = tcp.try_write(REFUSAL);
        }
        let _ = tcp.shutdown().await;
        let _ = tokio::time::timeout(REFUSE_LINGER, async {
            let mut buf = [0u8; 4096];
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(permit);
    });
}

/// Reads and drops whatever input is already buffered, without waiting.
fn discard_ready(tcp: &TcpStream) {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match tcp.try_read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}
