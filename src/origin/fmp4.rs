//! A streaming parser for fragmented MP4 (ISO BMFF / CMAF) as ffmpeg writes
//! it to a pipe: `ftyp` + `moov` (the init segment), then `moof` + `mdat`
//! pairs (fragments).
//!
//! Bytes go in with [`Fmp4Reader::push`] in whatever pieces the pipe gives;
//! whole top-level boxes are cut off the front as soon as they are complete
//! and turned into [`Item`]s. Only what the LL head end needs is read: the
//! timing track's timescale (`moov/trak/mdia/mdhd`, the first video track),
//! its `trex` defaults, and per fragment `tfdt` (base media decode time) and
//! `trun` (sample count, durations, whether the first sample is a sync
//! sample). The bytes themselves are passed on untouched, as shared `Bytes`.

use bytes::{Buf, Bytes, BytesMut};

/// Why a byte stream is not fragmented MP4 we can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fmp4Error {
    /// A box header is malformed (size smaller than its header, or absurd).
    #[error("bad box header at offset {0}")]
    BadBox(u64),
    /// A fragment arrived before the init segment.
    #[error("fragment before the init segment (moov)")]
    NoInit,
    /// A box the parser needs is missing or truncated.
    #[error("malformed {0} box")]
    Malformed(&'static str),
}

/// Largest top-level box accepted (a fragment of a very high bitrate feed is
/// far smaller; anything larger is garbage, not a reason to buffer forever).
const MAX_BOX: u64 = 64 << 20;

/// One thing cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The init segment (`ftyp` and `moov`, and anything between them).
    Init(Init),
    /// One fragment (`moof` + `mdat`, plus any `styp`/`sidx`/`prft` before it).
    Fragment(Fragment),
}

/// The init segment and what it says about the timing track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// Its bytes, as served (`init.mp4`).
    pub bytes: Bytes,
    /// Ticks per second of the timing track.
    pub timescale: u32,
    /// The timing track's id.
    pub track_id: u32,
    /// Whether the timing track is video (`hdlr` = `vide`).
    pub video: bool,
    /// The track's `codecs` string for playlists (`avc1.PPCCLL`), if known.
    pub codec: Option<String>,
    /// Width and height from `tkhd`, if video.
    pub size: Option<(u32, u32)>,
}

/// One fragment and its timing on the timing track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Its bytes (`moof` + `mdat`).
    pub bytes: Bytes,
    /// `tfdt` base media decode time, in timescale ticks.
    pub base_time: u64,
    /// Sum of its sample durations, in ticks.
    pub duration: u64,
    /// Whether its first sample is a sync sample (a keyframe).
    pub keyframe: bool,
    /// Number of samples.
    pub samples: u32,
}

/// `trex` defaults a `moof` may omit.
#[derive(Debug, Clone, Copy, Default)]
struct Defaults {
    duration: u32,
    flags: u32,
}

/// `sample_is_non_sync_sample` in ISO BMFF sample flags.
const NON_SYNC: u32 = 0x0001_0000;

/// The incremental parser.
#[derive(Debug, Default)]
pub struct Fmp4Reader {
    buf: BytesMut,
    /// Bytes consumed so far, for error offsets.
    offset: u64,
    /// Boxes seen before `moov` (ftyp) or before `moof` (styp, prft...).
    pending: BytesMut,
    init: Option<(u32, Defaults)>,
    /// A `moof` waiting for its `mdat`, parsed.
    moof: Option<(Bytes, u64, u64, bool, u32)>,
}

impl Fmp4Reader {
    /// A reader at the start of a stream.
    pub fn new() -> Fmp4Reader {
        Fmp4Reader::default()
    }

    /// Appends `data` and returns every item it completes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Item>, Fmp4Error> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some((kind, bx)) = self.next_box()? {
            if let Some(item) = self.take(kind, bx)? {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// Cuts the next complete top-level box off the buffer.
    fn next_box(&mut self) -> Result<Option<([u8; 4], Bytes)>, Fmp4Error> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let size32 = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes"));
        let kind: [u8; 4] = self.buf[4..8].try_into().expect("4 bytes");
        let (size, header) = match size32 {
            1 => {
                if self.buf.len() < 16 {
                    return Ok(None);
                }
                (
                    u64::from_be_bytes(self.buf[8..16].try_into().expect("8 bytes")),
                    16,
                )
            }
            // Size 0 ("to the end of the file") cannot be cut from a live pipe.
            0 => return Err(Fmp4Error::BadBox(self.offset)),
            n => (u64::from(n), 8),
        };
        if size < header || size > MAX_BOX {
            return Err(Fmp4Error::BadBox(self.offset));
        }
        if (self.buf.len() as u64) < size {
            return Ok(None);
        }
        self.offset += size;
        Ok(Some((kind, self.buf.split_to(size as usize).freeze())))
    }

