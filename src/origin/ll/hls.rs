//! The LL-HLS playlists, written from a [`Timeline`] snapshot (pure
//! functions; `http` decides when to write them).
//!
//! URI scheme, relative to the playlist: `init.mp4`, segments `seg{msn}.mp4`,
//! parts `part{msn}.{index}.mp4`. Parts are listed for the segments within the
//! last three target durations (older ones are still served, just not
//! listed), and a preload hint names the next part. With `--ll-encrypt`,
//! an `EXT-X-KEY` (absolute HTTPS URI, explicit IV) precedes every listed
//! segment and its parts; `EXT-X-MAP` comes before any, so the init segment
//! is clear.

use std::fmt::Write;
use std::time::SystemTime;

use super::{secs, Timeline};

/// Spec minimum for `CAN-SKIP-UNTIL`: six target durations.
const SKIP_TARGETS: u64 = 6;

/// `#EXT-X-TARGETDURATION`: the longest segment rounded (at least the
/// configured segment duration, rounded up).
pub(super) fn target_duration(t: &Timeline) -> u64 {
    let ts = t.timescale();
    let longest = t
        .segments
        .iter()
        .filter(|s| s.complete)
        .map(|s| secs(s.duration, ts).round() as u64)
        .max()
        .unwrap_or(0);
    longest.max(t.segment.as_secs_f64().ceil() as u64).max(1)
}

/// An ISO 8601 UTC time with milliseconds (`2024-05-01T12:00:00.040Z`).
pub(super) fn iso(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The media playlist; `skip` asks for a delta update (`_HLS_skip=YES`).
pub(super) fn media_playlist(t: &Timeline, skip: bool) -> String {
    let ts = t.timescale();
    let target = target_duration(t);
    let part_target = t.part.as_secs_f64();
    let skip_until = SKIP_TARGETS * target;
    let mut o = String::with_capacity(4096);
    let first = t.segments.front().map_or(0, |s| s.msn);
    o.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
    let _ = writeln!(o, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        o,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},PART-HOLD-BACK={:.3}",
        skip_until as f64,
        3.0 * part_target
    );
    let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    let _ = writeln!(o, "#EXT-X-MEDIA-SEQUENCE:{first}");
    if t.segments.iter().all(|s| s.independent) {
        o.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    }
    o.push_str("#EXT-X-MAP:URI=\"init.mp4\"\n");
    // From the end: how far each segment starts before the playlist's end.
    let total: u64 = t.segments.iter().map(|s| s.duration).sum();
    let mut before_end = total;
    let skip_ticks = skip_until * u64::from(ts);
    let parts_ticks = 3 * target * u64::from(ts);
    let mut skipped = 0;
    for s in &t.segments {
        let listed_parts = before_end <= parts_ticks + s.duration;
        // Only complete segments whose start is older than CAN-SKIP-UNTIL.
        if skip && s.complete && before_end > skip_ticks {
            skipped += 1;
            before_end -= s.duration;
            continue;
        }
        if skipped > 0 {
            let _ = writeln!(o, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
            skipped = 0;
        }
        before_end -= s.duration;
        if !s.complete && s.parts.is_empty() {
            // Started, but nothing to list yet: no dangling tags.
            continue;
        }
        if let Some(k) = &t.keys {
            // One per segment: its own explicit IV, and the key rotates.
            o.push_str(&k.tag(s.msn));
            o.push('\n');
        }
        if let Some(w) = t.wall(s.start) {
            let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", iso(w));
        }
        if listed_parts {
            for (i, p) in s.parts.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "#EXT-X-PART:DURATION={:.5},URI=\"part{}.{i}.mp4\"{}",
                    secs(p.duration, ts),
                    s.msn,
                    if p.independent {
                        ",INDEPENDENT=YES"
                    } else {
                        ""
                    }
                );
            }
        }
        if s.complete {
            let _ = writeln!(o, "#EXTINF:{:.5},\nseg{}.mp4", secs(s.duration, ts), s.msn);
        }
    }
    if !t.ended {
        let (msn, i) = t.next_part();
        let _ = writeln!(o, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{msn}.{i}.mp4\"");
    } else {
        o.push_str("#EXT-X-ENDLIST\n");
    }
    o
}

/// The multivariant playlist: one variant, the media playlist.
pub(super) fn multivariant(t: &Timeline) -> String {
    let ts = t.timescale();
    // Peak bitrate over the window (a guess before the first segment).
    let bandwidth = t
        .segments
        .iter()
        .filter(|s| s.complete && s.duration > 0)
        .map(|s| (s.len as f64 * 8.0 / secs(s.duration, ts)) as u64)
        .max()
        .unwrap_or(2_000_000)
        .max(1);
    let mut o = String::from("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let _ = write!(o, "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth}");
    if let Some(init) = &t.init {
        if let Some(c) = &init.codec {
            let _ = write!(o, ",CODECS=\"{c}\"");
        }
        if let Some((w, h)) = init.size {
            let _ = write!(o, ",RESOLUTION={w}x{h}");
        }
    }
    o.push_str("\nmedia.m3u8\n");
    o
}

#[cfg(test)]
mod tests {
    use super::super::tests::timeline;
    use super::*;

