//! Requests under `/ll/` (LL-HLS) and `/dash/` (LL-DASH) → answers.
//!
//! | path | answer |
//! |---|---|
//! | `/ll/master.m3u8` | multivariant playlist |
//! | `/ll/media.m3u8[?_HLS_msn=M[&_HLS_part=P]][&_HLS_skip=YES]` | media playlist; held until segment M (part P) exists, 503 after 3 target durations, 400 if M is more than 2 past the last segment |
//! | `/ll/init.mp4`, `/dash/init.mp4` | init segment |
//! | `/ll/part{M}.{P}.mp4` | a part; the preload-hinted next part is held until written, further ahead is 404 |
//! | `/ll/seg{M}.mp4`, `/dash/seg{M}.m4s` | a segment: what exists at once, the rest streamed as it is produced; the next segment is held until it starts (`--hold`), further ahead is 404 |
//! | `/dash/manifest.mpd` | the MPD |
//! | `/dash/time` | the server's time, ISO 8601 (the MPD's UTC timing) |
//!
//! With `--ll-encrypt`, parts and segments are AES-128 ciphertext (the
//! segment still streamed while produced, in whole blocks), the playlist
//! names the key at the origin's HTTPS API (`/keys/hls/{epoch}`, answered by
//! `api`, never here), and `/dash/` answers 404: a DASH player could not
//! decrypt, and a clear copy would defeat the point.
//!
//! Every answer carries `Access-Control-Allow-Origin: *` and exposes `Age`
//! and `Date`; `OPTIONS` gets a preflight answer. Cache lifetimes follow
//! draft-pantos-hls-rfc8216bis Appendix B.1: parts and segments never change
//! (an hour), a blocking playlist response names its version in the query
//! (a minute), a plain playlist reload a second, errors a second or not at
//! all (503).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};

use super::hls::{iso, media_playlist, multivariant, target_duration};
use super::{dash, LlHead};
use crate::server::Body;
use crate::slot::SlotError;

const M3U8: &str = "application/vnd.apple.mpegurl";
const MP4: &str = "video/mp4";
const MPD: &str = "application/dash+xml";
/// Parts, segments and init never change once they exist.
const IMMUTABLE: &str = "public, max-age=3600";
/// A blocking playlist response: its query names the version it is.
const BLOCKING: &str = "public, max-age=60";
/// A plain playlist reload (and the MPD): about half a part, rounded up.
const RELOAD: &str = "public, max-age=1";
/// A 404 (not there yet or gone): short, so it is asked again soon.
const MISSING: &str = "max-age=1";

/// Answers a request for `path` (under `/ll/` or `/dash/`).
pub(in crate::origin) async fn handle(
    head: &Arc<LlHead>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    host: Option<&str>,
) -> Response<Body> {
    let mut r = if method == Method::OPTIONS {
        let mut r = reply(
            StatusCode::NO_CONTENT,
            "text/plain",
            "no-store",
            Bytes::new(),
        );
        let h = r.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("*"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("86400"));
        r
    } else if method != Method::GET && method != Method::HEAD {
        reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "no-store",
            "GET or HEAD\n",
        )
    } else {
        route(head, path, query, host).await
    };
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("Age, Date"),
    );
    r
}

