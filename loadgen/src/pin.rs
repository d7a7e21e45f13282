//! `--pin`: relays on one core, the loadgen and the origin on the other(s),
//! so that a figure measures the relay and not the scheduler shuffling
//! five processes over two cores.
//!
//! The [`Plan`] is made from this process's allowed CPUs: the last one for
//! relays, the rest for everything else. Processes this loadgen starts are
//! pinned between fork and exec ([`Plan::pre_exec`]), so every thread they
//! create inherits the mask; running processes given by pid (and this
//! process, whose runtime threads already exist) are pinned thread by thread
//! through `/proc/PID/task` ([`set`]). [`allowed_list`] reads a mask back the
//! way the kernel reports it, for reports and tests.

use std::io;

/// Where relays and everything else run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// CPUs for relays.
    pub relay: Vec<usize>,
    /// CPUs for the loadgen, its workers and the origin.
    pub rest: Vec<usize>,
}

fn mask(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; CPU_ZERO/CPU_SET only write into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

/// The CPUs this process may run on.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

impl Plan {
    /// Splits the allowed CPUs: the last for relays, the others for the
    /// rest. Fails on a one-CPU machine, where pinning cannot separate them.
    /// Made once per process: after [`Plan::pin_self`] this process may run
    /// on fewer CPUs, and a second plan (the demo's, then its live run's)
    /// must be the same one.
    pub fn new() -> anyhow::Result<Plan> {
        static FIRST: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
        let cpus = match FIRST.get() {
            Some(c) => c.clone(),
            None => FIRST.get_or_init(|| allowed().unwrap_or_default()).clone(),
        };
        anyhow::ensure!(
            cpus.len() >= 2,
            "--pin needs at least two CPUs to separate relays from the loadgen (allowed: {cpus:?})"
        );
        let (rest, relay) = cpus.split_at(cpus.len() - 1);
        Ok(Plan {
            relay: relay.to_vec(),
            rest: rest.to_vec(),
        })
    }

    /// Pins this process (every thread it has) to the non-relay CPUs;
    /// children started afterwards inherit that.
    pub fn pin_self(&self) -> io::Result<()> {
        set(std::process::id(), &self.rest)
    }

    /// Pins running relay processes.
    pub fn pin_relays(&self, pids: &[u32]) -> io::Result<()> {
        for &p in pids {
            set(p, &self.relay)?;
        }
        Ok(())
    }

    /// Makes `cmd` start on `cpus`: the mask is set between fork and exec,
    /// so the new program and all its threads inherit it.
    pub fn pre_exec(cmd: &mut tokio::process::Command, cpus: &[usize]) {
        let set = mask(cpus);
        // SAFETY: sched_setaffinity is a plain syscall (async-signal-safe);
        // the mask was built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "pinned: relays on CPU {}, loadgen and origin on CPU {}",
            list(&self.relay),
            list(&self.rest)
        )
    }
}

/// `0,2-3` style, as the kernel writes masks.
fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins every thread of process `pid` to `cpus`. A thread that exits
/// meanwhile is skipped.
pub fn set(pid: u32, cpus: &[usize]) -> io::Result<()> {
    let set = mask(cpus);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: sched_setaffinity reads the local mask.
        let r =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A process's `Cpus_allowed_list` from /proc/PID/status (e.g. `1` or `0-1`).
pub fn allowed_list(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// What a report says about pinning.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PinReport {
    /// Whether `--pin` was in force.
    pub pinned: bool,
    /// The plan, when pinned.
    pub plan: Option<Plan>,
    /// Processes and their `Cpus_allowed_list`, read back while they ran.
    pub processes: Vec<PinnedProcess>,
}

/// One process's mask as read back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PinnedProcess {
    /// What it is: `loadgen`, `origin`, `relay A`, `worker 2`, ...
    pub role: String,
    pub pid: u32,
    /// `Cpus_allowed_list` from /proc/PID/status.
    pub cpus_allowed_list: String,
}

impl PinReport {
    /// Not pinned.
    pub fn none() -> PinReport {
        PinReport::default()
    }

    /// Pinned by `plan`; the masks of `procs` (role, pid) are read now.
    pub fn read(plan: &Plan, procs: &[(String, u32)]) -> PinReport {
        PinReport {
            pinned: true,
            plan: Some(plan.clone()),
            processes: procs
                .iter()
                .map(|(role, pid)| PinnedProcess {
                    role: role.clone(),
                    pid: *pid,
                    cpus_allowed_list: allowed_list(*pid).unwrap_or_else(|| "?".into()),
                })
                .collect(),
        }
    }

    /// One line for the text table.
    pub fn line(&self) -> String {
        match &self.plan {
            Some(p) if self.pinned => {
                let procs: Vec<String> = self
                    .processes
                    .iter()
                    .map(|p| format!("{} {}", p.role, p.cpus_allowed_list))
                    .collect();
                if procs.is_empty() {
                    p.describe()
                } else {
                    format!("{} (read back: {})", p.describe(), procs.join(", "))
                }
            }
            _ => "not pinned: relays, loadgen and origin share all CPUs".into(),
        }
    }
}

/// `--pin` for a run against running processes: pins this process and
/// the origin (when its pid is known) to the non-relay CPUs and the relays
/// to the relay CPU, then reads every mask back. Without `pin` nothing
/// changes and the report says so.
pub fn apply(
    pin: bool,
    origin_pid: Option<u32>,
    relays: &[(String, u32)],
) -> anyhow::Result<PinReport> {
    if !pin {
        return Ok(PinReport::none());
    }
    use anyhow::Context;
    let plan = Plan::new()?;
    plan.pin_self().context("pinning the loadgen")?;
    let mut procs = vec![("loadgen".to_string(), std::process::id())];
    if let Some(o) = origin_pid {
        set(o, &plan.rest).context("pinning the origin")?;
        procs.push(("origin".into(), o));
    }
    for (name, pid) in relays {
        set(*pid, &plan.relay).with_context(|| format!("pinning {name} (pid {pid})"))?;
        procs.push((name.clone(), *pid));
    }
    Ok(PinReport::read(&plan, &procs))
}

/// Relay CPU seconds per delivered GB (10^9 bytes); `None` without bytes.
pub fn cpu_s_per_gb(cpu_s: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_s / (bytes as f64 / 1e9))
}

/// Writes a report's relay-CPU line under its group: CPU seconds, GB
/// delivered and CPU seconds per GB, and whether the run was pinned.
pub fn write_cpu_per_gb(
    o: &mut String,
    cpu_s: Option<f64>,
    bytes: u64,
    per_gb: Option<f64>,
    pinned: bool,
) {
    use std::fmt::Write;
    if let Some(x) = per_gb {
        let _ = writeln!(
            o,
            "    relay CPU {:.2} s for {:.3} GB delivered: {x:.2} CPU s per GB ({})",
            cpu_s.unwrap_or(0.0),
            bytes as f64 / 1e9,
            if pinned { "pinned" } else { "not pinned" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_mask_reads_back() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        let l = allowed_list(std::process::id()).unwrap();
        assert!(!l.is_empty());
        assert_eq!(cpu_s_per_gb(2.0, 4_000_000_000), Some(0.5));
        assert_eq!(cpu_s_per_gb(2.0, 0), None);
    }
}
