//! The in-flight fan-out slot: one upstream response, any number of viewers.
//!
//! A slot is the single place a chunk's bytes live while they stream in. Its
//! one [`Writer`] (owned by the fill task) publishes the response head,
//! appends body pieces as they arrive, and ends the slot: [`Writer::finish`]
//! freezes the body into an [`Arc<Body>`] the cache can keep, and dropping a
//! writer that did not finish fails the slot, so a fill task that panics or is
//! cancelled can never leave viewers waiting on a zombie. The slot moves
//! through the [`Phase`]s `Waiting → Streaming → Done | Failed`.
//!
//! Every downstream request for the key holds a [`Viewer`]: a
//! `watch::Receiver` and a byte offset. A write wakes every viewer at once
//! (event-driven, no timer); each viewer then clones the `Bytes` handles it
//! has not sent yet. Chunk bytes are never copied per viewer, and a slow viewer
//! only lags its own offset: the writer never waits for anyone.
//!
//! The body is charged to the relay's memory [`Budget`] as it grows, pieces
//! and their overhead included. Small pieces (a hostile origin can send a body
//! one byte per chunked frame) are merged on the way in, so the piece count
//! stays bounded by the body size, not by the sender's framing.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use crate::budget::{Budget, Charge, Exhausted, PIECE_OVERHEAD};

/// Pieces shorter than this are merged with their neighbours on arrival.
pub const MERGE_BELOW: usize = 16 * 1024;
/// When a finished body averages fewer bytes per piece than this, it is
/// re-cut into [`COMPACT_PIECE`]-byte pieces before it is kept.
const COMPACT_AVERAGE: u64 = 4 * 1024;
/// Piece size of a compacted body.
const COMPACT_PIECE: usize = 64 * 1024;
/// Bytes charged for a head on top of its header names and values.
const HEAD_OVERHEAD: usize = 256;

/// Why a slot ended without a complete body.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    /// The upstream could not be reached or answered garbage before a head.
    #[error("upstream unavailable: {0}")]
    Unavailable(Arc<str>),
    /// The upstream did not answer within the configured time.
    #[error("upstream timed out: {0}")]
    Timeout(Arc<str>),
    /// The body broke off after the head was sent.
    #[error("upstream body failed: {0}")]
    Truncated(Arc<str>),
    /// The object is larger than `max-object-size`.
    #[error("object exceeds max-object-size")]
    TooLarge,
    /// Holding the body would pass `--memory-limit`.
    #[error(transparent)]
    Memory(#[from] Exhausted),
    /// The fill task ended without saying how (panic or cancellation).
    #[error("fill task ended without a result")]
    Vanished,
}

/// The response head as it will be sent to every viewer.
#[derive(Debug, Clone)]
pub struct Head {
    /// Status code.
    pub status: StatusCode,
    /// End-to-end headers (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// The body length, when the upstream declared it.
    pub len: Option<u64>,
}

impl Head {
    /// Bytes this head is charged: names, values and a fixed overhead.
    pub fn weight(&self) -> usize {
        HEAD_OVERHEAD
            + self
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 32)
                .sum::<usize>()
    }
}

/// A body: shared pieces and their start offsets, charged to the budget for
/// as long as anything holds it.
#[derive(Debug)]
pub struct Body {
    pieces: Vec<Bytes>,
    starts: Vec<u64>,
    len: u64,
    charge: Charge,
}

