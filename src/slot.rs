//! The in-flight fan-out slot: one upstream response, any number of viewers.
//!
//! A slot is the single place a chunk's bytes live while they stream in. The
//! relay's fill task is the only writer: it publishes the response head, then
//! appends each body piece as it arrives, then marks the end (clean or
//! failed). Every downstream request for the same key holds a [`Viewer`]: a
//! `watch::Receiver` and an index into the body. A write wakes every viewer at
//! once (event-driven, no timer); each viewer then clones the `Bytes` handles
//! it has not sent yet. Chunk bytes are never copied per viewer, and a slow
//! viewer only lags its own index: the writer never waits for anyone, and the
//! body is held once however many viewers there are.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

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
    /// The fill task vanished without saying how it ended.
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

/// Everything viewers can see of a slot.
#[derive(Debug, Default)]
pub struct SlotState {
    /// The head, once the upstream sent it.
    pub head: Option<Arc<Head>>,
    /// Body pieces received so far, shared by every viewer.
    pub body: Vec<Bytes>,
    /// Sum of the lengths in `body`.
    pub len: u64,
    /// Set once: `Ok` after the last byte, `Err` when the fill failed.
    pub end: Option<Result<(), SlotError>>,
    /// When the first body byte arrived from upstream.
    pub first_byte: Option<Instant>,
    /// The upstream has answered "not yet" at least once.
    pub not_yet: bool,
}

/// A broadcast slot for one chunk.
#[derive(Debug)]
pub struct Slot {
    tx: watch::Sender<SlotState>,
    created: Instant,
}

impl Slot {
    /// An empty slot, waiting for its head.
    pub fn new() -> Arc<Slot> {
        Arc::new(Slot {
            tx: watch::Sender::new(SlotState::default()),
            created: Instant::now(),
        })
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
            next: 0,
        }
    }

    /// How many viewers are attached right now.
    pub fn viewers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Publishes the response head and wakes every viewer.
    pub fn publish_head(&self, head: Head) {
        self.tx.send_modify(|s| s.head = Some(Arc::new(head)));
    }

    /// Appends a body piece and wakes every viewer. Empty pieces are dropped.
    pub fn push(&self, data: Bytes) {
        self.push_all(std::iter::once(data));
    }

    /// Appends several pieces with a single wake-up. Every wake costs each
    /// parked viewer a task poll and a socket write, so pieces that arrived
    /// together are handed out together.
    pub fn push_all(&self, pieces: impl IntoIterator<Item = Bytes>) {
        self.tx.send_if_modified(|s| {
            let before = s.body.len();
            for data in pieces.into_iter().filter(|d| !d.is_empty()) {
                s.len += data.len() as u64;
                s.body.push(data);
            }
            let grew = s.body.len() > before;
            if grew {
                s.first_byte.get_or_insert_with(Instant::now);
            }
            grew
        });
    }

    /// When the first body byte arrived from upstream.
    pub fn first_byte(&self) -> Option<Instant> {
        self.tx.borrow().first_byte
    }

    /// Records that the upstream said "not yet". Viewers are not woken: they
    /// keep waiting for a real answer, and read the flag only if their own wait
    /// runs out.
    pub fn mark_not_yet(&self) {
        self.tx.send_if_modified(|s| {
            s.not_yet = true;
            false
        });
    }

    /// Ends the slot. Only the first call counts.
    pub fn finish(&self, result: Result<(), SlotError>) {
        self.tx.send_if_modified(|s| {
            if s.end.is_some() {
                return false;
            }
            s.end = Some(result);
            true
        });
    }

    /// The head and the shared body handles of a cleanly finished slot, for
    /// the cache.
    pub fn complete_body(&self) -> Option<(Arc<Head>, Vec<Bytes>, u64)> {
        let s = self.tx.borrow();
        match (&s.head, &s.end) {
            (Some(h), Some(Ok(()))) => Some((h.clone(), s.body.clone(), s.len)),
            _ => None,
        }
    }
}

