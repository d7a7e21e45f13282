//! The one-command live demo: origin → relay A → relay B → viewers, with a
//! control group on the origin. Every process it starts is a child of this
//! one (the same executable, in its `origin` and `relay` roles). Each child is
//! killed when its handle drops, and by the kernel if this process dies first
//! (`PR_SET_PDEATHSIG`), so nothing outlives the demo: not on Ctrl-C, not on
//! failure.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use crate::live::{self, Group, LiveOpts, LiveReport};

/// A child process and the addresses it printed.
pub struct Proc {
    /// Label for messages.
    pub name: String,
    /// The process (killed on drop).
    pub child: Child,
    /// Its main listening address.
    pub addr: SocketAddr,
    /// Its admin address, for relays.
    pub admin: Option<SocketAddr>,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts `current_exe() ARGS` and reads `listening ADDR` (and `admin ADDR`)
/// from its stdout.
pub async fn spawn(name: &str, args: &[String]) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("locating the loadgen executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .stdin(std::process::Stdio::null())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let wants_admin = args.iter().any(|a| a == "--admin");
    let (addr, admin) =
        tokio::time::timeout(Duration::from_secs(20), read_addrs(stdout, wants_admin))
            .await
            .with_context(|| format!("{name} did not report its address in 20 s"))??;
    let addr = addr.with_context(|| format!("{name} exited before listening"))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        addr,
        admin,
    })
}

/// Reads a relay's or origin's stdout until it has printed `listening ADDR`
/// (and `admin ADDR` if `wants_admin`), then keeps draining it in a task so
/// the child never blocks on a full pipe. An address is `None` if the output
/// ended first (the child exited). The caller bounds the wait.
pub async fn read_addrs(
    stdout: ChildStdout,
    wants_admin: bool,
) -> std::io::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut admin) = (None, None);
    while let Some(line) = lines.next_line().await? {
        let mut w = line.split_whitespace();
        match (
            w.next(),
            w.next().and_then(|a| a.parse::<SocketAddr>().ok()),
        ) {
            (Some("listening"), Some(a)) => addr = Some(a),
            (Some("admin"), Some(a)) => admin = Some(a),
            _ => {}
        }
        if addr.is_some() && (admin.is_some() || !wants_admin) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            break;
        }
    }
    Ok((addr, admin))
}

/// Demo settings (all with embedded defaults).
#[derive(Debug, Clone)]
pub struct DemoOpts {
    /// Relay levels: 1 (origin → A → viewers) or 2 (origin → A → B → viewers).
    pub hops: usize,
    /// Viewers on the last relay.
    pub viewers: usize,
    /// Viewers on relay A when there are two levels, to split the added
    /// delay per hop.
    pub hop1_viewers: usize,
    /// Control viewers on the origin.
    pub control: usize,
    /// Measured duration.
    pub duration: Duration,
    /// Ramp-up.
    pub ramp: Duration,
    /// Chunk cadence.
    pub cadence: Duration,
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// `progressive` or `whole`.
    pub publish: String,
    /// Viewers share HTTP/2 connections.
    pub h2: bool,
    /// Source addresses 127.0.0.1..N (0 = as many as needed).
    pub sources: usize,
}

impl Default for DemoOpts {
    fn default() -> Self {
        DemoOpts {
            hops: 2,
            viewers: 2000,
            hop1_viewers: 100,
            control: 20,
            duration: Duration::from_secs(20),
            ramp: Duration::from_secs(3),
            cadence: Duration::from_millis(500),
            chunk_size: 64 * 1024,
            publish: "progressive".into(),
            h2: false,
            sources: 0,
        }
    }
}

/// Starts origin, relay A and relay B, runs the live load, stops them all.
pub async fn run(opts: DemoOpts, cancel: CancellationToken) -> anyhow::Result<LiveReport> {
    // Before any child starts, so the relays inherit the raised limit too.
    crate::sys::raise_fd_limit();
    let s = |v: &str| v.to_string();
    let origin = spawn(
        "origin",
        &[
            s("origin"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--cadence"),
            format!("{}ms", opts.cadence.as_millis()),
            s("--chunk-size"),
            opts.chunk_size.to_string(),
            s("--publish"),
            opts.publish.clone(),
        ],
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
    let a = spawn("relay A", &relay_args("relay-a", None)).await?;
    let b = match opts.hops {
        2 => Some(spawn("relay B", &relay_args("relay-b", Some(a.addr))).await?),
        _ => None,
    };
    let admin = |p: &Proc| p.admin.map(|x| x.to_string()).unwrap_or_default();
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
        },
        cancel,
    )
    .await;
    drop(b);
    drop(a);
    drop(origin);
    report
}