    /// Turns one top-level box into an item, or keeps it for the next one.
    fn take(&mut self, kind: [u8; 4], bx: Bytes) -> Result<Option<Item>, Fmp4Error> {
        match &kind {
            b"moov" => {
                let init = parse_moov(&bx[8..])?;
                self.pending.extend_from_slice(&bx);
                let bytes = std::mem::take(&mut self.pending).freeze();
                self.init = Some((init.track_id, init.defaults));
                Ok(Some(Item::Init(Init {
                    bytes,
                    timescale: init.timescale,
                    track_id: init.track_id,
                    video: init.video,
                    codec: init.codec,
                    size: init.size,
                })))
            }
            b"moof" => {
                let Some((track, defaults)) = self.init else {
                    return Err(Fmp4Error::NoInit);
                };
                let (base, dur, key, n) = parse_moof(&bx[8..], track, defaults)?;
                self.pending.extend_from_slice(&bx);
                self.moof = Some((Bytes::new(), base, dur, key, n));
                Ok(None)
            }
            b"mdat" if self.moof.is_some() => {
                let (_, base_time, duration, keyframe, samples) =
                    self.moof.take().expect("checked");
                self.pending.extend_from_slice(&bx);
                Ok(Some(Item::Fragment(Fragment {
                    bytes: std::mem::take(&mut self.pending).freeze(),
                    base_time,
                    duration,
                    keyframe,
                    samples,
                })))
            }
            // ftyp, styp, sidx, prft, free...: kept with what follows.
            _ => {
                self.pending.extend_from_slice(&bx);
                Ok(None)
            }
        }
    }
}

/// What the init segment says.
struct MoovInfo {
    timescale: u32,
    track_id: u32,
    video: bool,
    codec: Option<String>,
    size: Option<(u32, u32)>,
    defaults: Defaults,
}

/// Iterates the child boxes of a box body: `(type, body)`.
fn children(mut b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 8 {
            return None;
        }
        let size = u32::from_be_bytes(b[0..4].try_into().ok()?) as usize;
        let kind: [u8; 4] = b[4..8].try_into().ok()?;
        let (size, header) = if size == 1 {
            (
                u64::from_be_bytes(b.get(8..16)?.try_into().ok()?) as usize,
                16,
            )
        } else if size == 0 {
            (b.len(), 8)
        } else {
            (size, 8)
        };
        if size < header || size > b.len() {
            return None;
        }
        let body = &b[header..size];
        b = &b[size..];
        Some((kind, body))
    })
}

fn child<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(b).find(|(k, _)| k == kind).map(|(_, v)| v)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse_moov(moov: &[u8]) -> Result<MoovInfo, Fmp4Error> {
    let mut tracks = Vec::new();
    for (k, trak) in children(moov) {
        if &k != b"trak" {
            continue;
        }
        let tkhd = child(trak, b"tkhd").ok_or(Fmp4Error::Malformed("tkhd"))?;
        let v1 = tkhd.first() == Some(&1);
        let track_id =
            u32_at(tkhd, if v1 { 20 } else { 12 }).ok_or(Fmp4Error::Malformed("tkhd"))?;
        // width and height are 16.16 fixed point at the end of tkhd.
        let size = (tkhd.len() >= 8)
            .then(|| {
                let n = tkhd.len();
                Some((u32_at(tkhd, n - 8)? >> 16, u32_at(tkhd, n - 4)? >> 16))
            })
            .flatten();
        let mdia = child(trak, b"mdia").ok_or(Fmp4Error::Malformed("mdia"))?;
        let mdhd = child(mdia, b"mdhd").ok_or(Fmp4Error::Malformed("mdhd"))?;
        let ts_at = if mdhd.first() == Some(&1) { 20 } else { 12 };
        let timescale = u32_at(mdhd, ts_at)
            .filter(|t| *t > 0)
            .ok_or(Fmp4Error::Malformed("mdhd"))?;
        let video = child(mdia, b"hdlr").and_then(|h| h.get(8..12)) == Some(b"vide");
        let codec = child(mdia, b"minf")
            .and_then(|m| child(m, b"stbl"))
            .and_then(|s| child(s, b"stsd"))
            .and_then(|s| s.get(8..))
            .and_then(|entries| children(entries).next())
            .and_then(|(k, entry)| codec_string(&k, entry));
        tracks.push((track_id, timescale, video, codec, size));
    }
    let pick = tracks
        .iter()
        .find(|t| t.2)
        .or(tracks.first())
        .cloned()
        .ok_or(Fmp4Error::Malformed("trak"))?;
    let mut defaults = Defaults::default();
    if let Some(mvex) = child(moov, b"mvex") {
        for (k, trex) in children(mvex) {
            if &k == b"trex" && u32_at(trex, 4) == Some(pick.0) {
                defaults = Defaults {
                    duration: u32_at(trex, 12).unwrap_or(0),
                    flags: u32_at(trex, 20).unwrap_or(0),
                };
            }
        }
    }
    Ok(MoovInfo {
        track_id: pick.0,
        timescale: pick.1,
        video: pick.2,
        codec: pick.3,
        size: if pick.2 { pick.4 } else { None },
        defaults,
    })
}

