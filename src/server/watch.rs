//! The per-connection watchdog: which requests of a connection are
//! unfinished, and whether its response bodies make progress.
//!
//! Each request holds an [`OpenRequest`] from its complete head until its
//! response body ends; the body goes out through [`Tracked`], which cuts it
//! into frames of about [`PROGRESS_FRAME`] bytes and stamps a
//! [`Progress`] (one `Arc`'d pair of atomics) as hyper takes them. The
//! connection task asks [`ConnWatch::check`] for a [`Verdict`]: idle for
//! `idle-timeout`, stalled for `send-timeout`, or when to look again.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;

use super::Body;
use crate::slot::SlotError;

/// Largest slice of a response body handed to hyper at once. Progress is
/// stamped per frame, so a large piece is cut (zero-copy) into frames this
/// big: a response then counts as progressing once this much has drained,
/// about one default h2 window, not once a whole multi-MiB piece has.
const PROGRESS_FRAME: usize = 64 * 1024;
/// A piece at most this much over [`PROGRESS_FRAME`] goes out whole: a
/// 64 KiB chunk with its content coding's overhead (a few dozen bytes)
/// must not become a 64 KiB DATA frame and a tiny one, each its own write.
const PROGRESS_SLACK: usize = PROGRESS_FRAME / 4;
/// A connection's list of bodies is pruned of finished ones when it
/// reaches this length (or twice what the last prune left).
const PRUNE_AT: usize = 4;
/// Lower bound of the watchdog's re-check period.
const MIN_CHECK: Duration = Duration::from_millis(10);

/// Milliseconds since a process-wide epoch: the unit of progress stamps,
/// which must fit an atomic.
pub(super) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A response body's state, as the watchdog sees it.
const OUTSTANDING: u8 = 0;
/// The consumer polled and the body is waiting for its source (upstream):
/// the connection is not at fault.
const WAITING: u8 = 1;
/// Ended or dropped.
const DONE: u8 = 2;

/// The progress of one response body: its state and when it last changed.
/// Also the waker the inner body is polled with, so that data becoming
/// ready while hyper is not polling marks the body outstanding.
struct Progress {
    stamp: AtomicU64,
    state: AtomicU8,
    /// hyper's waker, woken through ours.
    outer: AtomicWaker,
}

impl Progress {
    fn set(&self, state: u8) {
        self.stamp.store(now_ms(), Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
    }
}

impl Wake for Progress {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Data (or the end) is ready; from now on it is hyper's turn. The
        // stamp is written before the state, so a watchdog that sees
        // OUTSTANDING never pairs it with the old stamp of the wait.
        if self.state.load(Ordering::Acquire) == WAITING {
            self.stamp.store(now_ms(), Ordering::Relaxed);
            let _ = self.state.compare_exchange(
                WAITING,
                OUTSTANDING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        self.outer.wake();
    }
}

/// What one connection's watchdog knows: its unfinished requests and the
/// progress of its response bodies; and the signals the accept loop sends
/// it ([`SIGNAL_CLOSE`], [`SIGNAL_DRAIN`], [`SIGNAL_STOP`]).
pub(crate) struct ConnWatch {
    /// Requests whose head arrived and whose response has not ended.
    pub(super) open: AtomicUsize,
    /// When `open` last became 0 (or the connection opened), in [`now_ms`].
    pub(super) idle_since: AtomicU64,
    bodies: Mutex<Bodies>,
    /// Signals set so far (bits; never cleared). Here rather than in
    /// cancellation tokens: the connection task checks them on every
    /// wake-up, and this line is hot already (a token's mutex on a line of
    /// its own was 3% of a fan-out's CPU, issue 10).
    signals: AtomicU8,
    signal_waker: AtomicWaker,
}

/// Close gracefully: the connection's place is needed by a new one.
pub(super) const SIGNAL_CLOSE: u8 = 1;
/// Close gracefully: the relay is draining.
pub(super) const SIGNAL_DRAIN: u8 = 2;
/// Close now: the drain's grace is over.
pub(super) const SIGNAL_STOP: u8 = 4;

struct Bodies {
    list: Vec<Arc<Progress>>,
    /// Prune finished entries when the list reaches this length.
    prune_at: usize,
}

/// What the watchdog found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// A response made no progress for `send-timeout`.
    Stalled,
    /// No unfinished request for `idle-timeout`.
    Idle,
    /// All well: look again at this [`now_ms`] instant.
    RecheckAt(u64),
}

impl ConnWatch {
    pub(super) fn new() -> ConnWatch {
        ConnWatch {
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            bodies: Mutex::new(Bodies {
                list: Vec::new(),
                prune_at: PRUNE_AT,
            }),
            signals: AtomicU8::new(0),
            signal_waker: AtomicWaker::new(),
        }
    }

