//! The status page and `/status.json` on the admin port, as an operator and a
//! script use them: a real tree (origin → relay A → relay B) with viewers on
//! B over HTTP/1.1 and HTTP/2, the JSON checked against `/metrics`, and the
//! page opened in headless Chromium (skipped without Chromium or Node, a
//! failure under CI) with the numbers it shows checked against both.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::Empty;
use serde_json::Value;
use tokio::task::JoinSet;

const LONG: Duration = Duration::from_secs(30);

fn admin_get(path: &str) -> Request<Empty<bytes::Bytes>> {
    Request::get(path)
        .header("host", "admin")
        .body(Empty::new())
        .unwrap()
}

async fn status(admin: SocketAddr) -> Value {
    let got = h1(admin, admin_get("/status.json")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-type"], "application/json");
    serde_json::from_slice(got.bytes()).expect("status.json parses")
}

async fn metrics(admin: SocketAddr) -> String {
    let got = h1(admin, admin_get("/metrics")).await.unwrap();
    String::from_utf8(got.bytes().to_vec()).unwrap()
}

/// One sample of a Prometheus text (0 when absent).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The tree with traffic paused: every viewer either finished or parked on
/// a chunk the origin holds back. Returns the viewers still parked.
struct Tree {
    origin: mlcache::origin::OriginHandle,
    a: mlcache::Running,
    b: mlcache::Running,
    parked: JoinSet<Result<Got, String>>,
}

async fn tree() -> Tree {
    let origin = origin_with(|c| c.hold = LONG).await;
    let a = relay(relay_config(&origin.url())).await;
    let mut cb = relay_config(&origin.url());
    cb.upstream = vec![format!("http://{}", a.addr)];
    let b = relay(cb).await;
    let o = origin.addr;
    // Five viewers (three h1, two h2) wait on B for chunk 0, then get it.
    let mut first = JoinSet::new();
    for i in 0..5 {
        let addr = b.addr;
        first.spawn(async move {
            if i < 3 {
                h1(addr, proxy_get(o, "/live/0/0")).await
            } else {
                h2(addr, proxy_get(o, "/live/0/0")).await
            }
        });
    }
    until(LONG, "five viewers parked on B", || b.relay.parked() == 5).await;
    origin.publish(0);
    while let Some(got) = first.join_next().await {
        assert_eq!(got.unwrap().unwrap().status, StatusCode::OK);
    }
    // Two late viewers hit B's cache. A viewer has its whole chunk (its
    // Content-Length) a moment before B's fill sees the upstream body end
    // and moves the chunk from its slot into the cache; a viewer in between
    // would be served from the slot (COALESCED).
    until(LONG, "chunk 0 in B's cache", || {
        let mut cached = false;
        b.relay
            .cache()
            .visit_recent(16, |k, _| cached |= k.path == "/live/0/0");
        cached
    })
    .await;
    for _ in 0..2 {
        let got = h2(b.addr, proxy_get(o, "/live/0/0")).await.unwrap();
        assert_eq!(got.x_cache(), "HIT");
    }
    // Four wait for chunk 1, which the origin holds back.
    let mut parked = JoinSet::new();
    for i in 0..4 {
        let addr = b.addr;
        parked.spawn(async move {
            if i % 2 == 0 {
                h1(addr, proxy_get(o, "/live/0/1")).await
            } else {
                h2(addr, proxy_get(o, "/live/0/1")).await
            }
        });
    }
    until(LONG, "four viewers parked on B, one on A", || {
        b.relay.parked() == 4 && a.relay.parked() == 1
    })
    .await;
    Tree {
        origin,
        a,
        b,
        parked,
    }
}

impl Tree {
    async fn finish(mut self) {
        self.origin.publish(0);
        while let Some(got) = self.parked.join_next().await {
            assert_eq!(got.unwrap().unwrap().status, StatusCode::OK);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_matches_metrics_across_a_tree() {
    let t = tree().await;
    let (a_admin, b_admin) = (t.a.admin.unwrap(), t.b.admin.unwrap());
    let s = status(b_admin).await;
    let m = metrics(b_admin).await;
    assert_eq!(s["parked_viewers"], 4);
    assert_eq!(
        s["parked_viewers"].as_f64().unwrap(),
        sample(&m, "mlcache_parked_viewers")
    );
    assert_eq!(
        s["open_flights"].as_f64().unwrap(),
        sample(&m, "mlcache_open_slots")
    );
    assert_eq!(s["open_flights"], 1);
    assert_eq!(
        s["cache"]["entries"].as_f64().unwrap(),
        sample(&m, "mlcache_cache_entries")
    );
    assert_eq!(s["cache"]["entries"], 1);
    assert_eq!(
        s["cache"]["bytes"].as_f64().unwrap(),
        sample(&m, "mlcache_cache_bytes")
    );
    // Every viewer of chunk 0 waited for it: five deliveries, all counted.
    assert_eq!(s["delivery"]["count"], 5);
    assert_eq!(sample(&m, "mlcache_delivery_seconds_count"), 5.0);
    let windows = s["delivery"]["windows"].as_array().unwrap();
    let in_windows: u64 = windows.iter().map(|w| w["count"].as_u64().unwrap()).sum();
    assert_eq!(in_windows, 5);
    assert!(windows[0]["p99"].as_f64().unwrap() >= windows[0]["p50"].as_f64().unwrap());
    assert!(windows[0]["max"].as_f64().unwrap() < LONG.as_secs_f64());
    for (field, result) in [("hit", "hit"), ("miss", "miss"), ("coalesced", "coalesced")] {
        assert_eq!(
            s["requests"][field].as_f64().unwrap(),
            sample(
                &m,
                &format!("mlcache_requests_total{{result=\"{result}\"}}")
            ),
            "{field}"
        );
    }
    // Counted when answered: chunk 0's one miss, four coalesced and two
    // hits; chunk 1's viewers are still waiting.
    assert_eq!(s["requests"]["miss"], 1);
    assert_eq!(s["requests"]["coalesced"], 4);
    assert_eq!(s["requests"]["hit"], 2);
    let ratio = s["requests"]["hit_ratio"].as_f64().unwrap();
    assert!((ratio - 6.0 / 7.0).abs() < 1e-9, "{ratio}");
    assert_eq!(
        s["memory"]["limit"].as_f64().unwrap(),
        sample(&m, "mlcache_memory_limit_bytes")
    );
    assert!(s["memory"]["used"].as_u64().unwrap() > 0);
    assert_eq!(
        s["bytes_out"].as_f64().unwrap(),
        sample(&m, "mlcache_bytes_out_total")
    );
    // The stream: four viewers on chunk 1 in flight, chunk 0 cached.
    assert_eq!(s["streams_total"], 1);
    let st = &s["streams"][0];
    assert_eq!(st["origin"], t.origin.addr.to_string());
    assert_eq!(st["path"], "/live/0/");
    assert_eq!(st["viewers"], 4);
    assert_eq!(st["open_flights"], 1);
    assert_eq!(st["cached"], 1);
    assert_eq!(st["newest"], "/live/0/1");
    assert_eq!(st["newest_in_flight"], true);
    assert_eq!(s["upstreams"][0]["url"], format!("http://{}", t.a.addr));
    assert_eq!(s["upstreams"][0]["up"], true);
    assert_eq!(s["id"], t.b.relay.id);

    // A sees B's one upstream request as one viewer and has no parents.
    let sa = status(a_admin).await;
    let ma = metrics(a_admin).await;
    assert_eq!(sa["parked_viewers"], 1);
    assert_eq!(sample(&ma, "mlcache_parked_viewers"), 1.0);
    assert_eq!(sa["streams"][0]["viewers"], 1);
    assert_eq!(sa["upstreams"].as_array().unwrap().len(), 0);
    assert_eq!(
        sa["delivery"]["count"].as_f64().unwrap(),
        sample(&ma, "mlcache_delivery_seconds_count")
    );

    // A parent that cannot be reached shows as down.
    let dead = DeadPort::new();
    let mut cc = relay_config(&t.origin.url());
    cc.upstream = vec![format!("http://{}", dead.addr)];
    let c = relay(cc).await;
    // The mark-down lasts PARENT_DOWN_BACKOFF (1 s): a slow machine may
    // read after it ended, so each try marks it down afresh (a cache miss).
    let mut seen = false;
    for n in 0..5 {
        let got = h1(c.addr, proxy_get(t.origin.addr, &format!("/vod/{n}")))
            .await
            .unwrap();
        assert_eq!(got.status, StatusCode::OK, "fell back to the origin");
        let sc = status(c.admin.unwrap()).await;
        let mc = metrics(c.admin.unwrap()).await;
        assert_eq!(sample(&mc, "mlcache_upstream_parents"), 1.0);
        if sc["upstreams"][0]["up"] == false && sample(&mc, "mlcache_upstream_parents_up") == 0.0 {
            seen = true;
            break;
        }
    }
    assert!(seen, "the dead parent never showed as down");
    assert_eq!(sample(&m, "mlcache_upstream_parents_up"), 1.0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_self_contained_html() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let admin = r.admin.unwrap();
    let got = h1(admin, admin_get("/")).await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-type"], "text/html; charset=utf-8");
    let csp = got.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = String::from_utf8(got.bytes().to_vec()).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    let lower = html.to_ascii_lowercase();
    for bad in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
        "@import",
    ] {
        assert!(
            !lower.contains(bad),
            "page references an external asset: {bad}"
        );
    }
    // Unknown admin paths stay 404; the page writes nothing.
    let got = h1(admin, admin_get("/status")).await.unwrap();
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    let got = h1(
        admin,
        Request::post("/status.json")
            .header("host", "admin")
            .body(Empty::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::OK, "read-only whatever the method");
}

/// A chunk path whose stream name would change if the page ever treated it
/// as markup (`&amp;` would show as `&`). `<`, `>` and `"` cannot reach a
/// relay in a request target at all (the unit tests cover them).
const HOSTILE: &str = "/live/it's&amp;(x)=1;%3Cb%3E/1";

/// Where this test's screenshot goes; copied by hand to
/// docs/img/status-page.png.
fn screenshot() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_what_json_and_metrics_say() {
    if !common::browser::ready() {
        eprintln!("skipped: no chromium/node (CI would fail here)");
        return;
    }
    let t = tree().await;
    let admin = t.b.admin.unwrap();
    // Traffic is paused (everyone parked or done), so the figures hold still;
    // read them before and after the page to prove it.
    let before = status(admin).await;
    let m_before = metrics(admin).await;
    let url = format!("http://{admin}/");
    let shot = screenshot();
    let out =
        tokio::task::spawn_blocking(move || common::browser::status_page(&url, 2, Some(&shot)))
            .await
            .unwrap();
    let after = status(admin).await;
    let m_after = metrics(admin).await;
    let page = &out["shown"];
    eprintln!("page showed {page}");
    assert_eq!(
        out["errors"].as_array().unwrap().len(),
        0,
        "{}",
        out["errors"]
    );
    for req in out["requests"].as_array().unwrap() {
        let u = req.as_str().unwrap();
        assert!(
            u == format!("http://{admin}/") || u == format!("http://{admin}/status.json"),
            "page loaded {u}"
        );
    }
    // Each figure: what the page shows equals /status.json before and after
    // (and /metrics where it has the figure). Connections are left out: the
    // page's own poll is one.
    let same = |shown: &Value, json: &dyn Fn(&Value) -> &Value, what: &str| {
        assert_eq!(json(&before), json(&after), "{what} moved while paused");
        assert_eq!(
            shown.as_f64(),
            json(&before).as_f64(),
            "{what}: page {shown} vs status.json {}",
            json(&before)
        );
    };
    same(&page["parked_viewers"], &|s| &s["parked_viewers"], "parked");
    same(&page["open_flights"], &|s| &s["open_flights"], "flights");
    same(
        &page["cache_entries"],
        &|s| &s["cache"]["entries"],
        "cache entries",
    );
    same(
        &page["cache_bytes"],
        &|s| &s["cache"]["bytes"],
        "cache bytes",
    );
    same(&page["hit"], &|s| &s["requests"]["hit"], "hits");
    same(&page["miss"], &|s| &s["requests"]["miss"], "misses");
    same(
        &page["coalesced"],
        &|s| &s["requests"]["coalesced"],
        "coalesced",
    );
    same(
        &page["hit_ratio"],
        &|s| &s["requests"]["hit_ratio"],
        "hit ratio",
    );
    same(
        &page["memory_limit"],
        &|s| &s["memory"]["limit"],
        "memory limit",
    );
    same(
        &page["delivery_count"],
        &|s| &s["delivery"]["count"],
        "deliveries",
    );
    same(&page["bytes_out"], &|s| &s["bytes_out"], "bytes out");
    for (shown, name) in [
        (&page["parked_viewers"], "mlcache_parked_viewers"),
        (&page["open_flights"], "mlcache_open_slots"),
        (&page["cache_entries"], "mlcache_cache_entries"),
        (&page["delivery_count"], "mlcache_delivery_seconds_count"),
        (&page["memory_limit"], "mlcache_memory_limit_bytes"),
    ] {
        let v = shown.as_f64().unwrap();
        assert_eq!(
            sample(&m_before, name),
            sample(&m_after, name),
            "{name} moved"
        );
        assert_eq!(v, sample(&m_before, name), "{name}: page {v}");
    }
    assert_eq!(page["parked_viewers"], 4);
    assert_eq!(page["delivery_count"], 5);
    // The tables as displayed.
    let origin = t.origin.addr.to_string();
    let rows = page["streams"].as_array().unwrap();
    assert_eq!(
        rows[0],
        serde_json::json!([origin, "/live/0/", "4", "1", "1", "/live/0/1 (in flight)"])
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(page["streams_total"], before["streams_total"]);
    assert_eq!(
        page["upstreams"],
        serde_json::json!([[format!("http://{}", t.a.addr), "up"]])
    );
    assert_eq!(
        page["chart_windows"],
        before["delivery"]["windows"].as_array().unwrap().len()
    );
    assert_eq!(page["chart_lines"], 3);
    assert_eq!(page["injected"], 0);
    assert!(std::fs::metadata(screenshot()).unwrap().len() > 10_000);
    eprintln!("screenshot: {}", screenshot().display());
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_a_hostile_stream_name_as_text() {
    if !common::browser::ready() {
        eprintln!("skipped: no chromium/node (CI would fail here)");
        return;
    }
    // An origin that accepts and never answers keeps the flight open.
    let silent = loopback();
    let origin = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let r = relay(relay_config(&format!("http://{origin}"))).await;
    let viewer = tokio::spawn({
        let addr = r.addr;
        async move { h1(addr, proxy_get(origin, HOSTILE)).await }
    });
    until(LONG, "viewer parked", || r.relay.parked() == 1).await;
    let url = format!("http://{}/", r.admin.unwrap());
    let out = tokio::task::spawn_blocking(move || common::browser::status_page(&url, 1, None))
        .await
        .unwrap();
    let page = &out["shown"];
    assert_eq!(
        out["errors"].as_array().unwrap().len(),
        0,
        "{}",
        out["errors"]
    );
    // Shown verbatim: as markup, `&amp;` would have become `&`.
    assert_eq!(
        page["streams"][0],
        serde_json::json!([
            origin.to_string(),
            "/live/it's&amp;(x)=1;%3Cb%3E/",
            "1",
            "1",
            "0",
            format!("{HOSTILE} (in flight)")
        ])
    );
    assert_eq!(page["injected"], 0);
    viewer.abort();
    hold.abort();
}

/// Every `mlcache_` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mlcache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The `# TYPE` a series name needs in the exposition: counters are
/// exposed as `NAME_total` under `# TYPE NAME counter`, histograms as
/// `NAME_bucket`/`_sum`/`_count` under `# TYPE NAME histogram`.
fn type_line(name: &str) -> String {
    for (suffix, kind) in [
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            return format!("# TYPE {base} {kind}");
        }
    }
    format!("# TYPE {name} gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_the_relay_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana");
    let dashboard = std::fs::read_to_string(root.join("mlcache.json")).unwrap();
    let alerts = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let d: Value = serde_json::from_str(&dashboard).expect("dashboard JSON parses");
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for want in [
        "histogram_quantile(0.99",
        "mlcache_rejected_total",
        "mlcache_connections_closed_total",
        "mlcache_memory_used_bytes",
    ] {
        assert!(exprs.contains(want), "dashboard lacks {want}");
    }
    // The alert file: four rules, each with what Prometheus requires.
    assert_eq!(alerts.matches("- alert: ").count(), 4);
    assert_eq!(alerts.matches("expr:").count(), 4);
    for name in [
        "MlcacheAllParentsDown",
        "MlcacheHighShedRate",
        "MlcacheDeliveryP99High",
        "MlcacheMemoryBudgetNearFull",
    ] {
        assert!(alerts.contains(name), "{name}");
    }

    // A relay with a parent, so every family is registered and rendered.
    let origin = manual_origin().await;
    let mut cfg = relay_config(&origin.url());
    cfg.upstream = vec!["http://127.0.0.1:9".into()];
    let r = relay(cfg).await;
    let exposed = metrics(r.admin.unwrap()).await;
    let used: Vec<String> = metric_names(&exprs)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        assert!(
            exposed.contains(&format!("{}\n", type_line(name))),
            "{name} is not exported by the relay ({} missing)",
            type_line(name)
        );
    }
}
