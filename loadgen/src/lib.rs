//! mlcache-loadgen: simulated live and VOD viewers, and the one-command demo.
//!
//! `hls` drives LL-HLS players (blocking playlist reloads, preload-hinted
//! parts) through relays against a control group on the origin.
//! `live` drives viewers at the live edge and reports the added glass-to-glass
//! delay against a control group on the origin. `vod` drives a Zipf workload.
//! `demo` starts origin → relay A → relay B as child processes and runs
//! `live` through them; `child` starts such processes and reads the address
//! they print. `net` opens viewer connections, `sys` reads CPU, RSS
//! and descriptor limits, and `report` holds histograms and tables.
//! `flash` runs a flash crowd (thousands of viewers connecting within a
//! second), split over worker processes when one cannot hold them, and
//! `pin` keeps relays and loadgen on separate CPUs (`--pin`).
//! `attack` runs hostile clients against a relay process and prints the
//! figures of issue 7 (RSS, CPU, origin requests, a real viewer's record).
//! `plot` draws SVG line charts; `compare` turns `live --json` runs of
//! several caches into a markdown table and such a chart (`plot` subcommand).

pub mod attack;
pub mod child;
pub mod compare;
pub mod demo;
pub mod flash;
pub mod hls;
pub mod live;
pub mod net;
pub mod pin;
pub mod plot;
pub mod report;
pub mod sys;
pub mod vod;
