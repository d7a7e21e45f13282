//! The low-latency head end: one live fMP4 feed served as LL-HLS (`/ll/`)
//! and LL-DASH (`/dash/`).
//!
//! Data flow: the feed task (`feed`) reads ffmpeg's fragmented MP4 from a
//! pipe, cuts it with [`super::fmp4`] and hands each item to
//! [`LlHead::add`], which stamps the arrival time and groups fragments into
//! parts (`--part-duration`) and segments (`--segment-duration`, each a whole
//! number of parts, starting at a keyframe when the feed's GOP matches). The
//! state is one `Mutex<Timeline>`, never held across an `.await`; every change
//! bumps a `watch` version, which wakes every held request (blocking playlist
//! reloads, hinted parts, segments streamed while produced). Each waiter then
//! re-checks what it waits for under the lock. Memory is bounded by the
//! window: segments (and their parts) older than `--ll-window` are dropped.
//!
//! - this file: [`LlConfig`], the [`Timeline`] (grouping) and [`LlHead`]
//!   (the shared state and its waits);
//! - `hls`: the multivariant and media playlists (pure writers);
//! - `dash`: the MPD (pure writer);
//! - `http`: paths under `/ll/` and `/dash/` → answers, holds and streams;
//! - `feed`: where the bytes come from (ffmpeg lavfi, stdin or a file);
//! - `key`: HLS AES-128 (`--ll-encrypt`): parts and segments sealed as they
//!   are made, the keys the origin's HTTPS API serves.

mod dash;
mod feed;
mod hls;
mod http;
mod key;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fmp4::{Fragment, Init, Item};

pub(super) use http::handle;

/// Where the live fMP4 comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// ffmpeg spawned with a `lavfi` test source (`testsrc2`), paced in real
    /// time.
    Lavfi,
    /// Fragmented MP4 on standard input (`--feed -`).
    Stdin,
    /// Fragmented MP4 read from a file or FIFO, as fast as it is readable.
    File(PathBuf),
}

impl std::str::FromStr for Feed {
    type Err = String;
    fn from_str(s: &str) -> Result<Feed, String> {
        Ok(match s {
            "lavfi" => Feed::Lavfi,
            "-" => Feed::Stdin,
            "" => return Err("empty --feed".into()),
            path => Feed::File(PathBuf::from(path)),
        })
    }
}

/// Settings of the low-latency head end.
#[derive(Debug, Clone)]
pub struct LlConfig {
    /// The feed.
    pub feed: Feed,
    /// Target duration of an LL-HLS part (and of a DASH chunk's availability
    /// step).
    pub part: Duration,
    /// Target duration of a segment (a whole number of parts).
    pub segment: Duration,
    /// Segments kept and listed (the sliding window).
    pub window: usize,
    /// Longest a request for a segment not started yet is held.
    pub hold: Duration,
    /// Frame rate of the spawned lavfi source.
    pub fps: u32,
    /// Picture size (width, height) of the spawned lavfi source.
    pub size: (u32, u32),
    /// HLS AES-128 encryption of every part and segment, with a new key
    /// every this many segments; `None` serves them clear.
    pub encrypt: Option<u64>,
}

impl Default for LlConfig {
    fn default() -> Self {
        LlConfig {
            feed: Feed::Lavfi,
            part: Duration::from_millis(200),
            segment: Duration::from_secs(1),
            window: 10,
            hold: Duration::from_secs(5),
            fps: 25,
            size: (640, 360),
            encrypt: None,
        }
    }
}

/// One part: a run of fragments of one segment, served as one object.
#[derive(Debug, Clone)]
pub(super) struct Part {
    /// What is served: the fragments, or their ciphertext with `--ll-encrypt`.
    pub bytes: Bytes,
    /// In timescale ticks.
    pub duration: u64,
    /// Starts with a sync sample.
    pub independent: bool,
}

