//! The results of an LL-HLS run: per group and for the whole run, as JSON
//! (`--json`) and as the human-readable table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::report::Percentiles;

/// One group's results.
#[derive(Debug, Default, Serialize)]
pub struct HlsGroupReport {
    pub name: String,
    pub players: usize,
    /// Parts got inside the window and matched with the control group.
    pub parts: u64,
    /// Parts got inside the window that no control player got.
    pub unmatched: u64,
    pub parts_per_player_per_s: f64,
    /// Blocking playlist reloads answered inside the window.
    pub versions: u64,
    /// Reloads that did not advance.
    pub unchanged: u64,
    /// Parts fetched on a preload hint.
    pub hinted: u64,
    /// Times a player fell out of the playlist.
    pub missed: u64,
    /// Gaps of more than three part targets without a new part.
    pub stalls: u64,
    pub playlist_errors: BTreeMap<String, u64>,
    pub part_errors: BTreeMap<String, u64>,
    /// First byte of the part minus the earliest control player's (for the
    /// control group: its spread).
    pub added_first_byte_ms: Percentiles,
    /// Last byte likewise.
    pub added_last_byte_ms: Percentiles,
    /// Arrivals before the earliest control player's (counted as 0 delay).
    pub earlier_than_control: u64,
    pub process_cpu_percent: Option<f64>,
    pub process_rss_bytes: Option<u64>,
    /// Body bytes this group's players received over the run.
    pub bytes: u64,
    /// The watched process's CPU seconds over the run.
    pub process_cpu_s: Option<f64>,
    /// Those CPU seconds per 10^9 bytes delivered to this group.
    pub process_cpu_s_per_gb: Option<f64>,
}

/// The whole run's results.
#[derive(Debug, Serialize)]
pub struct HlsReport {
    pub path: String,
    pub protocol: &'static str,
    pub preload_hint: bool,
    pub target_duration_s: f64,
    pub part_target_s: f64,
    pub part_hold_back_s: Option<f64>,
    /// Length of the measurement window.
    pub window_s: f64,
    pub groups: Vec<HlsGroupReport>,
    /// Distinct parts relay players got in the window.
    pub parts_counted: u64,
    /// Origin requests per such part on the relay path.
    pub origin_requests_per_part: f64,
    pub origin_requests_per_part_min: u64,
    pub origin_requests_per_part_max: u64,
    /// Distinct blocking playlist URLs relay players got in the window.
    pub versions_counted: u64,
    pub origin_requests_per_version: f64,
    pub origin_requests_per_version_min: u64,
    pub origin_requests_per_version_max: u64,
    /// Multivariant, plain media playlist and init requests the relay path
    /// sent the origin over the whole run.
    pub origin_requests_other: u64,
    pub relay_players: usize,
    /// Parts and versions left out of the two ratios because a control
    /// request for them got no answer (the origin may or may not have
    /// counted it).
    pub uncounted_keys: u64,
    /// Keys whose relay-path origin count was not 1, with that count (at
    /// most 20).
    pub keys_not_once: Vec<(String, u64)>,
    /// Body bytes delivered to all players per second of the run.
    pub bytes_per_sec: f64,
    pub total_errors: u64,
    pub loadgen_cpu_percent: f64,
    pub loop_lag_ms: Percentiles,
    /// Playlist bodies parsed, and served parsed from the shared cache.
    pub playlists_parsed: u64,
    pub playlists_from_parse_cache: u64,
    /// Whether relays and loadgen ran on separate CPUs (`--pin`).
    pub pin: crate::pin::PinReport,
}

