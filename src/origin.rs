//! The head-end simulator: live streams published on a clock (or on command),
//! a VOD catalog, long-poll, `/stats`, and fault knobs for tests.
//!
//! Each live chunk is a [`Slot`]: the publisher pushes its bytes into it,
//! progressively across the chunk's duration (as chunked CMAF does) or whole at
//! its end, and every request for the chunk streams from that slot. A request
//! for a chunk 1..=`max_ahead` past the live edge waits on the stream's edge
//! watch until the chunk exists (long-poll) or `hold` passes ("not yet", see
//! docs/protocol.md). In plain mode it gets a 404 at once instead, as an
//! ordinary HLS origin would give.
//!
//! Paths: `/live/{stream}/{seq}`, `/live/{stream}` (edge info as JSON),
//! `/vod/{n}`, `/stats`. Chunk bodies start with the publish timestamp
//! (u64 big-endian nanoseconds since the Unix epoch), then the sequence
//! number (u64), then deterministic filler, so a viewer can both time and
//! verify what it got.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::manifest::{ChunkRef, KeyDoc, Manifest};
use crate::protocol::{self, now_ns, PUBLISH_HEADER};
use crate::server::Body;
use crate::slot::{Head, HeadWait, Slot, SlotError};

/// How a live chunk's bytes appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum Publish {
    /// Written across the chunk's duration, first bytes at its start.
    Progressive,
    /// Written all at once at the chunk's end.
    Whole,
}

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

/// Settings of the head end.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Number of live streams (`/live/0` ..).
    pub streams: usize,
    /// Chunk duration; `None` publishes only on [`OriginHandle::publish`].
    pub cadence: Option<Duration>,
    /// Bytes per chunk.
    pub chunk_size: usize,
    /// Progressive or whole.
    pub publish: Publish,
    /// Pieces a progressive chunk is written in.
    pub pieces: usize,
    /// Longest a long-poll is held before "not yet".
    pub hold: Duration,
    /// How far past the edge a request is held rather than refused.
    pub max_ahead: u64,
    /// How many past chunks stay available.
    pub window: u64,
    /// Number of VOD chunks (`/vod/0` ..).
    pub vod_chunks: u64,
    /// `max-age` of VOD chunks.
    pub vod_max_age: Duration,
    /// Answer 404 instead of holding (an ordinary, non-long-poll origin).
    pub plain: bool,
    /// Faults applied to every request.
    pub faults: Faults,
    /// RFC 8188 encryption of every chunk; `None` serves plaintext.
    pub encryption: Option<Encryption>,
    /// TLS for the manifest and key API (on the same port as the chunks).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bearer token of the manifest and key API.
    pub token: Option<String>,
    /// The authority chunk names use (default: the bound address).
    pub authority: Option<String>,
    /// When set, stream 0 publishes these bodies in order and then ends.
    pub live_files: Vec<Bytes>,
}

/// How the origin encrypts chunks.
#[derive(Debug, Clone)]
pub struct Encryption {
    /// Secret all chunk keys are derived from.
    pub master: [u8; 32],
    /// Keys change every this many chunks.
    pub key_rotation: u64,
    /// RFC 8188 record size.
    pub record_size: u32,
}

impl Encryption {
    /// Fresh random master secret. The record size is clamped to what a
    /// viewer accepts (`ece::MIN_RS..=ece::MAX_RS`).
    pub fn random(key_rotation: u64, record_size: u32) -> Encryption {
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master).expect("the OS has a random source");
        Encryption {
            master,
            key_rotation: key_rotation.max(1),
            record_size: record_size.clamp(crate::ece::MIN_RS, crate::ece::MAX_RS),
        }
    }

    /// Encrypts one chunk under `keyid`, bound to its binding name `name`
    /// (`manifest::binding_name`): the RFC 8188 IKM is
    /// `ece::name_key(key, name)`, so the body decrypts only as this chunk.
    fn seal(&self, name: &str, keyid: &str, plaintext: &[u8]) -> Bytes {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).expect("the OS has a random source");
        let key = crate::manifest::derive_key(&self.master, keyid);
        Bytes::from(crate::ece::encrypt(
            &crate::ece::name_key(&key, name),
            salt,
            // Fields are public: never encrypt with a size viewers refuse.
            self.record_size
                .clamp(crate::ece::MIN_RS, crate::ece::MAX_RS),
            keyid.as_bytes(),
            plaintext,
        ))
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: "127.0.0.1:9100".parse().expect("static address"),
            streams: 1,
            cadence: Some(Duration::from_millis(500)),
            chunk_size: 64 * 1024,
            publish: Publish::Progressive,
            pieces: 8,
            hold: Duration::from_secs(5),
            max_ahead: 3,
            window: 60,
            vod_chunks: 100,
            vod_max_age: Duration::from_secs(3600),
            plain: false,
            faults: Faults::default(),
            encryption: None,
            tls: None,
            token: None,
            authority: None,
            live_files: Vec::new(),
        }
    }
}

