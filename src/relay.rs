//! The relay core: the fill task that feeds a slot from upstream, and the
//! relay's identity (Via) and lifecycle.
//!
//! A request asks [`Relay::join`], which goes through [`flight`] (cache,
//! single flight, admission) and, when this request leads a new flight,
//! spawns the one fill task for it. The fill asks `upstream`, re-polls
//! (paced) while the answer is "not yet" and someone still waits, publishes
//! the head, streams the body into the slot, and finally hands the flight
//! back with a storage decision: a complete, cacheable body goes into the
//! cache, anything else ends the slot (with an error if the body broke).
//!
//! [`flight`]: crate::flight

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use tracing::Instrument;

use crate::budget::Budget;
use crate::cache::{Cache, Entry};
use crate::config::Config;
use crate::flight::{Fill, Flights, Join, Limits, Parked, Refused, Store};
use crate::key::{ChunkKey, KeyError, Origin, OriginSet};
use crate::metrics::Metrics;
use crate::policy::{Defaults, Policy};
use crate::protocol::{self, is_not_yet};
use crate::slot::{Head, SlotError};
use crate::upstream::{Timeouts, Upstream, UpstreamError, UpstreamLimits};

/// Most `Via` hops a relay passes on upstream; older ones are dropped, so a
/// hostile client cannot make every upstream request carry a huge header.
pub const MAX_VIA_HOPS: usize = 16;

/// Why a relay could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Bad `--allow-origin`.
    #[error(transparent)]
    Origin(#[from] KeyError),
    /// Bad `--upstream`.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The id cannot go into a header.
    #[error("relay id {0:?} is not a valid header token")]
    BadId(String),
    /// `--origin-ca` could not be read.
    #[error("cannot read --origin-ca {0}: {1}")]
    OriginCa(std::path::PathBuf, std::io::Error),
}

