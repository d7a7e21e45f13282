//! `mlcache-loadgen`: thin CLI over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mlcache_loadgen::attack::{self, AttackArgs};
use mlcache_loadgen::demo::{self, DemoOpts};
use mlcache_loadgen::flash::{self, FlashOpts};
use mlcache_loadgen::hls::{self, HlsGroup, HlsOpts};
use mlcache_loadgen::live::{self, Group, LiveOpts};
use mlcache_loadgen::vod::{self, VodOpts};
use mlcache_loadgen::{compare, plot};
use tokio_util::sync::CancellationToken;

/// A relay target: `ADDR` or `ADDR=VIEWERS`.
#[derive(Debug, Clone)]
struct RelayArg {
    addr: SocketAddr,
    viewers: Option<usize>,
}

fn relay_arg(s: &str) -> Result<RelayArg, String> {
    let (a, n) = match s.split_once('=') {
        Some((a, n)) => (
            a,
            Some(
                n.parse::<usize>()
                    .map_err(|e| format!("viewer count {n:?}: {e}"))?,
            ),
        ),
        None => (s, None),
    };
    Ok(RelayArg {
        addr: a.parse().map_err(|e| format!("relay address {a:?}: {e}"))?,
        viewers: n,
    })
}

/// An LL-HLS relay target: `ADDR` (players use the relay's path form,
/// `http://ADDR/mlcache/ORIGIN/...`) or a URL prefix `http://ADDR/...` the
/// origin's paths are appended to; either with `=PLAYERS`.
#[derive(Debug, Clone)]
struct HlsRelayArg {
    target: SocketAddr,
    /// `None`: the path form, built once the origin is known.
    prefix: Option<String>,
    players: Option<usize>,
}

