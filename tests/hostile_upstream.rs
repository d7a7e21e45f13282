//! Hostile and failing upstreams, met by `mlcache::upstream::Upstream`
//! directly: parents that refuse, hold, answer 5xx, send huge heads or drop
//! a shared connection, and origins that send contradictory framing or close
//! pooled connections. Every server here is real (raw TCP for HTTP/1.1,
//! hyper's HTTP/2 server for parents) on 127.0.0.1:0.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{until, DeadPort};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mlcache::key::{ChunkKey, Origin};
use mlcache::metrics::Metrics;
use mlcache::upstream::{
    Blame, Failure, Source, Timeouts, Upstream, UpstreamError, UpstreamLimits, DEFAULT_MAX_HEAD,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// Requests one raw server saw: (connection index, path).
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// What a raw server writes for (connection, nth request on it, path).
type Script = dyn Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync;

/// A raw HTTP/1.1 server. `respond(conn, nth, path)` gives the bytes to
/// write for the `nth` request on connection `conn`, or `None` to close the
/// connection without answering.
struct RawOrigin {
    addr: SocketAddr,
    seen: Seen,
    /// Connections that were closed by the client (EOF seen).
    closed_by_peer: Arc<Mutex<Vec<usize>>>,
}

impl RawOrigin {
    async fn start(
        respond: impl Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let closed_by_peer: Arc<Mutex<Vec<usize>>> = Arc::default();
        let respond = Arc::new(respond);
        let (s, c) = (seen.clone(), closed_by_peer.clone());
        tokio::spawn(async move {
            for conn in 0..100 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (respond, seen, closed) = (respond.clone(), s.clone(), c.clone());
                tokio::spawn(serve_raw(tcp, conn, respond, seen, closed));
            }
        });
        RawOrigin {
            addr,
            seen,
            closed_by_peer,
        }
    }

    fn origin(&self) -> Origin {
        Origin::parse(&format!("http://{}", self.addr)).unwrap()
    }

    fn key(&self, path: &str) -> ChunkKey {
        ChunkKey {
            authority: self.addr.to_string(),
            path: path.into(),
        }
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.seen.lock().clone()
    }
}

async fn serve_raw(
    mut tcp: TcpStream,
    conn: usize,
    respond: Arc<Script>,
    seen: Seen,
    closed: Arc<Mutex<Vec<usize>>>,
) {
    let mut buf = Vec::new();
    for nth in 0..100 {
        // Read one request head (GETs have no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed.lock().push(conn);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            assert!(buf.len() < 1 << 16, "request head too large");
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        seen.lock().push((conn, path.clone()));
        match respond(conn, nth, &path) {
            Some(bytes) => {
                if tcp.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

fn ok_h1(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a test parent does with one request.
enum Reply {
    Answer(Response<Full<Bytes>>),
    /// Never answer (a long-poll the head end holds).
    Hold,
    /// Drop the whole connection, as a crashed or restarted parent would.
    DropConnection,
}

/// An HTTP/2 (prior knowledge) parent relay stand-in.
struct H2Parent {
    url: String,
    seen: Seen,
}

impl H2Parent {
    async fn start(
        reply: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static,
    ) -> H2Parent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let reply = Arc::new(reply);
        let s = seen.clone();
        tokio::spawn(async move {
            for conn in 0..100 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (reply, seen) = (reply.clone(), s.clone());
                tokio::spawn(async move {
                    let drop_it = Arc::new(tokio::sync::Notify::new());
                    let nth = Arc::new(AtomicUsize::new(0));
                    let d = drop_it.clone();
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let path = req.uri().path().to_string();
                        let n = nth.fetch_add(1, Ordering::SeqCst);
                        seen.lock().push((conn, path.clone()));
                        let r = reply(conn, n, &path);
                        let d = d.clone();
                        async move {
                            match r {
                                Reply::Answer(resp) => Ok::<_, Infallible>(resp),
                                Reply::Hold => std::future::pending().await,
                                Reply::DropConnection => {
                                    d.notify_one();
                                    std::future::pending().await
                                }
                            }
                        }
                    });
                    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = served => {}
                        _ = drop_it.notified() => {}
                    }
                });
            }
        });
        H2Parent { url, seen }
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.seen.lock().clone()
    }
}

