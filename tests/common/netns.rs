//! Network namespaces for the anycast tests: `ip` itself, processes started
//! inside a namespace (killed with their process group on drop), polling
//! with a deadline from plain threads, and the check every viewer's output
//! must pass (each live chunk once, in order, bytes exact).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlcache::origin::chunk_bytes;

/// Runs `ip ARGS`; its stderr as the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A process (and its process group) in a namespace; killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Sends `sig` (e.g. `-TERM`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: whatever it started (a health check's curl).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin ARGS` in namespace `ns` in a process group of its own, with
/// `env` added and stderr to `log`.
pub fn spawn_in(ns: &str, bin: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    let err = Stdio::from(std::fs::File::create(log).unwrap());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, bin])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0);
    Proc(cmd.spawn().expect("spawn in namespace"))
}

/// Polls `cond` every 10 ms until it holds; the time it took. Panics after
/// `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// A viewer's output of `chunks` live chunks of `chunk` bytes (stream 0):
/// every sequence number exactly once, in order, each chunk's bytes exact.
pub fn check_output(path: &Path, chunks: u64, chunk: usize) -> Vec<u64> {
    let out = std::fs::read(path).unwrap();
    assert_eq!(
        out.len(),
        chunks as usize * chunk,
        "{}: every chunk, whole",
        path.display()
    );
    let seqs: Vec<u64> = out
        .chunks(chunk)
        .map(|c| {
            let ns = u64::from_be_bytes(c[..8].try_into().unwrap());
            let seq = u64::from_be_bytes(c[8..16].try_into().unwrap());
            assert!(
                c == &chunk_bytes(0, seq, chunk, ns)[..],
                "chunk {seq} verifies"
            );
            seq
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no chunk lost or repeated: {seqs:?}"
    );
    seqs
}
