//! HLS playlists as an LL-HLS player reads them (draft-pantos-hls-rfc8216bis):
//! text → [`Playlist`], relative URIs → absolute URLs, and the delivery
//! directives hls.js appends to a blocking reload.
//!
//! The parser is generic, not tied to `mlcache-origin`: a multivariant
//! playlist yields its variants (`EXT-X-STREAM-INF` + URI line); a media
//! playlist yields its complete segments (`EXTINF` + URI line), every
//! `EXT-X-PART` numbered by the Media Sequence Number of the segment it
//! belongs to (parts precede their segment's URI line; parts after the last
//! URI line belong to the open segment), `EXT-X-PRELOAD-HINT`,
//! `EXT-X-SERVER-CONTROL`, `EXT-X-PART-INF`, the first `EXT-X-MAP`, and
//! `EXT-X-SKIP` (a delta update: the skipped segments advance the sequence).
//! Unknown tags are ignored, as the spec asks of clients.

use std::collections::HashMap;

/// A playlist, either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Playlist {
    /// A multivariant (master) playlist: its variant stream URIs, in order.
    Multivariant(Vec<Variant>),
    /// A media playlist.
    Media(MediaPlaylist),
}

/// One `EXT-X-STREAM-INF` variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The media playlist URI as written (maybe relative).
    pub uri: String,
    /// `BANDWIDTH`, when given.
    pub bandwidth: Option<u64>,
}

/// One partial segment (`EXT-X-PART`).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Media Sequence Number of the parent segment.
    pub msn: u64,
    /// Index of the part within its segment, from 0.
    pub index: u32,
    /// URI as written.
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Start time in seconds from the first segment of this playlist.
    pub start: f64,
    /// `INDEPENDENT=YES`.
    pub independent: bool,
    /// `BYTERANGE=len[@offset]`.
    pub byterange: Option<(u64, Option<u64>)>,
    /// `GAP=YES`: the part is not available and must not be loaded.
    pub gap: bool,
}

/// One complete media segment (`EXTINF` + URI).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Media Sequence Number.
    pub msn: u64,
    /// URI as written.
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Start time in seconds from the first segment of this playlist.
    pub start: f64,
}

/// `EXT-X-PRELOAD-HINT`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreloadHint {
    /// `TYPE`: `PART` or `MAP`.
    pub kind: String,
    /// URI as written.
    pub uri: String,
    /// `BYTERANGE-START` (0 when absent).
    pub byterange_start: u64,
    /// `BYTERANGE-LENGTH`, when given.
    pub byterange_length: Option<u64>,
}

/// `EXT-X-SERVER-CONTROL`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerControl {
    /// `CAN-BLOCK-RELOAD=YES`.
    pub can_block_reload: bool,
    /// `CAN-SKIP-UNTIL`, seconds.
    pub can_skip_until: Option<f64>,
    /// `CAN-SKIP-DATERANGES=YES`.
    pub can_skip_dateranges: bool,
    /// `HOLD-BACK`, seconds.
    pub hold_back: Option<f64>,
    /// `PART-HOLD-BACK`, seconds.
    pub part_hold_back: Option<f64>,
}

/// A media playlist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaPlaylist {
    /// `EXT-X-TARGETDURATION`, seconds.
    pub target_duration: f64,
    /// `EXT-X-MEDIA-SEQUENCE` (0 when absent).
    pub media_sequence: u64,
    /// `EXT-X-PART-INF:PART-TARGET`, seconds.
    pub part_target: Option<f64>,
    /// `EXT-X-SERVER-CONTROL`.
    pub server_control: ServerControl,
    /// URI of the first `EXT-X-MAP` (the initialization section).
    pub map: Option<String>,
    /// Complete segments, oldest first.
    pub segments: Vec<Segment>,
    /// Every part listed, oldest first, the open segment's included.
    pub parts: Vec<Part>,
    /// `EXT-X-PRELOAD-HINT`s.
    pub preload_hints: Vec<PreloadHint>,
    /// `EXT-X-SKIP:SKIPPED-SEGMENTS` (a delta update).
    pub skipped_segments: u64,
    /// `EXT-X-ENDLIST`.
    pub endlist: bool,
}