fn answer(status: u16, body: &'static str) -> Reply {
    Reply::Answer(
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
}

fn upstream(parents: &[&str], head: Duration) -> (Upstream, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let up = Upstream::with_limits(
        &parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "child".into(),
        None,
        Timeouts {
            connect: Duration::from_secs(2),
            head,
        },
        metrics.clone(),
        UpstreamLimits::default(),
    )
    .unwrap();
    (up, metrics)
}

/// One counter of `mlcache_upstream_fetches_total`.
fn count(m: &Metrics, target: &str, result: &str) -> u64 {
    let want =
        format!("mlcache_upstream_fetches_total{{target=\"{target}\",result=\"{result}\"}} ");
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn via() -> HeaderValue {
    HeaderValue::from_static("1.1 child")
}

async fn body(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

async fn fetch(
    up: &Upstream,
    o: &RawOrigin,
    path: &str,
) -> Result<(Response<Incoming>, Source), UpstreamError> {
    up.fetch(&o.key(path), &o.origin(), &via()).await
}

#[tokio::test]
async fn refusing_parent_is_marked_down_and_skipped() {
    let origin = RawOrigin::start(|_, _, _| Some(ok_h1("origin"))).await;
    // A port nobody listens on.
    let dead = DeadPort::new();
    let url = format!("http://{}", dead.addr);
    let (up, m) = upstream(&[&url], Duration::from_secs(5));
    let (resp, source) = fetch(&up, &origin, "/a").await.unwrap();
    assert_eq!(source, Source::Origin);
    assert_eq!(body(resp).await, "origin");
    assert!(up.parent_down(0));
    assert_eq!(count(&m, "parent", "refused"), 1);
    assert_eq!(count(&m, "parent", "down"), 1);
    // While down, the parent is not asked again.
    let (_, source) = fetch(&up, &origin, "/b").await.unwrap();
    assert_eq!(source, Source::Origin);
    assert_eq!(count(&m, "parent", "skipped_down"), 1);
    assert_eq!(count(&m, "parent", "refused"), 1);
}

#[tokio::test]
async fn slow_parent_long_poll_is_a_timeout_not_a_down() {
    let origin = RawOrigin::start(|_, _, _| Some(ok_h1("origin"))).await;
    let parent = H2Parent::start(|_, _, path| match path {
        "/slow" => Reply::Hold,
        _ => answer(200, "parent"),
    })
    .await;
    let (up, m) = upstream(&[&parent.url], Duration::from_millis(300));
    let err = fetch(&up, &origin, "/slow").await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(err.blame(), Some(Blame::Parent));
    assert!(matches!(err.failure(), Some(Failure::HeadTimeout(_))));
    assert!(
        !up.parent_down(0),
        "a held long-poll does not mark the parent down"
    );
    assert!(
        origin.requests().is_empty(),
        "a held long-poll does not bypass the tree"
    );
    // The next fetch still goes to the parent, on the same connection.
    let (resp, source) = fetch(&up, &origin, "/fast").await.unwrap();
    assert_eq!(source, Source::Parent(0));
    assert_eq!(body(resp).await, "parent");
    assert_eq!(count(&m, "parent", "timeout"), 1);
    assert_eq!(count(&m, "parent", "down"), 0);
    assert!(parent.requests().iter().all(|(conn, _)| *conn == 0));
}

#[tokio::test]
async fn parent_5xx_tries_the_origin_without_marking_down() {
    let origin = RawOrigin::start(|_, _, _| Some(ok_h1("origin"))).await;
    let parent = H2Parent::start(|_, _, path| match path.strip_prefix("/s/") {
        Some(code) => answer(code.parse().unwrap(), "error from parent"),
        None => answer(200, "parent"),
    })
    .await;
    let (up, m) = upstream(&[&parent.url], Duration::from_secs(5));
    for code in [502, 503, 504, 508, 500] {
        let path = format!("/s/{code}");
        let (resp, source) = fetch(&up, &origin, &path).await.unwrap();
        assert_eq!(source, Source::Origin, "{code}");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body(resp).await, "origin");
        assert!(!up.parent_down(0), "{code} marked the parent down");
        assert!(origin.requests().iter().any(|(_, p)| *p == path));
    }
    assert_eq!(count(&m, "parent", "status_5xx"), 5);
    // The parent still gets the next request.
    let (resp, source) = fetch(&up, &origin, "/fine").await.unwrap();
    assert_eq!(source, Source::Parent(0));
    assert_eq!(body(resp).await, "parent");
    // A 5xx the parent relayed from the origin (it carries the parent's
    // Via) is the origin's answer: final, not a reason to bypass the tree.
    let relaying = H2Parent::start(|_, _, _| {
        Reply::Answer(
            Response::builder()
                .status(503)
                .header("via", "1.1 mlcache-parent")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from_static(b"origin gave up")))
                .unwrap(),
        )
    })
    .await;
    let (up, m2) = upstream(&[&relaying.url], Duration::from_secs(5));
    let before = origin.requests().len();
    let (resp, source) = fetch(&up, &origin, "/ll/media.m3u8?_HLS_msn=9")
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), source),
        (StatusCode::SERVICE_UNAVAILABLE, Source::Parent(0))
    );
    assert_eq!(body(resp).await, "origin gave up");
    assert_eq!(
        origin.requests().len(),
        before,
        "the origin was asked again"
    );
    assert_eq!(count(&m2, "parent", "status_5xx"), 0);
    // A 404 is an answer, not a failure.
    let parent404 = H2Parent::start(|_, _, _| answer(404, "")).await;
    let (up, _) = upstream(&[&parent404.url], Duration::from_secs(5));
    let (resp, source) = fetch(&up, &origin, "/gone").await.unwrap();
    assert_eq!(
        (resp.status(), source),
        (StatusCode::NOT_FOUND, Source::Parent(0))
    );
}

