//! Flash crowd: N viewers connect within a short time at the live edge and
//! each reads the next chunk(s); how fast were they accepted, when did the
//! last one have its first chunk, what went wrong and how.
//!
//! The parent ([`run`]) starts an origin and a relay tree when none is
//! given (origin → [relay A →] edge relays), pins them with `--pin`, works
//! out how many viewers one process can drive (its descriptor limit, or
//! `--max-viewers-per-process`), and either runs the crowd itself or splits
//! it over worker processes: the same executable in its hidden
//! `flash-worker` role, each given a [`WorkerSpec`] (which viewers, when the
//! crowd starts) and printing one [`WorkerResult`] line with its counters
//! and its histograms serialised (hdrhistogram V2, base64). The parent adds
//! the histograms bucket by bucket, so a split run's percentiles are exactly
//! those of one process that had seen everything.
//!
//! Files: `worker.rs` the viewers of one process and their record,
//! `run.rs` the processes, the split and the merge, `report.rs` the results
//! and their table; this file holds the options.

mod report;
mod run;
pub mod worker;

use std::net::SocketAddr;
use std::time::Duration;

pub use report::{FlashReport, RelayUse};
pub use run::run;
pub use worker::{run_worker, WorkerResult, WorkerSpec};

/// The flags of `mlcache-loadgen flash`.
#[derive(Debug, Clone, clap::Args)]
pub struct FlashOpts {
    /// Viewers in the crowd.
    #[arg(long, default_value_t = 10_000)]
    pub viewers: usize,
    /// They all start connecting within this time, evenly spread.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub within: Duration,
    /// Chunks each viewer reads: the next one after the live edge it sees
    /// when connected, then the ones after it.
    #[arg(long, default_value_t = 1)]
    pub chunks: u64,
    /// A running origin (head end); when not given one is started here with
    /// --cadence, --chunk-size and --publish.
    #[arg(long)]
    pub origin: Option<SocketAddr>,
    /// Its pid, only to pin it with --pin.
    #[arg(long = "origin-pid")]
    pub origin_pid: Option<u32>,
    /// A running relay viewers connect to (repeatable: viewers are spread
    /// round-robin); when not given the relays are started here.
    #[arg(long)]
    pub relay: Vec<SocketAddr>,
    /// Pids of the --relay relays, in the same order (CPU per GB, RSS, --pin).
    #[arg(long = "relay-pid")]
    pub relay_pid: Vec<u32>,
    /// Relay levels started here: 1 (origin → edge relays) or 2 (origin →
    /// relay A → edge relays).
    #[arg(long, default_value_t = 1)]
    pub hops: usize,
    /// Edge relays started here (the level viewers connect to).
    #[arg(long = "edge-relays", default_value_t = 1)]
    pub edge_relays: usize,
    /// A flag for every relay started here, e.g.
    /// `--relay-flag=--max-connections=60000` (repeatable).
    #[arg(long = "relay-flag", allow_hyphen_values = true)]
    pub relay_flag: Vec<String>,
    /// Chunk cadence of an origin started here.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub cadence: Duration,
    /// Chunk size of an origin started here.
    #[arg(long = "chunk-size", default_value_t = 65536)]
    pub chunk_size: usize,
    /// progressive or whole chunks, for an origin started here.
    #[arg(long, default_value = "whole", value_parser = ["progressive", "whole"])]
    pub publish: String,
    /// Stream number.
    #[arg(long, default_value_t = 0)]
    pub stream: usize,
    /// Viewers share HTTP/2 connections (many streams per connection).
    #[arg(long)]
    pub h2: bool,
    /// Viewers per HTTP/2 connection.
    #[arg(long = "per-conn", default_value_t = 100)]
    pub per_conn: usize,
    /// Source addresses 127.0.0.1..N (0 = as many as the connections need).
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Most viewers one loadgen process drives; a larger crowd is split over
    /// worker processes (0 = as many as its descriptor limit allows).
    #[arg(long = "max-viewers-per-process", default_value_t = 0)]
    pub max_viewers_per_process: usize,
    /// Longest one viewer may take, from its connect to its last chunk.
    #[arg(long = "viewer-timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    pub viewer_timeout: Duration,
    /// Relays on one CPU, loadgen, workers and origin on the other(s).
    #[arg(long)]
    pub pin: bool,
}