struct Stream {
    edge: watch::Sender<i64>,
    next: AtomicU64,
    chunks: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

struct State {
    cfg: OriginConfig,
    authority: String,
    streams: Vec<Stream>,
    requests: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    refuse: AtomicBool,
    faults: Mutex<Faults>,
    /// Canonical `host:port` of `authority`, for chunks' binding names.
    bind_authority: String,
}

impl State {
    /// The binding name of chunk `path` of this origin (see
    /// `manifest::binding_name`; `path` has no query).
    fn binding(&self, path: &str) -> String {
        format!("mlcache://{}{path}", self.bind_authority)
    }
}

/// A running head end.
pub struct OriginHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to stop it.
    pub shutdown: CancellationToken,
    state: Arc<State>,
}

#[derive(Serialize)]
struct Stats<'a> {
    requests_total: u64,
    requests: &'a HashMap<String, u64>,
    edges: Vec<i64>,
}

#[derive(Serialize)]
struct EdgeInfo {
    stream: usize,
    edge: i64,
    cadence_ms: u64,
    chunk_size: usize,
    next: String,
}

impl OriginHandle {
    /// The URL of the origin, e.g. `http://127.0.0.1:9100`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publishes the next chunk of `stream` now (needed when `cadence` is
    /// `None`; with a cadence it adds an extra chunk).
    pub fn publish(&self, stream: usize) {
        publish_next(&self.state, stream);
    }

    /// The live edge of `stream` (-1 before the first chunk).
    pub fn edge(&self, stream: usize) -> i64 {
        *self.state.streams[stream].edge.borrow()
    }

    /// Requests received for `path` (path and query).
    pub fn requests(&self, path: &str) -> u64 {
        self.state.requests.lock().get(path).copied().unwrap_or(0)
    }

    /// All requests received.
    pub fn requests_total(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// Makes the origin close every new connection at once (or stop doing so).
    pub fn set_refuse(&self, refuse: bool) {
        self.state.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Replaces the faults applied to every request.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock() = faults;
    }
}

/// Starts the head end.
pub async fn start(cfg: OriginConfig) -> std::io::Result<OriginHandle> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let authority = cfg.authority.clone().unwrap_or_else(|| addr.to_string());
    let bind_authority = crate::manifest::canonical_authority(&authority)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let state = Arc::new(State {
        bind_authority,
        authority,
        streams: (0..cfg.streams)
            .map(|_| Stream {
                edge: watch::Sender::new(-1),
                next: AtomicU64::new(0),
                chunks: Mutex::new(BTreeMap::new()),
            })
            .collect(),
        requests: Mutex::new(HashMap::new()),
        total: AtomicU64::new(0),
        refuse: AtomicBool::new(cfg.faults.refuse),
        faults: Mutex::new(cfg.faults.clone()),
        cfg,
    });
    let shutdown = CancellationToken::new();
    if let Some(cadence) = state.cfg.cadence {
        let (st, stop) = (state.clone(), shutdown.clone());
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
    let (st, stop) = (state.clone(), shutdown.clone());
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut backoff = crate::listener::AcceptBackoff::new("origin");
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((t, _)) => t,
                    Err(e) => { backoff.failed(&e).await; continue }
                },
            };
            if st.refuse.load(Ordering::Relaxed) {
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let (s, stop) = (st.clone(), stop.clone());
            let builder = builder.clone();
            tokio::spawn(async move {
                // One port serves chunks in the clear and the API over TLS:
                // a TLS connection starts with a handshake record (0x16).
                let mut first = [0u8; 1];
                let is_tls = matches!(
                    tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut first)).await,
                    Ok(Ok(1))
                ) && first[0] == 0x16;
                let svc = |tls: bool| {
                    let s = s.clone();
                    service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, req, tls).await) }
                    })
                };
                match (is_tls, s.cfg.tls.clone()) {
                    (true, Some(tls)) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await
                        else {
                            return;
                        };
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc(true));
                        tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                    }
                    (true, None) => {}
                    (false, _) => {
                        let conn = builder.serve_connection(TokioIo::new(tcp), svc(false));
                        tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                    }
                }
            });
        }
    });
    Ok(OriginHandle {
        addr,
        shutdown,
        state,
    })
}

