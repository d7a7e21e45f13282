//! Changes without dropping a viewer: a SIGHUP configuration reload, and an
//! upgrade in which a new relay process takes over the listening socket
//! (inherited systemd-style, `LISTEN_FDS`) while the old one drains. The
//! origin is `mlcache-origin --plaintext`, so every viewer checks each
//! chunk's exact bytes.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CHUNK: usize = 2048;
const LONG: Duration = Duration::from_secs(30);

fn origin(cadence: &str) -> TestProcess {
    TestProcess::origin(&[
        "--cadence",
        cadence,
        "--chunk-size",
        "2KiB",
        "--window",
        "600",
    ])
}

fn exact(seq: u64, body: &[u8]) -> bool {
    body.len() == CHUNK && {
        let ns = u64::from_be_bytes(body[..8].try_into().unwrap());
        mlcache::origin::chunk_bytes(0, seq, CHUNK, ns).as_ref() == body
    }
}

async fn live_edge(origin: SocketAddr) -> u64 {
    let req = http::Request::get("/live/0")
        .header("host", "origin")
        .body(http_body_util::Empty::new())
        .unwrap();
    let got = h1(origin, req).await.expect("edge info");
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    v["edge"].as_i64().unwrap().max(0) as u64
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mlcache-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A long-poll for a chunk not yet published is in flight across a SIGHUP
/// that changes the allow-list: it completes with the exact chunk; the new
/// allow-list applies to new requests; a changed restart-only setting is
/// logged as ignored; an invalid file is refused with a log line and the
/// previous configuration stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_without_losing_a_viewer() {
    let a = origin("1s");
    let b = manual_origin().await;
    let dir = tempdir("reload");
    let file = dir.join("relay.toml");
    std::fs::write(&file, format!("allow-origin = [\"http://{}\"]\n", a.addr)).unwrap();
    let p = TestProcess::relay_with("", &["--config", file.to_str().unwrap()], true);

    // Origin B is not allowed yet.
    let got = h1(p.addr, proxy_get(b.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, 403, "{got:?}");

    // A long-poll for the chunk after next, held until it is published.
    let seq = live_edge(a.addr).await + 2;
    let relay = p.addr;
    let (ao, started) = (a.addr, Instant::now());
    let held =
        tokio::spawn(async move { h2(relay, proxy_get(ao, &format!("/live/0/{seq}"))).await });
    tokio::time::sleep(Duration::from_millis(100)).await; // let it reach the relay
    std::fs::write(
        &file,
        format!(
            "allow-origin = [\"http://{}\", \"{}\"]\ncache-size = \"64MiB\"\n",
            a.addr,
            b.url()
        ),
    )
    .unwrap();
    p.signal("-HUP");
    let log = p.log.clone();
    until(LONG, "reload logged", || {
        log.lock()
            .iter()
            .any(|l| l.contains("configuration reloaded"))
    })
    .await;
    assert!(
        !held.is_finished(),
        "the long-poll was still in flight at the reload"
    );
    let got = held.await.unwrap().unwrap();
    assert_eq!(got.status, 200);
    assert!(
        exact(seq, got.bytes()),
        "the held chunk arrived whole and exact"
    );
    eprintln!("long-poll across SIGHUP: {:?}", started.elapsed());
    assert!(
        log.lock()
            .iter()
            .any(|l| l.contains("need a restart were ignored") && l.contains("cache-size")),
        "restart-only change logged: {:?}",
        log.lock()
    );
    let got = h1(p.addr, proxy_get(b.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, 200, "new allow-list applies to new requests");

    // An invalid file: refused, logged, the old configuration stays.
    std::fs::write(
        &file,
        "allow-origin = [\"ftp://nope\"]\nmax-wait = \"soon\"\n",
    )
    .unwrap();
    p.signal("-HUP");
    until(LONG, "refusal logged", || {
        log.lock()
            .iter()
            .any(|l| l.contains("configuration reload refused"))
    })
    .await;
    let got = h1(p.addr, proxy_get(b.addr, "/vod/2")).await.unwrap();
    assert_eq!(got.status, 200, "old configuration kept");
    let seq = live_edge(a.addr).await;
    let got = h1(p.addr, proxy_get(a.addr, &format!("/live/0/{seq}")))
        .await
        .unwrap();
    assert!(exact(seq, got.bytes()));
    let _ = std::fs::remove_dir_all(dir);
}

/// `mlcache-relay` on the listening socket `fd`, passed as fd 3 with
/// `LISTEN_PID` / `LISTEN_FDS` as systemd would.
fn relay_on_fd(fd: i32, args: &[&str]) -> TestProcess {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mlcache-relay"))
        .args(["--admin", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info");
    // SAFETY: only async-signal-safe dup2 between fork and exec; dup2 clears
    // close-on-exec on the copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    TestProcess::start(cmd, true)
}

/// 200 viewers (half h1, half h2, a fresh connection per chunk) loop over
/// live chunks while a new relay process starts on the same listening
/// socket and the old one gets SIGTERM and drains: 0 errors, 0 chunks lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_the_socket_over_with_zero_errors() {
    const VIEWERS: usize = 200;
    let o = origin("500ms");
    let allow = format!("http://{}", o.addr);
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let fd = socket.as_raw_fd();
    let args = [
        "--allow-origin",
        allow.as_str(),
        "--drain-delay",
        "1s",
        "--shutdown-grace",
        "10s",
    ];
    let mut old = relay_on_fd(fd, &args);
    assert_eq!(old.addr, addr, "the relay serves the inherited socket");

    let first = live_edge(o.addr).await + 1;
    let chunks = 14u64;
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut viewers = Vec::new();
    for v in 0..VIEWERS {
        let (errors, done, origin) = (errors.clone(), done.clone(), o.addr);
        viewers.push(tokio::spawn(async move {
            for seq in first..first + chunks {
                let req = proxy_get(origin, &format!("/live/0/{seq}"));
                let got = if v % 2 == 0 {
                    h1(addr, req).await
                } else {
                    h2(addr, req).await
                };
                match got {
                    Ok(g) if g.status == 200 && g.body.as_ref().is_ok_and(|b| exact(seq, b)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("viewer {v} chunk {seq}: {other:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    until(LONG, "viewers under way", || {
        done.load(Ordering::Relaxed) >= VIEWERS * 3
    })
    .await;
    let new = relay_on_fd(fd, &args);
    assert_eq!(new.addr, addr);
    old.sigterm();
    let t = Instant::now();
    until(LONG, "the old relay exits", || !old.alive()).await;
    eprintln!("old relay drained and exited in {:?}", t.elapsed());
    assert_eq!(old.child.wait().unwrap().code(), Some(0));
    for v in viewers {
        v.await.unwrap();
    }
    let served_by_new = metric(new.admin(), "mlcache_requests_total{result=\"hit\"}").await
        + metric(new.admin(), "mlcache_requests_total{result=\"miss\"}").await
        + metric(new.admin(), "mlcache_requests_total{result=\"coalesced\"}").await;
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "upgrade: {total} chunks delivered, {} errors, new relay answered {served_by_new}",
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "viewer errors across the upgrade"
    );
    assert_eq!(total, VIEWERS * chunks as usize, "chunks lost");
    assert!(served_by_new > 0.0, "the new relay took over");
}

/// `check-config FILE [FLAGS]`: the shipped example is valid and its
/// effective settings are printed with flags applied over the file; an
/// unknown key or a bad value exits 1 naming what is wrong.
#[test]
fn check_config_validates_and_prints_the_effective_settings() {
    let bin = env!("CARGO_BIN_EXE_mlcache-relay");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/relay.example.toml");
    let out = Command::new(bin)
        .args(["check-config", example, "--max-wait", "7s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("max-wait = \"7s\""), "{text}");
    assert!(
        text.contains("allow-origin = [\"http://127.0.0.1:9100\"]"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("mlcache-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (body, names) in [
        ("allow-origin = [\"http://a\"]\nbogus = 1\n", "bogus"),
        (
            "allow-origin = [\"http://a\"]\nmax-wait = \"soon\"\n",
            "max-wait",
        ),
        ("allow-origin = [\"ftp://a\"]\n", "ftp"),
    ] {
        let file = dir.join("relay.toml");
        std::fs::write(&file, body).unwrap();
        let out = Command::new(bin)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body}: {out:?}");
        assert!(err.contains(names), "{body}: {err}");
    }
    let out = Command::new(bin).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).ok();
}

/// Bogus `LISTEN_FDS` from a starter: a clear refusal (exit 1, naming the
/// problem), never an abort or a hang.
#[test]
fn bogus_inherited_sockets_are_refused_clearly() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let file_fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    for (fds, dup, expect) in [
        ("2147483647", None, "LISTEN_FDS=2147483647"),
        ("1", Some(file_fd), "inherited fd 3"),
    ] {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("LISTEN_PID=$$ LISTEN_FDS={fds} exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_mlcache-relay"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--allow-origin", "http://127.0.0.1:1"])
            .stdin(std::process::Stdio::null());
        if let Some(fd) = dup {
            // SAFETY: only async-signal-safe dup2 between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "LISTEN_FDS={fds}: {err}");
        assert!(err.contains(expect), "LISTEN_FDS={fds}: {err}");
    }
}