async fn route(
    head: &Arc<LlHead>,
    path: &str,
    query: Option<&str>,
    host: Option<&str>,
) -> Response<Body> {
    let hold = head.cfg().hold;
    if path.starts_with("/dash/") && head.cfg().encrypt.is_some() {
        // DASH players cannot decrypt HLS AES-128: serving the same media
        // clear here would hand relays the plaintext.
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            MISSING,
            "LL-DASH is off with --ll-encrypt\n",
        );
    }
    match path {
        "/ll/master.m3u8" => match head
            .wait_for(hold, |t| t.init.is_some().then(|| multivariant(t)))
            .await
        {
            Some(p) => reply(StatusCode::OK, M3U8, RELOAD, p),
            None => unavailable("no feed yet\n"),
        },
        "/ll/media.m3u8" => playlist(head, query).await,
        "/ll/init.mp4" | "/dash/init.mp4" => {
            match head
                .wait_for(hold, |t| t.init.as_ref().map(|i| i.bytes.clone()))
                .await
            {
                Some(b) => reply(StatusCode::OK, MP4, IMMUTABLE, b),
                None => unavailable("no feed yet\n"),
            }
        }
        "/dash/manifest.mpd" => {
            let url = host.map_or("/dash/time".to_string(), |h| {
                format!("http://{h}/dash/time")
            });
            let ready = |t: &super::Timeline| dash::mpd(t, &url, SystemTime::now());
            match head.wait_for(hold, ready).await {
                Some(m) => reply(StatusCode::OK, MPD, RELOAD, m),
                None => unavailable("no feed yet\n"),
            }
        }
        "/dash/time" => reply(
            StatusCode::OK,
            "text/plain",
            "no-store",
            iso(SystemTime::now()),
        ),
        _ => {
            if let Some(m) = path
                .strip_prefix("/ll/seg")
                .and_then(|r| r.strip_suffix(".mp4"))
                .or_else(|| {
                    path.strip_prefix("/dash/seg")
                        .and_then(|r| r.strip_suffix(".m4s"))
                })
            {
                return match m.parse::<u64>() {
                    Ok(m) => segment(head, m).await,
                    Err(_) => bad("segment number expected\n"),
                };
            }
            if let Some(mp) = path
                .strip_prefix("/ll/part")
                .and_then(|r| r.strip_suffix(".mp4"))
            {
                return match mp
                    .split_once('.')
                    .and_then(|(m, p)| Some((m.parse().ok()?, p.parse().ok()?)))
                {
                    Some((m, p)) => part(head, m, p).await,
                    None => bad("expected part{MSN}.{INDEX}.mp4\n"),
                };
            }
            reply(StatusCode::NOT_FOUND, "text/plain", MISSING, "not found\n")
        }
    }
}

/// What a media playlist request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Blocking {
    msn: Option<u64>,
    part: Option<usize>,
    skip: bool,
}

/// Parses `_HLS_msn`, `_HLS_part`, `_HLS_skip` (other parameters are left to
/// the fault injector).
fn parse_query(query: Option<&str>) -> Result<Blocking, &'static str> {
    let mut b = Blocking::default();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "_HLS_msn" => b.msn = Some(v.parse().map_err(|_| "bad _HLS_msn\n")?),
            "_HLS_part" => b.part = Some(v.parse().map_err(|_| "bad _HLS_part\n")?),
            "_HLS_skip" => b.skip = v == "YES" || v == "v2",
            _ => {}
        }
    }
    if b.part.is_some() && b.msn.is_none() {
        return Err("_HLS_part without _HLS_msn\n");
    }
    Ok(b)
}

/// The media playlist, blocking when the query asks for a future version.
async fn playlist(head: &Arc<LlHead>, query: Option<&str>) -> Response<Body> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let hold = head.cfg().hold;
    let Some(msn) = q.msn else {
        return match head
            .wait_for(hold, |t| t.anchor.map(|_| media_playlist(t, q.skip)))
            .await
        {
            Some(p) => reply(StatusCode::OK, M3U8, RELOAD, p),
            None => unavailable("no feed yet\n"),
        };
    };
    let (last, target) = head.with(|t| (t.segments.back().map(|s| s.msn), target_duration(t)));
    if msn > last.map_or(2, |l| l + 2) {
        tracing::info!(msn, ?last, "blocking reload too far ahead");
        return bad("_HLS_msn is more than two segments ahead\n");
    }
    let limit = Duration::from_secs(3 * target);
    let ready = |t: &super::Timeline| {
        let last = t.segments.back()?;
        let there = last.msn > msn
            || (last.msn == msn && (last.complete || q.part.is_some_and(|p| last.parts.len() > p)));
        there.then(|| media_playlist(t, q.skip))
    };
    match head.wait_for(limit, ready).await {
        Some(p) => reply(StatusCode::OK, M3U8, BLOCKING, p),
        None => {
            unavailable("the requested playlist version did not appear in 3 target durations\n")
        }
    }
}

