//! The recent-delivery-delay recorder behind the status page's chart.
//!
//! Every delivery observation that goes into the `mlcache_delivery_seconds`
//! histogram also goes here ([`crate::metrics::Metrics::observe_delivery`]):
//! one short, uncontended lock bumps a bucket count of the current
//! [`WINDOW`]. Only the last [`WINDOWS`] windows are kept, each a fixed
//! array of counts, so memory is bounded whatever the traffic. Readers copy
//! the windows out and compute percentiles from the bucket bounds (the same
//! bounds as the Prometheus histogram), capped at the window's largest value.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// Length of one window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Windows kept (ten minutes of [`WINDOW`]s).
pub const WINDOWS: usize = 60;

/// Upper bounds of the buckets, in seconds: 10 µs doubling 22 times, as the
/// `mlcache_delivery_seconds` histogram; one more bucket takes the rest.
const BOUNDS: usize = 22;

fn bound(i: usize) -> f64 {
    0.000_01 * f64::powi(2.0, i as i32)
}

fn bucket_of(secs: f64) -> usize {
    (0..BOUNDS).find(|&i| secs <= bound(i)).unwrap_or(BOUNDS)
}

#[derive(Clone)]
struct Window {
    /// Window number since the recorder started.
    n: u64,
    counts: [u32; BOUNDS + 1],
    max: f64,
}

/// One window's delivery delays, as the status page shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DelayWindow {
    /// Seconds since the relay started at which the window began.
    pub start_secs: u64,
    /// Deliveries observed in the window.
    pub count: u64,
    /// Median, in seconds (the bucket bound it falls under, at most `max`).
    pub p50: f64,
    /// 90th percentile, in seconds.
    pub p90: f64,
    /// 99th percentile, in seconds.
    pub p99: f64,
    /// Largest delay observed, in seconds.
    pub max: f64,
}

/// The bounded ring of recent windows. See the module docs.
pub struct DelayRing {
    started: Instant,
    windows: Mutex<VecDeque<Window>>,
    total: AtomicU64,
}

impl Default for DelayRing {
    fn default() -> Self {
        DelayRing::new()
    }
}

impl DelayRing {
    /// An empty ring whose clock starts now.
    pub fn new() -> DelayRing {
        DelayRing {
            started: Instant::now(),
            windows: Mutex::new(VecDeque::with_capacity(WINDOWS + 1)),
            total: AtomicU64::new(0),
        }
    }

    /// Records one delivery delay of `secs` seconds.
    pub fn record(&self, secs: f64) {
        self.record_at(self.started.elapsed(), secs);
    }

    /// Deliveries recorded since start (equals the histogram's count).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// How long the ring (the relay) has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn record_at(&self, at: Duration, secs: f64) {
        // NaN or negative (cannot happen from an Instant) goes to bucket 0.
        let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
        let n = at.as_secs() / WINDOW.as_secs();
        let b = bucket_of(secs);
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut w = self.windows.lock();
        if w.back().is_none_or(|last| last.n < n) {
            w.push_back(Window {
                n,
                counts: [0; BOUNDS + 1],
                max: 0.0,
            });
            while w.len() > WINDOWS {
                w.pop_front();
            }
        }
        let last = w.back_mut().expect("just ensured");
        last.counts[b] = last.counts[b].saturating_add(1);
        last.max = last.max.max(secs);
    }

    /// The windows of the last [`WINDOWS`] × [`WINDOW`] that saw a delivery,
    /// oldest first.
    pub fn recent(&self) -> Vec<DelayWindow> {
        self.recent_at(self.started.elapsed())
    }

    fn recent_at(&self, now: Duration) -> Vec<DelayWindow> {
        let current = now.as_secs() / WINDOW.as_secs();
        let oldest = current.saturating_sub(WINDOWS as u64 - 1);
        let copied: Vec<Window> = self.windows.lock().iter().cloned().collect();
        copied
            .iter()
            .filter(|w| w.n >= oldest)
            .map(|w| {
                let count: u64 = w.counts.iter().map(|&c| u64::from(c)).sum();
                let q = |q: f64| quantile(&w.counts, count, q).min(w.max);
                DelayWindow {
                    start_secs: w.n * WINDOW.as_secs(),
                    count,
                    p50: q(0.50),
                    p90: q(0.90),
                    p99: q(0.99),
                    max: w.max,
                }
            })
            .collect()
    }
}

/// The upper bound of the bucket holding the `q` quantile (the overflow
/// bucket answers infinity, which the caller caps at the window's max).
fn quantile(counts: &[u32; BOUNDS + 1], total: u64, q: f64) -> f64 {
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if seen >= rank {
            return if i < BOUNDS { bound(i) } else { f64::INFINITY };
        }
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn percentiles_follow_the_histogram_buckets_and_cap_at_max() {
        let r = DelayRing::new();
        // 98 fast deliveries (<= 80 µs), two slow ones (0.3 s).
        for _ in 0..98 {
            r.record_at(secs(3), 0.000_07);
        }
        r.record_at(secs(4), 0.3);
        r.record_at(secs(5), 0.3);
        let w = r.recent_at(secs(9));
        assert_eq!(w.len(), 1);
        let w = &w[0];
        assert_eq!((w.start_secs, w.count), (0, 100));
        assert!((w.p50 - 0.000_08).abs() < 1e-12, "{w:?}");
        assert!((w.p90 - 0.000_08).abs() < 1e-12, "{w:?}");
        // The 0.3 s bucket's bound is 0.32768, capped at the max seen.
        assert_eq!(w.p99, 0.3);
        assert_eq!(w.max, 0.3);
        assert_eq!(r.total(), 100);
    }

    #[test]
    fn only_ten_minutes_are_kept_whatever_the_traffic() {
        let r = DelayRing::new();
        for s in 0..3600 {
            r.record_at(secs(s), 0.001);
        }
        assert!(r.windows.lock().len() <= WINDOWS);
        let w = r.recent_at(secs(3600));
        // The window holding t=3600 has no deliveries yet: 59 remain.
        assert_eq!(w.len(), WINDOWS - 1);
        assert_eq!(w.first().unwrap().start_secs, 3600 - 590);
        assert_eq!(w.last().unwrap().start_secs, 3590);
        assert!(w.iter().all(|w| w.count == 10));
        // Much later, nothing recent is left to show.
        assert!(r.recent_at(secs(3600 + 600)).is_empty());
        assert_eq!(r.total(), 3600);
    }

    #[test]
    fn odd_values_do_not_panic() {
        let r = DelayRing::new();
        r.record_at(secs(0), f64::NAN);
        r.record_at(secs(0), 1e9);
        let w = &r.recent_at(secs(0))[0];
        assert_eq!(w.count, 2);
        assert_eq!(w.max, 1e9);
        assert_eq!(w.p99, 1e9);
    }
}
