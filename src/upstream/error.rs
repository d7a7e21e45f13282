//! What can go wrong upstream: the [`Failure`] of one request to one source,
//! [`Blame`] (which kind of source), and the [`UpstreamError`] a fetch ends
//! with. `classify` names a hyper or h2 error by what it means for the
//! retry rules in the module doc of [`crate::upstream`].

use std::time::Duration;

use http::StatusCode;

use crate::connect::ConnectError;

/// Who failed: the source that was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// A parent relay.
    Parent,
    /// The origin.
    Origin,
}

impl Blame {
    /// The metric label (`target`).
    pub fn label(self) -> &'static str {
        match self {
            Blame::Parent => "parent",
            Blame::Origin => "origin",
        }
    }
}

impl std::fmt::Display for Blame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What went wrong with one request to one source.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The TCP connection was refused.
    #[error("connection refused")]
    ConnectRefused,
    /// The TCP connection was not established in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Any other connect error (name resolution, unreachable network).
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// `probe:ADDR` found no usable parent.
    #[error("anycast probe: {0}")]
    Probe(String),
    /// The TLS handshake with an `https://` origin or parent failed (or a
    /// parent did not negotiate h2).
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection was closed, reset or went away (GOAWAY) before a
    /// response head.
    #[error("connection closed before a response head: {0}")]
    Closed(String),
    /// The peer reset this request's stream (HTTP/2 `RST_STREAM`).
    #[error("stream reset by the peer: {0}")]
    Reset(String),
    /// No response head within the hold time (a slow long-poll).
    #[error("no response head within {0:?}")]
    HeadTimeout(Duration),
    /// The response head was over the limit (bytes, or more than 100 fields
    /// over HTTP/1.1).
    #[error("response head over the {limit}-byte limit")]
    HeadTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The response could not be parsed or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A parent answered with a server error.
    #[error("answered {0}")]
    Status(StatusCode),
}

impl Failure {
    /// The metric label (`result`).
    pub fn label(&self) -> &'static str {
        match self {
            Failure::ConnectRefused => "refused",
            Failure::ConnectTimeout(_) => "connect_timeout",
            Failure::Connect(_) => "connect_error",
            Failure::Probe(_) => "probe_failed",
            Failure::Tls(_) => "tls_error",
            Failure::Closed(_) => "closed",
            Failure::Reset(_) => "reset",
            Failure::HeadTimeout(_) => "timeout",
            Failure::HeadTooLarge { .. } => "head_too_large",
            Failure::Protocol(_) => "protocol_error",
            Failure::Status(_) => "status_5xx",
        }
    }

    /// Whether this says the source cannot be reached at all, so a parent is
    /// marked down. Only connection-level failures do.
    pub fn is_connection_level(&self) -> bool {
        matches!(
            self,
            Failure::ConnectRefused
                | Failure::ConnectTimeout(_)
                | Failure::Connect(_)
                | Failure::Probe(_)
                | Failure::Tls(_)
                | Failure::Closed(_)
        )
    }

    /// Whether the source was too slow (504) rather than broken (502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Failure::ConnectTimeout(_) | Failure::HeadTimeout(_))
    }

    /// Whether a request that failed this way on a reused connection should
    /// be sent again once on a fresh one.
    pub(super) fn is_stale_connection(&self) -> bool {
        matches!(self, Failure::Closed(_))
    }
}

/// Why a fetch (or setting up the client) failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The source that ended the fetch failed.
    #[error("{blame} {target}: {failure}")]
    Fetch {
        /// Which kind of source.
        blame: Blame,
        /// The parent's URL or the origin's `host:port`.
        target: String,
        /// What went wrong.
        failure: Failure,
    },
    /// The TLS trust roots for https origins could not be set up.
    #[error("TLS for https origins: {0}")]
    TlsSetup(#[from] crate::tls::TlsError),
    /// A parent URL in the configuration is unusable.
    #[error("invalid upstream {0:?}: expected http://HOST:PORT or probe:IP:PORT")]
    BadParent(String),
}

impl UpstreamError {
    /// Whether the viewer should get 504 (a timeout) rather than 502.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Fetch { failure, .. } if failure.is_timeout())
    }

    /// The status to answer a viewer with: 504 for a timeout, else 502.
    pub fn status(&self) -> StatusCode {
        if self.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }

    /// Which source failed, for a fetch error.
    pub fn blame(&self) -> Option<Blame> {
        match self {
            UpstreamError::Fetch { blame, .. } => Some(*blame),
            _ => None,
        }
    }

    /// The failure of a fetch error.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            UpstreamError::Fetch { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

impl From<ConnectError> for Failure {
    /// Tells refused, timed out and other connect errors apart.
    fn from(e: ConnectError) -> Failure {
        if e.is_refused() {
            return Failure::ConnectRefused;
        }
        match e {
            ConnectError::Timeout(limit) => Failure::ConnectTimeout(limit),
            ConnectError::Io(e) => Failure::Connect(e),
        }
    }
}

/// Names a hyper error by what it means for the retry rules.
pub(super) fn classify(e: &hyper::Error, limit: usize) -> Failure {
    if e.is_parse_too_large() {
        return Failure::HeadTooLarge { limit };
    }
    if e.is_parse() || e.is_parse_status() {
        return Failure::Protocol(chain(e));
    }
    if let Some(h2) = find_source::<h2::Error>(e) {
        let reason = h2.reason().map(|r| r.to_string()).unwrap_or_default();
        return if h2.is_go_away() {
            Failure::Closed(format!("GOAWAY {reason}"))
        } else if h2.is_reset() && h2.is_remote() {
            Failure::Reset(reason)
        } else if h2.is_reset() {
            // h2 itself reset the stream: the head broke the protocol or was
            // over the header-list backstop.
            Failure::Protocol(format!("response head refused ({reason})"))
        } else if h2.is_io() {
            Failure::Closed(chain(e))
        } else {
            Failure::Protocol(chain(e))
        };
    }
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() || e.is_timeout() {
        return Failure::Closed(chain(e));
    }
    if find_source::<std::io::Error>(e).is_some() {
        return Failure::Closed(chain(e));
    }
    Failure::Protocol(chain(e))
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_status_labels_and_rules() {
        let fetch = |failure| UpstreamError::Fetch {
            blame: Blame::Parent,
            target: "http://p".into(),
            failure,
        };
        let e = fetch(Failure::HeadTimeout(Duration::from_secs(1)));
        assert!(e.is_timeout());
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.failure().map(Failure::label), Some("timeout"));
        assert_eq!(e.blame(), Some(Blame::Parent));
        let e = fetch(Failure::ConnectTimeout(Duration::from_secs(1)));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let e = fetch(Failure::HeadTooLarge { limit: 10 });
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(!e.failure().unwrap().is_connection_level());
        assert!(Failure::ConnectRefused.is_connection_level());
        assert!(Failure::Closed("x".into()).is_connection_level());
        for f in [
            Failure::HeadTimeout(Duration::ZERO),
            Failure::Reset("x".into()),
            Failure::Protocol("x".into()),
            Failure::Status(StatusCode::BAD_GATEWAY),
        ] {
            assert!(!f.is_connection_level(), "{f}");
        }
        assert_eq!(
            e.to_string(),
            "parent http://p: response head over the 10-byte limit"
        );
    }
}