/// What made a playlist unreadable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The first line is not `#EXTM3U`.
    #[error("not a playlist: no #EXTM3U")]
    NoHeader,
    /// A media playlist without `EXT-X-TARGETDURATION`.
    #[error("no EXT-X-TARGETDURATION")]
    NoTargetDuration,
    /// A tag whose value does not parse.
    #[error("bad {0}")]
    BadTag(&'static str),
    /// `EXT-X-STREAM-INF` with no URI line after it.
    #[error("EXT-X-STREAM-INF without a URI")]
    VariantWithoutUri,
}

/// Parses an attribute list: `KEY=VALUE,KEY="quoted, value",...`. Quotes
/// are removed from quoted values.
pub fn attributes(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = r[..end].to_string();
            rest = r.get(end + 1..).unwrap_or("");
            rest = rest.trim_start().strip_prefix(',').unwrap_or(rest);
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        out.insert(key, value);
    }
    out
}

fn yes(a: &HashMap<String, String>, k: &str) -> bool {
    a.get(k).is_some_and(|v| v == "YES")
}

fn float(a: &HashMap<String, String>, k: &str) -> Option<f64> {
    a.get(k).and_then(|v| v.parse().ok())
}

fn byterange(v: &str) -> Option<(u64, Option<u64>)> {
    match v.split_once('@') {
        Some((n, o)) => Some((n.parse().ok()?, Some(o.parse().ok()?))),
        None => Some((v.parse().ok()?, None)),
    }
}

/// Parses a playlist.
pub fn parse(text: &str) -> Result<Playlist, ParseError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .peekable();
    if lines.next().is_none_or(|l| !l.starts_with("#EXTM3U")) {
        return Err(ParseError::NoHeader);
    }
    let mut variants = Vec::new();
    let mut pending_variant: Option<Option<u64>> = None;
    let mut p = MediaPlaylist::default();
    let mut target = None;
    let mut msn: Option<u64> = None;
    let mut pending_extinf: Option<f64> = None;
    let mut part_index = 0u32;
    let mut time = 0.0f64;
    let mut part_time = 0.0f64;
    for line in lines {
        if !line.starts_with('#') {
            if let Some(bw) = pending_variant.take() {
                variants.push(Variant {
                    uri: line.to_string(),
                    bandwidth: bw,
                });
                continue;
            }
            let seq = *msn.get_or_insert(p.media_sequence + p.skipped_segments);
            let duration = pending_extinf.take().unwrap_or(0.0);
            p.segments.push(Segment {
                msn: seq,
                uri: line.to_string(),
                duration,
                start: time,
            });
            time += duration;
            part_time = time;
            msn = Some(seq + 1);
            part_index = 0;
            continue;
        }
        if !line.starts_with("#EXT") {
            continue; // a comment
        }
        let (tag, value) = line.split_once(':').unwrap_or((line, ""));
        match tag {
            "#EXT-X-STREAM-INF" => {
                let a = attributes(value);
                pending_variant = Some(a.get("BANDWIDTH").and_then(|v| v.parse().ok()));
            }
            "#EXT-X-TARGETDURATION" => {
                target = Some(
                    value
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| ParseError::BadTag("EXT-X-TARGETDURATION"))?,
                );
            }
            "#EXT-X-MEDIA-SEQUENCE" => {
                p.media_sequence = value
                    .trim()
                    .parse()
                    .map_err(|_| ParseError::BadTag("EXT-X-MEDIA-SEQUENCE"))?;
            }
            "#EXT-X-SKIP" => {
                p.skipped_segments = attributes(value)
                    .get("SKIPPED-SEGMENTS")
                    .and_then(|v| v.parse().ok())
                    .ok_or(ParseError::BadTag("EXT-X-SKIP"))?;
            }
            "#EXT-X-PART-INF" => {
                p.part_target = Some(
                    float(&attributes(value), "PART-TARGET")
                        .ok_or(ParseError::BadTag("EXT-X-PART-INF"))?,
                );
            }
            "#EXT-X-SERVER-CONTROL" => {
                let a = attributes(value);
                p.server_control = ServerControl {
                    can_block_reload: yes(&a, "CAN-BLOCK-RELOAD"),
                    can_skip_until: float(&a, "CAN-SKIP-UNTIL"),
                    can_skip_dateranges: yes(&a, "CAN-SKIP-DATERANGES"),
                    hold_back: float(&a, "HOLD-BACK"),
                    part_hold_back: float(&a, "PART-HOLD-BACK"),
                };
            }
            "#EXT-X-MAP" if p.map.is_none() => {
                p.map = Some(
                    attributes(value)
                        .remove("URI")
                        .ok_or(ParseError::BadTag("EXT-X-MAP"))?,
                );
            }
            "#EXTINF" => {
                let d = value.split(',').next().unwrap_or("").trim();
                pending_extinf = Some(d.parse().map_err(|_| ParseError::BadTag("EXTINF"))?);
            }
            "#EXT-X-PART" => {
                let a = attributes(value);
                let seq = *msn.get_or_insert(p.media_sequence + p.skipped_segments);
                let duration = float(&a, "DURATION").ok_or(ParseError::BadTag("EXT-X-PART"))?;
                let uri = a
                    .get("URI")
                    .cloned()
                    .ok_or(ParseError::BadTag("EXT-X-PART"))?;
                p.parts.push(Part {
                    msn: seq,
                    index: part_index,
                    uri,
                    duration,
                    start: part_time,
                    independent: yes(&a, "INDEPENDENT"),
                    byterange: match a.get("BYTERANGE") {
                        Some(v) => Some(byterange(v).ok_or(ParseError::BadTag("EXT-X-PART"))?),
                        None => None,
                    },
                    gap: yes(&a, "GAP"),
                });
                part_index += 1;
                part_time += duration;
            }
            "#EXT-X-PRELOAD-HINT" => {
                let a = attributes(value);
                p.preload_hints.push(PreloadHint {
                    kind: a.get("TYPE").cloned().unwrap_or_default(),
                    uri: a
                        .get("URI")
                        .cloned()
                        .ok_or(ParseError::BadTag("EXT-X-PRELOAD-HINT"))?,
                    byterange_start: a
                        .get("BYTERANGE-START")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    byterange_length: a.get("BYTERANGE-LENGTH").and_then(|v| v.parse().ok()),
                });
            }
            "#EXT-X-ENDLIST" => p.endlist = true,
            _ => {}
        }
    }
    if pending_variant.is_some() {
        return Err(ParseError::VariantWithoutUri);
    }
    if !variants.is_empty() {
        return Ok(Playlist::Multivariant(variants));
    }
    p.target_duration = target.ok_or(ParseError::NoTargetDuration)?;
    Ok(Playlist::Media(p))
}

