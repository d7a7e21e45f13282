//! Real players in a real browser: runs `tests/browser/play.mjs` (hls.js or
//! dash.js in headless Chromium, driven by puppeteer-core) and returns what
//! each player window measured. Installs the pinned node packages from the
//! lock file on first use. Without Chromium or Node the caller skips, except
//! under CI, where that is a failure (`.ci/run` installs both).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The folder holding package.json, the page and the driver.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether the browser rig can run here (see [`super::nginx::require`]:
/// under CI a missing piece fails). Installs the node packages (`npm ci`)
/// when they are missing.
pub fn ready() -> bool {
    if !super::nginx::require(&["node", "npm", "chromium"]) {
        return false;
    }
    install();
    true
}

/// `npm ci` once, under a lock so parallel tests don't race on node_modules.
fn install() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done
        || dir()
            .join("node_modules/puppeteer-core/package.json")
            .exists()
    {
        *done = true;
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir())
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci in tests/browser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    *done = true;
}

/// One player window's figures over the measured window.
#[derive(Debug, Clone)]
pub struct Tab {
    pub label: String,
    pub playing: bool,
    /// Seconds of media played per wall second.
    pub advance: f64,
    /// `waiting` events inside the window.
    pub stalls: Option<u64>,
    /// The player's own live latency (median over the window), seconds.
    pub latency_p50: Option<f64>,
    pub errors: Vec<String>,
    pub raw: serde_json::Value,
}

/// What to play: `player` is `hls` or `dash`; `srcs` are (label, URL), each
/// opened in `tabs` windows at once.
pub struct Play<'a> {
    pub player: &'a str,
    pub srcs: Vec<(String, String)>,
    pub tabs: usize,
    pub warmup_secs: u32,
    pub seconds: u32,
    pub screenshot: Option<PathBuf>,
}

/// `node` (and the Chromium it starts) at a lower priority than the
/// programs under test.
///
/// On a 2-core machine, six Chromium windows decoding and compositing video
/// in software take most of the CPU in bursts, and Chromium renices its
/// browser and compositor threads to -8 when it may. The relays, the origin
/// and the load generator then wait behind the browser: a blocking playlist
/// reload through two relays took over hls.js's 0.8 s timeout, and one
/// stall raises hls.js's target latency for good. In production the players
/// run on other machines. So the driver runs at nice 10, and as root without
/// `CAP_SYS_NICE` (dropped from the bounding set, so nothing it starts can
/// take it back); the direct and relayed players share the same priority,
/// so their comparison stays fair.
fn node() -> Command {
    const DROP_NICE: [&str; 2] = ["setpriv", "--bounding-set=-sys_nice"];
    // Only where it works (root, with CAP_SETPCAP): elsewhere Chromium
    // cannot renice itself below 10 anyway.
    static CAN_DROP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let can_drop = *CAN_DROP.get_or_init(|| {
        Command::new(DROP_NICE[0])
            .args(&DROP_NICE[1..])
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"]);
    if can_drop {
        cmd.args(DROP_NICE);
    }
    cmd.arg("node");
    cmd
}

/// Runs the driver and parses its JSON. Blocking (run it on a blocking
/// thread from async tests).
pub fn play(p: &Play) -> Vec<Tab> {
    play_with(p, &[])
}

/// [`play`] with extra driver flags (e.g. `["--token", T]`).
pub fn play_with(p: &Play, extra: &[&str]) -> Vec<Tab> {
    let mut cmd = node();
    cmd.arg(dir().join("play.mjs"))
        .args(["--player", p.player])
        .args(["--tabs", &p.tabs.to_string()])
        .args(["--warmup", &p.warmup_secs.to_string()])
        .args(["--seconds", &p.seconds.to_string()])
        .args(["--chromium", CHROMIUM])
        .current_dir(dir())
        .stderr(Stdio::inherit());
    for (label, url) in &p.srcs {
        cmd.args(["--src", &format!("{label}={url}")]);
    }
    if let Some(s) = &p.screenshot {
        cmd.arg("--screenshot").arg(s);
    }
    cmd.args(extra);
    let out = cmd.output().expect("run node play.mjs");
    assert!(out.status.success(), "play.mjs failed: {:?}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("play.mjs JSON");
    v["tabs"]
        .as_array()
        .expect("tabs")
        .iter()
        .map(|t| Tab {
            label: t["label"].as_str().unwrap_or_default().to_owned(),
            playing: t["playing"].as_bool().unwrap_or(false),
            advance: t["advance"].as_f64().unwrap_or(0.0),
            stalls: t["stalls"].as_u64(),
            latency_p50: t["latency"]["p50"].as_f64(),
            errors: t["errors"]
                .as_array()
                .map(|e| e.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default(),
            raw: t.clone(),
        })
        .collect()
}

/// The median of one label's tabs' latency medians.
pub fn latency(tabs: &[Tab], label: &str) -> Option<f64> {
    let mut v: Vec<f64> = tabs
        .iter()
        .filter(|t| t.label == label)
        .filter_map(|t| t.latency_p50)
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Opens the status page at `url` with `tests/browser/status.mjs`, waits for
/// `polls` renders and returns what it printed: `shown` (the figures as the
/// page displays them), `requests` (every URL the page loaded) and `errors`.
/// Blocking.
pub fn status_page(url: &str, polls: u32, screenshot: Option<&Path>) -> serde_json::Value {
    let mut cmd = node();
    cmd.arg(dir().join("status.mjs"))
        .args(["--url", url, "--polls", &polls.to_string()])
        .args(["--chromium", CHROMIUM])
        .current_dir(dir())
        .stderr(Stdio::inherit());
    if let Some(s) = screenshot {
        cmd.arg("--screenshot").arg(s);
    }
    let out = cmd.output().expect("run node status.mjs");
    assert!(out.status.success(), "status.mjs failed: {:?}", out.status);
    serde_json::from_slice(&out.stdout).expect("status.mjs JSON")
}

/// [`play_with`] on a blocking thread, for async tests.
pub async fn play_async(p: Play<'static>, extra: &'static [&'static str]) -> Vec<Tab> {
    tokio::task::spawn_blocking(move || play_with(&p, extra))
        .await
        .expect("play")
}