/// Deterministic chunk bytes: timestamp, sequence, then xorshift filler seeded
/// by (stream, seq), so every viewer can check it got the same bytes.
pub fn chunk_bytes(stream: u64, seq: u64, size: usize, publish_ns: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64(publish_ns);
    b.put_u64(seq);
    let mut x = (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        | 1;
    while b.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.put_u64(x);
    }
    b.truncate(size.max(16));
    b.freeze()
}

fn publish_next(state: &Arc<State>, stream: usize) {
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
        let keyid = format!(
            "live{stream}.{}",
            seq / cfg.encryption.as_ref().map_or(1, |e| e.key_rotation)
        );
        let name = st.binding(&format!("/live/{stream}/{seq}"));
        let (body, headers) = chunk_response(cfg, &name, &keyid, plain, ns);
        let mut headers = headers;
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

/// The body and headers of a chunk: encrypted under `keyid` and bound to its
/// binding name `name` when the origin encrypts, with its publish time.
fn chunk_response(
    cfg: &OriginConfig,
    name: &str,
    keyid: &str,
    plain: Bytes,
    publish_ns: u64,
) -> (Bytes, http::HeaderMap) {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("video/mp2t"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    h.insert(PUBLISH_HEADER, HeaderValue::from(publish_ns));
    let body = match &cfg.encryption {
        Some(enc) => {
            h.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static(crate::ece::CODING),
            );
            enc.seal(name, keyid, &plain)
        }
        None => plain,
    };
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    (body, h)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        http_body_util::Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=1"),
    );
    r
}

