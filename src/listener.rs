//! Downstream connections: the viewer-facing listener (HTTP/1.1 and h2c on
//! one port) and the admin listener (`/metrics`, `/healthz`).
//!
//! This module owns everything below the request: accepting sockets, the
//! connection cap, the hyper connection builder and its timeouts, the
//! per-connection watchdog and the drain. Each request head is handed to
//! [`server::handle`](crate::server::handle), which owns the request path;
//! its response body comes back through a [`Tracked`] wrapper.
//!
//! How a connection lives:
//!
//! - **Accept.** Over `max-connections` it is answered within a fraction of
//!   a second with a bare 503 and closed ([`refuse`]); it never gets a
//!   hyper connection. Accept
//!   errors (EMFILE and the like) back off instead of spinning
//!   ([`AcceptBackoff`]).
//! - **Requests.** A request's body is dropped unread: the relay serves GET
//!   and HEAD only, and a dropped h2 `RecvStream` discards what arrives and
//!   gives the connection window back at once, so nobody can park request
//!   bytes in the relay. The h2 receive windows are small for the same reason.
//! - **Watchdog.** Each connection task watches two things besides hyper
//!   ([`ConnWatch`]): how long it has had no unfinished request
//!   (`idle-timeout`: silent sockets, a partial or bare h2 preface, idle
//!   keep-alive), and how long any of its response bodies has had data
//!   outstanding without progress (`send-timeout`). Progress is stamped by
//!   the body wrapper, one `Arc`'d pair of atomics per response; hyper's h2
//!   server stops polling a body whose stream has no flow-control window, so
//!   nothing inside the body could notice. A stalled connection is dropped,
//!   which drops all its bodies and the chunk memory they pin.
//!   [`StallGuard`] still fails TCP writes stalled for `send-timeout`.
//! - **Drain.** When `shutdown` fires the relay reports draining (`/healthz`
//!   503) but keeps accepting for `drain-delay`, then closes the listener,
//!   asks every connection to finish (h2 GOAWAY, h1 close after the current
//!   response) and drops what is left after `shutdown-grace`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::relay::Relay;
use crate::server::{handle, local_response, Body};
use crate::slot::SlotError;

/// Most concurrent HTTP/2 streams per downstream connection.
const H2_MAX_STREAMS: u32 = 10_000;
/// The relay's HTTP/2 receive windows, per stream and per connection. The
/// relay never reads a request body, so it advertises only what a peer may
/// send before it learns that (the RFC 9113 default is 65,535).
const H2_RECV_WINDOW: u32 = 64 * 1024;
/// Largest slice of a response body handed to hyper at once. Progress is
/// stamped per frame, so a large piece is cut (zero-copy) into frames this
/// big: a response then counts as progressing once this much has drained,
/// about one default h2 window, not once a whole multi-MiB piece has.
const PROGRESS_FRAME: usize = 64 * 1024;
/// How long a connection closed for idleness, or refused over the cap, may
/// take to flush its goodbye (an h2 GOAWAY) before it is dropped.
const CLOSE_FLUSH: Duration = Duration::from_millis(100);
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
/// How long an accept loop sleeps after a resource error (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), when retrying at once would only spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept-error log line per this interval per listener.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Lower bound of the watchdog's re-check period.
const MIN_CHECK: Duration = Duration::from_millis(10);

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

/// Milliseconds since a process-wide epoch: the unit of progress stamps,
/// which must fit an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

// ---------------------------------------------------------------------------
// Per-connection watchdog

/// A response body's state, as the watchdog sees it.
const OUTSTANDING: u8 = 0;
/// The consumer polled and the body is waiting for its source (upstream):
/// the connection is not at fault.
const WAITING: u8 = 1;
/// Ended or dropped.
const DONE: u8 = 2;

/// The progress of one response body: its state and when it last changed.
/// Also the waker the inner body is polled with, so that data becoming
/// ready while hyper is not polling marks the body outstanding.
struct Progress {
    stamp: AtomicU64,
    state: AtomicU8,
    /// hyper's waker, woken through ours.
    outer: AtomicWaker,
}

