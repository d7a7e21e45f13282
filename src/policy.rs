//! HTTP caching policy (RFC 9111): whether a response may be stored, how long
//! it stays fresh, and how old it already is.
//!
//! Pure functions of a response head and the wall clock. The fill task calls
//! [`Policy::from_response`] once per upstream head, keeps the returned
//! [`Policy`] with the stored entry, and every later hit asks
//! [`Policy::fresh`] and [`Policy::age_now`] with the time the entry has been
//! resident. Nothing here reads a clock or allocates per hit.
//!
//! The rules, in order:
//!
//! - **Statuses.** Only `200` (default lifetime `default_ttl`) and `404`
//!   (negative caching, default `negative_ttl`) are stored. `410`, `206`,
//!   redirects and errors are never stored: a relay's requests carry no
//!   `Range` and its origins are chunk servers, so nothing else is worth the
//!   risk.
//! - **Never stored** (still coalesced while in flight): `no-store`,
//!   `private` and `no-cache` (qualified or not), `Vary: *`, a `Cache-Control`
//!   line that is not visible ASCII, and any response with `Set-Cookie`. The
//!   last one is a choice: nginx (`proxy_cache` skips responses with
//!   `Set-Cookie` unless told `proxy_ignore_headers Set-Cookie`) and Varnish
//!   (the built-in `vcl_backend_response` makes them uncacheable) both refuse
//!   them by default, because one viewer's session id must never reach
//!   another. A cookie on a chunk is not meaningful anyway, since the relay's
//!   upstream request never carries a viewer's cookies. Coalesced viewers of
//!   such a response should not get the cookie either: see
//!   [`strip_set_cookie`].
//! - **Freshness lifetime** (RFC 9111 §4.2.1): `s-maxage`, else `max-age`,
//!   else `Expires` minus `Date` (`Date` missing or invalid: the time the
//!   response was received), else the status default. `Expires` is ignored
//!   when either directive is present, as §5.3 requires. An invalid `Expires`
//!   (including `0`) means "already expired".
//! - **Invalid freshness information is stale** (§4.2.1, §1.2.2): a `max-age`
//!   or `s-maxage` without a value, with anything but digits (a sign, a
//!   fraction, garbage after it), or given twice with different values, and
//!   two different `Expires` values, all make the response not stored.
//!   Repeating the same value is harmless. Delta-seconds that overflow
//!   saturate at 2^31 s, as §1.2.2 allows; nothing here can overflow or panic.
//! - **Initial age** (§4.2.3, simplified): `max(Age, apparent age)`, where the
//!   apparent age is `now - Date` counted in whole seconds (both fields have
//!   one-second resolution, so a response dated this second is 0 s old, not
//!   up to 0.999 s). `response_delay` is left out: the policy is computed when
//!   the head arrives, and the delay of one hop is far below the one-second
//!   resolution of `Age`. `Age` takes the first member of the first line,
//!   saturates at 2^31 s, and is ignored when invalid (§5.1). A `Date` in the
//!   future counts as age 0. Note that an origin whose clock runs behind
//!   makes its responses look old: that is the RFC's choice (a skewed clock
//!   errs towards refetching, never towards serving stale).
//! - **Fresh** while `initial_age + resident < lifetime`, so a response that
//!   arrives with `Age >= lifetime` is not stored at all, and staleness no
//!   longer compounds down a tree of relays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};

/// The largest delta-seconds value the policy represents (RFC 9111 §1.2.2):
/// bigger values, and anything that would overflow, saturate here.
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// The lifetimes to use when a storable response states none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// For a `200` (`--default-ttl`).
    pub default_ttl: Duration,
    /// For a `404` (`--negative-ttl`).
    pub negative_ttl: Duration,
}

/// What a response head allows the relay to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Whether the response may be stored at all.
    pub store: bool,
    /// Freshness lifetime (RFC 9111 §4.2.1), counted from the response's
    /// generation, not from when the relay stored it.
    pub ttl: Duration,
    /// How old the response already was when it arrived (§4.2.3).
    pub initial_age: Duration,
    /// Why it is not stored (a metric label), `None` when `store` is true.
    pub why_not: Option<&'static str>,
}

