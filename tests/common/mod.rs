//! Shared harness for the end-to-end tests: real origins and relays on
//! ephemeral loopback ports, and a minimal HTTP client that talks to them over
//! real sockets (one connection per request, as players do, or one shared
//! HTTP/2 connection). A test owns every port it uses: in-process relays get
//! listeners the test bound ([`relay`], [`relay_on`]), spawned binaries bind
//! port 0 and tell their address on stdout ([`TestProcess`]), and a port
//! nobody answers is held bound, not dropped ([`DeadPort`]). `nginx` starts
//! a real nginx serving a directory, and ffmpeg writing live HLS into it.
#![allow(dead_code)]

pub mod browser;
pub mod ll;
pub mod netns;
pub mod nginx;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mlcache::origin::{OriginConfig, OriginHandle};
use mlcache::{Config, Running};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

/// An origin that publishes only on command.
pub async fn manual_origin() -> OriginHandle {
    origin_with(|_| {}).await
}

/// An origin on an ephemeral port, after `f` adjusts its defaults.
pub async fn origin_with(f: impl FnOnce(&mut OriginConfig)) -> OriginHandle {
    let mut cfg = OriginConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cadence: None,
        ..OriginConfig::default()
    };
    f(&mut cfg);
    mlcache::origin::start(cfg).await.expect("origin starts")
}

/// A relay config for `origin` on an ephemeral port.
pub fn relay_config(origin: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        allow_origin: vec![origin.to_string()],
        ..Config::default()
    }
}

/// A listener on an ephemeral loopback port, bound as the relay binds its
/// own (backlog, `SO_REUSEADDR`).
pub fn loopback() -> TcpListener {
    mlcache::listen("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0")
}

/// Starts an in-process relay on listeners of its own (an admin listener if
/// `cfg.admin` is set); `cfg.listen` is not used.
pub async fn relay(cfg: Config) -> Running {
    relay_on(cfg, loopback()).await
}

/// Starts an in-process relay serving viewers on `listener`, bound by the
/// test beforehand so its address can go into configs first.
pub async fn relay_on(cfg: Config, listener: TcpListener) -> Running {
    let admin = cfg.admin.map(|_| loopback());
    mlcache::start_on(cfg, listener, admin)
        .await
        .expect("relay starts")
}

/// A loopback port that refuses connections for as long as this lives: the
/// socket is bound, so no one else can take the port, but not listening, so
/// the kernel answers a connect with a reset.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    /// The port's address.
    pub addr: SocketAddr,
}

impl DeadPort {
    /// Binds one.
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        DeadPort {
            _socket: socket,
            addr,
        }
    }
}

/// Waits, polling a cheap condition, until it holds (or panics after `limit`).
/// This waits for an event; it does not assume how long the event takes.
pub async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a client saw.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The whole body, or the error that ended it.
    pub body: Result<Bytes, String>,
}

impl Got {
    pub fn x_cache(&self) -> &str {
        self.headers
            .get(mlcache::protocol::X_CACHE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("complete body")
    }
}

/// Sends `req` over a fresh HTTP/1.1 connection to `addr`. The URI is sent
/// as given, so an absolute URI makes a forward-proxy request.
pub async fn h1(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Result<Got, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    read(resp).await
}

/// Sends `req` over a fresh h2c (prior knowledge) connection.
pub async fn h2(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Result<Got, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    read(resp).await
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> Result<Got, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A forward-proxy GET of `http://{origin}{path}`.
pub fn proxy_get(origin: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{origin}{path}"))
        .body(Empty::new())
        .unwrap()
}

/// A path-form GET `/mlcache/{origin}{path}`.
pub fn path_get(origin: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("/mlcache/{origin}{path}"))
        .header("host", "relay")
        .body(Empty::new())
        .unwrap()
}

/// How long a spawned binary may take to print its address.
pub const STARTUP: Duration = Duration::from_secs(20);

/// A binary started by a test, once it has said where it listens; killed on
/// drop.
pub struct TestProcess {
    pub child: Child,
    /// From its `listening ADDR` line.
    pub addr: SocketAddr,
    /// From its `admin ADDR` line, when it was given `--admin`.
    pub admin: Option<SocketAddr>,
    /// Its stderr lines, when started with the log collected.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl TestProcess {
    /// `mlcache-relay --listen 127.0.0.1:0 --admin 127.0.0.1:0 ARGS`.
    pub fn relay(args: &[&str]) -> TestProcess {
        Self::relay_with("", args, false)
    }

