//! The head-end simulator: live streams published on a clock (or on command),
//! a VOD catalog, long-poll, `/stats`, and fault knobs for tests.
//!
//! Each live chunk is a [`Slot`]: the publisher pushes its bytes into it,
//! progressively across the chunk's duration (as chunked CMAF does) or whole at
//! its end, and every request for the chunk streams from that slot. A request
//! for a chunk 1..=`max_ahead` past the live edge waits on the stream's edge
//! watch until the chunk exists (long-poll) or `hold` passes ("not yet", see
//! docs/protocol.md). In plain mode it gets a 404 at once instead, as an
//! ordinary HLS origin would give.
//!
//! Paths: `/live/{stream}/{seq}`, `/live/{stream}` (edge info as JSON),
//! `/vod/{n}`, `/stats`. Chunk bodies start with the publish timestamp
//! (u64 big-endian nanoseconds since the Unix epoch), then the sequence
//! number (u64), then deterministic filler, so a viewer can both time and
//! verify what it got.
//!
//! One concept per file, in the order a request meets them:
//! - this file: [`OriginConfig`], the shared state, [`start`] / [`run`] and
//!   the [`OriginHandle`] tests drive it with;
//! - `accept`: the accept loop, which tells TLS (the API) from clear text
//!   (chunks) by the first byte on one port;
//! - `router`: paths → answers (`/stats`, `/live/{s}`, VOD, the not-yet
//!   answer), and the request counters;
//! - `live`: the live long-poll against a stream's edge;
//! - `api`: the manifest and key API behind a bearer token (HTTPS only);
//! - `publish`: the publisher clock that makes each live chunk a slot;
//! - `chunk`: what a chunk is: deterministic bytes, RFC 8188 sealing, headers;
//! - `faults`: injected faults, per flag or per query, applied to a body;
//! - `cli`: the `mlcache-origin` flags and their checks;
//! - `fmp4`: the fragmented-MP4 parser the low-latency head end reads its
//!   feed with;
//! - `ll`: the LL-HLS / LL-DASH head end (`/ll/…`, `/dash/…`), fed by ffmpeg.

mod accept;
mod api;
mod chunk;
mod cli;
mod faults;
pub mod fmp4;
mod live;
mod ll;
mod publish;
mod router;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::slot::Slot;

pub use chunk::{chunk_bytes, xorshift64, Encryption};
pub use cli::{read_live_dir, OriginArgs};
pub use faults::Faults;
pub use ll::{Feed, LlConfig};
pub use publish::Publish;

/// Settings of the head end.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Number of live streams (`/live/0` ..).
    pub streams: usize,
    /// Chunk duration; `None` publishes only on [`OriginHandle::publish`].
    pub cadence: Option<Duration>,
    /// Bytes per chunk.
    pub chunk_size: usize,
    /// Progressive or whole.
    pub publish: Publish,
    /// Pieces a progressive chunk is written in.
    pub pieces: usize,
    /// Longest a long-poll is held before "not yet".
    pub hold: Duration,
    /// How far past the edge a request is held rather than refused.
    pub max_ahead: u64,
    /// How many past chunks stay available.
    pub window: u64,
    /// Number of VOD chunks (`/vod/0` ..).
    pub vod_chunks: u64,
    /// `max-age` of VOD chunks.
    pub vod_max_age: Duration,
    /// Answer 404 instead of holding (an ordinary, non-long-poll origin).
    pub plain: bool,
    /// Faults applied to every request.
    pub faults: Faults,
    /// RFC 8188 encryption of every chunk; `None` serves plaintext.
    pub encryption: Option<Encryption>,
    /// TLS for the manifest and key API (on the same port as the chunks).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bearer token of the manifest and key API.
    pub token: Option<String>,
    /// The authority chunk names use (default: the bound address).
    pub authority: Option<String>,
    /// When set, stream 0 publishes these bodies in order and then ends.
    pub live_files: Vec<Bytes>,
    /// The LL-HLS / LL-DASH head end (`/ll/`, `/dash/`), when set.
    pub ll: Option<LlConfig>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: "127.0.0.1:9100".parse().expect("static address"),
            streams: 1,
            cadence: Some(Duration::from_millis(500)),
            chunk_size: 64 * 1024,
            publish: Publish::Progressive,
            pieces: 8,
            hold: Duration::from_secs(5),
            max_ahead: 3,
            window: 60,
            vod_chunks: 100,
            vod_max_age: Duration::from_secs(3600),
            plain: false,
            faults: Faults::default(),
            encryption: None,
            tls: None,
            token: None,
            authority: None,
            live_files: Vec::new(),
            ll: None,
        }
    }
}

