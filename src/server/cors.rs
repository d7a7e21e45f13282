//! CORS for browser players (`--cors`): the relay's answer to `OPTIONS`
//! preflights, and the CORS headers it adds to responses that lack them.
//!
//! The origin's own CORS headers always pass through unchanged: the relay
//! stores and forwards every end-to-end response header. With `--cors` the
//! relay also fills the gaps, on every response it sends (cached, streamed
//! from a fill, or made by the relay itself such as a 404, 503 or 504, so
//! a player can read the status): `Access-Control-Allow-Origin` when the
//! response has none (`*`, or the request's `Origin` if it is in the list,
//! with `Vary: Origin`), and `Access-Control-Expose-Headers`
//! ([`EXPOSE_HEADERS`]) when the response has none, so players can read
//! `Age` and `Date` to find the live edge. Without `--cors` nothing is added
//! and `OPTIONS` gets 405, as any method other than GET and HEAD.
//!
//! Request headers are never forwarded upstream (docs/protocol.md says why),
//! so an origin that reflects `Origin` would have its answer to the first
//! requester cached for everyone: `--cors` is the fix on the relay's side.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::{local_response, Body};

/// The response headers a browser player may read, added as
/// `Access-Control-Expose-Headers` where the origin did not set it.
pub const EXPOSE_HEADERS: &str = "Age, Date, X-Cache, Content-Range, Accept-Ranges";

/// What a preflight answer allows.
const ALLOW_METHODS: &str = "GET, HEAD, OPTIONS";
/// How long a browser may reuse a preflight answer, in seconds (Chromium
/// caps it at two hours).
const MAX_AGE_SECS: u32 = 7200;
/// Longest `Access-Control-Request-Headers` echoed in a preflight answer; a
/// longer one gets only [`DEFAULT_ALLOW_HEADERS`].
pub const MAX_REQUEST_HEADERS_LEN: usize = 1024;
/// What a preflight allows when the request did not ask, or asked for too
/// much: what players send.
const DEFAULT_ALLOW_HEADERS: &str = "Range";

/// A bad `--cors` value.
#[derive(Debug, thiserror::Error)]
#[error("--cors {0:?}: expected * or an origin such as https://player.example:8443")]
pub struct CorsError(String);

/// Which page origins may read the relay's responses.
#[derive(Debug, Clone, Default)]
pub enum Cors {
    /// No `--cors`: nothing added, `OPTIONS` is 405.
    #[default]
    Off,
    /// `--cors '*'`: any page.
    Any,
    /// These origins (`scheme://host[:port]`, compared ignoring case).
    List(Vec<String>),
}

impl Cors {
    /// Parses the `--cors` values: empty is off, `*` anywhere allows any page,
    /// otherwise each must be an origin (`scheme://host[:port]`, no path).
    pub fn parse(values: &[String]) -> Result<Cors, CorsError> {
        if values.is_empty() {
            return Ok(Cors::Off);
        }
        if values.iter().any(|v| v.trim() == "*") {
            return Ok(Cors::Any);
        }
        let list = values
            .iter()
            .map(|v| {
                let v = v.trim().trim_end_matches('/');
                let ok = matches!(v.split_once("://"), Some((scheme, host))
                    if !scheme.is_empty()
                        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                        && !host.is_empty()
                        && !host.contains(['/', '?', '#', ' ', ',']))
                    && HeaderValue::from_str(v).is_ok();
                ok.then(|| v.to_ascii_lowercase())
                    .ok_or_else(|| CorsError(v.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cors::List(list))
    }

    /// Whether `--cors` was given.
    pub fn enabled(&self) -> bool {
        !matches!(self, Cors::Off)
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`,
    /// if it may read the response.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Cors::Off => None,
            Cors::Any => Some(HeaderValue::from_static("*")),
            Cors::List(list) => {
                let o = origin?;
                let s = o.to_str().ok()?.to_ascii_lowercase();
                list.contains(&s).then(|| o.clone())
            }
        }
    }

    /// Adds the CORS headers `headers` lacks, for a request whose `Origin`
    /// was `origin`. Headers the origin server set are left as they are.
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if let Cors::List(_) = self {
            // The answer depends on Origin whether or not it matched.
            append_vary(headers, "Origin");
        }
        let Some(allow) = self.allow(origin) else {
            return;
        };
        if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        }
        if !headers.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS) {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }

    /// The answer to an `OPTIONS` preflight with request headers `req`: 204
    /// allowing GET, HEAD and OPTIONS with the headers asked for (bounded by
    /// [`MAX_REQUEST_HEADERS_LEN`]). A page origin not in the list gets the
    /// 204 without `Access-Control-Allow-Origin`, which the browser takes as
    /// a refusal.
    pub fn preflight(&self, req: &HeaderMap) -> Response<Body> {
        let mut resp = local_response(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
        let h = resp.headers_mut();
        h.remove(header::CONTENT_TYPE);
        h.insert(header::ALLOW, HeaderValue::from_static(ALLOW_METHODS));
        let origin = req.get(header::ORIGIN);
        if let Cors::List(_) = self {
            append_vary(h, "Origin");
        }
        let Some(allow) = self.allow(origin) else {
            return resp;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        let asked = req
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|v| v.len() <= MAX_REQUEST_HEADERS_LEN && is_token_list(v.as_bytes()))
            .cloned()
            .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(MAX_AGE_SECS),
        );
        resp
    }
}

/// Whether `v` is a comma-separated list of header names (RFC 9110 tokens).
fn is_token_list(v: &[u8]) -> bool {
    v.split(|b| *b == b',').all(|name| {
        let name = name.trim_ascii();
        !name.is_empty()
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
    })
}

fn append_vary(h: &mut HeaderMap, name: &'static str) {
    let present = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(name) || v.trim() == "*");
    if !present {
        h.append(header::VARY, HeaderValue::from_static(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn values_parse() {
        assert!(matches!(Cors::parse(&[]).unwrap(), Cors::Off));
        assert!(matches!(Cors::parse(&["*".into()]).unwrap(), Cors::Any));
        assert!(Cors::parse(&["https://a.example/path".into()]).is_err());
        assert!(Cors::parse(&["a.example".into()]).is_err());
        let c = Cors::parse(&["https://A.example:8443/".into()]).unwrap();
        assert!(matches!(&c, Cors::List(l) if l == &["https://a.example:8443"]));
    }

    #[test]
    fn the_origins_own_headers_win() {
        let c = Cors::Any;
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, hv("https://o.example"));
        c.apply(None, &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://o.example");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], EXPOSE_HEADERS);
    }

    #[test]
    fn a_listed_origin_is_reflected_with_vary() {
        let c = Cors::parse(&["https://p.example".into()]).unwrap();
        let mut h = HeaderMap::new();
        c.apply(Some(&hv("https://p.example")), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://p.example");
        assert_eq!(h[header::VARY], "Origin");
        let mut h = HeaderMap::new();
        c.apply(Some(&hv("https://evil.example")), &mut h);
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(h[header::VARY], "Origin");
    }

    #[test]
    fn preflight_echoes_bounded_request_headers() {
        let c = Cors::Any;
        let mut req = HeaderMap::new();
        req.insert(header::ORIGIN, hv("https://p.example"));
        req.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, hv("range, x-a"));
        let r = c.preflight(&req);
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "range, x-a"
        );
        req.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            hv(&"x,".repeat(MAX_REQUEST_HEADERS_LEN)),
        );
        let r = c.preflight(&req);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "Range");
    }
}
