//! Single flight: the one way a request reaches the cache, a slot or the
//! upstream, and the one place admission is decided.
//!
//! [`Flights::join`] takes the table lock once and answers with a [`Join`]:
//! a fresh cache [`Join::Hit`], a [`Join::Follow`] of the slot already in
//! flight, or a [`Join::Lead`] that opened a new slot and hands the caller
//! the [`Fill`] that must feed it. Every limit (viewers per slot, parked
//! viewers, in-flight fetches overall and per origin, the memory budget) is
//! checked *before* a slot opens, so a refused request never causes an
//! upstream request.
//!
//! A [`Fill`] owns the slot's writer and its place in the table. Finishing it
//! moves a complete, cacheable body into the cache and retires the slot under
//! the same lock, so no request can fall between the two and fetch twice.
//! Dropping it for any reason (an error, a panic, a cancelled task) fails the
//! slot and frees its place: there is no zombie flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::budget::Budget;
use crate::cache::{Cache, Entry};
use crate::key::ChunkKey;
use crate::metrics::Metrics;
use crate::slot::{Slot, SlotError, Viewer, Writer};

/// The limits admission enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Viewers on one slot.
    pub max_viewers_per_slot: usize,
    /// Viewers on all slots together.
    pub max_parked: usize,
    /// Upstream fetches in flight.
    pub max_fetches: usize,
    /// Upstream fetches in flight for one origin.
    pub max_fetches_per_origin: usize,
    /// Free budget a new fetch needs before it may start.
    pub admit_reserve: usize,
}

/// Why admission refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max-viewers-per-slot` reached.
    #[error("too many viewers waiting for this chunk")]
    SlotFull,
    /// `max-parked` reached.
    #[error("too many viewers waiting on this relay")]
    Parked,
    /// `max-inflight-fetches` reached.
    #[error("too many upstream fetches in flight")]
    Fetches,
    /// `max-inflight-fetches-per-origin` reached.
    #[error("too many upstream fetches in flight for this origin")]
    OriginFetches,
    /// The memory budget has no room, even after evicting the cache.
    #[error("memory budget exhausted")]
    Memory,
}

impl Refused {
    /// The `rejected` metric reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::SlotFull => "slot_viewers",
            Refused::Parked => "parked_viewers",
            Refused::Fetches => "inflight_fetches",
            Refused::OriginFetches => "origin_fetches",
            Refused::Memory => "memory",
        }
    }
}

/// A viewer admitted to a slot: its reader, the slot, and its place under
/// `max-parked` (released on drop).
pub struct Parked {
    /// The viewer's position in the slot.
    pub viewer: Viewer,
    /// The slot it reads.
    pub slot: Arc<Slot>,
    /// Its place under `max-parked`.
    pub place: Place,
}

/// What a request joined.
pub enum Join {
    /// A fresh cached object.
    Hit(Arc<Entry>),
    /// This request opened the slot; the caller must run the fill.
    Lead(Parked, Fill),
    /// This request joined a slot already in flight.
    Follow(Parked),
}

#[derive(Default)]
struct Table {
    slots: HashMap<ChunkKey, Arc<Slot>>,
    per_origin: HashMap<String, usize>,
}

/// The slot table, the cache, the budget and the admission counters.
pub struct Flights {
    table: Mutex<Table>,
    /// Complete objects.
    pub cache: Cache,
    /// The one memory budget.
    pub budget: Arc<Budget>,
    /// Swapped whole by a configuration reload (SIGHUP).
    limits: parking_lot::RwLock<Limits>,
    parked: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Per origin, the size of the last body that did not fit, and when:
    /// admission asks for that much room for a while, so a full budget
    /// refuses new fetches up front instead of letting each one fetch a head
    /// it cannot keep. Per origin, because object sizes are: one origin's
    /// 32 MiB objects must not shut out another's 64 KiB chunks.
    shortfall: Mutex<HashMap<String, (usize, Instant)>>,
}

/// Most origins whose shortfall is remembered at once.
const SHORTFALL_ORIGINS: usize = 1024;