impl MediaPlaylist {
    /// Media Sequence Number of the last complete segment (hls.js `endSN`);
    /// one before the first when none is complete.
    pub fn end_sn(&self) -> i64 {
        match self.segments.last() {
            Some(s) => s.msn as i64,
            None => (self.media_sequence + self.skipped_segments) as i64 - 1,
        }
    }

    /// The last part listed.
    pub fn last_part(&self) -> Option<&Part> {
        self.parts.last()
    }

    /// The live edge in seconds from the playlist start: the end of the last
    /// part, or of the last segment.
    pub fn edge(&self) -> f64 {
        let seg_end = self.segments.last().map_or(0.0, |s| s.start + s.duration);
        self.parts
            .last()
            .map_or(seg_end, |p| (p.start + p.duration).max(seg_end))
    }

    /// Part target (`PART-TARGET`), or the target duration for a playlist
    /// without parts.
    pub fn part_target_or_td(&self) -> f64 {
        self.part_target.unwrap_or(self.target_duration)
    }

    /// Where a low-latency player starts: `PART-HOLD-BACK` before the edge
    /// (3 part targets when absent, the spec's minimum), or `HOLD-BACK`
    /// (3 target durations) without parts, as hls.js does.
    pub fn start_position(&self) -> f64 {
        let sc = &self.server_control;
        let hold = if !self.parts.is_empty() {
            sc.part_hold_back.unwrap_or(3.0 * self.part_target_or_td())
        } else {
            sc.hold_back.unwrap_or(3.0 * self.target_duration)
        };
        (self.edge() - hold).max(0.0)
    }

    /// Index into `parts` of the part playback starts from: the one holding
    /// [`start_position`](Self::start_position), moved back to an
    /// independent part when the playlist marks them (a decoder must start
    /// on one). `None` when there are no parts.
    pub fn start_part(&self) -> Option<usize> {
        let pos = self.start_position();
        let mut i = self
            .parts
            .iter()
            .position(|p| p.start + p.duration > pos + 1e-6)
            .unwrap_or(self.parts.len().checked_sub(1)?);
        if self.parts.iter().any(|p| p.independent) {
            while i > 0 && !self.parts[i].independent {
                i -= 1;
            }
        }
        Some(i)
    }

