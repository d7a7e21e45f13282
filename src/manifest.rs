//! What a viewer learns from the origin over authenticated HTTPS: the
//! manifest (which chunks, in what order, under which key ids) and the keys.
//!
//! The origin serves these only over TLS, to a bearer token. Relays never see
//! them. Chunk bodies carry only the key id, in their RFC 8188 header. The
//! JSON shapes here are the contract in docs/protocol.md §8. Key derivation
//! lives here too, so the origin can rotate keys every K chunks without
//! storing them.
//!
//! Two things the viewer checks every chunk against come from here as well:
//! the chunk's *binding name* ([`binding_name`]: the canonical form of its
//! `mlcache://` name that the origin mixes into the chunk's key, so a body
//! only decrypts as the chunk it was made for), and the key id the manifest
//! says the chunk is under ([`KeyIndex`]), which the header of a body must
//! name before the viewer asks the API for any key.

use std::collections::HashMap;

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

/// Why a name has no binding form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    /// Not `mlcache://AUTHORITY/PATH`.
    #[error("not an mlcache://AUTHORITY/PATH name: {0:?}")]
    NotAName(String),
    /// The authority is not `host[:port]` (userinfo, bad characters, bad port).
    #[error("invalid authority {0:?}: expected host[:port]")]
    Authority(String),
    /// The path is not `/` followed by visible ASCII.
    #[error("invalid path {0:?}: expected / followed by visible ASCII")]
    Path(String),
    /// A live template without exactly one `{{seq}}` in its path.
    #[error("live template {0:?} must have exactly one {{seq}} in its path")]
    Template(String),
}

/// The canonical `host:port` of an authority, as the binding uses it:
/// ASCII host lower-cased (an IPv6 literal stays in brackets), the port in
/// decimal without leading zeros, `80` when absent or empty. Userinfo and
/// characters outside `A-Z a-z 0-9 - . _ ~` (hex digits, `:` and `.` inside
/// brackets) are refused.
pub fn canonical_authority(authority: &str) -> Result<String, BindError> {
    let bad = || BindError::Authority(authority.to_string());
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(bad());
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None | Some("") => 80,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?
        }
        Some(_) => return Err(bad()),
    };
    Ok(format!("{host}:{port}"))
}

/// The binding name of chunk `mlcache://AUTHORITY/PATH`:
/// `mlcache://` + [`canonical_authority`] + the path up to (not including)
/// the first `?` or `#`, byte for byte (no percent-decoding). The path must
/// start with `/` and hold only visible ASCII (0x21..=0x7E).
///
/// The query is left out on purpose: a chunk is encrypted once and shared by
/// every viewer, while queries carry per-request things (tokens, cache
/// busters, test faults). An origin whose chunks differ only by query must
/// name them by path to be protected against substitution.
pub fn binding_name(authority: &str, path: &str) -> Result<String, BindError> {
    let auth = canonical_authority(authority)?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') || !path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(BindError::Path(path.to_string()));
    }
    Ok(format!("mlcache://{auth}{path}"))
}

