//! Rate-limited logging of refused and shed requests.
//!
//! Under overload the relay may refuse thousands of requests a second; a log
//! line for each would be a log storm exactly when the relay can least afford
//! it. Each refusal is instead counted (in the `mlcache_error_responses_total`
//! metric, by reason, and in a [`RateLog`] window), and a [`RateLog`] writes at
//! most one summary line per interval: "N requests shed in the last 1s by
//! reason: …". The summary is written by whichever comes first after the
//! interval: the next refusal, or [`RateLog::flush`] (which `mlcache::start`
//! calls on a timer, so the last window of a burst is not left unlogged).

use std::time::{Duration, Instant};

use http::StatusCode;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The severity of a [`RateLog`]'s summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `info`: refusals the client caused (4xx).
    Info,
    /// `warn`: load shedding and upstream failures (5xx).
    Warn,
}

/// Counts events by reason and logs one summary line per interval.
pub struct RateLog {
    /// What is counted, e.g. "requests shed".
    what: &'static str,
    level: Level,
    counter: Family<[(&'static str, &'static str); 1], Counter>,
    window: Mutex<Window>,
}

struct Window {
    interval: Duration,
    started: Instant,
    /// Reasons in first-seen order; a handful at most, so a Vec beats a map.
    counts: Vec<(&'static str, u64)>,
}

impl RateLog {
    /// A log of `what`, also counted in `counter` under `reason`.
    pub fn new(
        what: &'static str,
        level: Level,
        counter: Family<[(&'static str, &'static str); 1], Counter>,
    ) -> RateLog {
        RateLog {
            what,
            level,
            counter,
            window: Mutex::new(Window {
                interval: Duration::from_secs(1),
                started: Instant::now(),
                counts: Vec::new(),
            }),
        }
    }

    /// Sets the summary interval (`log-interval`).
    pub fn set_interval(&self, interval: Duration) {
        self.window.lock().interval = interval;
    }

    /// Counts one event.
    pub fn note(&self, reason: &'static str) {
        self.counter.get_or_create(&[("reason", reason)]).inc();
        let summary = {
            let mut w = self.window.lock();
            match w.counts.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => w.counts.push((reason, 1)),
            }
            w.take_if_due(Instant::now())
        };
        self.emit(summary);
    }

    /// Writes the summary of the current window if its interval is over.
    pub fn flush(&self) {
        let summary = self.window.lock().take_if_due(Instant::now());
        self.emit(summary);
    }

    /// The summary line is written outside the lock.
    fn emit(&self, summary: Option<(u64, Duration, String)>) {
        let Some((total, secs, reasons)) = summary else {
            return;
        };
        match self.level {
            Level::Info => {
                tracing::info!(
                    "{total} {} in the last {secs:?} by reason: {reasons}",
                    self.what
                )
            }
            Level::Warn => {
                tracing::warn!(
                    "{total} {} in the last {secs:?} by reason: {reasons}",
                    self.what
                )
            }
        }
    }
}

impl Window {
    /// The window's totals if it is over and not empty; starts a new window.
    fn take_if_due(&mut self, now: Instant) -> Option<(u64, Duration, String)> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < self.interval {
            return None;
        }
        self.started = now;
        if self.counts.is_empty() {
            return None;
        }
        let total = self.counts.iter().map(|(_, n)| n).sum();
        let reasons = self
            .counts
            .drain(..)
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        // Whole milliseconds read better than nanoseconds in a log line.
        let shown = Duration::from_millis(elapsed.as_millis() as u64);
        Some((total, shown, reasons))
    }
}

/// A metric label for a refusal that no limit names, from its status.
pub fn status_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method",
        416 => "range",
        431 => "header_size",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "gateway_timeout",
        508 => "loop",
        s if s >= 500 => "server_error",
        _ => "client_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_per_interval() {
        let fam = Family::default();
        let log = RateLog::new("requests shed", Level::Warn, fam.clone());
        log.set_interval(Duration::from_secs(3600));
        for _ in 0..1000 {
            log.note("parked_viewers");
        }
        log.note("gateway_timeout");
        assert_eq!(
            fam.get_or_create(&[("reason", "parked_viewers")]).get(),
            1000
        );
        let mut w = log.window.lock();
        assert!(w.take_if_due(Instant::now()).is_none(), "interval not over");
        let later = w.started + Duration::from_secs(3600);
        let (total, _, reasons) = w.take_if_due(later).unwrap();
        assert_eq!(total, 1001);
        assert_eq!(reasons, "parked_viewers=1000 gateway_timeout=1");
        assert!(w.take_if_due(later + Duration::from_secs(3600)).is_none());
    }
}
