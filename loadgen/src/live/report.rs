//! The results of a live run: per group and for the whole run, as JSON
//! (`--json`) and as the human-readable table.

use serde::Serialize;

use crate::report::{rate, Percentiles};

/// One group's results.
#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub name: String,
    pub viewers: usize,
    pub hops: usize,
    pub chunks: u64,
    pub expected: u64,
    pub late: u64,
    pub missed: u64,
    pub not_yet: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub ttfb_ms: Percentiles,
    pub ttlb_ms: Percentiles,
    /// This group minus the control group.
    pub added_ttfb_ms: Percentiles,
    pub added_ttlb_ms: Percentiles,
    /// This group minus the previous hop's group.
    pub hop_ttfb_ms: Percentiles,
    pub hop_ttlb_ms: Percentiles,
    pub ttfb_histogram_us: Vec<(u64, u64)>,
    pub ttlb_histogram_us: Vec<(u64, u64)>,
    pub process_cpu_percent: Option<f64>,
    pub process_rss_bytes: Option<u64>,
    /// Bytes this group's viewers received over the run.
    pub bytes: u64,
    /// The watched process's CPU seconds over the run (viewers' start to end).
    pub process_cpu_s: Option<f64>,
    /// Those CPU seconds per 10^9 bytes delivered to this group.
    pub process_cpu_s_per_gb: Option<f64>,
    /// Publish → first byte per second of the run (by publish time), ramp
    /// included: the delay-over-time chart.
    pub per_second_ttfb_ms: Vec<SecondStats>,
    /// The watched process sampled once a second (empty without a pid).
    pub process_samples: Vec<ProcSample>,
}

/// One second of one group's publish → first byte.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecondStats {
    /// Seconds since the run started.
    pub t_s: u64,
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
}

/// One sample of a watched process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// CPU use since the previous sample, in % of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// The whole run's results.
#[derive(Debug, Serialize)]
pub struct LiveReport {
    pub stream: usize,
    pub cadence_ms: u64,
    pub chunk_size: usize,
    pub protocol: &'static str,
    pub duration_s: f64,
    pub window_chunks: u64,
    pub groups: Vec<GroupReport>,
    /// Origin requests per chunk on the relay path, inside the window.
    pub origin_requests_per_chunk: f64,
    pub origin_requests_min: u64,
    pub origin_requests_max: u64,
    /// `(chunk sequence, origin requests)` for every relay-path chunk in the
    /// window, in sequence order.
    pub origin_requests_by_chunk: Vec<(u64, u64)>,
    pub bytes_per_sec: f64,
    pub loopback_bytes_per_sec: f64,
    /// k × chunk / B for the largest relay group: when its last viewer could
    /// finish at the earliest.
    pub physical_bound_last_viewer_ms: f64,
    pub loadgen_cpu_percent: f64,
    pub loop_lag_ms: Percentiles,
    pub total_errors: u64,
    /// Whether relays and loadgen ran on separate CPUs (`--pin`).
    pub pin: crate::pin::PinReport,
}

impl LiveReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "live stream {}: {} B chunks every {} ms, {}, {:.1} s, {} chunks in the measurement window",
            self.stream, self.chunk_size, self.cadence_ms, self.protocol, self.duration_s, self.window_chunks
        );
        let _ = writeln!(o, "{}", self.pin.line());
        let _ = writeln!(o, "\nglass-to-glass, publish → first byte (ms)");
        let _ = writeln!(
            o,
            "{:<24} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "group", "viewers", "p50", "p90", "p99", "p99.9", "max"
        );
        for g in &self.groups {
            let _ = writeln!(o, "{:<24} {:>7} {}", g.name, g.viewers, g.ttfb_ms.row());
        }
        let _ = writeln!(o, "\nglass-to-glass, publish → last byte (ms)");
        for g in &self.groups {
            let _ = writeln!(o, "{:<24} {:>7} {}", g.name, g.viewers, g.ttlb_ms.row());
        }
        let _ = writeln!(o, "\nADDED delay vs the control group (ms)          p50      p90      p99    p99.9      max");
        for g in self.groups.iter().skip(1) {
            let _ = writeln!(o, "{:<24} first byte     {}", g.name, g.added_ttfb_ms.row());
            let _ = writeln!(o, "{:<24} last byte      {}", g.name, g.added_ttlb_ms.row());
        }
        if self.groups.len() > 2 {
            let _ = writeln!(o, "\nper hop (this group minus the hop before it)");
            for g in self.groups.iter().skip(1) {
                let _ = writeln!(o, "{:<24} first byte     {}", g.name, g.hop_ttfb_ms.row());
                let _ = writeln!(o, "{:<24} last byte      {}", g.name, g.hop_ttlb_ms.row());
            }
        }
        let _ = writeln!(
            o,
            "\n{:<24} {:>9} {:>9} {:>6} {:>6} {:>7} {:>7}  process",
            "group", "chunks", "expected", "late", "missed", "not-yet", "errors"
        );
        for g in &self.groups {
            let errs: u64 = g.errors.values().sum();
            let proc = match (g.process_cpu_percent, g.process_rss_bytes) {
                (Some(c), Some(r)) if g.viewers >= 1000 => format!(
                    "CPU {c:.0}%, RSS {:.1} MiB ({:.2} MiB per 1,000 viewers)",
                    r as f64 / 1048576.0,
                    r as f64 / 1048576.0 / (g.viewers as f64 / 1000.0)
                ),
                (Some(c), Some(r)) => format!("CPU {c:.0}%, RSS {:.1} MiB", r as f64 / 1048576.0),
                (Some(c), None) => format!("CPU {c:.0}%"),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "{:<24} {:>9} {:>9} {:>6} {:>6} {:>7} {:>7}  {}",
                g.name, g.chunks, g.expected, g.late, g.missed, g.not_yet, errs, proc
            );
            crate::pin::write_cpu_per_gb(
                &mut o,
                g.process_cpu_s,
                g.bytes,
                g.process_cpu_s_per_gb,
                self.pin.pinned,
            );
            for (k, v) in &g.errors {
                let _ = writeln!(o, "    error {k}: {v}");
            }
        }
        let _ = writeln!(
            o,
            "\norigin requests per chunk (relay path): {:.2} (min {}, max {})",
            self.origin_requests_per_chunk, self.origin_requests_min, self.origin_requests_max
        );
        let _ = writeln!(o, "errors: {}", self.total_errors);
        let _ = writeln!(o, "delivered: {}", rate(self.bytes_per_sec));
        if self.loopback_bytes_per_sec > 0.0 {
            let _ = writeln!(
                o,
                "loopback throughput B = {}; physical bound for the last viewer of the largest group: {:.1} ms",
                rate(self.loopback_bytes_per_sec),
                self.physical_bound_last_viewer_ms
            );
        }
        let _ = writeln!(
            o,
            "loadgen: CPU {:.0}%, event-loop lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.loadgen_cpu_percent,
            self.loop_lag_ms.p50,
            self.loop_lag_ms.p99,
            self.loop_lag_ms.max
        );
        o
    }
}