/// The head of a "not yet" answer, as the relay sends it downstream.
pub fn not_yet_head() -> Head {
    let mut headers = protocol::not_yet_headers();
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Head {
        status: StatusCode::NOT_FOUND,
        headers,
        len: Some(0),
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any named by `Connection`. When a
/// response was framed by `Transfer-Encoding`, its `Content-Length` is
/// meaningless and is removed too (RFC 9112 §6.3): passing it on would let a
/// downstream client take a prefix for the whole body.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
}

/// What a request joined, as the server needs it.
pub enum Answer {
    /// A fresh cached object.
    Hit(Arc<Entry>),
    /// A slot: `opened` when this request started its fetch (a miss),
    /// otherwise it coalesced onto one in flight.
    Slot {
        /// The viewer's place in the slot.
        parked: Parked,
        /// Whether this request opened it.
        opened: bool,
    },
}

/// One relay: its configuration, flights (cache, slots, budget) and upstream
/// client.
pub struct Relay {
    /// The resolved configuration.
    pub config: Config,
    /// The allow-list.
    pub origins: OriginSet,
    /// Cache, in-flight slots, admission and the memory budget.
    pub flights: Arc<Flights>,
    /// Metrics shared with the servers.
    pub metrics: Arc<Metrics>,
    /// This relay's Via pseudonym.
    pub id: String,
    /// `1.1 <id>`, this relay's Via entry.
    pub via_entry: HeaderValue,
    upstream: Upstream,
    draining: AtomicBool,
}

impl Relay {
    /// Builds a relay from a validated configuration.
    pub fn new(config: Config) -> Result<Arc<Relay>, SetupError> {
        let origins = OriginSet::parse(&config.allow_origin)?;
        let metrics = Arc::new(Metrics::new());
        let id = config.id.clone().unwrap_or_else(random_id);
        let origin_ca = match &config.origin_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| SetupError::OriginCa(p.clone(), e))?),
            None => None,
        };
        let upstream = Upstream::with_limits(
            &config.upstream,
            id.clone(),
            origin_ca.as_deref(),
            Timeouts {
                connect: config.connect_timeout,
                head: config.upstream_hold,
            },
            metrics.clone(),
            UpstreamLimits {
                max_head: config.max_upstream_head.as_u64() as usize,
            },
        )?;
        let memory = config.memory_limit().as_u64() as usize;
        let flights = Flights::new(
            Cache::new(
                config.cache_size.as_u64() as usize,
                config.max_object_size.as_u64() as usize,
            ),
            Budget::new(memory),
            Limits {
                max_viewers_per_slot: config.max_viewers_per_slot,
                max_parked: config.max_parked,
                max_fetches: config.max_inflight_fetches,
                max_fetches_per_origin: config.max_inflight_fetches_per_origin,
                admit_reserve: (memory / 32).max(64 * 1024),
            },
            metrics.clone(),
        );
        metrics.memory_limit.set(memory as i64);
        Ok(Arc::new(Relay {
            flights,
            origins,
            metrics,
            via_entry: HeaderValue::from_str(&protocol::via_entry(&id))
                .map_err(|_| SetupError::BadId(id.clone()))?,
            id,
            upstream,
            draining: AtomicBool::new(false),
            config,
        }))
    }

    /// Whether `via` (a request's Via header values) already names this relay.
    pub fn in_via<'a>(&self, via: impl Iterator<Item = &'a HeaderValue>) -> bool {
        protocol::via_ids(via).any(|by| by == self.id)
    }

    /// The Via value to send upstream: the request's last hops (at most
    /// [`MAX_VIA_HOPS`]) plus this relay.
    pub fn via_upstream<'a>(&self, via: impl Iterator<Item = &'a HeaderValue>) -> HeaderValue {
        let hops: Vec<&str> = via
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if hops.is_empty() {
            return self.via_entry.clone();
        }
        let own = self.via_entry.to_str().expect("built from an ASCII id");
        let keep = &hops[hops.len().saturating_sub(MAX_VIA_HOPS - 1)..];
        let joined = keep
            .iter()
            .copied()
            .chain([own])
            .collect::<Vec<_>>()
            .join(", ");
        HeaderValue::from_str(&joined).unwrap_or_else(|_| self.via_entry.clone())
    }

    /// Marks the relay as draining (health checks then fail).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the relay is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Viewers attached to slots right now.
    pub fn parked(&self) -> usize {
        self.flights.parked()
    }

    /// The complete-object store.
    pub fn cache(&self) -> &Cache {
        &self.flights.cache
    }

    /// Prometheus text, with the gauges that are read rather than counted
    /// (memory, cache) brought up to date first.
    pub fn render_metrics(&self) -> String {
        let usage = self.flights.cache.usage();
        self.metrics.cache_bytes.set(usage.bytes as i64);
        self.metrics.cache_entries.set(usage.entries as i64);
        self.metrics
            .memory_used
            .set(self.flights.budget.used() as i64);
        self.metrics.render()
    }

    /// Answers from the cache, joins the flight for `key`, or admits a new
    /// one and starts its single fill. `via` makes the Via value for the
    /// upstream request; it is called only when a fetch starts, so hits and
    /// joins allocate nothing for it.
    pub fn join(
        self: &Arc<Self>,
        key: &ChunkKey,
        origin: &Origin,
        via: impl FnOnce() -> HeaderValue,
    ) -> Result<Answer, Refused> {
        Ok(match self.flights.join(key)? {
            Join::Hit(e) => Answer::Hit(e),
            Join::Follow(parked) => Answer::Slot {
                parked,
                opened: false,
            },
            Join::Lead(parked, fill) => {
                self.spawn_fill(fill, origin.clone(), via());
                Answer::Slot {
                    parked,
                    opened: true,
                }
            }
        })
    }

    fn spawn_fill(self: &Arc<Self>, fill: Fill, origin: Origin, via: HeaderValue) {
        let span = tracing::debug_span!("fill", key = %fill.key, prefetch = fill.prefetch);
        tokio::spawn(self.clone().fill(fill, origin, via).instrument(span));
    }

    /// Starts the fetch of `key` ahead of any viewer, unless it is cached,
    /// already in flight, or admission says no.
    fn prefetch(self: &Arc<Self>, key: ChunkKey, origin: Origin) {
        if let Some(fill) = self.flights.prefetch(&key) {
            tracing::debug!(%key, "prefetching next chunk");
            self.metrics.upstream("prefetch", "started");
            let via = self.via_entry.clone();
            self.spawn_fill(fill, origin, via);
        }
    }

    async fn fill(self: Arc<Self>, fill: Fill, origin: Origin, via: HeaderValue) {
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
        let (resp, source) = loop {
            let asked = Instant::now();
            let (resp, source) =
                self.upstream
                    .fetch(key, origin, via)
                    .await
                    .map_err(|e| match e {
                        e if e.is_timeout() => SlotError::Timeout(e.to_string().into()),
                        e => SlotError::Unavailable(e.to_string().into()),
                    })?;
            if !is_not_yet(resp.status(), resp.headers()) {
                break (resp, source);
            }
            self.metrics.upstream(source.label(), "not_yet");
            writer.mark_not_yet();
            // Ask again only while somebody waits. A prefetch, which nobody
            // waits for yet, asks once: viewers who come later poll for
            // themselves.
            let spent = asked.elapsed();
            if spent < cfg.repoll_interval && slot.viewers() > 0 {
                tokio::time::sleep(cfg.repoll_interval - spent).await;
            }
            if slot.viewers() == 0 {
                writer.publish_head(not_yet_head())?;
                return Ok(None);
            }
        };
        self.metrics.upstream(source.label(), "ok");
        let status = resp.status();
        let mut headers = resp.headers().clone();
        strip_hop_by_hop(&mut headers);
        // A shared cache must not hand one client's session to others.
        headers.remove(http::header::SET_COOKIE);
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

/// The path of the chunk a `Link: <...>; rel="next"` header names, if it is on
/// the same origin as `key`. Relative references resolve against `key`.
pub fn next_link(headers: &HeaderMap, key: &ChunkKey) -> Option<String> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let is_next = parts.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=next" || p == "rel=\"next\""
            });
            if !is_next {
                continue;
            }
            let target = target.strip_prefix('<')?.strip_suffix('>')?;
            return resolve(target, key);
        }
    }
    None
}