/// How long a body that did not fit raises the room admission asks for.
const SHORTFALL_MEMORY: Duration = Duration::from_secs(10);

impl Flights {
    /// An empty table.
    pub fn new(
        cache: Cache,
        budget: Arc<Budget>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Arc<Flights> {
        Arc::new(Flights {
            table: Mutex::new(Table::default()),
            cache,
            budget,
            limits: parking_lot::RwLock::new(limits),
            parked: AtomicUsize::new(0),
            metrics,
            shortfall: Mutex::new(HashMap::new()),
        })
    }

    /// The admission limits in force.
    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    /// Replaces the admission limits (a configuration reload): requests
    /// admitted from now on are checked against `limits`; viewers already
    /// parked stay.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write() = limits;
    }

    /// Viewers attached to slots right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Slots (upstream fetches) in flight right now.
    pub fn in_flight(&self) -> usize {
        self.table.lock().slots.len()
    }

    /// Calls `f` with every slot in flight, under the table lock (the status
    /// page; keep `f` cheap, it holds up admission).
    pub fn visit_slots(&self, mut f: impl FnMut(&ChunkKey, &Slot)) {
        for (key, slot) in &self.table.lock().slots {
            f(key, slot);
        }
    }

    /// Answers from the cache, joins the slot in flight, or admits a new
    /// fetch and opens its slot.
    pub fn join(self: &Arc<Self>, key: &ChunkKey) -> Result<Join, Refused> {
        let mut table = self.table.lock();
        if let Some(entry) = self.cache.get(key) {
            return Ok(Join::Hit(entry));
        }
        if let Some(slot) = table.slots.get(key) {
            if slot.viewers() >= self.limits().max_viewers_per_slot {
                return Err(Refused::SlotFull);
            }
            let place = self.place()?;
            return Ok(Join::Follow(Parked {
                viewer: slot.subscribe(),
                slot: slot.clone(),
                place,
            }));
        }
        self.admit(&mut table, key)?;
        let place = self.place()?;
        let fill = self.open(&mut table, key.clone(), false);
        let slot = fill.writer().slot().clone();
        Ok(Join::Lead(
            Parked {
                viewer: slot.subscribe(),
                slot,
                place,
            },
            fill,
        ))
    }

    /// Opens a slot for `key` with no viewer yet (a prefetch), unless it is
    /// cached, already in flight, or admission says no.
    pub fn prefetch(self: &Arc<Self>, key: &ChunkKey) -> Option<Fill> {
        let mut table = self.table.lock();
        if table.slots.contains_key(key) || self.cache.get(key).is_some() {
            return None;
        }
        if let Err(r) = self.admit(&mut table, key) {
            tracing::debug!(%key, reason = r.reason(), "prefetch not admitted");
            return None;
        }
        Some(self.open(&mut table, key.clone(), true))
    }

    /// The fetch limits and the budget. Evicts cache entries when the budget
    /// is short, before refusing.
    fn admit(&self, table: &mut Table, key: &ChunkKey) -> Result<(), Refused> {
        if table.slots.len() >= self.limits().max_fetches {
            return Err(Refused::Fetches);
        }
        if table.per_origin.get(&key.authority).copied().unwrap_or(0)
            >= self.limits().max_fetches_per_origin
        {
            return Err(Refused::OriginFetches);
        }
        let recent = match self.shortfall.lock().get(&key.authority) {
            Some((n, at)) if at.elapsed() < SHORTFALL_MEMORY => *n,
            _ => 0,
        };
        let reserve = self.limits().admit_reserve.max(recent);
        if !self.budget.has_room(reserve) {
            let evicted = self.cache.shed(|| self.budget.has_room(reserve));
            self.metrics.cache_evictions.inc_by(evicted as u64);
            if !self.budget.has_room(reserve) {
                return Err(Refused::Memory);
            }
        }
        Ok(())
    }

