//! The rig an attack runs on: the relay process (flags, log, RSS and CPU from
//! /proc), the origins in this process, the relay's own counters (admin
//! `/metrics`), the progress printer, and the real viewer whose record says
//! whether the relay still served people during the attack.
//!
//! Readings are taken in this order: everything started and the viewer
//! served twice; "before" (RSS, CPU, origin and relay counters); the attack;
//! a cool-down until the relay's open connections are back to their level
//! before the attack (bounded); "after".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use mlcache::origin::{self, OriginConfig, OriginHandle, Publish};
use parking_lot::Mutex;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::tiny_pieces::RawOrigin;
use super::{counts, mib, secs, AttackArgs, AttackReport, Ctx, Kind, Outcome, Verdict};
use crate::net::Client;
use crate::sys::{proc_cpu, proc_rss};

/// How often the relay's RSS is read.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Longest the relay may take to print its address.
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest one request of the real viewer may take, body included.
const VIEWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk size and cadence of the real viewer's live stream.
const VIEWER_CHUNK: usize = 64 * 1024;
const VIEWER_CADENCE: Duration = Duration::from_millis(500);
/// Longest the cool-down waits for the relay's connections to go.
const COOL_DOWN: Duration = Duration::from_secs(15);
/// Pause after the cool-down before "after" is read, so freed memory can go
/// back to the system.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest a metrics scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Relay flags as `(flag, value)` pairs, in order.
#[derive(Debug, Clone, Default)]
pub struct RelayArgs {
    flags: Vec<(String, Option<String>)>,
    /// Default flags this relay build does not know, left out.
    pub omitted: Vec<String>,
}

impl RelayArgs {
    /// Parses `--flag value`, `--flag=value` and `--switch` tokens; a token
    /// may hold several words (`"--idle-timeout 10s"`).
    pub fn parse<S: AsRef<str>>(tokens: &[S]) -> RelayArgs {
        let words: Vec<&str> = tokens
            .iter()
            .flat_map(|t| t.as_ref().split_whitespace())
            .collect();
        let mut flags = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            if let Some((f, v)) = w.split_once('=').filter(|_| w.starts_with("--")) {
                flags.push((f.to_string(), Some(v.to_string())));
            } else if w.starts_with("--") && words.get(i + 1).is_some_and(|n| !n.starts_with("--"))
            {
                flags.push((w.to_string(), Some(words[i + 1].to_string())));
                i += 1;
            } else {
                flags.push((w.to_string(), None));
            }
            i += 1;
        }
        RelayArgs {
            flags,
            omitted: Vec::new(),
        }
    }

    /// The attack's defaults, minus those the user gives, then the user's.
    /// Defaults the relay's `--help` does not list are left out (the flag
    /// may not exist yet in this build); the user's are passed as given.
    pub fn merged(defaults: &[(&str, &str)], user: &RelayArgs, help: Option<&str>) -> RelayArgs {
        let mut out = RelayArgs::default();
        for (f, v) in defaults {
            if user.flags.iter().any(|(u, _)| u == f) {
                continue;
            }
            if help.is_some_and(|h| !lists_flag(h, f)) {
                out.omitted.push(format!("{f} {v}"));
                continue;
            }
            out.flags.push((f.to_string(), Some(v.to_string())));
        }
        out.flags.extend(user.flags.iter().cloned());
        out
    }

    /// The value of `flag`, if given.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .and_then(|(_, v)| v.as_deref())
    }

    /// As command-line words.
    pub fn to_vec(&self) -> Vec<String> {
        self.flags
            .iter()
            .flat_map(|(f, v)| std::iter::once(f.clone()).chain(v.clone()))
            .collect()
    }

    /// As one line.
    pub fn display(&self) -> String {
        let mut s = self.to_vec().join(" ");
        if s.is_empty() {
            s = "(defaults)".into();
        }
        for o in &self.omitted {
            s.push_str(&format!(" [{o}: not in this relay's --help, left out]"));
        }
        s
    }
}

