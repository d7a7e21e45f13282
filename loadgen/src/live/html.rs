//! `--report DIR`: a live run's results as pictures. Builds [`LineChart`]s
//! from a finished [`LiveReport`] (nothing is measured here), draws each with
//! [`crate::plot::svg`], writes every chart as `DIR/NAME.svg` and one
//! self-contained `DIR/index.html` with the same SVGs inlined, so the page
//! opens anywhere (no scripts, no external assets, no network).
//!
//! Charts: delay CDF per group (first and last byte), added delay per hop,
//! added delay over time, origin requests per chunk, and the watched relays'
//! CPU and RSS over time. A chart without data becomes a sentence saying why.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::LiveReport;
use crate::plot::{self, LineChart, Series};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    /// Creating the directory or writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Points per CDF line: enough for a smooth curve, few enough for a light SVG.
const CDF_POINTS: usize = 120;

/// One chart of the report: its file stem and the chart, or why there is none.
struct Figure {
    name: &'static str,
    caption: &'static str,
    chart: Result<LineChart, String>,
}

/// Writes `DIR/index.html` and one SVG per chart; returns the page's path.
pub fn write(report: &LiveReport, dir: &Path) -> Result<PathBuf, HtmlError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HtmlError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut body = String::new();
    for f in figures(report) {
        let _ = writeln!(
            body,
            "<section id=\"{}\"><h2>{}</h2>",
            f.name,
            esc(f.caption)
        );
        match f
            .chart
            .and_then(|c| plot::svg(&c).map_err(|e| e.to_string()))
        {
            Ok(svg) => {
                let file = dir.join(format!("{}.svg", f.name));
                std::fs::write(&file, &svg).map_err(io(&file))?;
                let _ = writeln!(
                    body,
                    "{svg}\n<p class=\"file\"><a href=\"{0}.svg\">{0}.svg</a></p>",
                    f.name
                );
            }
            Err(why) => {
                let _ = writeln!(body, "<p class=\"none\">No chart: {}</p>", esc(&why));
            }
        }
        body.push_str("</section>\n");
    }
    let page = dir.join("index.html");
    std::fs::write(&page, html(report, &body)).map_err(io(&page))?;
    Ok(page)
}

fn figures(r: &LiveReport) -> Vec<Figure> {
    vec![
        Figure {
            name: "delay-cdf",
            caption: "Publish → byte, CDF per group (solid: first byte, dashed: last byte)",
            chart: cdf(r),
        },
        Figure {
            name: "added-per-hop",
            caption: "Added delay vs the control group, by hop count",
            chart: per_hop(r),
        },
        Figure {
            name: "delay-over-time",
            caption: "Added first-byte delay over time, per second of publish (ramp included)",
            chart: over_time(r),
        },
        Figure {
            name: "origin-requests",
            caption: "Origin requests per chunk on the relay path (1 = perfect collapsing)",
            chart: origin_requests(r),
        },
        Figure {
            name: "relay-cpu",
            caption: "Watched relays: CPU over time",
            chart: process(r, "CPU (% of one core)", |s| s.cpu_percent),
        },
        Figure {
            name: "relay-rss",
            caption: "Watched relays: resident memory over time",
            chart: process(r, "RSS (MB)", |s| s.rss_bytes as f64 / 1e6),
        },
    ]
}

fn chart(title: &str, x: &str, y: &str, log_x: bool, series: Vec<Series>) -> LineChart {
    LineChart {
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        log_x,
        log_y: false,
        series,
        size: (900, 420),
    }
}

fn line(name: String, color: usize, dashed: bool, points: Vec<(f64, f64)>) -> Series {
    Series {
        name,
        color,
        dashed,
        points,
    }
}

/// `(ms, % of chunks at or below)` from `(µs, count)` buckets, thinned to
/// about [`CDF_POINTS`] points (the last one always kept).
fn cdf_points(buckets: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return Vec::new();
    }
    let step = buckets.len().div_ceil(CDF_POINTS).max(1);
    let mut seen = 0;
    let mut out = Vec::new();
    for (i, &(us, n)) in buckets.iter().enumerate() {
        seen += n;
        if i % step == step - 1 || i + 1 == buckets.len() {
            out.push((
                (us.max(1)) as f64 / 1000.0,
                100.0 * seen as f64 / total as f64,
            ));
        }
    }
    out
}

fn cdf(r: &LiveReport) -> Result<LineChart, String> {
    let mut series = Vec::new();
    for (i, g) in r.groups.iter().enumerate() {
        for (hist, dashed, what) in [
            (&g.ttfb_histogram_us, false, "first byte"),
            (&g.ttlb_histogram_us, true, "last byte"),
        ] {
            let p = cdf_points(hist);
            if !p.is_empty() {
                series.push(line(format!("{} {what}", g.name), i, dashed, p));
            }
        }
    }
    if series.is_empty() {
        return Err("no chunk completed inside the measurement window".into());
    }
    Ok(chart(
        "Delay CDF",
        "publish → byte (ms, log)",
        "% of chunks",
        true,
        series,
    ))
}

