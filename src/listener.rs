//! Downstream connections: the viewer-facing listener (HTTP/1.1 and h2c on
//! one port) and the admin listener (`/metrics`, `/healthz`).
//!
//! This module owns everything below the request: accepting sockets, the
//! connection cap, the hyper connection builder and its timeouts, write-stall
//! detection ([`StallGuard`]) and the graceful drain. Each request is handed
//! to [`server::handle`](crate::server::handle), which owns the request path.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
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

use crate::relay::Relay;
use crate::server::{handle, local_response, Body, RequestError};

/// How long a connection over `max-connections` is kept to tell it 503.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent HTTP/2 streams per downstream connection.
const H2_MAX_STREAMS: u32 = 10_000;

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
