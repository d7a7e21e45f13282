//! Injected faults: what they are, how a request chooses them, and how they
//! bend a response streamed from a slot.
//!
//! The configured [`Faults`] apply to every request; a request's query string
//! can override them for itself ([`Faults::from_query`]). The router applies
//! `delay_head` and `status` before answering; [`from_slot`] applies the
//! rest while it streams a chunk's slot to the connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::router::text;
use crate::server::Body;
use crate::slot::{HeadWait, Slot, SlotError};

/// Faults applied to requests (by flag for all, or by query for one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Wait this long before the response head.
    pub delay_head: Option<Duration>,
    /// Cut the connection after this many body bytes.
    pub abort_after: Option<u64>,
    /// Stop sending (but keep the connection) after this many body bytes.
    pub stall_after: Option<u64>,
    /// Answer with this status instead.
    pub status: Option<u16>,
    /// Replace the response's Cache-Control.
    pub cache_control: Option<String>,
    /// Close every new connection at once (by flag or `OriginHandle::set_refuse`).
    pub refuse: bool,
}

impl Faults {
    /// Per-request faults from the query string (`delay_head_ms`,
    /// `abort_after`, `stall_after`, `status`, `cc` for Cache-Control), over
    /// `base`.
    pub fn from_query(query: Option<&str>, base: &Faults) -> Faults {
        let mut f = base.clone();
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let n = v.parse::<u64>().ok();
            match k {
                "delay_head_ms" => f.delay_head = n.map(Duration::from_millis),
                "abort_after" => f.abort_after = n,
                "stall_after" => f.stall_after = n,
                "status" => f.status = n.and_then(|s| u16::try_from(s).ok()),
                "cc" => f.cache_control = Some(v.replace("%20", " ")),
                _ => {}
            }
        }
        f
    }
}

/// A response streaming `slot` from its start, with `faults`' body cut or
/// stall and Cache-Control replacement applied.
pub(super) async fn from_slot(slot: &Arc<Slot>, faults: &Faults) -> Response<Body> {
    let mut viewer = slot.subscribe();
    let head = match viewer.head().await {
        HeadWait::Head(h) => h,
        HeadWait::Failed(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (abort, stall) = (faults.abort_after, faults.stall_after);
    let mut sent = 0u64;
    let body = viewer.into_stream().flat_map(move |piece| {
        let out: Vec<Result<Frame<Bytes>, SlotError>> = match piece {
            Err(e) => vec![Err(e)],
            Ok(b) => {
                let limit = abort.or(stall).map(|l| l.saturating_sub(sent) as usize);
                match limit {
                    Some(l) if l < b.len() => {
                        sent += l as u64;
                        let mut v = vec![];
                        if l > 0 {
                            v.push(Ok(Frame::data(b.slice(..l))));
                        }
                        v.push(Err(SlotError::Truncated("fault injected".into())));
                        v
                    }
                    _ => {
                        sent += b.len() as u64;
                        vec![Ok(Frame::data(b))]
                    }
                }
            }
        };
        futures_util::stream::iter(out)
    });
    let body = body.then(move |item| async move {
        // A stall holds the connection open with no more bytes.
        if item.is_err() && stall.is_some() && abort.is_none() {
            std::future::pending::<()>().await;
        }
        item
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
    *r.status_mut() = head.status;
    *r.headers_mut() = head.headers.clone();
    if let Some(cc) = faults
        .cache_control
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        r.headers_mut().insert(http::header::CACHE_CONTROL, cc);
    }
    r
}
