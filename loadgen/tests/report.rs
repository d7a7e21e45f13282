//! `mlcache-loadgen live --report DIR` against a real origin and relay on
//! loopback (both in this test process, so this process's pid is the relay's
//! pid for the CPU and RSS samples): the page and every chart exist, each
//! SVG is well-formed XML with lines in it, and the page inlines them all.
//! With Chromium present, the page is also opened headless and screenshotted.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every chart the report draws when all data is there.
const CHARTS: [&str; 6] = [
    "delay-cdf",
    "added-per-hop",
    "delay-over-time",
    "origin-requests",
    "relay-cpu",
    "relay-rss",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_report_has_every_chart() {
    let (origin, relay) = common::origin_and_relay(Duration::from_millis(250)).await;
    let dir = std::env::temp_dir().join(format!("mlcache-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlcache-loadgen"))
        .args(["live", "--origin", &origin.addr.to_string()])
        .args(["--relay", &relay.addr.to_string()])
        .args(["--relay-pid", &std::process::id().to_string()])
        .args(["--viewers", "60", "--control", "4"])
        .args(["--duration", "4s", "--ramp", "1s", "--no-probe"])
        .arg("--report")
        .arg(&dir)
        .output()
        .await
        .expect("run the loadgen");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "loadgen failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("report written to"), "{stderr}");

    let index = std::fs::read_to_string(dir.join("index.html")).expect("index.html");
    assert!(!index.contains("No chart:"), "a chart is missing:\n{index}");
    // Self-contained: nothing fetched from elsewhere (the SVG namespace
    // URI is a name, not a fetch).
    for bad in ["src=", "href=\"http", "url(", "<script", "<link", "@import"] {
        assert!(
            !index.contains(bad),
            "the page must load nothing, found {bad}"
        );
    }
    for name in CHARTS {
        let svg = std::fs::read_to_string(dir.join(format!("{name}.svg")))
            .unwrap_or_else(|e| panic!("{name}.svg: {e}"));
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{name}.svg: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{name}");
        let lines = doc
            .descendants()
            .filter(|n| matches!(n.tag_name().name(), "path" | "polyline"))
            .count();
        assert!(lines > 0, "{name}.svg draws no line");
        assert!(
            index.contains(&format!("id=\"{name}\"")) && index.contains(&svg),
            "index.html does not inline {name}.svg"
        );
    }
    // The page as a whole is one <svg> per chart.
    assert_eq!(index.matches("<svg").count(), CHARTS.len());

    if let Some(shot) = browser_check(&dir.join("index.html")) {
        eprintln!("screenshot: {}", shot.display());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Opens the report in headless Chromium (tests/browser/report.mjs) and checks
/// it renders one <svg> per chart. Without Chromium or node modules it skips,
/// except under CI, where that is a failure. Returns the screenshot's path.
fn browser_check(page: &Path) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser = root.join("tests/browser");
    let ci = std::env::var_os("CI").is_some();
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(node && Path::new("/usr/bin/chromium").exists()) {
        assert!(!ci, "CI is set but node or /usr/bin/chromium is missing");
        eprintln!("skipping the browser check: node or /usr/bin/chromium missing");
        return None;
    }
    if !browser
        .join("node_modules/puppeteer-core/package.json")
        .exists()
    {
        // The pinned packages from the lock file, as tests/common/browser.rs does.
        let ok = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm ci in tests/browser failed");
    }
    let shot = std::env::var_os("MLCACHE_REPORT_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| page.with_file_name("screenshot.png"));
    let out = std::process::Command::new("node")
        .arg(browser.join("report.mjs"))
        .arg("--url")
        .arg(format!("file://{}", page.display()))
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "report.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report.mjs JSON");
    assert_eq!(v["svgs"], CHARTS.len(), "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    // Only the page itself: the SVGs are inline.
    assert_eq!(v["requests"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["width"].as_f64().unwrap_or(0.0) > 100.0, "{v}");
    assert!(shot.exists());
    Some(shot)
}
