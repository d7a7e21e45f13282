//! The fill task: the one upstream fetch that feeds a slot.
//!
//! It asks `upstream`, re-polls (paced by `repoll-interval`) while the
//! answer is "not yet", or an origin 404 under `--hold-404` (`hold.rs`), and
//! a viewer still waits, publishes the head (with
//! hop-by-hop headers and `Set-Cookie` removed, and a prefetch of the
//! `Link: rel=next` chunk started), then streams the body into the slot in
//! batches: frames already buffered, or a trickle gathered for up to
//! [`COALESCE_WINDOW`], go in with one wake-up. It ends by handing the
//! flight back with a storage decision ([`Store`]) or an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;

use super::hold::{self, Hold};
use super::link::{next_link, strip_hop_by_hop};
use super::{not_yet_head, Relay};
use crate::flight::{Fill, Store};
use crate::key::{ChunkKey, Origin};
use crate::policy::{Defaults, Policy};
use crate::protocol::is_not_yet;
use crate::slot::{Head, SlotError};

impl Relay {
    pub(super) async fn fill(self: Arc<Self>, fill: Fill, origin: Origin, via: HeaderValue) {
        // A panic inside unwinds through `fill`, whose drop fails the slot;
        // catching it here only keeps it from being logged as a task panic.
        let outcome = std::panic::AssertUnwindSafe(self.fill_slot(&fill, &origin, &via))
            .catch_unwind()
            .await
            .unwrap_or(Err(SlotError::Vanished));
        match outcome {
            Ok(store) => fill.finish(store),
            Err(e) => {
                let viewers = fill.writer().slot().viewers();
                tracing::warn!(key = %fill.key, error = %e, viewers, "fill failed");
                fill.fail(e);
            }
        }
        self.metrics
            .memory_used
            .set(self.flights.budget.used() as i64);
    }

    /// Appends pieces to the slot; when the budget is short, evicts cache
    /// entries once and tries again.
    fn push(&self, fill: &Fill, batch: &mut Vec<bytes::Bytes>) -> Result<(), SlotError> {
        let w = fill.writer();
        if w.push_all(batch.iter().cloned()).is_err() {
            let want: usize = batch
                .iter()
                .map(|b| b.len() + crate::budget::PIECE_OVERHEAD)
                .sum();
            let budget = &self.flights.budget;
            let evicted = self.flights.cache.shed(|| budget.has_room(want));
            self.metrics.cache_evictions.inc_by(evicted as u64);
            w.push_all(batch.iter().cloned()).inspect_err(|e| {
                let held = w.slot().received() as usize;
                self.flights
                    .note_shortfall(&fill.key.authority, held + e.wanted)
            })?;
        }
        batch.clear();
        Ok(())
    }

