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
//!   such a response do not get the cookie either: the fill task in
//!   [`crate::relay`] removes it from the head it shares.
//! - **Freshness lifetime** (RFC 9111 §4.2.1): `s-maxage`, else `max-age`,
//!   else `Expires` minus `Date` (`Date` missing or invalid: the time the
//!   response was received), else the status default. `Expires` is ignored
//!   when either directive is present, as §5.3 requires. An invalid `Expires`
//!   (including `0`) means "already expired". With none of these, a tenth of
//!   the time since `Last-Modified` (§4.2.2's heuristic), capped by the
//!   status default: a plain web server's live playlist, rewritten a moment
//!   ago, is then not kept, while its old segments are.
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
//!
//! Files: this one holds [`Policy`] and the order of the rules;
//! `directives` parses `Cache-Control` (directives, quoted strings,
//! delta-seconds); `dates` reads `Age`, `Date` and `Expires`.

mod dates;
mod directives;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

pub use dates::age_field;

use dates::{apparent_age, heuristic_lifetime, single_date};
use directives::CacheControl;

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
                Ok(None) => heuristic_lifetime(headers, date).map_or(fallback, |h| h.min(fallback)),
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
