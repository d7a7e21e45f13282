//! Caches side by side, from `live --json` runs: each run is one cache
//! (labelled by the caller) at one viewer count, and its first relay group is
//! the cache's viewers. [`load`] reads a run; [`table`] writes the markdown
//! table (added delay p50/p99, origin requests per chunk, errors, the cache's
//! CPU and RSS); [`chart`] builds the [`LineChart`] of added delay against
//! viewers, one colour per cache, p50 solid and p99 dashed, that
//! `mlcache-loadgen plot` writes as SVG (benches/compare.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::plot::{LineChart, Series};

/// Added delays at or below this are drawn at it: the chart's delay axis is
/// logarithmic (nginx's ~250 ms beside single milliseconds), and an added
/// delay is a difference of two distributions, so it can be ≤ 0.
pub const FLOOR_MS: f64 = 0.1;

/// Why a run could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a `live --json` report.
    #[error("{path} is not a `mlcache-loadgen live --json` report: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The report has no group besides the control group.
    #[error("{path} has no cache group (only the control group)")]
    NoCacheGroup { path: PathBuf },
}

/// Percentiles as `live --json` writes them (ms).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Pct {
    pub p50: f64,
    pub p99: f64,
}

/// The part of a `live --json` group this comparison uses.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupFile {
    pub name: String,
    pub viewers: usize,
    pub chunks: u64,
    pub expected: u64,
    pub missed: u64,
    pub late: u64,
    pub errors: BTreeMap<String, u64>,
    pub added_ttfb_ms: Pct,
    pub added_ttlb_ms: Pct,
    pub process_cpu_percent: Option<f64>,
    pub process_rss_bytes: Option<u64>,
}

/// The part of a `live --json` report this comparison uses.
#[derive(Debug, Clone, Deserialize)]
pub struct RunFile {
    pub chunk_size: usize,
    pub cadence_ms: u64,
    pub protocol: String,
    pub groups: Vec<GroupFile>,
    pub origin_requests_per_chunk: f64,
}

/// One cache at one viewer count.
#[derive(Debug, Clone)]
pub struct Run {
    /// The caller's label (e.g. "nginx 1.22").
    pub cache: String,
    /// The report.
    pub report: RunFile,
}

impl Run {
    /// The cache's viewers: the first group after the control group.
    pub fn group(&self) -> &GroupFile {
        &self.report.groups[1]
    }
}

/// Which delay the chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Publish → first byte, minus the control group's.
    FirstByte,
    /// Publish → last byte (the whole chunk), minus the control group's.
    LastByte,
}

/// Reads the `live --json` report at `path` as cache `cache`'s run.
pub fn load(cache: &str, path: &Path) -> Result<Run, CompareError> {
    let text = std::fs::read(path).map_err(|source| CompareError::Read {
        path: path.into(),
        source,
    })?;
    let report: RunFile = serde_json::from_slice(&text).map_err(|source| CompareError::Parse {
        path: path.into(),
        source,
    })?;
    if report.groups.len() < 2 {
        return Err(CompareError::NoCacheGroup { path: path.into() });
    }
    Ok(Run {
        cache: cache.to_string(),
        report,
    })
}

/// Caches in the order they were first given.
fn caches(runs: &[Run]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for r in runs {
        if !seen.contains(&r.cache.as_str()) {
            seen.push(&r.cache);
        }
    }
    seen
}

/// The markdown table: one row per run, by viewer count, caches in the order
/// given.
pub fn table(runs: &[Run]) -> String {
    use std::fmt::Write;
    let order = caches(runs);
    let mut rows: Vec<&Run> = runs.iter().collect();
    rows.sort_by_key(|r| {
        (
            r.group().viewers,
            order.iter().position(|c| *c == r.cache).unwrap_or(0),
        )
    });
    let mut o = String::from(
        "| cache | viewers | added first byte p50 (ms) | p99 | added last byte p50 (ms) | p99 \
         | origin requests per chunk | errors | missed chunks | cache CPU | cache RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let g = r.group();
        let errors: u64 = g.errors.values().sum();
        let cpu = g
            .process_cpu_percent
            .map_or("–".into(), |c| format!("{c:.0} %"));
        let rss = g
            .process_rss_bytes
            .map_or("–".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0));
        // No chunk delivered: the delays would be the control group's, negated.
        let ms = |v: f64| {
            if g.chunks == 0 {
                "–".to_string()
            } else {
                format!("{v:.2}")
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            r.cache,
            group_thousands(g.viewers),
            ms(g.added_ttfb_ms.p50),
            ms(g.added_ttfb_ms.p99),
            ms(g.added_ttlb_ms.p50),
            ms(g.added_ttlb_ms.p99),
            r.report.origin_requests_per_chunk,
            errors,
            g.missed,
            cpu,
            rss
        );
    }
    o
}

