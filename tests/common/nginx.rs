//! Real nginx (and ffmpeg) for the tests that put a plain web server behind
//! the relay: a throw-away nginx serving a directory on a free loopback
//! port, its access log readable per path, and an ffmpeg writing live HLS
//! into that directory. Everything lives in a [`TempDir`] removed on drop;
//! the processes are killed on drop.
//!
//! Missing tools: [`require`] skips the test with a line on stderr, except
//! under `CI` (set by CI), where a missing tool fails the test, since
//! `.ci/run` installs them.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `mlcache-<name>-<pid>-<n>`, created empty.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mlcache-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where `tool` is: on `PATH`, or in `/usr/sbin` (nginx, for a user
/// without sbin on `PATH`).
pub fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether every tool is installed. If one is not: under CI the test fails
/// (`.ci/run` installs them); elsewhere it prints `SKIPPED` and the caller
/// returns.
pub fn require(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {missing:?} (.ci/run installs them)"
    );
    eprintln!("SKIPPED: {missing:?} not installed");
    false
}

/// A free loopback port (bound and released: nginx binds it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An nginx serving one directory on `127.0.0.1`, in the foreground, as one
/// process (`daemon off; master_process off;`), with its access log, pid
/// file and temp paths in a directory of its own.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, for `--allow-origin`.
    pub url: String,
    access_log: PathBuf,
    error_log: PathBuf,
    _work: TempDir,
}

impl Nginx {
    /// Starts nginx serving `root` and waits until it accepts connections.
    /// Call [`require`]`(&["nginx"])` first.
    pub fn serve(root: &Path) -> Nginx {
        let bin = find("nginx").expect("nginx installed (see require)");
        let mut last = String::new();
        // The port is picked free and released before nginx binds it, so
        // another process may take it in between: try a few.
        for _ in 0..5 {
            match Self::try_serve(&bin, root) {
                Ok(n) => return n,
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn try_serve(bin: &Path, root: &Path) -> Result<Nginx, String> {
        let work = TempDir::new("nginx");
        let w = work.path();
        for d in ["client", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        let port = free_port();
        let access_log = w.join("access.log");
        let error_log = w.join("error.log");
        // Segments never change once written, so they say so, as an
        // operator's config would (docs/players.md); the playlist says
        // nothing and gets the relay's heuristic lifetime.
        // As root, nginx would switch to `nobody` for workers only with a
        // master process; with none it serves as the user that started it.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {w}/nginx.pid;\n\
             error_log {err} info;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  types {{ application/vnd.apple.mpegurl m3u8; video/mp4 mp4 m4s; \
             video/mp2t ts; application/dash+xml mpd; }}\n  default_type application/octet-stream;\n\
             access_log {acc};\n  client_body_temp_path {w}/client;\n  proxy_temp_path {w}/proxy;\n\
             fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
             keepalive_requests 100000;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
             add_header Access-Control-Allow-Origin *;\n\
             location ~ \\.(m4s|mp4|ts)$ {{\n      add_header Access-Control-Allow-Origin *;\n\
             add_header Cache-Control \"max-age=60\";\n    }}\n  }}\n}}\n",
            w = w.display(),
            err = error_log.display(),
            acc = access_log.display(),
            root = root.display(),
        );
        let conf_path = w.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(w)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {bin:?}: {e}"))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                return Err(format!("nginx exited {status}: {log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("nginx did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            child,
            addr,
            url: format!("http://{addr}"),
            access_log,
            error_log,
            _work: work,
        })
    }

    /// The access log's lines so far (nginx writes each request at once).
    pub fn access_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many requests for exactly `path` (e.g. `/seg7.m4s`) the access log
    /// shows, with their statuses: `(count, count answered 404)`.
    pub fn requests(&self, path: &str) -> (usize, usize) {
        let needle = format!(" {path} HTTP/");
        let lines: Vec<String> = self
            .access_lines()
            .into_iter()
            .filter(|l| l.contains(&needle))
            .collect();
        let not_found = lines
            .iter()
            .filter(|l| {
                l.split('"')
                    .nth(2)
                    .is_some_and(|s| s.trim_start().starts_with("404"))
            })
            .count();
        (lines.len(), not_found)
    }

    /// Its error log, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ffmpeg writing live HLS (fMP4, 1 s segments at 25 fps, keyframe every
/// second, `temp_file` so a segment appears whole, by rename) from a
/// `testsrc2` source into a directory, for at most `limit`; killed on drop.
pub struct LiveHls {
    child: Child,
    /// The directory it writes.
    pub dir: PathBuf,
}

/// The media playlist's name in [`LiveHls::dir`].
pub const PLAYLIST: &str = "live.m3u8";

impl LiveHls {
    /// Starts ffmpeg into `dir`. Call [`require`]`(&["ffmpeg"])` first.
    pub fn start(dir: &Path, limit: Duration) -> LiveHls {
        let child = Command::new(find("ffmpeg").expect("ffmpeg installed (see require)"))
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
            .args(["-t", &limit.as_secs().max(1).to_string()])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
            .args(["-f", "hls", "-hls_time", "1", "-hls_list_size", "6"])
            .args(["-hls_flags", "delete_segments+temp_file"])
            .args(["-hls_segment_type", "fmp4"])
            .args(["-hls_fmp4_init_filename", "init.mp4"])
            .arg("-hls_segment_filename")
            .arg(dir.join("seg%d.m4s"))
            .arg(dir.join(PLAYLIST))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ffmpeg");
        LiveHls {
            child,
            dir: dir.to_owned(),
        }
    }

    /// Whether ffmpeg still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The playlist as written so far (empty if none yet).
    pub fn playlist(&self) -> String {
        std::fs::read_to_string(self.dir.join(PLAYLIST)).unwrap_or_default()
    }
}

impl Drop for LiveHls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The segment URIs of a media playlist, in order, with their media
/// sequence numbers (`#EXT-X-MEDIA-SEQUENCE` plus position).
pub fn segments(playlist: &str) -> Vec<(u64, String)> {
    let mut seq = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut out = Vec::new();
    for line in playlist.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push((seq, line.to_owned()));
        seq += 1;
    }
    out
}

/// Video frames ffprobe decodes from the file at `path` (0 if none).
pub fn ffprobe_frames(path: &Path) -> u64 {
    let out = Command::new(find("ffprobe").expect("ffprobe installed (see require)"))
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {path:?}: {out:?}");
    // MPEG-TS may list the stream under more than one program: one line each.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
