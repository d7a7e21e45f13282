//! A parse cache shared by all players of a run: identical playlist bodies
//! are parsed once.
//!
//! Thousands of players blocking on the same playlist version get
//! byte-identical bodies, and parsing allocates per tag, so without this the
//! loadgen spends its CPU parsing the same text thousands of times and
//! measures itself rather than the relay. The cache is a small LRU keyed by
//! the body's hash and length; a hit is confirmed by comparing the bytes
//! (the stored body is a refcounted `Bytes`, not a copy), so a hash
//! collision can never hand a player the wrong playlist. Parse errors are
//! not cached: they are rare and each player counts its own.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::playlist::{self, MediaPlaylist, Playlist, Variant};

/// A parsed playlist, shared between players (no per-player copy).
#[derive(Debug, Clone)]
pub enum Parsed {
    Multivariant(Arc<Vec<Variant>>),
    Media(Arc<MediaPlaylist>),
}

impl From<Playlist> for Parsed {
    fn from(p: Playlist) -> Parsed {
        match p {
            Playlist::Multivariant(v) => Parsed::Multivariant(Arc::new(v)),
            Playlist::Media(m) => Parsed::Media(Arc::new(m)),
        }
    }
}

struct Entry {
    hash: u64,
    body: Bytes,
    parsed: Parsed,
}

/// The cache; capacity 0 parses every body (`--no-parse-cache`).
pub struct ParseCache {
    capacity: usize,
    /// Most recently used at the back.
    entries: Mutex<VecDeque<Entry>>,
    hits: AtomicU64,
    parses: AtomicU64,
}

fn hash(body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

impl ParseCache {
    /// A cache of `capacity` bodies (a few dozen covers every live version
    /// players are on at once).
    pub fn new(capacity: usize) -> ParseCache {
        ParseCache {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
            hits: AtomicU64::new(0),
            parses: AtomicU64::new(0),
        }
    }

    /// The parsed form of `body`, parsed now unless an identical body was.
    pub fn parse(&self, body: &Bytes) -> Result<Parsed, String> {
        let h = (self.capacity > 0).then(|| hash(body));
        if let Some(h) = h {
            let mut e = self.entries.lock();
            if let Some(i) = e
                .iter()
                .rposition(|x| x.hash == h && x.body.len() == body.len() && x.body == *body)
            {
                let hit = e.remove(i).expect("found above");
                let parsed = hit.parsed.clone();
                e.push_back(hit);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(parsed);
            }
        }
        // Parsed outside the lock: players with other bodies go on meanwhile.
        let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
        let parsed: Parsed = playlist::parse(text).map_err(|e| e.to_string())?.into();
        self.parses.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = h {
            let mut e = self.entries.lock();
            // Another player may have parsed the same body meanwhile.
            if !e.iter().any(|x| x.hash == h && x.body == *body) {
                if e.len() >= self.capacity {
                    e.pop_front();
                }
                e.push_back(Entry {
                    hash: h,
                    body: body.clone(),
                    parsed: parsed.clone(),
                });
            }
        }
        Ok(parsed)
    }

    /// (bodies served from the cache, bodies parsed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.parses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIA: &str =
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:2.0,\ns5.m4s\n";

    #[test]
    fn identical_bodies_parse_once_and_others_are_evicted() {
        let c = ParseCache::new(2);
        let a = Bytes::from_static(MEDIA.as_bytes());
        let a2 = Bytes::copy_from_slice(MEDIA.as_bytes());
        let p1 = c.parse(&a).unwrap();
        let p2 = c.parse(&a2).unwrap();
        assert_eq!(c.counts(), (1, 1));
        let (Parsed::Media(m1), Parsed::Media(m2)) = (p1, p2) else {
            panic!("media playlists")
        };
        assert!(Arc::ptr_eq(&m1, &m2), "the same parse is shared");
        assert_eq!(m1.segments.len(), 1);
        // Same length, other bytes: parsed on its own, never confused.
        let b = Bytes::from(MEDIA.replace("s5", "s6"));
        assert_eq!(b.len(), a.len());
        let Parsed::Media(mb) = c.parse(&b).unwrap() else {
            panic!()
        };
        assert_ne!(mb.segments[0].uri, m1.segments[0].uri);
        assert_eq!(c.counts(), (1, 2));
        // A third body evicts the least recently used (a).
        c.parse(&Bytes::from(MEDIA.replace("s5", "s7"))).unwrap();
        c.parse(&a).unwrap();
        assert_eq!(c.counts(), (1, 4));
        // Errors are reported, not cached.
        assert!(c.parse(&Bytes::from_static(b"nope")).is_err());
        assert!(c.parse(&Bytes::from_static(b"nope")).is_err());
        // Capacity 0 parses every time.
        let none = ParseCache::new(0);
        none.parse(&a).unwrap();
        none.parse(&a).unwrap();
        assert_eq!(none.counts(), (0, 2));
    }
}
