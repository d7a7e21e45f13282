//! The relay core: cache lookup, single flight and the fill task that feeds a
//! slot from upstream.
//!
//! `lookup` is the only way into the data path. Under the slot-table lock it
//! answers from the cache, joins the open slot for the key, or opens a slot and
//! spawns exactly one fill task for it, so concurrent requests can never start
//! two upstream fetches for one key. The fill task asks `upstream`, re-polls
//! (paced) while the answer is "not yet" and someone still waits, publishes
//! the head, streams the body into the slot, and finally, under the same lock,
//! moves a complete, cacheable body into `cache` and retires the slot. A
//! failed or partial body ends the slot with an error and is never cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tracing::Instrument;

use crate::cache::{Cache, Entry, Policy};
use crate::config::Config;
use crate::key::{ChunkKey, KeyError, Origin, OriginSet};
use crate::metrics::Metrics;
use crate::slot::{Head, Slot, SlotError};
use crate::upstream::{Timeouts, Upstream, UpstreamError};

/// The response header that marks a "not yet" answer (see docs/protocol.md).
pub const NOT_YET_HEADER: &str = "mlcache-not-yet";

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

/// Whether a response is the protocol's "not yet": 404 plus the marker header.
/// A 404 without it is a real 404.
pub fn is_not_yet(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::NOT_FOUND && headers.contains_key(NOT_YET_HEADER)
}