/// One segment, complete or in production.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// Media sequence number (HLS) = `$Number$` (DASH).
    pub msn: u64,
    /// Media time of its first sample, in ticks.
    pub start: u64,
    /// Duration so far, in ticks.
    pub duration: u64,
    /// Its fragments as they arrived (what a DASH chunked response streams).
    pub frags: Vec<Bytes>,
    /// Bytes so far.
    pub len: usize,
    /// Its closed parts.
    pub parts: Vec<Part>,
    /// No more fragments will join it.
    pub complete: bool,
    /// Starts with a sync sample.
    pub independent: bool,
    /// With `--ll-encrypt`: the segment's ciphertext so far, in pieces of
    /// whole blocks (the last, padded one when it completes).
    pub sealed: Option<Vec<Bytes>>,
    /// Bytes of `sealed`.
    pub sealed_len: usize,
}

impl Segment {
    /// What a segment request streams: the ciphertext pieces when
    /// encrypted, else the fragments.
    pub(super) fn body(&self) -> &[Bytes] {
        self.sealed.as_deref().unwrap_or(&self.frags)
    }

    /// Bytes of [`Segment::body`] so far.
    pub(super) fn body_len(&self) -> usize {
        if self.sealed.is_some() {
            self.sealed_len
        } else {
            self.len
        }
    }
}

/// The grouping state: init segment, the window of segments, the open part.
#[derive(Debug)]
pub(super) struct Timeline {
    pub init: Option<Init>,
    /// Wall-clock time of media time 0 (from the first fragment's arrival).
    pub anchor: Option<SystemTime>,
    pub segments: VecDeque<Segment>,
    /// Fragments of the part being built, and its duration in ticks.
    open: Vec<Bytes>,
    open_ticks: u64,
    open_independent: bool,
    /// The feed ended: nothing more will come.
    pub ended: bool,
    /// HLS AES-128 keys, when parts and segments are encrypted.
    keys: Option<key::Keys>,
    /// The encryptor of the segment in production.
    open_cbc: Option<key::CbcStream>,
    part: Duration,
    segment: Duration,
    window: usize,
}

/// Joins the open part's fragments into one part body, sealed with its
/// segment's key and IV when encrypting.
fn close_part(open: &mut Vec<Bytes>, keys: Option<&key::Keys>, msn: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(open.iter().map(Bytes::len).sum());
    for piece in open.drain(..) {
        b.extend_from_slice(&piece);
    }
    match keys {
        Some(k) => key::seal(k.stream(msn), &b),
        None => b.freeze(),
    }
}

/// Marks `seg` complete; an encrypted one gets its last, padded block.
fn complete(seg: &mut Segment, cbc: &mut Option<key::CbcStream>) {
    seg.complete = true;
    if let (Some(c), Some(sealed)) = (cbc.take(), seg.sealed.as_mut()) {
        let tail = c.finish();
        seg.sealed_len += tail.len();
        sealed.push(tail);
    }
}

/// Seconds in `ticks` of `timescale`.
pub(super) fn secs(ticks: u64, timescale: u32) -> f64 {
    ticks as f64 / f64::from(timescale.max(1))
}

impl Timeline {
    pub(super) fn new(cfg: &LlConfig) -> Timeline {
        Timeline {
            init: None,
            anchor: None,
            segments: VecDeque::new(),
            open: Vec::new(),
            open_ticks: 0,
            open_independent: false,
            ended: false,
            keys: None,
            open_cbc: None,
            part: cfg.part,
            segment: cfg.segment,
            window: cfg.window.max(1),
        }
    }

