//! What the rig reads off the relay: its RSS from /proc (sampled for the
//! peak), and its own counters from the admin `/metrics` page, parsed as
//! Prometheus text by series and label set, with the deltas the report
//! prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::net;
use crate::sys::proc_rss;

/// How often the relay's RSS is read.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// Longest a metrics scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads the relay's RSS every [`RSS_EVERY`], keeping the last and the peak.
pub(super) struct Sampler {
    pid: u32,
    last: Arc<AtomicU64>,
    /// The highest RSS read since the last reset.
    pub(super) peak: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub(super) fn start(pid: u32) -> Sampler {
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
    pub(super) fn now(&self) -> u64 {
        let r = proc_rss(self.pid).unwrap_or_else(|| self.last.load(Ordering::Relaxed));
        self.peak.fetch_max(r, Ordering::Relaxed);
        r
    }

    /// Starts a new peak from the current value.
    pub(super) fn reset_peak(&self) -> u64 {
        let r = self.now();
        self.peak.store(r, Ordering::Relaxed);
        r
    }

    /// The peak since the last reset.
    pub(super) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// GETs the relay's `/metrics`.
pub async fn scrape(admin: SocketAddr) -> Option<String> {
    let get = async {
        let (_, body) = net::get(admin, "/metrics", &admin.to_string()).await.ok()?;
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

/// The relay counters that moved, as `name +delta`.
pub(super) fn counter_deltas(before: &str, after: &str) -> String {
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
