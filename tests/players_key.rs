//! Encrypted LL-HLS through a tree of two relays: the seed's security model
//! in standard HLS form (`mlcache-origin --ll-encrypt`).
//!
//! The origin encrypts every part and segment with `METHOD=AES-128`; the
//! playlist's `EXT-X-KEY` names the key at the origin's HTTPS API, which
//! serves it only over TLS and only with the bearer token. The relays carry
//! the playlists and the ciphertext and never see a key: a player fetches
//! the key from the origin directly. These tests check the key endpoint's
//! refusals, that what the relays cache is ciphertext (and opens, with the
//! key, to fMP4), that hls.js in headless Chromium plays it through two https
//! relays, and that nobody asked the origin for a key over clear HTTP (the
//! only way the relays reach the origin).
//!
//! The tests take a process-wide lock: one encoder set and one Chromium at a
//! time on a two-core machine.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use aes::cipher::{BlockDecrypt, KeyInit};

use common::browser::{self, Play, Tab};
use common::ll::{get, warm, Tree};
use common::nginx::{self, TempDir};
use common::{h1, h1_tls, path_get, TestProcess};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;

/// One browser (or heavy encoder set) at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The origin's API bearer token in these tests.
const TOKEN: &str = "key-test-token";

/// `mlcache-origin --ll-encrypt` (its own ffmpeg), its CA written to `dir`.
fn encrypted_origin(dir: &TempDir, rotation: u64) -> (TestProcess, String) {
    let ca = dir.path().join("origin-ca.pem");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlcache-origin"));
    cmd.args(["--listen", "127.0.0.1:0", "--plaintext", "--token", TOKEN])
        .args(["--ll", "--ll-encrypt", "--ll-size", "320x180"])
        .args(["--ll-key-rotation", &rotation.to_string()])
        .arg("--ca-out")
        .arg(&ca);
    let p = TestProcess::start(cmd, false);
    let pem = std::fs::read_to_string(&ca).expect("the origin's CA");
    (p, pem)
}

