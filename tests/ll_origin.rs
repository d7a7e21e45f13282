//! The LL-HLS / LL-DASH head end of `mlcache-origin`, end to end: the real
//! binary with a real ffmpeg feed, over real sockets.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ll::{get, playlist_when, warm};
use common::{h1, TestProcess};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// `mlcache-origin` on an ephemeral port with `args`.
fn origin(args: &[&str]) -> TestProcess {
    TestProcess::origin(args)
}

fn text(g: &common::Got) -> String {
    String::from_utf8_lossy(g.bytes()).to_string()
}

fn header<'a>(g: &'a common::Got, name: &str) -> &'a str {
    g.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The preload hint `(msn, part)` of a media playlist.
fn hint(playlist: &str) -> (u64, usize) {
    let uri = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part"))
        .unwrap_or_else(|| panic!("no preload hint in {playlist}"));
    let (m, rest) = uri.split_once('.').unwrap();
    let p = rest.split_once('.').unwrap().0;
    (m.parse().unwrap(), p.parse().unwrap())
}

/// Frames ffprobe decodes from `bytes`.
fn probe_frames(name: &str, bytes: &[u8]) -> u64 {
    let path = std::env::temp_dir().join(format!("mlcache-ll-{}-{name}.mp4", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let n = common::nginx::ffprobe_frames(&path);
    let _ = std::fs::remove_file(&path);
    n
}

/// Blocking reload, preload-hinted parts, far-ahead refusals, parts adding up
/// to their segment, headers, and the request counts in `/stats`.
#[tokio::test]
async fn ll_hls_blocking_reload_and_hinted_parts() {
    let o = origin(&[
        "--ll",
        "--part-duration",
        "200ms",
        "--segment-duration",
        "1s",
    ]);
    let addr = o.addr;
    warm(addr, 2).await;

    let master = get(addr, "/ll/master.m3u8").await;
    assert_eq!(master.status, StatusCode::OK);
    assert_eq!(
        header(&master, "content-type"),
        "application/vnd.apple.mpegurl"
    );
    assert!(text(&master).contains("CODECS=\"avc1.") && text(&master).contains("\nmedia.m3u8\n"));

    let plain = get(addr, "/ll/media.m3u8").await;
    let p = text(&plain);
    assert_eq!(header(&plain, "cache-control"), "public, max-age=1");
    assert_eq!(header(&plain, "access-control-allow-origin"), "*");
    assert_eq!(header(&plain, "access-control-expose-headers"), "Age, Date");
    for tag in [
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,PART-HOLD-BACK=0.600",
        "#EXT-X-PART-INF:PART-TARGET=0.200",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "INDEPENDENT=YES",
    ] {
        assert!(p.contains(tag), "{tag} missing: {p}");
    }

    // PROGRAM-DATE-TIME is wall-clock time: the segment in production
    // started less than a segment (plus a part of arrival slack) ago.
    let pdt = p
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .unwrap();
    let started = humantime::parse_rfc3339_weak(pdt).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap_or_else(|e| panic!("PDT {pdt} is {:?} in the future", e.duration()));
    assert!(
        age < Duration::from_millis(1500),
        "PDT {pdt} is {age:?} old"
    );

    // The hinted part and the playlist that lists it: both held, both
    // answered within a part duration (plus scheduling slack) of the ask.
    let (m, i) = hint(&p);
    let asked = Instant::now();
    let blocking = format!("/ll/media.m3u8?_HLS_msn={m}&_HLS_part={i}");
    let part_path = format!("/ll/part{m}.{i}.mp4");
    let (pl, part) = tokio::join!(get(addr, &blocking), get(addr, &part_path));
    let took = asked.elapsed();
    assert_eq!(pl.status, StatusCode::OK);
    assert_eq!(part.status, StatusCode::OK);
    assert!(took < Duration::from_millis(200 + 400), "held {took:?}");
    assert!(
        text(&pl).contains(&format!("URI=\"part{m}.{i}.mp4\"")),
        "{}",
        text(&pl)
    );
    assert_eq!(header(&pl, "cache-control"), "public, max-age=60");
    assert_eq!(header(&part, "content-type"), "video/mp4");
    assert_eq!(header(&part, "cache-control"), "public, max-age=3600");
    assert_eq!(&part.bytes()[4..8], b"moof");
    // An answer for a version that exists comes at once.
    let t = Instant::now();
    assert_eq!(get(addr, &blocking).await.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_millis(150));

    // Too far ahead: 400 for the playlist, 404 for a part.
    let far = get(addr, &format!("/ll/media.m3u8?_HLS_msn={}", m + 3)).await;
    assert_eq!(far.status, StatusCode::BAD_REQUEST);
    let far = get(addr, &format!("/ll/part{}.0.mp4", m + 3)).await;
    assert_eq!(far.status, StatusCode::NOT_FOUND);
    assert_eq!(header(&far, "access-control-allow-origin"), "*");
    assert_eq!(
        get(addr, "/ll/media.m3u8?_HLS_part=1").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(addr, "/ll/partx.mp4").await.status,
        StatusCode::BAD_REQUEST
    );

    // Once segment m is complete: its parts (the held one as it was served)
    // add up to the segment, and init + segment decodes.
    let done = get(addr, &format!("/ll/media.m3u8?_HLS_msn={}", m + 1)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", text(&done));
    assert!(text(&done).contains(&format!("seg{m}.mp4")));
    let seg = get(addr, &format!("/ll/seg{m}.mp4")).await;
    assert_eq!(seg.status, StatusCode::OK);
    let mut joined = Vec::new();
    for k in 0..5 {
        let g = get(addr, &format!("/ll/part{m}.{k}.mp4")).await;
        assert_eq!(g.status, StatusCode::OK, "part {m}.{k}");
        if k == i {
            assert_eq!(g.bytes(), part.bytes(), "the held part is the part");
        }
        joined.extend_from_slice(g.bytes());
    }
    assert_eq!(
        get(addr, &format!("/ll/part{m}.5.mp4")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(joined, seg.bytes().to_vec(), "parts add up to the segment");
    let init = get(addr, "/ll/init.mp4").await;
    assert_eq!(header(&init, "cache-control"), "public, max-age=3600");
    let mut whole = init.bytes().to_vec();
    whole.extend_from_slice(seg.bytes());
    assert_eq!(probe_frames("seg", &whole), 25, "one second at 25 fps");

    // Preflight.
    let req = Request::options("/ll/media.m3u8")
        .header("host", "o")
        .header("origin", "https://player.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let pre = h1(addr, req).await.unwrap();
    assert_eq!(pre.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&pre, "access-control-allow-origin"), "*");

    // /stats counts by path and query: the held playlist version was asked
    // twice, the held part once before the loop and once in it.
    let stats: serde_json::Value =
        serde_json::from_slice(get(addr, "/stats").await.bytes()).unwrap();
    assert_eq!(stats["requests"][&blocking], 2, "{stats}");
    assert_eq!(stats["requests"][&part_path], 2, "{stats}");
}

/// A version that never comes (the feed ended) is answered 503 after three
/// target durations; the next segment of an ended feed is 404 at once.
#[tokio::test]
async fn ll_hls_unreachable_version_is_503_after_three_target_durations() {
    let file = std::env::temp_dir().join(format!("mlcache-ll-feed-{}.mp4", std::process::id()));
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=160x90:rate=25", "-t", "3"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-sc_threshold",
            "0",
        ])
        .args(["-pix_fmt", "yuv420p", "-f", "mp4"])
        .args(["-movflags", "empty_moov+default_base_moof+frag_every_frame"])
        .arg(&file)
        .output()
        .expect("ffmpeg is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = origin(&["--feed", file.to_str().unwrap()]);
    let addr = o.addr;
    // The feed is 3 s long: wait for the origin to see its end, not only
    // for its third segment (the end list comes a moment later).
    let p = playlist_when(addr, |p| p.contains("#EXT-X-ENDLIST")).await;
    let _ = std::fs::remove_file(&file);
    assert_eq!(p.matches("#EXTINF").count(), 3, "{p}");
    assert!(p.ends_with("#EXT-X-ENDLIST\n"), "{p}");
    assert!(!p.contains("PRELOAD-HINT"));

    let t = Instant::now();
    let g = get(addr, "/ll/media.m3u8?_HLS_msn=3&_HLS_part=0").await;
    let took = t.elapsed();
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&g, "cache-control"), "no-store");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // Allowed (2 past the last) is held; 3 past is refused.
    let g = get(addr, "/ll/media.m3u8?_HLS_msn=5").await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
    let t = Instant::now();
    assert_eq!(
        get(addr, "/dash/seg3.m4s").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(addr, "/ll/part3.0.mp4").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // What exists is still served, whole, with its length.
    let seg = get(addr, "/dash/seg1.m4s").await;
    assert_eq!(seg.status, StatusCode::OK);
    assert_eq!(
        header(&seg, "content-length"),
        seg.bytes().len().to_string()
    );
}

/// LL-DASH: the MPD's low-latency attributes, the time endpoint, and a
/// segment asked for before it starts: held, then streamed as produced.
#[tokio::test]
async fn ll_dash_segment_streams_while_produced() {
    let o = origin(&["--ll", "--hold", "3s"]);
    let addr = o.addr;
    let p = warm(addr, 1).await;

    let mpd = get(addr, "/dash/manifest.mpd").await;
    assert_eq!(mpd.status, StatusCode::OK);
    assert_eq!(header(&mpd, "content-type"), "application/dash+xml");
    let m = text(&mpd);
    for want in [
        "type=\"dynamic\"",
        "availabilityStartTime=\"",
        "availabilityTimeOffset=\"0.800\"",
        "availabilityTimeComplete=\"false\"",
        "media=\"seg$Number$.m4s\"",
        "initialization=\"init.mp4\"",
        "<Latency referenceId=\"0\" target=\"",
        &format!("value=\"http://{addr}/dash/time\""),
    ] {
        assert!(m.contains(want), "{want} missing: {m}");
    }
    let time = text(&get(addr, "/dash/time").await);
    assert!(time.len() == 24 && time.ends_with('Z'), "{time}");

    // The segment after the one in production (or the next if none is).
    let (msn, part) = hint(&p);
    let next = if part == 0 { msn } else { msn + 1 };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let asked = Instant::now();
    let req = Request::get(format!("/dash/seg{next}.m4s"))
        .header("host", "o")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("content-length").is_none(),
        "streamed, not whole"
    );
    let mut body = resp.into_body();
    let (mut bytes, mut arrivals) = (Vec::new(), Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            arrivals.push(asked.elapsed());
            bytes.extend_from_slice(&d);
        }
    }
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    // The segment lasts 1 s: its first bytes come well before it is done,
    // and the body grows across most of that second.
    assert!(arrivals.len() >= 10, "{} frames", arrivals.len());
    assert!(
        last - first >= Duration::from_millis(600),
        "{first:?}..{last:?}"
    );
    assert!(first < last - Duration::from_millis(500));
    let whole = get(addr, &format!("/dash/seg{next}.m4s")).await;
    assert_eq!(
        whole.bytes().to_vec(),
        bytes,
        "late joiner gets the same bytes"
    );
    let mut file = get(addr, "/dash/init.mp4").await.bytes().to_vec();
    file.extend_from_slice(&bytes);
    assert_eq!(probe_frames("dash", &file), 25);
    // Far ahead: 404 at once.
    let t = Instant::now();
    assert_eq!(
        get(addr, &format!("/dash/seg{}.m4s", next + 3))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}