    /// Ticks per second of the timing track (1 before the init segment).
    pub(super) fn timescale(&self) -> u32 {
        self.init.as_ref().map_or(1, |i| i.timescale)
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_secs_f64() * f64::from(self.timescale())).round() as u64
    }

    /// Takes one item of the feed, arrived at `now`.
    pub(super) fn add(&mut self, item: Item, now: SystemTime) {
        match item {
            Item::Init(init) => {
                if self.init.as_ref().is_some_and(|i| i.bytes != init.bytes) {
                    tracing::warn!("the feed sent a different init segment; keeping the first");
                    return;
                }
                self.init = Some(init);
            }
            Item::Fragment(f) => self.add_fragment(f, now),
        }
    }

    fn add_fragment(&mut self, f: Fragment, now: SystemTime) {
        let ts = self.timescale();
        if self.anchor.is_none() {
            // The fragment's last sample was produced just now.
            let media = Duration::from_secs_f64(secs(f.base_time + f.duration, ts));
            self.anchor = Some(now.checked_sub(media).unwrap_or(now));
        }
        if self.segments.back().is_none_or(|s| s.complete) {
            let msn = self.segments.back().map_or(0, |s| s.msn + 1);
            if !f.keyframe {
                tracing::warn!(msn, "segment starts without a keyframe: align the feed's GOP with --segment-duration");
            }
            self.segments.push_back(Segment {
                msn,
                start: f.base_time,
                duration: 0,
                frags: Vec::new(),
                len: 0,
                parts: Vec::new(),
                complete: false,
                independent: f.keyframe,
                sealed: self.keys.as_ref().map(|_| Vec::new()),
                sealed_len: 0,
            });
            self.open_cbc = self.keys.as_ref().map(|k| k.stream(msn));
        }
        if self.open.is_empty() {
            self.open_independent = f.keyframe;
        }
        // Half a millisecond of slack: 5 frames of 40 ms make a 200 ms part.
        let slack = self.ticks(Duration::from_micros(500));
        let (part_ticks, seg_ticks) = (self.ticks(self.part), self.ticks(self.segment));
        self.open.push(f.bytes.clone());
        self.open_ticks += f.duration;
        let seg = self.segments.back_mut().expect("pushed above");
        seg.duration += f.duration;
        seg.len += f.bytes.len();
        if let (Some(cbc), Some(sealed)) = (self.open_cbc.as_mut(), seg.sealed.as_mut()) {
            let c = cbc.push(&f.bytes);
            if !c.is_empty() {
                seg.sealed_len += c.len();
                sealed.push(c);
            }
        }
        seg.frags.push(f.bytes);
        if self.open_ticks + slack >= part_ticks {
            let bytes = close_part(&mut self.open, self.keys.as_ref(), seg.msn);
            seg.parts.push(Part {
                bytes,
                duration: std::mem::take(&mut self.open_ticks),
                independent: self.open_independent,
            });
            if seg.duration + slack >= seg_ticks {
                complete(seg, &mut self.open_cbc);
            }
        }
        while self.segments.len() > self.window + 1 {
            self.segments.pop_front();
        }
    }

    /// The feed ended: the open part and segment close as they are.
    pub(super) fn end(&mut self) {
        self.ended = true;
        if let Some(seg) = self.segments.back_mut().filter(|s| !s.complete) {
            if !self.open.is_empty() {
                let bytes = close_part(&mut self.open, self.keys.as_ref(), seg.msn);
                seg.parts.push(Part {
                    bytes,
                    duration: std::mem::take(&mut self.open_ticks),
                    independent: self.open_independent,
                });
            }
            complete(seg, &mut self.open_cbc);
        }
    }

    /// Segment `msn`, if still in the window.
    pub(super) fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
    }

    /// The part a player is told to preload: `(msn, index)`.
    pub(super) fn next_part(&self) -> (u64, usize) {
        match self.segments.back() {
            None => (0, 0),
            Some(s) if s.complete => (s.msn + 1, 0),
            Some(s) => (s.msn, s.parts.len()),
        }
    }

    /// The next segment to start (the one a DASH player may ask early for).
    pub(super) fn next_segment(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.msn + 1)
    }

    /// Wall-clock time of media time `ticks`.
    pub(super) fn wall(&self, ticks: u64) -> Option<SystemTime> {
        Some(self.anchor? + Duration::from_secs_f64(secs(ticks, self.timescale())))
    }
}

/// The shared state of the head end.
pub struct LlHead {
    cfg: LlConfig,
    timeline: Mutex<Timeline>,
    /// Bumped on every change; held requests wait on it.
    version: watch::Sender<u64>,
}

impl LlHead {
    /// A head end with nothing yet; `api_authority` is where the origin's
    /// HTTPS API answers (key URIs name it).
    pub fn new(cfg: LlConfig, api_authority: &str) -> Arc<LlHead> {
        let mut timeline = Timeline::new(&cfg);
        timeline.keys = cfg
            .encrypt
            .map(|n| key::Keys::random(n, format!("https://{api_authority}")));
        Arc::new(LlHead {
            timeline: Mutex::new(timeline),
            cfg,
            version: watch::Sender::new(0),
        })
    }