impl Policy {
    fn refuse(why: &'static str) -> Policy {
        Policy {
            store: false,
            ttl: Duration::ZERO,
            initial_age: Duration::ZERO,
            why_not: Some(why),
        }
    }

    /// Derives the policy of a response with `status` and `headers` that
    /// arrived at `now` (wall clock, for `Date` and `Expires`).
    pub fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
        defaults: &Defaults,
    ) -> Policy {
        let fallback = match status {
            StatusCode::OK => defaults.default_ttl,
            StatusCode::NOT_FOUND => defaults.negative_ttl,
            _ => return Policy::refuse("status"),
        };
        if headers.contains_key(http::header::SET_COOKIE) {
            return Policy::refuse("set_cookie");
        }
        if headers.get_all(http::header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|m| m.trim_ascii() == b"*")
        }) {
            return Policy::refuse("vary");
        }
        let cc = match CacheControl::parse(headers) {
            Ok(cc) => cc,
            Err(why) => return Policy::refuse(why),
        };
        let date = single_date(headers, http::header::DATE)
            .ok()
            .flatten()
            .unwrap_or(now);
        let ttl = match cc.s_maxage.or(cc.max_age) {
            Some(secs) => secs,
            None => match single_date(headers, http::header::EXPIRES) {
                Err(()) => return Policy::refuse("invalid_expires"),
                // An invalid Expires is already expired (§5.3).
                Ok(Some(expires)) => expires.duration_since(date).unwrap_or(Duration::ZERO),
                Ok(None) if headers.contains_key(http::header::EXPIRES) => Duration::ZERO,
                Ok(None) => fallback,
            },
        }
        .min(MAX_DELTA);
        let initial_age = age_field(headers).max(apparent_age(date, now));
        if ttl.is_zero() || initial_age >= ttl {
            return Policy {
                initial_age,
                ttl,
                ..Policy::refuse("stale")
            };
        }
        Policy {
            store: true,
            ttl,
            initial_age,
            why_not: None,
        }
    }

    /// Whether an entry stored under this policy is still fresh after
    /// `resident` in the relay's store.
    pub fn fresh(&self, resident: Duration) -> bool {
        self.store && self.initial_age.saturating_add(resident) < self.ttl
    }

    /// The age to report in a hit's `Age` header after `resident` in the
    /// store, capped at [`MAX_DELTA`] (send `.as_secs()`).
    pub fn age_now(&self, resident: Duration) -> Duration {
        self.initial_age.saturating_add(resident).min(MAX_DELTA)
    }
}

/// Removes `Set-Cookie` from a head shared with viewers that did not cause
/// the fetch (coalesced viewers of an uncacheable response). Returns whether
/// there was one.
pub fn strip_set_cookie(headers: &mut HeaderMap) -> bool {
    headers.remove(http::header::SET_COOKIE).is_some()
}

/// The directives of all `Cache-Control` lines that matter to a shared cache.
#[derive(Debug, Default)]
struct CacheControl {
    max_age: Option<Duration>,
    s_maxage: Option<Duration>,
}

impl CacheControl {
    /// Parses every line. `Err` carries the reason the response must not be
    /// stored: a forbidding directive, or invalid freshness information.
    fn parse(headers: &HeaderMap) -> Result<CacheControl, &'static str> {
        let mut cc = CacheControl::default();
        for line in headers.get_all(http::header::CACHE_CONTROL) {
            // A line we cannot read could hide a no-store.
            let line = line.to_str().map_err(|_| "invalid_cache_control")?;
            for d in Directives::new(line) {
                let name = d.name;
                if ["no-store", "private", "no-cache"]
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n))
                {
                    return Err("no_store");
                }
                let slot = if name.eq_ignore_ascii_case("max-age") {
                    &mut cc.max_age
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    &mut cc.s_maxage
                } else {
                    continue;
                };
                let secs = d
                    .arg
                    .filter(|_| d.well_formed)
                    .and_then(delta_seconds)
                    .ok_or("invalid_max_age")?;
                match *slot {
                    Some(prev) if prev != secs => return Err("invalid_max_age"),
                    _ => *slot = Some(secs),
                }
            }
        }
        Ok(cc)
    }
}

