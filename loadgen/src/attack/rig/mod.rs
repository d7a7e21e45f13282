//! The rig an attack runs on: the relay process (flags, log, RSS and CPU from
//! /proc), the origins in this process, the relay's own counters (admin
//! `/metrics`), the progress printer, and the real viewer whose record says
//! whether the relay still served people during the attack.
//!
//! Readings are taken in this order: everything started and the viewer
//! served twice; "before" (RSS, CPU, origin and relay counters); the attack;
//! a cool-down until the relay's open connections are back to their level
//! before the attack (bounded); "after".
//!
//! Files: `relay.rs` the relay process and its flags, `metrics.rs` RSS
//! sampling and the admin `/metrics` page, `viewer.rs` the real viewer,
//! `report.rs` the cool-down, "after" readings and the report; this file
//! holds the rig itself, the "before" readings and the progress printer.

mod metrics;
mod relay;
mod report;
mod viewer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mlcache::origin::{self, OriginConfig, OriginHandle, Publish};
use parking_lot::Mutex;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

pub use metrics::{scrape, sum};
pub use relay::RelayArgs;

use super::tiny_pieces::RawOrigin;
use super::{mib, secs, AttackArgs, Ctx, Kind};
use crate::sys::{proc_cpu, proc_rss};
use metrics::Sampler;
use viewer::{Viewer, VIEWER_CADENCE, VIEWER_CHUNK};

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Everything the rig holds for one run.
pub struct Rig {
    relay: SocketAddr,
    admin: Option<SocketAddr>,
    pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
    relay_args: RelayArgs,
    attack_origin_addr: SocketAddr,
    attack_origin: Option<Arc<OriginHandle>>,
    tiny: Option<Arc<RawOrigin>>,
    viewer_origin: Option<Arc<OriginHandle>>,
    viewer: Option<Viewer>,
    sampler: Option<Sampler>,
    before: Before,
}

/// Readings taken just before the attack, for the deltas after it.
#[derive(Default)]
struct Before {
    /// When the attack started.
    start: Option<Instant>,
    /// Relay RSS.
    rss: Option<u64>,
    /// Relay CPU time.
    cpu: Option<Duration>,
    /// This process's CPU time.
    own_cpu: Duration,
    /// Requests the attack origin had served.
    origin_requests: u64,
    /// The relay's `/metrics` page.
    metrics: Option<String>,
    /// The relay's open connections.
    conns: f64,
}

impl Rig {
    /// A rig around the relay at `relay` with nothing of its own started.
    fn around(
        relay: SocketAddr,
        admin: Option<SocketAddr>,
        pid: Option<u32>,
        relay_args: RelayArgs,
        attack_origin_addr: SocketAddr,
    ) -> Rig {
        Rig {
            relay,
            admin,
            pid,
            child: None,
            log: None,
            relay_args,
            attack_origin_addr,
            attack_origin: None,
            tiny: None,
            viewer_origin: None,
            viewer: None,
            sampler: pid.map(Sampler::start),
            before: Before::default(),
        }
    }

    /// Starts the origins and the relay for `kind`.
    pub async fn start(kind: Kind, args: &AttackArgs) -> anyhow::Result<Rig> {
        let viewer_origin = Arc::new(
            origin::start(OriginConfig {
                listen: "127.0.0.1:0".parse().expect("static address"),
                cadence: Some(VIEWER_CADENCE),
                chunk_size: VIEWER_CHUNK,
                publish: Publish::Whole,
                ..OriginConfig::default()
            })
            .await
            .context("starting the viewer's origin")?,
        );
        let (attack_origin, tiny) = if kind == Kind::TinyPieces {
            let raw = RawOrigin::start(args.size.as_u64())
                .await
                .context("starting the tiny-pieces origin")?;
            (None, Some(Arc::new(raw)))
        } else {
            let (chunk, n) = match kind {
                Kind::Window0 => (
                    args.chunk_size.map_or(32 << 20, |b| b.as_u64()),
                    args.chunks.max(1),
                ),
                Kind::Refused => (args.chunk_size.map_or(64 << 10, |b| b.as_u64()), 2),
                _ => (args.chunk_size.map_or(64 << 10, |b| b.as_u64()), 100),
            };
            let o = origin::start(OriginConfig {
                listen: "127.0.0.1:0".parse().expect("static address"),
                cadence: None,
                chunk_size: chunk as usize,
                vod_chunks: n,
                ..OriginConfig::default()
            })
            .await
            .context("starting the attack's origin")?;
            (Some(Arc::new(o)), None)
        };
        let attack_origin_addr = match (&attack_origin, &tiny) {
            (Some(o), _) => o.addr,
            (None, Some(t)) => t.addr,
            (None, None) => unreachable!("one origin is always started"),
        };
        let relay = relay::start_relay(
            kind,
            args,
            &[format!("http://{attack_origin_addr}"), viewer_origin.url()],
        )
        .await?;
        let pid = relay.child.id();
        Ok(Rig {
            child: Some(relay.child),
            log: Some(relay.log),
            attack_origin,
            tiny,
            viewer_origin: Some(viewer_origin),
            ..Rig::around(
                relay.addr,
                Some(relay.admin),
                pid,
                relay.args,
                attack_origin_addr,
            )
        })
    }