fn resolve(target: &str, key: &ChunkKey) -> Option<String> {
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let (auth, path) = rest.split_at(rest.find('/')?);
        // Only follow links on the same origin: a Link header must not make
        // the relay fetch from anywhere else.
        let same = auth.eq_ignore_ascii_case(&key.authority)
            || key
                .authority
                .split_once(':')
                .is_some_and(|(h, _)| auth.eq_ignore_ascii_case(h));
        return same.then(|| path.to_string());
    }
    if target.starts_with("//") {
        return None;
    }
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    let base = key.path.split('?').next().unwrap_or("/");
    let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
    Some(format!("{dir}{target}"))
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("mlcache-{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> ChunkKey {
        ChunkKey {
            authority: "o.example:80".into(),
            path: path.into(),
        }
    }

    fn link(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::LINK, v.parse().unwrap());
        h
    }

    #[test]
    fn next_links_resolve_on_the_same_origin_only() {
        let k = key("/live/s1/7?x=1");
        assert_eq!(
            next_link(&link("<8>; rel=\"next\""), &k).as_deref(),
            Some("/live/s1/8")
        );
        assert_eq!(
            next_link(&link("</live/s1/8>; rel=next"), &k).as_deref(),
            Some("/live/s1/8")
        );
        assert_eq!(
            next_link(&link("<http://o.example/live/s1/8>; rel=\"next\""), &k).as_deref(),
            Some("/live/s1/8")
        );
        assert_eq!(
            next_link(&link("<http://evil.example/x>; rel=\"next\""), &k),
            None
        );
        assert_eq!(next_link(&link("<//evil.example/x>; rel=next"), &k), None);
        assert_eq!(
            next_link(&link("</a>; rel=prev, </b>; rel=next"), &k).as_deref(),
            Some("/b")
        );
        assert_eq!(next_link(&link("</a>; rel=prev"), &k), None);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("cache-control", "max-age=1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("cache-control"));
    }
}
