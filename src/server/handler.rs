//! What the relay answers to one downstream request head (the connection
//! it arrived on is [`conn`](super::conn)'s).
//!
//! [`handle`] answers the anycast probe itself; any other request goes
//! through `respond`: method, header size and loop checks → chunk key and
//! allow-list (`key`) → [`Relay::join`] → a cached body (`serve_entry`,
//! honouring a single `Range`), or a slot viewer whose pieces become the
//! response body as they arrive. Errors become responses in
//! [`error`](super::error).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tracing::Instrument;

use super::range::{parse_range, RangeSpec};
use super::{full, local_response, Body, RequestError};
use crate::cache::Entry;
use crate::flight::Parked;
use crate::key::RawKey;
use crate::metrics::Outcome;
use crate::protocol::{CacheStatus, X_CACHE};
use crate::relay::{not_yet_head, Answer, Relay};
use crate::slot::{BodyReader, HeadWait};

/// Answers the anycast probe: who this relay is, where to reach it by
/// unicast, and whether it takes viewers.
fn probe_answer(relay: &Relay, local: SocketAddr) -> Response<Body> {
    let urls = if relay.config.advertise.is_empty() {
        vec![format!("http://{local}")]
    } else {
        relay.config.advertise.clone()
    };
    let parked = relay.parked();
    let max = relay.flights.limits().max_parked;
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
    // An owned copy: a clone would share the request head's bytes, and
    // with them the connection's whole read buffer (see `respond`).
    let origin = req.headers().get(http::header::ORIGIN).map(owned);
    let mut resp = async {
        match respond(&relay, req).await {
            Ok(resp) => resp,
            Err(e) => {
                relay.metrics.request(Outcome::Error);
                e.into_response(&relay)
            }
        }
    }
    .instrument(span)
    .await;
    relay.cors.apply(origin.as_ref(), resp.headers_mut());
    if relay.is_draining() {
        resp.headers_mut().insert(
            crate::protocol::DRAINING_HEADER,
            HeaderValue::from_static("1"),
        );
    }
    resp
}

/// A header value in an allocation of its own. hyper's HTTP/1.1 parser
/// (and h2's HPACK decoder) hand out field values and the target as slices
/// of the connection's read buffer, so anything kept from the request keeps
/// that whole buffer (8 KiB and more) alive; a parked viewer keeps only
/// copies of the few bytes it needs.
fn owned(v: &HeaderValue) -> HeaderValue {
    let mut c =
        HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""));
    c.set_sensitive(v.is_sensitive());
    c
}

/// Refuses a request head (target and fields) over `max-header-size`.
fn check_header_size(relay: &Relay, req: &Request<()>) -> Result<(), RequestError> {
    let uri = req.uri();
    let header_bytes: usize = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_bytes as u64 > relay.live().config.max_header_size.as_u64() {
        return Err(RequestError::HeaderTooLarge(header_bytes));
    }
    Ok(())
}

