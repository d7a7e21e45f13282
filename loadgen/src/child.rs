//! Child processes that print where they listen: the demo's origin and
//! relays, and the attack's relay. Each is started with its stdout piped,
//! killed when its handle drops and by the kernel if this process dies
//! first (`PR_SET_PDEATHSIG`); its `listening ADDR` (and `admin ADDR`)
//! lines are read within a bound, and the rest of its stdout is drained so
//! it never blocks on a full pipe.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A started child and the addresses it printed.
pub struct Listening {
    /// The process (killed on drop).
    pub child: Child,
    /// Its `listening ADDR`.
    pub addr: SocketAddr,
    /// Its `admin ADDR`, when one was asked for.
    pub admin: Option<SocketAddr>,
}

impl Listening {
    /// Its pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts `cmd` (its arguments, stderr and environment already set) and
/// waits at most `within` for `listening ADDR`, and for `admin ADDR` too
/// when `wants_admin`. `name` labels the errors.
pub async fn spawn_listening(
    mut cmd: Command,
    name: &str,
    wants_admin: bool,
    within: Duration,
) -> anyhow::Result<Listening> {
    cmd.stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        let mut addr = None;
        let mut admin = None;
        while let Some(line) = lines.next_line().await? {
            let mut w = line.split_whitespace();
            match (
                w.next(),
                w.next().and_then(|a| a.parse::<SocketAddr>().ok()),
            ) {
                (Some("listening"), Some(a)) => addr = Some(a),
                (Some("admin"), Some(a)) => admin = Some(a),
                _ => {}
            }
            if addr.is_some() && (admin.is_some() || !wants_admin) {
                break;
            }
        }
        Ok::<_, std::io::Error>((addr, admin))
    };
    let (addr, admin) = tokio::time::timeout(within, read)
        .await
        .with_context(|| format!("{name} did not report its address in {within:?}"))??;
    let addr = addr
        .filter(|_| admin.is_some() || !wants_admin)
        .with_context(|| format!("{name} exited before listening"))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Listening { child, addr, admin })
}

/// The `mlcache` arguments of a live origin on an ephemeral loopback port
/// publishing `chunk_size`-byte chunks every `cadence`, `publish` being
/// `whole` or `progressive` (the demo's and the flash crowd's origin).
pub fn origin_args(cadence: Duration, chunk_size: usize, publish: &str) -> Vec<String> {
    [
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--cadence",
        &format!("{}ms", cadence.as_millis()),
        "--chunk-size",
        &chunk_size.to_string(),
        "--publish",
        publish,
    ]
    .map(str::to_string)
    .to_vec()
}