/// The head of a "not yet" answer, as the relay sends it downstream.
pub fn not_yet_head() -> Head {
    let mut headers = HeaderMap::new();
    headers.insert(NOT_YET_HEADER, HeaderValue::from_static("1"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("0"));
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

/// Removes hop-by-hop headers, including any named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// What `lookup` found.
pub enum Lookup {
    /// A fresh cached object.
    Hit(Arc<Entry>),
    /// An in-flight slot; `opened` is true when this lookup started its fetch.
    Slot {
        /// The slot to join.
        slot: Arc<Slot>,
        /// Whether this request opened it (a miss) or joined it (coalesced).
        opened: bool,
    },
}

/// One relay: its configuration, cache, open slots and upstream client.
pub struct Relay {
    /// The resolved configuration.
    pub config: Config,
    /// The allow-list.
    pub origins: OriginSet,
    /// Complete objects.
    pub cache: Cache,
    /// Metrics shared with the servers.
    pub metrics: Arc<Metrics>,
    /// This relay's Via pseudonym.
    pub id: String,
    /// `1.1 <id>`, this relay's Via entry.
    pub via_entry: HeaderValue,
    slots: Mutex<HashMap<ChunkKey, Arc<Slot>>>,
    upstream: Upstream,
    parked: AtomicUsize,
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
        let upstream = Upstream::new(
            &config.upstream,
            id.clone(),
            origin_ca.as_deref(),
            Timeouts {
                connect: config.connect_timeout,
                head: config.upstream_hold,
            },
            metrics.clone(),
        )?;
        Ok(Arc::new(Relay {
            cache: Cache::new(
                config.cache_size.as_u64() as usize,
                config.max_object_size.as_u64() as usize,
            ),
            origins,
            metrics,
            via_entry: HeaderValue::from_str(&format!("1.1 {id}"))
                .map_err(|_| SetupError::BadId(id.clone()))?,
            id,
            slots: Mutex::new(HashMap::new()),
            upstream,
            parked: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            config,
        }))
    }

    /// Whether `via` (a request's Via header values) already names this relay.
    pub fn in_via<'a>(&self, via: impl Iterator<Item = &'a HeaderValue>) -> bool {
        via.filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.split_whitespace().nth(1))
            .any(|by| by == self.id)
    }

    /// The Via value to send upstream: the request's hops plus this relay.
    pub fn via_upstream<'a>(&self, via: impl Iterator<Item = &'a HeaderValue>) -> HeaderValue {
        let mut hops: Vec<&str> = via.filter_map(|v| v.to_str().ok()).collect();
        if hops.is_empty() {
            return self.via_entry.clone();
        }
        hops.push(self.via_entry.to_str().expect("built from an ASCII id"));
        HeaderValue::from_str(&hops.join(", ")).unwrap_or_else(|_| self.via_entry.clone())
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
        self.parked.load(Ordering::Relaxed)
    }

    /// Reserves a parked-viewer place, or `None` at the `max-parked` limit.
    pub fn park(self: &Arc<Self>) -> Option<ParkedGuard> {
        let prev = self.parked.fetch_add(1, Ordering::Relaxed);
        if prev >= self.config.max_parked {
            self.parked.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.metrics.parked_viewers.inc();
        Some(ParkedGuard(self.clone()))
    }

    /// Answers from the cache, joins the open slot, or opens one and starts its
    /// single upstream fetch. `via` makes the Via value for the upstream
    /// request; it is called only when a fetch starts, so hits and joins
    /// allocate nothing for it.
    pub fn lookup(
        self: &Arc<Self>,
        key: &ChunkKey,
        origin: &Origin,
        via: impl FnOnce() -> HeaderValue,
    ) -> Lookup {
        let mut slots = self.slots.lock();
        if let Some(entry) = self.cache.get(key) {
            return Lookup::Hit(entry);
        }
        if let Some(slot) = slots.get(key) {
            return Lookup::Slot {
                slot: slot.clone(),
                opened: false,
            };
        }
        let slot = self.open(&mut slots, key.clone(), origin.clone(), via());
        Lookup::Slot { slot, opened: true }
    }

    fn open(
        self: &Arc<Self>,
        slots: &mut HashMap<ChunkKey, Arc<Slot>>,
        key: ChunkKey,
        origin: Origin,
        via: HeaderValue,
    ) -> Arc<Slot> {
        let slot = Slot::new();
        slots.insert(key.clone(), slot.clone());
        self.metrics.open_slots.inc();
        let span = tracing::debug_span!("fill", key = %key);
        tokio::spawn(
            self.clone()
                .fill(key, origin, via, slot.clone())
                .instrument(span),
        );
        slot
    }

    /// Starts the fetch of `key` ahead of any viewer, unless it is cached or
    /// already in flight.
    fn prefetch(self: &Arc<Self>, key: ChunkKey, origin: Origin) {
        let mut slots = self.slots.lock();
        if slots.contains_key(&key) || self.cache.get(&key).is_some() {
            return;
        }
        tracing::debug!(%key, "prefetching next chunk");
        self.metrics.upstream("prefetch", "started");
        let via = self.via_upstream(std::iter::empty());
        self.open(&mut slots, key, origin, via);
    }

    async fn fill(
        self: Arc<Self>,
        key: ChunkKey,
        origin: Origin,
        via: HeaderValue,
        slot: Arc<Slot>,
    ) {
        let outcome = std::panic::AssertUnwindSafe(self.fill_slot(&key, &origin, &via, &slot))
            .catch_unwind()
            .await
            .unwrap_or(Err(SlotError::Vanished));
        let policy = match outcome {
            Ok(p) => {
                slot.finish(Ok(()));
                p
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, viewers = slot.viewers(), "fill failed");
                slot.finish(Err(e));
                None
            }
        };
        let mut slots = self.slots.lock();
        if let (Some(policy), Some((head, body, len))) = (policy, slot.complete_body()) {
            let entry = Entry {
                status: head.status,
                initial_age: age_of(&head.headers),
                headers: head.headers.clone(),
                body,
                len,
                stored: Instant::now(),
                ttl: policy.ttl,
            };
            if let Some(evicted) = self.cache.insert(key.clone(), entry) {
                self.metrics.cache_evictions.inc_by(evicted as u64);
            }
            let usage = self.cache.usage();
            self.metrics.cache_bytes.set(usage.bytes as i64);
            self.metrics.cache_entries.set(usage.entries as i64);
        }
        if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            slots.remove(&key);
        }
        drop(slots);
        self.metrics.open_slots.dec();
    }

    /// Feeds one slot. Returns the cache policy of a complete body (`None`
    /// when it must not be stored).
    async fn fill_slot(
        self: &Arc<Self>,
        key: &ChunkKey,
        origin: &Origin,
        via: &HeaderValue,
        slot: &Arc<Slot>,
    ) -> Result<Option<Policy>, SlotError> {
        let cfg = &self.config;
        let (resp, source) = loop {
            let asked = Instant::now();
            let (resp, source) =
                self.upstream
                    .fetch(key, origin, via)
                    .await
                    .map_err(|e| match e {
                        UpstreamError::Timeout { .. } => SlotError::Timeout(e.to_string().into()),
                        e => SlotError::Unavailable(e.to_string().into()),
                    })?;
            if !is_not_yet(resp.status(), resp.headers()) {
                break (resp, source);
            }
            self.metrics.upstream(source.label(), "not_yet");
            slot.mark_not_yet();
            // Somebody still wants it, or it was prefetched recently: ask again.
            let age = slot.created().elapsed();
            if slot.viewers() == 0 && age >= cfg.max_wait {
                slot.publish_head(not_yet_head());
                return Ok(None);
            }
            let spent = asked.elapsed();
            if spent < cfg.repoll_interval {
                tokio::time::sleep(cfg.repoll_interval - spent).await;
            }
        };
        self.metrics.upstream(source.label(), "ok");
        let status = resp.status();
        let mut headers = resp.headers().clone();
        strip_hop_by_hop(&mut headers);
        let len = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let max = cfg.max_object_size.as_u64();
        if len.is_some_and(|l| l > max) {
            return Err(SlotError::TooLarge);
        }
        let policy = Policy::from_response(status, &headers, cfg.default_ttl, cfg.negative_ttl);
        let next = cfg
            .prefetch
            .then(|| next_link(&headers, key))
            .flatten()
            .filter(|_| slot.viewers() > 0);
        slot.publish_head(Head {
            status,
            headers,
            len,
        });
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
        while !ended {
            // Wait for one frame, then take every frame that is already
            // buffered, so a burst wakes the viewers once.
            let mut next = match tokio::time::timeout(cfg.body_idle_timeout, body.frame()).await {
                Err(_) => return Err(SlotError::Truncated("upstream body stalled".into())),
                Ok(f) => f,
            };
            loop {
                match next {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => {
                        slot.push_all(batch.drain(..));
                        return Err(SlotError::Truncated(e.to_string().into()));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            received += data.len() as u64;
                            if received > max {
                                return Err(SlotError::TooLarge);
                            }
                            self.metrics.bytes_in.inc_by(data.len() as u64);
                            batch.push(data);
                        }
                    }
                }
                match body.frame().now_or_never() {
                    Some(f) => next = f,
                    None => break,
                }
            }
            slot.push_all(batch.drain(..));
        }
        if len.is_some_and(|l| l != received) {
            return Err(SlotError::Truncated(
                format!("{received} of {len:?} bytes").into(),
            ));
        }
        Ok(policy.store.then_some(policy))
    }
}

/// Holds one place under `max-parked`; released on drop.
pub struct ParkedGuard(Arc<Relay>);

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.parked_viewers.dec();
    }
}

fn age_of(headers: &HeaderMap) -> Duration {
    headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default()
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

    #[test]
    fn not_yet_is_told_apart_from_404() {
        assert!(is_not_yet(StatusCode::NOT_FOUND, &not_yet_head().headers));
        assert!(!is_not_yet(StatusCode::NOT_FOUND, &HeaderMap::new()));
        assert!(!is_not_yet(StatusCode::OK, &not_yet_head().headers));
    }
}