/// `avc1.PPCCLL` from an `avc1`/`avc3` sample entry's `avcC`.
fn codec_string(kind: &[u8; 4], entry: &[u8]) -> Option<String> {
    if kind != b"avc1" && kind != b"avc3" {
        return None;
    }
    // A visual sample entry has 78 bytes before its child boxes.
    let avcc = child(entry.get(78..)?, b"avcC")?;
    let (p, c, l) = (avcc.get(1)?, avcc.get(2)?, avcc.get(3)?);
    Some(format!(
        "{}.{p:02x}{c:02x}{l:02x}",
        std::str::from_utf8(kind).ok()?
    ))
}

/// `(base_time, duration, first sample is sync, samples)` of the timing
/// track's `traf` in a `moof` body.
fn parse_moof(moof: &[u8], track: u32, d: Defaults) -> Result<(u64, u64, bool, u32), Fmp4Error> {
    for (k, traf) in children(moof) {
        if &k != b"traf" {
            continue;
        }
        let mut tfhd = child(traf, b"tfhd").ok_or(Fmp4Error::Malformed("tfhd"))?;
        if tfhd.len() < 8 {
            return Err(Fmp4Error::Malformed("tfhd"));
        }
        let flags = tfhd.get_u32() & 0x00ff_ffff;
        if tfhd.get_u32() != track {
            continue;
        }
        let mut def = d;
        let skip = |n: usize, b: &mut &[u8]| -> Result<(), Fmp4Error> {
            if b.len() < n {
                return Err(Fmp4Error::Malformed("tfhd"));
            }
            b.advance(n);
            Ok(())
        };
        if flags & 0x1 != 0 {
            skip(8, &mut tfhd)?;
        }
        if flags & 0x2 != 0 {
            skip(4, &mut tfhd)?;
        }
        if flags & 0x8 != 0 {
            def.duration = u32_at(tfhd, 0).ok_or(Fmp4Error::Malformed("tfhd"))?;
            skip(4, &mut tfhd)?;
        }
        if flags & 0x10 != 0 {
            skip(4, &mut tfhd)?;
        }
        if flags & 0x20 != 0 {
            def.flags = u32_at(tfhd, 0).ok_or(Fmp4Error::Malformed("tfhd"))?;
        }
        let tfdt = child(traf, b"tfdt").ok_or(Fmp4Error::Malformed("tfdt"))?;
        let base = match tfdt.first() {
            Some(1) => tfdt
                .get(4..12)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))),
            _ => u32_at(tfdt, 4).map(u64::from),
        }
        .ok_or(Fmp4Error::Malformed("tfdt"))?;
        let (mut duration, mut key, mut samples, mut first) = (0u64, false, 0u32, true);
        for (k, trun) in children(traf) {
            if &k != b"trun" {
                continue;
            }
            let (dur, sync, n) = parse_trun(trun, def)?;
            duration += dur;
            samples += n;
            if first {
                key = sync;
                first = false;
            }
        }
        return Ok((base, duration, key, samples));
    }
    Err(Fmp4Error::Malformed("traf"))
}

