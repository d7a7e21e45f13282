//! `mlcache-loadgen attack KIND`: hostile clients against a real relay, with
//! the figures issue 7 asks for (relay RSS and CPU, origin requests, what a
//! real viewer saw, and a verdict against the expected bound).
//!
//! Data flow of one run: [`run`] starts the attack's own origin in this
//! process (or, for `tiny-pieces`, a raw-TCP origin written here), a small
//! live origin for the real viewer, and one `mlcache-relay` as a separate
//! child process (so its RSS and CPU, read from /proc, are its own). The
//! [`rig`] samples the relay's RSS, prints progress, and runs the real viewer
//! (one new HTTP/1.1 connection per live chunk) before, during and after the
//! attack. The kind's module then attacks the relay over loopback, bounded in
//! count and time, and returns its rows and verdicts; the rig adds RSS, CPU,
//! origin requests and the viewer's record and prints one table.
//!
//! With `--target ADDR --origin ADDR` the attack goes to a relay that is
//! already running (the soak script uses this): no relay or origin is
//! started, `--relay-pid` and `--admin` add RSS, CPU and the relay's
//! counters, and `--relay-arg` tells the tool the target's settings.
//!
//! Nothing here is a test: verdicts are printed, and the exit status says
//! whether they all held (unless `--no-fail`).

mod rapid_reset;
mod refused;
pub mod rig;
mod silent;
mod tiny_pieces;
mod window0;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use rig::{RelayArgs, Rig};

/// Margin added to a relay timeout before a connection or stream that is
/// still open counts as "not closed by the relay".
pub const CLOSE_MARGIN: Duration = Duration::from_secs(10);

/// The attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// HTTP/2 streams on big chunks with SETTINGS_INITIAL_WINDOW_SIZE=0, never read.
    Window0,
    /// TCP connections that send nothing, or only the HTTP/2 preface.
    Silent,
    /// Requests that admission refuses (distinct queries past --max-inflight-fetches).
    Refused,
    /// HTTP/2 streams opened and reset at once on distinct keys (CVE-2023-44487).
    RapidReset,
    /// A 64 MiB body in 1-byte chunked frames, fetched by viewers then hit.
    TinyPieces,
}

impl Kind {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Window0 => "window0",
            Kind::Silent => "silent",
            Kind::Refused => "refused",
            Kind::RapidReset => "rapid-reset",
            Kind::TinyPieces => "tiny-pieces",
        }
    }

    /// Relay flags the attack is defined with; `--relay-arg` replaces any of
    /// them by name.
    fn default_relay_args(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Window0 => &[
                ("--memory-limit", "256MiB"),
                ("--cache-size", "64MiB"),
                ("--send-timeout", "5s"),
            ],
            Kind::Silent => &[("--max-connections", "19000"), ("--idle-timeout", "10s")],
            // Per origin, so the real viewer's origin still has room; pass
            // --relay-arg=--max-inflight-fetches=1 for the global cap.
            Kind::Refused => &[
                ("--max-inflight-fetches-per-origin", "1"),
                ("--max-wait", "60s"),
                ("--upstream-hold", "60s"),
            ],
            Kind::RapidReset => &[],
            Kind::TinyPieces => &[
                ("--max-object-size", "128MiB"),
                ("--memory-limit", "512MiB"),
                ("--cache-size", "256MiB"),
            ],
        }
    }
}

