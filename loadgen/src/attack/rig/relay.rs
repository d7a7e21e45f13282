//! The relay under attack as a process: its flags (the attack's defaults
//! merged with the user's, minus those this build's `--help` does not list),
//! where its binary is, and starting it with its log in a file. The
//! addresses it prints are read through `crate::child`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::super::{AttackArgs, Kind};
use crate::child::spawn_listening;

/// Longest the relay may take to print its address.
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Relay flags as `(flag, value)` pairs, in order.
#[derive(Debug, Clone, Default)]
pub struct RelayArgs {
    flags: Vec<(String, Option<String>)>,
    /// Default flags this relay build does not know, left out.
    pub omitted: Vec<String>,
}

impl RelayArgs {
    /// Parses `--flag value`, `--flag=value` and `--switch` tokens; a token
    /// may hold several words (`"--idle-timeout 10s"`).
    pub fn parse<S: AsRef<str>>(tokens: &[S]) -> RelayArgs {
        let words: Vec<&str> = tokens
            .iter()
            .flat_map(|t| t.as_ref().split_whitespace())
            .collect();
        let mut flags = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            if let Some((f, v)) = w.split_once('=').filter(|_| w.starts_with("--")) {
                flags.push((f.to_string(), Some(v.to_string())));
            } else if w.starts_with("--") && words.get(i + 1).is_some_and(|n| !n.starts_with("--"))
            {
                flags.push((w.to_string(), Some(words[i + 1].to_string())));
                i += 1;
            } else {
                flags.push((w.to_string(), None));
            }
            i += 1;
        }
        RelayArgs {
            flags,
            omitted: Vec::new(),
        }
    }

    /// The attack's defaults, minus those the user gives, then the user's.
    /// Defaults the relay's `--help` does not list are left out (the flag
    /// may not exist yet in this build); the user's are passed as given.
    pub fn merged(defaults: &[(&str, &str)], user: &RelayArgs, help: Option<&str>) -> RelayArgs {
        let mut out = RelayArgs::default();
        for (f, v) in defaults {
            if user.flags.iter().any(|(u, _)| u == f) {
                continue;
            }
            if help.is_some_and(|h| !lists_flag(h, f)) {
                out.omitted.push(format!("{f} {v}"));
                continue;
            }
            out.flags.push((f.to_string(), Some(v.to_string())));
        }
        out.flags.extend(user.flags.iter().cloned());
        out
    }

    /// The value of `flag`, if given.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .and_then(|(_, v)| v.as_deref())
    }

    /// As command-line words.
    pub fn to_vec(&self) -> Vec<String> {
        self.flags
            .iter()
            .flat_map(|(f, v)| std::iter::once(f.clone()).chain(v.clone()))
            .collect()
    }

    /// As one line.
    pub fn display(&self) -> String {
        let mut s = self.to_vec().join(" ");
        if s.is_empty() {
            s = "(defaults)".into();
        }
        for o in &self.omitted {
            s.push_str(&format!(" [{o}: not in this relay's --help, left out]"));
        }
        s
    }
}

/// Whether `help` lists `flag` as a whole word.
fn lists_flag(help: &str, flag: &str) -> bool {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|w| w == flag)
}

/// Where `mlcache-relay` is: `--relay-bin`, or next to this executable.
fn relay_bin(args: &AttackArgs) -> anyhow::Result<PathBuf> {
    if let Some(b) = &args.relay_bin {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = exe.with_file_name("mlcache-relay");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release) or pass --relay-bin",
        bin.display()
    );
    Ok(bin)
}

/// The relay process the rig started.
pub(super) struct RelayProcess {
    /// The process (killed on drop, and with this one).
    pub(super) child: Child,
    /// Its viewer address.
    pub(super) addr: SocketAddr,
    /// Its admin address.
    pub(super) admin: SocketAddr,
    /// The flags it was given beyond listen, admin, id and allow-origin.
    pub(super) args: RelayArgs,
    /// Where its stderr goes.
    pub(super) log: PathBuf,
}

/// Starts `mlcache-relay` for `kind`, allowing `origins` (URLs), with the
/// kind's default flags merged with the user's.
pub(super) async fn start_relay(
    kind: Kind,
    args: &AttackArgs,
    origins: &[String],
) -> anyhow::Result<RelayProcess> {
    let bin = relay_bin(args)?;
    let help = Command::new(&bin)
        .arg("--help")
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let relay_args = RelayArgs::merged(
        kind.default_relay_args(),
        &RelayArgs::parse(&args.relay_args),
        help.as_deref(),
    );
    let mut all = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--id".into(),
        "attack-relay".into(),
    ];
    for o in origins {
        all.extend(["--allow-origin".to_string(), o.clone()]);
    }
    all.extend(relay_args.to_vec());
    let log = std::env::temp_dir().join(format!(
        "mlcache-attack-{}-{}.log",
        kind.name(),
        std::process::id()
    ));
    let (child, addr, admin) = spawn_relay(&bin, &all, &log).await?;
    Ok(RelayProcess {
        child,
        addr,
        admin,
        args: relay_args,
        log,
    })
}

/// Starts the relay as a child process (killed with this one) and reads
/// `listening ADDR` and `admin ADDR` from its stdout. Its stderr goes to
/// `log`; if it never listens, the end of that log says why.
async fn spawn_relay(
    bin: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stderr(log_file)
        // The relay's own default filter unless the caller set one: the
        // warn-and-above count in the report is then what an operator sees.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| mlcache::DEFAULT_LOG_FILTER.into()),
        );
    let started = spawn_listening(cmd, "the relay", true, RELAY_START_TIMEOUT)
        .await
        .map_err(|e| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            anyhow::anyhow!(
                "{e:#}; the end of its log:\n{}",
                lines[lines.len().saturating_sub(10)..].join("\n")
            )
        })?;
    let admin = started
        .admin
        .context("the relay printed no admin address")?;
    Ok((started.child, started.addr, admin))
}
