//! The client's settings: where the API is and how it is trusted, how the
//! nearest relay is found, which relays come after it, and how long one
//! attempt may take.

use std::net::SocketAddr;
use std::time::Duration;

use crate::probe;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL of the origin's API (`https://HOST:PORT`); default
    /// `https://AUTHORITY` of the name.
    pub api: Option<String>,
    /// Bearer token for the API.
    pub token: String,
    /// CA certificate (PEM) to trust for the API; default the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Anycast address to probe for the nearest relay.
    pub probe: Option<SocketAddr>,
    /// Probe timeout.
    pub probe_timeout: Duration,
    /// Relays to try after the probed one.
    pub relays: Vec<SocketAddr>,
    /// Longest one attempt at one chunk may take.
    pub fetch_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            api: None,
            token: String::new(),
            ca_pem: None,
            probe: None,
            probe_timeout: probe::DEFAULT_TIMEOUT,
            relays: Vec::new(),
            fetch_timeout: Duration::from_secs(30),
        }
    }
}