impl Progress {
    fn set(&self, state: u8) {
        self.stamp.store(now_ms(), Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
    }
}

impl Wake for Progress {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Data (or the end) is ready; from now on it is hyper's turn. The
        // stamp is written before the state, so a watchdog that sees
        // OUTSTANDING never pairs it with the old stamp of the wait.
        if self.state.load(Ordering::Acquire) == WAITING {
            self.stamp.store(now_ms(), Ordering::Relaxed);
            let _ = self.state.compare_exchange(
                WAITING,
                OUTSTANDING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        self.outer.wake();
    }
}

/// What one connection's watchdog knows: its unfinished requests and the
/// progress of its response bodies.
pub(crate) struct ConnWatch {
    /// Requests whose head arrived and whose response has not ended.
    open: AtomicUsize,
    /// When `open` last became 0 (or the connection opened), in [`now_ms`].
    idle_since: AtomicU64,
    bodies: Mutex<Bodies>,
}

struct Bodies {
    list: Vec<Arc<Progress>>,
    /// Prune finished entries when the list reaches this length.
    prune_at: usize,
}

/// What the watchdog found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A response made no progress for `send-timeout`.
    Stalled,
    /// No unfinished request for `idle-timeout`.
    Idle,
    /// All well: look again at this [`now_ms`] instant.
    RecheckAt(u64),
}

impl ConnWatch {
    fn new() -> ConnWatch {
        ConnWatch {
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            bodies: Mutex::new(Bodies {
                list: Vec::new(),
                prune_at: 64,
            }),
        }
    }

    fn register(&self, p: Arc<Progress>) {
        let mut b = self.bodies.lock();
        if b.list.len() >= b.prune_at {
            b.list.retain(|p| p.state.load(Ordering::Acquire) != DONE);
            // Amortised: at most one prune per doubling.
            b.prune_at = (b.list.len() * 2).max(64);
        }
        b.list.push(p);
    }

    fn check(&self, now: u64, idle_timeout: Duration, send_timeout: Duration) -> Verdict {
        let (idle_ms, send_ms) = (
            idle_timeout.as_millis() as u64,
            send_timeout.as_millis() as u64,
        );
        // With nothing to time, look again after a quarter of the shorter
        // timeout: a close is then at most that late.
        let period = (idle_timeout.min(send_timeout) / 4).max(MIN_CHECK);
        let mut next = now + period.as_millis() as u64;
        {
            let mut b = self.bodies.lock();
            b.list.retain(|p| p.state.load(Ordering::Acquire) != DONE);
            for p in &b.list {
                if p.state.load(Ordering::Acquire) == OUTSTANDING {
                    let due = p.stamp.load(Ordering::Relaxed) + send_ms;
                    if due <= now {
                        return Verdict::Stalled;
                    }
                    next = next.min(due);
                }
            }
        }
        if self.open.load(Ordering::Acquire) == 0 {
            let due = self.idle_since.load(Ordering::Acquire) + idle_ms;
            if due <= now {
                return Verdict::Idle;
            }
            next = next.min(due);
        }
        Verdict::RecheckAt(next)
    }
}

/// One unfinished request: counted from its complete head until its
/// response body ends or is dropped (or the request is abandoned).
pub(crate) struct OpenRequest(Arc<ConnWatch>);

impl OpenRequest {
    fn new(watch: &Arc<ConnWatch>) -> OpenRequest {
        watch.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(watch.clone())
    }

