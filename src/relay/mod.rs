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
//! The settings a SIGHUP may change (allow-list, parents, upstream
//! timeouts and limits, admission limits: [`LIVE_SETTINGS`]) live in one
//! [`Live`] behind an `RwLock<Arc<..>>`: a request clones the `Arc` out and
//! never holds the lock across an `.await`; [`Relay::reload`] builds a new
//! one and swaps it whole, so a request sees either the old or the new
//! settings, never a mix, and fills already running finish on the upstream
//! client they started with.
//!
//! This file holds the [`Relay`] itself (setup, identity, [`Relay::join`],
//! reload);
//! `fill.rs` the fill task; `hold.rs` the `--hold-404` hold on a plain
//! origin's 404 (re-polled like "not yet"); `link.rs` what the fill does to upstream headers
//! (hop-by-hop stripping, `Link: rel=next` for prefetch).
//!
//! [`flight`]: crate::flight

mod fill;
mod hold;
mod link;

pub use link::{next_link, strip_hop_by_hop};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use tracing::Instrument;

use crate::budget::Budget;
use crate::cache::{Cache, Entry};
use crate::config::Config;
use crate::flight::{Fill, Flights, Join, Limits, Parked, Refused};
use crate::key::{ChunkKey, KeyError, Origin, OriginSet};
use crate::metrics::Metrics;
use crate::protocol;
use crate::slot::Head;
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
    /// `--upstream-ca` could not be read.
    #[error("cannot read --upstream-ca {0}: {1}")]
    UpstreamCa(std::path::PathBuf, std::io::Error),
    /// Bad `--cors`.
    #[error(transparent)]
    Cors(#[from] crate::server::CorsError),
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

/// The settings a reload can change without a restart (TOML keys): the
/// rest (listen addresses, cache and memory sizes, connection settings, id,
/// CORS, TTLs, drain timings, ...) is read once at start and a reload that
/// changes them logs that they were ignored.
pub const LIVE_SETTINGS: &[&str] = &[
    "allow-origin",
    "upstream",
    "parent-select",
    "upstream-ca",
    "origin-ca",
    "connect-timeout",
    "upstream-hold",
    "max-upstream-head",
    "max-viewers-per-slot",
    "max-parked",
    "max-inflight-fetches",
    "max-inflight-fetches-per-origin",
    "max-header-size",
    "max-wait",
    // Read again from their files on every SIGHUP anyway.
    "tls-cert",
    "tls-key",
];

/// What a reload swaps: the configuration it came from, the allow-list and
/// the upstream client.
pub struct Live {
    /// The configuration as last (re)loaded; only [`LIVE_SETTINGS`] of it
    /// are used from here.
    pub config: Config,
    /// The allow-list.
    pub origins: OriginSet,
    upstream: Arc<Upstream>,
}

/// One relay: its configuration, flights (cache, slots, budget) and upstream
/// client.
pub struct Relay {
    /// The configuration as started. Settings a reload may change
    /// ([`LIVE_SETTINGS`]) are read from [`Relay::live`] instead.
    pub config: Config,
    /// Cache, in-flight slots, admission and the memory budget.
    pub flights: Arc<Flights>,
    /// Metrics shared with the servers.
    pub metrics: Arc<Metrics>,
    /// This relay's Via pseudonym.
    pub id: String,
    /// `1.1 <id>`, this relay's Via entry.
    pub via_entry: HeaderValue,
    /// Which page origins may read responses (`--cors`).
    pub cors: crate::server::Cors,
    live: parking_lot::RwLock<Arc<Live>>,
    draining: AtomicBool,
}

impl Relay {
    /// Builds a relay from a validated configuration.
    pub fn new(config: Config) -> Result<Arc<Relay>, SetupError> {
        let metrics = Arc::new(Metrics::new());
        let id = config.id.clone().unwrap_or_else(random_id);
        let live = Live::build(&config, &id, &metrics, None)?;
        let cors = crate::server::Cors::parse(&config.cors)?;
        let memory = config.memory_limit().as_u64() as usize;
        let flights = Flights::new(
            Cache::new(
                config.cache_size.as_u64() as usize,
                config.max_object_size.as_u64() as usize,
            ),
            Budget::new(memory),
            admission(&config),
            metrics.clone(),
        );
        metrics.memory_limit.set(memory as i64);
        Ok(Arc::new(Relay {
            flights,
            metrics,
            via_entry: HeaderValue::from_str(&protocol::via_entry(&id))
                .map_err(|_| SetupError::BadId(id.clone()))?,
            id,
            cors,
            live: parking_lot::RwLock::new(Arc::new(live)),
            draining: AtomicBool::new(false),
            config,
        }))
    }

    /// The settings in force now (see [`LIVE_SETTINGS`]). Clone out, use,
    /// drop: never hold it across a long wait if the newest settings matter.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().clone()
    }

    /// Applies a reloaded, validated configuration: builds the new
    /// allow-list and upstream client (keeping the idle origin connections)
    /// and swaps them in with the admission limits. Returns the settings
    /// that changed but need a restart (ignored). On error nothing changes.
    pub fn reload(&self, new: Config) -> Result<Vec<String>, SetupError> {
        let old = self.live();
        let live = Live::build(&new, &self.id, &self.metrics, Some(old.upstream.pool()))?;
        let ignored = restart_only_changes(&self.config, &new);
        self.flights.set_limits(admission(&new));
        *self.live.write() = Arc::new(live);
        Ok(ignored)
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
    /// (memory, cache, parents up) brought up to date first.
    pub fn render_metrics(&self) -> String {
        let usage = self.flights.cache.usage();
        self.metrics.cache_bytes.set(usage.bytes as i64);
        self.metrics.cache_entries.set(usage.entries as i64);
        self.metrics
            .memory_used
            .set(self.flights.budget.used() as i64);
        let parents = self.live().upstream().parents();
        self.metrics.parents.set(parents.len() as i64);
        self.metrics
            .parents_up
            .set(parents.iter().filter(|(_, down)| !down).count() as i64);
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
}

impl Live {
    fn build(
        config: &Config,
        id: &str,
        metrics: &Arc<Metrics>,
        pool: Option<Arc<crate::upstream::OriginPool>>,
    ) -> Result<Live, SetupError> {
        let origins = OriginSet::parse(&config.allow_origin)?;
        let origin_ca = match &config.origin_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| SetupError::OriginCa(p.clone(), e))?),
            None => None,
        };
        let mut upstream = Upstream::with_limits(
            &config.upstream,
            id.to_string(),
            origin_ca.as_deref(),
            Timeouts {
                connect: config.connect_timeout,
                head: config.upstream_hold,
            },
            metrics.clone(),
            UpstreamLimits {
                max_head: config.max_upstream_head.as_u64() as usize,
            },
        )?
        .with_select(config.parent_select);
        if let Some(p) = &config.upstream_ca {
            let pem = std::fs::read(p).map_err(|e| SetupError::UpstreamCa(p.clone(), e))?;
            upstream = upstream.with_parent_ca(Some(&pem))?;
        }
        if let Some(pool) = pool {
            upstream = upstream.with_pool(pool);
        }
        Ok(Live {
            config: config.clone(),
            origins,
            upstream: Arc::new(upstream),
        })
    }

    /// The upstream client (parents in `--parent-select` order, origin).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
}

/// The admission limits of `config`.
fn admission(config: &Config) -> Limits {
    let memory = config.memory_limit().as_u64() as usize;
    Limits {
        max_viewers_per_slot: config.max_viewers_per_slot,
        max_parked: config.max_parked,
        max_fetches: config.max_inflight_fetches,
        max_fetches_per_origin: config.max_inflight_fetches_per_origin,
        admit_reserve: (memory / 32).max(64 * 1024),
    }
}

/// The settings (TOML keys) that differ between `old` and `new` and are not
/// in [`LIVE_SETTINGS`].
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (old.to_table(), new.to_table());
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !LIVE_SETTINGS.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
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