/// Response headers adding up to about `bytes`.
fn padding(bytes: usize) -> Vec<(String, String)> {
    (0..bytes / 4096)
        .map(|i| (format!("x-pad-{i}"), "a".repeat(4096)))
        .collect()
}

#[tokio::test]
async fn huge_heads_are_a_clear_502_not_a_down() {
    let huge = 100 << 10;
    assert!(huge > DEFAULT_MAX_HEAD);
    let origin = RawOrigin::start(move |_, _, path| {
        if path == "/huge" {
            let mut r = String::from("HTTP/1.1 200 OK\r\n");
            for (k, v) in padding(huge) {
                r.push_str(&format!("{k}: {v}\r\n"));
            }
            r.push_str("Content-Length: 2\r\n\r\nok");
            Some(r.into_bytes())
        } else {
            Some(ok_h1("origin"))
        }
    })
    .await;
    let parent = H2Parent::start(move |_, _, path| {
        if path == "/huge" {
            let mut b = Response::builder();
            for (k, v) in padding(huge) {
                b = b.header(k, v);
            }
            Reply::Answer(b.body(Full::new(Bytes::from_static(b"ok"))).unwrap())
        } else {
            answer(200, "parent")
        }
    })
    .await;
    let (up, m) = upstream(&[&parent.url], Duration::from_secs(5));
    // The parent's huge head is refused (not a down), then the origin's too:
    // the fetch ends with the origin's typed error, a 502.
    let err = match fetch(&up, &origin, "/huge").await {
        Ok((resp, source)) => panic!(
            "{source:?} answered {} despite the huge head",
            resp.status()
        ),
        Err(e) => e,
    };
    assert_eq!(err.blame(), Some(Blame::Origin), "{err}");
    assert!(
        matches!(err.failure(), Some(Failure::HeadTooLarge { limit }) if *limit == DEFAULT_MAX_HEAD),
        "{err}"
    );
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(count(&m, "parent", "head_too_large"), 1);
    assert_eq!(count(&m, "origin", "head_too_large"), 1);
    assert!(!up.parent_down(0));
    // A head under the limit but over h2's old 16 KiB default passes, and
    // the parent is still used.
    let (resp, source) = fetch(&up, &origin, "/fine").await.unwrap();
    assert_eq!(source, Source::Parent(0));
    assert_eq!(body(resp).await, "parent");
    let parent20 = H2Parent::start(|_, _, _| {
        let mut b = Response::builder();
        for (k, v) in padding(20 << 10) {
            b = b.header(k, v);
        }
        Reply::Answer(b.body(Full::new(Bytes::from_static(b"ok"))).unwrap())
    })
    .await;
    let (up, _) = upstream(&[&parent20.url], Duration::from_secs(5));
    let (resp, source) = fetch(&up, &origin, "/twenty").await.unwrap();
    assert_eq!(source, Source::Parent(0));
    assert_eq!(body(resp).await, "ok");
}

