//! What a chunk is: its deterministic bytes, its RFC 8188 sealing, its key id
//! and the headers it is served with.
//!
//! The publisher (live) and the router (VOD) take plain bytes from
//! [`chunk_bytes`] (or a file), then [`chunk_response`] seals them under the
//! chunk's key id, bound to its binding name, and builds the headers; the
//! result is pushed into a slot that every request for the chunk reads.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

use super::OriginConfig;
use crate::protocol::PUBLISH_HEADER;

/// How the origin encrypts chunks.
#[derive(Debug, Clone)]
pub struct Encryption {
    /// Secret all chunk keys are derived from.
    pub master: [u8; 32],
    /// Keys change every this many chunks.
    pub key_rotation: u64,
    /// RFC 8188 record size.
    pub record_size: u32,
}

impl Encryption {
    /// Fresh random master secret. The record size is clamped to what a
    /// viewer accepts (`ece::MIN_RS..=ece::MAX_RS`).
    pub fn random(key_rotation: u64, record_size: u32) -> Encryption {
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master).expect("the OS has a random source");
        Encryption {
            master,
            key_rotation: key_rotation.max(1),
            record_size: record_size.clamp(crate::ece::MIN_RS, crate::ece::MAX_RS),
        }
    }

    /// Encrypts one chunk under `keyid`, bound to its binding name `name`
    /// (`manifest::binding_name`): the RFC 8188 IKM is
    /// `ece::name_key(key, name)`, so the body decrypts only as this chunk.
    fn seal(&self, name: &str, keyid: &str, plaintext: &[u8]) -> Bytes {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).expect("the OS has a random source");
        let key = crate::manifest::derive_key(&self.master, keyid);
        Bytes::from(crate::ece::encrypt(
            &crate::ece::name_key(&key, name),
            salt,
            // Fields are public: never encrypt with a size viewers refuse.
            self.record_size
                .clamp(crate::ece::MIN_RS, crate::ece::MAX_RS),
            keyid.as_bytes(),
            plaintext,
        ))
    }
}

/// One step of Marsaglia's xorshift64 (shifts 13, 7, 17): advances `x` and
/// returns it. Cheap and reproducible, for filler and test randomness, never
/// for secrets; `x` must not be 0 (0 stays 0).
pub fn xorshift64(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Deterministic chunk bytes: timestamp, sequence, then xorshift filler seeded
/// by (stream, seq), so every viewer can check it got the same bytes.
pub fn chunk_bytes(stream: u64, seq: u64, size: usize, publish_ns: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64(publish_ns);
    b.put_u64(seq);
    let mut x = (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        | 1;
    while b.len() < size {
        b.put_u64(xorshift64(&mut x));
    }
    b.truncate(size.max(16));
    b.freeze()
}

/// The body and headers of a chunk: encrypted under `keyid` and bound to its
/// binding name `name` when the origin encrypts, with its publish time.
pub(super) fn chunk_response(
    cfg: &OriginConfig,
    name: &str,
    keyid: &str,
    plain: Bytes,
    publish_ns: u64,
) -> (Bytes, HeaderMap) {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("video/mp2t"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    h.insert(PUBLISH_HEADER, HeaderValue::from(publish_ns));
    let body = match &cfg.encryption {
        Some(enc) => {
            h.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static(crate::ece::CODING),
            );
            enc.seal(name, keyid, &plain)
        }
        None => plain,
    };
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    (body, h)
}

/// How many chunks share one key (1 when the origin does not encrypt).
pub(super) fn rotation(cfg: &OriginConfig) -> u64 {
    cfg.encryption.as_ref().map_or(1, |e| e.key_rotation)
}

/// The key id of VOD chunk `n`: `vod.{epoch}`.
pub(super) fn vod_keyid(cfg: &OriginConfig, n: u64) -> String {
    format!("vod.{}", n / rotation(cfg))
}

/// The key id of live chunk `seq` of `stream`: `live{stream}.{epoch}` (the
/// manifest's `keyid_template`).
pub(super) fn live_keyid(cfg: &OriginConfig, stream: usize, seq: u64) -> String {
    format!("live{stream}.{}", seq / rotation(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body format is shared with viewers and the loadgen, which check
    /// bytes they did not make: pin it (values from the pre-refactor code).
    #[test]
    fn chunk_bytes_are_pinned() {
        assert_eq!(
            chunk_bytes(3, 7, 40, 0x0102_0304_0506_0708).as_ref(),
            b"\x01\x02\x03\x04\x05\x06\x07\x08\0\0\0\0\0\0\0\x07\
              \x92\xda\xd1\x5b\xcf\xed\x34\x84\x5e\x8e\x00\xa9\xba\x75\x4f\xed\
              \x9c\xb7\xba\xd7\x21\xcb\xfe\x32"
        );
        // A VOD chunk (stream u64::MAX), cut inside a filler word.
        let vod = chunk_bytes(u64::MAX, 5, 37, 0);
        assert_eq!(vod.len(), 37);
        assert_eq!(
            &vod[16..],
            b"\x66\xa6\x98\x52\x25\xc0\xff\x3e\xbe\x60\x59\xf5\x0c\xd3\x71\x40\x3f\x0b\x3d\xe2\xb3"
        );
        // Never shorter than its 16-byte prefix.
        assert_eq!(chunk_bytes(0, 0, 0, 0).len(), 16);
    }
}
