//! Chunk naming: turns any of the three downstream request forms into one
//! cache key, and holds the allow-list that decides which origins a relay may
//! fetch from.
//!
//! A chunk `mlcache://AUTHORITY/PATH` reaches a relay in one of three shapes:
//! forward-proxy absolute form (`GET http://AUTHORITY/PATH`), CDN style
//! (`Host:` or `:authority` names the origin), or the path form
//! `GET /mlcache/AUTHORITY/PATH`. [`RawKey::from_request`] folds all three into
//! `(authority, path-and-query)`, and [`OriginSet::resolve`] checks the
//! authority against `--allow-origin` and canonicalises it, so that
//! `example.com` and `example.com:80` share one cache entry.

use std::fmt;

use http::{Request, Uri};

/// The prefix of the path request form.
pub const PATH_FORM_PREFIX: &str = "/mlcache/";

/// Why a request could not be turned into a chunk key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Neither the URI, the path nor `Host` names an origin.
    #[error(
        "request names no origin: use an absolute URI, a Host header or /mlcache/AUTHORITY/PATH"
    )]
    NoAuthority,
    /// The authority is syntactically invalid.
    #[error("invalid origin authority {0:?}")]
    BadAuthority(String),
    /// The path is not an origin-form path.
    #[error("invalid chunk path {0:?}")]
    BadPath(String),
    /// The origin is not on the allow-list.
    #[error("origin {0} is not allowed by this relay (see --allow-origin)")]
    NotAllowed(String),
    /// An `--allow-origin` value could not be parsed.
    #[error("invalid --allow-origin {0:?}: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    BadOrigin(String),
}

/// The cache key of a chunk: the origin's canonical `host:port` and the
/// path-and-query. Query strings are part of the key because many origins use
/// them to name chunks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    /// Canonical `host:port` of the origin (lower-case, port always present).
    pub authority: String,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mlcache://{}{}", self.authority, self.path)
    }
}

/// A raw key as named by a request, before the allow-list check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawKey {
    /// Authority as the client wrote it.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl RawKey {
    /// Extracts the named chunk from a request, whatever its form.
    ///
    /// HTTP/2 requests always carry `:authority`; hyper exposes it as the URI's
    /// authority, which is why the path form is checked first.
    pub fn from_request<B>(req: &Request<B>) -> Result<RawKey, KeyError> {
        let uri = req.uri();
        let path = uri.path();
        if let Some(rest) = path.strip_prefix(PATH_FORM_PREFIX) {
            let (authority, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() {
                return Err(KeyError::NoAuthority);
            }
            let mut full = tail.to_string();
            if let Some(q) = uri.query() {
                full.push('?');
                full.push_str(q);
            }
            return Ok(RawKey {
                authority: authority.to_string(),
                path: check_path(full)?,
            });
        }
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        // HTTP/1.1 absolute form carries a scheme; HTTP/2 always has an
        // authority but its scheme is the connection's, so both count as
        // "the URI names the origin".
        if let Some(auth) = uri.authority() {
            return Ok(RawKey {
                authority: auth.as_str().to_string(),
                path: check_path(path_and_query)?,
            });
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .ok_or(KeyError::NoAuthority)?;
        Ok(RawKey {
            authority: host.to_string(),
            path: check_path(path_and_query)?,
        })
    }
}

fn check_path(p: String) -> Result<String, KeyError> {
    if !p.starts_with('/') || p.contains("..") && p.split('/').any(|s| s == "..") {
        return Err(KeyError::BadPath(p));
    }
    Ok(p)
}

/// URL scheme of an origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// How to reach it.
    pub scheme: Scheme,
    /// Lower-case host (IPv6 in brackets).
    pub host: String,
    /// Port (explicit or the scheme's default).
    pub port: u16,
}