    /// Wraps the response body, registering it with the watchdog.
    fn track(self, inner: Body) -> Tracked {
        let state = if inner.is_end_stream() {
            DONE
        } else {
            // Not polled yet: it is hyper's turn.
            OUTSTANDING
        };
        let progress = Arc::new(Progress {
            stamp: AtomicU64::new(now_ms()),
            state: AtomicU8::new(state),
            outer: AtomicWaker::new(),
        });
        if state != DONE {
            self.0.register(progress.clone());
        }
        Tracked {
            inner,
            rest: Bytes::new(),
            progress,
            waker: None,
            _open: self,
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        // Stamp before the decrement, so a watchdog that sees `open == 0`
        // never reads an older idle stamp.
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body as hyper sees it: the relay's body, cut into frames of
/// at most [`PROGRESS_FRAME`] bytes (slices of the same `Bytes`, no copy),
/// stamping its [`Progress`] as it goes.
pub struct Tracked {
    inner: Body,
    /// The part of the last frame not handed out yet.
    rest: Bytes,
    progress: Arc<Progress>,
    /// `progress` as a waker, made once.
    waker: Option<Waker>,
    _open: OpenRequest,
}

impl Tracked {
    fn next_slice(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > PROGRESS_FRAME {
            self.rest = data.split_off(PROGRESS_FRAME);
        }
        data
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = SlotError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SlotError>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            let data = this.next_slice(rest);
            this.progress.set(OUTSTANDING);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        // Being polled is progress; until the source has data, the wait is
        // not the connection's fault. Set before polling, so a wake that
        // races with this poll still marks the body outstanding.
        this.progress.set(WAITING);
        this.progress.outer.register(cx.waker());
        let waker = this
            .waker
            .get_or_insert_with(|| Waker::from(this.progress.clone()));
        let mut inner_cx = Context::from_waker(waker);
        match Pin::new(&mut this.inner).poll_frame(&mut inner_cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => Frame::data(this.next_slice(data)),
                    Err(other) => other,
                };
                this.progress.set(OUTSTANDING);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                this.progress.set(DONE);
                Poll::Ready(end)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            h.set_upper(upper + rest);
        }
        h
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.progress.set(DONE);
    }
}

// ---------------------------------------------------------------------------
// Accepting

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
struct Shared {
    relay: Arc<Relay>,
    builder: auto::Builder<TokioExecutor>,
    /// Fired after `drain-delay`: connections finish what they serve.
    drain: CancellationToken,
    /// Fired after `shutdown-grace`: connections are dropped.
    stop: CancellationToken,
    /// Every open connection, so that one over the cap can displace the
    /// longest-idle of them.
    members: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    next: u64,
    all: std::collections::HashMap<u64, Arc<Member>>,
}

/// An open connection as the accept loop sees it.
struct Member {
    watch: Arc<ConnWatch>,
    /// Fired to close it gracefully so a new connection can have its place.
    reclaim: CancellationToken,
}

impl Shared {
    fn join(&self, watch: &Arc<ConnWatch>) -> (u64, Arc<Member>) {
        let member = Arc::new(Member {
            watch: watch.clone(),
            reclaim: CancellationToken::new(),
        });
        let mut m = self.members.lock();
        m.next += 1;
        let id = m.next;
        m.all.insert(id, member.clone());
        (id, member)
    }

    fn leave(&self, id: u64) {
        self.members.lock().all.remove(&id);
    }

    /// Asks the connection that has been idle longest (no unfinished
    /// request; never one with a parked viewer) to close, as nginx reuses
    /// idle keep-alive connections when it runs out of connections. Returns
    /// whether one was asked. A scan is linear in the open connections, and
    /// happens only when a connection arrives over the cap.
    fn reclaim_idle(&self) -> bool {
        let victim = {
            let m = self.members.lock();
            m.all
                .values()
                .filter(|c| !c.reclaim.is_cancelled() && c.watch.open.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.watch.idle_since.load(Ordering::Acquire))
                .cloned()
        };
        victim.map(|c| c.reclaim.cancel()).is_some()
    }
}

fn builder(relay: &Relay) -> auto::Builder<TokioExecutor> {
    let c = &relay.config;
    let mut b = auto::Builder::new(TokioExecutor::new());
    let max_header = c.max_header_size.as_u64() as usize;
    // No h1 `header_read_timeout`: the watchdog's `idle-timeout` covers a
    // head that never completes, for h1 and h2 alike.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(max_header.max(8192) + 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(max_header as u32)
        .initial_stream_window_size(H2_RECV_WINDOW)
        .initial_connection_window_size(H2_RECV_WINDOW)
        .keep_alive_interval(c.h2_keepalive_interval)
        .keep_alive_timeout(c.h2_keepalive_timeout);
    b
}

/// Accepts viewers until `shutdown` fires; then reports draining, keeps
/// accepting for `drain-delay`, closes the listener and lets in-flight
/// responses finish within `shutdown-grace`.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, shutdown: CancellationToken) {
    let max = relay.config.max_connections.min(u32::MAX as usize);
    let shared = Arc::new(Shared {
        builder: builder(&relay),
        relay: relay.clone(),
        drain: CancellationToken::new(),
        stop: CancellationToken::new(),
        members: Mutex::new(Members::default()),
    });
    let permits = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(REFUSE_MAX));
    let mut backoff = AcceptBackoff::new("viewer");
    let mut drain_at: Option<Pin<Box<Sleep>>> = None;
    loop {
        let (tcp, peer) = tokio::select! {
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
                Ok(x) => x,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if shared.reclaim_idle() {
                relay.metrics.connection_closed("reclaimed");
                let (shared, permits, refusing) =
                    (shared.clone(), permits.clone(), refusing.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(RECLAIM_WAIT, permits.acquire_owned()).await {
                        Ok(Ok(permit)) => connection(shared, tcp, peer, permit).await,
                        _ => refuse(&shared.relay, tcp, peer, &refusing),
                    }
                });
            } else {
                refuse(&relay, tcp, peer, &refusing);
            }
            continue;
        };
        tokio::spawn(connection(shared.clone(), tcp, peer, permit));
    }
    drop(listener);
    let grace = relay.config.shutdown_grace;
    tracing::info!(?grace, "listener closed, draining connections");
    shared.drain.cancel();
    // Every connection task holds a permit: all of them back means all done.
    let all = max as u32;
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("grace period over, dropping remaining connections");
        shared.stop.cancel();
        // They drop at once on `stop`; the bound only guards against a bug.
        let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(all)).await;
    }
}

