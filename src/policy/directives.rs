//! `Cache-Control` as a shared cache reads it: the directives of every line
//! (commas inside a quoted-string do not split), the forbidding ones, and
//! `max-age` / `s-maxage` as strict delta-seconds (RFC 9111 §1.2.2, §5.2).
//! [`CacheControl::parse`] is called once per upstream head.

use std::time::Duration;

use http::HeaderMap;

use super::MAX_DELTA;

/// The directives of all `Cache-Control` lines that matter to a shared cache.
#[derive(Debug, Default)]
pub(super) struct CacheControl {
    pub(super) max_age: Option<Duration>,
    pub(super) s_maxage: Option<Duration>,
}

impl CacheControl {
    /// Parses every line. `Err` carries the reason the response must not be
    /// stored: a forbidding directive, or invalid freshness information.
    pub(super) fn parse(headers: &HeaderMap) -> Result<CacheControl, &'static str> {
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
pub(super) fn delta_seconds(s: &str) -> Option<Duration> {
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
