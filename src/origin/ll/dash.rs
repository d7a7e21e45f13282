//! The LL-DASH MPD, written from a [`Timeline`] snapshot (a pure function).
//!
//! One dynamic period, one video representation, `SegmentTemplate` with
//! `$Number$` (segment `N` = HLS media sequence number `N`, `seg{N}.m4s`) and
//! a fixed segment duration, so the MPD never needs an update to name new
//! segments. `availabilityStartTime` is the wall-clock time of segment 0's
//! start, so segment `N` is complete at AST + (N+1)·d; with
//! `availabilityTimeOffset` = d − part it may be asked for once its first
//! chunk exists, and the origin streams the rest as it arrives
//! (`availabilityTimeComplete="false"`).

use std::fmt::Write;
use std::time::SystemTime;

use super::hls::iso;
use super::{secs, Timeline};

/// The MPD, or `None` before the first fragment; `time_url` is the UTC
/// timing endpoint's URL.
pub(super) fn mpd(t: &Timeline, time_url: &str, now: SystemTime) -> Option<String> {
    let ts = t.timescale();
    let first = t.segments.front()?;
    let init = t.init.as_ref()?;
    // Segment 0's start: the first segment kept, moved back by its number.
    let seg_ticks = (t.segment.as_secs_f64() * f64::from(ts)).round() as u64;
    let zero = first.start.saturating_sub(first.msn * seg_ticks);
    let ast = t.wall(zero)?;
    let seg = t.segment.as_secs_f64();
    let part = t.part.as_secs_f64();
    let depth = seg * t.window as f64;
    let (w, h) = init.size.unwrap_or((0, 0));
    let codec = init.codec.as_deref().unwrap_or("avc1.64001e");
    let bandwidth = t
        .segments
        .iter()
        .filter(|s| s.complete && s.duration > 0)
        .map(|s| (s.len as f64 * 8.0 / secs(s.duration, ts)) as u64)
        .max()
        .unwrap_or(2_000_000);
    let target_ms = ((3.0 * part + seg).max(1.0) * 1000.0).round() as u64;
    let mut o = String::with_capacity(2048);
    o.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        o,
        "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" \
         type=\"dynamic\" availabilityStartTime=\"{}\" publishTime=\"{}\" minimumUpdatePeriod=\"PT{:.3}S\" \
         timeShiftBufferDepth=\"PT{depth:.3}S\" maxSegmentDuration=\"PT{seg:.3}S\" minBufferTime=\"PT{:.3}S\">",
        iso(ast),
        iso(now),
        seg * 10.0,
        part
    );
    let _ = writeln!(
        o,
        "  <ServiceDescription id=\"0\">\n    <Latency referenceId=\"0\" target=\"{target_ms}\" min=\"{}\" max=\"{}\"/>\n    \
         <PlaybackRate min=\"0.96\" max=\"1.04\"/>\n  </ServiceDescription>",
        target_ms / 2,
        target_ms * 2
    );
    let _ = writeln!(o, "  <Period id=\"0\" start=\"PT0S\">");
    let _ = writeln!(
        o,
        "    <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\">"
    );
    let _ = writeln!(
        o,
        "      <Representation id=\"v0\" codecs=\"{codec}\" bandwidth=\"{bandwidth}\" width=\"{w}\" height=\"{h}\">"
    );
    let _ = writeln!(
        o,
        "        <SegmentTemplate timescale=\"{ts}\" duration=\"{seg_ticks}\" startNumber=\"0\" \
         presentationTimeOffset=\"{zero}\" initialization=\"init.mp4\" media=\"seg$Number$.m4s\" \
         availabilityTimeOffset=\"{:.3}\" availabilityTimeComplete=\"false\"/>",
        (seg - part).max(0.0)
    );
    o.push_str("      </Representation>\n    </AdaptationSet>\n  </Period>\n");
    let _ = writeln!(
        o,
        "  <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"{time_url}\"/>"
    );
    o.push_str("</MPD>\n");
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::super::tests::timeline;
    use super::*;

    #[test]
    fn mpd_has_the_low_latency_attributes() {
        let t = timeline(25 * 6 + 7);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_007);
        let m = mpd(&t, "http://o/dash/time", now).expect("segments exist");
        for want in [
            "type=\"dynamic\"",
            // Media time 0 is the anchor (1700000000 = 2023-11-14T22:13:20Z).
            "availabilityStartTime=\"2023-11-14T22:13:20.000Z\"",
            "publishTime=\"2023-11-14T22:13:27.000Z\"",
            "timescale=\"12800\" duration=\"12800\" startNumber=\"0\" presentationTimeOffset=\"0\"",
            "media=\"seg$Number$.m4s\"",
            "initialization=\"init.mp4\"",
            "availabilityTimeOffset=\"0.800\" availabilityTimeComplete=\"false\"",
            "<Latency referenceId=\"0\" target=\"1600\"",
            "<UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:http-iso:2014\" value=\"http://o/dash/time\"/>",
            "codecs=\"avc1.64001e\"",
            "width=\"640\" height=\"360\"",
        ] {
            assert!(m.contains(want), "{want} missing in {m}");
        }
        assert!(mpd(&timeline(0), "/t", now).is_none());
    }
}
