//! The relay over TLS, with real relay processes: h2 and HTTP/1.1 by ALPN on
//! one port, relay → relay over https with `--upstream-ca` (and a clean
//! refusal when the CA does not match), certificate reload on SIGHUP (an
//! open h2 connection keeps streaming across it; a broken file is refused),
//! and the handshake timeout against a silent client.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Empty;
use tokio::io::AsyncReadExt;

const LONG: Duration = Duration::from_secs(30);

fn get(origin: std::net::SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("/mlcache/{origin}{path}"))
        .header("host", "relay")
        .body(Empty::new())
        .unwrap()
}

fn h2_get(origin: std::net::SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("https://relay/mlcache/{origin}{path}"))
        .body(Empty::new())
        .unwrap()
}

fn held(cfg: &mut mlcache::origin::OriginConfig) {
    cfg.hold = LONG;
}

fn tls_args<'a>(certs: &'a CertFiles, origin: &'a str) -> Vec<&'a str> {
    vec![
        "--allow-origin",
        origin,
        "--tls-cert",
        CertFiles::path(&certs.cert),
        "--tls-key",
        CertFiles::path(&certs.key),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_are_negotiated_by_alpn_on_one_port() {
    let origin = origin_with(|c| c.vod_chunks = 4).await;
    let certs = CertFiles::generate("alpn");
    let url = origin.url();
    let (relay, tls) = TestProcess::relay_tls(&tls_args(&certs, &url));

    let one = h1_tls(tls, &certs.ca_pem, get(origin.addr, "/vod/1"))
        .await
        .unwrap();
    assert_eq!(one.status, StatusCode::OK);
    let mut h2 = h2_tls_conn(tls, &certs.ca_pem).await.unwrap();
    let two = h2_send(&mut h2, h2_get(origin.addr, "/vod/1"))
        .await
        .unwrap();
    assert_eq!(two.status, StatusCode::OK);
    assert_eq!(one.bytes(), two.bytes());
    assert_eq!(two.x_cache(), "HIT");
    // The clear port still serves beside it.
    let three = h1(relay.addr, get(origin.addr, "/vod/1")).await.unwrap();
    assert_eq!(three.bytes(), one.bytes());
    // A client that does not trust the relay's CA is refused by TLS.
    let other = CertFiles::generate("alpn-other");
    assert!(tls_connect(tls, &other.ca_pem, &[b"h2"]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_relay_over_https_with_upstream_ca() {
    let origin = origin_with(held).await;
    let certs = CertFiles::generate("parent");
    let url = origin.url();
    let (a, a_tls) = TestProcess::relay_tls(&tls_args(&certs, &url));
    let parent = format!("https://127.0.0.1:{}", a_tls.port());
    let b = TestProcess::relay(&[
        "--allow-origin",
        &url,
        "--upstream",
        &parent,
        "--upstream-ca",
        CertFiles::path(&certs.ca),
    ]);
    let viewer = tokio::spawn({
        let (addr, o) = (b.addr, origin.addr);
        async move { h1(addr, get(o, "/live/0/0")).await }
    });
    // B's long-poll is held at A, over its TLS connection.
    let a_admin = a.admin();
    let deadline = Instant::now() + LONG;
    while metric(a_admin, "mlcache_parked_viewers").await < 1.0 {
        assert!(Instant::now() < deadline, "B never reached A");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    origin.publish(0);
    let got = viewer.await.unwrap().unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.bytes()[8..16], &0u64.to_be_bytes());
    assert_eq!(origin.requests("/live/0/0"), 1, "only A asked the origin");
    let via = got.headers.get_all("via").iter().count();
    assert_eq!(via, 2, "through both relays: {:?}", got.headers);
    assert_eq!(
        metric(
            b.admin(),
            "mlcache_upstream_fetches_total{target=\"parent\",result=\"ok\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_with_an_untrusted_certificate_is_an_error_not_a_hang() {
    let certs = CertFiles::generate("bad-parent");
    let wrong = CertFiles::generate("wrong-ca");
    // The origin is dead too, so the fallback after the parent fails.
    let dead = DeadPort::new();
    let url = format!("http://{}", dead.addr);
    let (_a, a_tls) = TestProcess::relay_tls(&tls_args(&certs, &url));
    let parent = format!("https://127.0.0.1:{}", a_tls.port());
    let b = TestProcess::relay(&[
        "--allow-origin",
        &url,
        "--upstream",
        &parent,
        "--upstream-ca",
        CertFiles::path(&wrong.ca),
    ]);
    let started = Instant::now();
    let got = tokio::time::timeout(LONG, h1(b.addr, get(dead.addr, "/live/0/0")))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        metric(
            b.admin(),
            "mlcache_upstream_fetches_total{target=\"parent\",result=\"tls_error\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_a_stream() {
    let origin = origin_with(held).await;
    let first = CertFiles::generate("reload-1");
    let second = CertFiles::generate("reload-2");
    let url = origin.url();
    let (relay, tls) = TestProcess::relay_tls(&tls_args(&first, &url));

    // An h2 connection made with the first certificate parks a long-poll.
    let mut old = h2_tls_conn(tls, &first.ca_pem).await.unwrap();
    let req = h2_get(origin.addr, "/live/0/0");
    let pending = tokio::spawn({
        let mut send = old.clone();
        async move { h2_send(&mut send, req).await }
    });
    let deadline = Instant::now() + LONG;
    while metric(relay.admin(), "mlcache_parked_viewers").await < 1.0 {
        assert!(Instant::now() < deadline, "viewer never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Renew: new files, SIGHUP.
    second.install(&first.cert, &first.key);
    relay.signal("-HUP");
    until(LONG, "reload logged", || {
        relay.logged("TLS certificate reloaded")
    })
    .await;

    // New connections get the new certificate, and only it.
    assert!(tls_connect(tls, &second.ca_pem, &[b"h2"]).await.is_ok());
    assert!(tls_connect(tls, &first.ca_pem, &[b"h2"]).await.is_err());

    // The old connection's stream completes exactly, and the connection
    // still carries new requests.
    origin.publish(0);
    let got = pending.await.unwrap().unwrap();
    assert_eq!(got.status, StatusCode::OK);
    let body = got.bytes();
    assert_eq!(body.len(), 64 * 1024);
    assert_eq!(&body[8..16], &0u64.to_be_bytes());
    let again = h2_send(&mut old, h2_get(origin.addr, "/live/0/0"))
        .await
        .unwrap();
    assert_eq!(again.bytes(), body);
    assert_eq!(again.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_on_sighup_is_refused_and_the_old_one_stays() {
    let origin = origin_with(|c| c.vod_chunks = 2).await;
    let certs = CertFiles::generate("broken");
    let url = origin.url();
    let (relay, tls) = TestProcess::relay_tls(&tls_args(&certs, &url));
    std::fs::write(&certs.cert, "-----BEGIN CERTIFICATE-----\nnot a cert\n").unwrap();
    relay.signal("-HUP");
    until(LONG, "refusal logged", || {
        relay.logged("TLS certificate reload refused")
    })
    .await;
    // A key that does not match the certificate is refused too.
    let other = CertFiles::generate("broken-other");
    std::fs::write(&certs.cert, &certs.cert_pem).unwrap();
    std::fs::write(&certs.key, &other.key_pem).unwrap();
    relay.signal("-HUP");
    until(LONG, "second refusal logged", || {
        relay
            .log
            .lock()
            .iter()
            .filter(|l| l.contains("TLS certificate reload refused"))
            .count()
            == 2
    })
    .await;
    let got = h1_tls(tls, &certs.ca_pem, get(origin.addr, "/vod/0"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    let mut relay = relay;
    assert!(relay.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_client_is_closed_by_the_handshake_timeout() {
    let certs = CertFiles::generate("silent");
    let (relay, tls) = TestProcess::relay_tls(&[
        "--allow-origin",
        "http://127.0.0.1:1",
        "--tls-cert",
        CertFiles::path(&certs.cert),
        "--tls-key",
        CertFiles::path(&certs.key),
        "--tls-handshake-timeout",
        "300ms",
        // Not the idle timeout doing it.
        "--idle-timeout",
        "60s",
    ]);
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed by the relay")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    assert_eq!(
        metric(
            relay.admin(),
            "mlcache_connections_closed_total{reason=\"tls_handshake_timeout\"}"
        )
        .await,
        1.0
    );
}

/// Connections stalled in their TLS handshake hold places under
/// `max-connections` like idle ones, and like idle ones they give them up to
/// new viewers: a flood of them cannot lock TLS viewers out for a whole
/// handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_give_their_places_to_new_viewers() {
    let origin = origin_with(|c| c.vod_chunks = 4).await;
    let certs = CertFiles::generate("stalled");
    let url = origin.url();
    let mut args = tls_args(&certs, &url);
    args.extend(["--max-connections", "8", "--tls-handshake-timeout", "60s"]);
    let (relay, tls) = TestProcess::relay_tls(&args);
    // Every place taken by a connection that never starts its handshake.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(tokio::net::TcpStream::connect(tls).await.unwrap());
    }
    let admin = relay.admin();
    let mut open = 0.0;
    for _ in 0..200 {
        open = metric(admin, "mlcache_connections").await;
        if open >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open, 8.0, "the stalled connections hold every place");
    // Real viewers still get in (the first by displacing a stalled one).
    for _ in 0..3 {
        let got = h1_tls(tls, &certs.ca_pem, get(origin.addr, "/vod/1"))
            .await
            .expect("a TLS viewer gets in at the cap");
        assert_eq!(got.status, StatusCode::OK);
    }
    assert!(
        metric(
            admin,
            "mlcache_connections_closed_total{reason=\"reclaimed\"}"
        )
        .await
            >= 1.0
    );
}