    /// Sends the connection `signal` (see [`SIGNAL_CLOSE`] and the others).
    pub(super) fn signal(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.signal_waker.wake();
    }

    /// The signals sent so far.
    pub(super) fn signals(&self) -> u8 {
        self.signals.load(Ordering::Acquire)
    }

    /// Ready with all signals sent so far once one not in `seen` is.
    pub(super) fn poll_signal(&self, seen: u8, cx: &mut Context<'_>) -> Poll<u8> {
        let s = self.signals();
        if s & !seen != 0 {
            return Poll::Ready(s);
        }
        self.signal_waker.register(cx.waker());
        let s = self.signals();
        if s & !seen != 0 {
            Poll::Ready(s)
        } else {
            Poll::Pending
        }
    }

    fn register(&self, p: Arc<Progress>) {
        let mut b = self.bodies.lock();
        if b.list.len() >= b.prune_at {
            b.list.retain(|p| p.state.load(Ordering::Acquire) != DONE);
            // Amortised: at most one prune per doubling. Small, so that the
            // watchdog's periodic check walks few finished bodies (each a
            // cold cache line: the walk was 3–5% of a 1,000-viewer
            // fan-out's CPU when 64 were let pile up).
            b.prune_at = (b.list.len() * 2).max(PRUNE_AT);
        }
        b.list.push(p);
    }

    pub(super) fn check(
        &self,
        now: u64,
        idle_timeout: Duration,
        send_timeout: Duration,
    ) -> Verdict {
        let (idle_ms, send_ms) = (
            idle_timeout.as_millis() as u64,
            send_timeout.as_millis() as u64,
        );
        // With nothing to time, look again after a quarter of the shorter
        // timeout: a close is then at most that late.
        let period = (idle_timeout.min(send_timeout) / 4).max(MIN_CHECK);
        let mut next = now + period.as_millis() as u64;
        {
            let mut b = self.bodies.lock();
            b.list.retain(|p| p.state.load(Ordering::Acquire) != DONE);
            for p in &b.list {
                if p.state.load(Ordering::Acquire) == OUTSTANDING {
                    let due = p.stamp.load(Ordering::Relaxed) + send_ms;
                    if due <= now {
                        return Verdict::Stalled;
                    }
                    next = next.min(due);
                }
            }
        }
        if self.open.load(Ordering::Acquire) == 0 {
            let due = self.idle_since.load(Ordering::Acquire) + idle_ms;
            if due <= now {
                return Verdict::Idle;
            }
            next = next.min(due);
        }
        Verdict::RecheckAt(next)
    }
}

/// One unfinished request: counted from its complete head until its
/// response body ends or is dropped (or the request is abandoned).
pub(crate) struct OpenRequest(Arc<ConnWatch>);

impl OpenRequest {
    pub(super) fn new(watch: &Arc<ConnWatch>) -> OpenRequest {
        watch.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(watch.clone())
    }

