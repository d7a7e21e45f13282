//! The LL-HLS rigs of the player tests: plain requests to the head end,
//! waiting for it to go live, and two relays A → B over https (h2) with
//! `--cors *`, as a browser needs them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;

use super::{h1, CertFiles, Got, TestProcess};

/// How long a freshly spawned ffmpeg may take to produce segments.
pub const WARM_UP: Duration = Duration::from_secs(40);

/// A plain HTTP/1.1 GET of `path` at `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> Got {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    h1(addr, req).await.expect("request")
}

/// Waits until the head end at `addr` lists `segments` complete segments;
/// returns that media playlist.
pub async fn warm(addr: SocketAddr, segments: usize) -> String {
    playlist_when(addr, |p| p.matches("#EXTINF").count() >= segments).await
}

/// Polls the media playlist at `addr` until `ready` holds for it; returns it.
/// Panics after [`WARM_UP`].
pub async fn playlist_when(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WARM_UP;
    loop {
        let g = get(addr, "/ll/media.m3u8").await;
        let text = String::from_utf8_lossy(g.bytes()).to_string();
        if g.status == StatusCode::OK && ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "origin never got there: {g:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relay A (talks to the origin) and relay B (its child, over https with
/// h2), both with a TLS listener and `--cors *`.
pub struct Tree {
    pub a: TestProcess,
    pub b: TestProcess,
    pub b_tls: SocketAddr,
    _certs: CertFiles,
}

impl Tree {
    /// A and B for `origin` (a URL); `a_extra` are more flags for A.
    pub fn start(origin: &str, a_extra: &[&str]) -> Tree {
        let certs = CertFiles::generate("players");
        let (cert, key) = (CertFiles::path(&certs.cert), CertFiles::path(&certs.key));
        let common = [
            "--allow-origin",
            origin,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--cors",
            "*",
        ];
        let mut a_args = common.to_vec();
        a_args.extend_from_slice(a_extra);
        let (a, a_tls) = TestProcess::relay_tls(&a_args);
        let parent = format!("https://{a_tls}");
        let mut b_args = common.to_vec();
        b_args.extend_from_slice(&["--upstream", &parent, "--upstream-ca"]);
        b_args.push(CertFiles::path(&certs.ca));
        let (b, b_tls) = TestProcess::relay_tls(&b_args);
        Tree {
            a,
            b,
            b_tls,
            _certs: certs,
        }
    }

    /// `https://B/mlcache/ORIGIN/PATH`: the relay path a player is given.
    pub fn url(&self, origin: SocketAddr, path: &str) -> String {
        format!("https://{}/mlcache/{origin}{path}", self.b_tls)
    }
}
