//! The publisher: the clock that makes live chunks, and how one chunk's bytes
//! appear in its slot.
//!
//! Every `cadence` (or on [`OriginHandle::publish`](super::OriginHandle::publish))
//! each stream takes its next sequence number and opens a [`Slot`] for it. The
//! chunk's head is published and the slot entered into the stream's window,
//! then the edge watch moves, which wakes every long-poll waiting for it; the
//! body follows in `pieces` spread across the chunk's duration (progressive)
//! or all at its end (whole).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;

use super::chunk::{chunk_bytes, chunk_response, live_keyid};
use super::State;
use crate::protocol::now_ns;
use crate::slot::{Head, Slot};

/// How a live chunk's bytes appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum Publish {
    /// Written across the chunk's duration, first bytes at its start.
    Progressive,
    /// Written all at once at the chunk's end.
    Whole,
}

/// Spawns the clock that publishes the next chunk of every stream each
/// `cadence`, until `stop` is cancelled.
pub(super) fn spawn_clock(st: Arc<State>, cadence: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cadence);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => for s in 0..st.streams.len() { publish_next(&st, s) },
            }
        }
    });
}

/// Starts the next chunk of `stream`: a task publishes its head, moves the
/// edge, then writes its body into the slot.
pub(super) fn publish_next(state: &Arc<State>, stream: usize) {
    let cfg = &state.cfg;
    let s = &state.streams[stream];
    let files = stream == 0 && !cfg.live_files.is_empty();
    if files && s.next.load(Ordering::Relaxed) >= cfg.live_files.len() as u64 {
        return; // the stream has ended
    }
    // Numbers are taken when encoding starts, so a chunk still encoding in
    // whole mode never shares its number with the next one.
    let seq = s.next.fetch_add(1, Ordering::Relaxed);
    // The head end's chunks are its own: no relay budget applies.
    let (slot, writer) = Slot::unbounded();
    let pieces = match cfg.publish {
        Publish::Progressive => cfg.pieces.max(1),
        Publish::Whole => 1,
    };
    let duration = cfg.cadence.unwrap_or(Duration::ZERO);
    let st = state.clone();
    tokio::spawn(async move {
        let cfg = &st.cfg;
        let s = &st.streams[stream];
        let t0 = tokio::time::Instant::now();
        if cfg.publish == Publish::Whole {
            // The chunk "encodes" for one cadence, then appears at once.
            tokio::time::sleep(duration).await;
        }
        let ns = now_ns();
        let plain = match files {
            true => cfg.live_files[seq as usize].clone(),
            false => chunk_bytes(stream as u64, seq, cfg.chunk_size, ns),
        };
        let keyid = live_keyid(cfg, stream, seq);
        let name = st.binding(&format!("/live/{stream}/{seq}"));
        let (body, mut headers) = chunk_response(cfg, &name, &keyid, plain, ns);
        let last = files && seq + 1 == cfg.live_files.len() as u64;
        if !last {
            let next = format!("</live/{stream}/{}>; rel=\"next\"", seq + 1);
            headers.insert(
                http::header::LINK,
                HeaderValue::from_str(&next).expect("ASCII"),
            );
        }
        let _ = writer.publish_head(Head {
            status: StatusCode::OK,
            headers,
            len: Some(body.len() as u64),
        });
        {
            let mut chunks = s.chunks.lock();
            chunks.insert(seq, slot.clone());
            while chunks.len() as u64 > cfg.window {
                chunks.pop_first();
            }
        }
        s.edge.send_if_modified(|e| {
            let newer = *e < seq as i64;
            if newer {
                *e = seq as i64;
            }
            newer
        });
        let step = body.len().div_ceil(pieces).max(1);
        for i in 0..pieces {
            if i > 0 {
                tokio::time::sleep_until(t0 + duration.mul_f64(i as f64 / pieces as f64)).await;
            }
            let from = (i * step).min(body.len());
            let to = ((i + 1) * step).min(body.len());
            let _ = writer.push(body.slice(from..to));
        }
        writer.finish();
    });
}