/// One `name[=arg]` directive.
struct Directive<'a> {
    name: &'a str,
    /// The argument, without the quotes of a quoted-string (escapes kept).
    arg: Option<&'a str>,
    /// False when anything but whitespace follows the argument before the
    /// next comma, or a quoted-string is not closed.
    well_formed: bool,
}

/// Splits a `Cache-Control` line into directives. Commas inside a
/// quoted-string (`no-cache="a, b"`) do not split.
struct Directives<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Directives<'a> {
    fn new(s: &'a str) -> Self {
        Directives { s, i: 0 }
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        let b = self.s.as_bytes();
        while self.i < b.len() && f(b[self.i]) {
            self.i += 1;
        }
    }

    /// The text between two byte offsets; both always sit on ASCII
    /// delimiters, and `get` keeps even a bad offset from panicking.
    fn text(&self, from: usize) -> &'a str {
        self.s.get(from..self.i).unwrap_or("")
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl<'a> Iterator for Directives<'a> {
    type Item = Directive<'a>;

    fn next(&mut self) -> Option<Directive<'a>> {
        let b = self.s.as_bytes();
        loop {
            self.skip(|c| is_ows(c) || c == b',');
            if self.i >= b.len() {
                return None;
            }
            let start = self.i;
            self.skip(|c| !is_ows(c) && c != b',' && c != b'=');
            let name = self.text(start);
            self.skip(is_ows);
            let mut well_formed = true;
            let mut arg = None;
            if self.i < b.len() && b[self.i] == b'=' {
                self.i += 1;
                self.skip(is_ows);
                if self.i < b.len() && b[self.i] == b'"' {
                    self.i += 1;
                    let from = self.i;
                    while self.i < b.len() && b[self.i] != b'"' {
                        // A backslash escapes the next byte (quoted-pair).
                        self.i += if b[self.i] == b'\\' { 2 } else { 1 };
                    }
                    self.i = self.i.min(b.len());
                    arg = Some(self.text(from));
                    if self.i < b.len() {
                        self.i += 1; // the closing quote
                    } else {
                        well_formed = false;
                    }
                } else {
                    let from = self.i;
                    self.skip(|c| !is_ows(c) && c != b',');
                    arg = Some(self.text(from));
                }
                self.skip(is_ows);
            }
            if self.i < b.len() && b[self.i] != b',' {
                well_formed = false;
                self.skip(|c| c != b',');
            }
            if name.is_empty() {
                continue;
            }
            return Some(Directive {
                name,
                arg,
                well_formed,
            });
        }
    }
}

/// `1*DIGIT`, saturating at [`MAX_DELTA`]; `None` when empty or not all
/// digits (a sign, a fraction, a space).
fn delta_seconds(s: &str) -> Option<Duration> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let max = MAX_DELTA.as_secs();
    let secs = s.bytes().fold(0u64, |acc, d| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(d - b'0'))
            .min(max)
    });
    Some(Duration::from_secs(secs))
}

/// The `Age` field: the first member of the first line, saturating; zero when
/// absent or invalid (RFC 9111 §5.1 says to ignore an invalid one).
pub fn age_field(headers: &HeaderMap) -> Duration {
    headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| delta_seconds(v.trim_matches(is_ows_char)))
        .unwrap_or(Duration::ZERO)
}

fn is_ows_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A date field that may appear once. `Ok(None)`: absent or unparsable (the
/// caller decides what that means). `Err`: several lines that disagree.
fn single_date(
    headers: &HeaderMap,
    name: http::header::HeaderName,
) -> Result<Option<SystemTime>, ()> {
    let mut lines = headers.get_all(&name).iter();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    if lines.any(|v| v != first) {
        return Err(());
    }
    Ok(first
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim_matches(is_ows_char)).ok()))
}