impl Origin {
    /// Parses `http://HOST[:PORT]` or `https://HOST[:PORT]` (a trailing `/` is
    /// tolerated; any other path is refused, because an origin is a whole
    /// authority).
    pub fn parse(s: &str) -> Result<Origin, KeyError> {
        let bad = || KeyError::BadOrigin(s.to_string());
        let uri: Uri = s.parse().map_err(|_| bad())?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(bad()),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad());
        }
        let auth = uri.authority().ok_or_else(bad)?;
        let (host, port) = split_authority(auth.as_str()).map_err(|_| bad())?;
        Ok(Origin {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
        })
    }

    /// Canonical `host:port`, the authority part of every cache key.
    pub fn canonical(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The value for a `Host` header: the port is left out when it is the
    /// scheme's default, as browsers do.
    pub fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            self.canonical()
        }
    }

    /// The URL of `path` on this origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme.as_str(), self.host_header(), path)
    }
}

/// Splits `host[:port]` into a lower-case host and an optional port.
fn split_authority(a: &str) -> Result<(String, Option<u16>), ()> {
    let a = a.rsplit('@').next().unwrap_or(a);
    if a.is_empty() {
        return Err(());
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']').ok_or(())?;
        let host = &a[..end + 2];
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(()),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
    {
        return Err(());
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| ())?),
        None => None,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// The allow-list of origins (`--allow-origin`).
#[derive(Clone, Debug, Default)]
pub struct OriginSet {
    origins: Vec<Origin>,
}

impl OriginSet {
    /// Parses every `--allow-origin` value.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<OriginSet, KeyError> {
        let origins = list
            .iter()
            .map(|s| Origin::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OriginSet { origins })
    }

    /// Finds the allowed origin a client-written authority names. Without a
    /// port, an origin matches on its scheme's default port.
    pub fn find(&self, authority: &str) -> Result<&Origin, KeyError> {
        let (host, port) = split_authority(authority)
            .map_err(|_| KeyError::BadAuthority(authority.to_string()))?;
        self.origins
            .iter()
            .find(|o| o.host == host && port.unwrap_or(o.scheme.default_port()) == o.port)
            .ok_or_else(|| KeyError::NotAllowed(authority.to_string()))
    }

    /// Checks a raw key against the allow-list and returns the canonical key
    /// with the origin it belongs to.
    pub fn resolve(&self, raw: &RawKey) -> Result<(ChunkKey, Origin), KeyError> {
        let origin = self.find(&raw.authority)?;
        Ok((
            ChunkKey {
                authority: origin.canonical(),
                path: raw.path.clone(),
            },
            origin.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn three_forms_one_key() {
        let set = OriginSet::parse(&["http://Data.Example.com"]).unwrap();
        let a = RawKey::from_request(&req("http://data.example.com/s/c1?x=1", None)).unwrap();
        let b = RawKey::from_request(&req("/s/c1?x=1", Some("data.example.com:80"))).unwrap();
        let c = RawKey::from_request(&req("/mlcache/data.example.com/s/c1?x=1", Some("relay")))
            .unwrap();
        let ka = set.resolve(&a).unwrap().0;
        assert_eq!(ka, set.resolve(&b).unwrap().0);
        assert_eq!(ka, set.resolve(&c).unwrap().0);
        assert_eq!(ka.to_string(), "mlcache://data.example.com:80/s/c1?x=1");
    }

    #[test]
    fn allow_list_is_strict() {
        let set = OriginSet::parse(&["http://127.0.0.1:9100", "https://secure.example"]).unwrap();
        assert!(set.find("127.0.0.1:9100").is_ok());
        assert!(matches!(
            set.find("127.0.0.1:9101"),
            Err(KeyError::NotAllowed(_))
        ));
        assert!(matches!(
            set.find("127.0.0.1"),
            Err(KeyError::NotAllowed(_))
        ));
        assert_eq!(set.find("secure.example").unwrap().port, 443);
        assert!(set.find("secure.example:80").is_err());
        assert!(matches!(
            set.find("bad host"),
            Err(KeyError::BadAuthority(_))
        ));
    }

    #[test]
    fn bad_origins_and_paths() {
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("http://x/path").is_err());
        assert!(Origin::parse("x:80").is_err());
        assert!(RawKey::from_request(&req("/mlcache/", None)).is_err());
        assert!(RawKey::from_request(&req("/mlcache/a/../../etc", None)).is_err());
        assert_eq!(
            RawKey::from_request(&req("/x", None)),
            Err(KeyError::NoAuthority)
        );
        let o = Origin::parse("http://[::1]:9000/").unwrap();
        assert_eq!(o.canonical(), "[::1]:9000");
    }
}
