//! The one mapping from a refused request to its HTTP answer.
//!
//! Every way the request path can say no is a [`RequestError`].
//! [`RequestError::status`] maps it to a status, and `into_response` counts
//! it (the `rejected` metric for a limit, and the refused or shed summary
//! log line) and renders the plain-text answer, with `Retry-After` on a 503
//! and `Content-Range` on a 416.

use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Response, StatusCode};

use super::{local_response, Body};
use crate::flight::Refused;
use crate::key::KeyError;
use crate::relay::Relay;
use crate::slot::SlotError;

/// Why a downstream request was not answered from a slot or the cache.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Only GET and HEAD fetch chunks.
    #[error("method {} not allowed: the relay serves GET and HEAD", quoted(.0.as_str()))]
    Method(Method),
    /// The request head exceeds `max-header-size` (or has more fields than
    /// the HTTP/1.1 reader takes).
    #[error("request header of {0} bytes exceeds max-header-size")]
    HeaderTooLarge(usize),
    /// An HTTP/1.1 request head that does not parse.
    #[error("malformed request head: {0}")]
    BadHead(&'static str),
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

/// A request's token for an error text: at most 32 characters of it.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(32) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

impl RequestError {
    /// The one mapping from errors to statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestError::Loop(_) => StatusCode::LOOP_DETECTED,
            RequestError::Key(KeyError::NotAllowed(_)) => StatusCode::FORBIDDEN,
            RequestError::Key(_) | RequestError::BadHead(_) => StatusCode::BAD_REQUEST,
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
        if let RequestError::Method(_) = self {
            // RFC 9110 §15.5.6: a 405 lists what the resource allows.
            // OPTIONS is answered only when `--cors` is set.
            let allow = if relay.config.cors.is_empty() {
                "GET, HEAD"
            } else {
                "GET, HEAD, OPTIONS"
            };
            h.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if let RequestError::Range(len) = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_one_status() {
        assert_eq!(
            RequestError::Key(KeyError::NotAllowed("x".into())).status(),
            403
        );
        assert_eq!(RequestError::Key(KeyError::NoAuthority).status(), 400);
        assert_eq!(RequestError::Loop("a".into()).status(), 508);
        assert_eq!(RequestError::BadHead("x").status(), 400);
        let long = Method::from_bytes(&[b'X'; 20_000]).unwrap();
        assert!(RequestError::Method(long).to_string().len() < 100);
        assert_eq!(RequestError::HeaderTooLarge(1).status(), 431);
        assert_eq!(RequestError::Refused(Refused::Memory).status(), 503);
        assert_eq!(RequestError::Timeout(Duration::ZERO).status(), 504);
        assert_eq!(RequestError::Upstream(SlotError::TooLarge).status(), 502);
    }
}
