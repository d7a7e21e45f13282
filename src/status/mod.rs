//! The relay's live state for people and scripts: `GET /status.json` and the
//! page at `GET /` on the admin port (see `server::admin`).
//!
//! [`Status::of`] reads everything once, without holding any lock across an
//! `.await` (it never awaits): gauges and counters from `metrics`, cache and
//! flight tables through short visits under their own locks, the budget's
//! atomics, parent mark-downs from the live upstream client, and the recent
//! delivery-delay windows from [`DelayRing`]. Streams (a key's origin and path
//! up to its last `/`, as `--parent-select hash` groups them) are aggregated
//! from cache entries and open flights, and only the busiest
//! [`MAX_STREAMS`] are listed. The page itself is [`PAGE`], one static HTML
//! file with inline CSS and JS that polls the JSON; it writes data into the
//! DOM only as text, so a hostile stream name stays text.

mod delay;

pub use delay::{DelayRing, DelayWindow, WINDOW, WINDOWS};

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::key::ChunkKey;
use crate::metrics::Outcome;
use crate::relay::Relay;
use crate::upstream::stream_of;

/// The status page: one self-contained HTML document.
pub const PAGE: &str = include_str!("page.html");

/// Most streams listed (busiest first).
pub const MAX_STREAMS: usize = 50;

/// Most cache entries one status read visits (the most recently used: a
/// live stream's newest chunks are there), so a big cache cannot make a read
/// hold the cache lock for long.
pub const MAX_SCANNED: usize = 4096;

/// The whole status document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This relay's Via pseudonym.
    pub id: String,
    /// Seconds since the relay started.
    pub uptime_secs: f64,
    /// Whether the relay is draining (`/healthz` answers 503).
    pub draining: bool,
    /// Open downstream connections.
    pub connections: i64,
    /// Viewers attached to a slot (the `mlcache_parked_viewers` gauge).
    pub parked_viewers: usize,
    /// Upstream fetches in flight (slots in the table).
    pub open_flights: usize,
    /// The complete-object store.
    pub cache: CacheStatus,
    /// Downstream requests by result, and the hit ratio.
    pub requests: Requests,
    /// Body bytes sent to viewers since start.
    pub bytes_out: u64,
    /// The memory budget.
    pub memory: Memory,
    /// Parent relays (`--upstream`) and whether each is up.
    pub upstreams: Vec<Upstream>,
    /// Streams known here (cached or in flight), busiest first.
    pub streams: Vec<Stream>,
    /// Streams seen in the open flights and the scanned cache entries
    /// (`streams` lists at most [`MAX_STREAMS`] of them).
    pub streams_total: usize,
    /// Recent delivery delay.
    pub delivery: Delivery,
}

/// Cache figures.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStatus {
    /// Bytes charged to the cache.
    pub bytes: usize,
    /// Entries held.
    pub entries: usize,
    /// `--cache-size`.
    pub capacity: usize,
    /// Entries the stream table was built from (the most recently used, at
    /// most [`MAX_SCANNED`]).
    pub scanned: usize,
    /// Entries evicted since start.
    pub evictions: u64,
}

/// Downstream requests by result (`mlcache_requests_total`).
#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    /// Served from the cache.
    pub hit: u64,
    /// Opened an upstream fetch.
    pub miss: u64,
    /// Joined a fetch in flight.
    pub coalesced: u64,
    /// Answered "not yet".
    pub not_yet: u64,
    /// Answered with an error.
    pub error: u64,
    /// `(hit + coalesced) / (hit + coalesced + miss)`: the share of chunk
    /// requests that cost no upstream fetch; `null` before any.
    pub hit_ratio: Option<f64>,
}

/// The memory budget (`--memory-limit`).
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Bytes charged.
    pub used: usize,
    /// The limit.
    pub limit: usize,
}

/// One parent relay.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// As configured.
    pub url: String,
    /// Not marked down (see `upstream::PARENT_DOWN_BACKOFF`).
    pub up: bool,
}

/// One stream: an origin and a path prefix.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stream {
    /// The origin (`host:port`).
    pub origin: String,
    /// The key's path up to and including its last `/`.
    pub path: String,
    /// Viewers attached to the stream's open flights.
    pub viewers: usize,
    /// The stream's open flights.
    pub open_flights: usize,
    /// The stream's cache entries (among the `cache.scanned` most recently
    /// used).
    pub cached: usize,
    /// The newest chunk's path: the greatest in-flight key (by length, then
    /// text, so `/9` < `/10`), else the last one stored in the cache.
    pub newest: String,
    /// Whether `newest` is still in flight.
    pub newest_in_flight: bool,
}

/// Delivery delay: the `mlcache_delivery_seconds` observations.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Deliveries observed since start.
    pub count: u64,
    /// Seconds per window.
    pub window_secs: u64,
    /// The windows of the last ten minutes that saw deliveries, oldest first.
    pub windows: Vec<DelayWindow>,
}

