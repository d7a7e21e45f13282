//! End-to-end tests of the relay: real origins and relays on loopback sockets,
//! faults injected for real (killed processes, cut bodies, stalled readers).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Empty;
use mlcache::origin::chunk_bytes;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

const LONG: Duration = Duration::from_secs(30);

fn held_origin(cfg: &mut mlcache::origin::OriginConfig) {
    cfg.hold = LONG;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_viewers_cost_one_origin_request() {
    let origin = origin_with(held_origin).await;
    let r = relay(relay_config(&origin.url())).await;
    let mut viewers = JoinSet::new();
    for _ in 0..1000 {
        let (addr, o) = (r.addr, origin.addr);
        viewers.spawn(async move { h1(addr, proxy_get(o, "/live/0/0")).await });
    }
    until(LONG, "1000 viewers parked", || r.relay.parked() == 1000).await;
    assert_eq!(origin.requests("/live/0/0"), 1);
    origin.publish(0);
    let mut first: Option<Bytes> = None;
    let (mut miss, mut coalesced) = (0, 0);
    while let Some(got) = viewers.join_next().await {
        let got = got.unwrap().unwrap();
        assert_eq!(got.status, StatusCode::OK);
        match got.x_cache() {
            "MISS" => miss += 1,
            "COALESCED" => coalesced += 1,
            other => panic!("unexpected X-Cache {other}"),
        }
        let body = got.bytes().clone();
        assert_eq!(body.len(), 64 * 1024);
        assert_eq!(&body[8..16], &0u64.to_be_bytes());
        match &first {
            None => first = Some(body),
            Some(f) => assert_eq!(f, &body, "every viewer gets identical bytes"),
        }
    }
    assert_eq!((miss, coalesced), (1, 999));
    assert_eq!(
        origin.requests("/live/0/0"),
        1,
        "origin saw exactly one request"
    );
    let waited = metric(r.admin.unwrap(), "mlcache_delivery_seconds_count").await;
    assert!(waited >= 999.0, "delivery recorded for {waited} waiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_relays_still_cost_one_origin_request() {
    let origin = origin_with(held_origin).await;
    let a = relay(relay_config(&origin.url())).await;
    let mut cfg_b = relay_config(&origin.url());
    cfg_b.upstream = vec![format!("http://{}", a.addr)];
    let b = relay(cfg_b).await;
    let mut viewers = JoinSet::new();
    for i in 0..400 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let o = origin.addr;
        viewers.spawn(async move { h1(addr, proxy_get(o, "/live/0/0")).await });
    }
    // B's single upstream request is one more viewer at A.
    until(LONG, "viewers parked on both relays", || {
        a.relay.parked() == 201 && b.relay.parked() == 200
    })
    .await;
    origin.publish(0);
    let expect = chunk_bytes(0, 0, 64 * 1024, 0);
    while let Some(got) = viewers.join_next().await {
        let got = got.unwrap().unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes().len(), expect.len());
        assert_eq!(&got.bytes()[8..], &expect[8..]);
    }
    assert_eq!(origin.requests("/live/0/0"), 1);
    let via = h1(b.addr, proxy_get(origin.addr, "/live/0/0"))
        .await
        .unwrap();
    assert_eq!(via.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_parent_fails_over_to_origin() {
    let origin = manual_origin().await;
    let mut parent = TestProcess::relay(&["--allow-origin", &origin.url()]);
    let mut cfg = relay_config(&origin.url());
    cfg.upstream = vec![format!("http://{}", parent.addr)];
    let child = relay(cfg).await;

    let got = h1(child.addr, proxy_get(origin.addr, "/vod/1"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        metric(parent.admin(), "mlcache_requests_total{result=\"miss\"}").await,
        1.0
    );

    parent.kill();
    let got = h1(child.addr, proxy_get(origin.addr, "/vod/2"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes(), &chunk_bytes(u64::MAX, 2, 64 * 1024, 0));
    assert_eq!(origin.requests("/vod/2"), 1);
    let admin = child.admin.unwrap();
    assert!(
        metric(
            admin,
            "mlcache_upstream_fetches_total{target=\"parent\",result=\"down\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            admin,
            "mlcache_upstream_fetches_total{target=\"origin\",result=\"ok\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_cut_midway_fails_every_viewer_and_is_not_cached() {
    // Progressive pieces 100 ms apart, so the head and the first pieces are
    // on the wire before the origin cuts the body.
    let origin = origin_with(|c| {
        c.hold = LONG;
        c.cadence = Some(Duration::from_millis(800));
    })
    .await;
    let r = relay(relay_config(&origin.url())).await;
    let next = origin.edge(0) + 1;
    let path = format!("/live/0/{next}?abort_after=20000");
    let path = path.as_str();
    let mut viewers = JoinSet::new();
    for i in 0..40 {
        let (addr, o, p) = (r.addr, origin.addr, path.to_string());
        viewers.spawn(async move {
            if i % 2 == 0 {
                h1(addr, proxy_get(o, &p)).await
            } else {
                h2(addr, proxy_get(o, &p)).await
            }
        });
    }
    let mut failed = 0;
    while let Some(got) = viewers.join_next().await {
        let got = got.unwrap().unwrap();
        assert_eq!(
            got.status,
            StatusCode::OK,
            "the head was relayed before the cut"
        );
        assert!(got.body.is_err(), "a cut body must not look complete");
        failed += 1;
    }
    assert_eq!(failed, 40);
    assert!(r.relay.metrics.bytes_in.get() >= 16384);
    assert_eq!(origin.requests(path), 1);
    let again = h1(r.addr, proxy_get(origin.addr, path)).await.unwrap();
    assert_ne!(again.x_cache(), "HIT");
    assert!(again.status != StatusCode::OK || again.body.is_err());
    assert_eq!(origin.requests(path), 2, "a failed body is never cached");
    assert_eq!(r.relay.cache().usage().entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_midbody_resets_downstream() {
    // A parent process streams a slow progressive chunk; killing it mid-body
    // must surface as an error at the child's viewers, never as a short 200.
    let origin = origin_with(|c| {
        c.hold = LONG;
        c.cadence = Some(Duration::from_secs(4));
        c.pieces = 4;
    })
    .await;
    let mut parent = TestProcess::relay(&["--allow-origin", &origin.url()]);
    let mut cfg = relay_config(&origin.url());
    cfg.upstream = vec![format!("http://{}", parent.addr)];
    let child = relay(cfg).await;
    let edge = origin.edge(0);
    let path = format!("/live/0/{}", edge + 1);
    let mut viewers = JoinSet::new();
    for i in 0..10 {
        let (addr, o, p) = (child.addr, origin.addr, path.clone());
        viewers.spawn(async move {
            if i % 2 == 0 {
                h1(addr, proxy_get(o, &p)).await
            } else {
                h2(addr, proxy_get(o, &p)).await
            }
        });
    }
    until(LONG, "first bytes relayed", || {
        child.relay.metrics.bytes_in.get() > 0
    })
    .await;
    parent.kill();
    while let Some(got) = viewers.join_next().await {
        if let Ok(got) = got.unwrap() {
            assert!(got.body.is_err(), "truncated chunk passed as complete");
        }
    }
    assert_eq!(child.relay.cache().usage().entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_are_detected() {
    let origin = manual_origin().await;
    // Two relays that name each other as parent: both listeners are bound
    // first, so each address can go into the other's config.
    let (la, lb) = (loopback(), loopback());
    let (pa, pb) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut ca = relay_config(&origin.url());
    ca.id = Some("relay-a".into());
    ca.upstream = vec![format!("http://{pb}")];
    let mut cb = relay_config(&origin.url());
    cb.id = Some("relay-b".into());
    cb.upstream = vec![format!("http://{pa}")];
    let a = relay_on(ca, la).await;
    let _b = relay_on(cb, lb).await;
    assert_eq!((a.addr, a.relay.config.listen), (pa, pa));
    // a asks b, b asks a, a answers b 508; a parent's 5xx (508 included)
    // makes b try its next source, the origin, so the loop ends after one
    // origin request and the viewer is served.
    let got = h1(a.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(origin.requests("/vod/1"), 1);

    let req = Request::get(format!("http://{}/vod/1", origin.addr))
        .header("via", "1.1 other, 1.1 relay-a")
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        h1(a.addr, req).await.unwrap().status,
        StatusCode::LOOP_DETECTED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_forms_protocols_origins_range_and_no_store() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;
    let expect = chunk_bytes(u64::MAX, 3, 64 * 1024, 0);
    let host_form = || {
        Request::get("/vod/3")
            .header("host", o.to_string())
            .body(Empty::new())
            .unwrap()
    };
    let mut seen = Vec::new();
    let first = h1(r.addr, proxy_get(o, "/vod/3")).await;
    // The viewer can have the last byte a moment before the fill sees the
    // upstream body end and moves the chunk into the cache; a request in
    // that moment is (correctly) COALESCED, so wait for the move.
    until(LONG, "the fill retired", || {
        r.relay.metrics.open_slots.get() == 0
    })
    .await;
    for (name, got) in [
        ("h1 absolute", first),
        ("h1 host", h1(r.addr, host_form()).await),
        ("h1 path", h1(r.addr, path_get(o, "/vod/3")).await),
        ("h2 authority", h2(r.addr, proxy_get(o, "/vod/3")).await),
        (
            "h2 path",
            h2(
                r.addr,
                Request::get(format!("http://{}/mlcache/{o}/vod/3", r.addr))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await,
        ),
    ] {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{name}");
        assert_eq!(got.bytes(), &expect, "{name}");
        seen.push(got.x_cache().to_string());
    }
    assert_eq!(seen, ["MISS", "HIT", "HIT", "HIT", "HIT"]);
    assert_eq!(origin.requests("/vod/3"), 1);

    // Not on the allow-list, or not named at all.
    let denied = h1(r.addr, proxy_get("127.0.0.1:1".parse().unwrap(), "/vod/3"))
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(denied.bytes()).contains("not allowed"));
    let denied = h2(
        r.addr,
        Request::get("http://example.com/x")
            .body(Empty::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let unnamed = h1(r.addr, Request::get("/x").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(unnamed.status, StatusCode::BAD_REQUEST);
    let post = h1(
        r.addr,
        Request::post(format!("http://{o}/vod/3"))
            .body(Empty::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);

    // Range on the cached object.
    let ranged = |spec: &'static str| {
        Request::get(format!("http://{o}/vod/3"))
            .header("range", spec)
            .body(Empty::new())
            .unwrap()
    };
    let got = h1(r.addr, ranged("bytes=100-199")).await.unwrap();
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.bytes(), &expect.slice(100..200));
    assert_eq!(got.headers["content-range"], "bytes 100-199/65536");
    let got = h2(r.addr, ranged("bytes=-10")).await.unwrap();
    assert_eq!(got.bytes(), &expect.slice(65526..));
    assert_eq!(
        h1(r.addr, ranged("bytes=70000-")).await.unwrap().status,
        StatusCode::RANGE_NOT_SATISFIABLE
    );

    // no-store is never cached; max-age is, and Age is set.
    for _ in 0..2 {
        let got = h1(r.addr, proxy_get(o, "/vod/4?cc=no-store"))
            .await
            .unwrap();
        assert_eq!(got.x_cache(), "MISS");
    }
    assert_eq!(origin.requests("/vod/4?cc=no-store"), 2);
    let hit = h1(r.addr, proxy_get(o, "/vod/3")).await.unwrap();
    assert!(hit.headers.contains_key("age"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_viewer_does_not_delay_a_fast_one() {
    // A chunk far larger than socket buffers, so a reader that stops reading
    // really blocks its connection.
    let origin = origin_with(|c| {
        c.hold = LONG;
        c.chunk_size = 32 << 20;
    })
    .await;
    let r = relay(relay_config(&origin.url())).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(r.addr).await.unwrap();
    slow.write_all(
        format!(
            "GET http://{}/live/0/0 HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    until(LONG, "slow viewer parked", || r.relay.parked() == 1).await;
    let fast = tokio::spawn({
        let (a, o) = (r.addr, origin.addr);
        async move { h1(a, proxy_get(o, "/live/0/0")).await }
    });
    until(LONG, "fast viewer parked", || r.relay.parked() == 2).await;
    origin.publish(0);
    let got = tokio::time::timeout(LONG, fast)
        .await
        .expect("fast viewer finished")
        .unwrap()
        .unwrap();
    assert_eq!(got.bytes().len(), 32 << 20);
    // The slow viewer is still attached, far from done, while the fast one
    // has everything.
    assert_eq!(r.relay.parked(), 1);
    drop(slow);
    until(LONG, "slow viewer released", || r.relay.parked() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_is_repolled_once_for_all_waiting_viewers() {
    let origin = origin_with(|c| c.hold = Duration::from_millis(100)).await;
    let r = relay(relay_config(&origin.url())).await;
    let started = Instant::now();
    let mut viewers = JoinSet::new();
    for _ in 0..50 {
        let (a, o) = (r.addr, origin.addr);
        viewers.spawn(async move { h1(a, proxy_get(o, "/live/0/0")).await });
    }
    until(LONG, "several upstream re-polls", || {
        origin.requests("/live/0/0") >= 4
    })
    .await;
    origin.publish(0);
    while let Some(got) = viewers.join_next().await {
        assert_eq!(got.unwrap().unwrap().status, StatusCode::OK);
    }
    // One poll at a time, each held ~100 ms: the count follows time, not viewers.
    let polls = origin.requests("/live/0/0");
    let bound = started.elapsed().as_millis() as u64 / 100 + 2;
    assert!(polls <= bound, "{polls} polls in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_wait_ends_in_not_yet_then_timeout() {
    let origin = origin_with(|c| c.hold = Duration::from_millis(50)).await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_wait = Duration::from_millis(300);
    let r = relay(cfg).await;
    let got = h1(r.addr, proxy_get(origin.addr, "/live/0/2"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(got.headers.contains_key(mlcache::protocol::NOT_YET_HEADER));
    // An origin that never answers in time is a 504, not a "not yet".
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/1?delay_head_ms=3000"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_rejected_total{reason=\"wait_time\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_404_origin_sees_bounded_poll_rate() {
    let origin = origin_with(|c| c.plain = true).await;
    let mut cfg = relay_config(&origin.url());
    cfg.negative_ttl = Duration::from_millis(200);
    let r = relay(cfg).await;
    let started = Instant::now();
    let mut viewers = JoinSet::new();
    for _ in 0..100 {
        let (a, o) = (r.addr, origin.addr);
        viewers.spawn(async move {
            let mut n = 0;
            // Bounded: 1 s of polling at most.
            while started.elapsed() < Duration::from_secs(1) {
                let got = h1(a, proxy_get(o, "/live/0/0")).await.unwrap();
                assert_eq!(got.status, StatusCode::NOT_FOUND);
                assert!(!got.headers.contains_key(mlcache::protocol::NOT_YET_HEADER));
                n += 1;
            }
            n
        });
    }
    let mut client_polls = 0;
    while let Some(n) = viewers.join_next().await {
        client_polls += n.unwrap();
    }
    let origin_polls = origin.requests("/live/0/0");
    let bound = started.elapsed().as_millis() as u64 / 200 + 2;
    assert!(client_polls > 200, "viewers polled {client_polls} times");
    assert!(
        origin_polls <= bound,
        "origin saw {origin_polls} polls (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_431_503_and_count() {
    let origin = origin_with(held_origin).await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_header_size = bytesize::ByteSize::kib(2);
    cfg.max_viewers_per_slot = 2;
    let r = relay(cfg).await;
    let big = Request::get(format!("http://{}/vod/1", origin.addr))
        .header("x-big", "a".repeat(4096))
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        h1(r.addr, big).await.unwrap().status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    let mut viewers = JoinSet::new();
    for _ in 0..2 {
        let (a, o) = (r.addr, origin.addr);
        viewers.spawn(async move { h1(a, proxy_get(o, "/live/0/0")).await });
    }
    until(LONG, "slot full", || r.relay.parked() == 2).await;
    let third = h1(r.addr, proxy_get(origin.addr, "/live/0/0"))
        .await
        .unwrap();
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers.contains_key("retry-after"));
    origin.publish(0);
    while let Some(got) = viewers.join_next().await {
        assert_eq!(got.unwrap().unwrap().status, StatusCode::OK);
    }
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_rejected_total{reason=\"slot_viewers\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "mlcache_rejected_total{reason=\"header_size\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503() {
    let origin = origin_with(held_origin).await;
    let mut cfg = relay_config(&origin.url());
    cfg.max_connections = 2;
    let r = relay(cfg).await;
    // Two viewers waiting for a live chunk take both places. (Idle
    // connections would give theirs up: see tests/hostile_conn.rs.)
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (a, o) = (r.addr, origin.addr);
            tokio::spawn(async move { h1(a, proxy_get(o, "/live/0/0")).await })
        })
        .collect();
    until(LONG, "both places taken", || {
        r.relay.metrics.connections.get() == 2 && r.relay.parked() == 2
    })
    .await;
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(got.headers.contains_key("retry-after"));
    assert_eq!(origin.requests("/vod/1"), 0);
    origin.publish(0);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().status, StatusCode::OK);
    }
    until(LONG, "places freed", || {
        r.relay.metrics.connections.get() == 0
    })
    .await;
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_inflight_bodies_finish_then_exits_zero() {
    let origin = origin_with(held_origin).await;
    let mut relay =
        TestProcess::relay(&["--allow-origin", &origin.url(), "--shutdown-grace", "20s"]);
    let viewer = tokio::spawn({
        let (a, o) = (relay.addr, origin.addr);
        async move { h1(a, proxy_get(o, "/live/0/0")).await }
    });
    let admin = relay.admin();
    let deadline = Instant::now() + LONG;
    while metric(admin, "mlcache_parked_viewers").await < 1.0 {
        assert!(Instant::now() < deadline, "viewer never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.sigterm();
    // Accepting stops, so a new connection is refused once the listener closes.
    let deadline = Instant::now() + LONG;
    while tokio::net::TcpStream::connect(relay.addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    origin.publish(0);
    let got = viewer.await.unwrap().unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes().len(), 64 * 1024);
    let status = tokio::task::spawn_blocking(move || {
        let s = relay.child.wait().unwrap();
        std::mem::forget(relay);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_next_is_prefetched_only_while_the_stream_has_viewers() {
    let origin = origin_with(held_origin).await;
    let r = relay(relay_config(&origin.url())).await;
    let first = tokio::spawn({
        let (a, o) = (r.addr, origin.addr);
        async move { h1(a, proxy_get(o, "/live/0/0")).await }
    });
    until(LONG, "viewer parked", || r.relay.parked() == 1).await;
    origin.publish(0);
    assert_eq!(first.await.unwrap().unwrap().status, StatusCode::OK);
    // Chunk 0 had a viewer and named chunk 1 as next: its long-poll starts
    // with no viewer asking.
    until(LONG, "prefetch of chunk 1", || {
        origin.requests("/live/0/1") == 1
    })
    .await;
    // A viewer that now asks for chunk 1 joins that long-poll.
    let second = tokio::spawn({
        let (a, o) = (r.addr, origin.addr);
        async move { h1(a, proxy_get(o, "/live/0/1")).await }
    });
    until(LONG, "viewer joined the prefetch", || r.relay.parked() == 1).await;
    origin.publish(0);
    let got = second.await.unwrap().unwrap();
    assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "COALESCED"));
    assert_eq!(origin.requests("/live/0/1"), 1);
    // Chunk 1 had a viewer, so chunk 2 is prefetched too; chunk 2 then
    // arrives with nobody watching, so the chain stops there.
    until(LONG, "prefetch of chunk 2", || {
        origin.requests("/live/0/2") == 1
    })
    .await;
    origin.publish(0);
    until(LONG, "every slot retired", || {
        r.relay.metrics.open_slots.get() == 0
    })
    .await;
    assert_eq!(origin.requests("/live/0/3"), 0, "no viewers, no prefetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_4xx_and_never_kills_the_relay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;
    let text = |s: String| s.into_bytes();
    let mut bad_via = text(format!("GET /x HTTP/1.1\r\nHost: {o}\r\nVia: "));
    bad_via.extend_from_slice(b"\xff\xfe\r\n\r\n");
    // (request bytes, expected start of the answer)
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x00\x01\x02garbage\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            b"GET ftp://x/y HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "HTTP/1.1 403",
        ),
        (
            b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n".to_vec(),
            "HTTP/1.1 405",
        ),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 4"),
        (
            b"GET /mlcache/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            b"GET /mlcache//x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            text(format!(
                "GET /mlcache/{o}/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"
            )),
            "HTTP/1.1 400",
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: [::1\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (bad_via, "HTTP/1.1 "),
        (
            text(format!(
                "GET /x HTTP/1.1\r\nHost: {o}\r\nX: {}\r\n\r\n",
                "a".repeat(100_000)
            )),
            "HTTP/1.1 431",
        ),
        (
            text(format!(
                "GET /vod/1 HTTP/1.1\r\nHost: {o}\r\nRange: bytes=99999999999999999999-\r\n\r\n"
            )),
            "HTTP/1.1 200",
        ),
    ];
    for (req, expect) in cases {
        let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
        let _ = s.write_all(&req).await;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(LONG, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            head.starts_with(expect),
            "{:?} -> {head:?}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
    }
    // A broken HTTP/2 preface is closed at the protocol level, never answered 2xx.
    let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(LONG, s.read(&mut buf)).await.unwrap();
    // Still serving.
    let got = h1(r.addr, proxy_get(o, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_refusing_connections_is_a_502_not_a_hang() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    origin.set_refuse(true);
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(got.bytes()).contains("upstream unavailable"));
    origin.set_refuse(false);
    let got = h1(r.addr, proxy_get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
}