    /// Feeds one slot. Returns how a complete body may be stored (`None`
    /// when it must not be).
    async fn fill_slot(
        self: &Arc<Self>,
        fill: &Fill,
        origin: &Origin,
        via: &HeaderValue,
    ) -> Result<Option<Store>, SlotError> {
        let cfg = &self.config;
        let key = &fill.key;
        let writer = fill.writer();
        let slot = writer.slot();
        let mut hold = Hold::default();
        let (resp, source) = loop {
            let asked = Instant::now();
            // The client of the settings in force when this poll starts: a
            // reload applies from the next poll on.
            let upstream = self.live().upstream().clone();
            let fetched = upstream.fetch(key, origin, via).await;
            let (resp, source) = match fetched {
                Ok(r) => r,
                Err(e) => {
                    hold.end(&self.metrics, "failed");
                    return Err(match e {
                        e if e.is_timeout() => SlotError::Timeout(e.to_string().into()),
                        e => SlotError::Unavailable(e.to_string().into()),
                    });
                }
            };
            let reason = if is_not_yet(resp.status(), resp.headers()) {
                self.metrics.upstream(source.label(), "not_yet");
                "not_yet"
            } else if hold.takes(cfg, source, resp.status(), slot.viewers()) {
                self.metrics.upstream(source.label(), "held_404");
                hold::drain(resp.into_body(), cfg.body_idle_timeout).await;
                "hold_404"
            } else {
                hold.end(&self.metrics, hold::outcome(resp.status()));
                break (resp, source);
            };
            writer.mark_not_yet();
            // Ask again only while somebody waits. A prefetch, which nobody
            // waits for yet, asks once: viewers who come later poll for
            // themselves. A hold's last poll falls on its end, so the 404
            // goes out when the hold says, not up to an interval later.
            let mut pause = cfg.repoll_interval.saturating_sub(asked.elapsed());
            if let Some(left) = hold.left(cfg) {
                pause = pause.min(left);
            }
            if !pause.is_zero() && slot.viewers() > 0 {
                tokio::time::sleep(pause).await;
            }
            if slot.viewers() == 0 {
                hold.end(&self.metrics, "abandoned");
                writer.publish_head(not_yet_head())?;
                return Ok(None);
            }
            self.metrics.repoll(reason);
        };
        self.metrics.upstream(source.label(), "ok");
        let status = resp.status();
        let mut headers = resp.headers().clone();
        strip_hop_by_hop(&mut headers);
        // A shared cache must not hand one client's session to others.
        headers.remove(http::header::SET_COOKIE);
        // 204 and 304 never have a body (RFC 9110 §6.4.1); a Content-Length
        // on them describes something else and must not frame our answer.
        if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
            headers.remove(http::header::CONTENT_LENGTH);
        }
        let len = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let max = cfg.max_object_size.as_u64();
        if len.is_some_and(|l| l > max) {
            return Err(SlotError::TooLarge);
        }
        // The original headers: a response that carried Set-Cookie is not
        // stored, even though the cookie itself is never passed on.
        let policy = Policy::from_response(
            status,
            resp.headers(),
            std::time::SystemTime::now(),
            &Defaults {
                default_ttl: cfg.default_ttl,
                negative_ttl: cfg.negative_ttl,
            },
        );
        // The age the response had on arrival (its Age, or more if its Date
        // says so): the relay's Age on every response served from this
        // fill counts on from it (the LL-HLS spec asks a CDN to set Age).
        let upstream_age = resp
            .headers()
            .get(http::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let arrived_age = upstream_age.max(policy.initial_age.as_secs());
        headers.insert(http::header::AGE, HeaderValue::from(arrived_age));
        let next = cfg
            .prefetch
            .then(|| next_link(&headers, key))
            .flatten()
            .filter(|_| slot.viewers() > 0);
        writer
            .publish_head(Head {
                status,
                headers,
                len,
            })
            .inspect_err(|e| self.flights.note_shortfall(&key.authority, e.wanted))?;
        if let Some(path) = next {
            self.prefetch(
                ChunkKey {
                    authority: key.authority.clone(),
                    path,
                },
                origin.clone(),
            );
        }
        let mut body = resp.into_body();
        let mut received = 0u64;
        let mut batch = Vec::new();
        // A body of known length goes into a memory file, so HTTP/1.1
        // viewers can be sent it without a copy each (`spool`).
        let shared = slot.viewers() > 1;
        let mut spool = len
            .filter(|_| cfg.zero_copy && status.is_success())
            .and_then(|len| crate::spool::Spool::new(len, shared));
        self.metrics.spools.set(crate::spool::live() as i64);
        let mut ended = false;
        let mut last_push: Option<Instant> = None;
        while !ended {
            let first = tokio::time::timeout(cfg.body_idle_timeout, body.frame())
                .await
                .map_err(|_| SlotError::Truncated("upstream body stalled".into()))?;
            let before = received;
            let mut step = absorb(first, &mut batch, &mut received, max);
            // Take every frame that is already buffered, so a burst wakes
            // the viewers once.
            while matches!(step, Ok(false)) {
                match body.frame().now_or_never() {
                    Some(f) => step = absorb(f, &mut batch, &mut received, max),
                    None => break,
                }
            }
            // A trickle of small frames (an origin can send one byte per
            // chunk) is gathered for up to COALESCE_WINDOW after the last
            // publication, so it costs one wake-up and one piece per window,
            // not per frame. The first frame after a quiet spell is not held.
            if let Some(t) = last_push {
                let window = tokio::time::sleep_until((t + COALESCE_WINDOW).into());
                tokio::pin!(window);
                while matches!(step, Ok(false))
                    && received - before < crate::slot::MERGE_BELOW as u64
                {
                    tokio::select! {
                        biased;
                        f = body.frame() => step = absorb(f, &mut batch, &mut received, max),
                        _ = &mut window => break,
                    }
                }
            }
            self.metrics.bytes_in.inc_by(received - before);
            if let Some(piece) = spool.as_mut().and_then(|s| s.append(&batch)) {
                batch.clear();
                batch.push(piece);
            }
            self.push(fill, &mut batch)?;
            last_push = Some(Instant::now());
            self.metrics
                .memory_used
                .set(self.flights.budget.used() as i64);
            ended = step?;
        }
        if len.is_some_and(|l| l != received) {
            return Err(SlotError::Truncated(
                format!("{received} of {len:?} bytes").into(),
            ));
        }
        // A prefetch ran ahead of any viewer: its 404 says only that the
        // chunk did not exist yet, which must not be remembered.
        let negative_prefetch = fill.prefetch && status != StatusCode::OK;
        Ok((policy.store && !negative_prefetch).then_some(Store {
            initial_age: policy.initial_age,
            ttl: policy.ttl,
        }))
    }
}

/// How long a trickle of small body frames is gathered into one piece.
const COALESCE_WINDOW: Duration = Duration::from_millis(1);

/// Adds one upstream body frame to `batch`. `Ok(true)` at the clean end of
/// the body.
fn absorb(
    frame: Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>,
    batch: &mut Vec<bytes::Bytes>,
    received: &mut u64,
    max: u64,
) -> Result<bool, SlotError> {
    match frame {
        None => Ok(true),
        Some(Err(e)) => Err(SlotError::Truncated(e.to_string().into())),
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data() {
                *received += data.len() as u64;
                if *received > max {
                    return Err(SlotError::TooLarge);
                }
                batch.push(data);
            }
            Ok(false)
        }
    }
}
