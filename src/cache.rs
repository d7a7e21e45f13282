//! The bounded in-memory store of complete chunks.
//!
//! Only a slot that finished cleanly hands its body here (see `flight`), so
//! the store never holds a partial object. Entries are kept in LRU order and
//! weighed by what their body is charged in the memory budget (bytes, piece
//! overhead and head) plus a fixed per-entry overhead, so `--cache-size`
//! bounds real memory rather than a count. A body is the frozen
//! [`Arc<Body>`](crate::slot::Body) the slot built: serving a hit clones one
//! `Arc`, never the piece list or chunk bytes. Evicting an entry that viewers
//! are still reading frees its bytes only when the last of them finishes; the
//! budget keeps counting them until then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use lru::LruCache;
use parking_lot::Mutex;

use crate::key::ChunkKey;
use crate::slot::Body;

/// Bookkeeping bytes charged to every entry on top of its body and headers
/// (LRU node, key strings, Arc and Vec headers).
pub const ENTRY_OVERHEAD: usize = 256;

/// A complete, cacheable response.
#[derive(Debug)]
pub struct Entry {
    /// Upstream status (200, or 404 for negative caching).
    pub status: StatusCode,
    /// End-to-end headers as received (hop-by-hop and framing removed).
    pub headers: HeaderMap,
    /// The frozen body, shared with every viewer reading it.
    pub body: Arc<Body>,
    /// When the relay stored it.
    pub stored: Instant,
    /// Age the response already had when it was received (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// Freshness lifetime, counted from the response's origin, not from
    /// `stored`: the entry is fresh while `age() < ttl`.
    pub ttl: Duration,
}

impl Entry {
    /// The `Age` to report now: the age it arrived with plus its time here.
    /// Saturates, so a hostile `Age` can never overflow.
    pub fn age(&self) -> Duration {
        self.initial_age.saturating_add(self.stored.elapsed())
    }

    fn fresh(&self) -> bool {
        self.age() < self.ttl
    }

    fn weight(&self, key: &ChunkKey) -> usize {
        self.body.charged() + key.authority.len() + key.path.len() + ENTRY_OVERHEAD
    }
}

/// Counters the cache reports to `metrics` (read by the caller after each call).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes currently charged.
    pub bytes: usize,
    /// Entries currently held.
    pub entries: usize,
}

/// One stored entry: the entry, its weight, and its place in the expiry
/// index.
struct Stored {
    entry: Arc<Entry>,
    weight: usize,
    expires: (Instant, u64),
}

struct Inner {
    lru: LruCache<ChunkKey, Stored>,
    /// Entries by the instant they go stale, so stale ones can be dropped
    /// whatever their place in the LRU order: a live stream's old chunks are
    /// never asked for again, and fresh long-lived entries at the cold end
    /// must not keep them.
    expiry: BTreeMap<(Instant, u64), ChunkKey>,
    next: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &ChunkKey) -> Option<Stored> {
        let s = self.lru.pop(key)?;
        self.forget(&s);
        Some(s)
    }

    fn pop_lru(&mut self) -> Option<Stored> {
        let (_, s) = self.lru.pop_lru()?;
        self.forget(&s);
        Some(s)
    }

    fn forget(&mut self, s: &Stored) {
        self.expiry.remove(&s.expires);
        self.bytes -= s.weight;
    }

    /// Drops every entry that is stale by now.
    fn purge(&mut self, now: Instant) {
        while let Some((&(at, n), _)) = self.expiry.first_key_value() {
            if at > now {
                break;
            }
            let key = self.expiry.remove(&(at, n)).expect("just seen");
            if let Some(s) = self.lru.pop(&key) {
                self.bytes -= s.weight;
            }
        }
    }
}

/// A byte-bounded LRU store.
pub struct Cache {
    inner: Mutex<Inner>,
    capacity: usize,
    max_object: usize,
}