/// Part `p` of segment `m`; the hinted next part is held until written.
async fn part(head: &Arc<LlHead>, m: u64, p: usize) -> Response<Body> {
    let (now, hinted, target) = head.with(|t| {
        let now = t
            .segment(m)
            .and_then(|s| s.parts.get(p))
            .map(|x| x.bytes.clone());
        (now, t.next_part() == (m, p) && !t.ended, target_duration(t))
    });
    if let Some(b) = now {
        return reply(StatusCode::OK, MP4, IMMUTABLE, b);
    }
    if !hinted {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            MISSING,
            "no such part\n",
        );
    }
    let got = head
        .wait_for(Duration::from_secs(3 * target), |t| {
            match t.segment(m) {
                Some(s) if p < s.parts.len() => Some(Some(s.parts[p].bytes.clone())),
                // It closed without that part, or the feed ended.
                Some(s) if s.complete => Some(None),
                _ if t.ended => Some(None),
                _ => None,
            }
        })
        .await;
    match got {
        Some(Some(b)) => reply(StatusCode::OK, MP4, IMMUTABLE, b),
        Some(None) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            MISSING,
            "no such part\n",
        ),
        None => unavailable("the hinted part was not written in 3 target durations\n"),
    }
}

/// Segment `m`: its bytes so far, then the rest as produced; the next
/// segment is held until it starts.
async fn segment(head: &Arc<LlHead>, m: u64) -> Response<Body> {
    let (exists, next) = head.with(|t| (t.segment(m).is_some(), t.next_segment() == m && !t.ended));
    if !exists {
        if !next {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                MISSING,
                "no such segment\n",
            );
        }
        if head
            .wait_for(head.cfg().hold, |t| t.segment(m).map(|_| ()))
            .await
            .is_none()
        {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                MISSING,
                "segment not started yet\n",
            );
        }
    }
    let Some((complete, len)) = head.with(|t| t.segment(m).map(|s| (s.complete, s.body_len())))
    else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            MISSING,
            "segment left the window\n",
        );
    };
    let mut r = Response::new(stream_segment(head.clone(), m));
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(MP4));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static(IMMUTABLE),
    );
    if complete {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// The body of segment `m`: each fragment as a frame, waiting for the next
/// until the segment is complete. A feed silent for `--hold` ends it with an
/// error (the client sees a cut body, not a hang).
fn stream_segment(head: Arc<LlHead>, m: u64) -> Body {
    enum Next {
        Piece(Bytes),
        End,
        Gone,
        Wait,
    }
    let rx = head.changes();
    let s = futures_util::stream::unfold(
        (head, rx, 0usize, false),
        move |(head, mut rx, i, done)| async move {
            if done {
                return None;
            }
            let stall = head.cfg().hold;
            loop {
                rx.borrow_and_update();
                let next = head.with(|t| match t.segment(m) {
                    None => Next::Gone,
                    Some(s) if i < s.body().len() => Next::Piece(s.body()[i].clone()),
                    Some(s) if s.complete => Next::End,
                    Some(_) => Next::Wait,
                });
                let err = match next {
                    Next::Piece(b) => return Some((Ok(Frame::data(b)), (head, rx, i + 1, false))),
                    Next::End => return None,
                    Next::Gone => SlotError::Truncated("segment left the window".into()),
                    Next::Wait => match tokio::time::timeout(stall, rx.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => SlotError::Timeout("the feed stalled".into()),
                    },
                };
                return Some((Err(err), (head, rx, i, true)));
            }
        },
    );
    BodyExt::boxed_unsync(StreamBody::new(s))
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    cache_control: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    r
}

fn bad(why: &'static str) -> Response<Body> {
    tracing::info!(why = why.trim_end(), "bad LL request");
    reply(StatusCode::BAD_REQUEST, "text/plain", MISSING, why)
}

fn unavailable(why: &'static str) -> Response<Body> {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        "no-store",
        why,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_query() {
        assert_eq!(parse_query(None), Ok(Blocking::default()));
        assert_eq!(
            parse_query(Some("_HLS_msn=7&_HLS_part=2&_HLS_skip=YES&cc=x")),
            Ok(Blocking {
                msn: Some(7),
                part: Some(2),
                skip: true
            })
        );
        assert!(parse_query(Some("_HLS_part=2")).is_err());
        assert!(parse_query(Some("_HLS_msn=x")).is_err());
        assert!(parse_query(Some("_HLS_msn=1&_HLS_part=-1")).is_err());
    }
}
