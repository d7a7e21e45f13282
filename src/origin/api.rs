//! The manifest and key API (HTTPS only, bearer token).
//!
//! The router hands over `/manifest/…` and `/keys/…` requests that came over
//! TLS. The bearer token is checked first, in constant time; then a manifest
//! is built from the streams' edges and windows, or a chunk key is derived
//! from the master secret, but only for key ids that exist (past epochs,
//! the current one and the next).
//!
//! `/keys/hls/{epoch}` is the LL-HLS head end's AES-128 key (`--ll-encrypt`):
//! the raw 16 bytes an `EXT-X-KEY` URI names, for epochs the head end still
//! lists or is about to. Players fetch it from another origin than the page's
//! with an `Authorization` header, so it answers the CORS preflight (without
//! the token: a preflight carries none) and allows that header.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};

use super::chunk::{rotation, vod_keyid};
use super::router::{json, text};
use super::State;
use crate::manifest::{ChunkRef, KeyDoc, Manifest};
use crate::server::Body;

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Never stored, by anyone: keys and refusals alike.
const NO_STORE: &str = "no-store, private";

/// Answers an API request: 401 without the token, else the manifest or key.
pub(super) fn answer<B>(state: &State, req: &Request<B>) -> Response<Body> {
    if !req.uri().path().starts_with("/keys/hls/") {
        return answer_token(state, req);
    }
    let mut r = if req.method() == http::Method::OPTIONS {
        let mut r = text(StatusCode::NO_CONTENT, "");
        let h = r.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        // `*` does not cover Authorization: it must be named.
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
        r
    } else {
        answer_token(state, req)
    };
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static(NO_STORE),
    );
    r
}

/// The LL-HLS key of `epoch` (16 raw bytes), if the head end has it.
fn hls_key(state: &State, epoch: &str) -> Response<Body> {
    let key = epoch
        .parse::<u64>()
        .ok()
        .and_then(|e| state.ll.as_ref()?.hls_key(e));
    let Some(key) = key else {
        tracing::info!(epoch, "HLS key asked for an unknown epoch");
        return text(StatusCode::NOT_FOUND, "unknown key\n");
    };
    let mut r = text(StatusCode::OK, Bytes::copy_from_slice(&key));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// The token check, then the manifest or key.
fn answer_token<B>(state: &State, req: &Request<B>) -> Response<Body> {
    let cfg = &state.cfg;
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match (&cfg.token, presented) {
        (Some(t), Some(p)) => same_secret(t.as_bytes(), p.trim().as_bytes()),
        _ => false,
    };
    if !authorized {
        tracing::info!(path = %req.uri().path(), "API request without a valid token");
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required\n",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mlcache\""),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        return r;
    }
    let rotation = rotation(cfg);
    let auth = &state.authority;
    let parts: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let unknown_key = || text(StatusCode::NOT_FOUND, "unknown key id\n");
    match parts.as_slice() {
        ["keys", "hls", epoch] => hls_key(state, epoch),
        ["manifest", "vod"] => json(&Manifest::Vod {
            chunks: (0..cfg.vod_chunks)
                .map(|n| ChunkRef {
                    name: format!("mlcache://{auth}/vod/{n}"),
                    keyid: vod_keyid(cfg, n),
                })
                .collect(),
        }),
        ["manifest", "live", s] => {
            match s.parse::<usize>().ok().filter(|s| *s < state.streams.len()) {
                Some(s) => {
                    let stream = &state.streams[s];
                    let edge = *stream.edge.borrow();
                    let first = stream.chunks.lock().keys().next().copied().unwrap_or(0);
                    let template = format!("mlcache://{auth}/live/{s}/{{seq}}");
                    let keyid_template = format!("live{s}.{{epoch}}");
                    let last = (s == 0 && !cfg.live_files.is_empty())
                        .then(|| cfg.live_files.len() as u64 - 1);
                    let from = edge.max(0) as u64;
                    let to = last.map_or(from + cfg.max_ahead, |l| l.min(from + cfg.max_ahead));
                    json(&Manifest::Live {
                        next: (from..=to)
                            .map(|q| Manifest::live_chunk(&template, &keyid_template, rotation, q))
                            .collect(),
                        template,
                        keyid_template,
                        key_rotation: rotation,
                        edge,
                        first,
                        last,
                        cadence_ms: cfg.cadence.map_or(0, |c| c.as_millis() as u64),
                    })
                }
                None => text(StatusCode::NOT_FOUND, "no such stream\n"),
            }
        }
        ["keys", keyid] => {
            let Some(enc) = &cfg.encryption else {
                return unknown_key();
            };
            // Only keys that exist: past epochs, the current one, and the next
            // (so a player at the edge can prepare). Anything else is unknown.
            let known = if let Some(rest) = keyid.strip_prefix("vod.") {
                rest.parse::<u64>()
                    .is_ok_and(|e| cfg.vod_chunks > 0 && e <= (cfg.vod_chunks - 1) / rotation)
            } else if let Some(rest) = keyid.strip_prefix("live") {
                match rest.split_once('.') {
                    Some((s, e)) => match (s.parse::<usize>(), e.parse::<u64>()) {
                        (Ok(s), Ok(e)) if s < state.streams.len() => {
                            let edge = *state.streams[s].edge.borrow();
                            e <= (edge.max(0) as u64 + cfg.max_ahead) / rotation + 1
                        }
                        _ => false,
                    },
                    None => false,
                }
            } else {
                false
            };
            if !known {
                return unknown_key();
            }
            use base64::Engine;
            let key = crate::manifest::derive_key(&enc.master, keyid);
            let mut r = json(&KeyDoc {
                keyid: keyid.to_string(),
                key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
            });
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
