//! A real video through the whole path: ffmpeg cuts a test video into MPEG-TS
//! chunks; the origin publishes them live, encrypted; they pass through two
//! relays; `mlcache play` decrypts them; ffprobe finds every frame, and the
//! bytes match the source chunks exactly.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::TestProcess;

const FRAMES: u32 = 100; // 4 s at 25 fps

/// Starts a server binary on port 0 and reads the address it prints.
fn start(bin: &str, args: &[&str]) -> (TestProcess, SocketAddr) {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let p = TestProcess::start(cmd, false);
    let addr = p.addr;
    (p, addr)
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn ffmpeg_chunks_play_through_two_relays_decrypted_and_exact() {
    if !have("ffmpeg") || !have("ffprobe") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have ffmpeg and ffprobe (.ci/run installs them)"
        );
        eprintln!("SKIPPED: ffmpeg/ffprobe not installed (apt-get install ffmpeg)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mlcache-video-{}", std::process::id()));
    let chunks = dir.join("chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    // 1. A 4 s test video in 1 s MPEG-TS chunks (a keyframe starts each).
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=duration=4:size=320x240:rate=25")
        .args([
            "-c:v",
            "mpeg2video",
            "-q:v",
            "4",
            "-g",
            "25",
            "-f",
            "segment",
            "-segment_time",
            "1",
            "-segment_format",
            "mpegts",
        ])
        .arg(chunks.join("seg%03d.ts")));
    let mut files: Vec<_> = std::fs::read_dir(&chunks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "ffmpeg made {} chunks", files.len());
    let source: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();

    // 2. The origin publishes them live, encrypted, keys rotating every 2.
    let ca = dir.join("ca.pem");
    let (_origin, o) = start(
        env!("CARGO_BIN_EXE_mlcache-origin"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--live-dir",
            chunks.to_str().unwrap(),
            "--cadence",
            "250ms",
            "--token",
            "video-token",
            "--ca-out",
            ca.to_str().unwrap(),
            "--key-rotation",
            "2",
        ],
    );
    // 3. Two relays: B's parent is A.
    let allow = format!("http://{o}");
    let (_a, a) = start(
        env!("CARGO_BIN_EXE_mlcache-relay"),
        &["--listen", "127.0.0.1:0", "--allow-origin", &allow],
    );
    let parent = format!("http://{a}");
    let (_b, b) = start(
        env!("CARGO_BIN_EXE_mlcache-relay"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-origin",
            &allow,
            "--upstream",
            &parent,
        ],
    );
    // 4. The viewer plays the stream from its first chunk, through B.
    let out = dir.join("played.ts");
    let played = run(Command::new(env!("CARGO_BIN_EXE_mlcache"))
        .args([
            "play",
            &format!("mlcache://{o}/live/0"),
            "--from",
            "0",
            "--relay",
            &b.to_string(),
            "--token",
            "video-token",
        ])
        .args(["--ca", ca.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let log = String::from_utf8_lossy(&played.stderr);
    assert!(
        log.contains(&format!("{} chunk(s) delivered", files.len())),
        "{log}"
    );
    assert!(
        log.contains(&format!("{} from relay {b}", files.len())),
        "every chunk came through the relays: {log}"
    );

    // 5. ffprobe sees a valid stream with every frame.
    let probe = run(Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&out));
    let text = String::from_utf8_lossy(&probe.stdout);
    // MPEG-TS lists the stream under its program too: every line agrees.
    let lines: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    assert!(!lines.is_empty(), "ffprobe printed nothing");
    for f in &lines {
        assert_eq!(
            (f[0], f.get(1).copied()),
            ("mpeg2video", Some(FRAMES.to_string().as_str())),
            "ffprobe: {text}"
        );
    }
    // 6. Byte for byte the source chunks.
    let got = std::fs::read(&out).unwrap();
    assert!(
        got == source,
        "played {} bytes, source {} bytes",
        got.len(),
        source.len()
    );
    remove(&dir);
}

fn remove(dir: &Path) {
    std::fs::remove_dir_all(dir).ok();
}
