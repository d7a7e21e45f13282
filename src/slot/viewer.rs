//! A viewer: one downstream reader of a slot, as a `watch::Receiver` and a
//! byte offset. It waits for the head, then takes every piece it has not
//! sent yet, woken by the writer's single broadcast per batch.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::{Head, Phase, SlotError, SlotState};

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
    pub(super) fn new(rx: watch::Receiver<SlotState>) -> Viewer {
        Viewer {
            rx,
            pos: 0,
            hint: 0,
        }
    }

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
