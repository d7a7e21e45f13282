//! Downstream HTTP: the viewer-facing listener (HTTP/1.1 and h2c on one port)
//! and the admin listener (`/metrics`, `/healthz`).
//!
//! A request goes: connection limit → method, header size and loop checks →
//! chunk key and allow-list (`key`) → `Relay::lookup` → a cached body, or a
//! slot viewer streamed out as the response body. Every refusal is a
//! [`RequestError`], and [`RequestError::status`] is the one place that maps
//! errors to HTTP statuses. A body that fails mid-way is returned to hyper as
//! a body error, which resets the HTTP/2 stream or closes the HTTP/1.1
//! connection before the declared end, so a truncated chunk never looks whole.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::Entry;
use crate::flight::{Parked, Refused};
use crate::key::{KeyError, RawKey};
use crate::metrics::Outcome;
use crate::relay::{not_yet_head, Answer, Relay};
use crate::slot::{BodyReader, Head, HeadWait, SlotError};

/// The response body type of every relay response.
pub type Body = UnsyncBoxBody<Bytes, SlotError>;

/// `X-Cache` response header.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How long a connection over `max-connections` is kept to tell it 503.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent HTTP/2 streams per downstream connection.
const H2_MAX_STREAMS: u32 = 10_000;

/// Why a downstream request was not answered from a slot or the cache.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Only GET and HEAD fetch chunks.
    #[error("method {0} not allowed: the relay serves GET and HEAD")]
    Method(Method),
    /// The request head exceeds `max-header-size`.
    #[error("request header of {0} bytes exceeds max-header-size")]
    HeaderTooLarge(usize),
    /// This relay already appears in Via.
    #[error("loop detected: relay {0} is already in Via")]
    Loop(String),
    /// Bad or disallowed chunk name.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Admission said no (a limit or the memory budget).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// `max-connections` reached.
    #[error("too many connections")]
    TooManyConnections,
    /// Nothing from upstream within `max-wait`.
    #[error("no response from upstream within {0:?}")]
    Timeout(Duration),
    /// The fetch failed before a head.
    #[error(transparent)]
    Upstream(#[from] SlotError),
    /// A `Range` outside the object.
    #[error("range not satisfiable for {0}-byte object")]
    Range(u64),
}

impl RequestError {
    /// The one mapping from errors to statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestError::Loop(_) => StatusCode::LOOP_DETECTED,
            RequestError::Key(KeyError::NotAllowed(_)) => StatusCode::FORBIDDEN,
            RequestError::Key(_) => StatusCode::BAD_REQUEST,
            RequestError::Refused(_)
            | RequestError::TooManyConnections
            | RequestError::Upstream(SlotError::Memory(_)) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::Timeout(_) | RequestError::Upstream(SlotError::Timeout(_)) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            RequestError::Upstream(_) => StatusCode::BAD_GATEWAY,
            RequestError::Range(_) => StatusCode::RANGE_NOT_SATISFIABLE,
        }
    }

    /// The `rejected` metric reason, for errors caused by a limit.
    fn limit(&self) -> Option<&'static str> {
        match self {
            RequestError::HeaderTooLarge(_) => Some("header_size"),
            RequestError::Refused(r) => Some(r.reason()),
            RequestError::Upstream(SlotError::Memory(_)) => Some("memory_fill"),
            RequestError::TooManyConnections => Some("connections"),
            RequestError::Timeout(_) => Some("wait_time"),
            _ => None,
        }
    }

    fn into_response(self, relay: &Relay) -> Response<Body> {
        let status = self.status();
        if let Some(reason) = self.limit() {
            relay.metrics.rejected(reason);
        }
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "request failed");
        } else {
            tracing::info!(error = %self, %status, "request refused");
        }
        let mut resp = local_response(status, "text/plain; charset=utf-8", format!("{self}\n"));
        let h = resp.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let RequestError::Range(len) = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Answers the anycast probe: who this relay is, where to reach it by
/// unicast, and whether it takes viewers.
fn probe_answer(relay: &Relay, local: SocketAddr) -> Response<Body> {
    let urls = if relay.config.advertise.is_empty() {
        vec![format!("http://{local}")]
    } else {
        relay.config.advertise.clone()
    };
    let parked = relay.parked();
    let max = relay.config.max_parked;
    let answer = crate::probe::ProbeAnswer {
        id: relay.id.clone(),
        urls,
        healthy: !relay.is_draining() && parked < max - max / 10,
        draining: relay.is_draining(),
        parked,
        max_parked: max,
    };
    local_response(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&answer).unwrap_or_default(),
    )
}

/// A response the relay makes itself (errors, probe, admin): never cached
/// downstream, and marked MISS like every relay response.
fn local_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(X_CACHE, HeaderValue::from_static("MISS"));
    resp
}