impl Cache {
    /// A store of at most `capacity` bytes that refuses objects over
    /// `max_object` bytes.
    pub fn new(capacity: usize, max_object: usize) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                expiry: BTreeMap::new(),
                next: 0,
                bytes: 0,
            }),
            capacity,
            max_object: max_object.min(capacity),
        }
    }

    /// A fresh entry for `key`, promoted to most recently used. A stale one is
    /// dropped, so the caller refetches.
    pub fn get(&self, key: &ChunkKey) -> Option<Arc<Entry>> {
        let mut inner = self.inner.lock();
        let entry = inner.lru.get(key).map(|s| s.entry.clone())?;
        if entry.fresh() {
            return Some(entry);
        }
        inner.remove(key);
        None
    }

    /// Stores a complete entry, after dropping every stale entry, evicting
    /// least recently used entries until it fits. Returns how many entries
    /// were evicted for room, or `None` when the entry is too large to store.
    pub fn insert(&self, key: ChunkKey, entry: Entry) -> Option<usize> {
        let weight = entry.weight(&key);
        if weight > self.max_object {
            return None;
        }
        let now = Instant::now();
        let left = entry.ttl.saturating_sub(entry.age());
        // An absurd lifetime (past what Instant can hold) never expires.
        let at = now.checked_add(left).unwrap_or(now + FAR_FUTURE);
        let mut inner = self.inner.lock();
        inner.remove(&key);
        inner.purge(now);
        let mut evicted = 0;
        while inner.bytes + weight > self.capacity && inner.pop_lru().is_some() {
            evicted += 1;
        }
        inner.bytes += weight;
        inner.next += 1;
        let expires = (at, inner.next);
        inner.expiry.insert(expires, key.clone());
        inner.lru.put(
            key,
            Stored {
                entry: Arc::new(entry),
                weight,
                expires,
            },
        );
        Some(evicted)
    }

    /// Evicts least recently used entries until `enough` says so or the store
    /// is empty, and returns how many went. The memory budget calls this when
    /// it runs short, before it refuses new work.
    pub fn shed(&self, mut enough: impl FnMut() -> bool) -> usize {
        let mut evicted = 0;
        while !enough() {
            // Drop the entry outside the lock: its body may be the last
            // reference, and freeing a large body is not free.
            let popped = self.inner.lock().pop_lru();
            if popped.is_none() {
                break;
            }
            evicted += 1;
        }
        evicted
    }

    /// Current usage.
    pub fn usage(&self) -> Usage {
        let inner = self.inner.lock();
        Usage {
            bytes: inner.bytes,
            entries: inner.lru.len(),
        }
    }

    /// Calls `f` with the `limit` most recently used entries (stale ones
    /// too), most recent first, under the cache lock (the status page: the
    /// limit bounds how long a lookup can wait behind it; keep `f` cheap).
    pub fn visit_recent(&self, limit: usize, mut f: impl FnMut(&ChunkKey, &Entry)) {
        for (key, stored) in self.inner.lock().lru.iter().take(limit) {
            f(key, &stored.entry);
        }
    }

    /// The configured capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Stand-in expiry for lifetimes too long for `Instant` arithmetic.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> ChunkKey {
        ChunkKey {
            authority: "o:80".into(),
            path: p.into(),
        }
    }

    fn entry(len: usize, ttl: u64) -> Entry {
        let (_slot, w) = crate::slot::Slot::unbounded();
        w.publish_head(crate::slot::Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            len: None,
        })
        .unwrap();
        w.push(bytes::Bytes::from(vec![7u8; len])).unwrap();
        let (_, body) = w.finish().unwrap();
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
            stored: Instant::now(),
            initial_age: Duration::ZERO,
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn bounded_by_bytes_with_overhead_and_lru_order() {
        let per = entry(1000, 60).weight(&key("/a"));
        assert!(per > 1000 + ENTRY_OVERHEAD);
        let cache = Cache::new(per * 3, per * 3);
        for p in ["/a", "/b", "/c"] {
            assert_eq!(cache.insert(key(p), entry(1000, 60)), Some(0));
        }
        assert_eq!(cache.usage().bytes, per * 3);
        assert!(cache.get(&key("/a")).is_some()); // /b is now least recent
        assert_eq!(cache.insert(key("/d"), entry(1000, 60)), Some(1));
        assert!(cache.get(&key("/b")).is_none());
        assert!(cache.get(&key("/a")).is_some());
        assert!(cache.usage().bytes <= cache.capacity());
        assert_eq!(cache.insert(key("/big"), entry(per * 4, 60)), None);
        let mut left = 2;
        assert_eq!(
            cache.shed(|| {
                left -= 1;
                left < 0
            }),
            2
        );
        assert_eq!(cache.usage().entries, 1);
    }

    #[test]
    fn stale_entries_go_on_insert_wherever_they_are() {
        let cache = Cache::new(1 << 20, 1 << 20);
        // A long-lived entry sits at the cold end, in front of a stale one.
        cache.insert(key("/vod"), entry(10, 3600));
        let mut old = entry(10, 1);
        // Stale from the moment it is stored (its age reached its lifetime).
        old.initial_age = Duration::from_secs(1);
        cache.insert(key("/live-old"), old);
        cache.insert(key("/live-new"), entry(10, 60));
        // Never asked for again, yet gone: it was stale when /live-new came.
        assert_eq!(cache.usage().entries, 2);
        assert!(cache.get(&key("/vod")).is_some());
        assert!(cache.get(&key("/live-new")).is_some());
        let bytes = cache.usage().bytes;
        assert_eq!(bytes, 2 * entry(10, 1).weight(&key("/vod")) + 5);
    }

    #[test]
    fn stale_entries_are_dropped() {
        let cache = Cache::new(1 << 20, 1 << 20);
        cache.insert(key("/x"), entry(10, 0));
        assert!(cache.get(&key("/x")).is_none());
        assert_eq!(cache.usage(), Usage::default());
    }

    #[test]
    fn age_counts_initial_age_and_never_overflows() {
        let cache = Cache::new(1 << 20, 1 << 20);
        let mut e = entry(10, 60);
        e.initial_age = Duration::from_secs(59);
        cache.insert(key("/young"), e);
        assert!(cache.get(&key("/young")).is_some());
        let mut e = entry(10, 60);
        e.initial_age = Duration::from_secs(60);
        cache.insert(key("/old"), e);
        assert!(
            cache.get(&key("/old")).is_none(),
            "Age counts against max-age"
        );
        let mut e = entry(10, 60);
        e.initial_age = Duration::MAX;
        assert_eq!(e.age(), Duration::MAX);
        cache.insert(key("/hostile"), e);
        assert!(cache.get(&key("/hostile")).is_none());
    }
}
