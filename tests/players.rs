//! Real players through a tree of two relays, as a live-event operator runs
//! them: hls.js and dash.js in headless Chromium (tests/browser), over https
//! with h2, from a page on another origin (CORS); an ordinary nginx serving
//! ffmpeg's HLS, made live by `--hold-404`; VLC and ffmpeg as HLS clients.
//!
//! Every stream comes from a real encoder (ffmpeg). Each test compares the
//! same player through the relays with the same player direct to an
//! identical origin (its own ffmpeg, so the relay path's origin counts only
//! the relays' requests) and checks what the origin saw: one request per
//! part, per playlist version, per segment.
//!
//! The browser tests take a process-wide lock: one Chromium at a time on a
//! two-core machine.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::browser::{self, Play, Tab};
use common::ll::{get, warm, Tree, WARM_UP};
use common::nginx::{self, LiveHls, Nginx, TempDir};
use common::{h1, TestProcess};
use http::{Request, StatusCode};
use http_body_util::Empty;

/// One browser (or heavy encoder set) at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Frame rate of the test feed.
const FPS: u64 = 10;

/// `mlcache-origin --ll` (LL-HLS and LL-DASH from its own ffmpeg), small
/// and at 10 fps (two frames per 200 ms part): six player windows decode it
/// on two cores beside the relays, the loadgen and two encoders.
fn ll_origin() -> TestProcess {
    let fps = FPS.to_string();
    TestProcess::origin(&[
        "--ll",
        "--feed",
        "lavfi",
        "--ll-size",
        "320x180",
        "--ll-fps",
        &fps,
    ])
}

/// The LL head end, a twin for the direct players, and relays A → B in
/// front of the first, once both origins list `segments` segments.
struct LlRig {
    origin: TestProcess,
    twin: TestProcess,
    tree: Tree,
}

impl LlRig {
    async fn start() -> LlRig {
        let origin = ll_origin();
        let twin = ll_origin();
        let tree = Tree::start(&format!("http://{}", origin.addr), &[]);
        warm(origin.addr, 2).await;
        warm(twin.addr, 2).await;
        LlRig { origin, twin, tree }
    }

    /// The player URLs for `path`: through both relays, and direct to the
    /// twin.
    fn urls(&self, path: &str) -> (String, String) {
        (
            self.tree.url(self.origin.addr, path),
            format!("http://{}{path}", self.twin.addr),
        )
    }
}

/// The origin's request counts by path and query.
async fn origin_requests(addr: SocketAddr) -> HashMap<String, u64> {
    let g = get(addr, "/stats").await;
    let v: serde_json::Value = serde_json::from_slice(g.bytes()).expect("stats JSON");
    v["requests"]
        .as_object()
        .expect("requests")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// Requests made between two snapshots, per path, for paths matching `f`.
fn delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    f: impl Fn(&str) -> bool,
) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = after
        .iter()
        .filter(|(k, _)| f(k))
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort();
    v
}

/// Where a test's screenshot goes (target/players-NAME.png).
fn screenshot(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("players-{name}.png"))
}

async fn play(p: Play<'static>) -> Vec<Tab> {
    browser::play_async(p, &[]).await
}

/// Every tab played: media time advanced ≥ 0.9 s per second, no stall, no
/// fatal error.
fn assert_played(tabs: &[Tab]) {
    for t in tabs {
        assert!(t.playing, "{} never played: {:?}", t.label, t.raw);
        assert!(t.errors.is_empty(), "{} errors: {:?}", t.label, t.raw);
        assert!(
            t.advance >= 0.9,
            "{} advanced {:.2}: {:?}",
            t.label,
            t.advance,
            t.raw
        );
        assert_eq!(t.stalls, Some(0), "{} stalled: {:?}", t.label, t.raw);
    }
}

/// The players' live latency through the relays is within `within` seconds
/// of the same player direct (medians over tabs).
fn assert_latency(tabs: &[Tab], within: f64) -> (f64, f64) {
    let relays = browser::latency(tabs, "relays").expect("latency through relays");
    let direct = browser::latency(tabs, "direct").expect("latency direct");
    eprintln!("live latency: direct {direct:.2} s, through two relays {relays:.2} s");
    assert!(
        relays - direct <= within,
        "latency through relays {relays:.2} s vs direct {direct:.2} s: {:#?}",
        tabs.iter().map(|t| &t.raw).collect::<Vec<_>>()
    );
    (relays, direct)
}

fn srcs(relays: usize, relay_url: &str, direct: usize, direct_url: &str) -> Vec<(String, String)> {
    let mut v = vec![("relays".to_string(), relay_url.to_string()); relays];
    v.extend(vec![("direct".to_string(), direct_url.to_string()); direct]);
    v
}

