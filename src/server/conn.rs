//! One viewer connection, clear or TLS: the hyper connection with its
//! service, and the task that watches it.
//!
//! The task races hyper against four events: the drain (graceful
//! shutdown), the stop after `shutdown-grace`, a reclaim by the accept loop
//! (its place is needed by a new viewer), and its [`ConnWatch`] timer, which
//! closes it when idle or stalled. Each request's body is dropped unread and
//! its head handed to [`handle`]; the response body goes back through
//! [`OpenRequest::track`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use super::h1::{self, Grace, H1Error, H1Limits};
use super::handle;
use super::listener::Shared;
use super::stall::StallGuard;
use super::watch::{
    now_ms, ConnWatch, OpenRequest, Verdict, SIGNAL_CLOSE, SIGNAL_DRAIN, SIGNAL_STOP,
};

/// How long a connection closed for idleness, or to make room for one over
/// the cap, may take to flush its goodbye (an h2 GOAWAY) before it is dropped.
const CLOSE_FLUSH: Duration = Duration::from_millis(100);

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

/// Serves one viewer connection under its watchdog; with `tls`, after the
/// TLS handshake, which must finish within `tls-handshake-timeout` (a
/// silent TLS client would otherwise hold its socket and its place under
/// `max-connections`). The write timeout ([`StallGuard`]) sits under TLS, on
/// the socket itself.
pub(super) async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
) {
    let relay = &shared.relay;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(relay.config.listen);
    let io = StallGuard::new(tcp, relay.config.send_timeout);
    // A member from the start, TLS handshake included: a connection that
    // stalls its handshake is idle like any other and can be displaced at
    // the cap (else a flood of them would lock out every TLS viewer).
    let watch = Arc::new(ConnWatch::new());
    let raw = io.get_ref().as_raw_fd();
    let id = shared.join(&watch, raw);
    // Counted once a member: every connection the gauge shows is one the
    // reclaim can see (and dropped after `leave`, at the end).
    let _counted = Counted::new(&relay.metrics);
    match tls {
        None => serve_io(&shared, io, raw, peer, local, watch).await,
        // Boxed: the handshake and a TLS stream are large, and inline they
        // would size every clear connection's task too (issue 10).
        Some(acceptor) => Box::pin(serve_tls(&shared, io, raw, peer, local, watch, acceptor)).await,
    }
    shared.leave(id);
    drop(permit);
}

/// [`connection`]'s TLS path: the handshake within `tls-handshake-timeout`,
/// then HTTP over the TLS stream.
async fn serve_tls(
    shared: &Arc<Shared>,
    io: StallGuard<TcpStream>,
    raw: RawFd,
    peer: SocketAddr,
    local: SocketAddr,
    watch: Arc<ConnWatch>,
    acceptor: TlsAcceptor,
) {
    let relay = &shared.relay;
    let limit = relay.config.tls_handshake_timeout;
    let handshake = tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(io)) => r,
        // Displaced at the cap, or the drain or stop: a handshake is not
        // a request in flight.
        _ = std::future::poll_fn(|cx| watch.poll_signal(0, cx)) => {
            tracing::debug!(%peer, "closing a connection in its TLS handshake");
            return;
        }
    };
    match handshake {
        Ok(Ok(stream)) => serve_io(shared, stream, raw, peer, local, watch).await,
        Ok(Err(e)) => {
            relay.metrics.connection_closed("tls_handshake");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            relay.metrics.connection_closed("tls_handshake_timeout");
            tracing::debug!(%peer, timeout = ?limit, "closing connection: no TLS handshake in time");
        }
    }
}

/// The h2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long to wait before peeking again at a connection that has sent
/// part of the h2 preface (peeking does not wait for more bytes).
const SNIFF_RETRY: Duration = Duration::from_millis(5);

/// Whether a clear connection speaks h2 (prior knowledge) rather than
/// HTTP/1.1, from its first bytes, left unread for hyper. `None` if it
/// closed or failed first.
async fn sniff(tcp: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        tokio::time::sleep(SNIFF_RETRY).await;
    }
}

/// Completes when the watchdog finds the connection idle (it has no
/// request yet, so it cannot be stalled), re-arming `timer` meanwhile.
async fn idle_at(
    timer: &std::pin::Pin<&mut tokio::time::Sleep>,
    watch: &ConnWatch,
    idle_timeout: Duration,
    send_timeout: Duration,
) {
    let mut at = timer.deadline();
    loop {
        tokio::time::sleep_until(at).await;
        let now = now_ms();
        match watch.check(now, idle_timeout, send_timeout) {
            Verdict::Idle | Verdict::Stalled => return,
            Verdict::RecheckAt(next) => {
                at = tokio::time::Instant::now() + Duration::from_millis(next.saturating_sub(now));
            }
        }
    }
}