fn per_hop(r: &LiveReport) -> Result<LineChart, String> {
    // Hop 0 is the control group: added delay 0 by definition.
    let hops: Vec<_> = r.groups.iter().filter(|g| g.ttfb_ms.count > 0).collect();
    if hops.len() < 2 {
        return Err("needs the control group and at least one relay group with data".into());
    }
    let pts = |f: &dyn Fn(&super::GroupReport) -> f64| {
        hops.iter()
            .map(|g| (g.hops as f64, if g.hops == 0 { 0.0 } else { f(g) }))
            .collect::<Vec<_>>()
    };
    Ok(chart(
        "Added delay per hop",
        "hops from the origin",
        "added delay (ms)",
        false,
        vec![
            line(
                "first byte p50".into(),
                0,
                false,
                pts(&|g| g.added_ttfb_ms.p50),
            ),
            line(
                "first byte p99".into(),
                0,
                true,
                pts(&|g| g.added_ttfb_ms.p99),
            ),
            line(
                "last byte p50".into(),
                1,
                false,
                pts(&|g| g.added_ttlb_ms.p50),
            ),
            line(
                "last byte p99".into(),
                1,
                true,
                pts(&|g| g.added_ttlb_ms.p99),
            ),
        ],
    ))
}

fn over_time(r: &LiveReport) -> Result<LineChart, String> {
    let control = &r.groups.first().ok_or("no groups")?.per_second_ttfb_ms;
    let mut series = Vec::new();
    for (i, g) in r.groups.iter().enumerate().skip(1) {
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for s in &g.per_second_ttfb_ms {
            // Added = this group's second minus the control's same second.
            if let Some(c) = control.iter().find(|c| c.t_s == s.t_s) {
                p50.push((s.t_s as f64, s.p50 - c.p50));
                p99.push((s.t_s as f64, s.p99 - c.p99));
            }
        }
        if !p50.is_empty() {
            series.push(line(format!("{} p50", g.name), i, false, p50));
            series.push(line(format!("{} p99", g.name), i, true, p99));
        }
    }
    if series.is_empty() {
        return Err("no second with chunks in both a relay group and the control group".into());
    }
    Ok(chart(
        "Added delay over time",
        "seconds since start (by publish time)",
        "added first-byte delay (ms)",
        false,
        series,
    ))
}

fn origin_requests(r: &LiveReport) -> Result<LineChart, String> {
    let points: Vec<(f64, f64)> = r
        .origin_requests_by_chunk
        .iter()
        .map(|&(seq, n)| (seq as f64, n as f64))
        .collect();
    if points.is_empty() {
        return Err("no relay-path chunk inside the measurement window".into());
    }
    Ok(chart(
        "Origin requests per chunk",
        "chunk sequence number",
        "requests at the origin",
        false,
        vec![line("relay path".into(), 0, false, points)],
    ))
}

fn process(
    r: &LiveReport,
    y: &str,
    value: fn(&super::ProcSample) -> f64,
) -> Result<LineChart, String> {
    let series: Vec<Series> = r
        .groups
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.process_samples.is_empty())
        .map(|(i, g)| {
            let p = g
                .process_samples
                .iter()
                .map(|s| (s.t_s, value(s)))
                .collect();
            line(g.name.clone(), i, false, p)
        })
        .collect();
    if series.is_empty() {
        return Err("no relay process was watched (give `--relay-pid`)".into());
    }
    Ok(chart(y, "seconds since start", y, false, series))
}

fn html(r: &LiveReport, body: &str) -> String {
    let mut rows = String::new();
    for g in &r.groups {
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(&g.name),
            g.viewers,
            g.chunks,
            g.ttfb_ms.p50,
            g.ttfb_ms.p99,
            g.added_ttfb_ms.p50,
            g.added_ttfb_ms.p99
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>mlcache live load report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; max-width: 960px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
section {{ margin: 1.5em 0; }} h2 {{ font-size: 1.1em; }}
.none {{ color: #777; font-style: italic; }} .file {{ font-size: 0.8em; color: #777; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>mlcache live load report</h1>
<p>Stream {stream}: {chunk} B chunks every {cadence} ms, {proto}, {dur:.1} s, {window} chunks in the measurement window; origin requests per chunk (relay path) {rpc:.2}; {errors} errors.</p>
<table><thead><tr><th>group</th><th>viewers</th><th>chunks</th><th>first byte p50 (ms)</th><th>p99</th><th>added p50</th><th>added p99</th></tr></thead>
<tbody>
{rows}</tbody></table>
{body}</body></html>
"#,
        stream = r.stream,
        chunk = r.chunk_size,
        cadence = r.cadence_ms,
        proto = esc(r.protocol),
        dur = r.duration_s,
        window = r.window_chunks,
        rpc = r.origin_requests_per_chunk,
        errors = r.total_errors,
    )
}

/// HTML-escapes text (group names carry addresses, but may carry anything).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_is_thinned_and_ends_at_100() {
        let b: Vec<(u64, u64)> = (1..=1000).map(|v| (v * 10, 1)).collect();
        let p = cdf_points(&b);
        assert!(p.len() <= CDF_POINTS + 1, "{}", p.len());
        assert_eq!(*p.last().unwrap(), (10.0, 100.0));
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn escapes() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
