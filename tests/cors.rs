//! CORS and Age through real relay processes: the relay answers preflights
//! with `--cors` (405 without), adds Access-Control-Allow-Origin and
//! -Expose-Headers where the origin did not (errors included), passes an
//! origin's own CORS headers through unchanged, and sets Age on responses
//! served from a fill, not only on hits.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

const LONG: Duration = Duration::from_secs(30);

fn get(origin: SocketAddr, path: &str, page: Option<&str>) -> Request<Empty<Bytes>> {
    let mut r = Request::get(format!("/mlcache/{origin}{path}")).header("host", "relay");
    if let Some(p) = page {
        r = r.header("origin", p);
    }
    r.body(Empty::new()).unwrap()
}

fn preflight(origin: SocketAddr, page: &str) -> Request<Empty<Bytes>> {
    Request::options(format!("/mlcache/{origin}/live/0/0"))
        .header("host", "relay")
        .header("origin", page)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .body(Empty::new())
        .unwrap()
}

fn header<'a>(got: &'a Got, name: &str) -> &'a str {
    got.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// An HTTP/1.1 origin that answers every request 200 with its own
/// `Access-Control-Allow-Origin`, as a CORS-aware web server does.
async fn cors_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("access-control-allow-origin", "https://own.example")
                            .header("cache-control", "max-age=60")
                            .body(Full::new(Bytes::from_static(b"hello")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_is_answered_by_the_relay_with_cors_and_refused_without() {
    let origin = manual_origin().await;
    let url = origin.url();
    let any = TestProcess::relay(&["--allow-origin", &url, "--cors", "*"]);
    let got = h1(any.addr, preflight(origin.addr, "https://player.example"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&got, "access-control-allow-origin"), "*");
    assert_eq!(
        header(&got, "access-control-allow-methods"),
        "GET, HEAD, OPTIONS"
    );
    assert_eq!(header(&got, "access-control-allow-headers"), "range");
    assert!(
        header(&got, "access-control-max-age")
            .parse::<u32>()
            .unwrap()
            > 0
    );
    assert_eq!(
        origin.requests_total(),
        0,
        "a preflight never goes upstream"
    );

    let listed = TestProcess::relay(&["--allow-origin", &url, "--cors", "https://player.example"]);
    let got = h1(
        listed.addr,
        preflight(origin.addr, "https://player.example"),
    )
    .await
    .unwrap();
    assert_eq!(
        header(&got, "access-control-allow-origin"),
        "https://player.example"
    );
    assert_eq!(header(&got, "vary"), "Origin");
    let got = h1(listed.addr, preflight(origin.addr, "https://evil.example"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert!(!got.headers.contains_key("access-control-allow-origin"));

    let off = TestProcess::relay(&["--allow-origin", &url]);
    let got = h1(off.addr, preflight(origin.addr, "https://player.example"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(got.headers["allow"], "GET, HEAD");
    assert!(!got.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_response_carries_age_and_the_exposed_headers() {
    let origin = origin_with(|c| c.hold = LONG).await;
    let url = origin.url();
    let relay = TestProcess::relay(&["--allow-origin", &url, "--cors", "*"]);
    let mut viewers = JoinSet::new();
    for _ in 0..2 {
        let (a, o) = (relay.addr, origin.addr);
        viewers.spawn(async move { h1(a, get(o, "/live/0/0", Some("https://p.example"))).await });
    }
    let deadline = Instant::now() + LONG;
    while metric(relay.admin(), "mlcache_parked_viewers").await < 2.0 {
        assert!(Instant::now() < deadline, "viewers never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    origin.publish(0);
    let mut seen = Vec::new();
    while let Some(got) = viewers.join_next().await {
        let got = got.unwrap().unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            header(&got, "age").parse::<u64>().is_ok(),
            "Age on a {} response: {:?}",
            got.x_cache(),
            got.headers
        );
        assert_eq!(header(&got, "access-control-allow-origin"), "*");
        let exposed = header(&got, "access-control-expose-headers");
        assert!(exposed.contains("Age") && exposed.contains("Date"));
        seen.push(got.x_cache().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["COALESCED", "MISS"]);
    assert_eq!(origin.requests("/live/0/0"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_own_cors_headers_pass_through_unchanged() {
    let origin = cors_origin().await;
    let url = format!("http://{origin}");
    for extra in [&["--cors", "*"][..], &[][..]] {
        let mut args = vec!["--allow-origin", url.as_str()];
        args.extend_from_slice(extra);
        let relay = TestProcess::relay(&args);
        for expect in ["MISS", "HIT"] {
            let got = h1(relay.addr, get(origin, "/a", Some("https://p.example")))
                .await
                .unwrap();
            assert_eq!(got.x_cache(), expect);
            assert_eq!(got.bytes().as_ref(), b"hello");
            assert_eq!(
                header(&got, "access-control-allow-origin"),
                "https://own.example"
            );
            // The expose list is the relay's only with --cors.
            assert_eq!(
                got.headers.contains_key("access-control-expose-headers"),
                !extra.is_empty()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_errors_carry_cors_headers_too() {
    let dead = DeadPort::new();
    let url = format!("http://{}", dead.addr);
    let relay = TestProcess::relay(&["--allow-origin", &url, "--cors", "*"]);
    let got = h1(
        relay.addr,
        get(dead.addr, "/live/0/0", Some("https://p.example")),
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(header(&got, "access-control-allow-origin"), "*");
    // Not on the allow-list: 403, readable by the player too.
    let got = h1(
        relay.addr,
        get(
            "127.0.0.1:9".parse().unwrap(),
            "/x",
            Some("https://p.example"),
        ),
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(header(&got, "access-control-allow-origin"), "*");
}
