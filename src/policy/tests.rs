//! Unit tests of the caching policy: lifetimes and their precedence, the
//! stored statuses, forbidding directives, invalid and huge values, and age.

use std::time::UNIX_EPOCH;

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
fn without_a_lifetime_last_modified_gives_a_heuristic_one() {
    // Rewritten 3 s ago (a live playlist on nginx): fresh for 0.3 s.
    let p = pol(200, &[("date", &date(0)), ("last-modified", &date(-3))]);
    assert_eq!((p.store, p.ttl), (true, Duration::from_millis(300)));
    // Rewritten within the same second: not stored at all.
    let p = pol(200, &[("date", &date(0)), ("last-modified", &date(0))]);
    assert!(!p.store);
    // Old: capped by the default.
    let p = pol(
        200,
        &[("date", &date(0)), ("last-modified", &date(-86_400))],
    );
    assert_eq!(p.ttl, secs(60));
    // An explicit lifetime wins; a Last-Modified in the future or garbage
    // falls back to the default.
    let p = pol(
        200,
        &[("cache-control", "max-age=5"), ("last-modified", &date(-3))],
    );
    assert_eq!(p.ttl, secs(5));
    let p = pol(200, &[("date", &date(0)), ("last-modified", &date(30))]);
    assert_eq!(p.ttl, secs(60));
    let p = pol(200, &[("last-modified", "yesterday")]);
    assert_eq!(p.ttl, secs(60));
}
