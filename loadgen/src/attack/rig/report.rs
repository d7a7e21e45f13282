//! The end of a run: the cool-down (until the relay has let go of the
//! attack's connections, bounded), the "after" readings, and the report's
//! rows and verdicts (relay RSS and CPU, origin requests, relay counters,
//! the real viewer's record, whether the relay stayed up, its log).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::{counts, mib, secs, AttackReport, Ctx, Kind, Outcome, Verdict};
use super::metrics::{counter_deltas, scrape, sum};
use super::Rig;
use crate::sys::proc_cpu;

/// Longest the cool-down waits for the relay's connections to go.
const COOL_DOWN: Duration = Duration::from_secs(15);
/// Pause after the cool-down before "after" is read, so freed memory can go
/// back to the system.
const SETTLE: Duration = Duration::from_secs(3);

impl Rig {
    /// Cool-down, "after" readings, and the report.
    pub async fn finish(&mut self, kind: Kind, ctx: &Ctx, outcome: Outcome) -> AttackReport {
        let start = self.before.start.unwrap_or_else(Instant::now);
        let end = Instant::now();
        let attack_time = end - start;
        // Cool-down: the attack's connections are dropped; wait until the
        // relay has let go of them too.
        if let Some(a) = self.admin {
            let t = Instant::now();
            while t.elapsed() < COOL_DOWN {
                match scrape(a).await {
                    Some(m) if sum(&m, "mlcache_connections") <= self.before.conns + 1.0 => break,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        let rss_after = self.sampler.as_ref().map(|s| s.now());
        let rss_peak = self.sampler.as_ref().map(|s| s.peak());
        let cpu = match (self.pid.and_then(proc_cpu), self.before.cpu) {
            (Some(a), Some(b)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let metrics_after = match self.admin {
            Some(a) => scrape(a).await,
            None => None,
        };
        let exited = match &mut self.child {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        };
        let viewer = self.viewer.as_ref().map(|v| {
            (
                v.attempts(start, end),
                v.attempts(end, Instant::now() + Duration::from_secs(1)),
            )
        });
        let origin_requests = self
            .origin_requests()
            .map(|n| n.saturating_sub(self.before.origin_requests));

        let mut rows: Vec<(String, String)> = Vec::new();
        let relay_line = match &self.child {
            Some(_) => format!("mlcache-relay {}", self.relay_args.display()),
            None => format!(
                "running relay {} (settings given: {})",
                self.relay,
                self.relay_args.display()
            ),
        };
        rows.push(("relay".into(), relay_line));
        rows.extend(outcome.rows);
        rows.push(("attack time".into(), secs(attack_time)));
        let mut verdicts = outcome.verdicts;
        if let (Some(b), Some(p), Some(a)) = (self.before.rss, rss_peak, rss_after) {
            rows.push((
                "relay RSS".into(),
                format!("before {}, peak {}, after {}", mib(b), mib(p), mib(a)),
            ));
            if let Some((bound, what)) = &outcome.rss_bound {
                verdicts.push(Verdict::new(
                    format!("relay RSS peak ≤ {} ({what})", mib(*bound)),
                    mib(p),
                    p <= *bound,
                ));
            }
        }
        if let Some(c) = cpu {
            rows.push((
                "relay CPU".into(),
                format!(
                    "{} over {} (this tool, origins and clients: {})",
                    secs(c),
                    secs(attack_time),
                    secs(crate::sys::own_cpu().saturating_sub(self.before.own_cpu))
                ),
            ));
        }
        if let Some(n) = origin_requests {
            rows.push(("origin requests".into(), format!("{n} (attack origin)")));
            if let Some((bound, what)) = &outcome.origin_bound {
                verdicts.push(Verdict::new(
                    format!("origin requests ≤ {bound} ({what})"),
                    n.to_string(),
                    n <= *bound,
                ));
            }
        }
        if let (Some(b), Some(a)) = (&self.before.metrics, &metrics_after) {
            rows.push(("relay counters".into(), counter_deltas(b, a)));
        }
        if let Some((during, after)) = viewer {
            let ok = during.iter().filter(|a| a.ok).count();
            let mut fails: BTreeMap<String, u64> = BTreeMap::new();
            for a in during.iter().filter(|a| !a.ok) {
                *fails.entry(a.what.clone()).or_default() += 1;
            }
            let worst = during
                .iter()
                .filter(|a| a.ok)
                .map(|a| a.took)
                .max()
                .unwrap_or_default();
            let first_ok = during.iter().find(|a| a.ok).map(|a| a.at - start);
            rows.push((
                "real viewer".into(),
                format!(
                    "{ok} of {} chunks served during the attack (failures: {}), slowest {} ms, first at {}; after it {} of {}",
                    during.len(),
                    counts(&fails),
                    worst.as_millis(),
                    first_ok.map_or("-".into(), secs),
                    after.iter().filter(|a| a.ok).count(),
                    after.len()
                ),
            ));
            let grace = outcome.viewer_grace;
            let late_fails = during
                .iter()
                .filter(|a| !a.ok && a.at - start > grace)
                .count();
            let after_fails = after.iter().filter(|a| !a.ok).count();
            verdicts.push(Verdict::new(
                if grace.is_zero() {
                    "a real viewer is served throughout the attack".to_string()
                } else {
                    format!(
                        "a real viewer is served during the attack, at the latest {} after it began",
                        secs(grace)
                    )
                },
                format!(
                    "{ok} served, {} failed{}, {after_fails} failed after",
                    during.len() - ok,
                    if grace.is_zero() {
                        String::new()
                    } else {
                        format!(" ({late_fails} after {})", secs(grace))
                    }
                ),
                // A short attack may fall between two chunks: then the
                // chunks right after it count.
                ok + after.iter().filter(|a| a.ok).count() > 0
                    && late_fails == 0
                    && after_fails == 0,
            ));
        }
        if self.child.is_some() {
            rows.push((
                "relay process".into(),
                match exited {
                    None => "up".into(),
                    Some(s) => format!("exited: {s}"),
                },
            ));
            verdicts.push(Verdict::new(
                "the relay stays up",
                match exited {
                    None => "up".into(),
                    Some(s) => format!("exited: {s}"),
                },
                exited.is_none(),
            ));
        }
        if let Some(log) = &self.log {
            let lines = std::fs::read_to_string(log)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            rows.push((
                "relay log".into(),
                format!("{lines} lines at warn and above ({})", log.display()),
            ));
        }
        self.stop().await;
        AttackReport {
            attack: format!("{} ({})", kind.name(), ctx.relay),
            rows,
            verdicts,
        }
    }
}