    /// [`TestProcess::relay`] run as `sh -c "PREFIX exec mlcache-relay ..."`
    /// when `prefix` is not empty (it may set limits: `ulimit -n 64 &&`), and
    /// with `RUST_LOG=info` and its stderr collected in `log` if `log`.
    pub fn relay_with(prefix: &str, args: &[&str], log: bool) -> TestProcess {
        let bin = env!("CARGO_BIN_EXE_mlcache-relay");
        let mut cmd = if prefix.is_empty() {
            Command::new(bin)
        } else {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("{prefix} exec \"$0\" \"$@\""))
                .arg(bin);
            sh
        };
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args);
        if log {
            cmd.env("RUST_LOG", "info");
        }
        Self::start(cmd, log)
    }

    /// Starts `cmd` and reads the address(es) it prints (see [`read_addrs`]);
    /// an `admin ADDR` line is awaited if `cmd` has an `--admin` argument.
    /// Its stderr is collected in `log` if `log`, else discarded.
    pub fn start(mut cmd: Command, log: bool) -> TestProcess {
        let want_admin = cmd.get_args().any(|a| a == "--admin");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if log { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().push(line);
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (addr, admin) = read_addrs(stdout, want_admin, STARTUP)
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}; stderr: {:?}", lines.lock()));
        TestProcess {
            child,
            addr,
            admin,
            log: lines,
        }
    }

    /// `mlcache-origin --listen 127.0.0.1:0 --plaintext --token t ARGS`
    /// (e.g. `--ll` for the LL-HLS / LL-DASH head end).
    pub fn origin(args: &[&str]) -> TestProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlcache-origin"));
        cmd.args(["--listen", "127.0.0.1:0", "--plaintext", "--token", "t"])
            .args(args);
        Self::start(cmd, false)
    }

    /// Its admin address (it was started with `--admin`).
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("started with --admin")
    }

    /// Sends it a signal, `kill`-style (`-TERM`, `-HUP`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a server's stdout on a thread of its own until it has printed
/// `listening ADDR` (and `admin ADDR` if `want_admin`), as the relay and the
/// origin do, then keeps draining it so the server never blocks on a full
/// pipe. Fails if the output ends first or `limit` passes.
pub fn read_addrs(
    stdout: impl Read + Send + 'static,
    want_admin: bool,
    limit: Duration,
) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            if let (Some(what @ ("listening" | "admin")), Some(Ok(a))) =
                (words.next(), words.next().map(str::parse::<SocketAddr>))
            {
                let _ = tx.send((what == "admin", a));
            }
        }
    });
    let deadline = std::time::Instant::now() + limit;
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || (want_admin && admin.is_none()) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, a)) => admin = Some(a),
            Ok((false, a)) => addr = Some(a),
            Err(e) => return Err(format!("no address printed: {e}")),
        }
    }
    Ok((addr.unwrap(), admin))
}

/// Waits until a sample on a relay's admin listener reads `value` (or
/// panics after `limit`): [`until`] for another process's metrics.
pub async fn until_metric(admin: SocketAddr, sample: &str, value: f64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = metric(admin, sample).await;
        if now == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {sample} = {value} (it is {now})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one Prometheus sample (`name{labels}` exactly as rendered).
pub async fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let req = Request::get("/metrics")
        .header("host", "admin")
        .body(Empty::new())
        .unwrap();
    let got = h1(admin, req).await.expect("metrics");
    let text = String::from_utf8_lossy(got.bytes()).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// What an in-test TCP proxy does to the bytes going back to the client.
#[derive(Clone, Copy, Debug)]
pub enum Tamper {
    /// Pass everything through.
    None,
    /// Flip one bit of the byte at this offset of each response stream.
    FlipAt(usize),
    /// Close both sides after this many bytes of each response stream.
    CutAfter(usize),
}

/// An in-test TCP proxy.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every byte it carried, both directions.
    pub seen: Arc<Mutex<Vec<u8>>>,
    /// Connections it accepted.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

/// A TCP proxy to `target` that records every byte in both directions and
/// can tamper with what flows back.
pub async fn proxy(target: SocketAddr, tamper: Tamper) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    proxy_on(listener, target, tamper)
}

/// [`proxy`] on a listener bound beforehand (so its address can be known
/// before `target` exists, e.g. as an origin's `authority`).
pub fn proxy_on(listener: TcpListener, target: SocketAddr, tamper: Tamper) -> Proxy {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (rec, count) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Ok(up) = TcpStream::connect(target).await else {
                continue;
            };
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let r1 = rec.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = dr.read(&mut buf).await {
                    if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    r1.lock().extend_from_slice(&buf[..n]);
                }
                let _ = uw.shutdown().await;
            });
            let r2 = rec.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut pos = 0usize;
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r2.lock().extend_from_slice(&buf[..n]);
                    match tamper {
                        Tamper::FlipAt(at) if at >= pos && at < pos + n => buf[at - pos] ^= 0x01,
                        Tamper::CutAfter(limit) if pos + n > limit => {
                            let keep = limit.saturating_sub(pos);
                            let _ = dw.write_all(&buf[..keep]).await;
                            return; // dropping both halves closes the connection
                        }
                        _ => {}
                    }
                    pos += n;
                    if dw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = dw.shutdown().await;
            });
        }
    });
    Proxy {
        addr,
        seen,
        accepted,
    }
}

