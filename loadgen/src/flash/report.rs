//! The results of a flash crowd, as JSON (`--json`) and as the table.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::pin::PinReport;
use crate::report::Percentiles;

/// One relay's share of the crowd.
#[derive(Debug, Serialize)]
pub struct RelayUse {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    /// Viewers connected to it (0 for a relay above the edge).
    pub viewers: usize,
    /// Bytes its viewers received (edge relays).
    pub bytes: Option<u64>,
    /// Its CPU seconds from the crowd's start to the end.
    pub cpu_s: Option<f64>,
    /// CPU seconds per 10^9 bytes delivered to its viewers.
    pub cpu_s_per_gb: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// One loadgen process.
#[derive(Debug, Serialize)]
pub struct WorkerSummary {
    pub pid: u32,
    pub viewers: u64,
    pub cpus_allowed_list: String,
    pub cpu_s: f64,
}

/// The whole crowd's results, merged over every process.
#[derive(Debug, Serialize)]
pub struct FlashReport {
    pub viewers: usize,
    /// Loadgen processes the viewers were split over.
    pub processes: usize,
    pub protocol: String,
    pub within_ms: f64,
    pub chunks_per_viewer: u64,
    pub cadence_ms: u64,
    pub chunk_size: usize,
    /// Viewers whose connection was established.
    pub connected: u64,
    /// Viewers that got their first chunk.
    pub got_first: u64,
    /// Chunks received; `expected_chunks` = viewers × chunks per viewer.
    pub chunks: u64,
    pub expected_chunks: u64,
    pub not_yet: u64,
    pub errors: BTreeMap<String, u64>,
    pub total_errors: u64,
    /// Connections established per second, first connect start to last
    /// connect done.
    pub accept_rate_per_s: f64,
    /// Connect (TCP, and the h2 handshake when shared) time.
    pub connect_ms: Percentiles,
    /// Connect start → last byte of the viewer's first chunk.
    pub first_chunk_ms: Percentiles,
    /// Crowd start → the moment the last viewer had its whole first chunk.
    pub last_first_chunk_ms: f64,
    /// Publish → first byte and publish → last byte, every chunk.
    pub chunk_first_byte_ms: Percentiles,
    pub chunk_last_byte_ms: Percentiles,
    pub first_chunk_histogram_us: Vec<(u64, u64)>,
    pub chunk_last_byte_histogram_us: Vec<(u64, u64)>,
    pub relays: Vec<RelayUse>,
    pub pin: PinReport,
    pub workers: Vec<WorkerSummary>,
    /// CPU seconds of the processes that ran viewers.
    pub loadgen_cpu_s: f64,
}

impl FlashReport {
    /// Every viewer got every chunk, without an error.
    pub fn passed(&self) -> bool {
        self.total_errors == 0
            && self.got_first == self.viewers as u64
            && self.chunks == self.expected_chunks
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "flash crowd: {} viewers connecting within {:.0} ms, {} chunk(s) each ({} B every {} ms), {}, {} loadgen process(es)",
            self.viewers,
            self.within_ms,
            self.chunks_per_viewer,
            self.chunk_size,
            self.cadence_ms,
            self.protocol,
            self.processes
        );
        let _ = writeln!(o, "{}", self.pin.line());
        let _ = writeln!(
            o,
            "\nconnected {} / {}, got their first chunk {} / {}, chunks {} / {}, not-yet {}, errors {}",
            self.connected,
            self.viewers,
            self.got_first,
            self.viewers,
            self.chunks,
            self.expected_chunks,
            self.not_yet,
            self.total_errors
        );
        for (k, v) in &self.errors {
            let _ = writeln!(o, "    error {k}: {v}");
        }
        let _ = writeln!(
            o,
            "accept rate: {:.0} connections/s achieved ({:.0}/s offered); last viewer had its first chunk {:.1} ms after the crowd started",
            self.accept_rate_per_s,
            self.viewers as f64 / (self.within_ms / 1000.0).max(1e-3),
            self.last_first_chunk_ms
        );
        let _ = writeln!(
            o,
            "\n{:<42} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "(ms)", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in [
            ("connect", &self.connect_ms),
            (
                "time to first chunk (connect → last byte)",
                &self.first_chunk_ms,
            ),
            ("chunk publish → first byte", &self.chunk_first_byte_ms),
            ("chunk publish → last byte", &self.chunk_last_byte_ms),
        ] {
            let _ = writeln!(o, "{:<42} {}", name, p.row());
        }
        let _ = writeln!(o);
        for r in &self.relays {
            let cpu = match (r.cpu_s, r.cpu_s_per_gb) {
                (Some(c), Some(g)) => format!("CPU {c:.2} s, {g:.2} CPU s per GB delivered"),
                (Some(c), None) => format!("CPU {c:.2} s"),
                _ => "CPU ? (no pid)".into(),
            };
            let rss = r
                .rss_bytes
                .map(|b| format!(", RSS {:.1} MiB", b as f64 / 1048576.0))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "{:<10} {:<21} viewers {:>6}, {}{}",
                r.name, r.addr, r.viewers, cpu, rss
            );
        }
        let _ = writeln!(
            o,
            "loadgen: {:.2} CPU s over {} process(es)",
            self.loadgen_cpu_s, self.processes
        );
        let _ = writeln!(
            o,
            "\nverdict: {}",
            if self.passed() {
                "every viewer got every chunk, 0 errors: OK"
            } else {
                "FAIL (not every viewer got every chunk without an error)"
            }
        );
        o
    }
}