    /// The hinted part's preload hint, if any.
    pub fn part_hint(&self) -> Option<&PreloadHint> {
        self.preload_hints.iter().find(|h| h.kind == "PART")
    }

    /// The `(msn, part)` hls.js (low-latency mode) asks for next in a
    /// blocking reload after this playlist advanced: the part after the last
    /// listed one, or part 0 of the next segment when the last part ended a
    /// segment; `msn` only, one past the last segment, without parts.
    pub fn next_directive(&self) -> (u64, Option<u32>) {
        let end_sn = self.end_sn();
        match self.last_part() {
            Some(p) if p.msn as i64 == end_sn => ((end_sn + 1) as u64, Some(0)),
            Some(p) => (p.msn, Some(p.index + 1)),
            None => ((end_sn + 1).max(0) as u64, None),
        }
    }

    /// The newest `(msn, part)` in this playlist, to tell whether a reload
    /// advanced (hls.js compares `lastPartSn`/`lastPartIndex` and `endSN`).
    pub fn position(&self) -> (i64, i64) {
        match self.last_part() {
            Some(p) => (p.msn as i64, p.index as i64),
            None => (self.end_sn(), -1),
        }
    }
}

/// `_HLS_skip` as hls.js's `getSkipValue`: `YES` (or `v2` with
/// `CAN-SKIP-DATERANGES`) when the server offers delta updates and the
/// playlist in hand is younger than half the skip boundary.
pub fn skip_value(p: &MediaPlaylist, age_s: f64) -> Option<&'static str> {
    let until = p.server_control.can_skip_until?;
    if until > 0.0 && age_s < until / 2.0 {
        Some(if p.server_control.can_skip_dateranges {
            "v2"
        } else {
            "YES"
        })
    } else {
        None
    }
}