/// An encrypting origin with its TLS API, on an ephemeral port.
pub async fn secure_origin(f: impl FnOnce(&mut OriginConfig)) -> (OriginHandle, String) {
    let pki = mlcache::tls::TestPki::generate(&["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap();
    let ca = pki.ca_pem.clone();
    let origin = origin_with(|c| {
        c.encryption = Some(mlcache::origin::Encryption::random(4, 1024));
        c.tls = Some(pki.server);
        c.token = Some("test-token".into());
        f(c);
    })
    .await;
    (origin, ca)
}

/// A client config for `origin` trusting `ca`.
pub fn client_config(origin: &OriginHandle, ca: &str) -> mlcache::client::ClientConfig {
    mlcache::client::ClientConfig {
        api: Some(format!("https://{}", origin.addr)),
        token: "test-token".into(),
        ca_pem: Some(ca.as_bytes().to_vec()),
        fetch_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A CA and a server certificate for `127.0.0.1` and `localhost`, written
/// as PEM files into a fresh temporary directory (removed on drop).
pub struct CertFiles {
    pub dir: std::path::PathBuf,
    /// The CA certificate, PEM, for clients to trust.
    pub ca_pem: String,
    /// Where the CA certificate is written.
    pub ca: std::path::PathBuf,
    /// The server certificate chain (leaf, then CA).
    pub cert: std::path::PathBuf,
    /// The server's private key.
    pub key: std::path::PathBuf,
    /// The chain and key as written.
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertFiles {
    /// Generates a fresh CA and server certificate; `tag` names the directory.
    pub fn generate(tag: &str) -> CertFiles {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("mlcache test CA {tag}"));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "mlcache-tls-{}-{tag}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = CertFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca_pem: ca.pem(),
            cert_pem: format!("{}{}", leaf.pem(), ca.pem()),
            key_pem: leaf_key.serialize_pem(),
            dir,
        };
        std::fs::write(&files.ca, &files.ca_pem).unwrap();
        files.install(&files.cert, &files.key);
        files
    }

    /// Writes this pair over `cert` and `key` (as an operator renewing a
    /// certificate would, before SIGHUP).
    pub fn install(&self, cert: &std::path::Path, key: &std::path::Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }

    pub fn path(p: &std::path::Path) -> &str {
        p.to_str().unwrap()
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl TestProcess {
    /// `mlcache-relay --listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 --admin
    /// 127.0.0.1:0 ARGS` with its log collected (`RUST_LOG=info`); returns it
    /// and its TLS address (its `tls ADDR` line).
    pub fn relay_tls(args: &[&str]) -> (TestProcess, SocketAddr) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlcache-relay"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "info");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut words = line.split_whitespace();
                if let (Some(what), Some(Ok(a))) =
                    (words.next(), words.next().map(str::parse::<SocketAddr>))
                {
                    let _ = tx.send((what.to_string(), a));
                }
            }
        });
        let deadline = std::time::Instant::now() + STARTUP;
        let mut seen = std::collections::HashMap::new();
        while seen.len() < 3 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((what, a)) => {
                    seen.insert(what, a);
                }
                Err(e) => panic!(
                    "{cmd:?}: no addresses printed: {e}; stderr: {:?}",
                    log.lock()
                ),
            }
        }
        let tls = seen["tls"];
        let p = TestProcess {
            child,
            addr: seen["listening"],
            admin: Some(seen["admin"]),
            log,
        };
        (p, tls)
    }

    /// Whether a line of its collected log contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().iter().any(|l| l.contains(text))
    }
}

/// A TLS connection to `addr` trusting `ca_pem`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = mlcache::tls::client_config_alpn(Some(ca_pem.as_bytes()), alpn)
        .map_err(|e| e.to_string())?;
    mlcache::tls::connect(&config, "127.0.0.1", addr, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())
}

/// The ALPN protocol a TLS connection negotiated.
pub fn alpn_of(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// Sends `req` over a fresh TLS connection with ALPN `http/1.1`.
pub async fn h1_tls(addr: SocketAddr, ca: &str, req: Request<Empty<Bytes>>) -> Result<Got, String> {
    let tls = tls_connect(addr, ca, &[b"http/1.1"]).await?;
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    read(resp).await
}

/// An h2 connection over TLS (ALPN `h2`, checked) to `addr`, for several
/// requests.
pub async fn h2_tls_conn(
    addr: SocketAddr,
    ca: &str,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, String> {
    let tls = tls_connect(addr, ca, &[b"h2"]).await?;
    assert_eq!(alpn_of(&tls).as_deref(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends `req` on an h2 connection and reads the whole response.
pub async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> Result<Got, String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    read(resp).await
}
