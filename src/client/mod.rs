//! The viewer client: manifests and keys from the origin over authenticated
//! HTTPS, chunks through the nearest relay, decrypted and verified as they
//! stream.
//!
//! Sources for a chunk, in order: the relay the anycast probe found (if it
//! says it is healthy), the relays given explicitly, then the origin itself.
//! Nothing a source sends is trusted until checked (docs/protocol.md §8):
//!
//! 1. the response must say `Content-Encoding: aes128gcm` and nothing else
//!    ([`ece::check_coding`]); a body without it could be anything;
//! 2. the RFC 8188 header's `rs` must be within `ece::MIN_RS..=ece::MAX_RS`,
//!    checked before a byte is buffered for a record;
//! 3. the header's key id must be the one the manifest gives for this chunk
//!    ([`KeyIndex`]), checked before the API is asked for any key;
//! 4. every record must authenticate under the key derived from that key and
//!    the chunk's binding name ([`ece::name_key`]), so another chunk (an old
//!    one, or one for another name) fails its first record.
//!
//! Plaintext is streamed: a record's plaintext goes to the output as soon as
//! its tag verifies, so memory per chunk is one record (at most 1 MiB), not
//! one chunk. If a source fails (it is down, it resets, or any check above
//! fails), the chunk is fetched again from the next source; that source's
//! plaintext is decrypted from the start and the part already written is
//! skipped, so the output stays exact: nothing duplicated, nothing lost,
//! nothing unverified. `written` advances with each completed `write` call,
//! so a timeout that cancels an attempt mid-write cannot make a byte be
//! written twice. A relay failure also triggers a new probe, because routing
//! may now lead to another relay, and so does a response marked
//! `mlcache-draining` (a planned drain: the viewer moves before the relay
//! stops serving). Name resolution is asynchronous
//! (`tokio::net::lookup_host`).
//!
//! Files, one concept each: `config.rs` the settings, `name.rs` chunk and
//! title names, `discover.rs` the probe and the order of sources, `api.rs`
//! the HTTPS manifest and key API, `pool.rs` keep-alive connections,
//! `fetch.rs` failover over sources, `decrypt.rs` the decryption driver,
//! `play.rs` whole VOD titles and live streams, `error.rs` the errors.

mod api;
mod config;
mod decrypt;
mod discover;
mod error;
mod fetch;
mod name;
mod play;
mod pool;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

pub use config::ClientConfig;
use error::Fail;
pub use error::{ClientError, SourceError};
pub use fetch::{Event, Fetched, Source};
pub use name::Name;
pub use play::{get_title, play};

use crate::manifest::KeyIndex;

/// A viewer.
pub struct Client {
    cfg: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    /// Keys by (authority, key id): key ids are per origin.
    keys: Mutex<HashMap<(String, String), Vec<u8>>>,
    /// Key id indexes of titles, by the title's binding name.
    titles: Mutex<HashMap<String, Arc<KeyIndex>>>,
    /// The relay the last probe found healthy.
    nearest: Mutex<Option<SocketAddr>>,
    /// When the last probe was sent.
    probed: Mutex<Option<std::time::Instant>>,
    /// Sources that failed, in order.
    events: Mutex<Vec<Event>>,
    /// Chunks delivered per source.
    served: Mutex<BTreeMap<Source, u64>>,
    /// One parked keep-alive connection per chunk source.
    idle: Mutex<HashMap<SocketAddr, pool::Http1Sender>>,
}

impl Client {
    /// A client; probes for the nearest relay at once when a probe address
    /// is configured.
    pub async fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let tls = crate::tls::client_config(cfg.ca_pem.as_deref())?;
        let c = Client {
            cfg,
            tls,
            keys: Mutex::new(HashMap::new()),
            titles: Mutex::new(HashMap::new()),
            nearest: Mutex::new(None),
            probed: Mutex::new(None),
            events: Mutex::new(Vec::new()),
            served: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(HashMap::new()),
        };
        c.discover().await;
        Ok(c)
    }

    /// Sources failed so far, with reasons.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// Chunks delivered per source.
    pub fn served(&self) -> BTreeMap<Source, u64> {
        self.served.lock().clone()
    }
}
