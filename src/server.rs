//! Downstream HTTP requests: what the relay answers to each one. The
//! connections they arrive on are [`listener`](crate::listener)'s.
//!
//! A request goes: connection limit (in `listener`) → method, header size and loop checks →
//! chunk key and allow-list (`key`) → `Relay::lookup` → a cached body, or a
//! slot viewer streamed out as the response body. Every refusal is a
//! [`RequestError`], and [`RequestError::status`] is the one place that maps
//! errors to HTTP statuses. A body that fails mid-way is returned to hyper as
//! a body error, which resets the HTTP/2 stream or closes the HTTP/1.1
//! connection before the declared end, so a truncated chunk never looks whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tracing::Instrument;

use crate::cache::Entry;
use crate::flight::{Parked, Refused};
use crate::key::{KeyError, RawKey};
use crate::metrics::Outcome;
use crate::protocol::{CacheStatus, X_CACHE};
use crate::relay::{not_yet_head, Answer, Relay};
use crate::slot::{BodyReader, Head, HeadWait, SlotError};

/// The response body type of every relay response.
pub type Body = UnsyncBoxBody<Bytes, SlotError>;

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

    pub(crate) fn into_response(self, relay: &Relay) -> Response<Body> {
        let status = self.status();
        if let Some(reason) = self.limit() {
            relay.metrics.rejected(reason);
        }
        // Counted, and logged as one summary line per `log-interval`, so an
        // overload does not become a log storm.
        tracing::debug!(error = %self, %status, "request refused");
        let reason = self
            .limit()
            .unwrap_or_else(|| crate::ratelog::status_reason(status));
        if status.is_server_error() {
            relay.metrics.shed_log.note(reason);
        } else {
            relay.metrics.refused_log.note(reason);
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
pub(crate) fn local_response(
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
    h.insert(X_CACHE, CacheStatus::Miss.header_value());
    resp
}

/// Answers one downstream request head. `local` is the address the
/// connection arrived on (an anycast address, for a probe). The request body
/// is not passed: the listener drops it unread (GET and HEAD only).
pub async fn handle(relay: Arc<Relay>, req: Request<()>, local: SocketAddr) -> Response<Body> {
    if req.uri().path() == crate::protocol::PROBE_PATH
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

async fn respond(relay: &Arc<Relay>, req: Request<()>) -> Result<Response<Body>, RequestError> {
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
    let not_yet = crate::protocol::is_not_yet(head.status, &head.headers);
    relay.metrics.request(match (not_yet, opened) {
        (true, _) => Outcome::NotYet,
        (false, true) => Outcome::Miss,
        (false, false) => Outcome::Coalesced,
    });
    let mut resp = response_head(
        relay,
        &head,
        if opened {
            CacheStatus::Miss
        } else {
            CacheStatus::Coalesced
        },
    );
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

fn response_head(relay: &Relay, head: &Head, x_cache: CacheStatus) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers.clone();
    let h = resp.headers_mut();
    h.insert(X_CACHE, x_cache.header_value());
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
    let mut resp = response_head(relay, &head, CacheStatus::Hit);
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