/// Whether `help` lists `flag` as a whole word.
fn lists_flag(help: &str, flag: &str) -> bool {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|w| w == flag)
}

/// Where `mlcache-relay` is: `--relay-bin`, or next to this executable.
fn relay_bin(args: &AttackArgs) -> anyhow::Result<PathBuf> {
    if let Some(b) = &args.relay_bin {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = exe.with_file_name("mlcache-relay");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release) or pass --relay-bin",
        bin.display()
    );
    Ok(bin)
}

/// Starts the relay as a child process (killed with this one) and reads
/// `listening ADDR` and `admin ADDR` from its stdout. Its stderr goes to
/// `log`.
async fn spawn_relay(
    bin: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(log_file)
        .stdin(std::process::Stdio::null())
        // The relay's own default filter unless the caller set one: the
        // warn-and-above count in the report is then what an operator sees.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| mlcache::DEFAULT_LOG_FILTER.into()),
        )
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let got = tokio::time::timeout(RELAY_START_TIMEOUT, crate::demo::read_addrs(stdout, true))
        .await
        .context("the relay did not print its addresses in time")??;
    let (Some(addr), Some(admin)) = got else {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        anyhow::bail!(
            "the relay exited before listening; the end of its log:\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n")
        );
    };
    Ok((child, addr, admin))
}

/// Reads the relay's RSS every [`RSS_EVERY`], keeping the last and the peak.
struct Sampler {
    pid: u32,
    last: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let now = proc_rss(pid).unwrap_or(0);
        let s = Sampler {
            pid,
            last: Arc::new(AtomicU64::new(now)),
            peak: Arc::new(AtomicU64::new(now)),
            stop: CancellationToken::new(),
        };
        let (last, peak, stop) = (s.last.clone(), s.peak.clone(), s.stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RSS_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let Some(r) = proc_rss(pid) else { break };
                        last.store(r, Ordering::Relaxed);
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                }
            }
        });
        s
    }

    /// Reads now (not waiting for the next tick).
    fn now(&self) -> u64 {
        let r = proc_rss(self.pid).unwrap_or_else(|| self.last.load(Ordering::Relaxed));
        self.peak.fetch_max(r, Ordering::Relaxed);
        r
    }

    /// Starts a new peak from the current value.
    fn reset_peak(&self) -> u64 {
        let r = self.now();
        self.peak.store(r, Ordering::Relaxed);
        r
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One chunk request of the real viewer.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    ok: bool,
    what: String,
    took: Duration,
}

/// A real viewer: fetches each new live chunk through the relay on a new
/// HTTP/1.1 connection (so every chunk also goes through accept and
/// admission) and checks its status and length.
struct Viewer {
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
}