/// `(duration, first sample is sync, sample count)` of one `trun` body.
fn parse_trun(mut b: &[u8], d: Defaults) -> Result<(u64, bool, u32), Fmp4Error> {
    let bad = Fmp4Error::Malformed("trun");
    if b.len() < 8 {
        return Err(bad);
    }
    let flags = b.get_u32() & 0x00ff_ffff;
    let count = b.get_u32();
    if flags & 0x1 != 0 {
        if b.len() < 4 {
            return Err(bad);
        }
        b.advance(4);
    }
    let mut first_flags = None;
    if flags & 0x4 != 0 {
        if b.len() < 4 {
            return Err(bad);
        }
        first_flags = Some(b.get_u32());
    }
    let per = [0x100, 0x200, 0x400, 0x800]
        .iter()
        .filter(|f| flags & **f != 0)
        .count()
        * 4;
    if (b.len() as u64) < u64::from(count) * per as u64 {
        return Err(bad);
    }
    let (mut total, mut sync) = (0u64, false);
    for i in 0..count {
        let dur = if flags & 0x100 != 0 {
            b.get_u32()
        } else {
            d.duration
        };
        if flags & 0x200 != 0 {
            b.advance(4);
        }
        let sflags = if flags & 0x400 != 0 {
            b.get_u32()
        } else if i == 0 {
            first_flags.unwrap_or(d.flags)
        } else {
            d.flags
        };
        if flags & 0x800 != 0 {
            b.advance(4);
        }
        if i == 0 {
            sync = sflags & NON_SYNC == 0;
        }
        total += u64::from(dur);
    }
    Ok((total, sync, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short real ffmpeg fMP4 (video only, 25 fps, keyframe every 25
    /// frames, one fragment per frame), as the head end spawns it.
    fn ffmpeg_fmp4(seconds: u32, flags: &str) -> Vec<u8> {
        let out = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=160x90:rate=25")
            .args(["-t", &seconds.to_string()])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
            .args([
                "-pix_fmt",
                "yuv420p",
                "-f",
                "mp4",
                "-movflags",
                flags,
                "pipe:1",
            ])
            .output()
            .expect("ffmpeg is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn parse_in_pieces(data: &[u8], piece: usize) -> Vec<Item> {
        let mut r = Fmp4Reader::new();
        data.chunks(piece)
            .flat_map(|c| r.push(c).expect("valid fMP4"))
            .collect()
    }

    #[test]
    fn ffmpeg_frag_every_frame() {
        let data = ffmpeg_fmp4(3, "empty_moov+default_base_moof+frag_every_frame");
        // Pieces of odd sizes: boxes straddle every push.
        let items = parse_in_pieces(&data, 1013);
        let Item::Init(init) = &items[0] else {
            panic!("init first")
        };
        assert!(init.video);
        assert!(init.timescale > 0);
        assert_eq!(init.size, Some((160, 90)));
        assert!(
            init.codec.as_deref().unwrap().starts_with("avc1."),
            "{init:?}"
        );
        assert_eq!(&init.bytes[4..8], b"ftyp");
        let frags: Vec<&Fragment> = items[1..]
            .iter()
            .map(|i| match i {
                Item::Fragment(f) => f,
                Item::Init(_) => panic!("one init"),
            })
            .collect();
        assert_eq!(frags.len(), 75);
        let frame = u64::from(init.timescale) / 25;
        let mut t = frags[0].base_time;
        for (i, f) in frags.iter().enumerate() {
            assert_eq!(f.samples, 1);
            assert_eq!(f.duration, frame, "fragment {i}");
            assert_eq!(f.base_time, t, "contiguous");
            assert_eq!(f.keyframe, i % 25 == 0, "fragment {i}");
            assert_eq!(&f.bytes[4..8], b"moof");
            t += f.duration;
        }
        // Every byte lands in exactly one item, in order...
        let total: usize = items
            .iter()
            .map(|i| match i {
                Item::Init(x) => x.bytes.len(),
                Item::Fragment(f) => f.bytes.len(),
            })
            .sum();
        // ...except the index ffmpeg appends at the end of a file.
        assert_eq!(&data[total + 4..total + 8], b"mfra");
        let mfra = u32::from_be_bytes(data[total..total + 4].try_into().unwrap());
        assert_eq!(total + mfra as usize, data.len());
    }

    #[test]
    fn ffmpeg_frag_keyframe_has_many_samples() {
        let data = ffmpeg_fmp4(2, "empty_moov+default_base_moof+frag_keyframe");
        let items = parse_in_pieces(&data, 4096);
        let frags: Vec<&Fragment> = items
            .iter()
            .filter_map(|i| match i {
                Item::Fragment(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(frags.len(), 2);
        assert!(frags.iter().all(|f| f.keyframe && f.samples == 25));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut r = Fmp4Reader::new();
        assert_eq!(
            r.push(&[0, 0, 0, 3, b'a', b'b', b'c', b'd']),
            Err(Fmp4Error::BadBox(0))
        );
        let mut r = Fmp4Reader::new();
        let mut moof = vec![0, 0, 0, 8];
        moof.extend_from_slice(b"moof");
        assert_eq!(r.push(&moof), Err(Fmp4Error::NoInit));
        // A truncated box just waits for more.
        let mut r = Fmp4Reader::new();
        assert_eq!(
            r.push(&[0, 0, 1, 0, b'f', b't', b'y', b'p', 1, 2]),
            Ok(vec![])
        );
        // Arbitrary bytes never panic.
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..200 {
            let mut r = Fmp4Reader::new();
            let junk: Vec<u8> = (0..64)
                .map(|_| super::super::xorshift64(&mut x) as u8)
                .collect();
            let _ = r.push(&junk);
        }
    }
}