/// A viewer transport whose protocol may be peeked at before hyper reads it.
pub(super) trait Sniff: Sized {
    /// The socket to peek at, for a clear connection; `None` for TLS,
    /// which hyper's auto builder serves.
    fn clear_socket(&self) -> Option<&TcpStream>;

    /// The clear socket itself, for the relay's own HTTP/1.1 server.
    fn into_clear(self) -> Result<StallGuard<TcpStream>, Self>;
}

impl Sniff for StallGuard<TcpStream> {
    fn clear_socket(&self) -> Option<&TcpStream> {
        Some(self.get_ref())
    }

    fn into_clear(self) -> Result<StallGuard<TcpStream>, Self> {
        Ok(self)
    }
}

impl Sniff for tokio_rustls::server::TlsStream<StallGuard<TcpStream>> {
    fn clear_socket(&self) -> Option<&TcpStream> {
        None
    }

    fn into_clear(self) -> Result<StallGuard<TcpStream>, Self> {
        Err(self)
    }
}

/// One connection, of whichever server serves it: the relay's own
/// HTTP/1.1 ([`h1`](super::h1), clear connections) or a hyper builder (h2,
/// and TLS). Boxed: the connection task then holds a pointer, not the
/// largest of them.
enum Served<A, B, C> {
    H1(std::pin::Pin<Box<A>>),
    H2(std::pin::Pin<Box<B>>),
    Auto(std::pin::Pin<Box<C>>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<A, B, C> std::future::Future for Served<A, B, C>
where
    A: std::future::Future<Output = Result<(), H1Error>>,
    B: std::future::Future<Output = hyper::Result<()>>,
    C: std::future::Future<Output = Result<(), BoxError>>,
{
    type Output = Result<(), BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Served::H1(c) => c.as_mut().poll(cx).map_err(Into::into),
            Served::H2(c) => c.as_mut().poll(cx).map_err(Into::into),
            Served::Auto(c) => c.as_mut().poll(cx),
        }
    }
}

/// Starts a graceful shutdown of a [`Served`] connection (each hyper
/// connection type has its own inherent method).
macro_rules! graceful_shutdown {
    ($conn:expr, $grace:expr) => {
        match &mut $conn {
            Served::H1(_) => $grace.shutdown(),
            Served::H2(c) => c.as_mut().graceful_shutdown(),
            Served::Auto(c) => c.as_mut().graceful_shutdown(),
        }
    };
}