/// 2000 → "2,000", as the docs write counts.
fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Added delay (`metric`) against viewers: one colour per cache, p50 solid,
/// p99 dashed, log–log, values ≤ [`FLOOR_MS`] drawn at the floor.
pub fn chart(runs: &[Run], metric: Metric, title: &str) -> LineChart {
    let mut series = Vec::new();
    for (i, cache) in caches(runs).into_iter().enumerate() {
        // A run that delivered nothing has no delay to draw.
        let mut mine: Vec<&Run> = runs
            .iter()
            .filter(|r| r.cache == cache && r.group().chunks > 0)
            .collect();
        mine.sort_by_key(|r| r.group().viewers);
        let pct = |r: &Run| match metric {
            Metric::FirstByte => r.group().added_ttfb_ms,
            Metric::LastByte => r.group().added_ttlb_ms,
        };
        for (q, dashed) in [("p50", false), ("p99", true)] {
            series.push(Series {
                name: format!("{cache} {q}"),
                color: i,
                dashed,
                points: mine
                    .iter()
                    .map(|r| {
                        let p = pct(r);
                        let v = if dashed { p.p99 } else { p.p50 };
                        (r.group().viewers as f64, v.max(FLOOR_MS))
                    })
                    .collect(),
            });
        }
    }
    LineChart {
        title: title.to_string(),
        x_label: "viewers".into(),
        y_label: format!(
            "added delay to the {} (ms, log)",
            match metric {
                Metric::FirstByte => "first byte",
                Metric::LastByte => "last byte",
            }
        ),
        log_x: true,
        log_y: true,
        series,
        size: (800, 500),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `live --json` report as the loadgen writes it (trimmed to what a
    /// run carries; extra fields are ignored).
    fn report(viewers: usize, p50: f64, p99: f64) -> String {
        let chunks = if p50.is_nan() { 0 } else { 10 };
        let group = |name: &str, v: usize, p50: f64, p99: f64| {
            let p50 = if p50.is_nan() { 0.0 } else { p50 };
            format!(
                r#"{{"name":"{name}","viewers":{v},"hops":1,"chunks":{chunks},"expected":10,"late":0,
                "missed":1,"not_yet":0,"errors":{{"timeout":2}},
                "ttfb_ms":{{"count":1,"p50":1,"p90":1,"p99":1,"p999":1,"max":1}},
                "added_ttfb_ms":{{"count":1,"p50":{p50},"p90":1,"p99":{p99},"p999":1,"max":1}},
                "added_ttlb_ms":{{"count":1,"p50":{p50},"p90":1,"p99":{p99},"p999":1,"max":1}},
                "process_cpu_percent":12.4,"process_rss_bytes":10485760}}"#
            )
        };
        format!(
            r#"{{"stream":0,"cadence_ms":500,"chunk_size":65536,"protocol":"HTTP/1.1",
            "groups":[{},{}],"origin_requests_per_chunk":1.0,"total_errors":2}}"#,
            group("control", 20, 0.0, 0.0),
            group("relay", viewers, p50, p99)
        )
    }

    fn run(dir: &Path, cache: &str, viewers: usize, p50: f64, p99: f64) -> Run {
        let p = dir.join(format!("{cache}-{viewers}.json"));
        std::fs::write(&p, report(viewers, p50, p99)).unwrap();
        load(cache, &p).unwrap()
    }

    #[test]
    fn table_and_chart_from_live_reports() {
        let dir = std::env::temp_dir().join(format!("mlcache-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = vec![
            run(&dir, "mlcache", 2000, 20.0, 40.0),
            run(&dir, "nginx", 100, 250.0, 490.0),
            run(&dir, "mlcache", 100, -0.5, 3.0),
            // Every request failed: no delays in the table, no point drawn.
            run(&dir, "nginx", 300, f64::NAN, 0.0),
        ];
        let t = table(&runs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(
            lines[4].starts_with("| nginx | 300 | – | – | – | – |"),
            "{t}"
        );
        // Sorted by viewers, then caches in the order first given.
        assert!(
            lines[2].starts_with("| mlcache | 100 | -0.50 | 3.00 |"),
            "{t}"
        );
        assert!(lines[3].starts_with("| nginx | 100 |"), "{t}");
        assert!(lines[5].starts_with("| mlcache | 2,000 |"), "{t}");
        assert!(
            lines[5].ends_with("| 1.00 | 2 | 1 | 12 % | 10 MiB |"),
            "{t}"
        );

        let c = chart(&runs, Metric::LastByte, "t");
        let names: Vec<&str> = c.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["mlcache p50", "mlcache p99", "nginx p50", "nginx p99"]
        );
        // Points by viewers, the negative delay raised to the floor.
        assert_eq!(c.series[0].points, vec![(100.0, FLOOR_MS), (2000.0, 20.0)]);
        assert_eq!(c.series[2].points, vec![(100.0, 250.0)]);
        assert!(crate::plot::svg(&c).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_live_report() {
        let dir = std::env::temp_dir().join(format!("mlcache-compare-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        std::fs::write(&p, "{\"requests\": 3}").unwrap();
        assert!(matches!(load("x", &p), Err(CompareError::Parse { .. })));
        assert!(matches!(
            load("x", &dir.join("absent.json")),
            Err(CompareError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
