//! `--hold-404`: plain origins made live.
//!
//! A plain origin (nginx serving a packager's output directory) cannot
//! long-poll: it answers `404` until the segment file exists. With
//! `--hold-404 D`, the fill task treats such a `404` like the protocol's "not
//! yet" for up to `D` after the first one: the slot is marked "not yet", the
//! viewers stay parked, and the one fill task asks the origin again, at most
//! once per `--repoll-interval`. So the origin sees one request per key per
//! interval however many viewers wait, and none once they have all gone.
//! The hold ends when the origin answers anything but `404` (that answer is
//! streamed to every viewer like any fill), when `D` has passed (the last
//! `404` goes out and is cached by the usual negative-caching rules), or when
//! no viewer is left.
//!
//! What is held, and why only that:
//!
//! - **Only the origin's own 404.** A parent relay's plain `404` is final: a
//!   parent that holds has already held (while holding it answers "not yet",
//!   never a plain `404`), and holding again below would multiply the
//!   origin's polls by the depth of the tree. Put `--hold-404` on the relays
//!   that fetch from the origin.
//! - **Only while viewers wait.** A prefetch (`Link: rel=next`) that nobody
//!   waits for yet takes its `404` and ends, uncached; viewers who come later
//!   open their own hold.
//! - **Only fills**, which are always `GET`s upstream; a `HEAD` viewer rides
//!   on the same fill like any other viewer.
//!
//! This file holds the bookkeeping of one fill's hold ([`Hold`]) and the
//! draining of a held 404's body; the loop that uses them is in `fill.rs`.

use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Source;

/// Most body bytes read from a held 404 so its connection can be reused; a
/// bigger error page is dropped unread and its connection closed.
const DRAIN_LIMIT: usize = 64 << 10;

/// Longest a held 404's body is read for (see [`drain`]).
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// One fill's hold on an origin 404: when it started and how many 404s it
/// has absorbed.
#[derive(Debug, Default)]
pub(super) struct Hold {
    since: Option<Instant>,
    polls: u32,
}

impl Hold {
    /// Whether this upstream answer is held (see the module doc). Starts the
    /// hold at the first one.
    pub(super) fn takes(
        &mut self,
        cfg: &Config,
        source: Source,
        status: StatusCode,
        viewers: usize,
    ) -> bool {
        let held = !cfg.hold_404.is_zero()
            && source == Source::Origin
            && status == StatusCode::NOT_FOUND
            && viewers > 0
            && self.since.is_none_or(|t| t.elapsed() < cfg.hold_404);
        if held {
            if self.since.is_none() {
                tracing::debug!(viewers, hold = ?cfg.hold_404, "origin answered 404: holding the viewers and re-polling");
            }
            self.since.get_or_insert_with(Instant::now);
            self.polls += 1;
        }
        held
    }

    /// Time left in a hold that has started.
    pub(super) fn left(&self, cfg: &Config) -> Option<Duration> {
        self.since.map(|t| cfg.hold_404.saturating_sub(t.elapsed()))
    }

    /// Ends a hold that had started: counts it under `result` and logs it.
    pub(super) fn end(&mut self, metrics: &Metrics, result: &'static str) {
        if let Some(t) = self.since.take() {
            metrics.hold_ended(result);
            tracing::debug!(
                result,
                held_404s = self.polls,
                held_for = ?t.elapsed(),
                "hold on origin 404 ended"
            );
        }
    }
}

/// The `holds` metric result for the answer that ended a hold.
pub(super) fn outcome(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_success() => "object",
        _ => "other_status",
    }
}

/// Reads a held 404's body to its end (up to [`DRAIN_LIMIT`] bytes, within
/// [`DRAIN_TIME`] and `idle` between frames), so its keep-alive connection
/// goes back to the pool rather than being closed by every poll. A body
/// that is bigger or slower is dropped, which closes its connection: a
/// trickling error page must not slow the hold's polls down.
pub(super) async fn drain(mut body: Incoming, idle: Duration) {
    let idle = idle.min(DRAIN_TIME);
    let read_all = async {
        let mut read = 0usize;
        while read <= DRAIN_LIMIT {
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(f))) => read += f.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read_all).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_origins_404_with_viewers_waiting_is_held_and_only_for_the_hold() {
        let mut cfg = Config::default();
        let not_found = StatusCode::NOT_FOUND;
        // Off by default.
        assert!(!Hold::default().takes(&cfg, Source::Origin, not_found, 5));
        cfg.hold_404 = Duration::from_millis(200);
        // A parent's 404 is final; other statuses are answers; a 404 nobody
        // waits for (a prefetch) is not held.
        assert!(!Hold::default().takes(&cfg, Source::Parent(0), not_found, 5));
        assert!(!Hold::default().takes(&cfg, Source::Origin, StatusCode::OK, 5));
        assert!(!Hold::default().takes(&cfg, Source::Origin, StatusCode::GONE, 5));
        assert!(!Hold::default().takes(&cfg, Source::Origin, not_found, 0));
        let mut hold = Hold::default();
        assert_eq!(hold.left(&cfg), None);
        assert!(hold.takes(&cfg, Source::Origin, not_found, 1));
        assert!(hold.left(&cfg).is_some_and(|l| l <= cfg.hold_404));
        assert!(hold.takes(&cfg, Source::Origin, not_found, 1));
        // Once the hold has run, the next 404 goes out.
        std::thread::sleep(cfg.hold_404);
        assert_eq!(hold.left(&cfg), Some(Duration::ZERO));
        assert!(!hold.takes(&cfg, Source::Origin, not_found, 1));
        assert_eq!(hold.polls, 2);
        assert_eq!(outcome(not_found), "not_found");
        assert_eq!(outcome(StatusCode::OK), "object");
        assert_eq!(outcome(StatusCode::FORBIDDEN), "other_status");
    }
}
