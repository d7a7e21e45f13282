//! Live load: thousands of viewers follow one stream from the live edge, as
//! players do, while a small control group reads the same stream straight
//! from the origin. Added delay = relay group − control group.
//!
//! Each viewer asks for chunk N. The moment N is complete it asks for N+1.
//! For every chunk published inside the measurement window it records
//! publish → first byte (TTFB) and publish → last byte (TTLB), with the publish
//! time taken from the chunk's `mlcache-publish-ns` header. The window
//! starts once the ramp is over and ends with the run, so ramp-up does not
//! colour the figures.
//!
//! Files: `viewer.rs` one viewer's loop and what it records, `run.rs` the
//! orchestration (edge polling, ramp, progress, origin counts), `report.rs`
//! the results and their table, `html.rs` the `--report` pages drawn from
//! them; this file holds the options.

pub mod html;
mod report;
mod run;
pub(crate) mod viewer;

use std::net::SocketAddr;
use std::time::Duration;

pub use report::{GroupReport, LiveReport, ProcSample, SecondStats};
pub use run::run;

/// One group of viewers on one target.
#[derive(Debug, Clone)]
pub struct Group {
    /// Label in the report.
    pub name: String,
    /// Where the viewers connect.
    pub target: SocketAddr,
    /// `true`: the target is a relay (absolute-form requests); `false`: the
    /// origin itself (the control group).
    pub via_relay: bool,
    /// How many viewers.
    pub viewers: usize,
    /// A process to watch for CPU and RSS (the relay's pid), if known.
    pub pid: Option<u32>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LiveOpts {
    /// The origin (head end).
    pub origin: SocketAddr,
    /// Stream number.
    pub stream: usize,
    /// Groups; the first must be the control group on the origin.
    pub groups: Vec<Group>,
    /// Measured run length after the ramp.
    pub duration: Duration,
    /// Viewers start evenly spread over this time.
    pub ramp: Duration,
    /// Share HTTP/2 connections instead of one HTTP/1.1 connection each.
    pub h2: bool,
    /// Viewers per shared HTTP/2 connection.
    pub per_h2_conn: usize,
    /// Number of 127.0.0.x source addresses (0 = as many as needed).
    pub sources: usize,
    /// Longest one request may take.
    pub request_timeout: Duration,
    /// Bytes to push through loopback to measure its throughput (0 = skip).
    pub loopback_probe: usize,
    /// `--pin`: the relays (groups' pids) on one CPU, this process and the
    /// origin on the other(s).
    pub pin: bool,
    /// The origin's pid, to pin it too.
    pub origin_pid: Option<u32>,
}
