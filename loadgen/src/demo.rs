//! The one-command live demo: origin → relay A → relay B → viewers, with a
//! control group on the origin. Every process it starts is a child of this
//! one (the same executable, in its `origin` and `relay` roles). Each child is
//! killed when its handle drops, and by the kernel if this process dies first
//! (`PR_SET_PDEATHSIG`), so nothing outlives the demo: not on Ctrl-C, not on
//! failure.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::child::{spawn_listening, Listening};
use crate::live::{self, Group, LiveOpts, LiveReport};

/// Starts `current_exe() ARGS` and reads `listening ADDR` (and `admin ADDR`)
/// from its stdout.
pub async fn spawn(name: &str, args: &[String]) -> anyhow::Result<Listening> {
    spawn_on(name, args, None).await
}

/// [`spawn`], started on `cpus` when given (`--pin`).
pub async fn spawn_on(
    name: &str,
    args: &[String],
    cpus: Option<&[usize]>,
) -> anyhow::Result<Listening> {
    let exe = std::env::current_exe().context("locating the loadgen executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stderr(std::process::Stdio::inherit()).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    if let Some(c) = cpus {
        crate::pin::Plan::pre_exec(&mut cmd, c);
    }
    let wants_admin = args.iter().any(|a| a == "--admin");
    spawn_listening(cmd, name, wants_admin, Duration::from_secs(20)).await
}

/// Demo settings: the flags of `mlcache-loadgen demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOpts {
    /// Relay levels: 1 (origin → A → viewers) or 2 (origin → A → B → viewers).
    #[arg(long, default_value_t = 2)]
    pub hops: usize,
    /// Viewers on the last relay.
    #[arg(long, default_value_t = 2000)]
    pub viewers: usize,
    /// Viewers on relay A when there are two levels, to split the added
    /// delay per hop (0 = none).
    #[arg(long = "hop1-viewers", default_value_t = 100)]
    pub hop1_viewers: usize,
    /// Control viewers reading straight from the origin.
    #[arg(long, default_value_t = 20)]
    pub control: usize,
    /// Measured duration (after the ramp).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Ramp-up time.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// progressive or whole chunks.
    #[arg(long, default_value = "progressive", value_parser = ["progressive", "whole"])]
    pub publish: String,
    /// Chunk cadence.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub cadence: Duration,
    /// Chunk size in bytes.
    #[arg(long = "chunk-size", default_value_t = 65536)]
    pub chunk_size: usize,
    /// Viewers share HTTP/2 connections.
    #[arg(long)]
    pub h2: bool,
    /// Source addresses 127.0.0.1..N (0 = as many as needed).
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Relays on one CPU, this loadgen and the origin on the other(s).
    #[arg(long)]
    pub pin: bool,
}

/// Starts origin, relay A and relay B, runs the live load, stops them all.
pub async fn run(opts: DemoOpts, cancel: CancellationToken) -> anyhow::Result<LiveReport> {
    // Before any child starts, so the relays inherit the raised limit too.
    crate::sys::raise_fd_limit();
    let plan = if opts.pin {
        let p = crate::pin::Plan::new()?;
        // The origin started next inherits this.
        p.pin_self()?;
        Some(p)
    } else {
        None
    };
    let relay_cpus = plan.as_ref().map(|p| p.relay.clone());
    let s = |v: &str| v.to_string();
    let origin = spawn(
        "origin",
        &crate::child::origin_args(opts.cadence, opts.chunk_size, &opts.publish),
    )
    .await?;
    let origin_url = format!("http://{}", origin.addr);
    let relay_args = |id: &str, upstream: Option<SocketAddr>| {
        let mut a = vec![
            s("relay"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--admin"),
            s("127.0.0.1:0"),
            s("--allow-origin"),
            origin_url.clone(),
            s("--id"),
            s(id),
        ];
        if let Some(u) = upstream {
            a.extend([s("--upstream"), format!("http://{u}")]);
        }
        a
    };
    anyhow::ensure!((1..=2).contains(&opts.hops), "--hops must be 1 or 2");
    let a = spawn_on(
        "relay A",
        &relay_args("relay-a", None),
        relay_cpus.as_deref(),
    )
    .await?;
    let b = match opts.hops {
        2 => Some(
            spawn_on(
                "relay B",
                &relay_args("relay-b", Some(a.addr)),
                relay_cpus.as_deref(),
            )
            .await?,
        ),
        _ => None,
    };
    let admin = |p: &Listening| p.admin.map(|x| x.to_string()).unwrap_or_default();
    match &b {
        Some(b) => eprintln!(
            "demo: origin {} → relay A {} (admin {}) → relay B {} (admin {}); {} viewers on B, {} on A, {} control on the origin",
            origin.addr,
            a.addr,
            admin(&a),
            b.addr,
            admin(b),
            opts.viewers,
            opts.hop1_viewers,
            opts.control
        ),
        None => eprintln!(
            "demo: origin {} → relay A {} (admin {}); {} viewers on A, {} control on the origin",
            origin.addr,
            a.addr,
            admin(&a),
            opts.viewers,
            opts.control
        ),
    }
    let mut groups = vec![Group {
        name: "control (origin)".into(),
        target: origin.addr,
        via_relay: false,
        viewers: opts.control,
        pid: None,
    }];
    let hop1 = if b.is_some() {
        opts.hop1_viewers
    } else {
        opts.viewers
    };
    if hop1 > 0 {
        groups.push(Group {
            name: "relay A (1 hop)".into(),
            target: a.addr,
            via_relay: true,
            viewers: hop1,
            pid: a.pid(),
        });
    }
    if let Some(b) = &b {
        groups.push(Group {
            name: "relay B (2 hops)".into(),
            target: b.addr,
            via_relay: true,
            viewers: opts.viewers,
            pid: b.pid(),
        });
    }
    let report = live::run(
        LiveOpts {
            origin: origin.addr,
            stream: 0,
            groups,
            duration: opts.duration,
            ramp: opts.ramp,
            h2: opts.h2,
            per_h2_conn: 100,
            sources: opts.sources,
            request_timeout: Duration::from_secs(30),
            loopback_probe: 256 << 20,
            pin: opts.pin,
            origin_pid: origin.pid(),
        },
        cancel,
    )
    .await;
    drop(b);
    drop(a);
    drop(origin);
    report
}