fn hls_relay_arg(s: &str) -> Result<HlsRelayArg, String> {
    let (t, players) = match s.rsplit_once('=') {
        Some((t, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (t, Some(n.parse::<usize>().map_err(|e| e.to_string())?))
        }
        _ => (s, None),
    };
    if let Some(rest) = t.strip_prefix("http://") {
        let auth = rest.split('/').next().unwrap_or("");
        Ok(HlsRelayArg {
            target: auth
                .parse()
                .map_err(|e| format!("relay address {auth:?}: {e}"))?,
            prefix: Some(t.trim_end_matches('/').to_string()),
            players,
        })
    } else {
        Ok(HlsRelayArg {
            target: t.parse().map_err(|e| format!("relay address {t:?}: {e}"))?,
            prefix: None,
            players,
        })
    }
}

#[derive(Parser)]
#[command(
    name = "mlcache-loadgen",
    version,
    about = "Simulated viewers for mlcache: added glass-to-glass delay, VOD hit ratio, and the live demo"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole live path (origin → relay A → relay B → viewers) and print the table.
    Demo {
        #[command(flatten)]
        opts: DemoOpts,
        /// Write the full results (histograms included) here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the HTML report with SVG charts into this directory
        /// (default: mlcache-demo-report in the temp directory).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Live viewers against running relays, with a control group on the origin.
    Live {
        /// The origin (head end) address.
        #[arg(long)]
        origin: SocketAddr,
        /// A relay, in hop order from the origin: ADDR or ADDR=VIEWERS (repeatable).
        #[arg(long, value_parser = relay_arg, required = true)]
        relay: Vec<RelayArg>,
        /// Viewers, split over relays given without =VIEWERS.
        #[arg(long, default_value_t = 1000)]
        viewers: usize,
        /// Control viewers on the origin.
        #[arg(long, default_value_t = 20)]
        control: usize,
        /// Pids of the relays, in the same order, to report their CPU and RSS.
        #[arg(long = "relay-pid")]
        relay_pid: Vec<u32>,
        /// Stream number.
        #[arg(long, default_value_t = 0)]
        stream: usize,
        /// Measured duration (after the ramp).
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Ramp-up time.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        ramp: Duration,
        /// Viewers share HTTP/2 connections.
        #[arg(long)]
        h2: bool,
        /// Viewers per HTTP/2 connection.
        #[arg(long = "per-conn", default_value_t = 100)]
        per_conn: usize,
        /// Source addresses 127.0.0.1..N (0 = as many as needed).
        #[arg(long, default_value_t = 0)]
        sources: usize,
        /// Skip the loopback throughput probe.
        #[arg(long = "no-probe")]
        no_probe: bool,
        /// Relays (by --relay-pid) on one CPU, this loadgen and the origin
        /// (--origin-pid) on the other(s).
        #[arg(long)]
        pin: bool,
        /// The origin's pid, to pin it with --pin.
        #[arg(long = "origin-pid")]
        origin_pid: Option<u32>,
        /// Write the full results here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an HTML report with SVG charts (DIR/index.html, DIR/*.svg).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// LL-HLS players (blocking playlist reloads, preload-hinted parts, as
    /// hls.js in low-latency mode) against running relays, with a control
    /// group on the origin.
    Hls {
        /// The origin (head end) address.
        #[arg(long)]
        origin: SocketAddr,
        /// A relay, in hop order from the origin: ADDR (path form) or a URL
        /// prefix http://ADDR/..., either with =PLAYERS (repeatable).
        #[arg(long, value_parser = hls_relay_arg, required = true)]
        relay: Vec<HlsRelayArg>,
        /// Players, split over relays given without =PLAYERS.
        #[arg(long, default_value_t = 1000)]
        players: usize,
        /// Control players on the origin.
        #[arg(long, default_value_t = 20)]
        control: usize,
        /// Path of the multivariant (or media) playlist on the origin.
        #[arg(long, default_value = "/ll/master.m3u8")]
        path: String,
        /// Pids of the relays, in the same order, to report their CPU and RSS.
        #[arg(long = "relay-pid")]
        relay_pid: Vec<u32>,
        /// Measured duration (after the ramp and the catch-up to the edge).
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Ramp-up time.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        ramp: Duration,
        /// Players share HTTP/2 connections (as browsers do) instead of two
        /// HTTP/1.1 connections each.
        #[arg(long)]
        h2: bool,
        /// Players per HTTP/2 connection.
        #[arg(long = "per-conn", default_value_t = 100)]
        per_conn: usize,
        /// Source addresses 127.0.0.1..N (0 = as many as needed).
        #[arg(long, default_value_t = 0)]
        sources: usize,
        /// Do not fetch EXT-X-PRELOAD-HINT parts ahead (hls.js 1.7 does not).
        #[arg(long = "no-preload-hint")]
        no_preload_hint: bool,
        /// Every player parses every playlist body itself, as real players
        /// do (by default identical bodies are parsed once for all players,
        /// so the loadgen's CPU goes to measuring the relay).
        #[arg(long = "no-parse-cache")]
        no_parse_cache: bool,
        /// Relays (by --relay-pid) on one CPU, this loadgen and the origin
        /// (--origin-pid) on the other(s).
        #[arg(long)]
        pin: bool,
        /// The origin's pid, to pin it with --pin.
        #[arg(long = "origin-pid")]
        origin_pid: Option<u32>,
        /// Exit 1 unless there were no errors or stalls and one origin
        /// request per part and per playlist version.
        #[arg(long)]
        check: bool,
        /// Write the full results here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// VOD viewers with Zipf popularity against a relay.
    Vod {
        #[command(flatten)]
        opts: VodOpts,
        /// Write the results here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A flash crowd: N viewers connect within a short time at the live
    /// edge, each reads the next chunk(s); accept rate, time to first chunk,
    /// errors by kind. Split over worker processes when one process's
    /// descriptors are too few.
    Flash {
        #[command(flatten)]
        opts: FlashOpts,
        /// Write the full results (histograms included) here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Exit 1 unless every viewer got every chunk without an error.
        #[arg(long)]
        check: bool,
    },
    /// One process's share of a flash crowd (started by `flash`).
    #[command(name = "flash-worker", hide = true)]
    FlashWorker {
        /// The share, as JSON.
        #[arg(long)]
        spec: String,
    },
    /// Attack a relay (started here as an mlcache-relay process, or --target)
    /// and print its RSS, CPU, origin requests and a real viewer's record.
    Attack(Box<AttackArgs>),
    /// Markdown table and SVG chart (added delay against viewers, one line
    /// per cache, p50 and p99) from `live --json` runs of several caches;
    /// the table goes to stdout.
    Plot {
        /// A run: CACHE=FILE.json (repeatable); runs of one cache at several
        /// viewer counts make its line.
        #[arg(value_parser = plot_run_arg, required = true)]
        runs: Vec<(String, PathBuf)>,
        /// Write the chart here.
        #[arg(long)]
        svg: PathBuf,
        /// The delay the chart shows.
        #[arg(long, value_enum, default_value = "last-byte")]
        metric: compare::Metric,
        /// The chart's caption.
        #[arg(long, default_value = "Added delay against viewers")]
        title: String,
    },
    /// Run a relay (the demo starts its relays this way).
    #[command(hide = true)]
    Relay(Box<mlcache::Cli>),
    /// Run an origin (the demo starts its origin this way).
    #[command(hide = true)]
    Origin(Box<mlcache::origin::OriginArgs>),
}

/// `CACHE=FILE.json` for `plot`.
fn plot_run_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((c, f)) if !c.is_empty() && !f.is_empty() => Ok((c.to_string(), f.into())),
        _ => Err(format!("{s:?}: expected CACHE=FILE.json")),
    }
}

fn write_json<T: serde::Serialize>(path: &Option<PathBuf>, v: &T) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(v)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("results written to {}", p.display());
    }
    Ok(())
}

