//! Results: hdrhistogram-backed group records, percentile summaries, and the
//! human-readable table.

use std::collections::{BTreeMap, BTreeSet};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value a histogram holds, in microseconds (2 minutes).
const MAX_US: u64 = 120_000_000;

/// A new microsecond histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds")
}

/// Records `us` microseconds, clamped into range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_US));
}

/// The percentiles reported everywhere, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Summarises a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    /// Percentile-by-percentile difference `self - base`.
    pub fn minus(&self, base: &Percentiles) -> Percentiles {
        Percentiles {
            count: self.count,
            p50: self.p50 - base.p50,
            p90: self.p90 - base.p90,
            p99: self.p99 - base.p99,
            p999: self.p999 - base.p999,
            max: self.max - base.max,
        }
    }

    /// `p50 / p90 / p99 / p99.9 / max` in ms.
    pub fn row(&self) -> String {
        format!(
            "{:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// Everything one group of viewers saw.
pub struct GroupRecord {
    /// Publish → first byte, µs.
    pub ttfb: Histogram<u64>,
    /// Publish → last byte, µs.
    pub ttlb: Histogram<u64>,
    /// Request → last byte, µs (VOD latency).
    pub latency: Histogram<u64>,
    /// Complete chunks inside the measurement window.
    pub chunks: u64,
    /// Chunks whose first byte came more than one cadence after publish.
    pub late: u64,
    /// Chunks skipped because the viewer fell out of the origin's window.
    pub missed: u64,
    /// "Not yet" answers (re-requested).
    pub not_yet: u64,
    /// Responses served from cache (X-Cache: HIT).
    pub hits: u64,
    /// Requests of any outcome.
    pub requests: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Sequence numbers seen inside the window.
    pub seqs: BTreeSet<u64>,
}

impl Default for GroupRecord {
    fn default() -> Self {
        GroupRecord {
            ttfb: histogram(),
            ttlb: histogram(),
            latency: histogram(),
            chunks: 0,
            late: 0,
            missed: 0,
            not_yet: 0,
            hits: 0,
            requests: 0,
            errors: BTreeMap::new(),
            seqs: BTreeSet::new(),
        }
    }
}

impl GroupRecord {
    /// Counts one error of `kind`.
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    /// Total errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A histogram as `(value µs, count)` pairs, for `--json`.
pub fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Serialises a histogram (hdrhistogram V2, uncompressed, base64) so
/// another process can add it to its own exactly: every bucket's count
/// travels, not percentiles.
pub fn encode(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::{Serializer, V2Serializer};
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialising into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Reads what [`encode`] wrote.
pub fn decode(s: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine;
    use hdrhistogram::serialization::Deserializer;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("histogram base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram: {e:?}"))
}

/// Adds `other`'s counts to `into` (exact: bucket by bucket).
pub fn add(into: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<(), String> {
    into.add(other)
        .map_err(|e| format!("adding histograms: {e:?}"))
}

/// Formats a byte rate.
pub fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec >= 1e9 {
        format!("{:.2} GB/s", bytes_per_sec / 1e9)
    } else {
        format!("{:.1} MB/s", bytes_per_sec / 1e6)
    }
}

/// Event-loop lag: how late a 10 ms timer fires, recorded in microseconds
/// until the returned task is aborted. A lagging loop means the figures
/// measure the loadgen, not the relay, and the reports say so.
pub fn lag_meter() -> (
    std::sync::Arc<parking_lot::Mutex<Histogram<u64>>>,
    tokio::task::JoinHandle<()>,
) {
    let lag = std::sync::Arc::new(parking_lot::Mutex::new(histogram()));
    let task = tokio::spawn({
        let lag = lag.clone();
        async move {
            let tick = std::time::Duration::from_millis(10);
            loop {
                let t = std::time::Instant::now();
                tokio::time::sleep(tick).await;
                let over = t.elapsed().saturating_sub(tick);
                record(&mut lag.lock(), over.as_micros() as u64);
            }
        }
    });
    (lag, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_difference() {
        let mut h = histogram();
        for us in 1..=1000 {
            record(&mut h, us * 1000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0);
        assert!((p.max - 1000.0).abs() < 1.0);
        let d = p.minus(&p);
        assert_eq!(d.p50, 0.0);
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn merge_over_serialisation_is_exact() {
        // Two "processes" record disjoint and overlapping values; their
        // serialised histograms added together equal one histogram that
        // recorded everything.
        let (mut a, mut b, mut all) = (histogram(), histogram(), histogram());
        for v in (1..50_000u64).step_by(7) {
            record(&mut a, v * 13);
            record(&mut all, v * 13);
        }
        for v in (1..9_000u64).step_by(3) {
            record(&mut b, v * 1_001);
            record(&mut all, v * 1_001);
        }
        record(&mut b, 119_999_999);
        record(&mut all, 119_999_999);
        let (a2, b2) = (decode(&encode(&a)).unwrap(), decode(&encode(&b)).unwrap());
        assert_eq!(a2, a, "a round trip changes nothing");
        let mut merged = histogram();
        add(&mut merged, &a2).unwrap();
        add(&mut merged, &b2).unwrap();
        assert_eq!(merged.len(), a.len() + b.len());
        assert_eq!(merged, all);
        assert_eq!(buckets(&merged), buckets(&all));
        assert_eq!(Percentiles::of(&merged), Percentiles::of(&all));
        // An empty histogram round-trips too, and garbage is an error.
        assert!(decode(&encode(&histogram())).unwrap().is_empty());
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
    }
}
