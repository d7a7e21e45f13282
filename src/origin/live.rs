//! Live requests: the long-poll for a chunk past the edge, and the stream's
//! edge info.
//!
//! A chunk at or behind the edge (and inside the window) streams from its
//! slot at once. One 1..=`max_ahead` past the edge waits on the stream's edge
//! watch until the publisher reaches it or `hold` passes, then answers "not
//! yet"; in plain mode, or further ahead, it is a 404 at once.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde::Serialize;

use super::faults::{from_slot, Faults};
use super::router::{json, not_yet, text};
use super::State;
use crate::server::Body;

/// `/live/{stream}`: where the stream is and how it is published.
#[derive(Serialize)]
struct EdgeInfo {
    stream: usize,
    edge: i64,
    cadence_ms: u64,
    chunk_size: usize,
    next: String,
}

/// Answers `/live/{stream}` with its `EdgeInfo` (`stream` is checked).
pub(super) fn edge_info(state: &State, stream: usize) -> Response<Body> {
    let edge = *state.streams[stream].edge.borrow();
    json(&EdgeInfo {
        stream,
        edge,
        cadence_ms: state.cfg.cadence.map(|c| c.as_millis() as u64).unwrap_or(0),
        chunk_size: state.cfg.chunk_size,
        next: format!("/live/{stream}/{}", edge + 1),
    })
}

/// Answers `/live/{stream}/{seq}` (`stream` is checked), holding it while the
/// chunk is near enough ahead of the edge.
pub(super) async fn live(
    state: &Arc<State>,
    stream: usize,
    seq: u64,
    faults: &Faults,
) -> Response<Body> {
    let s = &state.streams[stream];
    let edge = *s.edge.borrow();
    let seq_i = seq as i64;
    let too_old = seq_i <= edge - state.cfg.window as i64;
    let too_far = seq_i > edge + state.cfg.max_ahead as i64;
    if too_old {
        return text(StatusCode::NOT_FOUND, "chunk is gone (too old)\n");
    }
    if seq_i > edge {
        if too_far || state.cfg.plain {
            return text(StatusCode::NOT_FOUND, "chunk does not exist\n");
        }
        let mut rx = s.edge.subscribe();
        if tokio::time::timeout(state.cfg.hold, rx.wait_for(|e| *e >= seq_i))
            .await
            .is_err()
        {
            return not_yet();
        }
    }
    let slot = s.chunks.lock().get(&seq).cloned();
    match slot {
        Some(slot) => from_slot(&slot, faults).await,
        None => text(StatusCode::NOT_FOUND, "chunk is gone\n"),
    }
}