/// A request to the origin's HTTPS API, with `auth` as the Authorization
/// header when given.
async fn api(
    origin: SocketAddr,
    ca: &str,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> common::Got {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", origin.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    h1_tls(origin, ca, req.body(Empty::new()).unwrap())
        .await
        .expect("https request")
}

/// The origin's key requests by `{http|https} {status}`.
async fn key_requests(addr: SocketAddr) -> HashMap<String, u64> {
    let g = get(addr, "/stats").await;
    let v: serde_json::Value = serde_json::from_slice(g.bytes()).expect("stats JSON");
    v["key_requests"]
        .as_object()
        .expect("key_requests")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// One `EXT-X-KEY` of a playlist and the URIs it applies to.
#[derive(Debug, Clone)]
struct Keyed {
    uri: String,
    iv: [u8; 16],
    /// The part and segment URIs after it, up to the next key tag.
    media: Vec<String>,
}

/// The playlist's key tags, in order, with the media each one covers.
fn keyed(playlist: &str) -> Vec<Keyed> {
    let mut out: Vec<Keyed> = Vec::new();
    for line in playlist.lines() {
        if let Some(attrs) = line.strip_prefix("#EXT-X-KEY:") {
            assert!(attrs.starts_with("METHOD=AES-128,"), "{line}");
            let uri = attrs
                .split("URI=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let iv = attrs.split("IV=0x").nth(1).expect("explicit IV");
            let iv = u128::from_str_radix(iv, 16).expect("hex IV").to_be_bytes();
            out.push(Keyed {
                uri: uri.to_string(),
                iv,
                media: Vec::new(),
            });
        } else if let Some(k) = out.last_mut() {
            if let Some(u) = line
                .strip_prefix("#EXT-X-PART:")
                .and_then(|a| a.split("URI=\"").nth(1))
                .and_then(|r| r.split('"').next())
            {
                k.media.push(u.to_string());
            } else if line.starts_with("seg") {
                k.media.push(line.to_string());
            }
        }
    }
    out
}

/// AES-128-CBC decryption with PKCS#7 checked (the test's own, from the
/// block cipher, so the origin's encryptor is not trusted to check itself).
fn open(key: &[u8], iv: &[u8; 16], c: &[u8]) -> Option<Vec<u8>> {
    if c.is_empty() || !c.len().is_multiple_of(16) {
        return None;
    }
    let cipher = aes::Aes128::new_from_slice(key).ok()?;
    let mut prev = *iv;
    let mut out = Vec::with_capacity(c.len());
    for blk in c.chunks(16) {
        let mut b = aes::Block::clone_from_slice(blk);
        cipher.decrypt_block(&mut b);
        out.extend(b.iter().zip(prev).map(|(x, p)| x ^ p));
        prev.copy_from_slice(blk);
    }
    let pad = *out.last()? as usize;
    if !(1..=16).contains(&pad) || out[out.len() - pad..].iter().any(|&p| p as usize != pad) {
        return None;
    }
    out.truncate(out.len() - pad);
    Some(out)
}

/// Whether `b` starts with an ISO BMFF box of type `kind`.
fn starts_with_box(b: &[u8], kind: &[u8; 4]) -> bool {
    b.len() >= 8 && &b[4..8] == kind
}

/// The key endpoint's refusals, the playlist's tags, and what a relay
/// caches: ciphertext that opens, with the key, to fMP4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_carry_ciphertext_and_keys_need_https_and_the_token() {
    if !nginx::require(&["ffmpeg"]) {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let dir = TempDir::new("players-key");
    let (origin, ca) = encrypted_origin(&dir, 2);
    let tree = Tree::start(&format!("http://{}", origin.addr), &[]);
    let o = origin.addr;
    let playlist = warm(o, 3).await;

    // The playlist: the init segment clear (MAP before any KEY), a key tag
    // per segment, absolute HTTPS URIs at the origin, IV = MSN.
    assert!(playlist.find("#EXT-X-MAP:").unwrap() < playlist.find("#EXT-X-KEY:").unwrap());
    let keys = keyed(&playlist);
    assert!(keys.len() >= 3, "{playlist}");
    for k in &keys {
        assert!(
            k.uri.starts_with(&format!("https://{o}/keys/hls/")),
            "{k:?}"
        );
    }
    let init = get(o, "/ll/init.mp4").await;
    assert!(
        starts_with_box(init.bytes(), b"ftyp"),
        "the init segment is clear"
    );

    // The key: only over TLS, only with the token, never stored.
    let k0 = &keys[0].uri[format!("https://{o}").len()..];
    let clear = get(o, k0).await;
    assert_eq!(clear.status, StatusCode::FORBIDDEN, "{clear:?}");
    for auth in [None, Some("Bearer wrong"), Some(TOKEN), Some("Basic a2V5")] {
        let g = api(o, &ca, Method::GET, k0, auth).await;
        assert_eq!(g.status, StatusCode::UNAUTHORIZED, "{auth:?}: {g:?}");
        assert_eq!(g.headers["cache-control"], "no-store, private");
        assert_eq!(g.headers["access-control-allow-origin"], "*");
        assert!(g.bytes().len() != 16);
    }
    let bearer = format!("Bearer {TOKEN}");
    let g = api(o, &ca, Method::GET, k0, Some(&bearer)).await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    assert_eq!(g.headers["cache-control"], "no-store, private");
    assert_eq!(g.headers["content-type"], "application/octet-stream");
    assert_eq!(g.headers["access-control-allow-origin"], "*");
    assert_eq!(g.bytes().len(), 16);
    let unknown = api(o, &ca, Method::GET, "/keys/hls/100000", Some(&bearer)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // The browser's preflight (it carries no token) names Authorization.
    let pre = api(o, &ca, Method::OPTIONS, k0, None).await;
    assert_eq!(pre.status, StatusCode::NO_CONTENT, "{pre:?}");
    assert_eq!(pre.headers["access-control-allow-headers"], "authorization");
    assert_eq!(pre.headers["access-control-allow-origin"], "*");
    // No clear copy of the media: LL-DASH is off.
    assert_eq!(
        get(o, "/dash/manifest.mpd").await.status,
        StatusCode::NOT_FOUND
    );

    // Through the relays: the same playlist keys (at the origin, not B),
    // and parts and segments that are ciphertext, byte for byte what the
    // origin made, opening with the key to moof boxes.
    let via_b = h1(tree.b.addr, path_get(o, "/ll/media.m3u8"))
        .await
        .unwrap();
    assert_eq!(via_b.status, StatusCode::OK);
    let keys_b = keyed(&String::from_utf8_lossy(via_b.bytes()));
    assert!(keys_b
        .iter()
        .all(|k| k.uri.starts_with(&format!("https://{o}/"))));
    let mut checked = 0;
    let mut key_cache: HashMap<String, Vec<u8>> = HashMap::new();
    for k in keys_b.iter().rev().take(3) {
        let path = &k.uri[format!("https://{o}").len()..];
        if !key_cache.contains_key(path) {
            let g = api(o, &ca, Method::GET, path, Some(&bearer)).await;
            assert_eq!(g.status, StatusCode::OK, "{path}: {g:?}");
            key_cache.insert(path.to_string(), g.bytes().to_vec());
        }
        let key = &key_cache[path];
        for m in &k.media {
            let p = format!("/ll/{m}");
            let first = h1(tree.b.addr, path_get(o, &p)).await.unwrap();
            let again = h1(tree.b.addr, path_get(o, &p)).await.unwrap();
            let direct = get(o, &p).await;
            assert_eq!(first.status, StatusCode::OK, "{p}: {first:?}");
            assert_eq!(first.bytes(), direct.bytes(), "{p}: B changed it");
            assert_eq!(again.bytes(), direct.bytes(), "{p}: B's cached copy");
            let c = first.bytes();
            assert_eq!(c.len() % 16, 0, "{p}: {} bytes", c.len());
            assert!(!starts_with_box(c, b"moof"), "{p} is clear fMP4");
            let plain = open(key, &k.iv, c).unwrap_or_else(|| panic!("{p} does not open"));
            assert!(
                starts_with_box(&plain, b"moof"),
                "{p} opened to {:?}",
                &plain[..8]
            );
            assert_ne!(&plain[..16], &c[..16]);
            checked += 1;
        }
    }
    assert!(checked >= 6, "checked {checked} parts and segments");

    // A relay asking for a key gets the origin's refusal (the only way a
    // relay reaches the origin is clear HTTP), and no key.
    let via = h1(tree.b.addr, path_get(o, k0)).await.unwrap();
    assert_ne!(via.status, StatusCode::OK, "{via:?}");
    assert_ne!(via.body.as_ref().map(|b| b.len()).unwrap_or(0), 16);
    let counts = key_requests(o).await;
    assert!(counts["http 403"] >= 2, "{counts:?}");
    assert!(!counts
        .keys()
        .any(|k| k.starts_with("http ") && k != "http 403"));

    // ffmpeg plays it through the relays, given the token for the key (it
    // sends the header on every request; the relays forward none upstream).
    let out = dir.path().join("ffmpeg.mp4");
    let run = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-headers", &format!("Authorization: Bearer {TOKEN}\r\n")])
        .arg("-i")
        .arg(tree.url(o, "/ll/media.m3u8"))
        .args(["-t", "3", "-c", "copy"])
        .arg(&out)
        .output()
        .expect("run ffmpeg");
    assert!(run.status.success(), "ffmpeg: {run:?}");
    let n = nginx::ffprobe_frames(&out);
    eprintln!("ffmpeg wrote {n} frames of the encrypted stream through the relays");
    assert!(n >= 60, "ffmpeg wrote {n} frames");
    drop(tree);
}

/// Runs the browser with the token for keys.
async fn play(p: Play<'static>) -> Vec<Tab> {
    browser::play_async(p, &["--token", TOKEN]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_plays_encrypted_ll_hls_through_two_https_relays() {
    if !nginx::require(&["ffmpeg"]) || !browser::ready() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let dir = TempDir::new("players-key-browser");
    // A new key every 3 segments: the players cross several rotations.
    let (origin, _ca) = encrypted_origin(&dir, 3);
    let tree = Tree::start(&format!("http://{}", origin.addr), &[]);
    warm(origin.addr, 2).await;
    let before = key_requests(origin.addr).await;

    let url = tree.url(origin.addr, "/ll/master.m3u8");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("players-key-hls.png");
    let tabs = play(Play {
        player: "hls",
        srcs: vec![("relays".to_string(), url); 2],
        tabs: 1,
        warmup_secs: 5,
        seconds: 15,
        screenshot: Some(shot),
    })
    .await;
    let after = key_requests(origin.addr).await;
    for t in &tabs {
        assert!(t.playing, "{} never played: {:?}", t.label, t.raw);
        assert!(t.errors.is_empty(), "{} errors: {:?}", t.label, t.raw);
        assert!(
            t.advance >= 0.9,
            "{} advanced {:.2}: {:?}",
            t.label,
            t.advance,
            t.raw
        );
        assert_eq!(t.stalls, Some(0), "{} stalled: {:?}", t.label, t.raw);
        // ≥ 20 s of playing at 3 s per key: several keys, each fetched by
        // the page with the token.
        let n = t.raw["keyRequests"].as_u64().unwrap_or(0);
        assert!(n >= 3, "{} fetched {n} keys: {:?}", t.label, t.raw);
        eprintln!(
            "{}: advance {:.3}, latency {:?} s, {n} keys fetched",
            t.label, t.advance, t.latency_p50
        );
    }
    // Every key went from the browser to the origin over HTTPS with the
    // token; nobody asked over clear HTTP (the relays' only way in).
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert!(d("https 200") >= 6, "{after:?}");
    let clear: Vec<_> = after.keys().filter(|k| k.starts_with("http ")).collect();
    assert!(clear.is_empty(), "key requests over clear HTTP: {after:?}");
    let refused: u64 = after
        .keys()
        .filter(|k| k.starts_with("https 4"))
        .map(|k| d(k))
        .sum();
    assert_eq!(
        refused, 0,
        "the page's key requests were refused: {after:?}"
    );
    // Without the token the same page cannot play: the key is refused (and
    // the refusal reaches hls.js, CORS included).
    let url = tree.url(origin.addr, "/ll/master.m3u8");
    let bare = tokio::task::spawn_blocking(move || {
        browser::play(&Play {
            player: "hls",
            srcs: vec![("no-token".to_string(), url)],
            tabs: 1,
            warmup_secs: 0,
            seconds: 3,
            screenshot: None,
        })
    })
    .await
    .unwrap();
    assert!(
        !bare[0].playing,
        "played without the key: {:?}",
        bare[0].raw
    );
    assert!(
        bare[0].errors.iter().any(|e| e.contains("keyLoadError")),
        "{:?}",
        bare[0].raw
    );
    assert!(
        key_requests(origin.addr)
            .await
            .get("https 401")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    // And the relays did carry the media: B fetched from A, A from the origin.
    assert!(
        common::metric(
            tree.a.admin(),
            "mlcache_upstream_fetches_total{target=\"origin\",result=\"ok\"}"
        )
        .await
            >= 50.0
    );
}
