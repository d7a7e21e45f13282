//! What the loadgen knows about processes: its own CPU time and descriptor
//! limit, and the CPU and RSS of the relays it watches (from /proc).

use std::time::{Duration, Instant};

pub use mlcache::raise_fd_limit;

/// CPU time (user + system) this process has used.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage fills a local struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time of another process, from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Resident set size of a process in bytes.
pub fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU use of a process over an interval.
pub struct CpuMeter {
    pid: Option<u32>,
    start_cpu: Duration,
    start: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`, or this process when `None`.
    pub fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            start_cpu: Self::read(pid),
            start: Instant::now(),
        }
    }

    fn read(pid: Option<u32>) -> Duration {
        match pid {
            None => own_cpu(),
            Some(p) => proc_cpu(p).unwrap_or_default(),
        }
    }

    /// CPU time used since `start`.
    pub fn cpu(&self) -> Duration {
        Self::read(self.pid).saturating_sub(self.start_cpu)
    }

    /// Percent of one core used since `start` (200 = two cores busy).
    pub fn percent(&self) -> f64 {
        let cpu = Self::read(self.pid).saturating_sub(self.start_cpu);
        100.0 * cpu.as_secs_f64() / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}