    #[test]
    fn media_playlist_lists_parts_segments_and_the_hint() {
        let t = timeline(25 * 6 + 7);
        let p = media_playlist(&t, false);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "#EXTM3U");
        assert!(p.contains("#EXT-X-VERSION:9\n"));
        assert!(p.contains("#EXT-X-TARGETDURATION:1\n"), "{p}");
        assert!(p.contains(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,PART-HOLD-BACK=0.600\n"
        ));
        assert!(p.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n"));
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:2\n"));
        assert!(p.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"));
        assert!(p.contains("#EXT-X-INDEPENDENT-SEGMENTS\n"));
        // Segment 2 started 2 s after media time 0.
        assert!(
            p.contains("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.000Z\n#EXTINF"),
            "{p}"
        );
        for msn in 2..=5 {
            assert!(p.contains(&format!("#EXTINF:1.00000,\nseg{msn}.mp4\n")));
        }
        assert!(!p.contains("seg6.mp4"), "the open segment has no EXTINF");
        // Parts only for the last three target durations (segments 3, 4, 5, 6).
        assert!(!p.contains("part2."));
        assert!(p.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part3.0.mp4\",INDEPENDENT=YES\n"));
        assert!(p.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part3.1.mp4\"\n"));
        assert!(p.contains("URI=\"part6.0.mp4\",INDEPENDENT=YES\n"));
        assert!(
            p.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part6.1.mp4\"\n"),
            "{p}"
        );
        // Parts of a segment come before its EXTINF.
        let part = p.find("part5.4.mp4").unwrap();
        let seg = p.find("seg5.mp4").unwrap();
        assert!(part < seg);
    }

    #[test]
    fn encrypted_playlist_keys_every_segment_after_the_map() {
        let t = super::super::tests::sealed_timeline(25 * 6 + 7);
        let p = media_playlist(&t, false);
        let map = p.find("#EXT-X-MAP:").unwrap();
        assert!(
            map < p.find("#EXT-X-KEY:").unwrap(),
            "the init segment is clear"
        );
        // Segments 2..=6 listed, a key every 2 segments, IV = MSN.
        for msn in 2..=6u64 {
            let tag = format!(
                "#EXT-X-KEY:METHOD=AES-128,URI=\"https://127.0.0.1:9100/keys/hls/{}\",IV=0x{msn:032X}\n#EXT-X-PROGRAM-DATE-TIME:",
                msn / 2
            );
            let at = p.find(&tag).unwrap_or_else(|| panic!("{tag} in {p}"));
            // Before the segment's parts (or its EXTINF when unlisted).
            let first = p
                .find(&format!("part{msn}.0.mp4"))
                .or_else(|| p.find(&format!("seg{msn}.mp4")))
                .unwrap();
            assert!(at < first, "{p}");
        }
        assert_eq!(p.matches("#EXT-X-KEY:").count(), 5);
        // A delta update keeps the tag of its first listed segment.
        let mut t = super::super::tests::sealed_timeline(0);
        t.window = 20;
        for n in 0..25 * 10 + 3 {
            t.add(super::super::tests::frame(n, 25), SystemTime::UNIX_EPOCH);
        }
        let d = media_playlist(&t, true);
        let skip = d.find("#EXT-X-SKIP:SKIPPED-SEGMENTS=5\n").unwrap();
        assert_eq!(
            &d[skip..].lines().nth(1).unwrap(),
            &"#EXT-X-KEY:METHOD=AES-128,URI=\"https://127.0.0.1:9100/keys/hls/2\",IV=0x00000000000000000000000000000005"
        );
        // Clear playlists carry no key.
        assert!(!media_playlist(&super::super::tests::timeline(60), false).contains("EXT-X-KEY"));
    }

    #[test]
    fn delta_update_skips_old_segments() {
        let mut t = timeline(0);
        t.window = 20;
        let t0 = SystemTime::UNIX_EPOCH;
        for n in 0..25 * 10 + 3 {
            t.add(super::super::tests::frame(n, 25), t0);
        }
        let full = media_playlist(&t, false);
        let delta = media_playlist(&t, true);
        assert!(full.contains("seg0.mp4") && !full.contains("EXT-X-SKIP"));
        // 10 complete segments + 0.12 s of the open one; those starting more
        // than 6 s before the end are skipped: 0..=4.
        assert!(
            delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=5\n"),
            "{delta}"
        );
        assert!(!delta.contains("seg4.mp4") && delta.contains("seg5.mp4"));
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
    }

    #[test]
    fn ended_feed_ends_the_list() {
        let mut t = timeline(60);
        t.end();
        let p = media_playlist(&t, false);
        assert!(p.ends_with("#EXT-X-ENDLIST\n") && !p.contains("PRELOAD-HINT"));
        assert!(p.contains("#EXTINF:0.40000,\nseg2.mp4\n"));
    }

    #[test]
    fn multivariant_names_codec_and_size() {
        let t = timeline(60);
        let m = multivariant(&t);
        assert!(
            m.contains(",CODECS=\"avc1.64001e\",RESOLUTION=640x360\nmedia.m3u8\n"),
            "{m}"
        );
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_123);
        assert_eq!(iso(t), "2000-02-29T00:00:00.123Z");
    }
}