#[tokio::test]
async fn cl_te_response_drops_content_length_and_its_connection() {
    let origin = RawOrigin::start(|conn, nth, _| match (conn, nth) {
        (0, 0) => Some(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              a\r\n0123456789\r\n0\r\n\r\n"
                .to_vec(),
        ),
        // Whatever rides on the same connection afterwards is the attacker's.
        (0, _) => Some(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED".to_vec()),
        _ => Some(ok_h1("second")),
    })
    .await;
    let (up, m) = upstream(&[], Duration::from_secs(5));
    let (resp, _) = fetch(&up, &origin, "/a").await.unwrap();
    assert!(
        !resp.headers().contains_key(http::header::CONTENT_LENGTH),
        "Transfer-Encoding wins: {:?}",
        resp.headers()
    );
    assert_eq!(body(resp).await, "0123456789");
    assert_eq!(count(&m, "origin", "bad_framing"), 1);
    // The relay closes that connection rather than pooling it.
    until(WAIT, "the CL+TE connection is closed", || {
        origin.closed_by_peer.lock().contains(&0)
    })
    .await;
    assert_eq!(up.origin_pool().idle(&origin.origin()), 0);
    let (resp, _) = fetch(&up, &origin, "/b").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await, "second");
    assert_eq!(
        origin.requests(),
        vec![(0, "/a".to_string()), (1, "/b".to_string())]
    );
}

#[tokio::test]
async fn stale_pooled_origin_connection_reconnects_once() {
    // The origin closes its keep-alive connection just as the next request
    // arrives on it (an idle-timeout race).
    let origin = RawOrigin::start(|conn, nth, _| match (conn, nth) {
        (0, 0) => Some(ok_h1("first")),
        (0, _) => None,
        _ => Some(ok_h1("second")),
    })
    .await;
    let (up, m) = upstream(&[], Duration::from_secs(5));
    let (resp, _) = fetch(&up, &origin, "/a").await.unwrap();
    assert_eq!(body(resp).await, "first");
    until(WAIT, "the connection is pooled", || {
        up.origin_pool().idle(&origin.origin()) == 1
    })
    .await;
    let (resp, _) = fetch(&up, &origin, "/b").await.unwrap();
    assert_eq!(body(resp).await, "second");
    assert_eq!(count(&m, "origin", "stale_retried"), 1);
    assert_eq!(
        origin.requests(),
        vec![
            (0, "/a".to_string()),
            (0, "/b".to_string()),
            (1, "/b".to_string())
        ]
    );
}

#[tokio::test]
async fn stale_parent_connection_reconnects_before_marking_down() {
    let origin = RawOrigin::start(|_, _, _| Some(ok_h1("origin"))).await;
    // The parent drops its first connection when the second request arrives
    // on it (a restart, or a middlebox that timed the connection out).
    let parent = H2Parent::start(|conn, nth, _| match (conn, nth) {
        (0, 0) => answer(200, "parent"),
        (0, _) => Reply::DropConnection,
        _ => answer(200, "parent again"),
    })
    .await;
    let (up, m) = upstream(&[&parent.url], Duration::from_secs(5));
    let (resp, source) = fetch(&up, &origin, "/a").await.unwrap();
    assert_eq!(
        (source, body(resp).await),
        (Source::Parent(0), "parent".into())
    );
    let (resp, source) = fetch(&up, &origin, "/b").await.unwrap();
    assert_eq!(
        source,
        Source::Parent(0),
        "a stale connection is not a down parent"
    );
    assert_eq!(body(resp).await, "parent again");
    assert!(!up.parent_down(0));
    assert_eq!(count(&m, "parent", "stale_retried"), 1);
    assert!(origin.requests().is_empty());
    // A parent that fails on a fresh connection is down at once.
    let dropper = H2Parent::start(|_, _, _| Reply::DropConnection).await;
    let (up2, m2) = upstream(&[&dropper.url], Duration::from_secs(5));
    let (_, source) = fetch(&up2, &origin, "/c").await.unwrap();
    assert_eq!(source, Source::Origin);
    assert!(up2.parent_down(0));
    assert_eq!(count(&m2, "parent", "closed"), 1);
    assert_eq!(count(&m2, "parent", "stale_retried"), 0);
}

#[tokio::test]
async fn repeated_content_length_becomes_one() {
    let origin = RawOrigin::start(|_, _, _| {
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Length: 6, 6\r\n\r\norigin".to_vec())
    })
    .await;
    let (up, _) = upstream(&[], Duration::from_secs(5));
    let (resp, _) = fetch(&up, &origin, "/a").await.unwrap();
    let cl: Vec<_> = resp
        .headers()
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    assert_eq!(cl, ["6"]);
    assert_eq!(body(resp).await, "origin");
    // Consistent framing: the connection is kept for the next request.
    until(WAIT, "the connection is pooled", || {
        up.origin_pool().idle(&origin.origin()) == 1
    })
    .await;
}