/// Serves HTTP on one connection (clear or TLS) under its watchdog.
/// `raw` is the descriptor of the TCP socket under `io`, for the lingering
/// close after a drain.
async fn serve_io<I>(
    shared: &Arc<Shared>,
    io: I,
    raw: RawFd,
    peer: SocketAddr,
    local: SocketAddr,
    watch: Arc<ConnWatch>,
) where
    I: AsyncRead + AsyncWrite + Sniff + Unpin + Send + 'static,
{
    let relay = &shared.relay;
    let (idle_timeout, send_timeout) = (relay.config.idle_timeout, relay.config.send_timeout);
    // Answers one request head; the watchdog counts it open from here
    // until its response body is done.
    let respond = {
        let (relay, watch) = (relay.clone(), watch.clone());
        move |req: Request<()>| {
            let open = OpenRequest::new(&watch);
            // `map` over `handle`'s future, so the request is held once.
            handle(relay.clone(), req, local).map(move |resp| {
                let len = resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                resp.map(|b| open.track(b, len))
            })
        }
    };
    let svc = {
        let respond = respond.clone();
        service_fn(move |req: Request<Incoming>| {
            // The relay serves GET and HEAD and never reads a request body.
            // Dropping it now, rather than when the response is done, means
            // none is held while the request waits for its chunk: h2 then
            // discards the stream's DATA and returns the connection window at
            // once.
            let (parts, body) = req.into_parts();
            drop(body);
            // `map`, not an `async` block awaiting it: a block would hold
            // the request future twice (its capture and its await), 2 KiB
            // more per parked h2 stream.
            respond(Request::from_parts(parts, ())).map(Ok::<_, Infallible>)
        })
    };
    let grace = Grace::default();
    let first = tokio::time::Instant::now() + idle_timeout.min(send_timeout);
    let timer = tokio::time::sleep_until(first);
    tokio::pin!(timer);
    // A clear connection's protocol is read off its first bytes without
    // consuming them, so hyper's HTTP/1.1 reader gets the whole head in its
    // first read (behind the auto builder's 24-byte rewind it would read
    // twice and grow its buffer to 16 KiB for good: issue 10).
    let h2 = match io.clear_socket() {
        None => None,
        Some(tcp) => {
            let sniffed = tokio::select! {
                r = sniff(tcp) => r,
                // A reclaim, the drain or the stop: not served.
                s = std::future::poll_fn(|cx| watch.poll_signal(0, cx)) => {
                    if s == SIGNAL_CLOSE {
                        tracing::debug!(%peer, "closing idle connection: its place is needed");
                    }
                    None
                }
                _ = idle_at(&timer, &watch, idle_timeout, send_timeout) => {
                    relay.metrics.connection_closed("idle");
                    tracing::debug!(%peer, ?idle_timeout, "closing idle connection");
                    None
                }
            };
            match sniffed {
                Some(h2) => Some(h2),
                None => return,
            }
        }
    };
    let limits = H1Limits {
        max_head: relay.config.max_header_size.as_u64() as usize + 1024,
        sendfile_bytes: relay.metrics.sendfile_bytes.clone(),
    };
    // A clear connection has been sniffed: h2 goes to hyper, HTTP/1.1 to
    // the relay's own server. TLS goes to hyper's auto builder (ALPN).
    let mut conn = match io.into_clear() {
        Ok(tcp) if h2 == Some(true) => Served::H2(Box::pin(
            shared.http2.serve_connection(TokioIo::new(tcp), svc),
        )),
        Ok(tcp) => {
            let refuse = |e: super::RequestError| e.into_response(relay);
            Served::H1(Box::pin(h1::serve(tcp, limits, &grace, respond, refuse)))
        }
        Err(tls) => Served::Auto(Box::pin(
            shared.builder.serve_connection(TokioIo::new(tls), svc),
        )),
    };
    // Signals from the accept loop (a reclaim, the drain, the stop) come
    // through the connection's watch, which costs an atomic load per
    // wake-up of this task (issue 10); `seen` are those acted on.
    let (mut seen, mut closing) = (0u8, false);
    // hyper drops the socket when a drained connection ends, and the
    // client's last frames (WINDOW_UPDATEs for the data it just got) may
    // be unread: the close would then be a reset that throws away the end
    // of the responses still queued. A second descriptor, taken when the
    // drain starts, keeps the socket for a lingering close after hyper is
    // done (the relay's own HTTP/1.1 server lingers by itself).
    let mut lingering: Option<std::os::fd::OwnedFd> = None;
    let mut ended = false;
    loop {
        tokio::select! {
            biased;
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                ended = true;
                break;
            }
            s = std::future::poll_fn(|cx| watch.poll_signal(seen, cx)) => {
                let new = s & !seen;
                let first = seen == 0;
                seen = s;
                if new & SIGNAL_STOP != 0 {
                    break;
                }
                if new & SIGNAL_DRAIN != 0 && !matches!(conn, Served::H1(_)) {
                    // SAFETY: `raw` is the socket `conn` owns; `conn` is
                    // alive (it is polled only here), so the descriptor is
                    // open and still that socket.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
                    lingering = fd.try_clone_to_owned().ok();
                }
                if first {
                    graceful_shutdown!(conn, grace);
                }
                if new & SIGNAL_CLOSE != 0 && s & SIGNAL_DRAIN == 0 {
                    tracing::debug!(%peer, "closing idle connection: its place is needed");
                    closing = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_FLUSH);
                }
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
                        graceful_shutdown!(conn, grace);
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
    drop(conn);
    if let (true, Some(fd)) = (ended, lingering) {
        let std = std::net::TcpStream::from(fd);
        if std.set_nonblocking(true).is_ok() {
            if let Ok(mut tcp) = TcpStream::from_std(std) {
                // Bounded by the stop as well as its own limits; boxed, as
                // its buffer would otherwise size every connection's task.
                tokio::select! {
                    _ = Box::pin(h1::linger(&mut tcp)) => {}
                    _ = std::future::poll_fn(|cx| watch.poll_signal(seen, cx)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(
            Arc<Shared>,
            TcpStream,
            SocketAddr,
            OwnedSemaphorePermit,
            Option<TlsAcceptor>,
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every viewer connection is one task holding this future (with the
    /// hyper connection inside) for its whole life: issue 10 wants an idle
    /// HTTP/1.1 viewer in 8 KiB, so it must stay a small part of that
    /// (TLS state is boxed off the clear path: 5 KiB before).
    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(connection);
        eprintln!("connection future: {size} B");
        assert!(size <= 2048, "connection future is {size} B");
    }
}