/// One viewer's position in a slot: a receiver and an index. This is all the
/// per-viewer state the fan-out keeps.
#[derive(Debug)]
pub struct Viewer {
    rx: watch::Receiver<SlotState>,
    next: usize,
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
            {
                let s = self.rx.borrow_and_update();
                if let Some(h) = &s.head {
                    return HeadWait::Head(h.clone());
                }
                match &s.end {
                    Some(Err(e)) => return HeadWait::Failed(e.clone()),
                    Some(Ok(())) => return HeadWait::Failed(SlotError::Vanished),
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                let s = self.rx.borrow();
                if s.head.is_none() {
                    return HeadWait::Failed(
                        s.end
                            .clone()
                            .and_then(Result::err)
                            .unwrap_or(SlotError::Vanished),
                    );
                }
            }
        }
    }

    /// Whether the upstream has said "not yet" for this slot.
    pub fn saw_not_yet(&self) -> bool {
        self.rx.borrow().not_yet
    }

    /// The next body piece: `None` at a clean end, `Some(Err)` if the body
    /// failed. Pieces already received are returned without waiting.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, SlotError>> {
        loop {
            {
                let s = self.rx.borrow_and_update();
                if let Some(b) = s.body.get(self.next) {
                    self.next += 1;
                    return Some(Ok(b.clone()));
                }
                match &s.end {
                    Some(Ok(())) => return None,
                    Some(Err(e)) => return Some(Err(e.clone())),
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                // The writer is gone: whatever it left is final.
                let s = self.rx.borrow();
                if let Some(b) = s.body.get(self.next) {
                    self.next += 1;
                    return Some(Ok(b.clone()));
                }
                return match &s.end {
                    Some(Ok(())) => None,
                    Some(Err(e)) => Some(Err(e.clone())),
                    None => Some(Err(SlotError::Vanished)),
                };
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

    #[tokio::test]
    async fn late_joiner_gets_everything_and_live_tail() {
        let slot = Slot::new();
        let mut early = slot.subscribe();
        slot.publish_head(head());
        slot.push(Bytes::from_static(b"ab"));
        let mut late = slot.subscribe();
        assert!(matches!(late.head().await, HeadWait::Head(_)));
        assert_eq!(late.next_piece().await.unwrap().unwrap(), "ab");
        let waiter = tokio::spawn(async move { late.next_piece().await });
        slot.push(Bytes::from_static(b"cd"));
        assert_eq!(waiter.await.unwrap().unwrap().unwrap(), "cd");
        slot.finish(Ok(()));
        assert!(matches!(early.head().await, HeadWait::Head(_)));
        assert_eq!(early.next_piece().await.unwrap().unwrap(), "ab");
        assert_eq!(early.next_piece().await.unwrap().unwrap(), "cd");
        assert!(early.next_piece().await.is_none());
        let (_, body, len) = slot.complete_body().unwrap();
        assert_eq!((body.len(), len), (2, 4));
    }

    #[tokio::test]
    async fn failure_reaches_every_viewer_and_is_not_complete() {
        let slot = Slot::new();
        let mut v = slot.subscribe();
        slot.publish_head(head());
        slot.push(Bytes::from_static(b"partial"));
        slot.finish(Err(SlotError::Truncated("reset".into())));
        slot.finish(Ok(())); // ignored: the first end wins
        assert!(slot.complete_body().is_none());
        v.head().await;
        assert!(v.next_piece().await.unwrap().is_ok());
        assert!(matches!(
            v.next_piece().await,
            Some(Err(SlotError::Truncated(_)))
        ));
    }

    #[tokio::test]
    async fn failure_before_head_and_dropped_writer() {
        let slot = Slot::new();
        let mut v = slot.subscribe();
        slot.finish(Err(SlotError::Unavailable("refused".into())));
        assert!(matches!(
            v.head().await,
            HeadWait::Failed(SlotError::Unavailable(_))
        ));

        let slot = Slot::new();
        let mut v = slot.subscribe();
        drop(slot);
        assert!(matches!(
            v.head().await,
            HeadWait::Failed(SlotError::Vanished)
        ));
    }

    #[tokio::test]
    async fn viewers_are_counted() {
        let slot = Slot::new();
        let a = slot.subscribe();
        let b = slot.subscribe();
        assert_eq!(slot.viewers(), 2);
        drop(a);
        assert_eq!(slot.viewers(), 1);
        drop(b);
        assert_eq!(slot.viewers(), 0);
    }
}
