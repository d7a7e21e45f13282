//! The admin listener: `/metrics` (OpenMetrics text), `/healthz` (503
//! while draining), `/status.json` and the status page at `/` (see
//! [`crate::status`]), over plain HTTP/1.1 on its own port. All read-only.
//! `/heap` (bytes allocated) in builds with the `alloc-stats` feature.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{local_response, AcceptBackoff, Body};
use crate::relay::Relay;
use crate::status::Status;

/// Serves `/metrics`, `/healthz`, `/status.json` and `/` until `stop` fires (after the viewer
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
        "/status.json" => (
            StatusCode::OK,
            "application/json",
            Status::of(relay).to_json(),
        ),
        "/" => {
            let mut resp = local_response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::status::PAGE,
            );
            let h = resp.headers_mut();
            // The page needs nothing but itself and /status.json.
            h.insert(http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ));
            h.insert(
                http::header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            return resp;
        }
        #[cfg(feature = "alloc-stats")]
        "/heap" => (StatusCode::OK, "text/plain", crate::heap::report()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    local_response(status, ctype, body)
}
