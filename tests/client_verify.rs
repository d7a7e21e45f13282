//! The viewer client against a hostile relay (issue 7, item 12): a relay that
//! strips `Content-Encoding`, forges a plaintext body, serves another chunk
//! (substitution), replays an older one, sends an absurd record size, or
//! changes the key id. In every case the client must notice, fetch the chunk
//! again from the next source (here the origin itself), and write exactly the
//! origin's plaintext: no byte of the relay's body may reach the output
//! unverified.
//!
//! The hostile relay is a real HTTP/1.1 server on 127.0.0.1:0 written here.
//! For each request it fetches real responses from the real origin and then
//! does its one attack, so it holds valid ciphertext to abuse.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mlcache::client::{Client, Fetched, Name, Source};
use mlcache::origin::{chunk_bytes, OriginHandle};

const CHUNK: usize = 64 * 1024;

fn vod(n: u64) -> Vec<u8> {
    chunk_bytes(u64::MAX, n, CHUNK, 0).to_vec()
}

/// What the hostile relay does with a chunk request.
#[derive(Clone, Debug)]
enum Attack {
    /// The origin's answer without its `Content-Encoding`.
    StripCoding,
    /// `200` with body `FORGED` and these `Content-Encoding` fields.
    Forged(Vec<&'static str>),
    /// The origin's answer for this other path, headers and all.
    Serve(&'static str),
    /// The origin's header with `rs` replaced, then nothing more (the body is
    /// declared at its real length and never finishes).
    RecordSize(u32),
    /// The origin's answer with the header's key id replaced in place.
    KeyId(&'static str),
    /// The first this many bytes of one encryption of the chunk, then the
    /// rest of another (the origin salts each VOD response afresh).
    Splice(usize),
}

type RelayBody = BoxBody<Bytes, Infallible>;

/// A hostile relay in front of `origin`; counts the requests it answered.
async fn hostile(origin: SocketAddr, attack: Attack) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (attack, count) = (attack.clone(), count.clone());
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let attack = attack.clone();
                count.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, Infallible>(answer(origin, &attack, req).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    (addr, hits)
}

/// The real origin's answer for `path`.
async fn from_origin(origin: SocketAddr, path: &str) -> Got {
    let req = Request::get(path)
        .header("host", origin.to_string())
        .body(Empty::new())
        .unwrap();
    let got = h1(origin, req).await.expect("origin answers");
    assert_eq!(got.status, StatusCode::OK, "origin {path}");
    got
}

fn full(b: impl Into<Bytes>) -> RelayBody {
    Full::new(b.into()).boxed()
}

/// A response with `got`'s status and headers (framing left to hyper).
fn like(got: &Got, body: RelayBody) -> Response<RelayBody> {
    let mut r = Response::new(body);
    *r.status_mut() = got.status;
    *r.headers_mut() = got.headers.clone();
    r.headers_mut().remove(http::header::CONTENT_LENGTH);
    r.headers_mut().remove(http::header::TRANSFER_ENCODING);
    r
}

async fn answer(
    origin: SocketAddr,
    attack: &Attack,
    req: Request<hyper::body::Incoming>,
) -> Response<RelayBody> {
    let path = req.uri().path().to_string();
    match attack {
        Attack::StripCoding => {
            let got = from_origin(origin, &path).await;
            let mut r = like(&got, full(got.bytes().clone()));
            r.headers_mut().remove(http::header::CONTENT_ENCODING);
            r
        }
        Attack::Forged(codings) => {
            let mut r = Response::new(full("FORGED"));
            for c in codings {
                r.headers_mut()
                    .append(http::header::CONTENT_ENCODING, HeaderValue::from_static(c));
            }
            r
        }
        Attack::Serve(other) => {
            let got = from_origin(origin, other).await;
            like(&got, full(got.bytes().clone()))
        }
        Attack::RecordSize(rs) => {
            let got = from_origin(origin, &path).await;
            let body = got.bytes();
            let idlen = body[20] as usize;
            let mut head = body[..21 + idlen].to_vec();
            head[16..20].copy_from_slice(&rs.to_be_bytes());
            let stream = futures_util::stream::iter([Ok(Frame::data(Bytes::from(head)))])
                .chain(futures_util::stream::pending());
            let mut r = like(&got, BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            r
        }
        Attack::KeyId(id) => {
            let got = from_origin(origin, &path).await;
            let mut body = got.bytes().to_vec();
            let idlen = body[20] as usize;
            assert_eq!(idlen, id.len(), "in-place key id of the same length");
            body[21..21 + idlen].copy_from_slice(id.as_bytes());
            like(&got, full(body))
        }
        Attack::Splice(at) => {
            let a = from_origin(origin, &path).await;
            let b = from_origin(origin, &path).await;
            assert_ne!(a.bytes()[..16], b.bytes()[..16], "two encryptions");
            let mut body = a.bytes()[..*at].to_vec();
            body.extend_from_slice(&b.bytes()[*at..]);
            like(&a, full(body))
        }
    }
}

/// A client whose only relay is the hostile one `attack` makes; the origin
/// is its next source.
async fn client_behind(origin: &OriginHandle, ca: &str, attack: Attack) -> (Client, SocketAddr) {
    let (evil, _) = hostile(origin.addr, attack).await;
    let mut cfg = client_config(origin, ca);
    cfg.relays = vec![evil];
    (Client::new(cfg).await.unwrap(), evil)
}

/// The relay was tried once and failed for `reason`; the origin delivered.
fn failed_over(c: &Client, evil: SocketAddr, origin: &OriginHandle, f: &Fetched, reason: &str) {
    let events = c.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].source, format!("relay {evil}"));
    assert!(
        events[0].error.contains(reason),
        "failure is {:?}, expected it to mention {reason:?}",
        events[0].error
    );
    assert_eq!(f.source, Source::Origin(origin.addr.to_string()));
}

fn vod_name(origin: &OriginHandle, n: u64) -> Name {
    Name::parse(&format!("mlcache://{}/vod/{n}", origin.addr)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_content_encoding_is_not_output() {
    let (origin, ca) = secure_origin(|_| {}).await;
    let (c, evil) = client_behind(&origin, &ca, Attack::StripCoding).await;
    let mut out = Vec::new();
    let f = c.fetch(&vod_name(&origin, 2), &mut out).await.unwrap();
    assert!(
        out == vod(2),
        "output is the origin's plaintext, not ciphertext"
    );
    failed_over(&c, evil, &origin, &f, "Content-Encoding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_plaintext_body_is_not_output() {
    let (origin, ca) = secure_origin(|_| {}).await;
    for codings in [
        vec![],
        vec!["identity"],
        vec!["gzip"],
        vec!["aes128gcm, identity"],
        vec!["aes128gcm", "identity"],
    ] {
        let (c, evil) = client_behind(&origin, &ca, Attack::Forged(codings.clone())).await;
        let mut out = Vec::new();
        let f = c.fetch(&vod_name(&origin, 3), &mut out).await.unwrap();
        assert!(
            out == vod(3),
            "{codings:?}: output is exact (FORGED came out: {})",
            out.starts_with(b"FORGED")
        );
        failed_over(&c, evil, &origin, &f, "Content-Encoding");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_chunk_under_the_same_key_is_detected() {
    // Key rotation 4: VOD chunks 0..=3 share key id vod.0, so only the
    // binding of ciphertext to name tells chunk 1 or 3 from chunk 2.
    let (origin, ca) = secure_origin(|_| {}).await;
    for other in ["/vod/1", "/vod/3"] {
        let (c, evil) = client_behind(&origin, &ca, Attack::Serve(other)).await;
        let mut out = Vec::new();
        let f = c.fetch(&vod_name(&origin, 2), &mut out).await.unwrap();
        assert!(out == vod(2), "{other} served for /vod/2 was not output");
        failed_over(&c, evil, &origin, &f, "record 0 failed authentication");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_live_chunk_replayed_is_detected() {
    let (origin, ca) = secure_origin(|_| {}).await;
    for _ in 0..8 {
        origin.publish(0);
    }
    until(Duration::from_secs(10), "chunks 0..=7 published", || {
        origin.edge(0) == 7
    })
    .await;
    let name = Name::parse(&format!("mlcache://{}/live/0/7", origin.addr)).unwrap();
    // 6 is under the same key as 7 (live0.1); 2 under the older live0.0.
    for (old, reason) in [
        ("/live/0/6", "record 0 failed authentication"),
        ("/live/0/2", "key id \"live0.0\" is not this chunk's"),
    ] {
        let (c, evil) = client_behind(&origin, &ca, Attack::Serve(old)).await;
        let mut out = Vec::new();
        let f = c.fetch(&name, &mut out).await.unwrap();
        assert_eq!(out.len(), CHUNK);
        let ns = u64::from_be_bytes(out[..8].try_into().unwrap());
        let seq = u64::from_be_bytes(out[8..16].try_into().unwrap());
        assert_eq!(seq, 7, "{old} replayed for /live/0/7 was output");
        assert!(out == chunk_bytes(0, 7, CHUNK, ns)[..], "chunk 7 exactly");
        failed_over(&c, evil, &origin, &f, reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_or_tiny_record_size_is_refused_at_the_header() {
    let (origin, ca) = secure_origin(|_| {}).await;
    // The relay sends the header and then nothing: a client that accepted
    // the size would wait for (and buffer up to) a 4 GiB record until its
    // fetch timeout; the bound refuses it at once.
    for rs in [u32::MAX, 16 << 20, mlcache::ece::MAX_RS + 1, 17] {
        let (c, evil) = client_behind(&origin, &ca, Attack::RecordSize(rs)).await;
        let mut out = Vec::new();
        let f = c.fetch(&vod_name(&origin, 4), &mut out).await.unwrap();
        assert!(out == vod(4), "rs {rs}: output is exact");
        failed_over(&c, evil, &origin, &f, "record size");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_id_is_refused_before_any_key_is_asked_for() {
    let (origin, ca) = secure_origin(|_| {}).await;
    // Every API request is a new TLS connection through this counter.
    let api = proxy(origin.addr, Tamper::None).await;
    for (attack, reason) in [
        // In place: another valid key, and one that does not exist.
        (
            Attack::KeyId("vod.1"),
            "key id \"vod.1\" is not this chunk's",
        ),
        (
            Attack::KeyId("vod.9"),
            "key id \"vod.9\" is not this chunk's",
        ),
        // A whole chunk of another epoch (key vod.1) for chunk 1 (vod.0).
        (
            Attack::Serve("/vod/5"),
            "key id \"vod.1\" is not this chunk's",
        ),
    ] {
        let (evil, _) = hostile(origin.addr, attack.clone()).await;
        let mut cfg = client_config(&origin, &ca);
        cfg.relays = vec![evil];
        cfg.api = Some(format!("https://{}", api.addr));
        let c = Client::new(cfg).await.unwrap();
        let name = vod_name(&origin, 1);
        // The manifest and the chunk's own key, fetched beforehand.
        assert_eq!(c.keyid_of(&name).await.unwrap(), "vod.0");
        c.key(&origin.addr.to_string(), "vod.0").await.unwrap();
        let api_requests = api.accepted.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let f = c.fetch(&name, &mut out).await.unwrap();
        assert!(out == vod(1), "{attack:?}: output is exact");
        failed_over(&c, evil, &origin, &f, reason);
        assert_eq!(
            api.accepted.load(Ordering::Relaxed),
            api_requests,
            "{attack:?}: the relay's key id made the client ask the API"
        );
    }
}

/// Regression guard for resuming (it passed before this change too): the
/// relay's first records are genuine and authenticate, so the client outputs
/// them; the rest belongs to another encryption and fails. The origin's
/// plaintext is then decrypted from its start and only the part not yet
/// written is output: nothing twice, nothing skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_failing_mid_chunk_resumes_at_the_right_byte() {
    let (origin, ca) = secure_origin(|_| {}).await;
    // Header (21 + 5) plus 10 whole records of 1024 and half of the 11th.
    let at = 26 + 10 * 1024 + 512;
    let (c, evil) = client_behind(&origin, &ca, Attack::Splice(at)).await;
    let mut out = Vec::new();
    for n in [5, 6] {
        let f = c.fetch(&vod_name(&origin, n), &mut out).await.unwrap();
        assert_eq!(f.source, Source::Origin(origin.addr.to_string()));
    }
    assert!(out == [vod(5), vod(6)].concat(), "output is exact");
    let events = c.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.source == format!("relay {evil}")
                && e.error == "record 10 failed authentication"),
        "{events:?}"
    );
}