/// `now - date` in whole seconds, zero when `date` is in the future.
fn apparent_age(date: SystemTime, now: SystemTime) -> Duration {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Duration::from_secs(secs(now).saturating_sub(secs(date))).min(MAX_DELTA)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Defaults = Defaults {
        default_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(1),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A fixed "now" with a whole number of seconds, plus a fraction, so the
    /// one-second rounding of `Date` is exercised.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_750)
    }

    fn date(offset: i64) -> String {
        let t = if offset >= 0 {
            now() + secs(offset as u64)
        } else {
            now() - secs(offset.unsigned_abs())
        };
        httpdate::fmt_http_date(t)
    }

    fn pol(status: u16, headers: &[(&str, &str)]) -> Policy {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Policy::from_response(StatusCode::from_u16(status).unwrap(), &h, now(), &D)
    }

    fn cc(v: &str) -> Policy {
        pol(200, &[("cache-control", v)])
    }

    #[test]
    fn lifetime_precedence_and_defaults() {
        let p = pol(200, &[]);
        assert_eq!((p.store, p.ttl, p.initial_age), (true, secs(60), secs(0)));
        assert_eq!(p.why_not, None);
        assert_eq!(cc("public, max-age=5").ttl, secs(5));
        assert_eq!(cc("max-age=5, s-maxage=9").ttl, secs(9));
        assert_eq!(cc("s-maxage=9, max-age=5").ttl, secs(9));
        assert_eq!(cc("MAX-AGE=7").ttl, secs(7));
        assert_eq!(cc("max-age=\"7\"").ttl, secs(7));
        assert_eq!(cc("max-age = 7").ttl, secs(7));
        assert_eq!(cc("max-age=7, max-age=7").ttl, secs(7));
        let p = pol(404, &[]);
        assert_eq!((p.store, p.ttl), (true, secs(1)));
        assert_eq!(pol(404, &[("cache-control", "max-age=2")]).ttl, secs(2));
    }

    #[test]
    fn only_200_and_404_are_stored() {
        for s in [201, 204, 206, 301, 304, 410, 500, 502, 503] {
            let p = pol(s, &[("cache-control", "max-age=100")]);
            assert!(!p.store, "{s}");
            assert_eq!(p.why_not, Some("status"));
        }
    }

    #[test]
    fn forbidding_directives_and_headers() {
        for v in [
            "no-store",
            "private",
            "private=\"x-a, x-b\"",
            "no-cache",
            "No-Cache=\"set-cookie\", max-age=60",
            "max-age=60, no-store",
        ] {
            let p = cc(v);
            assert!(!p.store, "{v}");
            assert_eq!(p.why_not, Some("no_store"), "{v}");
        }
        // A quoted comma does not end the directive: `max-age=60` inside
        // the quotes is not a directive.
        let p = cc("x-ext=\"a, max-age=60\", max-age=5");
        assert_eq!(p.ttl, secs(5));
        let p = pol(
            200,
            &[("set-cookie", "sid=1"), ("cache-control", "max-age=60")],
        );
        assert_eq!((p.store, p.why_not), (false, Some("set_cookie")));
        let p = pol(200, &[("vary", "accept, *")]);
        assert_eq!((p.store, p.why_not), (false, Some("vary")));
        assert!(pol(200, &[("vary", "accept-encoding")]).store);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"max-age=5, \xffno-store").unwrap(),
        );
        let p = Policy::from_response(StatusCode::OK, &h, now(), &D);
        assert_eq!(p.why_not, Some("invalid_cache_control"));
    }

    #[test]
    fn invalid_max_age_is_stale() {
        for v in [
            "max-age",
            "max-age=",
            "max-age=\"\"",
            "max-age=-1",
            "max-age=+5",
            "max-age=5.5",
            "max-age=5s",
            "max-age=5 6",
            "max-age=0x10",
            "max-age=\"5",
            "max-age=5, max-age=6",
            "s-maxage=abc, max-age=60",
            "max-age=60, s-maxage=",
        ] {
            let p = cc(v);
            assert!(!p.store, "{v}");
            assert_eq!(p.why_not, Some("invalid_max_age"), "{v}");
        }
        // Conflicting values across two lines count too.
        let p = pol(
            200,
            &[
                ("cache-control", "max-age=5"),
                ("cache-control", "max-age=9"),
            ],
        );
        assert!(!p.store);
        assert!(!cc("max-age=0").store);
        assert_eq!(cc("max-age=0").why_not, Some("stale"));
    }

    #[test]
    fn huge_values_saturate() {
        for v in [
            "max-age=18446744073709551615",
            "max-age=99999999999999999999999999999999999999",
            "s-maxage=4294967296",
        ] {
            assert_eq!(cc(v).ttl, MAX_DELTA, "{v}");
        }
        let p = pol(200, &[("age", "18446744073709551615")]);
        assert_eq!(p.initial_age, MAX_DELTA);
        assert!(!p.store);
        let p = pol(
            200,
            &[
                ("age", "18446744073709551615"),
                ("cache-control", "max-age=18446744073709551615"),
            ],
        );
        assert!(!p.store, "Age = lifetime = 2^31 is stale");
        // Resident time cannot overflow either.
        let p = cc("max-age=100");
        assert_eq!(p.age_now(Duration::MAX), MAX_DELTA);
        assert!(!p.fresh(Duration::MAX));
    }

    #[test]
    fn age_counts_against_the_lifetime() {
        let p = pol(200, &[("cache-control", "max-age=10"), ("age", "4")]);
        assert_eq!((p.store, p.ttl, p.initial_age), (true, secs(10), secs(4)));
        assert!(p.fresh(secs(5)));
        assert!(!p.fresh(secs(6)));
        assert_eq!(p.age_now(secs(3)), secs(7));
        // A response that arrives as old as its lifetime is not stored.
        assert!(!pol(200, &[("cache-control", "max-age=10"), ("age", "10")]).store);
        assert!(!pol(200, &[("cache-control", "max-age=10"), ("age", "11")]).store);
        // The first member of a list, the first line; invalid ones ignored.
        let age = |v: &str| pol(200, &[("age", v)]).initial_age;
        assert_eq!(age("7, 9"), secs(7));
        assert_eq!(age(" 7 "), secs(7));
        assert_eq!(age("-3"), secs(0));
        assert_eq!(age("abc"), secs(0));
        assert_eq!(age(""), secs(0));
    }

    #[test]
    fn date_gives_an_apparent_age() {
        let p = pol(200, &[("cache-control", "max-age=10"), ("date", &date(-4))]);
        assert_eq!(p.initial_age, secs(4));
        // Age and Date: the larger wins.
        let p = pol(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("date", &date(-4)),
                ("age", "6"),
            ],
        );
        assert_eq!(p.initial_age, secs(6));
        let p = pol(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("date", &date(-8)),
                ("age", "2"),
            ],
        );
        assert_eq!(p.initial_age, secs(8));
        // Dated this second (or in the future, or garbage): age 0.
        assert_eq!(pol(200, &[("date", &date(0))]).initial_age, secs(0));
        assert_eq!(pol(200, &[("date", &date(30))]).initial_age, secs(0));
        assert_eq!(pol(200, &[("date", "yesterday")]).initial_age, secs(0));
    }

    #[test]
    fn expires_is_honoured() {
        let p = pol(200, &[("date", &date(0)), ("expires", &date(30))]);
        assert_eq!((p.store, p.ttl), (true, secs(30)));
        // Without Date, counted from arrival.
        assert_eq!(pol(200, &[("expires", &date(20))]).ttl.as_secs(), 19);
        // Relative to the origin's Date, not the relay's clock.
        let p = pol(200, &[("date", &date(-100)), ("expires", &date(-70))]);
        assert_eq!(p.ttl, secs(30));
        assert!(!p.store, "30 s lifetime, 100 s old");
        // Past, invalid and "0" are already expired.
        for e in [date(-5), "0".to_string(), "soon".to_string()] {
            let p = pol(200, &[("expires", &e)]);
            assert!(!p.store, "{e}");
            assert_eq!(p.why_not, Some("stale"));
        }
        // Two different Expires: stale; the same twice: fine.
        let p = pol(200, &[("expires", &date(30)), ("expires", &date(40))]);
        assert_eq!(p.why_not, Some("invalid_expires"));
        assert!(pol(200, &[("expires", &date(30)), ("expires", &date(30))]).store);
        // max-age and s-maxage override Expires, even an expired one.
        let p = pol(200, &[("expires", "0"), ("cache-control", "max-age=5")]);
        assert_eq!((p.store, p.ttl), (true, secs(5)));
        let p = pol(
            200,
            &[("expires", &date(300)), ("cache-control", "s-maxage=5")],
        );
        assert_eq!(p.ttl, secs(5));
    }

    #[test]
    fn strip_set_cookie_removes_every_line() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.append("etag", "\"x\"".parse().unwrap());
        assert!(strip_set_cookie(&mut h));
        assert!(!strip_set_cookie(&mut h));
        assert_eq!(h.len(), 1);
    }
}