impl Viewer {
    fn start(relay: SocketAddr, origin: Arc<OriginHandle>) -> Viewer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (l, s) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                let seq = origin.edge(0);
                if seq >= 0 {
                    let at = Instant::now();
                    let r = tokio::select! {
                        _ = s.cancelled() => break,
                        r = tokio::time::timeout(VIEWER_TIMEOUT, fetch_chunk(relay, origin.addr, seq as u64)) => r,
                    };
                    let (ok, what) = match r {
                        Ok(Ok(())) => (true, "200".to_string()),
                        Ok(Err(e)) => (false, e),
                        Err(_) => (false, "timeout".to_string()),
                    };
                    l.lock().push(Attempt {
                        at,
                        ok,
                        what,
                        took: at.elapsed(),
                    });
                }
                // Pace: the next chunk, polled (the origin has no edge watch
                // to share), bounded so a stalled origin cannot stop the loop.
                let waited = Instant::now();
                while origin.edge(0) <= seq && waited.elapsed() < VIEWER_CADENCE * 4 {
                    tokio::select! {
                        _ = s.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        });
        Viewer { log, stop }
    }

    /// Waits until the viewer has been served `n` times.
    async fn served(&self, n: usize, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.log.lock().iter().filter(|a| a.ok).count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn attempts(&self, from: Instant, to: Instant) -> Vec<Attempt> {
        self.log
            .lock()
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .cloned()
            .collect()
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn fetch_chunk(relay: SocketAddr, origin: SocketAddr, seq: u64) -> Result<(), String> {
    let mut c = Client::open(relay, None, false).await?;
    let req = Request::get(format!("http://{origin}/live/0/{seq}"))
        .header("host", origin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = c.send(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(status.as_u16().to_string());
    }
    if body.len() != VIEWER_CHUNK {
        return Err(format!("short body ({} bytes)", body.len()));
    }
    Ok(())
}

/// GETs the relay's `/metrics`.
pub async fn scrape(admin: SocketAddr) -> Option<String> {
    let get = async {
        let mut c = Client::open(admin, None, false).await.ok()?;
        let req = Request::get("/metrics")
            .header("host", admin.to_string())
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = c.send(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, get)
        .await
        .ok()
        .flatten()
}

/// Every series of `name` in a metrics page, by label set (`""` when none).
pub fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l.to_string(), v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => (String::new(), v),
                None => continue,
            },
        };
        if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.insert(labels, v);
        }
    }
    out
}

/// The sum of every series of `name`.
pub fn sum(text: &str, name: &str) -> f64 {
    series(text, name).values().sum()
}

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
    // Readings before the attack.
    start: Option<Instant>,
    rss_before: Option<u64>,
    cpu_before: Option<Duration>,
    own_cpu_before: Duration,
    origin_before: u64,
    metrics_before: Option<String>,
    conns_before: f64,
}