    /// Starts the feed task; it ends with the feed or when `stop` is cancelled.
    pub fn spawn_feed(self: &Arc<Self>, stop: CancellationToken) {
        tokio::spawn(feed::run(self.clone(), stop));
    }

    /// Takes one item of the feed (stamped now) and wakes the waiters.
    pub fn add(&self, item: Item) {
        self.timeline.lock().add(item, SystemTime::now());
        self.version.send_modify(|v| *v += 1);
    }

    /// The feed ended.
    pub fn end(&self) {
        self.timeline.lock().end();
        self.version.send_modify(|v| *v += 1);
    }

    /// Runs `f` on the timeline (under the lock; `f` must not block).
    pub(super) fn with<T>(&self, f: impl FnOnce(&Timeline) -> T) -> T {
        f(&self.timeline.lock())
    }

    /// Waits until `f` returns `Some` (checked now and after every change) or
    /// `limit` passes (`None`).
    pub(super) async fn wait_for<T>(
        &self,
        limit: Duration,
        mut f: impl FnMut(&Timeline) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            rx.borrow_and_update();
            if let Some(v) = f(&self.timeline.lock()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// A receiver of the change version, for streams.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The configuration.
    pub(super) fn cfg(&self) -> &LlConfig {
        &self.cfg
    }

    /// The HLS AES-128 key of `epoch`, only for epochs of segments in the
    /// window and of the next one (so a player at the edge can prepare);
    /// `None` when not encrypting or for any other epoch.
    pub(in crate::origin) fn hls_key(&self, epoch: u64) -> Option<[u8; 16]> {
        let t = self.timeline.lock();
        let keys = t.keys.as_ref()?;
        let first = t.segments.front().map_or(0, |s| s.msn);
        let known = keys.epoch(first)..=keys.epoch(t.next_segment());
        known.contains(&epoch).then(|| keys.key(epoch))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A synthetic init at 12800 ticks per second (ffmpeg's for 25 fps).
    pub fn init() -> Item {
        Item::Init(Init {
            bytes: Bytes::from_static(b"\0\0\0\x08ftyp"),
            timescale: 12800,
            track_id: 1,
            video: true,
            codec: Some("avc1.64001e".into()),
            size: Some((640, 360)),
        })
    }

    /// Frame `n` of a 25 fps feed with a keyframe every `gop` frames.
    pub fn frame(n: u64, gop: u64) -> Item {
        Item::Fragment(Fragment {
            bytes: Bytes::from(format!("frame{n};")),
            base_time: n * 512,
            duration: 512,
            keyframe: n.is_multiple_of(gop),
            samples: 1,
        })
    }

    pub fn timeline(frames: u64) -> Timeline {
        let mut t = Timeline::new(&LlConfig {
            window: 4,
            ..LlConfig::default()
        });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        t.add(init(), t0);
        for n in 0..frames {
            t.add(frame(n, 25), t0 + Duration::from_millis(40 * (n + 1)));
        }
        t
    }

    #[test]
    fn fragments_group_into_parts_and_segments() {
        let t = timeline(25 * 6 + 7);
        // Window of 4 complete segments plus the open one.
        let msns: Vec<u64> = t.segments.iter().map(|s| s.msn).collect();
        assert_eq!(msns, vec![2, 3, 4, 5, 6]);
        for s in t.segments.iter().take(4) {
            assert!(s.complete && s.independent);
            assert_eq!(s.duration, 12800);
            assert_eq!(s.parts.len(), 5);
            assert!(s.parts[0].independent && !s.parts[1].independent);
            assert!(s.parts.iter().all(|p| p.duration == 2560));
            // Parts concatenated are the segment.
            let joined: Vec<u8> = s.parts.iter().flat_map(|p| p.bytes.to_vec()).collect();
            let frags: Vec<u8> = s.frags.iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(joined, frags);
            assert_eq!(s.len, frags.len());
        }
        let open = t.segments.back().unwrap();
        assert!(!open.complete);
        assert_eq!(open.frags.len(), 7);
        assert_eq!(open.parts.len(), 1);
        assert_eq!(t.next_part(), (6, 1));
        assert_eq!(t.next_segment(), 7);
        assert_eq!(
            t.wall(12800 * 6),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_006))
        );
        assert!(t.segment(1).is_none() && t.segment(6).is_some() && t.segment(7).is_none());
    }

    /// `timeline(frames)` with `--ll-encrypt` (a key every 2 segments).
    pub fn sealed_timeline(frames: u64) -> Timeline {
        let mut t = Timeline::new(&LlConfig {
            window: 4,
            ..LlConfig::default()
        });
        t.keys = Some(key::Keys::with_master(
            [5; 32],
            2,
            "https://127.0.0.1:9100".into(),
        ));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        t.add(init(), t0);
        for n in 0..frames {
            t.add(frame(n, 25), t0 + Duration::from_millis(40 * (n + 1)));
        }
        t
    }

    #[test]
    fn encrypted_parts_and_segments_open_to_the_fragments() {
        let t = sealed_timeline(25 * 6 + 7);
        let keys = t.keys.clone().unwrap();
        for s in &t.segments {
            let (k, iv) = (keys.key(keys.epoch(s.msn)), key::iv(s.msn));
            let plain: Vec<u8> = s.frags.iter().flat_map(|p| p.to_vec()).collect();
            let mut at = 0;
            for p in &s.parts {
                // Each part is its own resource, with the segment's key and IV.
                let open = key::tests::open(&k, &iv, &p.bytes).expect("a part opens");
                assert_eq!(open, plain[at..at + open.len()]);
                assert_ne!(p.bytes[..16], open[..16], "ciphertext, not the fragments");
                at += open.len();
            }
            let body: Vec<u8> = s.body().iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(body.len(), s.body_len());
            assert!(s.body().iter().all(|p| p.len() % key::BLOCK == 0));
            if s.complete {
                assert_eq!(at, plain.len());
                assert_eq!(body.len(), key::tests::sealed_len(plain.len()));
                assert_eq!(key::tests::open(&k, &iv, &body).unwrap(), plain);
            } else {
                // The open segment: whole blocks so far, unpadded.
                assert_eq!(body.len(), plain.len() / 16 * 16);
            }
        }
        // The same segment under another epoch's key does not open.
        let s = &t.segments[0];
        let other = keys.key(keys.epoch(s.msn) + 1);
        assert!(key::tests::open(&other, &key::iv(s.msn), &s.parts[0].bytes)
            .is_none_or(|p| !p.starts_with(b"frame")));
        // Clear timelines serve the fragments themselves.
        let clear = timeline(60);
        assert_eq!(clear.segments[0].body(), &clear.segments[0].frags[..]);
    }

    #[test]
    fn keys_exist_for_the_window_and_the_next_epoch_only() {
        let cfg = LlConfig {
            window: 4,
            encrypt: Some(2),
            ..LlConfig::default()
        };
        let head = LlHead::new(cfg, "127.0.0.1:9");
        assert!(
            head.hls_key(0).is_some(),
            "before the first segment: epoch 0"
        );
        assert!(head.hls_key(1).is_none());
        head.add(init());
        for n in 0..25 * 8 + 3 {
            head.add(frame(n, 25));
        }
        // Window: segments 4..=8 (8 open), the next is 9: epochs 2..=4.
        assert_eq!(head.with(|t| t.segments.front().unwrap().msn), 4);
        for e in 0..7 {
            assert_eq!(head.hls_key(e).is_some(), (2..=4).contains(&e), "{e}");
        }
        assert_ne!(head.hls_key(2), head.hls_key(3));
        let clear = LlHead::new(LlConfig::default(), "127.0.0.1:9");
        assert!(clear.hls_key(0).is_none());
    }

    #[test]
    fn a_complete_segment_hints_the_next_one() {
        let mut t = timeline(50);
        assert_eq!(t.next_part(), (2, 0));
        t.end();
        assert!(t.ended);
        assert_eq!(t.segments.back().unwrap().msn, 1);
    }

    #[test]
    fn end_closes_the_open_part() {
        let mut t = timeline(28);
        t.end();
        let s = t.segments.back().unwrap();
        assert!(s.complete);
        assert_eq!(s.parts.len(), 1);
        assert_eq!(s.parts[0].duration, 3 * 512);
    }
}