fn ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping");
            t.cancel();
        }
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Relay(cli) => {
            mlcache::init_tracing();
            mlcache::run(mlcache::Config::load(*cli)?).await?;
        }
        Cmd::Origin(args) => {
            mlcache::init_tracing();
            mlcache::origin::run(args.into_config().map_err(anyhow::Error::msg)?).await?;
        }
        Cmd::Demo {
            mut opts,
            json,
            report: report_dir,
        } => {
            opts.control = opts.control.max(1);
            let report = demo::run(opts, ctrl_c()).await?;
            print!("{}", report.table());
            write_json(&json, &report)?;
            let report_dir =
                report_dir.unwrap_or_else(|| std::env::temp_dir().join("mlcache-demo-report"));
            let page = live::html::write(&report, &report_dir)?;
            let ok_rpc = (report.origin_requests_per_chunk - 1.0).abs() < 1e-9;
            println!(
                "\nverdict: origin requests per chunk {:.2} (expected 1.00) {}; errors {} (expected 0) {}",
                report.origin_requests_per_chunk,
                if ok_rpc { "OK" } else { "FAIL" },
                report.total_errors,
                if report.total_errors == 0 { "OK" } else { "FAIL" }
            );
            println!("report: {}", page.display());
            anyhow::ensure!(
                ok_rpc && report.total_errors == 0,
                "the demo's expectations were not met"
            );
        }
        Cmd::Live {
            origin,
            relay,
            viewers,
            control,
            relay_pid,
            stream,
            duration,
            ramp,
            h2,
            per_conn,
            sources,
            no_probe,
            pin,
            origin_pid,
            json,
            report: report_dir,
        } => {
            let unsplit = relay.iter().filter(|r| r.viewers.is_none()).count().max(1);
            let mut groups = vec![Group {
                name: "control (origin)".into(),
                target: origin,
                via_relay: false,
                viewers: control.max(1),
                pid: None,
            }];
            for (i, r) in relay.iter().enumerate() {
                groups.push(Group {
                    name: format!(
                        "relay {} ({} hop{})",
                        r.addr,
                        i + 1,
                        if i == 0 { "" } else { "s" }
                    ),
                    target: r.addr,
                    via_relay: true,
                    viewers: r.viewers.unwrap_or(viewers / unsplit),
                    pid: relay_pid.get(i).copied(),
                });
            }
            let opts = LiveOpts {
                origin,
                stream,
                groups,
                duration,
                ramp,
                h2,
                per_h2_conn: per_conn,
                sources,
                request_timeout: Duration::from_secs(30),
                loopback_probe: if no_probe { 0 } else { 256 << 20 },
                pin,
                origin_pid,
            };
            let report = live::run(opts, ctrl_c()).await?;
            print!("{}", report.table());
            write_json(&json, &report)?;
            if let Some(dir) = report_dir {
                let page = live::html::write(&report, &dir)?;
                eprintln!("report written to {}", page.display());
            }
        }
        Cmd::Hls {
            origin,
            relay,
            players,
            control,
            path,
            relay_pid,
            duration,
            ramp,
            h2,
            per_conn,
            sources,
            no_preload_hint,
            no_parse_cache,
            pin,
            origin_pid,
            check,
            json,
        } => {
            let unsplit = relay.iter().filter(|r| r.players.is_none()).count().max(1);
            let mut groups = vec![HlsGroup {
                name: "control (origin)".into(),
                target: origin,
                prefix: format!("http://{origin}"),
                via_relay: false,
                players: control.max(1),
                pid: None,
            }];
            for (i, r) in relay.iter().enumerate() {
                groups.push(HlsGroup {
                    name: format!(
                        "relay {} ({} hop{})",
                        r.target,
                        i + 1,
                        if i == 0 { "" } else { "s" }
                    ),
                    target: r.target,
                    prefix: r
                        .prefix
                        .clone()
                        .unwrap_or_else(|| format!("http://{}/mlcache/{origin}", r.target)),
                    via_relay: true,
                    players: r.players.unwrap_or(players / unsplit),
                    pid: relay_pid.get(i).copied(),
                });
            }
            let opts = HlsOpts {
                origin,
                path,
                groups,
                duration,
                ramp,
                h2,
                per_h2_conn: per_conn,
                sources,
                preload_hint: !no_preload_hint,
                head_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(20),
                parse_cache: !no_parse_cache,
                pin,
                origin_pid,
            };
            let report = hls::run(opts, ctrl_c()).await?;
            print!("{}", report.table());
            write_json(&json, &report)?;
            if check && !report.passed() {
                eprintln!("hls: not every expectation was met");
                std::process::exit(1);
            }
        }
        Cmd::Flash { opts, json, check } => {
            let report = flash::run(opts, ctrl_c()).await?;
            print!("{}", report.table());
            write_json(&json, &report)?;
            if check && !report.passed() {
                std::process::exit(1);
            }
        }
        Cmd::FlashWorker { spec } => {
            let spec: flash::WorkerSpec = serde_json::from_str(&spec).context("--spec")?;
            let r = flash::run_worker(spec).await?;
            println!("result {}", serde_json::to_string(&r)?);
        }
        Cmd::Attack(args) => {
            let (json, no_fail) = (args.json.clone(), args.no_fail);
            let report = attack::run(*args, ctrl_c()).await?;
            print!("{}", report.table());
            write_json(&json, &report)?;
            if !no_fail && !report.passed() {
                // A failed verdict is a result, not an error: no backtrace.
                eprintln!("attack: not every expectation was met");
                std::process::exit(1);
            }
        }
        Cmd::Plot {
            runs,
            svg,
            metric,
            title,
        } => {
            let runs = runs
                .iter()
                .map(|(c, f)| compare::load(c, f))
                .collect::<Result<Vec<_>, _>>()?;
            let doc = plot::svg(&compare::chart(&runs, metric, &title))?;
            std::fs::write(&svg, doc).with_context(|| format!("writing {}", svg.display()))?;
            print!("{}", compare::table(&runs));
            eprintln!("chart written to {}", svg.display());
        }
        Cmd::Vod { opts, json } => {
            let report = vod::run(opts).await?;
            print!("{}", report.table());
            write_json(&json, &report)?;
        }
    }
    Ok(())
}