fn json<T: Serialize>(v: &T) -> Response<Body> {
    let mut r = text(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

fn vod_keyid(cfg: &OriginConfig, n: u64) -> String {
    format!(
        "vod.{}",
        n / cfg.encryption.as_ref().map_or(1, |e| e.key_rotation)
    )
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The manifest and key API (HTTPS only, bearer token).
fn api<B>(state: &State, req: &Request<B>) -> Response<Body> {
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
    let rotation = cfg.encryption.as_ref().map_or(1, |e| e.key_rotation);
    let auth = &state.authority;
    let parts: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let unknown_key = || text(StatusCode::NOT_FOUND, "unknown key id\n");
    match parts.as_slice() {
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

fn not_yet() -> Response<Body> {
    let mut r = text(StatusCode::NOT_FOUND, "not yet\n");
    r.headers_mut().extend(protocol::not_yet_headers());
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>, tls: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/manifest/") || path.starts_with("/keys/") {
        if !tls {
            return text(
                StatusCode::FORBIDDEN,
                "manifests and keys are served over HTTPS only\n",
            );
        }
        return api(&state, &req);
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    if path == "/stats" {
        let requests = state.requests.lock().clone();
        return json(&Stats {
            requests_total: state.total.load(Ordering::Relaxed),
            requests: &requests,
            edges: state.streams.iter().map(|s| *s.edge.borrow()).collect(),
        });
    }
    state.total.fetch_add(1, Ordering::Relaxed);
    *state.requests.lock().entry(pq).or_default() += 1;
    let faults = Faults::from_query(req.uri().query(), &state.faults.lock().clone());
    if let Some(d) = faults.delay_head {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = faults.status.and_then(|c| StatusCode::from_u16(c).ok()) {
        return text(code, format!("fault: status {code}\n"));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["live", s] => match s.parse::<usize>().ok().filter(|s| *s < state.streams.len()) {
            Some(s) => {
                let edge = *state.streams[s].edge.borrow();
                json(&EdgeInfo {
                    stream: s,
                    edge,
                    cadence_ms: state.cfg.cadence.map(|c| c.as_millis() as u64).unwrap_or(0),
                    chunk_size: state.cfg.chunk_size,
                    next: format!("/live/{s}/{}", edge + 1),
                })
            }
            None => text(StatusCode::NOT_FOUND, "no such stream\n"),
        },
        ["live", s, n] => match (s.parse::<usize>(), n.parse::<u64>()) {
            (Ok(s), Ok(n)) if s < state.streams.len() => live(&state, s, n, &faults).await,
            _ => text(StatusCode::BAD_REQUEST, "expected /live/STREAM/SEQ\n"),
        },
        ["vod", n] => match n.parse::<u64>() {
            Ok(n) if n < state.cfg.vod_chunks => {
                let plain = chunk_bytes(u64::MAX, n, state.cfg.chunk_size, 0);
                let name = state.binding(&format!("/vod/{n}"));
                let (body, mut headers) =
                    chunk_response(&state.cfg, &name, &vod_keyid(&state.cfg, n), plain, 0);
                headers.remove(PUBLISH_HEADER);
                let cc = format!("public, max-age={}", state.cfg.vod_max_age.as_secs());
                headers.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_str(&cc).expect("ASCII"),
                );
                let (slot, writer) = Slot::unbounded();
                let _ = writer.publish_head(Head {
                    status: StatusCode::OK,
                    headers,
                    len: Some(body.len() as u64),
                });
                let _ = writer.push(body);
                writer.finish();
                from_slot(&slot, &faults).await
            }
            _ => text(StatusCode::NOT_FOUND, "no such VOD chunk\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn live(state: &Arc<State>, stream: usize, seq: u64, faults: &Faults) -> Response<Body> {
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

async fn from_slot(slot: &Arc<Slot>, faults: &Faults) -> Response<Body> {
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

/// Live head end (long-poll) and VOD origin for mlcache tests and demos.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "mlcache-origin", version)]
pub struct OriginArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Number of live streams (/live/0, /live/1, ...).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Chunk duration.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub cadence: Duration,
    /// Chunk size.
    #[arg(long = "chunk-size", default_value = "64KiB", value_parser = parse_size)]
    pub chunk_size: usize,
    /// Progressive (bytes across the chunk's duration) or whole (at its end).
    #[arg(long, value_enum, default_value = "progressive")]
    pub publish: Publish,
    /// Pieces a progressive chunk is written in.
    #[arg(long, default_value_t = 8)]
    pub pieces: usize,
    /// Longest a long-poll is held before "not yet".
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
    /// How many chunks past the live edge are held rather than refused.
    #[arg(long = "max-ahead", default_value_t = 3)]
    pub max_ahead: u64,
    /// How many past chunks stay available.
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Number of VOD chunks (/vod/0 ...).
    #[arg(long = "vod-chunks", default_value_t = 100)]
    pub vod_chunks: u64,
    /// max-age of VOD chunks.
    #[arg(long = "vod-max-age", default_value = "1h", value_parser = parse_duration)]
    pub vod_max_age: Duration,
    /// Answer 404 at once for chunks that do not exist yet (no long-poll).
    #[arg(long)]
    pub plain: bool,
    /// Fault: delay every response head.
    #[arg(long = "delay-head", value_parser = parse_duration)]
    pub delay_head: Option<Duration>,
    /// Fault: cut every body after N bytes.
    #[arg(long = "abort-after")]
    pub abort_after: Option<u64>,
    /// Fault: stall every body after N bytes.
    #[arg(long = "stall-after")]
    pub stall_after: Option<u64>,
    /// Fault: answer every request with this status.
    #[arg(long)]
    pub status: Option<u16>,
    /// Fault: close every connection as soon as it is accepted.
    #[arg(long = "refuse-connections")]
    pub refuse_connections: bool,
    /// Serve chunks unencrypted (default: RFC 8188 aes128gcm). For relay load
    /// tests only: the `mlcache` viewer refuses unencrypted chunks.
    #[arg(long)]
    pub plaintext: bool,
    /// Rotate keys every K chunks.
    #[arg(long = "key-rotation", default_value_t = 10)]
    pub key_rotation: u64,
    /// RFC 8188 record size.
    #[arg(long = "record-size", default_value_t = crate::ece::DEFAULT_RS)]
    pub record_size: u32,
    /// Bearer token for the manifest and key API (default: random, printed).
    #[arg(long, env = "MLCACHE_TOKEN")]
    pub token: Option<String>,
    /// Write the run-time CA certificate (PEM) here, for clients' --ca.
    #[arg(long = "ca-out")]
    pub ca_out: Option<std::path::PathBuf>,
    /// Extra DNS name or IP for the TLS certificate (repeatable).
    #[arg(long = "tls-name")]
    pub tls_name: Vec<String>,
    /// Authority used in chunk names (default: the listen address).
    #[arg(long)]
    pub authority: Option<String>,
    /// Publish the files of this directory (sorted by name) as stream 0, then end it.
    #[arg(long = "live-dir")]
    pub live_dir: Option<std::path::PathBuf>,
}

impl OriginArgs {
    /// Checks the flags and turns them into a configuration.
    pub fn into_config(self) -> Result<OriginConfig, String> {
        let mut a = self;
        let live_files = match a.live_dir.take() {
            Some(d) => read_live_dir(&d).map_err(|e| format!("--live-dir {}: {e}", d.display()))?,
            None => Vec::new(),
        };
        let ca_out = a.ca_out.take();
        let mut names = std::mem::take(&mut a.tls_name);
        names.extend(["localhost".to_string(), a.listen.ip().to_string()]);
        if let Some(auth) = &a.authority {
            names.push(
                auth.rsplit_once(':')
                    .map_or(auth.as_str(), |(h, _)| h)
                    .to_string(),
            );
        }
        if a.cadence.is_zero() {
            return Err("--cadence must be more than 0".into());
        }
        if !(crate::ece::MIN_RS..=crate::ece::MAX_RS).contains(&a.record_size) {
            return Err(format!(
                "--record-size must be {} to {} (viewers refuse larger records)",
                crate::ece::MIN_RS,
                crate::ece::MAX_RS
            ));
        }
        if let Some(auth) = &a.authority {
            crate::manifest::canonical_authority(auth).map_err(|e| format!("--authority: {e}"))?;
        }
        if a.streams == 0 || a.chunk_size < 16 {
            return Err("--streams must be at least 1 and --chunk-size at least 16 bytes".into());
        }
        let pki = crate::tls::TestPki::generate(&names).map_err(|e| e.to_string())?;
        if let Some(path) = ca_out {
            std::fs::write(&path, &pki.ca_pem)
                .map_err(|e| format!("--ca-out {}: {e}", path.display()))?;
        }
        let token = a.token.take().or_else(|| {
            let mut t = [0u8; 16];
            getrandom::getrandom(&mut t).ok()?;
            let t: String = t.iter().map(|b| format!("{b:02x}")).collect();
            println!("token {t}");
            Some(t)
        });
        let mut cfg = OriginConfig {
            listen: a.listen,
            streams: a.streams,
            cadence: Some(a.cadence),
            chunk_size: a.chunk_size,
            publish: a.publish,
            pieces: a.pieces.max(1),
            hold: a.hold,
            max_ahead: a.max_ahead,
            window: a.window.max(1),
            vod_chunks: a.vod_chunks,
            vod_max_age: a.vod_max_age,
            plain: a.plain,
            faults: Faults {
                delay_head: a.delay_head,
                abort_after: a.abort_after,
                stall_after: a.stall_after,
                status: a.status,
                cache_control: None,
                refuse: a.refuse_connections,
            },
            encryption: (!a.plaintext).then(|| Encryption::random(a.key_rotation, a.record_size)),
            tls: Some(pki.server),
            token,
            authority: a.authority,
            live_files: Vec::new(),
        };
        cfg.live_files = live_files;
        Ok(cfg)
    }
}

/// Reads the files of `dir`, sorted by name, as live chunk bodies.
pub fn read_live_dir(dir: &std::path::Path) -> std::io::Result<Vec<Bytes>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no files in {}", dir.display()),
        ));
    }
    paths
        .into_iter()
        .map(|p| std::fs::read(p).map(Bytes::from))
        .collect()
}

fn parse_size(s: &str) -> Result<usize, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64() as usize)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs a head end until SIGTERM or Ctrl-C, printing `listening ADDR` first.
pub async fn run(cfg: OriginConfig) -> std::io::Result<()> {
    let origin = start(cfg).await?;
    println!("listening {}", origin.addr);
    crate::until_signal().await?;
    origin.shutdown.cancel();
    Ok(())
}