/// Counts an open connection in the gauge for as long as it lives.
struct Counted(Arc<crate::metrics::Metrics>);

impl Counted {
    fn new(m: &Arc<crate::metrics::Metrics>) -> Counted {
        m.connections.inc();
        Counted(m.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Serves one viewer connection under its watchdog.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let relay = &shared.relay;
    let _counted = Counted::new(&relay.metrics);
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(relay.config.listen);
    let (idle_timeout, send_timeout) = (relay.config.idle_timeout, relay.config.send_timeout);
    let watch = Arc::new(ConnWatch::new());
    let (id, member) = shared.join(&watch);
    let svc = {
        let (relay, watch) = (relay.clone(), watch.clone());
        service_fn(move |req: Request<Incoming>| {
            let open = OpenRequest::new(&watch);
            // The relay serves GET and HEAD and never reads a request body.
            // Dropping it now, rather than when the response is done, means
            // none is held while the request waits for its chunk: h2 then
            // discards the stream's DATA and returns the connection window at
            // once; h1 stops reading and closes after the response.
            let (parts, body) = req.into_parts();
            drop(body);
            let relay = relay.clone();
            async move {
                let resp = handle(relay, Request::from_parts(parts, ()), local).await;
                Ok::<_, Infallible>(resp.map(|b| open.track(b)))
            }
        })
    };
    let io = TokioIo::new(StallGuard::new(tcp, send_timeout));
    let conn = shared.builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let first = tokio::time::Instant::now() + idle_timeout.min(send_timeout);
    let timer = tokio::time::sleep_until(first);
    tokio::pin!(timer);
    let (mut draining, mut closing) = (false, false);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                break;
            }
            _ = shared.drain.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shared.stop.cancelled() => break,
            _ = member.reclaim.cancelled(), if !closing => {
                tracing::debug!(%peer, "closing idle connection: its place is needed");
                conn.as_mut().graceful_shutdown();
                closing = true;
                timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_FLUSH);
            }
            _ = timer.as_mut() => {
                if closing {
                    break;
                }
                let now = now_ms();
                match watch.check(now, idle_timeout, send_timeout) {
                    Verdict::Stalled => {
                        relay.metrics.connection_closed("no_progress");
                        tracing::debug!(%peer, ?send_timeout, "closing connection: a response made no progress");
                        break;
                    }
                    Verdict::Idle => {
                        relay.metrics.connection_closed("idle");
                        tracing::debug!(%peer, ?idle_timeout, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_FLUSH);
                    }
                    Verdict::RecheckAt(at) => {
                        let wait = Duration::from_millis(at.saturating_sub(now));
                        timer.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                }
            }
        }
    }
    shared.leave(id);
    drop(permit);
}

