//! Finding the nearest cache: the well-known probe (RFC 8615).
//!
//! Every relay answers `GET /.well-known/mlcache` with a small JSON object:
//! its id, the unicast URL(s) to use, and whether it is healthy. Viewers and
//! child relays send the probe to an anycast address: routing delivers it to
//! the nearest relay that announces that address, and the answer names that
//! relay's unicast address. A probe that is not answered within its short
//! timeout, or that answers "unhealthy", means "no cache here". The caller
//! then goes to the next source, in the end the origin itself.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use serde::{Deserialize, Serialize};

use crate::connect::ConnectError;

/// Default probe timeout: long enough for any nearby cache, short enough
/// that a viewer without one barely notices.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);
/// Largest probe answer a caller reads.
const MAX_ANSWER: usize = 16 * 1024;

/// A relay's answer to the probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// The relay's id (as in `Via`).
    pub id: String,
    /// Unicast URLs to fetch through, best first (`http://IP:PORT`).
    pub urls: Vec<String>,
    /// Whether the relay takes new viewers.
    pub healthy: bool,
    /// Shutting down.
    pub draining: bool,
    /// Viewers parked now, and the limit.
    pub parked: usize,
    /// `max-parked`.
    pub max_parked: usize,
}

impl ProbeAnswer {
    /// The socket address of the first usable URL.
    pub fn unicast(&self) -> Option<SocketAddr> {
        self.urls.iter().find_map(|u| {
            let rest = u.strip_prefix("http://")?;
            rest.trim_end_matches('/').parse().ok()
        })
    }
}

/// Why a probe found no cache.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// Connection or HTTP failure.
    #[error("probe of {0} failed: {1}")]
    Failed(SocketAddr, String),
    /// The answer was not a probe answer.
    #[error("probe of {0}: bad answer: {1}")]
    BadAnswer(SocketAddr, String),
}

/// Sends the probe to `addr` and returns the answer, within `timeout`.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<ProbeAnswer, ProbeError> {
    let fail = |e: &dyn std::fmt::Display| ProbeError::Failed(addr, e.to_string());
    let ask = async {
        let tcp = crate::connect::tcp(addr, timeout)
            .await
            .map_err(|e| match e {
                ConnectError::Timeout(_) => ProbeError::Timeout(addr, timeout),
                e => fail(&e),
            })?;
        let mut send = crate::connect::http1(tcp, &http1::Builder::new())
            .await
            .map_err(|e| fail(&e))?;
        let req = Request::get(crate::protocol::PROBE_PATH)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
        if !resp.status().is_success() {
            return Err(ProbeError::BadAnswer(
                addr,
                format!("status {}", resp.status()),
            ));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| fail(&e))?
            .to_bytes();
        serde_json::from_slice::<ProbeAnswer>(&body)
            .map_err(|e| ProbeError::BadAnswer(addr, e.to_string()))
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| ProbeError::Timeout(addr, timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_url() {
        let a = ProbeAnswer {
            id: "r".into(),
            urls: vec!["https://x".into(), "http://10.1.1.1:8080/".into()],
            healthy: true,
            draining: false,
            parked: 0,
            max_parked: 1,
        };
        assert_eq!(a.unicast(), Some("10.1.1.1:8080".parse().unwrap()));
    }

    #[tokio::test]
    async fn silent_address_times_out() {
        // A listener that never answers: the probe gives up at its timeout.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let r = probe(addr, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(ProbeError::Timeout(..))), "{r:?}");
        drop(l);
        assert!(probe(addr, Duration::from_millis(300)).await.is_err());
    }
}