    /// Records that a body of `bytes` from `origin` did not fit in the
    /// budget.
    pub fn note_shortfall(&self, origin: &str, bytes: usize) {
        let mut map = self.shortfall.lock();
        if map.len() >= SHORTFALL_ORIGINS {
            map.retain(|_, (_, at)| at.elapsed() < SHORTFALL_MEMORY);
            if map.len() >= SHORTFALL_ORIGINS {
                return;
            }
        }
        map.insert(origin.to_string(), (bytes, Instant::now()));
    }

    fn place(self: &Arc<Self>) -> Result<Place, Refused> {
        let prev = self.parked.fetch_add(1, Ordering::Relaxed);
        if prev >= self.limits().max_parked {
            self.parked.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Parked);
        }
        self.metrics.parked_viewers.inc();
        Ok(Place(self.clone()))
    }

    fn open(self: &Arc<Self>, table: &mut Table, key: ChunkKey, prefetch: bool) -> Fill {
        let (slot, writer) = Slot::new(&self.budget);
        table.slots.insert(key.clone(), slot);
        *table.per_origin.entry(key.authority.clone()).or_default() += 1;
        self.metrics.open_slots.inc();
        Fill {
            key,
            prefetch,
            writer: Some(writer),
            flights: self.clone(),
        }
    }

    /// Removes `slot` from the table (if it is still the one for `key`) and
    /// frees its fetch place.
    fn retire(&self, table: &mut Table, key: &ChunkKey, slot: &Arc<Slot>) {
        if table.slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            table.slots.remove(key);
        }
        if let Some(n) = table.per_origin.get_mut(&key.authority) {
            *n -= 1;
            if *n == 0 {
                table.per_origin.remove(&key.authority);
            }
        }
        self.metrics.open_slots.dec();
    }
}

/// How a finished fill may be stored.
#[derive(Debug, Clone, Copy)]
pub struct Store {
    /// Age the response had on arrival.
    pub initial_age: Duration,
    /// Freshness lifetime.
    pub ttl: Duration,
}

/// The right and duty to feed one slot. See the module docs.
pub struct Fill {
    /// The chunk.
    pub key: ChunkKey,
    /// Opened ahead of any viewer (`Link: rel=next`).
    pub prefetch: bool,
    writer: Option<Writer>,
    flights: Arc<Flights>,
}

impl Fill {
    /// The slot's writer.
    pub fn writer(&self) -> &Writer {
        self.writer.as_ref().expect("present until the fill ends")
    }

    /// Ends the slot cleanly. When `store` allows it, the body goes into the
    /// cache before the slot leaves the table, under one lock.
    pub fn finish(mut self, store: Option<Store>) {
        let writer = self.writer.take().expect("present until the fill ends");
        let slot = writer.slot().clone();
        let flights = self.flights.clone();
        let mut table = flights.table.lock();
        if let (Some(store), Some((head, body))) = (store, writer.finish()) {
            let entry = Entry {
                status: head.status,
                headers: head.headers.clone(),
                body,
                stored: Instant::now(),
                initial_age: store.initial_age,
                ttl: store.ttl,
            };
            if let Some(evicted) = flights.cache.insert(self.key.clone(), entry) {
                flights.metrics.cache_evictions.inc_by(evicted as u64);
            }
        }
        flights.retire(&mut table, &self.key, &slot);
    }

    /// Ends the slot with an error.
    pub fn fail(mut self, error: SlotError) {
        let writer = self.writer.take().expect("present until the fill ends");
        let slot = writer.slot().clone();
        writer.fail(error);
        let mut table = self.flights.table.lock();
        self.flights.retire(&mut table, &self.key, &slot);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // Only reached when neither finish nor fail ran: a panic or a
        // cancelled task. Dropping the writer fails the slot.
        if let Some(writer) = self.writer.take() {
            let slot = writer.slot().clone();
            drop(writer);
            let mut table = self.flights.table.lock();
            self.flights.retire(&mut table, &self.key, &slot);
        }
    }
}

/// One place under `max-parked`; released on drop.
pub struct Place(Arc<Flights>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.parked_viewers.dec();
    }
}

#[cfg(test)]
mod tests;
