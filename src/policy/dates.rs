//! The time fields of a response head: `Age` (RFC 9111 §5.1), `Date` and
//! `Expires` (one value each, or a conflict), and the apparent age they
//! give (§4.2.3) in whole seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::directives::delta_seconds;
use super::MAX_DELTA;

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
pub(super) fn single_date(
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
pub(super) fn apparent_age(date: SystemTime, now: SystemTime) -> Duration {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Duration::from_secs(secs(now).saturating_sub(secs(date))).min(MAX_DELTA)
}

/// The heuristic lifetime of a response that states none (RFC 9111
/// §4.2.2): a tenth of the time since `Last-Modified`, the figure browsers
/// and common caches use. A live playlist that a plain web server rewrote a
/// moment ago is thus fresh for (almost) nothing, while a segment written
/// minutes ago keeps for a while. `None` without one valid `Last-Modified`
/// at or before `date`.
pub(super) fn heuristic_lifetime(headers: &HeaderMap, date: SystemTime) -> Option<Duration> {
    let modified = single_date(headers, http::header::LAST_MODIFIED).ok()??;
    Some(date.duration_since(modified).ok()? / 10)
}