impl Body {
    fn new(charge: Charge) -> Body {
        Body {
            pieces: Vec::new(),
            starts: Vec::new(),
            len: 0,
            charge,
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pieces it is held in.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Bytes charged to the budget for it.
    pub fn charged(&self) -> usize {
        self.charge.held()
    }

    /// The bytes from `pos` to the end of the piece holding `pos`, without
    /// copying; `hint` is the piece index the caller found last time.
    pub fn read_at(&self, pos: u64, hint: &mut usize) -> Option<Bytes> {
        if pos >= self.len {
            return None;
        }
        let i = match self.starts.get(*hint) {
            Some(&s) if s <= pos && pos < s + self.pieces[*hint].len() as u64 => *hint,
            _ => self.starts.partition_point(|&s| s <= pos) - 1,
        };
        *hint = i;
        Some(self.pieces[i].slice((pos - self.starts[i]) as usize..))
    }

    /// Adds pieces, merging short ones, and charges them (with `extra` bytes
    /// more, for the head) to the budget. On failure nothing is added.
    fn append(
        &mut self,
        pieces: impl IntoIterator<Item = Bytes>,
        extra: usize,
    ) -> Result<bool, Exhausted> {
        let merged = merge_small(pieces);
        if merged.is_empty() {
            return Ok(false);
        }
        let add: u64 = merged.iter().map(|b| b.len() as u64).sum();
        let need = self.len + add;
        let count = self.pieces.len() + merged.len();
        self.cover(need as usize + count * PIECE_OVERHEAD + extra)?;
        for b in merged {
            self.starts.push(self.len);
            self.len += b.len() as u64;
            self.pieces.push(b);
        }
        Ok(true)
    }

    /// Grows the charge to at least `total` bytes.
    fn cover(&mut self, total: usize) -> Result<(), Exhausted> {
        match total.checked_sub(self.charge.held()) {
            Some(more) if more > 0 => self.charge.grow(more),
            _ => Ok(()),
        }
    }

    /// Re-cuts a body of many tiny pieces into few large ones (one copy, at
    /// the end of the fill, not per viewer).
    fn compact(&mut self) {
        if self.pieces.len() < 16 || self.len / self.pieces.len() as u64 >= COMPACT_AVERAGE {
            return;
        }
        let mut out = Vec::with_capacity(self.len as usize / COMPACT_PIECE + 1);
        let mut buf = BytesMut::new();
        for p in self.pieces.drain(..) {
            buf.extend_from_slice(&p);
            while buf.len() >= COMPACT_PIECE {
                out.push(buf.split_to(COMPACT_PIECE).freeze());
            }
        }
        if !buf.is_empty() {
            out.push(buf.freeze());
        }
        self.starts.clear();
        let mut pos = 0;
        for p in &out {
            self.starts.push(pos);
            pos += p.len() as u64;
        }
        self.pieces = out;
    }
}

/// Merges runs of short pieces into fresh, exactly sized buffers. Copying
/// them also stops a tiny slice from pinning the large read buffer it came
/// from.
fn merge_small(pieces: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut run: Option<BytesMut> = None;
    for p in pieces.into_iter().filter(|p| !p.is_empty()) {
        if p.len() >= MERGE_BELOW {
            if let Some(r) = run.take() {
                out.push(r.freeze());
            }
            out.push(p);
            continue;
        }
        let r = run.get_or_insert_with(BytesMut::new);
        r.extend_from_slice(&p);
        if r.len() >= MERGE_BELOW {
            out.push(run.take().expect("just filled").freeze());
        }
    }
    if let Some(r) = run {
        out.push(r.freeze());
    }
    out
}

/// Where a slot is in its life.
#[derive(Debug)]
pub enum Phase {
    /// No head yet; `not_yet` once the upstream has said "not yet".
    Waiting {
        /// The upstream answered "not yet" at least once.
        not_yet: bool,
    },
    /// The head is out and the body is growing.
    Streaming(Arc<Head>),
    /// The body is complete and frozen.
    Done(Arc<Head>, Arc<Body>),
    /// The fill failed, before the head (`None`) or after it.
    Failed(Option<Arc<Head>>, SlotError),
}

/// Everything viewers can see of a slot.
#[derive(Debug)]
pub struct SlotState {
    phase: Phase,
    /// The growing body (moved into the phase when it is done).
    body: Body,
    head_weight: usize,
    first_byte: Option<Instant>,
}

impl SlotState {
    fn body(&self) -> &Body {
        match &self.phase {
            Phase::Done(_, b) => b,
            _ => &self.body,
        }
    }
}

/// A broadcast slot for one chunk.
#[derive(Debug)]
pub struct Slot {
    tx: watch::Sender<SlotState>,
    created: Instant,
}

impl Slot {
    /// An empty slot charged to `budget`, and its one writer.
    pub fn new(budget: &Arc<Budget>) -> (Arc<Slot>, Writer) {
        let slot = Arc::new(Slot {
            tx: watch::Sender::new(SlotState {
                phase: Phase::Waiting { not_yet: false },
                body: Body::new(budget.charge()),
                head_weight: 0,
                first_byte: None,
            }),
            created: Instant::now(),
        });
        let writer = Writer {
            slot: slot.clone(),
            ended: false,
        };
        (slot, writer)
    }

    /// A slot with no memory limit (the head-end simulator's chunks).
    pub fn unbounded() -> (Arc<Slot>, Writer) {
        Slot::new(&Budget::new(usize::MAX))
    }

    /// When the slot was opened.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Joins the slot. The viewer will see the head, every byte already
    /// received, and the rest as it arrives.
    pub fn subscribe(&self) -> Viewer {
        Viewer {
            rx: self.tx.subscribe(),
            pos: 0,
            hint: 0,
        }
    }

    /// How many viewers are attached right now.
    pub fn viewers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// When the first body byte arrived from upstream.
    pub fn first_byte(&self) -> Option<Instant> {
        self.tx.borrow().first_byte
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.tx.borrow().body().len()
    }

    /// Whether the slot has ended (cleanly or not).
    pub fn ended(&self) -> bool {
        matches!(self.tx.borrow().phase, Phase::Done(..) | Phase::Failed(..))
    }
}

/// The only handle that can write a slot. Dropping it before
/// [`Writer::finish`] or [`Writer::fail`] fails the slot with
/// [`SlotError::Vanished`].
#[derive(Debug)]
pub struct Writer {
    slot: Arc<Slot>,
    ended: bool,
}

impl Writer {
    /// The slot this writer feeds.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Records that the upstream said "not yet". Viewers are not woken: they
    /// keep waiting for a real answer, and read the flag only if their own wait
    /// runs out.
    pub fn mark_not_yet(&self) {
        self.slot.tx.send_if_modified(|s| {
            if let Phase::Waiting { not_yet } = &mut s.phase {
                *not_yet = true;
            }
            false
        });
    }

    /// Publishes the response head and wakes every viewer. The head and, when
    /// the length is declared, the whole body are charged to the budget first;
    /// if they do not fit, nothing is published.
    pub fn publish_head(&self, head: Head) -> Result<(), Exhausted> {
        let weight = head.weight();
        let mut result = Ok(());
        self.slot.tx.send_if_modified(|s| {
            let declared = head.len.unwrap_or(0) as usize;
            result = s
                .body
                .cover(weight + declared.saturating_add(PIECE_OVERHEAD));
            if result.is_ok() {
                s.head_weight = weight;
                s.phase = Phase::Streaming(Arc::new(head));
            }
            result.is_ok()
        });
        result
    }

    /// Appends pieces with a single wake-up. Every wake costs each parked
    /// viewer a task poll and a socket write, so pieces that arrived together
    /// are handed out together. Fails, adding nothing, when the bytes would
    /// pass the memory budget.
    pub fn push_all(&self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Exhausted> {
        let mut result = Ok(());
        self.slot.tx.send_if_modified(|s| {
            let extra = s.head_weight;
            match s.body.append(pieces, extra) {
                Ok(grew) => {
                    if grew {
                        s.first_byte.get_or_insert_with(Instant::now);
                    }
                    grew
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
        result
    }

    /// Appends one piece.
    pub fn push(&self, data: Bytes) -> Result<(), Exhausted> {
        self.push_all(std::iter::once(data))
    }

    /// Ends the slot cleanly and returns the frozen head and body for the
    /// cache (`None` if no head was ever published).
    pub fn finish(mut self) -> Option<(Arc<Head>, Arc<Body>)> {
        self.ended = true;
        let mut out = None;
        self.slot.tx.send_modify(|s| {
            let head = match &s.phase {
                Phase::Streaming(h) => h.clone(),
                _ => {
                    s.phase = Phase::Failed(None, SlotError::Vanished);
                    return;
                }
            };
            let empty = Body::new(s.body.charge.sibling());
            let mut body = std::mem::replace(&mut s.body, empty);
            body.compact();
            let body = Arc::new(body);
            out = Some((head.clone(), body.clone()));
            s.phase = Phase::Done(head, body);
        });
        out
    }

    /// Ends the slot with an error: every viewer's response ends as an error.
    pub fn fail(mut self, error: SlotError) {
        self.ended = true;
        self.end_with(error);
    }

    fn end_with(&self, error: SlotError) {
        self.slot.tx.send_if_modified(|s| {
            let head = match &s.phase {
                Phase::Waiting { .. } => None,
                Phase::Streaming(h) => Some(h.clone()),
                Phase::Done(..) | Phase::Failed(..) => return false,
            };
            s.phase = Phase::Failed(head, error);
            true
        });
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.ended {
            self.end_with(SlotError::Vanished);
        }
    }
}

/// One viewer's position in a slot: a receiver and a byte offset. This is all
/// the per-viewer state the fan-out keeps.
#[derive(Debug)]
pub struct Viewer {
    rx: watch::Receiver<SlotState>,
    pos: u64,
    hint: usize,
}

/// What a wait for the head ended with.
#[derive(Debug)]
pub enum HeadWait {
    /// The upstream answered.
    Head(Arc<Head>),
    /// The slot failed before any head.
    Failed(SlotError),
}

impl Viewer {
    /// Waits until the head is known or the slot fails. Cancel-safe, so the
    /// caller can wrap it in a timeout.
    pub async fn head(&mut self) -> HeadWait {
        loop {
            match &self.rx.borrow_and_update().phase {
                Phase::Waiting { .. } => {}
                Phase::Streaming(h) | Phase::Done(h, _) | Phase::Failed(Some(h), _) => {
                    return HeadWait::Head(h.clone())
                }
                Phase::Failed(None, e) => return HeadWait::Failed(e.clone()),
            }
            if self.rx.changed().await.is_err() {
                // Unreachable while the writer lives (it holds the slot, and
                // the slot holds the sender); kept total for safety.
                return HeadWait::Failed(SlotError::Vanished);
            }
        }
    }

    /// Whether the upstream has said "not yet" for this slot.
    pub fn saw_not_yet(&self) -> bool {
        matches!(self.rx.borrow().phase, Phase::Waiting { not_yet: true })
    }

    /// The next body piece: `None` at a clean end, `Some(Err)` if the body
    /// failed. Bytes already received are returned without waiting.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, SlotError>> {
        loop {
            {
                let s = self.rx.borrow_and_update();
                if let Some(b) = s.body().read_at(self.pos, &mut self.hint) {
                    self.pos += b.len() as u64;
                    return Some(Ok(b));
                }
                match &s.phase {
                    Phase::Done(..) => return None,
                    Phase::Failed(_, e) => return Some(Err(e.clone())),
                    _ => {}
                }
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(SlotError::Vanished));
            }
        }
    }

    /// The body as a stream of pieces that ends after the first error.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, SlotError>> + Send {
        futures_util::stream::unfold((self, false), |(mut v, failed)| async move {
            if failed {
                return None;
            }
            match v.next_piece().await? {
                Ok(b) => Some((Ok(b), (v, false))),
                Err(e) => Some((Err(e), (v, true))),
            }
        })
    }
}

/// Reads a frozen body from `pos` up to `end` (exclusive), piece by piece,
/// sharing the bytes. A cache hit's whole per-viewer state is this.
#[derive(Debug)]
pub struct BodyReader {
    body: Arc<Body>,
    pos: u64,
    end: u64,
    hint: usize,
}

impl BodyReader {
    /// Reads `start..end` of `body`.
    pub fn new(body: Arc<Body>, start: u64, end: u64) -> BodyReader {
        let end = end.min(body.len());
        BodyReader {
            body,
            pos: start,
            end,
            hint: 0,
        }
    }
}

impl Iterator for BodyReader {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.pos >= self.end {
            return None;
        }
        let mut b = self.body.read_at(self.pos, &mut self.hint)?;
        b.truncate((self.end - self.pos).min(b.len() as u64) as usize);
        self.pos += b.len() as u64;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            len: None,
        }
    }

    fn big(c: u8) -> Bytes {
        Bytes::from(vec![c; MERGE_BELOW])
    }

    #[tokio::test]
    async fn late_joiner_gets_everything_and_live_tail() {
        let (slot, w) = Slot::unbounded();
        let mut early = slot.subscribe();
        w.publish_head(head()).unwrap();
        w.push(big(b'a')).unwrap();
        let mut late = slot.subscribe();
        assert!(matches!(late.head().await, HeadWait::Head(_)));
        assert_eq!(late.next_piece().await.unwrap().unwrap(), big(b'a'));
        let waiter = tokio::spawn(async move { late.next_piece().await });
        w.push(big(b'c')).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().unwrap(), big(b'c'));
        let (_, body) = w.finish().unwrap();
        assert!(matches!(early.head().await, HeadWait::Head(_)));
        assert_eq!(early.next_piece().await.unwrap().unwrap(), big(b'a'));
        assert_eq!(early.next_piece().await.unwrap().unwrap(), big(b'c'));
        assert!(early.next_piece().await.is_none());
        assert_eq!((body.pieces(), body.len()), (2, 2 * MERGE_BELOW as u64));
    }

    #[tokio::test]
    async fn failure_reaches_every_viewer_and_is_not_complete() {
        let (slot, w) = Slot::unbounded();
        let mut v = slot.subscribe();
        w.publish_head(head()).unwrap();
        w.push(Bytes::from_static(b"partial")).unwrap();
        w.fail(SlotError::Truncated("reset".into()));
        v.head().await;
        assert!(v.next_piece().await.unwrap().is_ok());
        assert!(matches!(
            v.next_piece().await,
            Some(Err(SlotError::Truncated(_)))
        ));
    }

    #[tokio::test]
    async fn a_dropped_writer_fails_the_slot() {
        let (slot, w) = Slot::unbounded();
        let mut v = slot.subscribe();
        drop(w);
        assert!(matches!(
            v.head().await,
            HeadWait::Failed(SlotError::Vanished)
        ));

        // A writer dropped mid-body (a panicking fill task) ends the body in
        // an error, never in a clean end.
        let (slot, w) = Slot::unbounded();
        let mut v = slot.subscribe();
        w.publish_head(head()).unwrap();
        w.push(Bytes::from_static(b"half")).unwrap();
        let task = tokio::spawn(async move {
            let _w = w;
            panic!("fill task panics");
        });
        assert!(task.await.is_err());
        v.head().await;
        assert_eq!(v.next_piece().await.unwrap().unwrap(), "half");
        assert!(matches!(
            v.next_piece().await,
            Some(Err(SlotError::Vanished))
        ));
    }

    #[tokio::test]
    async fn viewers_are_counted() {
        let (slot, _w) = Slot::unbounded();
        let a = slot.subscribe();
        let b = slot.subscribe();
        assert_eq!(slot.viewers(), 2);
        drop(a);
        assert_eq!(slot.viewers(), 1);
        drop(b);
        assert_eq!(slot.viewers(), 0);
    }

    #[tokio::test]
    async fn tiny_pieces_are_merged_and_charged_with_overhead() {
        let budget = Budget::new(8 << 20);
        let (slot, w) = Slot::new(&budget);
        let mut v = slot.subscribe();
        w.publish_head(head()).unwrap();
        let n = 100_000;
        // One byte per piece, as a hostile chunked origin sends it, in
        // bursts of 1,000 and then one at a time.
        for burst in 0..50 {
            w.push_all((0..1000).map(|i| Bytes::from(vec![((burst * 1000 + i) % 251) as u8])))
                .unwrap();
        }
        for i in 50_000..n {
            w.push(Bytes::from(vec![(i % 251) as u8])).unwrap();
        }
        assert!(budget.used() >= n + (n - 50_000) * PIECE_OVERHEAD);
        let (_, body) = w.finish().unwrap();
        // Compacted at the end: the piece count follows the size.
        assert!(body.pieces() <= n / COMPACT_PIECE + 1, "{}", body.pieces());
        let mut got = Vec::new();
        v.head().await;
        while let Some(p) = v.next_piece().await {
            got.extend_from_slice(&p.unwrap());
        }
        assert_eq!(got.len(), n);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        drop((v, slot, body));
        assert_eq!(budget.used(), 0, "every charge is released");
    }

    #[tokio::test]
    async fn the_budget_bounds_a_body() {
        let budget = Budget::new(64 * 1024);
        let (slot, w) = Slot::new(&budget);
        w.publish_head(head()).unwrap();
        w.push(big(1)).unwrap();
        w.push(big(2)).unwrap();
        assert!(w.push(Bytes::from(vec![3; 40_000])).is_err());
        assert!(budget.used() <= budget.limit());
        // A declared length is charged before the head goes out.
        let (_, w2) = Slot::new(&budget);
        let mut h = head();
        h.len = Some(1 << 20);
        assert!(w2.publish_head(h).is_err());
        drop((slot, w, w2));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn reader_slices_ranges_across_pieces() {
        let (_slot, w) = Slot::unbounded();
        w.publish_head(head()).unwrap();
        let mut all = Vec::new();
        for c in 0..4u8 {
            let p = Bytes::from(vec![c; MERGE_BELOW + 7]);
            all.extend_from_slice(&p);
            w.push(p).unwrap();
        }
        let (_, body) = w.finish().unwrap();
        let cat = |s: u64, e: u64| {
            BodyReader::new(body.clone(), s, e)
                .collect::<Vec<_>>()
                .concat()
        };
        let l = all.len() as u64;
        for (s, e) in [
            (0, l),
            (3, 9),
            (MERGE_BELOW as u64, MERGE_BELOW as u64 + 20),
            (l - 1, l),
            (5, l + 100),
        ] {
            assert_eq!(cat(s, e), &all[s as usize..e.min(l) as usize]);
        }
    }
}
