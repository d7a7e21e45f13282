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
//!
//! This file holds the slot, its [`Phase`]s and its [`Writer`]; `body.rs`
//! the piece list ([`Body`], [`BodyReader`]); `viewer.rs` a reader's
//! position ([`Viewer`]).

mod body;
#[cfg(test)]
mod tests;
mod viewer;

pub use body::{Body, BodyReader, MERGE_BELOW};
pub use viewer::{HeadWait, Viewer};

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use crate::budget::{Budget, Exhausted, PIECE_OVERHEAD};

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
    /// When the head was published (arrived from upstream).
    head_at: Option<Instant>,
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
                head_at: None,
            }),
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

    /// Joins the slot. The viewer will see the head, every byte already
    /// received, and the rest as it arrives.
    pub fn subscribe(&self) -> Viewer {
        Viewer::new(self.tx.subscribe())
    }

    /// How many viewers are attached right now.
    pub fn viewers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// When the first body byte arrived from upstream.
    pub fn first_byte(&self) -> Option<Instant> {
        self.tx.borrow().first_byte
    }

    /// When the head was published: the relay's `Age` for a response
    /// served from this slot counts from here.
    pub fn head_at(&self) -> Option<Instant> {
        self.tx.borrow().head_at
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.tx.borrow().body().len()
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
                s.head_at = Some(Instant::now());
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
