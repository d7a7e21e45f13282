//! What a viewer learns from the origin over authenticated HTTPS: the
//! manifest (which chunks, in what order, under which key ids) and the keys.
//!
//! The origin serves these only over TLS, to a bearer token. Relays never see
//! them. Chunk bodies carry only the key id, in their RFC 8188 header. The
//! JSON shapes here are the contract in docs/protocol.md §8. Key derivation
//! lives here too, so the origin can rotate keys every K chunks without
//! storing them.

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// One chunk in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// `mlcache://AUTHORITY/PATH`.
    pub name: String,
    /// The key id its RFC 8188 header names.
    pub keyid: String,
}

/// The manifest of a live stream or a VOD title.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Manifest {
    /// A live stream: chunks follow a template, and the edge moves.
    Live {
        /// Chunk name template; `{seq}` is the sequence number.
        template: String,
        /// Key id template; `{epoch}` is `seq / key_rotation`.
        keyid_template: String,
        /// Keys change every this many chunks.
        key_rotation: u64,
        /// Newest published chunk (-1 before the first).
        edge: i64,
        /// Oldest chunk still available.
        first: u64,
        /// The last chunk, once the stream has ended.
        last: Option<u64>,
        /// Chunk duration in milliseconds.
        cadence_ms: u64,
        /// The chunks from the edge on that a player should fetch next.
        next: Vec<ChunkRef>,
    },
    /// A VOD title: the whole chunk list in order.
    Vod {
        /// Every chunk, in play order.
        chunks: Vec<ChunkRef>,
    },
}

impl Manifest {
    /// The reference of live chunk `seq`.
    pub fn live_chunk(template: &str, keyid_template: &str, rotation: u64, seq: u64) -> ChunkRef {
        ChunkRef {
            name: template.replace("{seq}", &seq.to_string()),
            keyid: keyid_template.replace("{epoch}", &(seq / rotation.max(1)).to_string()),
        }
    }
}

/// A key as served by `/keys/{keyid}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key id.
    pub keyid: String,
    /// The 16-octet input keying material, base64url without padding.
    pub key: String,
}

/// Derives the key of `keyid` from the origin's master secret
/// (HKDF-SHA-256, info = `"mlcache key " || keyid`), so keys rotate without
/// a key store.
pub fn derive_key(master: &[u8; 32], keyid: &str) -> [u8; 16] {
    let hk = Hkdf::<Sha256>::new(None, master);
    let mut k = [0u8; 16];
    hk.expand(format!("mlcache key {keyid}").as_bytes(), &mut k)
        .expect("16 bytes is a valid HKDF length");
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_json_shape() {
        let m = Manifest::Vod {
            chunks: vec![ChunkRef {
                name: "mlcache://o:80/vod/0".into(),
                keyid: "vod.0".into(),
            }],
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(
            j,
            r#"{"type":"vod","chunks":[{"name":"mlcache://o:80/vod/0","keyid":"vod.0"}]}"#
        );
        assert_eq!(serde_json::from_str::<Manifest>(&j).unwrap(), m);
        let c = Manifest::live_chunk("mlcache://o/live/0/{seq}", "live0.{epoch}", 10, 25);
        assert_eq!(
            (c.name.as_str(), c.keyid.as_str()),
            ("mlcache://o/live/0/25", "live0.2")
        );
    }

    #[test]
    fn keys_differ_per_id_and_master() {
        let m = [1u8; 32];
        assert_ne!(derive_key(&m, "a"), derive_key(&m, "b"));
        assert_ne!(derive_key(&m, "a"), derive_key(&[2u8; 32], "a"));
        assert_eq!(derive_key(&m, "a"), derive_key(&m, "a"));
    }
}