impl Rig {
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
            let raw = RawOrigin::start(args.size)
                .await
                .context("starting the tiny-pieces origin")?;
            (None, Some(Arc::new(raw)))
        } else {
            let (chunk, n) = match kind {
                Kind::Window0 => (args.chunk_size.unwrap_or(32 << 20), args.chunks.max(1)),
                Kind::Refused => (args.chunk_size.unwrap_or(64 << 10), 2),
                _ => (args.chunk_size.unwrap_or(64 << 10), 100),
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
        let bin = relay_bin(args)?;
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .await
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let relay_args = RelayArgs::merged(
            kind.default_relay_args(),
            &RelayArgs::parse(&args.relay_args),
            help.as_deref(),
        );
        let mut all = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--id".into(),
            "attack-relay".into(),
            "--allow-origin".into(),
            format!("http://{attack_origin_addr}"),
            "--allow-origin".into(),
            viewer_origin.url(),
        ];
        all.extend(relay_args.to_vec());
        let log = std::env::temp_dir().join(format!(
            "mlcache-attack-{}-{}.log",
            kind.name(),
            std::process::id()
        ));
        let (child, addr, admin) = spawn_relay(&bin, &all, &log).await?;
        let pid = child.id();
        Ok(Rig {
            relay: addr,
            admin: Some(admin),
            pid,
            child: Some(child),
            log: Some(log),
            relay_args,
            attack_origin_addr,
            attack_origin,
            tiny,
            viewer_origin: Some(viewer_origin),
            viewer: None,
            sampler: pid.map(Sampler::start),
            start: None,
            rss_before: None,
            cpu_before: None,
            own_cpu_before: Duration::ZERO,
            origin_before: 0,
            metrics_before: None,
            conns_before: 0.0,
        })
    }

    /// A rig around a relay that is already running.
    pub fn external(relay: SocketAddr, origin: SocketAddr, args: &AttackArgs) -> Rig {
        Rig {
            relay,
            admin: args.admin,
            pid: args.relay_pid,
            child: None,
            log: None,
            relay_args: RelayArgs::parse(&args.relay_args),
            attack_origin_addr: origin,
            attack_origin: None,
            tiny: None,
            viewer_origin: None,
            viewer: None,
            sampler: args.relay_pid.map(Sampler::start),
            start: None,
            rss_before: None,
            cpu_before: None,
            own_cpu_before: Duration::ZERO,
            origin_before: 0,
            metrics_before: None,
            conns_before: 0.0,
        }
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
            self.metrics_before = scrape(a).await;
            self.conns_before = self
                .metrics_before
                .as_deref()
                .map_or(0.0, |m| sum(m, "mlcache_connections"));
        }
        self.rss_before = self.sampler.as_ref().map(|s| s.reset_peak());
        self.cpu_before = self.pid.and_then(proc_cpu);
        self.own_cpu_before = crate::sys::own_cpu();
        self.origin_before = self.origin_requests().unwrap_or(0);
        self.start = Some(Instant::now());
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

    /// Cool-down, "after" readings, and the report.
    pub async fn finish(&mut self, kind: Kind, ctx: &Ctx, outcome: Outcome) -> AttackReport {
        let start = self.start.unwrap_or_else(Instant::now);
        let end = Instant::now();
        let attack_time = end - start;
        // Cool-down: the attack's connections are dropped; wait until the
        // relay has let go of them too.
        if let Some(a) = self.admin {
            let t = Instant::now();
            while t.elapsed() < COOL_DOWN {
                match scrape(a).await {
                    Some(m) if sum(&m, "mlcache_connections") <= self.conns_before + 1.0 => break,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        let rss_after = self.sampler.as_ref().map(|s| s.now());
        let rss_peak = self.sampler.as_ref().map(|s| s.peak());
        let cpu = match (self.pid.and_then(proc_cpu), self.cpu_before) {
            (Some(a), Some(b)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let metrics_after = match self.admin {
            Some(a) => scrape(a).await,
            None => None,
        };
        let exited = match &mut self.child {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        };
        let viewer = self.viewer.as_ref().map(|v| {
            (
                v.attempts(start, end),
                v.attempts(end, Instant::now() + Duration::from_secs(1)),
            )
        });
        let origin_requests = self
            .origin_requests()
            .map(|n| n.saturating_sub(self.origin_before));

        let mut rows: Vec<(String, String)> = Vec::new();
        let relay_line = match &self.child {
            Some(_) => format!("mlcache-relay {}", self.relay_args.display()),
            None => format!(
                "running relay {} (settings given: {})",
                self.relay,
                self.relay_args.display()
            ),
        };
        rows.push(("relay".into(), relay_line));
        rows.extend(outcome.rows);
        rows.push(("attack time".into(), secs(attack_time)));
        let mut verdicts = outcome.verdicts;
        if let (Some(b), Some(p), Some(a)) = (self.rss_before, rss_peak, rss_after) {
            rows.push((
                "relay RSS".into(),
                format!("before {}, peak {}, after {}", mib(b), mib(p), mib(a)),
            ));
            if let Some((bound, what)) = &outcome.rss_bound {
                verdicts.push(Verdict::new(
                    format!("relay RSS peak ≤ {} ({what})", mib(*bound)),
                    mib(p),
                    p <= *bound,
                ));
            }
        }
        if let Some(c) = cpu {
            rows.push((
                "relay CPU".into(),
                format!(
                    "{} over {} (this tool, origins and clients: {})",
                    secs(c),
                    secs(attack_time),
                    secs(crate::sys::own_cpu().saturating_sub(self.own_cpu_before))
                ),
            ));
        }
        if let Some(n) = origin_requests {
            rows.push(("origin requests".into(), format!("{n} (attack origin)")));
            if let Some((bound, what)) = &outcome.origin_bound {
                verdicts.push(Verdict::new(
                    format!("origin requests ≤ {bound} ({what})"),
                    n.to_string(),
                    n <= *bound,
                ));
            }
        }
        if let (Some(b), Some(a)) = (&self.metrics_before, &metrics_after) {
            rows.push(("relay counters".into(), counter_deltas(b, a)));
        }
        if let Some((during, after)) = viewer {
            let ok = during.iter().filter(|a| a.ok).count();
            let mut fails: BTreeMap<String, u64> = BTreeMap::new();
            for a in during.iter().filter(|a| !a.ok) {
                *fails.entry(a.what.clone()).or_default() += 1;
            }
            let worst = during
                .iter()
                .filter(|a| a.ok)
                .map(|a| a.took)
                .max()
                .unwrap_or_default();
            let first_ok = during.iter().find(|a| a.ok).map(|a| a.at - start);
            rows.push((
                "real viewer".into(),
                format!(
                    "{ok} of {} chunks served during the attack (failures: {}), slowest {} ms, first at {}; after it {} of {}",
                    during.len(),
                    counts(&fails),
                    worst.as_millis(),
                    first_ok.map_or("-".into(), secs),
                    after.iter().filter(|a| a.ok).count(),
                    after.len()
                ),
            ));
            let grace = outcome.viewer_grace;
            let late_fails = during
                .iter()
                .filter(|a| !a.ok && a.at - start > grace)
                .count();
            let after_fails = after.iter().filter(|a| !a.ok).count();
            verdicts.push(Verdict::new(
                if grace.is_zero() {
                    "a real viewer is served throughout the attack".to_string()
                } else {
                    format!(
                        "a real viewer is served during the attack, at the latest {} after it began",
                        secs(grace)
                    )
                },
                format!(
                    "{ok} served, {} failed{}, {after_fails} failed after",
                    during.len() - ok,
                    if grace.is_zero() {
                        String::new()
                    } else {
                        format!(" ({late_fails} after {})", secs(grace))
                    }
                ),
                // A short attack may fall between two chunks: then the
                // chunks right after it count.
                ok + after.iter().filter(|a| a.ok).count() > 0
                    && late_fails == 0
                    && after_fails == 0,
            ));
        }
        if self.child.is_some() {
            rows.push((
                "relay process".into(),
                match exited {
                    None => "up".into(),
                    Some(s) => format!("exited: {s}"),
                },
            ));
            verdicts.push(Verdict::new(
                "the relay stays up",
                match exited {
                    None => "up".into(),
                    Some(s) => format!("exited: {s}"),
                },
                exited.is_none(),
            ));
        }
        if let Some(log) = &self.log {
            let lines = std::fs::read_to_string(log)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            rows.push((
                "relay log".into(),
                format!("{lines} lines at warn and above ({})", log.display()),
            ));
        }
        self.stop().await;
        AttackReport {
            attack: format!("{} ({})", kind.name(), ctx.relay),
            rows,
            verdicts,
        }
    }
}

/// The relay counters that moved, as `name +delta`.
fn counter_deltas(before: &str, after: &str) -> String {
    let names = [
        ("mlcache_requests_total", "requests"),
        ("mlcache_upstream_fetches_total", "upstream fetches"),
        ("mlcache_rejected_total", "refused"),
    ];
    let mut parts = Vec::new();
    for (name, label) in names {
        let b = series(before, name);
        let a = series(after, name);
        let mut moved: Vec<String> = a
            .iter()
            .filter_map(|(k, v)| {
                let d = v - b.get(k).copied().unwrap_or(0.0);
                (d > 0.0).then(|| format!("{} +{d}", short_labels(k)))
            })
            .collect();
        if moved.is_empty() {
            moved.push("+0".into());
        }
        parts.push(format!("{label} {}", moved.join(" ")));
    }
    parts.join("; ")
}

/// `result="hit",target="origin"` → `hit/origin`.
fn short_labels(l: &str) -> String {
    l.split(',')
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.trim_matches('"')))
        .collect::<Vec<_>>()
        .join("/")
}
