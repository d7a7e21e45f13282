//! `Range` requests on cached objects: which bytes a `Range` header asks
//! for. The handler turns the answer into a 206, a whole 200 or a 416.

use http::header::HeaderValue;

/// What a `Range` header asks of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Send it all (no header, multi-range, or not `bytes`).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Outside the object: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range against an object of `len` bytes. A
/// header that is not a valid single byte range is ignored (RFC 9110 §14.2),
/// so only a valid range wholly outside the object is unsatisfiable.
pub fn parse_range(value: Option<&HeaderValue>, len: u64) -> RangeSpec {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeSpec::Whole;
    };
    let digits = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    match (a.trim().is_empty(), digits(a), digits(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) if n > 0 && len > 0 => RangeSpec::Part(len.saturating_sub(n), len - 1),
        (true, _, Some(_)) => RangeSpec::Unsatisfiable,
        // bytes=S- and bytes=S-E (E >= S).
        (false, Some(s), None) if b.trim().is_empty() => satisfiable(s, u64::MAX, len),
        (false, Some(s), Some(e)) if e >= s => satisfiable(s, e, len),
        _ => RangeSpec::Whole,
    }
}

fn satisfiable(start: u64, end: u64, len: u64) -> RangeSpec {
    if start < len {
        RangeSpec::Part(start, end.min(len - 1))
    } else {
        RangeSpec::Unsatisfiable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str, len| parse_range(Some(&HeaderValue::from_str(s).unwrap()), len);
        assert_eq!(r("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(r("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(r("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(r("bytes=-1000", 100), RangeSpec::Part(0, 99));
        assert_eq!(r("bytes=50-1000", 100), RangeSpec::Part(50, 99));
        assert_eq!(r("bytes=100-", 100), RangeSpec::Unsatisfiable);
        // Invalid ranges are ignored, not refused (RFC 9110 §14.2).
        assert_eq!(r("bytes=5-2", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=x-2", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=+1-2", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=1", 100), RangeSpec::Whole);
        assert_eq!(r("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), RangeSpec::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(r("items=0-1", 100), RangeSpec::Whole);
        assert_eq!(parse_range(None, 100), RangeSpec::Whole);
    }
}
