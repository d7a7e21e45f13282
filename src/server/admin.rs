//! The admin listener: `/metrics` (OpenMetrics text) and `/healthz` (503
//! while draining), over plain HTTP/1.1 on its own port; `/heap` (bytes
//! allocated) in builds with the `alloc-stats` feature.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{local_response, AcceptBackoff, Body};
use crate::relay::Relay;

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
        #[cfg(feature = "alloc-stats")]
        "/heap" => (StatusCode::OK, "text/plain", crate::heap::report()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    local_response(status, ctype, body)
}