impl HlsReport {
    /// Whether every expectation holds: no errors, no stalls, one origin
    /// request per part and per playlist version.
    pub fn passed(&self) -> bool {
        self.total_errors == 0
            && self.groups.iter().all(|g| g.stalls == 0)
            && self.origin_requests_per_part == 1.0
            && self.origin_requests_per_version == 1.0
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "LL-HLS {}: parts of {:.3} s, target duration {} s, PART-HOLD-BACK {}, {}, preload hints {}, {:.1} s measured",
            self.path,
            self.part_target_s,
            self.target_duration_s,
            self.part_hold_back_s.map_or("-".into(), |h| format!("{h} s")),
            self.protocol,
            if self.preload_hint { "fetched" } else { "ignored (as hls.js)" },
            self.window_s
        );
        let _ = writeln!(o, "{}", self.pin.line());
        let _ = writeln!(
            o,
            "\nADDED delay per part vs the earliest control player (ms)        p50      p90      p99    p99.9      max"
        );
        for g in &self.groups {
            let _ = writeln!(
                o,
                "{:<30} {:>6}  first byte  {}",
                g.name,
                g.players,
                g.added_first_byte_ms.row()
            );
            let _ = writeln!(
                o,
                "{:<30} {:>6}  last byte   {}",
                "",
                "",
                g.added_last_byte_ms.row()
            );
        }
        let _ = writeln!(
            o,
            "\n{:<30} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>8} {:>6}  process",
            "group",
            "parts",
            "parts/s/p",
            "playlists",
            "hinted",
            "missed",
            "stalls",
            "pl.errs",
            "p.errs"
        );
        for g in &self.groups {
            let pe: u64 = g.playlist_errors.values().sum();
            let qe: u64 = g.part_errors.values().sum();
            let proc = match (g.process_cpu_percent, g.process_rss_bytes) {
                (Some(c), Some(r)) => format!("CPU {c:.0}%, RSS {:.1} MiB", r as f64 / 1048576.0),
                (Some(c), None) => format!("CPU {c:.0}%"),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "{:<30} {:>9} {:>9.2} {:>9} {:>7} {:>6} {:>6} {:>8} {:>6}  {}",
                g.name,
                g.parts,
                g.parts_per_player_per_s,
                g.versions,
                g.hinted,
                g.missed,
                g.stalls,
                pe,
                qe,
                proc
            );
            crate::pin::write_cpu_per_gb(
                &mut o,
                g.process_cpu_s,
                g.bytes,
                g.process_cpu_s_per_gb,
                self.pin.pinned,
            );
            for (k, v) in &g.playlist_errors {
                let _ = writeln!(o, "    playlist error {k}: {v}");
            }
            for (k, v) in &g.part_errors {
                let _ = writeln!(o, "    part error {k}: {v}");
            }
            if g.unmatched > 0 {
                let _ = writeln!(
                    o,
                    "    {} parts no control player got (left out)",
                    g.unmatched
                );
            }
        }
        let _ = writeln!(
            o,
            "\norigin requests per part (relay path): {:.2} over {} parts (min {}, max {})",
            self.origin_requests_per_part,
            self.parts_counted,
            self.origin_requests_per_part_min,
            self.origin_requests_per_part_max
        );
        let _ = writeln!(
            o,
            "origin requests per playlist version (relay path): {:.2} over {} versions (min {}, max {})",
            self.origin_requests_per_version,
            self.versions_counted,
            self.origin_requests_per_version_min,
            self.origin_requests_per_version_max
        );
        let _ = writeln!(
            o,
            "other origin requests (relay path: multivariant, plain media playlist, init): {} for {} players",
            self.origin_requests_other, self.relay_players
        );
        if self.uncounted_keys > 0 {
            let _ = writeln!(
                o,
                "left out of the ratios: {} keys a control request for got no answer",
                self.uncounted_keys
            );
        }
        for (k, n) in &self.keys_not_once {
            let _ = writeln!(o, "    {k}: {n} origin requests on the relay path");
        }
        let _ = writeln!(o, "delivered: {}", crate::report::rate(self.bytes_per_sec));
        let stalls: u64 = self.groups.iter().map(|g| g.stalls).sum();
        let _ = writeln!(o, "errors: {}, stalls: {}", self.total_errors, stalls);
        let _ = writeln!(
            o,
            "loadgen: CPU {:.0}%, event-loop lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; playlists parsed {}, from the parse cache {}",
            self.loadgen_cpu_percent,
            self.loop_lag_ms.p50,
            self.loop_lag_ms.p99,
            self.loop_lag_ms.max,
            self.playlists_parsed,
            self.playlists_from_parse_cache
        );
        o
    }
}