async fn respond(relay: &Arc<Relay>, req: Request<()>) -> Result<Response<Body>, RequestError> {
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        // With `--cors` the relay answers preflights itself; without, OPTIONS
        // is refused like any other method.
        Method::OPTIONS if relay.cors.enabled() => {
            check_header_size(relay, &req)?;
            return Ok(relay.cors.preflight(req.headers()));
        }
        ref m => return Err(RequestError::Method(m.clone())),
    };
    check_header_size(relay, &req)?;
    let via = req.headers().get_all(http::header::VIA);
    if relay.in_via(via.iter()) {
        return Err(RequestError::Loop(relay.id.clone()));
    }
    let raw = RawKey::from_request(&req)?;
    let (key, origin) = relay.live().origins.resolve(&raw)?;
    tracing::Span::current().record("key", tracing::field::display(&key));
    let range = req.headers().get(http::header::RANGE).map(owned);
    let answer = relay.join(&key, &origin, || relay.via_upstream(via.iter()))?;
    // Nothing of the request head is needed from here on: dropping it
    // before the (possibly long) wait frees the read buffer its bytes live
    // in, the largest part of an idle HTTP/1.1 viewer (issue 10).
    drop(req);
    let (parked, opened) = match answer {
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
    let max_wait = relay.live().config.max_wait;
    let head = match tokio::time::timeout(max_wait, viewer.head()).await {
        Ok(HeadWait::Head(h)) => h,
        Ok(HeadWait::Failed(e)) => return Err(e.into()),
        Err(_) if viewer.saw_not_yet() => Arc::new(not_yet_head()),
        Err(_) => return Err(RequestError::Timeout(max_wait)),
    };
    let not_yet = crate::protocol::is_not_yet(head.status, &head.headers);
    relay.metrics.request(match (not_yet, opened) {
        (true, _) => Outcome::NotYet,
        (false, true) => Outcome::Miss,
        (false, false) => Outcome::Coalesced,
    });
    let mut resp = response_head(
        relay,
        head.status,
        &head.headers,
        if opened {
            CacheStatus::Miss
        } else {
            CacheStatus::Coalesced
        },
    );
    // Age on every response, not only hits: the age the head arrived
    // with plus how long ago it arrived here.
    let arrived_age = head
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let here = slot.head_at().map_or(0, |t| t.elapsed().as_secs());
    resp.headers_mut().insert(
        http::header::AGE,
        HeaderValue::from(arrived_age.saturating_add(here)),
    );
    if !head_only && !not_yet {
        // Answer with the first piece in hand: the head then leaves in the
        // same write as the first bytes (over h2, HEADERS and the first DATA
        // frame in one `writev`), not in a write of its own just before
        // them. For a live chunk both arrive together; the wait is bounded
        // by what is left of `max-wait`, after which the head goes alone.
        let left = relay.config.max_wait.saturating_sub(joined.elapsed());
        let ready = tokio::time::timeout(left, viewer.next_piece()).await;
        let (ready, more) = match ready {
            Ok(Some(Ok(b))) => (Some(Ok(b)), true),
            Ok(Some(Err(e))) => (Some(Err(e)), false),
            Ok(None) => (None, false),
            Err(_) => (None, true),
        };
        let rest = more.then(|| viewer.into_stream());
        let pieces = stream::iter(ready).chain(stream::iter(rest).flatten());
        let relay = relay.clone();
        let mut first = true;
        let s = pieces.map(move |piece| {
            // Owning the place here holds the viewer's place under
            // `max-parked` until hyper drops the body.
            let _held = &place;
            let b = piece?;
            // The first piece records how long after its upstream arrival
            // it reached this viewer, if the viewer was already waiting
            // then (a late joiner was not kept waiting by the fan-out).
            if std::mem::take(&mut first) {
                if let Some(t) = slot.first_byte().filter(|t| *t >= joined) {
                    relay.metrics.observe_delivery(t.elapsed().as_secs_f64());
                }
            }
            relay.metrics.bytes_out.inc_by(b.len() as u64);
            Ok(Frame::data(b))
        });
        *resp.body_mut() = BodyExt::boxed_unsync(StreamBody::new(s));
    }
    Ok(resp)
}

/// The response head every viewer of an object gets: the stored status and
/// headers, plus `X-Cache` and this relay's `Via` entry.
fn response_head(
    relay: &Relay,
    status: StatusCode,
    headers: &HeaderMap,
    x_cache: CacheStatus,
) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers.clone();
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
    let mut resp = response_head(relay, entry.status, &entry.headers, CacheStatus::Hit);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every parked viewer holds one `handle` future (inline in its h2
    /// stream task, or boxed in its HTTP/1.1 connection) for as long as it
    /// waits: issue 10 wants a viewer in a few KiB, so this must stay small.
    #[test]
    fn a_parked_request_is_small() {
        let handle_size = future_size(handle);
        let respond_size = future_size(|r: Arc<Relay>, q: Request<()>, _: ()| async move {
            let _ = respond(&r, q).await;
        });
        eprintln!("handle future: {handle_size} B, respond future: {respond_size} B");
        assert!(handle_size <= 3072, "handle future is {handle_size} B");
    }
}