/// The binding name of a whole `mlcache://AUTHORITY/PATH` string (an empty
/// path is `/`).
pub fn binding_of(name: &str) -> Result<String, BindError> {
    let rest = name
        .strip_prefix("mlcache://")
        .ok_or_else(|| BindError::NotAName(name.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    binding_name(authority, path)
}

/// Which key id each chunk of a title is under, looked up by binding name.
#[derive(Debug, Clone)]
pub enum KeyIndex {
    /// A VOD title's chunk list. `None` marks a name listed twice under
    /// different key ids: ambiguous, so no key id is trusted for it.
    Vod(HashMap<String, Option<String>>),
    /// A live stream's template, split around `{seq}`.
    Live {
        /// Binding name up to `{seq}`.
        prefix: String,
        /// Binding name after `{seq}`.
        suffix: String,
        /// Key id template (`{epoch}`).
        keyid_template: String,
        /// Chunks per key.
        rotation: u64,
        /// The last chunk, once the stream has ended.
        last: Option<u64>,
    },
}

impl KeyIndex {
    /// Indexes a manifest. VOD entries whose names have no binding form are
    /// left out (nothing can match them).
    pub fn new(m: &Manifest) -> Result<KeyIndex, BindError> {
        match m {
            Manifest::Vod { chunks } => {
                let mut map: HashMap<String, Option<String>> = HashMap::new();
                for c in chunks {
                    let Ok(b) = binding_of(&c.name) else { continue };
                    let e = map.entry(b).or_insert_with(|| Some(c.keyid.clone()));
                    if e.as_deref() != Some(c.keyid.as_str()) {
                        *e = None;
                    }
                }
                Ok(KeyIndex::Vod(map))
            }
            Manifest::Live {
                template,
                keyid_template,
                key_rotation,
                last,
                ..
            } => {
                let bad = || BindError::Template(template.clone());
                let b = binding_of(template).map_err(|_| bad())?;
                let (prefix, suffix) = b.split_once("{seq}").ok_or_else(bad)?;
                if suffix.contains("{seq}") {
                    return Err(bad());
                }
                Ok(KeyIndex::Live {
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                    keyid_template: keyid_template.clone(),
                    rotation: (*key_rotation).max(1),
                    last: *last,
                })
            }
        }
    }

    /// The key id of the chunk with binding name `binding`, if the title has
    /// it. A live sequence number must be canonical decimal (`7`, not `07`)
    /// and not past the stream's last chunk.
    pub fn keyid_for(&self, binding: &str) -> Option<String> {
        match self {
            KeyIndex::Vod(map) => map.get(binding).cloned().flatten(),
            KeyIndex::Live {
                prefix,
                suffix,
                keyid_template,
                rotation,
                last,
            } => {
                let seq = binding
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                let canonical = !seq.is_empty()
                    && seq.bytes().all(|b| b.is_ascii_digit())
                    && (seq == "0" || !seq.starts_with('0'));
                let seq: u64 = seq.parse().ok().filter(|_| canonical)?;
                if last.is_some_and(|l| seq > l) {
                    return None;
                }
                Some(keyid_template.replace("{epoch}", &(seq / rotation).to_string()))
            }
        }
    }
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

    #[test]
    fn binding_names_are_canonical() {
        let b = |a: &str, p: &str| binding_name(a, p);
        assert_eq!(
            b("O.Example", "/v/1").unwrap(),
            "mlcache://o.example:80/v/1"
        );
        assert_eq!(
            b("o.example:080", "/v/1?x=1#f").unwrap(),
            "mlcache://o.example:80/v/1"
        );
        assert_eq!(b("o.example:", "/").unwrap(), "mlcache://o.example:80/");
        assert_eq!(b("[::1]:9000", "/a").unwrap(), "mlcache://[::1]:9000/a");
        assert_eq!(b("[FE80::1]", "/a").unwrap(), "mlcache://[fe80::1]:80/a");
        assert_eq!(
            b("127.0.0.1:9100", "/a%2F").unwrap(),
            "mlcache://127.0.0.1:9100/a%2F"
        );
        for a in [
            "", "u@h", "h:0", "h:65536", "h:+1", "h:1:2", "[::1", "[zz]", "a b", "h:123456",
        ] {
            assert!(b(a, "/").is_err(), "{a}");
        }
        for p in ["", "x", "/a b", "/\u{e9}", "/\n"] {
            assert!(b("h", p).is_err(), "{p:?}");
        }
        assert_eq!(binding_of("mlcache://H:80").unwrap(), "mlcache://h:80/");
        assert!(binding_of("http://h/x").is_err());
    }

    #[test]
    fn key_index_finds_key_ids_by_binding_name() {
        let vod = Manifest::Vod {
            chunks: vec![
                ChunkRef {
                    name: "mlcache://O:80/vod/0".into(),
                    keyid: "vod.0".into(),
                },
                ChunkRef {
                    name: "mlcache://o/vod/1".into(),
                    keyid: "vod.0".into(),
                },
                ChunkRef {
                    name: "mlcache://o/vod/2".into(),
                    keyid: "a".into(),
                },
                ChunkRef {
                    name: "mlcache://o/vod/2".into(),
                    keyid: "b".into(),
                },
            ],
        };
        let i = KeyIndex::new(&vod).unwrap();
        assert_eq!(
            i.keyid_for("mlcache://o:80/vod/0").as_deref(),
            Some("vod.0")
        );
        assert_eq!(
            i.keyid_for("mlcache://o:80/vod/1").as_deref(),
            Some("vod.0")
        );
        assert_eq!(i.keyid_for("mlcache://o:80/vod/2"), None, "ambiguous");
        assert_eq!(i.keyid_for("mlcache://o:80/vod/3"), None);
        let live = Manifest::Live {
            template: "mlcache://o:9/live/0/{seq}".into(),
            keyid_template: "live0.{epoch}".into(),
            key_rotation: 4,
            edge: 7,
            first: 0,
            last: Some(20),
            cadence_ms: 500,
            next: vec![],
        };
        let i = KeyIndex::new(&live).unwrap();
        assert_eq!(
            i.keyid_for("mlcache://o:9/live/0/7").as_deref(),
            Some("live0.1")
        );
        assert_eq!(
            i.keyid_for("mlcache://o:9/live/0/0").as_deref(),
            Some("live0.0")
        );
        for bad in [
            "mlcache://o:9/live/0/07",
            "mlcache://o:9/live/0/",
            "mlcache://o:9/live/0/21",
            "mlcache://o:9/live/1/7",
            "mlcache://o:9/live/0/7/x",
            "mlcache://o:9/live/0/-1",
        ] {
            assert_eq!(i.keyid_for(bad), None, "{bad}");
        }
        let mut two = live.clone();
        if let Manifest::Live { template, .. } = &mut two {
            *template = "mlcache://o/{seq}/{seq}".into();
        }
        assert!(KeyIndex::new(&two).is_err());
    }
}
