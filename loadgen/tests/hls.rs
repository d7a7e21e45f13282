//! `mlcache-loadgen hls` end to end: the LL-HLS head end (`origin --ll`, a
//! real ffmpeg feed) → relay A → relay B, each a separate process started
//! through the loadgen binary's `origin` and `relay` subcommands (the same
//! code as `mlcache-origin` and `mlcache-relay`), and the loadgen itself as
//! a process. Every number asserted comes from its `--json` output.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlcache_loadgen::child::{spawn_listening, Listening};
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_mlcache-loadgen");

async fn spawn(name: &str, args: &[&str]) -> Listening {
    let mut cmd = Command::new(EXE);
    cmd.args(args)
        .stderr(std::process::Stdio::inherit())
        .env("RUST_LOG", "warn");
    spawn_listening(cmd, name, false, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// Waits (bounded) until the origin's media playlist lists parts after a
/// complete segment: ffmpeg is up and the head end is live.
async fn until_live(origin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((s, body)) =
            mlcache_loadgen::net::get(origin, "/ll/media.m3u8", &origin.to_string()).await
        {
            let text = String::from_utf8_lossy(&body);
            if s == 200 && text.contains("#EXTINF") && text.contains("#EXT-X-PART:") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the LL-HLS origin did not go live in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `mlcache-loadgen hls` with `extra` flags; its JSON report.
fn loadgen_hls(
    origin: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
    extra: &[&str],
) -> serde_json::Value {
    let json: PathBuf = std::env::temp_dir().join(format!(
        "mlcache-hls-{}-{}.json",
        std::process::id(),
        extra.len()
    ));
    let out = std::process::Command::new(EXE)
        .args(["hls", "--origin", &origin.to_string()])
        .args(["--relay", &format!("{a}=20"), "--relay", &format!("{b}=30")])
        .args(["--control", "5", "--duration", "6s", "--ramp", "1s"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run loadgen hls");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen hls failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    v["table"] = stdout.to_string().into();
    v
}

/// The expectations of issue 9 for one run. The exact ones (errors, origin
/// requests per part and per version, parts counted) are asserted here; the
/// timing ones (stalls, missed parts, pace, added p50) are returned as an
/// error, for [`run_checked`] to judge.
fn check(v: &serde_json::Value, hinted: bool) -> Result<(), String> {
    let table = v["table"].as_str().unwrap();
    assert_eq!(v["total_errors"], 0, "{table}");
    // Exact: every part and every blocking playlist URL a relay player got
    // inside the window reached the origin once, through two relays.
    assert_eq!(v["origin_requests_per_part"], 1.0, "{table}");
    assert_eq!(v["origin_requests_per_part_max"], 1, "{table}");
    assert_eq!(v["origin_requests_per_version"], 1.0, "{table}");
    assert_eq!(v["origin_requests_per_version_max"], 1, "{table}");
    let window = v["window_s"].as_f64().unwrap();
    let part = v["part_target_s"].as_f64().unwrap();
    // At least most of the window's parts were counted (they are 200 ms).
    let expected_parts = window / part;
    assert!(
        v["parts_counted"].as_f64().unwrap() >= 0.8 * expected_parts,
        "{table}"
    );
    assert!(
        v["versions_counted"].as_f64().unwrap() >= 0.8 * expected_parts,
        "{table}"
    );
    for g in v["groups"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        assert_eq!(g["hinted"].as_u64().unwrap() > 0, hinted, "{name}\n{table}");
        if g["stalls"] != 0 {
            return Err(format!("{name} stalled {} times", g["stalls"]));
        }
        if g["missed"] != 0 {
            return Err(format!("{name} fell behind by {} parts", g["missed"]));
        }
        // Every player kept up with the live edge: 5 parts per second.
        let rate = g["parts_per_player_per_s"].as_f64().unwrap();
        if !(rate > 0.9 / part && rate < 1.1 / part) {
            return Err(format!("{name}: {rate} parts per player per second"));
        }
        // Through relays on loopback a part comes well within one part
        // duration of the control group's.
        let p50 = g["added_last_byte_ms"]["p50"].as_f64().unwrap();
        if p50 >= 1000.0 * part {
            return Err(format!("{name}: added p50 {p50} ms"));
        }
    }
    Ok(())
}

/// Runs the loadgen (`run`) and [`check`]s its report; if only the timing
/// failed, runs it once more, and that run must pass. On this shared 2-core
/// VM a run in CI has twice (of about ten) shown every relay player a single
/// hiccup of 200–600 ms (multiples of the part duration and of TCP's minimum
/// retransmission timeout) that no standalone run reproduced; a second
/// failure in a row fails the test.
async fn run_checked<F>(run: F, hinted: bool) -> serde_json::Value
where
    F: Fn() -> serde_json::Value + Clone + Send + 'static,
{
    let first = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let Err(why) = check(&first, hinted) else {
        return first;
    };
    eprintln!("timing check failed on the first run ({why}); running again");
    let second = tokio::task::spawn_blocking(run).await.unwrap();
    if let Err(why) = check(&second, hinted) {
        panic!("{why}\n{}", second["table"].as_str().unwrap());
    }
    second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_players_through_two_relays_cost_one_origin_request_per_part_and_version() {
    let origin = spawn("origin", &["origin", "--listen", "127.0.0.1:0", "--ll"]).await;
    let o = origin.addr.to_string();
    let origin_url = format!("http://{o}");
    let a = spawn(
        "relay A",
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--allow-origin",
            &origin_url,
        ],
    )
    .await;
    let a_url = format!("http://{}", a.addr);
    let b = spawn(
        "relay B",
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--allow-origin",
            &origin_url,
            "--upstream",
            &a_url,
        ],
    )
    .await;
    until_live(origin.addr).await;
    let (oa, aa, ba) = (origin.addr, a.addr, b.addr);
    // Shared h2 connections with preload hints, then one HTTP/1.1
    // connection pair per player without them (hls.js 1.7's own behaviour).
    let h2 = run_checked(move || loadgen_hls(oa, aa, ba, &["--h2"]), true).await;
    assert_eq!(h2["protocol"], "h2c (shared)");
    run_checked(
        move || loadgen_hls(oa, aa, ba, &["--no-preload-hint", "--check"]),
        false,
    )
    .await;
    // hls.js builds byte-identical blocking URLs: the origin saw exactly
    // `media.m3u8?_HLS_msn=M&_HLS_part=P&_HLS_skip=YES` (this head end offers
    // delta updates), never another spelling.
    let (s, body) = mlcache_loadgen::net::get(oa, "/stats", &o).await.unwrap();
    assert_eq!(s, 200);
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let blocking: Vec<&String> = stats["requests"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.contains("_HLS_"))
        .collect();
    assert!(!blocking.is_empty());
    for k in blocking {
        let q = k
            .strip_prefix("/ll/media.m3u8?")
            .unwrap_or_else(|| panic!("{k}"));
        let names: Vec<&str> = q.split('&').map(|p| p.split('=').next().unwrap()).collect();
        assert_eq!(names, ["_HLS_msn", "_HLS_part", "_HLS_skip"], "{k}");
    }
}