/// Flags of `mlcache-loadgen attack`.
#[derive(Debug, Clone, clap::Args)]
pub struct AttackArgs {
    /// Which attack.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Connections: window0 250, silent 19000, rapid-reset 4, refused 20 (workers).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Streams per connection: window0 40, rapid-reset 2500.
    #[arg(long)]
    pub streams: Option<usize>,
    /// Requests the relay should refuse (refused): 1000.
    #[arg(long)]
    pub requests: Option<usize>,
    /// Distinct VOD chunks the window0 streams spread over.
    #[arg(long, default_value_t = 6)]
    pub chunks: u64,
    /// VOD chunk size of the attack origin: window0 32MiB, others 64KiB.
    #[arg(long = "chunk-size")]
    pub chunk_size: Option<ByteSize>,
    /// Share of silent connections that send the HTTP/2 connection preface.
    #[arg(long = "preface-share", default_value_t = 0.25)]
    pub preface_share: f64,
    /// silent: connects in flight at once. Above the relay's listen backlog
    /// (128 with tokio's default) the kernel drops handshakes: the client
    /// sees a connection the relay never accepted.
    #[arg(long = "connects-at-once", default_value_t = 64)]
    pub connects_at_once: usize,
    /// Body size for tiny-pieces.
    #[arg(long, default_value = "64MiB")]
    pub size: ByteSize,
    /// Viewers of the tiny-pieces body (each phase: misses, then hits).
    #[arg(long, default_value_t = 4)]
    pub viewers: usize,
    /// rapid-reset: wait this long between a batch's HEADERS and its
    /// RST_STREAMs (0: the same write), so the relay admits the streams first.
    #[arg(long = "reset-after", default_value = "0s", value_parser = humantime::parse_duration)]
    pub reset_after: Duration,
    /// How long the attack's connections are held open (window0, silent):
    /// default the relay's timeout plus a margin.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold: Option<Duration>,
    /// Hard bound on the whole run.
    #[arg(long = "time-limit", default_value = "170s", value_parser = humantime::parse_duration)]
    pub time_limit: Duration,
    /// The relay binary (default: mlcache-relay next to this executable).
    #[arg(long = "relay-bin")]
    pub relay_bin: Option<PathBuf>,
    /// A relay flag (repeatable), e.g. --relay-arg=--idle-timeout=10s; it
    /// replaces the attack's default for the same flag. With --target it
    /// tells the tool the target's settings.
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// Attack this running relay instead of starting one (window0, silent,
    /// rapid-reset).
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// With --target: the origin the relay allows (its /vod/N paths are used).
    #[arg(long)]
    pub origin: Option<SocketAddr>,
    /// With --target: the relay's pid, for RSS and CPU.
    #[arg(long = "relay-pid")]
    pub relay_pid: Option<u32>,
    /// With --target: the relay's admin address, for its counters.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit 0 even when a verdict fails (for scripts that loop attacks).
    #[arg(long = "no-fail")]
    pub no_fail: bool,
}

/// One verdict: what was expected and what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The bound, in words.
    pub expected: String,
    /// The figure.
    pub measured: String,
    /// Whether the figure is within the bound.
    pub ok: bool,
}

impl Verdict {
    /// A verdict.
    pub fn new(expected: impl Into<String>, measured: impl Into<String>, ok: bool) -> Verdict {
        Verdict {
            expected: expected.into(),
            measured: measured.into(),
            ok,
        }
    }
}

/// What a kind's attack returns to the rig.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows of the table (label, value), in order.
    pub rows: Vec<(String, String)>,
    /// Verdicts of the kind itself.
    pub verdicts: Vec<Verdict>,
    /// Failures of the real viewer within this long of the attack's start
    /// are expected (silent: the cap is full until the idle timeout).
    pub viewer_grace: Duration,
    /// Most origin requests the attack may cause, and the bound in words.
    pub origin_bound: Option<(u64, String)>,
    /// Highest relay RSS allowed during the attack, and the bound in words.
    pub rss_bound: Option<(u64, String)>,
}

/// The printed result of one attack.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// The attack's name.
    pub attack: String,
    /// Rows (label, value).
    pub rows: Vec<(String, String)>,
    /// Verdicts.
    pub verdicts: Vec<Verdict>,
}

impl AttackReport {
    /// Whether every verdict held.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.ok)
    }

    /// The table as text.
    pub fn table(&self) -> String {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = String::new();
        let _ = writeln!(s, "attack {}", self.attack);
        for (k, v) in &self.rows {
            let _ = writeln!(s, "  {k:<w$}  {v}");
        }
        let _ = writeln!(s, "verdict");
        for v in &self.verdicts {
            let _ = writeln!(
                s,
                "  {:<4}  {}: {}",
                if v.ok { "OK" } else { "FAIL" },
                v.expected,
                v.measured
            );
        }
        s
    }
}

