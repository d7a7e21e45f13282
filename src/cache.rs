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

struct Inner {
    lru: LruCache<ChunkKey, (Arc<Entry>, usize)>,
    bytes: usize,
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
        let (entry, weight) = inner.lru.get(key).map(|(e, w)| (e.clone(), *w))?;
        if entry.fresh() {
            return Some(entry);
        }
        inner.lru.pop(key);
        inner.bytes -= weight;
        None
    }

    /// Stores a complete entry, evicting least recently used entries until it
    /// fits. Returns how many entries were evicted, or `None` when the entry
    /// is too large to store.
    pub fn insert(&self, key: ChunkKey, entry: Entry) -> Option<usize> {
        let weight = entry.weight(&key);
        if weight > self.max_object {
            return None;
        }
        let mut inner = self.inner.lock();
        if let Some((_, old)) = inner.lru.pop(&key) {
            inner.bytes -= old;
        }
        // Stale entries at the cold end go first, whatever the room: a live
        // stream's old chunks are never asked for again, so waiting for a
        // `get` to notice them would keep them until the store is full.
        while let Some(w) = inner
            .lru
            .peek_lru()
            .filter(|(_, (e, _))| !e.fresh())
            .map(|(_, (_, w))| *w)
        {
            inner.lru.pop_lru();
            inner.bytes -= w;
        }
        let mut evicted = 0;
        while inner.bytes + weight > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, (_, w))) => {
                    inner.bytes -= w;
                    evicted += 1;
                }
                None => break,
            }
        }
        inner.bytes += weight;
        inner.lru.put(key, (Arc::new(entry), weight));
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
            let popped = {
                let mut inner = self.inner.lock();
                let popped = inner.lru.pop_lru();
                if let Some((_, (_, w))) = &popped {
                    inner.bytes -= w;
                }
                popped
            };
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

    /// The configured capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

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
    fn stale_entries_at_the_cold_end_go_on_insert() {
        let cache = Cache::new(1 << 20, 1 << 20);
        let mut old = entry(10, 60);
        old.initial_age = Duration::from_secs(61);
        cache.insert(key("/old"), old);
        cache.insert(key("/fresh"), entry(10, 60));
        // Never asked for again, yet gone: it was stale when /fresh came.
        assert_eq!(cache.usage().entries, 1);
        assert!(cache.get(&key("/fresh")).is_some());
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
