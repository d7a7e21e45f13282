//! What the relay does to upstream response headers: removes hop-by-hop
//! ones before a head is published, and reads `Link: rel=next` to find the
//! chunk to prefetch (same origin only).

use http::HeaderMap;

use crate::key::ChunkKey;

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded, and
/// the parent's drain signal, which is about that parent, not the chunk.
const HOP_BY_HOP: &[&str] = &[
    crate::protocol::DRAINING_HEADER,
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any named by `Connection`. When a
/// response was framed by `Transfer-Encoding`, its `Content-Length` is
/// meaningless and is removed too (RFC 9112 §6.3): passing it on would let a
/// downstream client take a prefix for the whole body.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
}

/// The path of the chunk a `Link: <...>; rel="next"` header names, if it is on
/// the same origin as `key`. Relative references resolve against `key`.
pub fn next_link(headers: &HeaderMap, key: &ChunkKey) -> Option<String> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let is_next = parts.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=next" || p == "rel=\"next\""
            });
            if !is_next {
                continue;
            }
            let target = target.strip_prefix('<')?.strip_suffix('>')?;
            return resolve(target, key);
        }
    }
    None
}

fn resolve(target: &str, key: &ChunkKey) -> Option<String> {
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let (auth, path) = rest.split_at(rest.find('/')?);
        // Only follow links on the same origin: a Link header must not make
        // the relay fetch from anywhere else.
        let same = auth.eq_ignore_ascii_case(&key.authority)
            || key
                .authority
                .split_once(':')
                .is_some_and(|(h, _)| auth.eq_ignore_ascii_case(h));
        return same.then(|| path.to_string());
    }
    if target.starts_with("//") {
        return None;
    }
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    let base = key.path.split('?').next().unwrap_or("/");
    let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
    Some(format!("{dir}{target}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> ChunkKey {
        ChunkKey {
            authority: "o.example:80".into(),
            path: path.into(),
        }
    }

    fn link(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::LINK, v.parse().unwrap());
        h
    }

    #[test]
    fn next_links_resolve_on_the_same_origin_only() {
        let k = key("/live/s1/7?x=1");
        assert_eq!(
            next_link(&link("<8>; rel=\"next\""), &k).as_deref(),
            Some("/live/s1/8")
        );
        assert_eq!(
            next_link(&link("</live/s1/8>; rel=next"), &k).as_deref(),
            Some("/live/s1/8")
        );
        assert_eq!(
            next_link(&link("<http://o.example/live/s1/8>; rel=\"next\""), &k).as_deref(),
            Some("/live/s1/8")
        );
        assert_eq!(
            next_link(&link("<http://evil.example/x>; rel=\"next\""), &k),
            None
        );
        assert_eq!(next_link(&link("<//evil.example/x>; rel=next"), &k), None);
        assert_eq!(
            next_link(&link("</a>; rel=prev, </b>; rel=next"), &k).as_deref(),
            Some("/b")
        );
        assert_eq!(next_link(&link("</a>; rel=prev"), &k), None);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("mlcache-draining", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("cache-control", "max-age=1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("cache-control"));
    }
}