#[derive(Default)]
struct Acc {
    viewers: usize,
    open_flights: usize,
    cached: usize,
    flight_newest: Option<String>,
    cache_newest: Option<(Instant, String)>,
}

fn later(a: &str, b: &str) -> bool {
    (a.len(), a) > (b.len(), b)
}

impl Status {
    /// Reads the relay's state now.
    pub fn of(relay: &Relay) -> Status {
        let m = &relay.metrics;
        let flights = &relay.flights;
        // Origin, then stream path: looked up by `&str`, so an entry of a
        // known stream allocates nothing while the cache lock is held.
        let mut acc: HashMap<String, HashMap<String, Acc>> = HashMap::new();
        fn at<'a>(
            acc: &'a mut HashMap<String, HashMap<String, Acc>>,
            key: &ChunkKey,
        ) -> &'a mut Acc {
            let (o, p) = stream_of(key);
            if !acc.contains_key(o) {
                acc.insert(o.to_string(), HashMap::new());
            }
            let streams = acc.get_mut(o).expect("just ensured");
            if !streams.contains_key(p) {
                streams.insert(p.to_string(), Acc::default());
            }
            streams.get_mut(p).expect("just ensured")
        }
        flights.visit_slots(|key, slot| {
            let a = at(&mut acc, key);
            a.viewers += slot.viewers();
            a.open_flights += 1;
            if a.flight_newest
                .as_deref()
                .is_none_or(|n| later(&key.path, n))
            {
                a.flight_newest = Some(key.path.clone());
            }
        });
        flights.cache.visit_recent(MAX_SCANNED, |key, entry| {
            let a = at(&mut acc, key);
            a.cached += 1;
            if a.cache_newest
                .as_ref()
                .is_none_or(|(t, _)| entry.stored > *t)
            {
                a.cache_newest = Some((entry.stored, key.path.clone()));
            }
        });
        let mut streams: Vec<Stream> = acc
            .into_iter()
            .flat_map(|(origin, paths)| {
                paths.into_iter().map(move |(path, a)| {
                    let in_flight = a.flight_newest.is_some();
                    Stream {
                        origin: origin.clone(),
                        path,
                        viewers: a.viewers,
                        open_flights: a.open_flights,
                        cached: a.cached,
                        newest: a
                            .flight_newest
                            .or(a.cache_newest.map(|(_, p)| p))
                            .unwrap_or_default(),
                        newest_in_flight: in_flight,
                    }
                })
            })
            .collect();
        let streams_total = streams.len();
        busiest_first(&mut streams);
        streams.truncate(MAX_STREAMS);

        let usage = flights.cache.usage();
        let (hit, miss, coalesced) = (
            m.requests_of(Outcome::Hit),
            m.requests_of(Outcome::Miss),
            m.requests_of(Outcome::Coalesced),
        );
        let served = hit + miss + coalesced;
        let live = relay.live();
        Status {
            id: relay.id.clone(),
            uptime_secs: m.delivery_recent.uptime().as_secs_f64(),
            draining: relay.is_draining(),
            connections: m.connections.get(),
            parked_viewers: flights.parked(),
            open_flights: flights.in_flight(),
            cache: CacheStatus {
                bytes: usage.bytes,
                entries: usage.entries,
                capacity: flights.cache.capacity(),
                scanned: usage.entries.min(MAX_SCANNED),
                evictions: m.cache_evictions.get(),
            },
            requests: Requests {
                hit,
                miss,
                coalesced,
                not_yet: m.requests_of(Outcome::NotYet),
                error: m.requests_of(Outcome::Error),
                hit_ratio: (served > 0).then(|| (hit + coalesced) as f64 / served as f64),
            },
            bytes_out: m.bytes_out.get(),
            memory: Memory {
                used: flights.budget.used(),
                limit: flights.budget.limit(),
            },
            upstreams: live
                .upstream()
                .parents()
                .into_iter()
                .map(|(url, down)| Upstream { url, up: !down })
                .collect(),
            streams,
            streams_total,
            delivery: Delivery {
                count: m.delivery_recent.total(),
                window_secs: WINDOW.as_secs(),
                windows: m.delivery_recent.recent(),
            },
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }
}

/// Most viewers first, then most flights, then most cached, then by name so
/// the order is stable between polls.
fn busiest_first(streams: &mut [Stream]) {
    streams.sort_by(|a, b| {
        (b.viewers, b.open_flights, b.cached)
            .cmp(&(a.viewers, a.open_flights, a.cached))
            .then_with(|| (&a.origin, &a.path).cmp(&(&b.origin, &b.path)))
    });
}

#[cfg(test)]
mod tests;