/// One live stream: its edge (the newest published sequence, -1 before the
/// first) and the window of chunks still served.
struct Stream {
    edge: watch::Sender<i64>,
    next: AtomicU64,
    chunks: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

/// Everything the accept loop, the router and the publisher share.
struct State {
    cfg: OriginConfig,
    authority: String,
    streams: Vec<Stream>,
    requests: Mutex<HashMap<String, u64>>,
    /// LL-HLS key requests (`/keys/hls/…`) by transport and status, e.g.
    /// `https 200`: who asked for keys, and how.
    key_requests: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    refuse: AtomicBool,
    /// Canonical `host:port` of `authority`, for chunks' binding names.
    bind_authority: String,
    /// The low-latency head end, when configured.
    ll: Option<Arc<ll::LlHead>>,
}

impl State {
    /// The binding name of chunk `path` of this origin (see
    /// `manifest::binding_name`; `path` has no query).
    fn binding(&self, path: &str) -> String {
        format!("mlcache://{}{path}", self.bind_authority)
    }
}

/// A running head end.
pub struct OriginHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to stop it.
    pub shutdown: CancellationToken,
    state: Arc<State>,
}

impl OriginHandle {
    /// The URL of the origin, e.g. `http://127.0.0.1:9100`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes the next chunk of `stream` now (needed when `cadence` is
    /// `None`; with a cadence it adds an extra chunk).
    pub fn publish(&self, stream: usize) {
        publish::publish_next(&self.state, stream);
    }

    /// The live edge of `stream` (-1 before the first chunk).
    pub fn edge(&self, stream: usize) -> i64 {
        *self.state.streams[stream].edge.borrow()
    }

    /// Requests received for `path` (path and query).
    pub fn requests(&self, path: &str) -> u64 {
        self.state.requests.lock().get(path).copied().unwrap_or(0)
    }

    /// All requests received.
    pub fn requests_total(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// Makes the origin close every new connection at once (or stop doing so).
    pub fn set_refuse(&self, refuse: bool) {
        self.state.refuse.store(refuse, Ordering::Relaxed);
    }
}

/// Starts the head end.
pub async fn start(cfg: OriginConfig) -> std::io::Result<OriginHandle> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let authority = cfg.authority.clone().unwrap_or_else(|| addr.to_string());
    let bind_authority = crate::manifest::canonical_authority(&authority)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let ll = cfg.ll.clone().map(|c| ll::LlHead::new(c, &authority));
    let state = Arc::new(State {
        ll,
        bind_authority,
        authority,
        streams: (0..cfg.streams)
            .map(|_| Stream {
                edge: watch::Sender::new(-1),
                next: AtomicU64::new(0),
                chunks: Mutex::new(BTreeMap::new()),
            })
            .collect(),
        requests: Mutex::new(HashMap::new()),
        key_requests: Mutex::new(HashMap::new()),
        total: AtomicU64::new(0),
        refuse: AtomicBool::new(cfg.faults.refuse),
        cfg,
    });
    let shutdown = CancellationToken::new();
    if let Some(cadence) = state.cfg.cadence {
        publish::spawn_clock(state.clone(), cadence, shutdown.clone());
    }
    if let Some(ll) = &state.ll {
        ll.spawn_feed(shutdown.clone());
    }
    accept::spawn(listener, state.clone(), shutdown.clone());
    Ok(OriginHandle {
        addr,
        shutdown,
        state,
    })
}

/// Runs a head end until SIGTERM or Ctrl-C, printing `listening ADDR` first.
pub async fn run(cfg: OriginConfig) -> std::io::Result<()> {
    let origin = start(cfg).await?;
    println!("listening {}", origin.addr);
    crate::until_signal().await?;
    origin.shutdown.cancel();
    Ok(())
}