/// Answers one downstream request. `local` is the address the connection
/// arrived on (an anycast address, for a probe).
pub async fn handle(
    relay: Arc<Relay>,
    req: Request<Incoming>,
    local: SocketAddr,
) -> Response<Body> {
    if req.uri().path() == crate::probe::WELL_KNOWN
        && req
            .uri()
            .scheme()
            .is_none_or(|_| req.version() == http::Version::HTTP_2)
    {
        return probe_answer(&relay, local);
    }
    let span = tracing::debug_span!("request", method = %req.method(), uri = %req.uri(), key = tracing::field::Empty);
    async {
        match respond(&relay, req).await {
            Ok(resp) => resp,
            Err(e) => {
                relay.metrics.request(Outcome::Error);
                e.into_response(&relay)
            }
        }
    }
    .instrument(span)
    .await
}

async fn respond(
    relay: &Arc<Relay>,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref m => return Err(RequestError::Method(m.clone())),
    };
    let uri = req.uri();
    let header_bytes: usize = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_bytes as u64 > relay.config.max_header_size.as_u64() {
        return Err(RequestError::HeaderTooLarge(header_bytes));
    }
    let via = req.headers().get_all(http::header::VIA);
    if relay.in_via(via.iter()) {
        return Err(RequestError::Loop(relay.id.clone()));
    }
    let raw = RawKey::from_request(&req)?;
    let (key, origin) = relay.origins.resolve(&raw)?;
    tracing::Span::current().record("key", tracing::field::display(&key));
    let range = req.headers().get(http::header::RANGE).cloned();
    let (parked, opened) = match relay.join(&key, &origin, || relay.via_upstream(via.iter()))? {
        Answer::Hit(entry) => {
            relay.metrics.request(Outcome::Hit);
            return serve_entry(relay, &entry, range.as_ref(), head_only);
        }
        Answer::Slot { parked, opened } => (parked, opened),
    };
    let Parked {
        mut viewer,
        slot,
        place,
    } = parked;
    let joined = Instant::now();
    tracing::debug!(viewers = slot.viewers(), opened, "parked on slot");
    let head = match tokio::time::timeout(relay.config.max_wait, viewer.head()).await {
        Ok(HeadWait::Head(h)) => h,
        Ok(HeadWait::Failed(e)) => return Err(e.into()),
        Err(_) if viewer.saw_not_yet() => Arc::new(not_yet_head()),
        Err(_) => return Err(RequestError::Timeout(relay.config.max_wait)),
    };
    let not_yet = crate::relay::is_not_yet(head.status, &head.headers);
    relay.metrics.request(match (not_yet, opened) {
        (true, _) => Outcome::NotYet,
        (false, true) => Outcome::Miss,
        (false, false) => Outcome::Coalesced,
    });
    let mut resp = response_head(relay, &head, if opened { "MISS" } else { "COALESCED" });
    if !head_only && !not_yet {
        let relay = relay.clone();
        let mut first = true;
        let s = viewer.into_stream().map(move |piece| {
            // Owning the place here holds the viewer's place under
            // `max-parked` until hyper drops the body.
            let _held = &place;
            let b = piece?;
            // The first piece records how long after its upstream arrival
            // it reached this viewer, if the viewer was already waiting
            // then (a late joiner was not kept waiting by the fan-out).
            if std::mem::take(&mut first) {
                if let Some(t) = slot.first_byte().filter(|t| *t >= joined) {
                    relay.metrics.delivery.observe(t.elapsed().as_secs_f64());
                }
            }
            relay.metrics.bytes_out.inc_by(b.len() as u64);
            Ok(Frame::data(b))
        });
        *resp.body_mut() = BodyExt::boxed_unsync(StreamBody::new(s));
    }
    Ok(resp)
}

fn response_head(relay: &Relay, head: &Head, x_cache: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers.clone();
    let h = resp.headers_mut();
    h.insert(X_CACHE, HeaderValue::from_static(x_cache));
    h.append(http::header::VIA, relay.via_entry.clone());
    resp
}

/// Serves a cached object. A 200 honours a single-range `Range` header; any
/// other stored status (a negative 404) is sent whole, body included, with
/// its real length.
fn serve_entry(
    relay: &Relay,
    entry: &Entry,
    range: Option<&HeaderValue>,
    head_only: bool,
) -> Result<Response<Body>, RequestError> {
    let len = entry.body.len();
    let head = Head {
        status: entry.status,
        headers: entry.headers.clone(),
        len: Some(len),
    };
    let mut resp = response_head(relay, &head, "HIT");
    let h = resp.headers_mut();
    h.insert(http::header::AGE, HeaderValue::from(entry.age().as_secs()));
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    let (start, end) = match entry.status {
        StatusCode::OK => {
            h.insert(
                http::header::ACCEPT_RANGES,
                HeaderValue::from_static("bytes"),
            );
            match parse_range(range, len) {
                RangeSpec::Whole => (0, len),
                RangeSpec::Unsatisfiable => return Err(RequestError::Range(len)),
                RangeSpec::Part(start, end) => {
                    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                    let h = resp.headers_mut();
                    h.insert(
                        http::header::CONTENT_LENGTH,
                        HeaderValue::from(end - start + 1),
                    );
                    let cr = format!("bytes {start}-{end}/{len}");
                    h.insert(
                        http::header::CONTENT_RANGE,
                        HeaderValue::from_str(&cr).expect("ASCII"),
                    );
                    (start, end + 1)
                }
            }
        }
        _ => (0, len),
    };
    if !head_only {
        relay.metrics.bytes_out.inc_by(end - start);
        let pieces = BodyReader::new(entry.body.clone(), start, end);
        let s = stream::iter(pieces.map(|b| Ok(Frame::data(b))));
        *resp.body_mut() = BodyExt::boxed_unsync(StreamBody::new(s));
    }
    Ok(resp)
}