/// Answers a connection over `max-connections` with a bare 503 and closes
/// it, without a hyper connection: the relay waits at most [`REFUSE_WAIT`]
/// for the client's first bytes (an HTTP/1.1 client that gets an answer
/// before it has sent its request takes it for a broken connection), writes
/// the 503 if the socket takes it at once (an h2c client, recognised by its
/// preface, is just closed: it could not read an HTTP/1.1 answer), and
/// lingers at most [`REFUSE_LINGER`] so the client reads the answer before
/// the socket closes. At most [`REFUSE_MAX`] refusals wait at once; beyond
/// that a connection is closed on the spot.
fn refuse(relay: &Relay, tcp: TcpStream, peer: SocketAddr, refusing: &Arc<Semaphore>) {
    relay.metrics.rejected("connections");
    relay.metrics.connection_closed("over_limit");
    relay.metrics.shed_log.note("connections");
    tracing::debug!(%peer, "refused connection over max-connections");
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

/// Serves `/metrics` and `/healthz` until `stop` fires (after the viewer
/// listener has drained, so health checks see 503 for the whole drain).
pub async fn serve_admin(relay: Arc<Relay>, listener: TcpListener, stop: CancellationToken) {
    let mut backoff = AcceptBackoff::new("admin");
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
        };
        let r = relay.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let r = r.clone();
            async move { Ok::<_, Infallible>(admin(&r, req.uri().path())) }
        });
        let (idle, stop) = (relay.config.idle_timeout, stop.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// A TCP stream whose writes fail once they have been blocked for longer than
/// `send-timeout`, so a viewer that stops reading is dropped instead of
/// pinning its connection (and the slot it reads) forever.
pub struct StallGuard<S> {
    inner: S,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    stalled: bool,
}

impl<S> StallGuard<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        StallGuard {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            stalled: false,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.stalled {
                    self.stalled = true;
                    let deadline = tokio::time::Instant::now() + self.timeout;
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "viewer stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn admin(relay: &Relay, path: &str) -> Response<Body> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            relay.render_metrics(),
        ),
        "/healthz" if relay.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    local_response(status, ctype, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_only_without_unfinished_requests() {
        let w = Arc::new(ConnWatch::new());
        let t0 = w.idle_since.load(Ordering::Relaxed);
        assert_eq!(w.check(t0 + 999, S, S), Verdict::RecheckAt(t0 + 1000));
        assert_eq!(w.check(t0 + 1000, S, S), Verdict::Idle);
        let open = OpenRequest::new(&w);
        assert!(matches!(w.check(t0 + 5000, S, S), Verdict::RecheckAt(_)));
        drop(open);
        let t1 = w.idle_since.load(Ordering::Relaxed);
        assert_eq!(w.check(t1 + 1000, S, S), Verdict::Idle);
    }

    #[test]
    fn only_outstanding_bodies_can_stall() {
        let w = Arc::new(ConnWatch::new());
        let body = OpenRequest::new(&w).track(
            http_body_util::Full::new(Bytes::from_static(b"x"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        let p = body.progress.clone();
        let t = p.stamp.load(Ordering::Relaxed);
        assert_eq!(p.state.load(Ordering::Relaxed), OUTSTANDING);
        assert_eq!(w.check(t + 999, S, S), Verdict::RecheckAt(t + 1000));
        assert_eq!(w.check(t + 1000, S, S), Verdict::Stalled);
        // Waiting on its source is not the connection's fault.
        p.state.store(WAITING, Ordering::Relaxed);
        assert!(matches!(w.check(t + 60_000, S, S), Verdict::RecheckAt(_)));
        drop(body);
        assert_eq!(p.state.load(Ordering::Relaxed), DONE);
        assert_eq!(w.open.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn large_frames_are_cut_without_copying() {
        let w = Arc::new(ConnWatch::new());
        let data = Bytes::from(vec![7u8; 3 * PROGRESS_FRAME + 10]);
        let base = data.as_ptr() as usize;
        let mut body = OpenRequest::new(&w).track(
            http_body_util::Full::new(data)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        assert_eq!(
            body.size_hint().exact(),
            Some(3 * PROGRESS_FRAME as u64 + 10)
        );
        let mut lens = Vec::new();
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            assert_eq!(d.as_ptr() as usize, base + lens.iter().sum::<usize>());
            lens.push(d.len());
        }
        assert_eq!(lens, [PROGRESS_FRAME, PROGRESS_FRAME, PROGRESS_FRAME, 10]);
        assert_eq!(body.progress.state.load(Ordering::Relaxed), DONE);
    }
}
