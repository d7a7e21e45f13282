//! `--hold-404`: a plain origin (answers 404 until the object exists) made
//! live through the relay. Real servers on loopback sockets: an in-test plain
//! origin that counts every request with its time, in-process relays, and a
//! real nginx serving ffmpeg's live HLS output.
//!
//! The bound checked throughout: while viewers are held, the origin sees at
//! most one request per key per `--repoll-interval` (plus the first and
//! one in flight), however many viewers wait, and none once they have gone.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::nginx::{require, segments, LiveHls, Nginx, TempDir};
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mlcache::protocol::NOT_YET_HEADER;
use parking_lot::Mutex;
use tokio::task::JoinSet;

const LONG: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(100);

/// An HTTP/1.1 origin that knows nothing of mlcache: `200` with the bytes of
/// a published path, plain `404` for anything else. It records every
/// request's path and arrival time.
#[derive(Clone, Default)]
struct PlainOrigin {
    published: Arc<Mutex<HashMap<String, Bytes>>>,
    log: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl PlainOrigin {
    async fn start() -> (PlainOrigin, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = PlainOrigin::default();
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let o = o.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            o.log.lock().push((path.clone(), Instant::now()));
                            let body = o.published.lock().get(&path).cloned();
                            Ok::<_, Infallible>(match body {
                                Some(b) => {
                                    let mut resp = Response::new(Full::new(b));
                                    // `/p/N` names its successor, so the
                                    // relay prefetches it.
                                    if let Some(n) =
                                        path.strip_prefix("/p/").and_then(|n| n.parse::<u64>().ok())
                                    {
                                        let link = format!("<{}>; rel=\"next\"", n + 1);
                                        resp.headers_mut().insert("link", link.parse().unwrap());
                                    }
                                    resp
                                }
                                None => Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .header("content-type", "text/plain")
                                    .body(Full::new(Bytes::from_static(b"no such file\n")))
                                    .unwrap(),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (origin, addr)
    }

    fn publish(&self, path: &str, body: Bytes) {
        self.published.lock().insert(path.to_owned(), body);
    }

    /// Requests for `path` so far.
    fn requests(&self, path: &str) -> usize {
        self.log.lock().iter().filter(|(p, _)| p == path).count()
    }

    /// The largest number of requests for `path` in any window of `window`.
    fn busiest(&self, path: &str, window: Duration) -> usize {
        let times: Vec<Instant> = self
            .log
            .lock()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.duration_since(times[i]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

/// A relay in front of `origin` with `--hold-404 hold --repoll-interval 100ms`.
fn hold_config(origin: SocketAddr, hold: Duration) -> mlcache::Config {
    let mut cfg = relay_config(&format!("http://{origin}"));
    cfg.hold_404 = hold;
    cfg.repoll_interval = INTERVAL;
    cfg
}

/// Viewer `i` asks `path` at `relay`: even ones over HTTP/1.1, odd ones over
/// h2c, each on its own connection.
fn viewers(relay: SocketAddr, origin: SocketAddr, path: &str, n: usize) -> JoinSet<Got> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let path = path.to_owned();
        set.spawn(async move {
            let req = proxy_get(origin, &path);
            if i % 2 == 0 {
                h1(relay, req).await
            } else {
                h2(relay, req).await
            }
            .unwrap()
        });
    }
    set
}

fn payload(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// The most requests a key may cost the origin over `elapsed`: one per
/// interval, the first, and one in flight.
fn bound(elapsed: Duration) -> usize {
    (elapsed.as_millis() / INTERVAL.as_millis()) as usize + 2
}

/// `n` viewers wait for `path`; it is published once the origin has been
/// polled `polls` times. Returns the origin's request count for `path`.
async fn held_until_published(n: usize, path: &str, polls: usize) -> usize {
    let (origin, oaddr) = PlainOrigin::start().await;
    let r = relay(hold_config(oaddr, Duration::from_secs(3))).await;
    let started = Instant::now();
    let mut set = viewers(r.addr, oaddr, path, n);
    until(LONG, "all viewers parked", || r.relay.parked() == n).await;
    until(LONG, "the origin re-polled", || {
        origin.requests(path) >= polls
    })
    .await;
    let body = payload(300_000, n as u8);
    origin.publish(path, body.clone());
    while let Some(got) = set.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes(), &body, "exact bytes");
    }
    let elapsed = started.elapsed();
    let count = origin.requests(path);
    assert!(
        count <= bound(elapsed),
        "{n} viewers: {count} origin requests in {elapsed:?}"
    );
    eprintln!("{n} viewers: {count} origin requests in {elapsed:?}");
    // Never two polls closer together than the interval allows.
    assert!(origin.busiest(path, INTERVAL / 4) <= 1, "polls bunched up");
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_holds_total{result=\"object\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "mlcache_upstream_repolls_total{reason=\"hold_404\"}").await,
        (count - 1) as f64
    );
    // Later viewers are hits: the object is cached like any fill.
    let got = h1(r.addr, proxy_get(oaddr, path)).await.unwrap();
    assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "HIT"));
    assert_eq!(origin.requests(path), count);
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_viewers_get_the_object_when_it_appears_at_a_bounded_poll_rate() {
    // Published after ~1 s of polling (10 polls at 100 ms).
    let fifty = held_until_published(50, "/hls/seg7.m4s", 10).await;
    let one = held_until_published(1, "/hls/seg7.m4s", 10).await;
    // The same polls for 1 viewer as for 50: the count follows time only.
    assert!(
        fifty.abs_diff(one) <= 3,
        "50 viewers cost {fifty} polls, 1 viewer {one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_runs_out_sends_the_404_to_every_viewer() {
    let (origin, oaddr) = PlainOrigin::start().await;
    let hold = Duration::from_secs(1);
    let mut cfg = hold_config(oaddr, hold);
    cfg.negative_ttl = Duration::from_secs(30);
    let r = relay(cfg).await;
    let path = "/hls/seg99.m4s";
    let started = Instant::now();
    let mut set = viewers(r.addr, oaddr, path, 20);
    while let Some(got) = set.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        // The origin's own 404, not a "not yet".
        assert!(!got.headers.contains_key(NOT_YET_HEADER));
        assert_eq!(got.bytes().as_ref(), b"no such file\n");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= hold,
        "answered after {elapsed:?}, before the hold ended"
    );
    let count = origin.requests(path);
    assert!(count >= 5, "only {count} polls: the relay did not hold");
    assert!(count <= bound(elapsed), "{count} polls in {elapsed:?}");
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_holds_total{result=\"not_found\"}").await,
        1.0
    );
    // The final 404 is cached by the negative-caching rules (no
    // Cache-Control: --negative-ttl): the next viewer is a hit, no poll.
    let got = h2(r.addr, proxy_get(oaddr, path)).await.unwrap();
    assert_eq!((got.status, got.x_cache()), (StatusCode::NOT_FOUND, "HIT"));
    assert_eq!(origin.requests(path), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_when_every_viewer_has_left() {
    let (origin, oaddr) = PlainOrigin::start().await;
    let r = relay(hold_config(oaddr, Duration::from_secs(15))).await;
    let path = "/hls/seg3.m4s";
    let mut set = viewers(r.addr, oaddr, path, 20);
    until(LONG, "20 viewers parked", || r.relay.parked() == 20).await;
    until(LONG, "the origin re-polled", || origin.requests(path) >= 4).await;
    // Every viewer disconnects mid-hold.
    set.abort_all();
    while set.join_next().await.is_some() {}
    until(LONG, "viewers released", || r.relay.parked() == 0).await;
    until(LONG, "the fill ended", || r.relay.flights.in_flight() == 0).await;
    let count = origin.requests(path);
    // A quiet period of 10 intervals: not one more poll.
    tokio::time::sleep(INTERVAL * 10).await;
    assert_eq!(origin.requests(path), count, "the origin is still polled");
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_holds_total{result=\"abandoned\"}").await,
        1.0
    );
    // Nothing was cached: a new viewer starts a new hold (and gets the
    // object once it exists).
    origin.publish(path, payload(1000, 3));
    let got = h1(r.addr, proxy_get(oaddr, path)).await.unwrap();
    assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_404_with_no_viewer_starts_no_hold() {
    let (origin, oaddr) = PlainOrigin::start().await;
    let r = relay(hold_config(oaddr, Duration::from_secs(5))).await;
    // /p/1 carries `Link: <2>; rel="next"`: the relay prefetches /p/2,
    // which the origin does not have yet.
    origin.publish("/p/1", payload(100, 1));
    let got = h1(r.addr, proxy_get(oaddr, "/p/1")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    until(LONG, "the prefetch asked", || origin.requests("/p/2") == 1).await;
    until(LONG, "the prefetch ended", || {
        r.relay.flights.in_flight() == 0
    })
    .await;
    // Nobody waited for it: one request, no re-poll, no hold.
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(origin.requests("/p/2"), 1);
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_upstream_repolls_total{reason=\"hold_404\"}").await,
        0.0
    );
    assert_eq!(
        metric(admin, "mlcache_holds_total{result=\"abandoned\"}").await,
        0.0
    );
    // Its 404 was not remembered: a viewer who comes now is held and gets
    // the object when it appears.
    let mut set = viewers(r.addr, oaddr, "/p/2", 1);
    until(LONG, "the viewer is held", || origin.requests("/p/2") >= 3).await;
    origin.publish("/p/2", payload(100, 2));
    let got = set.join_next().await.unwrap().unwrap();
    assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "MISS"));
    assert_eq!(
        metric(admin, "mlcache_holds_total{result=\"object\"}").await,
        1.0
    );
}

/// Two relays, B → A → plain origin, `--hold-404` on A only.
async fn two_tier(
    hold_on_b: bool,
) -> (PlainOrigin, SocketAddr, mlcache::Running, mlcache::Running) {
    let (origin, oaddr) = PlainOrigin::start().await;
    let a = relay(hold_config(oaddr, Duration::from_secs(2))).await;
    let mut cfg = relay_config(&format!("http://{oaddr}"));
    cfg.upstream = vec![format!("http://{}", a.addr)];
    cfg.repoll_interval = INTERVAL;
    if hold_on_b {
        cfg.hold_404 = Duration::from_secs(2);
    }
    let b = relay(cfg).await;
    (origin, oaddr, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_two_relays_a_holds_and_b_asks_once() {
    let (origin, oaddr, a, b) = two_tier(false).await;
    let path = "/hls/seg42.m4s";
    let started = Instant::now();
    let mut set = viewers(b.addr, oaddr, path, 30);
    until(LONG, "30 viewers parked on B", || b.relay.parked() == 30).await;
    until(LONG, "A re-polled the origin", || {
        origin.requests(path) >= 8
    })
    .await;
    let body = payload(200_000, 42);
    origin.publish(path, body.clone());
    while let Some(got) = set.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.bytes(), &body);
    }
    let elapsed = started.elapsed();
    let count = origin.requests(path);
    assert!(count <= bound(elapsed), "{count} polls in {elapsed:?}");
    // B sent one long-poll to A and re-polled nothing: A did the polling.
    let (ba, aa) = (b.admin.unwrap(), a.admin.unwrap());
    assert_eq!(
        metric(
            ba,
            "mlcache_upstream_fetches_total{target=\"parent\",result=\"ok\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(ba, "mlcache_upstream_repolls_total{reason=\"not_yet\"}").await,
        0.0
    );
    assert_eq!(
        metric(ba, "mlcache_upstream_repolls_total{reason=\"hold_404\"}").await,
        0.0
    );
    assert_eq!(
        metric(aa, "mlcache_holds_total{result=\"object\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_404_after_its_hold_is_final_below() {
    // B has --hold-404 too, but a parent's 404 comes after the parent's own
    // hold: B passes it on at once instead of holding (and polling) again.
    let (origin, oaddr, a, b) = two_tier(true).await;
    let path = "/hls/gone.m4s";
    let started = Instant::now();
    let mut set = viewers(b.addr, oaddr, path, 10);
    while let Some(got) = set.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert!(!got.headers.contains_key(NOT_YET_HEADER));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "B held again after A's hold: {elapsed:?}"
    );
    let count = origin.requests(path);
    assert!(count <= bound(elapsed), "{count} polls in {elapsed:?}");
    let (ba, aa) = (b.admin.unwrap(), a.admin.unwrap());
    assert_eq!(
        metric(aa, "mlcache_holds_total{result=\"not_found\"}").await,
        1.0
    );
    assert_eq!(
        metric(ba, "mlcache_upstream_repolls_total{reason=\"hold_404\"}").await,
        0.0
    );
    assert_eq!(
        metric(ba, "mlcache_holds_total{result=\"not_found\"}").await,
        0.0
    );
}

/// The segment number of `segN.m4s`.
fn seg_number(name: &str) -> Option<u64> {
    name.strip_prefix("seg")?.strip_suffix(".m4s")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serving_ffmpeg_hls_behaves_like_a_long_poll_origin() {
    if !require(&["nginx", "ffmpeg"]) {
        return;
    }
    let dir = TempDir::new("hls");
    let nginx = Nginx::serve(dir.path());
    let mut ffmpeg = LiveHls::start(dir.path(), Duration::from_secs(40));
    let mut cfg = relay_config(&nginx.url);
    cfg.hold_404 = Duration::from_secs(5);
    cfg.repoll_interval = INTERVAL;
    let r = relay(cfg).await;
    // The live edge: the newest segment in the playlist.
    until(LONG, "ffmpeg wrote a playlist with segments", || {
        !segments(&ffmpeg.playlist()).is_empty()
    })
    .await;
    assert!(ffmpeg.alive(), "ffmpeg is running");
    let playlist = ffmpeg.playlist();
    let (_, last) = segments(&playlist).pop().unwrap();
    let n = seg_number(&last).unwrap_or_else(|| panic!("segment name {last:?}"));
    let next: Vec<String> = (n + 1..=n + 2).map(|k| format!("seg{k}.m4s")).collect();
    // Viewers ask for the next two, not-yet segments by name.
    let started = Instant::now();
    let mut sets: Vec<JoinSet<Got>> = next
        .iter()
        .map(|name| viewers(r.addr, nginx.addr, &format!("/{name}"), 10))
        .collect();
    for (name, set) in next.iter().zip(sets.iter_mut()) {
        while let Some(got) = set.join_next().await {
            let got = got.unwrap();
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{name}: {:?}",
                nginx.error_log()
            );
            // Exactly the file ffmpeg wrote (still in the directory: the
            // playlist keeps 6 segments).
            let file = std::fs::read(dir.path().join(name)).expect("segment on disk");
            assert_eq!(got.bytes().as_ref(), file.as_slice(), "{name}: exact bytes");
        }
    }
    let elapsed = started.elapsed();
    for name in &next {
        let (count, not_found) = nginx.requests(&format!("/{name}"));
        eprintln!("{name}: nginx saw {count} requests ({not_found} × 404) in {elapsed:?}");
        assert!(not_found >= 1, "{name} was asked for before it existed");
        assert_eq!(count - not_found, 1, "{name}: one 200 for 20 viewers");
        assert!(
            count <= bound(elapsed),
            "{name}: {count} requests in {elapsed:?}"
        );
    }
}
