//! The loadgen against a real origin and relay on loopback, at small scale,
//! and the demo command end to end.

mod common;

use std::time::Duration;

use mlcache_loadgen::live::{self, Group, LiveOpts};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_live_run_is_consistent() {
    let cadence = Duration::from_millis(300);
    let (origin, relay) = common::origin_and_relay(cadence).await;
    let duration = Duration::from_secs(3);
    let report = live::run(
        LiveOpts {
            origin: origin.addr,
            stream: 0,
            groups: vec![
                Group {
                    name: "control".into(),
                    target: origin.addr,
                    via_relay: false,
                    viewers: 5,
                    pid: None,
                },
                Group {
                    name: "relay".into(),
                    target: relay.addr,
                    via_relay: true,
                    viewers: 200,
                    pid: None,
                },
            ],
            duration,
            ramp: Duration::from_secs(1),
            h2: false,
            per_h2_conn: 100,
            sources: 0,
            request_timeout: Duration::from_secs(10),
            loopback_probe: 0,
            pin: false,
            origin_pid: None,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.total_errors, 0, "{}", report.table());
    assert_eq!(report.origin_requests_per_chunk, 1.0, "{}", report.table());
    assert_eq!(report.origin_requests_max, 1);
    // The window spans (duration - one cadence); chunks published in it:
    let in_window = (duration - cadence).as_secs_f64() / cadence.as_secs_f64();
    assert!(
        (report.window_chunks as f64 - in_window).abs() <= 1.0,
        "{} chunks in the window, expected about {in_window}",
        report.window_chunks
    );
    for g in &report.groups {
        assert_eq!(
            g.chunks, g.expected,
            "{}: every viewer got every chunk of the window",
            g.name
        );
        assert_eq!(g.expected, g.viewers as u64 * report.window_chunks);
        assert_eq!(g.missed, 0);
        assert_eq!(g.ttfb_ms.count, g.chunks);
    }
    // Progressive chunks end about one cadence after they start.
    let relay_ttlb = report.groups[1].ttlb_ms.p50;
    assert!(
        relay_ttlb > 0.5 * cadence.as_millis() as f64,
        "ttlb p50 {relay_ttlb} ms"
    );
}

#[test]
fn demo_runs_and_leaves_nothing_behind() {
    let json = std::env::temp_dir().join(format!("mlcache-demo-{}.json", std::process::id()));
    let report_dir =
        std::env::temp_dir().join(format!("mlcache-demo-report-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlcache-loadgen"))
        .args([
            "demo",
            "--viewers",
            "100",
            "--hop1-viewers",
            "20",
            "--control",
            "5",
            "--duration",
            "3s",
            "--ramp",
            "1s",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(&report_dir)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("origin requests per chunk (relay path): 1.00"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict"), "{stdout}");
    // The demo ends by naming its HTML report, which is there.
    let page = report_dir.join("index.html");
    assert_eq!(
        stdout.lines().last(),
        Some(format!("report: {}", page.display()).as_str()),
        "{stdout}"
    );
    assert!(std::fs::read_to_string(&page).unwrap().contains("<svg"));
    std::fs::remove_dir_all(&report_dir).ok();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["total_errors"], 0);
    assert_eq!(v["origin_requests_per_chunk"], 1.0);
    assert_eq!(v["groups"].as_array().unwrap().len(), 3);
    std::fs::remove_file(&json).ok();
    // Every process the demo started is gone: its ports no longer answer.
    let line = stderr
        .lines()
        .find(|l| l.starts_with("demo: origin"))
        .expect("demo banner");
    let addrs: Vec<std::net::SocketAddr> = line
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';')
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(addrs.len() >= 3, "{line}");
    for a in addrs {
        assert!(
            std::net::TcpStream::connect(a).is_err(),
            "{a} still listening after the demo"
        );
    }
}