/// `mlcache-loadgen`, built beside the relay by `cargo test --workspace`
/// (a test of this package cannot name another package's binary).
fn loadgen_exe() -> PathBuf {
    let exe =
        std::path::Path::new(env!("CARGO_BIN_EXE_mlcache-relay")).with_file_name("mlcache-loadgen");
    assert!(
        exe.exists(),
        "{exe:?} missing: run the workspace's tests (cargo test --workspace builds it)"
    );
    exe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_plays_ll_hls_through_two_https_relays() {
    if !nginx::require(&["ffmpeg"]) || !browser::ready() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let rig = LlRig::start().await;
    let (relay_url, direct_url) = rig.urls("/ll/master.m3u8");
    let (origin, tree) = (&rig.origin, &rig.tree);

    // 200 simulated LL-HLS players on B's clear port (and 5 control players
    // on the origin) watch with the browsers, for longer than they do.
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("players-loadgen-hls.json");
    let _ = std::fs::remove_file(&json);
    let loadgen = tokio::process::Command::new(loadgen_exe())
        .args(["hls", "--origin", &origin.addr.to_string()])
        .args(["--relay", &format!("{}=200", tree.b.addr)])
        .args([
            "--control",
            "5",
            "--h2",
            "--duration",
            "40s",
            "--ramp",
            "2s",
        ])
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let loadgen = tokio::spawn(loadgen);

    let tabs = play(Play {
        player: "hls",
        srcs: srcs(5, &relay_url, 1, &direct_url),
        tabs: 1,
        warmup_secs: 6,
        seconds: 20,
        screenshot: Some(screenshot("hls")),
    })
    .await;
    // The loadgen counts the origin's requests over its window, minus its
    // control group's: what the relay tree asked for, browsers included.
    let out = loadgen.await.unwrap().expect("run mlcache-loadgen hls");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen hls: {table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{table}");
    assert_played(&tabs);
    assert_latency(&tabs, 0.3);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["total_errors"], 0, "{table}");
    assert_eq!(v["origin_requests_per_part"], 1.0, "{table}");
    assert_eq!(v["origin_requests_per_part_max"], 1, "{table}");
    assert_eq!(v["origin_requests_per_version"], 1.0, "{table}");
    assert_eq!(v["origin_requests_per_version_max"], 1, "{table}");
    // 5 parts a second over most of the window.
    let expected = v["window_s"].as_f64().unwrap() / v["part_target_s"].as_f64().unwrap();
    assert!(
        v["parts_counted"].as_f64().unwrap() >= 0.8 * expected,
        "{table}"
    );
    // Only A talked to the origin; B's fetches went to A.
    assert_eq!(
        common::metric(
            tree.b.admin(),
            "mlcache_upstream_fetches_total{target=\"origin\",result=\"ok\"}"
        )
        .await,
        0.0
    );
    assert!(
        common::metric(
            tree.a.admin(),
            "mlcache_upstream_fetches_total{target=\"origin\",result=\"ok\"}"
        )
        .await
            >= expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_js_plays_ll_dash_through_two_https_relays() {
    if !nginx::require(&["ffmpeg"]) || !browser::ready() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let rig = LlRig::start().await;
    let origin = &rig.origin;
    let (relay_url, direct_url) = rig.urls("/dash/manifest.mpd");
    let before = origin_requests(origin.addr).await;
    let tabs = play(Play {
        player: "dash",
        srcs: srcs(3, &relay_url, 1, &direct_url),
        tabs: 1,
        warmup_secs: 6,
        seconds: 20,
        screenshot: Some(screenshot("dash")),
    })
    .await;
    assert_played(&tabs);
    assert_latency(&tabs, 0.3);

    let after = origin_requests(origin.addr).await;
    let segments = delta(&before, &after, |k| k.starts_with("/dash/seg"));
    eprintln!("origin: {} chunked segments", segments.len());
    assert!(segments.len() >= 18, "segments fetched: {segments:?}");
    for (k, n) in &segments {
        assert_eq!(*n, 1, "{k} was asked of the origin {n} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_plays_a_plain_nginx_origin_made_live_by_hold_404() {
    if !nginx::require(&["ffmpeg", "nginx"]) || !browser::ready() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let www = TempDir::new("players-www");
    let mut hls = LiveHls::start(www.path(), Duration::from_secs(90));
    let web = Nginx::serve(www.path());
    let tree = Tree::start(&web.url, &["--hold-404", "4s"]);
    let deadline = Instant::now() + WARM_UP;
    while nginx::segments(&hls.playlist()).len() < 3 {
        assert!(hls.alive(), "ffmpeg exited");
        assert!(Instant::now() < deadline, "ffmpeg wrote no playlist");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While the players watch, 10 viewers on B ask for the segment after the
    // next one by name, before it exists: A holds them and polls nginx.
    let last = nginx::segments(&hls.playlist()).last().unwrap().0;
    let ahead = last + 2;
    let name = format!("/seg{ahead}.m4s");
    let viewers: Vec<_> = (0..10)
        .map(|_| {
            let (b, web, name) = (tree.b.addr, web.addr, name.clone());
            tokio::spawn(async move {
                let req = Request::get(format!("/mlcache/{web}{name}"))
                    .header("host", "relay")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                h1(b, req).await
            })
        })
        .collect();

    let relay_url = tree.url(web.addr, "/live.m3u8");
    let direct_url = format!("{}/live.m3u8", web.url);
    let tabs = play(Play {
        player: "hls",
        srcs: srcs(1, &relay_url, 1, &direct_url),
        tabs: 1,
        warmup_secs: 4,
        seconds: 12,
        screenshot: None,
    })
    .await;
    assert_played(&tabs);
    // Plain HLS: hls.js sits three segments back; the relays may add up
    // to one playlist refresh.
    assert_latency(&tabs, 1.0);

    let file = std::fs::read(www.path().join(&name[1..])).ok();
    for v in viewers {
        let got = v.await.unwrap().expect("held viewer");
        assert_eq!(got.status, StatusCode::OK, "{name}: {got:?}");
        if let Some(f) = &file {
            assert_eq!(got.bytes().as_ref(), f.as_slice(), "{name} differs");
        }
    }
    // nginx saw the relay tree ask for each segment once (the direct
    // player's requests carry a browser User-Agent), and the not-yet
    // segment polled at a bounded rate, not once per viewer.
    let relay_lines: Vec<String> = web
        .access_lines()
        .into_iter()
        .filter(|l| !l.contains("Mozilla"))
        .collect();
    let mut per_segment: HashMap<String, (usize, usize)> = HashMap::new();
    for l in &relay_lines {
        let Some(path) = l.split('"').nth(1).and_then(|r| r.split(' ').nth(1)) else {
            continue;
        };
        if path.ends_with(".m4s") {
            let status = l.split('"').nth(2).unwrap_or("").trim_start();
            let e = per_segment.entry(path.to_string()).or_default();
            if status.starts_with("200") {
                e.0 += 1;
            } else if status.starts_with("404") {
                e.1 += 1;
            }
        }
    }
    for (path, (ok, _)) in &per_segment {
        assert!(*ok <= 1, "{path}: nginx served it {ok} times to the relays");
    }
    let (_, polls) = per_segment[&name];
    eprintln!("{name}: nginx answered {polls} polls with 404 before it existed");
    // Written about 2-3 s after the viewers asked; at most one poll per
    // 100 ms plus slack.
    assert!(polls <= 45, "{name} polled {polls} times");
    assert!(hls.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlc_and_ffmpeg_play_hls_through_the_relays() {
    if !nginx::require(&["ffmpeg", "ffprobe", "cvlc"]) {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let origin = ll_origin();
    let tree = Tree::start(&format!("http://{}", origin.addr), &[]);
    warm(origin.addr, 3).await;
    let out = TempDir::new("players-out");
    // VLC will not run as root; as root, run it as nobody, writing into a
    // directory nobody may write.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        Command::new("chmod")
            .arg("777")
            .arg(out.path())
            .status()
            .unwrap();
    }

    // ffmpeg over https (h1 over TLS; it does not verify by default).
    let ffmpeg_out = out.path().join("ffmpeg.mp4");
    let ffmpeg = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .arg("-i")
        .arg(tree.url(origin.addr, "/ll/media.m3u8"))
        .args(["-t", "4", "-c", "copy"])
        .arg(&ffmpeg_out)
        .output()
        .expect("run ffmpeg");
    assert!(ffmpeg.status.success(), "ffmpeg: {ffmpeg:?}");
    let n = nginx::ffprobe_frames(&ffmpeg_out);
    eprintln!("ffmpeg wrote {n} frames through the relays");
    // `-t 4`: four seconds of media.
    assert!(n >= 4 * FPS * 9 / 10, "ffmpeg wrote {n} frames");

    // VLC over clear HTTP on B.
    let vlc_out = out.path().join("vlc.ts");
    let url = format!(
        "http://{}/mlcache/{}/ll/media.m3u8",
        tree.b.addr, origin.addr
    );
    let sout = format!("#std{{access=file,mux=ts,dst={}}}", vlc_out.display());
    let mut vlc = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", "cvlc"]);
        c
    } else {
        Command::new("cvlc")
    };
    let run = vlc
        .args(["-q", "--play-and-exit", "--run-time", "6"])
        .arg(&url)
        .arg("--sout")
        .arg(&sout)
        .env("HOME", out.path())
        .output()
        .expect("run cvlc");
    assert!(run.status.success(), "cvlc: {run:?}");
    let n = nginx::ffprobe_frames(&vlc_out);
    eprintln!("VLC wrote {n} frames through the relays");
    // `--run-time 6`, less VLC's start-up: at least four seconds of media.
    assert!(n >= 4 * FPS, "VLC wrote {n} frames");
}
