//! LL-HLS load: N simulated low-latency HLS players follow a stream through
//! relays, as hls.js does in low-latency mode, while a control group plays
//! the same stream straight from the origin.
//!
//! Each player loads the multivariant playlist, then the media playlist,
//! then loops: a blocking reload `media.m3u8?_HLS_msn=M&_HLS_part=P` for the
//! part after the newest one it has, built exactly as hls.js 1.x builds it
//! (so every player asks for byte-identical URLs and a relay coalesces
//! them), while it fetches the parts in order from `PART-HOLD-BACK` behind
//! the live edge, and the `EXT-X-PRELOAD-HINT` part as soon as it is hinted
//! (the origin holds it until written; `--no-preload-hint` leaves that out,
//! which is what hls.js 1.7 itself does).
//!
//! Measured: per part, the time each relay player got its first and last
//! byte minus the earliest control player's (the added delay); origin
//! requests per part and per playlist version (from the origin's `/stats`,
//! minus what the control group sent, which the loadgen counts); playlist
//! and part errors; stalls (a player with no new part for more than three
//! part targets).
//!
//! Files: `playlist.rs` the parser and URL rules, `cache.rs` the shared
//! parse cache (identical playlist bodies parsed once), `player.rs` one player's
//! state machine, `run.rs` the orchestration and the arithmetic of the
//! results, `report.rs` the results and their table; this file holds the
//! options.

mod cache;
mod player;
pub mod playlist;
mod report;
mod run;

use std::net::SocketAddr;
use std::time::Duration;

pub use report::{HlsGroupReport, HlsReport};
pub use run::run;

/// One group of players on one target.
#[derive(Debug, Clone)]
pub struct HlsGroup {
    /// Label in the report.
    pub name: String,
    /// Where the players connect.
    pub target: SocketAddr,
    /// URL prefix the origin's paths are appended to: `http://ORIGIN` for
    /// the control group, `http://RELAY/mlcache/ORIGIN` (the relay's path
    /// form, what a browser would be given) for a relay.
    pub prefix: String,
    /// `false` for the control group on the origin.
    pub via_relay: bool,
    /// How many players.
    pub players: usize,
    /// A process to watch for CPU and RSS (the relay's pid), if known.
    pub pid: Option<u32>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct HlsOpts {
    /// The origin, for `/stats`.
    pub origin: SocketAddr,
    /// Path of the multivariant (or media) playlist on the origin.
    pub path: String,
    /// Groups; the first must be the control group on the origin.
    pub groups: Vec<HlsGroup>,
    /// Measured run length after the ramp.
    pub duration: Duration,
    /// Players start evenly spread over this time.
    pub ramp: Duration,
    /// Share HTTP/2 connections (like browsers) instead of HTTP/1.1.
    pub h2: bool,
    /// Players per shared HTTP/2 connection.
    pub per_h2_conn: usize,
    /// Number of 127.0.0.x source addresses (0 = as many as needed).
    pub sources: usize,
    /// Fetch `EXT-X-PRELOAD-HINT` parts as soon as they are hinted.
    pub preload_hint: bool,
    /// Longest wait for a response head (hls.js: 10 s).
    pub head_timeout: Duration,
    /// Longest one request may take in all (hls.js: 20 s for a part).
    pub request_timeout: Duration,
    /// Parse identical playlist bodies once for all players (`false`:
    /// every player parses every body, as real players do, which makes the
    /// loadgen the bottleneck at a few thousand players).
    pub parse_cache: bool,
    /// `--pin`: the relays (groups' pids) on one CPU, this process and the
    /// origin on the other(s).
    pub pin: bool,
    /// The origin's pid, to pin it too.
    pub origin_pid: Option<u32>,
}
