//! Paths → answers: every request enters at [`handle`].
//!
//! API paths (`/manifest/…`, `/keys/…`) go to the API over TLS only.
//! `/stats` is answered without being counted (LL-HLS key requests are
//! counted apart, by transport and status). Anything else is counted (by
//! path and query, for tests), gets its faults (configured, then the query's)
//! and is routed: `/ll/…` and `/dash/…` to the low-latency head end,
//! `/live/…` to the long-poll, `/vod/{n}` to a one-off slot
//! holding the sealed VOD chunk. The small response builders every part of
//! the origin uses live here too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use super::chunk::{chunk_bytes, chunk_response, vod_keyid};
use super::faults::{from_slot, Faults};
use super::live::{edge_info, live};
use super::{api, State};
use crate::protocol::{self, PUBLISH_HEADER};
use crate::server::Body;
use crate::slot::{Head, Slot};

/// `/stats`: what tests and demos read about the origin.
#[derive(Serialize)]
struct Stats<'a> {
    requests_total: u64,
    requests: &'a HashMap<String, u64>,
    /// LL-HLS key requests by `{http|https} {status}`.
    key_requests: &'a HashMap<String, u64>,
    edges: Vec<i64>,
}

/// Answers one request; `tls` says whether it came over TLS.
pub(super) async fn handle(state: Arc<State>, req: Request<Incoming>, tls: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/keys/hls/") {
        let r = api_request(&state, &req, &path, tls);
        let k = format!(
            "{} {}",
            if tls { "https" } else { "http" },
            r.status().as_u16()
        );
        *state.key_requests.lock().entry(k).or_default() += 1;
        return r;
    }
    if path.starts_with("/manifest/") || path.starts_with("/keys/") {
        return api_request(&state, &req, &path, tls);
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    if path == "/stats" {
        let requests = state.requests.lock().clone();
        let key_requests = state.key_requests.lock().clone();
        return json(&Stats {
            requests_total: state.total.load(Ordering::Relaxed),
            requests: &requests,
            key_requests: &key_requests,
            edges: state.streams.iter().map(|s| *s.edge.borrow()).collect(),
        });
    }
    state.total.fetch_add(1, Ordering::Relaxed);
    *state.requests.lock().entry(pq).or_default() += 1;
    let faults = Faults::from_query(req.uri().query(), &state.cfg.faults);
    if let Some(d) = faults.delay_head {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = faults.status.and_then(|c| StatusCode::from_u16(c).ok()) {
        return text(code, format!("fault: status {code}\n"));
    }
    if let Some(ll) = state
        .ll
        .as_ref()
        .filter(|_| path.starts_with("/ll/") || path.starts_with("/dash/"))
    {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        return super::ll::handle(ll, req.method(), &path, req.uri().query(), host).await;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["live", s] => match s.parse::<usize>().ok().filter(|s| *s < state.streams.len()) {
            Some(s) => edge_info(&state, s),
            None => text(StatusCode::NOT_FOUND, "no such stream\n"),
        },
        ["live", s, n] => match (s.parse::<usize>(), n.parse::<u64>()) {
            (Ok(s), Ok(n)) if s < state.streams.len() => live(&state, s, n, &faults).await,
            _ => text(StatusCode::BAD_REQUEST, "expected /live/STREAM/SEQ\n"),
        },
        ["vod", n] => match n.parse::<u64>() {
            Ok(n) if n < state.cfg.vod_chunks => vod(&state, n, &faults).await,
            _ => text(StatusCode::NOT_FOUND, "no such VOD chunk\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The API, over TLS only: a clear request is refused (403, never stored).
fn api_request(state: &State, req: &Request<Incoming>, path: &str, tls: bool) -> Response<Body> {
    if !tls {
        tracing::info!(%path, "API request over clear HTTP refused");
        let mut r = text(
            StatusCode::FORBIDDEN,
            "manifests and keys are served over HTTPS only\n",
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        return r;
    }
    api::answer(state, req)
}

/// VOD chunk `n` (checked): sealed afresh, long-lived, no publish time.
async fn vod(state: &State, n: u64, faults: &Faults) -> Response<Body> {
    let plain = chunk_bytes(u64::MAX, n, state.cfg.chunk_size, 0);
    let name = state.binding(&format!("/vod/{n}"));
    let (body, mut headers) =
        chunk_response(&state.cfg, &name, &vod_keyid(&state.cfg, n), plain, 0);
    headers.remove(PUBLISH_HEADER);
    let cc = format!("public, max-age={}", state.cfg.vod_max_age.as_secs());
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_str(&cc).expect("ASCII"),
    );
    let (slot, writer) = Slot::unbounded();
    let _ = writer.publish_head(Head {
        status: StatusCode::OK,
        headers,
        len: Some(body.len() as u64),
    });
    let _ = writer.push(body);
    writer.finish();
    from_slot(&slot, faults).await
}

/// A short text answer, cacheable for a second.
pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        http_body_util::Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=1"),
    );
    r
}

/// A JSON answer, never stored.
pub(super) fn json<T: Serialize>(v: &T) -> Response<Body> {
    let mut r = text(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

/// The protocol's "not yet" (docs/protocol.md): a 404 with the marker.
pub(super) fn not_yet() -> Response<Body> {
    let mut r = text(StatusCode::NOT_FOUND, "not yet\n");
    r.headers_mut().extend(protocol::not_yet_headers());
    r
}
