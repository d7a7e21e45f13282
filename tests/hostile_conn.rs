//! Hostile clients at the connection level, over real loopback sockets: h2
//! peers that never open their flow-control window, request bodies on parked
//! GETs, silent and half-open connections, connections over the cap, accept
//! loops out of descriptors, and the signals an operator sends.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(30);
/// Slack for scheduling on a loaded 2-core machine, on top of a timeout.
const MARGIN: Duration = Duration::from_millis(2500);
const SEND_TIMEOUT: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_millis(300);

fn held_origin(cfg: &mut mlcache::origin::OriginConfig) {
    cfg.hold = LONG;
}

/// An h2c connection made with the `h2` crate, advertising `window` as its
/// initial stream window.
async fn h2_conn(
    addr: SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

/// Reads until the peer closes (EOF or error); returns what was read and how
/// long the close took. Panics if it is not closed within `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration, what: &str) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut seen = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: still open after {limit:?}"));
    (seen, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_with_zero_window_are_closed_after_send_timeout() {
    let origin = origin_with(|c| {
        held_origin(c);
        c.chunk_size = 4 << 20;
    })
    .await;
    let mut cfg = relay_config(&origin.url());
    cfg.send_timeout = SEND_TIMEOUT;
    let r = relay(cfg).await;
    let admin = r.admin.unwrap();

    // Window 0: the relay may send heads but not one byte of any body.
    // Half the streams are cache hits, half wait on a live chunk.
    let (mut send, conn) = h2_conn(r.addr, 0).await;
    let mut bodies = Vec::new();
    for i in 0..20 {
        send = send.ready().await.unwrap();
        let path = match i % 2 {
            0 => format!("/vod/{}", i % 4),
            _ => "/live/0/0".to_string(),
        };
        let req = Request::get(format!("http://{}{path}", origin.addr))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        bodies.push(resp);
    }
    // Every viewer holds its place under max-parked until its body is dropped.
    until(LONG, "all viewers parked", || r.relay.parked() == 20).await;
    origin.publish(0);
    let mut heads = Vec::new();
    for resp in bodies {
        let resp = tokio::time::timeout(LONG, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        heads.push(resp); // keep the streams open
    }
    let stalled_from = Instant::now();
    assert_eq!(metric(admin, "mlcache_connections").await, 1.0);
    let limit = SEND_TIMEOUT + MARGIN;
    let ended = tokio::time::timeout(limit, conn).await;
    assert!(
        ended.is_ok(),
        "connection still open {limit:?} after stalling"
    );
    let took = stalled_from.elapsed();
    assert!(took >= SEND_TIMEOUT / 2, "closed after only {took:?}");
    until(LONG, "open-connection gauge back to 0", || {
        r.relay.metrics.connections.get() == 0
    })
    .await;
    // Closing the connection dropped every response body it held.
    until(LONG, "stalled live bodies dropped", || {
        r.relay.parked() == 0
    })
    .await;
    assert_eq!(
        metric(
            admin,
            "mlcache_connections_closed_total{reason=\"no_progress\"}"
        )
        .await,
        1.0
    );
    // The relay still serves the same chunk whole to a viewer that reads.
    for path in ["/vod/0", "/live/0/0"] {
        let got = h2(r.addr, proxy_get(origin.addr, path)).await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes().len(), 4 << 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_steady_h2_reader_is_not_cut() {
    let origin = origin_with(|c| c.chunk_size = 512 << 10).await;
    let mut cfg = relay_config(&origin.url());
    cfg.send_timeout = SEND_TIMEOUT;
    let r = relay(cfg).await;
    // 16 KiB of window, read at 400 KiB/s: the whole body takes longer than
    // send-timeout, but no part of it stalls that long.
    let (mut send, conn) = h2_conn(r.addr, 16 << 10).await;
    send = send.ready().await.unwrap();
    let req = Request::get(format!("http://{}/vod/0", origin.addr))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(LONG, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body not cut");
        got += chunk.len();
        // Pacing the reader (40 ms per 16 KiB), not timing an assertion.
        tokio::time::sleep(Duration::from_micros(chunk.len() as u64 * 40_000 / 16_384)).await;
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(got, 512 << 10);
    assert!(
        started.elapsed() > SEND_TIMEOUT,
        "the read was not slower than send-timeout"
    );
    assert_eq!(r.relay.metrics.connections_closed_of("no_progress"), 0);
    drop(send);
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_on_parked_h2_gets_are_not_buffered() {
    let origin = origin_with(|c| {
        held_origin(c);
        c.chunk_size = 64 << 10;
    })
    .await;
    let r = relay(relay_config(&origin.url())).await;
    let (mut send, _conn) = h2_conn(r.addr, 1 << 20).await;
    // One whole exchange first, so the relay's SETTINGS are in force.
    send = send.ready().await.unwrap();
    let req = Request::get(format!("http://{}/vod/0", origin.addr))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    while let Some(c) = body.data().await {
        body.flow_control()
            .release_capacity(c.unwrap().len())
            .unwrap();
    }

    const STREAMS: usize = 8;
    let mut pending = Vec::new();
    let mut sent = 0usize;
    for i in 0..STREAMS {
        send = send.ready().await.unwrap();
        let req = Request::get(format!("http://{}/live/0/0", origin.addr))
            .body(())
            .unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        tx.reserve_capacity(4 << 20);
        let granted = tokio::time::timeout(LONG, std::future::poll_fn(|cx| tx.poll_capacity(cx)))
            .await
            .unwrap_or_else(|_| {
                panic!("stream {i}: no window for its body: the relay holds the earlier bodies")
            });
        let granted = match granted {
            Some(Ok(n)) => n,
            other => panic!(
                "stream {i}: {other:?}; parked {}; resp {:?}",
                r.relay.parked(),
                resp.await
            ),
        };
        assert!(
            granted <= 64 << 10,
            "stream {i}: the relay granted {granted} bytes of request body"
        );
        tx.send_data(Bytes::from(vec![b'x'; granted]), false)
            .unwrap();
        // Give back any claim on the connection window, so this stream does
        // not hold capacity the next one needs.
        tx.reserve_capacity(0);
        sent += granted;
        pending.push((resp, tx));
    }
    // More went out than the relay's connection window: it discarded it.
    assert!(sent > 64 << 10, "sent only {sent} bytes");
    until(LONG, "all streams parked", || r.relay.parked() == STREAMS).await;
    origin.publish(0);
    // Read all responses at once: they share the connection window.
    let mut readers = tokio::task::JoinSet::new();
    for (resp, tx) in pending {
        readers.spawn(async move {
            let _tx = tx;
            let resp = tokio::time::timeout(LONG, resp).await.unwrap().unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut n = 0;
            while let Some(c) = body.data().await {
                let c = c.unwrap();
                n += c.len();
                body.flow_control().release_capacity(c.len()).unwrap();
            }
            n
        });
    }
    while let Some(n) = readers.join_next().await {
        assert_eq!(n.unwrap(), 64 << 10);
    }
    assert_eq!(origin.requests("/live/0/0"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_after_idle_timeout() {
    let origin = origin_with(held_origin).await;
    let mut cfg = relay_config(&origin.url());
    cfg.idle_timeout = IDLE_TIMEOUT;
    let r = relay(cfg).await;
    // A viewer parked longer than idle-timeout has an unfinished request: it
    // must survive.
    let parked = tokio::spawn({
        let (a, o) = (r.addr, origin.addr);
        async move { h1(a, proxy_get(o, "/live/0/0")).await }
    });
    until(LONG, "viewer parked", || r.relay.parked() == 1).await;

    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let empty_settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let sends: [(&str, Vec<u8>); 4] = [
        ("silent TCP", vec![]),
        ("partial h2 preface", preface[..10].to_vec()),
        (
            "h2 preface and SETTINGS",
            [preface, empty_settings].concat(),
        ),
        (
            "partial h1 head",
            b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec(),
        ),
    ];
    let mut socks = Vec::new();
    for (what, bytes) in &sends {
        let mut tcp = TcpStream::connect(r.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        socks.push((what, tcp));
    }
    // Keep-alive connections with no open request: h1 between requests, h2
    // with zero streams.
    let (mut h2_send, h2_conn_task) = h2_conn(r.addr, 65_535).await;
    h2_send = h2_send.ready().await.unwrap();
    let req = Request::get(format!("http://{}/vod/1", origin.addr))
        .body(())
        .unwrap();
    let (resp, _) = h2_send.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    while let Some(c) = body.data().await {
        body.flow_control()
            .release_capacity(c.unwrap().len())
            .unwrap();
    }
    let tcp = TcpStream::connect(r.addr).await.unwrap();
    let (mut h1_send, h1_conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let h1_conn_task = tokio::spawn(h1_conn);
    let resp = h1_send
        .send_request(proxy_get(origin.addr, "/vod/1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();

    // A real viewer is served while they are all open.
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/2")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);

    let limit = IDLE_TIMEOUT + MARGIN;
    for (what, mut tcp) in socks {
        closed_within(&mut tcp, limit, what).await;
    }
    tokio::time::timeout(limit, h2_conn_task)
        .await
        .expect("idle h2 connection closed")
        .unwrap()
        .ok();
    tokio::time::timeout(limit, h1_conn_task)
        .await
        .expect("idle h1 keep-alive connection closed")
        .unwrap()
        .ok();
    let idle = r.relay.metrics.connections_closed_of("idle");
    assert_eq!(idle, 6, "connections closed as idle");

    // The parked viewer outlived idle-timeout and is still served.
    assert_eq!(r.relay.parked(), 1);
    origin.publish(0);
    let got = parked.await.unwrap().unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes().len(), 64 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_cap_connections_are_answered_at_once() {
    let origin = origin_with(|c| c.hold = Duration::from_secs(30)).await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_connections = 2;
    let r = relay(cfg).await;
    // Both places are taken by viewers waiting for a chunk: busy
    // connections, which are never displaced.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(r.addr).await.unwrap();
        let req = format!(
            "GET http://{o}/live/0/0 HTTP/1.1\r\nhost: {o}\r\n\r\n",
            o = origin.addr
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        busy.push(tcp);
    }
    until(LONG, "both places taken by parked viewers", || {
        r.relay.metrics.connections.get() == 2 && r.relay.parked() == 2
    })
    .await;
    // A client that sends nothing still gets its answer and a close at once:
    // the relay neither waits for a request nor holds the socket.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    let (seen, took) = closed_within(&mut tcp, Duration::from_secs(2), "over-cap").await;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 503 "),
        "got {text:?} after {took:?}"
    );
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // An h2c client (prior knowledge) cannot read an HTTP/1.1 answer: it is
    // closed at once.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (seen, _) = closed_within(&mut tcp, Duration::from_secs(2), "over-cap h2c").await;
    assert!(seen.is_empty(), "h2c client got {seen:?}");
    // A real HTTP/1.1 client reads the 503.
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.relay.metrics.connections_closed_of("over_limit"), 3);
    assert_eq!(r.relay.metrics.connections_closed_of("reclaimed"), 0);
    assert_eq!(r.relay.metrics.connections.get(), 2);
    assert_eq!(origin.requests("/vod/1"), 0);
}

/// At the connection cap, a new viewer takes the place of the connection
/// that has been idle longest (a silent socket), as nginx reuses idle
/// keep-alive connections: a flood of silent connections cannot keep real
/// viewers out until the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_give_their_place_to_new_viewers() {
    let origin = manual_origin().await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_connections = 3;
    cfg.idle_timeout = Duration::from_secs(60);
    let r = relay(cfg).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(r.addr).await.unwrap());
        // One at a time, so the first is the longest idle.
        let n = silent.len() as i64;
        until(LONG, "silent connection accepted", || {
            r.relay.metrics.connections.get() == n
        })
        .await;
    }
    for i in 0..3 {
        let got = h1(r.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
        assert_eq!(
            got.status,
            StatusCode::OK,
            "viewer {i} kept out by silent sockets"
        );
    }
    assert!(r.relay.metrics.connections_closed_of("reclaimed") >= 1);
    // The first silent socket was the one displaced: it is closed.
    let (seen, _) = closed_within(&mut silent[0], Duration::from_secs(2), "displaced").await;
    assert!(seen.is_empty());
    assert!(r.relay.metrics.connections.get() <= 3);
}

/// A burst of new viewers at the cap, all at once: each displaces one idle
/// connection and gets its place. A place freed for one newcomer must not
/// go to the next newcomer instead (who then finds the cap full and no
/// idle connection left to displace, and is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_the_cap_displaces_one_idle_connection_each() {
    const CAP: usize = 8;
    let origin = manual_origin().await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_connections = CAP;
    cfg.idle_timeout = Duration::from_secs(60);
    let r = relay(cfg).await;
    for round in 0..5 {
        let mut silent = Vec::new();
        for _ in 0..CAP {
            silent.push(TcpStream::connect(r.addr).await.unwrap());
        }
        until(LONG, "silent connections accepted", || {
            r.relay.metrics.connections.get() == CAP as i64
        })
        .await;
        // Each newcomer keeps its connection, so no place frees up but by
        // displacing a silent one.
        let burst: Vec<_> = (0..CAP)
            .map(|_| tokio::spawn(get_and_hold(r.addr, origin.addr)))
            .collect();
        let mut held = Vec::new();
        for (i, b) in burst.into_iter().enumerate() {
            let (status, tcp) = b.await.unwrap();
            assert_eq!(status, "200", "round {round}: viewer {i} refused");
            held.push(tcp);
        }
        drop(held);
        drop(silent);
        until(LONG, "connections closed", || {
            r.relay.metrics.connections.get() == 0
        })
        .await;
    }
    assert_eq!(
        r.relay.metrics.connections_closed_of("reclaimed"),
        (5 * CAP) as u64
    );
}

/// A burst of more new viewers than there are idle connections at the cap:
/// a newcomer whose request is in but not yet read is not idle, so a later
/// newcomer may not displace it. The relay process is stopped (`SIGSTOP`)
/// while the burst connects and sends its requests, so that all of them
/// are waiting at once when it resumes. Every viewer must get an answer (a
/// 200, or a 503 once no idle place is left); none may see its connection
/// closed without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_idle_places_gets_answers_not_closes() {
    const CAP: usize = 8;
    const BURST: usize = 64;
    let origin = manual_origin().await;
    let allow = origin.url();
    let cap = CAP.to_string();
    let relay = TestProcess::relay(&[
        "--allow-origin",
        &allow,
        "--max-connections",
        &cap,
        "--idle-timeout",
        "60s",
    ]);
    let (mut ok, mut refused) = (0, 0);
    for round in 0..3 {
        let mut silent = Vec::new();
        for _ in 0..CAP {
            silent.push(TcpStream::connect(relay.addr).await.unwrap());
        }
        until_metric(relay.admin(), "mlcache_connections", CAP as f64, LONG).await;
        relay.signal("-STOP");
        let mut burst = Vec::new();
        for _ in 0..BURST {
            burst.push(send_get(relay.addr, origin.addr).await);
        }
        relay.signal("-CONT");
        for (i, tcp) in burst.iter_mut().enumerate() {
            match read_status(tcp).await.as_str() {
                "200" => ok += 1,
                "503" => refused += 1,
                other => panic!("round {round}: viewer {i} got no answer ({other})"),
            }
        }
        drop((burst, silent));
        until_metric(relay.admin(), "mlcache_connections", 0.0, LONG).await;
    }
    eprintln!("{ok} answered 200, {refused} refused");
    assert!(ok >= 3 * CAP, "{ok} answered 200");
}

/// Sends a path-form GET for `/vod/1` on a new connection and reads the
/// response head; returns its status code and the connection, still open.
async fn get_and_hold(relay: SocketAddr, origin: SocketAddr) -> (String, TcpStream) {
    let mut tcp = send_get(relay, origin).await;
    (read_status(&mut tcp).await, tcp)
}

/// A new connection with a path-form GET for `/vod/1` sent on it.
async fn send_get(relay: SocketAddr, origin: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(relay).await.unwrap();
    let req = format!("GET /mlcache/{origin}/vod/1 HTTP/1.1\r\nhost: relay\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp
}

/// Reads a response head; its status code, or `none` if the connection
/// ended before one.
async fn read_status(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    head.split(' ').nth(1).unwrap_or("none").to_owned()
}

async fn healthz(admin: SocketAddr) -> Option<StatusCode> {
    let req = Request::get("/healthz")
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    h1(admin, req).await.ok().map(|g| g.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_keeps_serving() {
    let origin = manual_origin().await;
    let mut p = TestProcess::relay_with("", &["--allow-origin", &origin.url()], true);
    for round in 0..2 {
        p.signal("-HUP");
        let log = p.log.clone();
        until(LONG, "reload logged", || {
            log.lock()
                .iter()
                .filter(|l| l.contains("configuration reloaded"))
                .count()
                > round
        })
        .await;
        let got = h1(p.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(healthz(p.admin()).await, Some(StatusCode::OK));
        assert!(p.alive(), "relay died of SIGHUP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_health_first_then_serves_through_drain_delay_then_exits_zero() {
    let origin = manual_origin().await;
    let mut p = TestProcess::relay_with(
        "",
        &[
            "--allow-origin",
            &origin.url(),
            "--drain-delay",
            "4s",
            "--shutdown-grace",
            "5s",
        ],
        true,
    );
    assert_eq!(healthz(p.admin()).await, Some(StatusCode::OK));
    let before = h1(p.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert!(!before
        .headers
        .contains_key(mlcache::protocol::DRAINING_HEADER));
    let sent = Instant::now();
    p.signal("-TERM");
    // The health check flips at once, answered (not refused) by the admin
    // listener.
    let deadline = Instant::now() + LONG;
    loop {
        match healthz(p.admin()).await {
            Some(StatusCode::SERVICE_UNAVAILABLE) => break,
            Some(StatusCode::OK) => {}
            other => panic!("healthz during drain: {other:?}"),
        }
        assert!(Instant::now() < deadline, "healthz never turned 503");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flipped = sent.elapsed();
    // Routing has drain-delay to move away: new viewers are still served.
    let got = h1(p.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    // ... and told to probe again (tests/bgp.rs: viewers move on this).
    assert_eq!(
        got.headers
            .get(mlcache::protocol::DRAINING_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "test too slow to check the drain delay (healthz flipped after {flipped:?})"
    );
    // Then the viewer listener closes and the relay exits cleanly.
    let deadline = Instant::now() + LONG;
    while TcpStream::connect(p.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(3900),
        "closed before drain-delay"
    );
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "relay never exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

/// CPU seconds a process has used so far (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loops_back_off_when_out_of_descriptors() {
    let origin = manual_origin().await;
    let mut p = TestProcess::relay_with(
        "ulimit -n 64 &&",
        &["--allow-origin", &origin.url(), "--idle-timeout", "60s"],
        true,
    );
    // Use up the relay's descriptors on both listeners.
    let mut held = Vec::new();
    for i in 0..100 {
        let addr = if i % 2 == 0 { p.admin() } else { p.addr };
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let log = p.log.clone();
    until(LONG, "accept failing logged", || {
        log.lock()
            .iter()
            .filter(|l| l.contains("accept failing"))
            .count()
            >= 2
    })
    .await;
    let pid = p.child.id();
    let before = cpu_seconds(pid);
    let t = Instant::now();
    // Measuring CPU over a window: this sleep is the measurement period.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(pid) - before;
    let share = used / t.elapsed().as_secs_f64();
    assert!(
        share < 0.3,
        "relay used {share:.2} of a core while out of descriptors"
    );
    // At most one line per listener per second, not one per failure.
    let lines = p
        .log
        .lock()
        .iter()
        .filter(|l| l.contains("accept failing"))
        .count();
    assert!(lines <= 12, "{lines} accept-failure lines");
    drop(held);
    assert!(p.alive());
    // Descriptors back: it serves again.
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(StatusCode::OK) = healthz(p.admin()).await {
            break;
        }
        assert!(Instant::now() < deadline, "admin never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_peer_that_never_answers_ping_is_reaped() {
    let origin = origin_with(held_origin).await;
    let mut cfg = relay_config(&origin.url());
    cfg.h2_keepalive_interval = Duration::from_millis(300);
    cfg.h2_keepalive_timeout = Duration::from_millis(300);
    cfg.max_wait = LONG;
    let r = relay(cfg).await;
    // A raw h2 client: preface, empty SETTINGS, one GET that parks, then it
    // goes dead (reads nothing, answers no PING).
    let authority = origin.addr.to_string();
    let path = "/live/0/0";
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
    block.push(0x44); // :path, literal with indexed name
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x41); // :authority, literal with indexed name
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
    let len = block.len();
    // HEADERS, END_STREAM | END_HEADERS, stream 1
    wire.extend_from_slice(&[0, (len >> 8) as u8, len as u8, 1, 0x5, 0, 0, 0, 1]);
    wire.extend_from_slice(&block);
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(&wire).await.unwrap();
    let _keep_open = tcp;
    until(LONG, "request parked", || r.relay.parked() == 1).await;
    assert_eq!(r.relay.metrics.connections.get(), 1);
    // The peer reads nothing and answers no PING from here on; the relay
    // reaps it after one keep-alive interval plus the PING timeout.
    until(
        Duration::from_millis(600) + MARGIN,
        "dead h2 peer reaped",
        || r.relay.metrics.connections.get() == 0,
    )
    .await;
    until(LONG, "parked request dropped", || r.relay.parked() == 0).await;
}

/// One h2 connection may carry at most `--max-streams-per-connection`
/// streams: the relay says so in its SETTINGS, so a few connections cannot
/// park `--max-parked` viewers (it was 10,000 per connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_per_connection_are_capped() {
    let origin = manual_origin().await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_streams_per_connection = 7;
    let r = relay(cfg).await;
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's first frame is its SETTINGS: 9-byte header, then 6-byte
    // (id, value) pairs.
    let mut head = [0u8; 9];
    tokio::time::timeout(LONG, tcp.read_exact(&mut head))
        .await
        .expect("server SETTINGS in time")
        .unwrap();
    assert_eq!(head[3], 0x4, "first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    let max_streams = payload
        .chunks(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == 0x3)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(max_streams, Some(7));
}