/// What every kind gets: where to attack, when to stop, and a line to
/// update for the progress printer.
pub struct Ctx {
    /// The relay under attack.
    pub relay: SocketAddr,
    /// The origin named in the attack's requests.
    pub origin: SocketAddr,
    /// The relay's admin address, when known.
    pub admin: Option<SocketAddr>,
    /// Cancelled on Ctrl-C or when the time limit is near.
    pub stop: CancellationToken,
    /// The attack must be over by then (the rig still needs time after it).
    pub deadline: Instant,
    /// The relay's settings (its flags as given to it).
    pub relay_args: RelayArgs,
    /// The kind's progress line.
    pub progress: Arc<Mutex<String>>,
    /// The run's flags.
    pub args: AttackArgs,
}

impl Ctx {
    /// Sets the progress line.
    pub fn progress(&self, line: String) {
        *self.progress.lock() = line;
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A relay setting that is a duration, if given.
    pub fn relay_duration(&self, flag: &str) -> Option<Duration> {
        self.relay_args
            .value(flag)
            .and_then(|v| humantime::parse_duration(v).ok())
    }

    /// A relay setting that is a size, if given.
    pub fn relay_size(&self, flag: &str) -> Option<u64> {
        self.relay_args
            .value(flag)
            .and_then(|v| v.parse::<ByteSize>().ok())
            .map(|b| b.as_u64())
    }
}

/// Formats bytes as MiB or GiB.
pub fn mib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Formats a duration in seconds (two decimals under 10 s, else one).
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Formats a count map as `200 × 9800, 503 × 200`.
pub fn counts<K: std::fmt::Display>(m: &std::collections::BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} × {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs one attack and returns its report.
pub async fn run(args: AttackArgs, cancel: CancellationToken) -> anyhow::Result<AttackReport> {
    let started = Instant::now();
    let (soft, _) = crate::sys::raise_fd_limit();
    let kind = args.kind;
    anyhow::ensure!(
        args.target.is_none() || matches!(kind, Kind::Window0 | Kind::Silent | Kind::RapidReset),
        "--target works with window0, silent and rapid-reset only"
    );
    let stop = cancel.child_token();
    // Leave the rig time for the cool-down and the last readings.
    let deadline = started + args.time_limit.saturating_sub(Duration::from_secs(20));
    let mut rig = match args.target {
        Some(target) => {
            let origin = args
                .origin
                .context("--target needs --origin (an origin the relay allows)")?;
            Rig::external(target, origin, &args)
        }
        None => Rig::start(kind, &args).await?,
    };
    let ctx = Ctx {
        relay: rig.relay_addr(),
        origin: rig.attack_origin(),
        admin: rig.admin(),
        stop: stop.clone(),
        deadline,
        relay_args: rig.relay_args().clone(),
        progress: Arc::new(Mutex::new(String::new())),
        args: args.clone(),
    };
    rig.before_attack(&ctx).await?;
    eprintln!(
        "attack {}: relay {} (pid {}), origin {}, fd limit {soft}",
        kind.name(),
        ctx.relay,
        rig.pid().map_or("?".into(), |p| p.to_string()),
        ctx.origin
    );
    let printer = rig.progress_printer(ctx.progress.clone());
    let attack = async {
        match kind {
            Kind::Window0 => window0::attack(&ctx).await,
            Kind::Silent => silent::attack(&ctx).await,
            Kind::Refused => refused::attack(&ctx).await,
            Kind::RapidReset => rapid_reset::attack(&ctx).await,
            Kind::TinyPieces => tiny_pieces::attack(&ctx, rig.tiny_origin()).await,
        }
    };
    let hard = args.time_limit.saturating_sub(started.elapsed());
    let outcome = tokio::select! {
        r = tokio::time::timeout(hard, attack) => match r {
            Ok(o) => o,
            Err(_) => Err(anyhow::anyhow!("the attack overran --time-limit")),
        },
        _ = cancel.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    stop.cancel();
    printer.cancel();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            rig.stop().await;
            return Err(e);
        }
    };
    let report = rig.finish(kind, &ctx, outcome).await;
    Ok(report)
}
