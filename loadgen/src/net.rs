//! Connections for simulated viewers: source-address spreading, HTTP/1.1 or
//! shared HTTP/2 clients (the one place a TCP connection becomes an HTTP
//! client here), a one-shot GET, and a loopback throughput probe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Connections per source address (Linux's default ephemeral range holds
/// about 28,000 ports; the headroom leaves room for the TIME_WAIT of a
/// previous run).
pub const PORTS_PER_SOURCE: usize = 16_000;

/// Source address number `i` of `n`: 127.0.0.1, 127.0.0.2, ... All of
/// 127.0.0.0/8 is loopback on Linux, so no setup is needed.
pub fn source(i: usize, n: usize) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    let k = (i % n) as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 0)) + k,
    )))
}

/// Opens a TCP connection to `dst`, from `src` when given.
pub async fn connect(dst: SocketAddr, src: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        // Without IP_BIND_ADDRESS_NO_PORT, bind(ip, 0) must pick a port
        // unused towards every destination, a search that gets slow (and
        // fails with EADDRINUSE) as the range fills; with it the port is
        // chosen at connect, unique per destination.
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a live local.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A client connection, HTTP/1.1 (one request at a time) or HTTP/2 (shared).
pub enum Client {
    /// One viewer's own connection.
    H1(http1::SendRequest<Empty<Bytes>>),
    /// A connection many viewers multiplex over.
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    /// Opens a connection.
    pub async fn open(dst: SocketAddr, src: Option<IpAddr>, h2: bool) -> Result<Client, String> {
        let tcp = connect(dst, src)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(mlcache::protocol::H2_MAX_FRAME_SIZE)
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Client::H2(send))
        } else {
            let (send, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Client::H1(send))
        }
    }

    /// Sends one request and returns the response head with its streaming body.
    pub async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Client::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Another handle on a shared HTTP/2 connection (`None` for HTTP/1.1,
    /// whose connection serves one viewer).
    pub fn share(&self) -> Option<Client> {
        match self {
            Client::H1(_) => None,
            Client::H2(s) => Some(Client::H2(s.clone())),
        }
    }

    /// Whether the connection can take more requests.
    pub fn is_closed(&self) -> bool {
        match self {
            Client::H1(s) => s.is_closed(),
            Client::H2(s) => s.is_closed(),
        }
    }
}

/// One GET of `uri` with `Host: host` on a new HTTP/1.1 connection to
/// `dst`; the status and the whole body. The caller bounds it in time.
pub async fn get(
    dst: SocketAddr,
    uri: &str,
    host: &str,
) -> Result<(http::StatusCode, Bytes), String> {
    let mut c = Client::open(dst, None, false).await?;
    let req = http::Request::get(uri)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = c.send(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Measures loopback TCP throughput (bytes per second) by streaming `total`
/// bytes through one connection: the B in the physical bound k × size / B.
pub async fn loopback_throughput(total: usize) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        while n < total {
            let r = s.read(&mut buf).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        Ok::<_, std::io::Error>(n)
    });
    let mut w = TcpStream::connect(addr).await?;
    let block = vec![0x42u8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        w.write_all(&block).await?;
        sent += block.len();
    }
    w.shutdown().await?;
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .map_err(|_| std::io::Error::other("loopback probe timed out"))?
        .map_err(std::io::Error::other)??;
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// The connections a group of viewers use: over HTTP/2, one shared
/// connection per `per_conn` viewers, opened as the viewers are started (as
/// browsers share one connection per origin); over HTTP/1.1, none here (each
/// viewer opens its own).
pub struct SharedConns {
    target: SocketAddr,
    h2: bool,
    per_conn: usize,
    conns: Vec<Client>,
}

impl SharedConns {
    /// For viewers of `target`.
    pub fn new(target: SocketAddr, h2: bool, per_conn: usize) -> SharedConns {
        SharedConns {
            target,
            h2,
            per_conn: per_conn.max(1),
            conns: Vec::new(),
        }
    }

    /// The shared connection for the group's `i`-th viewer (opening it from
    /// `src` if it is the first of its share), or `None` over HTTP/1.1.
    pub async fn for_viewer(
        &mut self,
        i: usize,
        src: Option<IpAddr>,
    ) -> Result<Option<Client>, String> {
        if !self.h2 {
            return Ok(None);
        }
        let k = i / self.per_conn;
        if k >= self.conns.len() {
            self.conns.push(Client::open(self.target, src, true).await?);
        }
        Ok(self.conns[k].share())
    }
}