/// What a `Range` header asks of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Send it all (no header, multi-range, or not `bytes`).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Outside the object: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range against an object of `len` bytes. A
/// header that is not a valid single byte range is ignored (RFC 9110 §14.2),
/// so only a valid range wholly outside the object is unsatisfiable.
pub fn parse_range(value: Option<&HeaderValue>, len: u64) -> RangeSpec {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeSpec::Whole;
    };
    let digits = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    match (a.trim().is_empty(), digits(a), digits(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) if n > 0 && len > 0 => RangeSpec::Part(len.saturating_sub(n), len - 1),
        (true, _, Some(_)) => RangeSpec::Unsatisfiable,
        // bytes=S- and bytes=S-E (E >= S).
        (false, Some(s), None) if b.trim().is_empty() => satisfiable(s, u64::MAX, len),
        (false, Some(s), Some(e)) if e >= s => satisfiable(s, e, len),
        _ => RangeSpec::Whole,
    }
}

fn satisfiable(start: u64, end: u64, len: u64) -> RangeSpec {
    if start < len {
        RangeSpec::Part(start, end.min(len - 1))
    } else {
        RangeSpec::Unsatisfiable
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

use std::future::Future;

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

fn builder(relay: &Relay) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let max_header = relay.config.max_header_size.as_u64() as usize;
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_header.max(8192) + 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(max_header as u32)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20);
    b
}

/// Accepts viewers until `shutdown` fires, then lets in-flight responses
/// finish within `shutdown-grace`.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, shutdown: CancellationToken) {
    let builder = builder(&relay);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(relay.config.max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(relay.config.listen);
        let io = TokioIo::new(StallGuard::new(tcp, relay.config.send_timeout));
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(&relay, &builder, io, peer);
            continue;
        };
        let r = relay.clone();
        let svc = service_fn(move |req| {
            let r = r.clone();
            async move { Ok::<_, Infallible>(handle(r, req, local).await) }
        });
        let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
        let metrics = relay.metrics.clone();
        tokio::spawn(async move {
            metrics.connections.inc();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
            metrics.connections.dec();
            drop(permit);
        });
    }
    relay.set_draining();
    drop(listener);
    tracing::info!(grace = ?relay.config.shutdown_grace, "draining connections");
    if tokio::time::timeout(relay.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over, dropping remaining connections");
    }
}

/// Serves a connection over `max-connections` with a bare 503.
fn refuse(
    relay: &Arc<Relay>,
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<StallGuard<TcpStream>>,
    peer: SocketAddr,
) {
    let r = relay.clone();
    let svc = service_fn(move |_req| {
        let r = r.clone();
        async move {
            let mut resp = RequestError::TooManyConnections.into_response(&r);
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(io, svc).into_owned();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSE_TIMEOUT, conn).await;
        tracing::debug!(%peer, "refused connection over the limit");
    });
}

/// Serves `/metrics` and `/healthz` until `shutdown` fires.
pub async fn serve_admin(relay: Arc<Relay>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let r = relay.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let r = r.clone();
            async move { Ok::<_, Infallible>(admin(&r, req.uri().path())) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
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

    #[test]
    fn ranges() {
        let r = |s: &str, len| parse_range(Some(&HeaderValue::from_str(s).unwrap()), len);
        assert_eq!(r("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(r("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(r("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(r("bytes=-1000", 100), RangeSpec::Part(0, 99));
        assert_eq!(r("bytes=50-1000", 100), RangeSpec::Part(50, 99));
        assert_eq!(r("bytes=100-", 100), RangeSpec::Unsatisfiable);
        // Invalid ranges are ignored, not refused (RFC 9110 §14.2).
        assert_eq!(r("bytes=5-2", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=x-2", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=+1-2", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=1", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), RangeSpec::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(r("items=0-1", 100), RangeSpec::Whole);
        assert_eq!(parse_range(None, 100), RangeSpec::Whole);
    }

    #[test]
    fn every_error_has_one_status() {
        assert_eq!(
            RequestError::Key(KeyError::NotAllowed("x".into())).status(),
            403
        );
        assert_eq!(RequestError::Key(KeyError::NoAuthority).status(), 400);
        assert_eq!(RequestError::Loop("a".into()).status(), 508);
        assert_eq!(RequestError::HeaderTooLarge(1).status(), 431);
        assert_eq!(RequestError::Refused(Refused::Memory).status(), 503);
        assert_eq!(RequestError::Timeout(Duration::ZERO).status(), 504);
        assert_eq!(RequestError::Upstream(SlotError::TooLarge).status(), 502);
    }
}