/// A URL with hls.js's delivery directives, built as its `addDirectives`
/// does (`setQueryParam` on a `URL`): an existing parameter is replaced in
/// place, a new one appended, in the order `_HLS_msn`, `_HLS_part`,
/// `_HLS_skip`. Every player builds byte-identical URLs for the same
/// directives, so a cache keyed on path-and-query coalesces them.
pub fn with_directives(
    url: &str,
    msn: Option<u64>,
    part: Option<u32>,
    skip: Option<&str>,
) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, q),
        None => (base, ""),
    };
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut set = |key: &str, value: String| {
        let param = format!("{key}={value}");
        let mut replaced = false;
        params.retain_mut(|p| {
            if p == key || p.starts_with(&format!("{key}=")) {
                if replaced {
                    return false;
                }
                *p = param.clone();
                replaced = true;
            }
            true
        });
        if !replaced {
            params.push(param);
        }
    };
    if let Some(m) = msn {
        set("_HLS_msn", m.to_string());
    }
    if let Some(p) = part {
        set("_HLS_part", p.to_string());
    }
    if let Some(s) = skip {
        set("_HLS_skip", s.to_string());
    }
    let mut out = path.to_string();
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Resolves `uri` against the absolute URL `base` (RFC 3986 §5.2, enough
/// for playlists: absolute, scheme-relative, absolute-path and relative
/// references, with dot segments removed).
pub fn resolve(base: &str, uri: &str) -> String {
    if uri.contains("://") {
        return uri.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let scheme = &base[..scheme_end.saturating_sub(3)];
    if let Some(rest) = uri.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let auth_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let origin = &base[..auth_end];
    let base_path = base[auth_end..].split(['?', '#']).next().unwrap_or("");
    let (path, tail) = match uri.find(['?', '#']) {
        Some(i) => (&uri[..i], &uri[i..]),
        None => (uri, ""),
    };
    let merged = if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() {
        base_path.to_string()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{path}", if dir.is_empty() { "/" } else { dir })
    };
    // A query-only reference keeps the base path; it replaces the query.
    format!("{origin}{}{tail}", remove_dots(&merged))
}

fn remove_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *s {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let j = out.join("/");
    if j.starts_with('/') {
        j
    } else {
        format!("/{j}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The LL-HLS example of draft-pantos-hls-rfc8216bis §9.1 (abridged to
    /// its structure: parts of complete segments, parts of the open
    /// segment, a preload hint, a rendition report).
    const SPEC_LL: &str = "#EXTM3U
#EXT-X-TARGETDURATION:4
#EXT-X-VERSION:6
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0,CAN-SKIP-UNTIL=12.0
#EXT-X-PART-INF:PART-TARGET=0.33334
#EXT-X-MEDIA-SEQUENCE:266
#EXT-X-PROGRAM-DATE-TIME:2019-02-14T02:13:36.106Z
#EXT-X-MAP:URI=\"init.mp4\"
#EXTINF:4.00008,
fileSequence266.mp4
#EXTINF:4.00008,
fileSequence267.mp4
#EXTINF:4.00008,
fileSequence268.mp4
#EXTINF:4.00008,
fileSequence269.mp4
#EXTINF:4.00008,
fileSequence270.mp4
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.0.mp4\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.1.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.2.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.3.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.4.mp4\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.5.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.6.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.7.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.8.mp4\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.9.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.10.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart271.11.mp4\"
#EXTINF:4.00008,
fileSequence271.mp4
#EXT-X-PROGRAM-DATE-TIME:2019-02-14T02:14:00.106Z
#EXT-X-PART:DURATION=0.33334,URI=\"filePart272.a.mp4\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.33334,URI=\"filePart272.b.mp4\"
#EXT-X-PART:DURATION=0.33334,URI=\"filePart272.c.mp4\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"filePart272.d.mp4\"

#EXT-X-RENDITION-REPORT:URI=\"../1M/waitForMSN.php\",LAST-MSN=273,LAST-PART=2
";

    fn media(text: &str) -> MediaPlaylist {
        match parse(text).unwrap() {
            Playlist::Media(m) => m,
            other => panic!("not a media playlist: {other:?}"),
        }
    }

    #[test]
    fn spec_low_latency_playlist() {
        let p = media(SPEC_LL);
        assert_eq!(p.target_duration, 4.0);
        assert_eq!(p.media_sequence, 266);
        assert_eq!(p.part_target, Some(0.33334));
        assert!(p.server_control.can_block_reload);
        assert_eq!(p.server_control.part_hold_back, Some(1.0));
        assert_eq!(p.server_control.can_skip_until, Some(12.0));
        assert_eq!(p.map.as_deref(), Some("init.mp4"));
        assert_eq!(p.segments.len(), 6);
        assert_eq!(p.segments[0].msn, 266);
        assert_eq!(p.segments[5].msn, 271);
        assert_eq!(p.segments[5].uri, "fileSequence271.mp4");
        assert_eq!(p.parts.len(), 15);
        assert_eq!((p.parts[0].msn, p.parts[0].index), (271, 0));
        assert_eq!((p.parts[11].msn, p.parts[11].index), (271, 11));
        assert_eq!((p.parts[12].msn, p.parts[12].index), (272, 0));
        assert_eq!(p.parts[14].uri, "filePart272.c.mp4");
        assert!(p.parts[0].independent && !p.parts[1].independent);
        // Parts of 271 start where 271 starts.
        assert!((p.parts[0].start - 5.0 * 4.00008).abs() < 1e-9);
        assert!((p.parts[12].start - 6.0 * 4.00008).abs() < 1e-9);
        let hint = p.part_hint().unwrap();
        assert_eq!(hint.uri, "filePart272.d.mp4");
        assert_eq!(p.end_sn(), 271);
        assert_eq!(p.position(), (272, 2));
        // hls.js asks for the part after the last one listed.
        assert_eq!(p.next_directive(), (272, Some(3)));
        // Start: PART-HOLD-BACK (1.0 s = 3 parts) before the edge, moved
        // back to an independent part: 272.a.
        let edge = 6.0 * 4.00008 + 3.0 * 0.33334;
        assert!((p.edge() - edge).abs() < 1e-9);
        assert_eq!(p.start_part(), Some(12));
        assert_eq!(skip_value(&p, 0.5), Some("YES"));
        assert_eq!(skip_value(&p, 6.5), None);
    }

    #[test]
    fn last_part_closing_a_segment_asks_for_the_next_segment() {
        let p = media(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3\n\
             #EXT-X-MEDIA-SEQUENCE:10\n\
             #EXT-X-PART:DURATION=1,URI=\"p10.0.m4s\",INDEPENDENT=YES\n\
             #EXT-X-PART:DURATION=1,URI=\"p10.1.m4s\"\n\
             #EXTINF:2,\ns10.m4s\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p11.0.m4s\"\n",
        );
        assert_eq!(p.end_sn(), 10);
        assert_eq!(p.next_directive(), (11, Some(0)));
        assert_eq!(p.part_hint().unwrap().uri, "p11.0.m4s");
    }

    #[test]
    fn delta_update_counts_skipped_segments() {
        let p = media(
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:266\n\
             #EXT-X-SKIP:SKIPPED-SEGMENTS=3\n#EXTINF:4,\nfileSequence269.mp4\n\
             #EXT-X-PART:DURATION=0.5,URI=\"filePart270.0.mp4\",BYTERANGE=100@200\n",
        );
        assert_eq!(p.segments[0].msn, 269);
        assert_eq!(p.parts[0].msn, 270);
        assert_eq!(p.parts[0].byterange, Some((100, Some(200))));
        assert_eq!(p.next_directive(), (270, Some(1)));
    }

    #[test]
    fn multivariant_playlist() {
        let m = parse(
            "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=640x360\n\
             low/media.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=2560000\nhttp://example.com/mid.m3u8\n",
        )
        .unwrap();
        assert_eq!(
            m,
            Playlist::Multivariant(vec![
                Variant {
                    uri: "low/media.m3u8".into(),
                    bandwidth: Some(1_280_000)
                },
                Variant {
                    uri: "http://example.com/mid.m3u8".into(),
                    bandwidth: Some(2_560_000)
                },
            ])
        );
    }

    #[test]
    fn bad_playlists_are_errors() {
        assert_eq!(parse("hello"), Err(ParseError::NoHeader));
        assert_eq!(
            parse("#EXTM3U\n#EXTINF:1,\na.ts\n"),
            Err(ParseError::NoTargetDuration)
        );
        assert_eq!(
            parse("#EXTM3U\n#EXT-X-TARGETDURATION:x\n"),
            Err(ParseError::BadTag("EXT-X-TARGETDURATION"))
        );
        assert_eq!(
            parse("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n"),
            Err(ParseError::VariantWithoutUri)
        );
    }

    #[test]
    fn attributes_with_quoted_commas() {
        let a = attributes("CODECS=\"avc1,mp4a\",BANDWIDTH=5,URI=\"x.m4s\"");
        assert_eq!(a["CODECS"], "avc1,mp4a");
        assert_eq!(a["BANDWIDTH"], "5");
        assert_eq!(a["URI"], "x.m4s");
    }

    #[test]
    fn directives_as_hls_js_builds_them() {
        let u = "http://r:1/mlcache/o:2/ll/media.m3u8";
        assert_eq!(
            with_directives(u, Some(5), Some(3), None),
            "http://r:1/mlcache/o:2/ll/media.m3u8?_HLS_msn=5&_HLS_part=3"
        );
        assert_eq!(
            with_directives(&format!("{u}?a=1"), Some(5), None, Some("YES")),
            format!("{u}?a=1&_HLS_msn=5&_HLS_skip=YES")
        );
        // An existing directive is replaced in place.
        assert_eq!(
            with_directives(&format!("{u}?_HLS_msn=1&b=2"), Some(7), Some(0), None),
            format!("{u}?_HLS_msn=7&b=2&_HLS_part=0")
        );
        assert_eq!(with_directives(u, None, None, None), u);
    }

    #[test]
    fn relative_uris_resolve() {
        let b = "http://r:1/mlcache/o:2/ll/media.m3u8?_HLS_msn=3";
        assert_eq!(resolve(b, "p1.m4s"), "http://r:1/mlcache/o:2/ll/p1.m4s");
        assert_eq!(
            resolve(b, "../x/p.m4s?q=1"),
            "http://r:1/mlcache/o:2/x/p.m4s?q=1"
        );
        assert_eq!(resolve(b, "/abs.m4s"), "http://r:1/abs.m4s");
        assert_eq!(resolve(b, "//h:3/a"), "http://h:3/a");
        assert_eq!(resolve(b, "https://h/a"), "https://h/a");
        assert_eq!(
            resolve("http://o:2/master.m3u8", "ll/media.m3u8"),
            "http://o:2/ll/media.m3u8"
        );
        assert_eq!(resolve("http://o:2", "a.m3u8"), "http://o:2/a.m3u8");
        assert_eq!(
            resolve(b, "./a/./b/../c.m4s"),
            "http://r:1/mlcache/o:2/ll/a/c.m4s"
        );
    }
}