    /// A rig around a relay that is already running.
    pub fn external(relay: SocketAddr, origin: SocketAddr, args: &AttackArgs) -> Rig {
        Rig::around(
            relay,
            args.admin,
            args.relay_pid,
            RelayArgs::parse(&args.relay_args),
            origin,
        )
    }

    /// The relay under attack.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay
    }

    /// The origin the attack's requests name.
    pub fn attack_origin(&self) -> SocketAddr {
        self.attack_origin_addr
    }

    /// The relay's admin address.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The relay's pid.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The relay's flags (beyond listen, admin, id and allow-origin).
    pub fn relay_args(&self) -> &RelayArgs {
        &self.relay_args
    }

    /// The raw origin of `tiny-pieces`.
    pub fn tiny_origin(&self) -> Option<Arc<RawOrigin>> {
        self.tiny.clone()
    }

    fn origin_requests(&self) -> Option<u64> {
        match (&self.attack_origin, &self.tiny) {
            (Some(o), _) => Some(o.requests_total()),
            (None, Some(t)) => Some(t.requests()),
            (None, None) => None,
        }
    }

    /// Starts the real viewer, waits until it is served, and takes the
    /// "before" readings.
    pub async fn before_attack(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        if let Some(o) = &self.viewer_origin {
            let v = Viewer::start(self.relay, o.clone());
            anyhow::ensure!(
                v.served(2, Duration::from_secs(15)).await,
                "the real viewer was not served before the attack: {:?}",
                v.log.lock().last()
            );
            self.viewer = Some(v);
        }
        if let Some(a) = ctx.admin {
            self.before.metrics = scrape(a).await;
            self.before.conns = self
                .before
                .metrics
                .as_deref()
                .map_or(0.0, |m| sum(m, "mlcache_connections"));
        }
        self.before.rss = self.sampler.as_ref().map(|s| s.reset_peak());
        self.before.cpu = self.pid.and_then(proc_cpu);
        self.before.own_cpu = crate::sys::own_cpu();
        self.before.origin_requests = self.origin_requests().unwrap_or(0);
        self.before.start = Some(Instant::now());
        Ok(())
    }

    /// Prints a progress line every [`PROGRESS_EVERY`] until cancelled.
    pub fn progress_printer(&self, line: Arc<Mutex<String>>) -> CancellationToken {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let (pid, admin) = (self.pid, self.admin);
        let peak = self.sampler.as_ref().map(|s| s.peak.clone());
        let t0 = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut out = format!("[{:>4.0}s]", t0.elapsed().as_secs_f64());
                if let Some(pid) = pid {
                    out.push_str(&format!(
                        " relay RSS {} (peak {}), CPU {}",
                        proc_rss(pid).map_or("gone".into(), mib),
                        mib(peak.as_ref().map_or(0, |p| p.load(Ordering::Relaxed))),
                        proc_cpu(pid).map_or("?".into(), secs)
                    ));
                }
                if let Some(m) = match admin {
                    Some(a) => scrape(a).await,
                    None => None,
                } {
                    out.push_str(&format!(
                        ", relay connections {}",
                        sum(&m, "mlcache_connections")
                    ));
                }
                eprintln!("{out} | {}", line.lock());
            }
        });
        stop
    }

    /// Stops the relay (after a failure).
    pub async fn stop(&mut self) {
        self.viewer = None;
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
}
