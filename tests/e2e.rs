//! End to end: encrypted chunks from the origin, keys over authenticated
//! HTTPS, the viewer client through relays, tampering and failures, and the
//! anycast probe.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use mlcache::client::{self, Client, ClientError, Name, Source};
use mlcache::origin::chunk_bytes;

const CHUNK: usize = 64 * 1024;

fn vod(n: u64) -> Vec<u8> {
    chunk_bytes(u64::MAX, n, CHUNK, 0).to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_reaches_a_relay() {
    // Everything the relay receives passes through one of two recorders:
    // viewer → relay, and origin → relay. The origin is known by the
    // recorder's address, so its chunks are bound to names there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = listener.local_addr().unwrap().to_string();
    let (origin, ca) = secure_origin(|c| c.authority = Some(public)).await;
    let Proxy {
        addr: to_origin,
        seen: from_origin,
        ..
    } = proxy_on(listener, origin.addr, Tamper::None);
    let r = relay(relay_config(&format!("http://{to_origin}"))).await;
    let Proxy {
        addr: to_relay,
        seen: from_viewer,
        accepted,
    } = proxy(r.addr, Tamper::None).await;
    let mut cfg = client_config(&origin, &ca);
    cfg.relays = vec![to_relay];
    let c = Client::new(cfg).await.unwrap();
    let mut out = Vec::new();
    for n in 0..8 {
        let name = Name::parse(&format!("mlcache://{to_origin}/vod/{n}")).unwrap();
        let f = c.fetch(&name, &mut out).await.unwrap();
        assert_eq!(f.source, Source::Relay(to_relay));
    }
    let expect: Vec<u8> = (0..8).flat_map(vod).collect();
    assert!(out == expect, "decrypted output differs");
    // Eight chunks over one kept-alive connection, as a player does.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    let mut seen = from_origin.lock().clone();
    seen.extend_from_slice(&from_viewer.lock());
    assert!(
        contains(&seen, b"aes128gcm"),
        "the recorders saw the encrypted chunks"
    );
    assert!(
        !contains(&seen, &vod(0)[..64]),
        "plaintext crossed the relay"
    );
    for keyid in ["vod.0", "vod.1"] {
        let key = c.key(&to_origin.to_string(), keyid).await.unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key);
        assert!(!contains(&seen, &key), "raw key {keyid} reached the relay");
        assert!(
            !contains(&seen, b64.as_bytes()),
            "encoded key {keyid} reached the relay"
        );
    }
    assert!(
        !contains(&seen, b"test-token"),
        "the API token reached the relay"
    );
    assert!(!contains(&seen, b"Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_relay_bytes_are_refetched_and_output_is_exact() {
    let (origin, ca) = secure_origin(|_| {}).await;
    let r = relay(relay_config(&origin.url())).await;
    // A relay that flips one bit, 5,000 bytes into each response.
    let evil = proxy(r.addr, Tamper::FlipAt(5000)).await.addr;
    let mut cfg = client_config(&origin, &ca);
    cfg.relays = vec![evil];
    let c = Client::new(cfg).await.unwrap();
    let mut out = Vec::new();
    let name = Name::parse(&format!("mlcache://{}/vod/2", origin.addr)).unwrap();
    let f = c.fetch(&name, &mut out).await.unwrap();
    assert!(out == vod(2), "output is exact despite the tampering");
    assert_eq!(f.source, Source::Origin(origin.addr.to_string()));
    let events = c.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].error.contains("authentication"), "{events:?}");
    assert_eq!(events[0].source, format!("relay {evil}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_cut_midchunk_loses_nothing() {
    let (origin, ca) = secure_origin(|_| {}).await;
    let r = relay(relay_config(&origin.url())).await;
    let cutting = proxy(r.addr, Tamper::CutAfter(30_000)).await.addr;
    let mut cfg = client_config(&origin, &ca);
    cfg.relays = vec![cutting];
    let c = Client::new(cfg).await.unwrap();
    let mut out = Vec::new();
    for n in 4..6 {
        let name = Name::parse(&format!("mlcache://{}/vod/{n}", origin.addr)).unwrap();
        c.fetch(&name, &mut out).await.unwrap();
    }
    let expect: Vec<u8> = (4..6).flat_map(vod).collect();
    assert!(out == expect, "output is exact after mid-chunk failures");
    assert_eq!(c.events().len(), 2);
    assert_eq!(
        c.served().get(&Source::Origin(origin.addr.to_string())),
        Some(&2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_play_through_two_relays_with_key_rotation() {
    let (origin, ca) = secure_origin(|c| c.cadence = Some(Duration::from_millis(150))).await;
    let a = relay(relay_config(&origin.url())).await;
    let mut cb = relay_config(&origin.url());
    cb.upstream = vec![format!("http://{}", a.addr)];
    let b = relay(cb).await;
    let mut cfg = client_config(&origin, &ca);
    cfg.relays = vec![b.addr];
    let c = Client::new(cfg).await.unwrap();
    let stream = Name::parse(&format!("mlcache://{}/live/0", origin.addr)).unwrap();
    let mut out = Vec::new();
    let n = client::play(&c, &stream, None, Some(10), &mut out)
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert_eq!(out.len(), 10 * CHUNK);
    let mut seqs = Vec::new();
    for chunk in out.chunks(CHUNK) {
        let ns = u64::from_be_bytes(chunk[..8].try_into().unwrap());
        let seq = u64::from_be_bytes(chunk[8..16].try_into().unwrap());
        assert!(
            chunk == &chunk_bytes(0, seq, CHUNK, ns)[..],
            "chunk {seq} verifies"
        );
        seqs.push(seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive, nothing lost: {seqs:?}"
    );
    // Ten chunks at rotation 4 span at least three key ids.
    let epochs: std::collections::BTreeSet<u64> = seqs.iter().map(|s| s / 4).collect();
    assert!(epochs.len() >= 3, "{epochs:?}");
    assert_eq!(c.served().get(&Source::Relay(b.addr)), Some(&10));
    assert!(c.events().is_empty(), "{:?}", c.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_finds_the_relay_or_falls_back_to_the_origin() {
    let (origin, ca) = secure_origin(|_| {}).await;
    let r = relay(relay_config(&origin.url())).await;
    let name = Name::parse(&format!("mlcache://{}/vod/1", origin.addr)).unwrap();

    let mut cfg = client_config(&origin, &ca);
    cfg.probe = Some(r.addr);
    let c = Client::new(cfg.clone()).await.unwrap();
    assert_eq!(c.nearest(), Some(r.addr));
    assert_eq!(
        c.fetch(&name, &mut Vec::new()).await.unwrap().source,
        Source::Relay(r.addr)
    );

    // Nothing listening at the probe address: straight to the origin.
    let dead = DeadPort::new();
    cfg.probe = Some(dead.addr);
    let c = Client::new(cfg.clone()).await.unwrap();
    assert_eq!(c.nearest(), None);
    let mut out = Vec::new();
    assert_eq!(
        c.fetch(&name, &mut out).await.unwrap().source,
        Source::Origin(origin.addr.to_string())
    );
    assert!(out == vod(1));

    // A listener that never answers: the probe times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.probe = Some(silent.local_addr().unwrap());
    assert_eq!(Client::new(cfg.clone()).await.unwrap().nearest(), None);

    // A draining relay says it is unhealthy: go around it.
    r.relay.set_draining();
    cfg.probe = Some(r.addr);
    assert_eq!(Client::new(cfg).await.unwrap().nearest(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_finds_its_parent_by_probe() {
    let (origin, _) = secure_origin(|_| {}).await;
    let a = relay(relay_config(&origin.url())).await;
    let mut cb = relay_config(&origin.url());
    cb.upstream = vec![format!("probe:{}", a.addr)];
    let b = relay(cb).await;
    let got = h1(b.addr, proxy_get(origin.addr, "/vod/7")).await.unwrap();
    assert_eq!(got.status, http::StatusCode::OK);
    assert_eq!(
        metric(a.admin.unwrap(), "mlcache_requests_total{result=\"miss\"}").await,
        1.0
    );
    // A relay whose probe finds itself does not loop: it goes to the origin.
    let mut cs = relay_config(&origin.url());
    let listener = loopback();
    let port = listener.local_addr().unwrap();
    cs.upstream = vec![format!("probe:{port}")];
    let s = relay_on(cs, listener).await;
    let got = h1(s.addr, proxy_get(origin.addr, "/vod/8")).await.unwrap();
    assert_eq!(got.status, http::StatusCode::OK);
    assert_eq!(origin.requests("/vod/8"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_tokens_and_unknown_keys() {
    let (origin, ca) = secure_origin(|c| c.cadence = Some(Duration::from_millis(100))).await;
    let auth = origin.addr.to_string();
    let mut cfg = client_config(&origin, &ca);
    cfg.token = "wrong".into();
    let bad = Client::new(cfg.clone()).await.unwrap();
    assert!(matches!(
        bad.key(&auth, "vod.0").await,
        Err(ClientError::Unauthorized)
    ));
    let stream = Name::parse(&format!("mlcache://{auth}/live/0")).unwrap();
    assert!(matches!(
        bad.manifest(&stream).await,
        Err(ClientError::Unauthorized)
    ));
    cfg.token = String::new();
    assert!(matches!(
        Client::new(cfg.clone())
            .await
            .unwrap()
            .key(&auth, "vod.0")
            .await,
        Err(ClientError::Unauthorized)
    ));

    let good = Client::new(client_config(&origin, &ca)).await.unwrap();
    assert!(good.key(&auth, "vod.0").await.is_ok());
    for unknown in ["vod.999", "live0.999999", "live7.0", "nonsense", "../etc"] {
        assert!(
            matches!(
                good.key(&auth, unknown).await,
                Err(ClientError::NotFound(_))
            ),
            "{unknown}"
        );
    }
    // Keys are never served in the clear.
    let plain = h1(
        origin.addr,
        http::Request::get("/keys/vod.0")
            .header("host", auth.as_str())
            .body(http_body_util::Empty::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(plain.status, http::StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_fetches_https_origins_with_the_configured_ca() {
    let pki = mlcache::tls::TestPki::generate(&["127.0.0.1".to_string()]).unwrap();
    let ca_file =
        std::env::temp_dir().join(format!("mlcache-origin-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let origin = origin_with(|c| c.tls = Some(pki.server)).await;
    let mut cfg = relay_config(&format!("https://{}", origin.addr));
    cfg.origin_ca = Some(ca_file.clone());
    let r = relay(cfg).await;
    for expect in ["MISS", "HIT"] {
        let got = h1(r.addr, proxy_get(origin.addr, "/vod/6")).await.unwrap();
        assert_eq!(got.status, http::StatusCode::OK);
        assert_eq!(got.x_cache(), expect);
        assert!(got.bytes()[..] == vod(6)[..]);
    }
    assert_eq!(origin.requests("/vod/6"), 1);
    // Without the CA the origin's certificate is not trusted: 502, not a body.
    let untrusted = relay(relay_config(&format!("https://{}", origin.addr))).await;
    let got = h1(untrusted.addr, proxy_get(origin.addr, "/vod/7"))
        .await
        .unwrap();
    assert_eq!(got.status, http::StatusCode::BAD_GATEWAY);
    std::fs::remove_file(ca_file).ok();
}