    /// Wraps the response body, registering it with the watchdog. `len` is
    /// the response's `Content-Length`, if it has one: the body then says
    /// it has ended with its last byte, so h2 flags that DATA frame
    /// END_STREAM instead of sending an empty frame (and often a `writev`)
    /// of its own after it.
    pub(super) fn track(self, inner: Body, len: Option<u64>) -> Tracked {
        let state = if inner.is_end_stream() {
            DONE
        } else {
            // Not polled yet: it is hyper's turn.
            OUTSTANDING
        };
        let progress = Arc::new(Progress {
            stamp: AtomicU64::new(now_ms()),
            state: AtomicU8::new(state),
            outer: AtomicWaker::new(),
        });
        if state != DONE {
            self.0.register(progress.clone());
        }
        Tracked {
            inner,
            left: len,
            rest: Bytes::new(),
            progress,
            waker: None,
            _open: self,
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        // Stamp before the decrement, so a watchdog that sees `open == 0`
        // never reads an older idle stamp.
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body as hyper sees it: the relay's body, cut into frames of
/// about `PROGRESS_FRAME` bytes (slices of the same `Bytes`, no copy),
/// stamping its `Progress` as it goes.
pub struct Tracked {
    inner: Body,
    /// Bytes still to come when the length is known: at 0 the body has
    /// ended, whatever `inner` knows.
    left: Option<u64>,
    /// The part of the last frame not handed out yet.
    rest: Bytes,
    progress: Arc<Progress>,
    /// `progress` as a waker, made once.
    waker: Option<Waker>,
    _open: OpenRequest,
}

impl Tracked {
    fn next_slice(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > PROGRESS_FRAME + PROGRESS_SLACK {
            self.rest = data.split_off(PROGRESS_FRAME);
        }
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(data.len() as u64);
        }
        data
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = SlotError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SlotError>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            let data = this.next_slice(rest);
            this.progress.set(OUTSTANDING);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        // Being polled is progress; until the source has data, the wait is
        // not the connection's fault. Set before polling, so a wake that
        // races with this poll still marks the body outstanding.
        this.progress.set(WAITING);
        this.progress.outer.register(cx.waker());
        let waker = this
            .waker
            .get_or_insert_with(|| Waker::from(this.progress.clone()));
        let mut inner_cx = Context::from_waker(waker);
        match Pin::new(&mut this.inner).poll_frame(&mut inner_cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => Frame::data(this.next_slice(data)),
                    Err(other) => other,
                };
                this.progress.set(OUTSTANDING);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                this.progress.set(DONE);
                Poll::Ready(end)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && (self.left == Some(0) || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            h.set_upper(upper + rest);
        }
        h
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.progress.set(DONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_only_without_unfinished_requests() {
        let w = Arc::new(ConnWatch::new());
        let t0 = w.idle_since.load(Ordering::Relaxed);
        assert_eq!(w.check(t0 + 999, S, S), Verdict::RecheckAt(t0 + 1000));
        assert_eq!(w.check(t0 + 1000, S, S), Verdict::Idle);
        let open = OpenRequest::new(&w);
        assert!(matches!(w.check(t0 + 5000, S, S), Verdict::RecheckAt(_)));
        drop(open);
        let t1 = w.idle_since.load(Ordering::Relaxed);
        assert_eq!(w.check(t1 + 1000, S, S), Verdict::Idle);
    }

    #[test]
    fn only_outstanding_bodies_can_stall() {
        let w = Arc::new(ConnWatch::new());
        let body = OpenRequest::new(&w).track(
            http_body_util::Full::new(Bytes::from_static(b"x"))
                .map_err(|never| match never {})
                .boxed_unsync(),
            None,
        );
        let p = body.progress.clone();
        let t = p.stamp.load(Ordering::Relaxed);
        assert_eq!(p.state.load(Ordering::Relaxed), OUTSTANDING);
        assert_eq!(w.check(t + 999, S, S), Verdict::RecheckAt(t + 1000));
        assert_eq!(w.check(t + 1000, S, S), Verdict::Stalled);
        // Waiting on its source is not the connection's fault.
        p.state.store(WAITING, Ordering::Relaxed);
        assert!(matches!(w.check(t + 60_000, S, S), Verdict::RecheckAt(_)));
        drop(body);
        assert_eq!(p.state.load(Ordering::Relaxed), DONE);
        assert_eq!(w.open.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn large_frames_are_cut_without_copying() {
        let w = Arc::new(ConnWatch::new());
        let data = Bytes::from(vec![7u8; 3 * PROGRESS_FRAME + 10]);
        let base = data.as_ptr() as usize;
        let mut body = OpenRequest::new(&w).track(
            http_body_util::Full::new(data)
                .map_err(|never| match never {})
                .boxed_unsync(),
            None,
        );
        assert_eq!(
            body.size_hint().exact(),
            Some(3 * PROGRESS_FRAME as u64 + 10)
        );
        let mut lens = Vec::new();
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            assert_eq!(d.as_ptr() as usize, base + lens.iter().sum::<usize>());
            lens.push(d.len());
        }
        // The last frame takes the few bytes over: no 10-byte frame.
        assert_eq!(lens, [PROGRESS_FRAME, PROGRESS_FRAME, PROGRESS_FRAME + 10]);
        assert_eq!(body.progress.state.load(Ordering::Relaxed), DONE);
    }

    /// A streamed body does not know its end until polled once more; with
    /// the response's length it says so with its last byte, so h2 ends the
    /// stream on that DATA frame rather than on an empty one after it.
    #[tokio::test]
    async fn a_body_of_known_length_ends_with_its_last_byte() {
        let w = Arc::new(ConnWatch::new());
        let pieces = [Bytes::from_static(b"abc"), Bytes::from_static(b"de")];
        let streamed = || {
            http_body_util::StreamBody::new(futures_util::stream::iter(
                pieces.clone().map(|b| Ok::<_, SlotError>(Frame::data(b))),
            ))
            .boxed_unsync()
        };
        let mut body = OpenRequest::new(&w).track(streamed(), Some(5));
        body.frame().await.unwrap().unwrap();
        assert!(!body.is_end_stream());
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream());
        let mut unknown = OpenRequest::new(&w).track(streamed(), None);
        unknown.frame().await.unwrap().unwrap();
        unknown.frame().await.unwrap().unwrap();
        assert!(!unknown.is_end_stream());
        assert!(unknown.frame().await.is_none());
    }
}
