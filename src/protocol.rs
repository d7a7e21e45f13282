//! The wire protocol's names and small rules, in one place (docs/protocol.md
//! is their prose).
//!
//! Relay, head end, viewer client and loadgen all speak through these: the
//! "not yet" marker and its response, `X-Cache`, the probe path, the publish
//! time header, and the `Via` entry format used for loop detection. Nothing
//! here does I/O; each side builds its messages from these pieces.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, StatusCode};

/// The response header that marks a "not yet" answer: a `404` with it means
/// the chunk may appear later; a `404` without it means it does not exist.
pub const NOT_YET_HEADER: &str = "mlcache-not-yet";

/// `X-Cache`: how a relay answered (see [`CacheStatus`]).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// When a chunk was published, in Unix-epoch nanoseconds (head ends send it;
/// relays pass it through; the loadgen measures glass-to-glass from it).
pub const PUBLISH_HEADER: &str = "mlcache-publish-ns";

/// The anycast probe's path on a relay's viewer port.
pub const PROBE_PATH: &str = "/.well-known/mlcache";

/// Set on every response of a relay that is draining (SIGTERM received,
/// `/healthz` 503): the viewer should probe the anycast address again before
/// its next chunk, so it moves while this relay still serves. Hop-by-hop: a
/// relay never caches or passes on its parent's.
pub const DRAINING_HEADER: &str = "mlcache-draining";

/// The `Via` protocol name a relay writes before its id.
pub const VIA_PROTOCOL: &str = "1.1";

/// The `SETTINGS_MAX_FRAME_SIZE` that receivers of chunks over HTTP/2 (a
/// relay from its parent, the loadgen from a relay) advertise: 1 MiB, so a
/// sender writes a 64 KiB chunk as one DATA frame in one `writev` rather
/// than four 16 KiB frames in four (the RFC 9113 default is 16 KiB; the
/// largest allowed is 16 MiB - 1). Frames only get this large when the
/// stream and connection windows allow it, so receivers pair it with
/// generous windows.
pub const H2_MAX_FRAME_SIZE: u32 = 1 << 20;

/// The value of [`X_CACHE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store.
    Hit,
    /// This request opened the upstream fetch (and every response the relay
    /// makes itself).
    Miss,
    /// Joined a fetch another request opened.
    Coalesced,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
        }
    }

    /// The header value, ready to insert.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// Reads `X-Cache` from a response's headers.
    pub fn of(headers: &HeaderMap) -> Option<CacheStatus> {
        match headers.get(X_CACHE)?.as_bytes() {
            b"HIT" => Some(CacheStatus::Hit),
            b"MISS" => Some(CacheStatus::Miss),
            b"COALESCED" => Some(CacheStatus::Coalesced),
            _ => None,
        }
    }
}

/// Whether a response is the protocol's "not yet": 404 plus the marker.
pub fn is_not_yet(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::NOT_FOUND && headers.contains_key(NOT_YET_HEADER)
}

/// The headers of a "not yet" answer (its status is `404`): the marker, never
/// stored, ask again at once.
pub fn not_yet_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(NOT_YET_HEADER, HeaderValue::from_static("1"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("0"));
    h
}

/// A relay's `Via` entry: `1.1 <id>`.
pub fn via_entry(id: &str) -> String {
    format!("{VIA_PROTOCOL} {id}")
}

/// The `received-by` ids of every hop in `Via` header values.
pub fn via_ids<'a>(via: impl Iterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a str> {
    via.filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.split_whitespace().nth(1))
}

/// Now, in Unix-epoch nanoseconds (the unit of [`PUBLISH_HEADER`]).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_yet_is_told_apart_from_404() {
        assert!(is_not_yet(StatusCode::NOT_FOUND, &not_yet_headers()));
        assert!(!is_not_yet(StatusCode::NOT_FOUND, &HeaderMap::new()));
        assert!(!is_not_yet(StatusCode::OK, &not_yet_headers()));
    }

    #[test]
    fn via_ids_and_x_cache_round_trip() {
        let v = [
            HeaderValue::from_str(&via_entry("a")).unwrap(),
            HeaderValue::from_static("1.1 b, 1.0 c (comment)"),
        ];
        assert_eq!(via_ids(v.iter()).collect::<Vec<_>>(), ["a", "b", "c"]);
        for s in [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Coalesced] {
            let mut h = HeaderMap::new();
            h.insert(X_CACHE, s.header_value());
            assert_eq!(CacheStatus::of(&h), Some(s));
        }
    }
}
