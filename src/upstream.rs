//! The client side of a relay: asks parent relays, in order, and falls back to
//! the origin itself.
//!
//! Parents are spoken to over HTTP/2 with prior knowledge, one connection per
//! parent, so every in-flight long-poll to a parent shares one TCP connection.
//! The request names the chunk CDN style (`:authority` = origin, `:path` =
//! path-and-query) and carries `Via`, so the parent applies its own allow-list
//! and loop check. Origins are HTTP/1.1, because any web server must do:
//! `http://` ones through a pooled client, `https://` ones over rustls
//! (webpki roots, or `--origin-ca`).
//!
//! A parent that refuses the connection, drops it, times out or answers 503
//! is skipped; one that cannot be reached is marked down for a short while so
//! later fetches go straight to the next source instead of paying the
//! connect timeout again. Any other answer, including 404 and "not yet", is
//! final: it is an answer, not a failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::key::{ChunkKey, Origin, Scheme};
use crate::metrics::Metrics;

/// How long a parent that could not be reached is skipped.
pub const PARENT_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// Why no upstream produced a response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every source refused or dropped the connection.
    #[error("no upstream reachable (last error: {0})")]
    Unreachable(String),
    /// The source that was asked did not answer in time.
    #[error("{target} sent no response head within {after:?}")]
    Timeout {
        /// Which source.
        target: String,
        /// How long the relay waited.
        after: Duration,
    },
    /// The TLS trust roots for https origins could not be set up.
    #[error("TLS for https origins: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A parent URL in the configuration is unusable.
    #[error("invalid upstream {0:?}: expected http://HOST:PORT or probe:IP:PORT")]
    BadParent(String),
}

/// Which kind of source answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A parent relay (index into `--upstream`).
    Parent(usize),
    /// The origin itself.
    Origin,
}

impl Source {
    /// The metric label of this source.
    pub fn label(self) -> &'static str {
        match self {
            Source::Parent(_) => "parent",
            Source::Origin => "origin",
        }
    }
}

/// Time limits of upstream requests.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From request sent to response head (the long-poll hold).
    pub head: Duration,
}

struct Parent {
    url: String,
    addr: String,
    /// `probe:ADDR`: the parent is whichever relay answers the anycast probe.
    probe: Option<std::net::SocketAddr>,
    conn: Mutex<Option<SendRequest<Empty<Bytes>>>>,
    down_until: Mutex<Option<Instant>>,
}

impl Parent {
    fn is_down(&self) -> bool {
        matches!(*self.down_until.lock(), Some(t) if t > Instant::now())
    }

    fn mark_down(&self) {
        *self.conn.lock() = None;
        *self.down_until.lock() = Some(Instant::now() + PARENT_DOWN_BACKOFF);
    }

    /// The shared HTTP/2 connection, opened on first use or after a failure.
    async fn sender(
        &self,
        connect: Duration,
        own_id: &str,
    ) -> Result<SendRequest<Empty<Bytes>>, String> {
        let cached = self.conn.lock().clone();
        if let Some(s) = cached.filter(|s| !s.is_closed()) {
            return Ok(s);
        }
        let addr = match self.probe {
            None => self.addr.clone(),
            Some(anycast) => {
                let answer = crate::probe::probe(anycast, crate::probe::DEFAULT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                if answer.id == own_id {
                    return Err(format!("probe {anycast} found this relay itself"));
                }
                if !answer.healthy {
                    return Err(format!(
                        "probe {anycast}: relay {} is not healthy",
                        answer.id
                    ));
                }
                let a = answer
                    .unicast()
                    .ok_or_else(|| format!("probe {anycast}: no usable URL"))?;
                tracing::info!(%anycast, parent = %answer.id, unicast = %a, "found parent by probe");
                a.to_string()
            }
        };
        let tcp = tokio::time::timeout(connect, TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("connect to {} timed out", self.url))?
            .map_err(|e| format!("connect to {}: {e}", self.url))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("h2 handshake with {}: {e}", self.url))?;
        let url = self.url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(parent = %url, error = %e, "parent connection ended");
            }
        });
        *self.conn.lock() = Some(sender.clone());
        Ok(sender)
    }
}

/// The parent relays and the origin client.
pub struct Upstream {
    own_id: String,
    tls: Arc<rustls::ClientConfig>,
    parents: Vec<Parent>,
    origin: Client<HttpConnector, Empty<Bytes>>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Builds the client for `parents` (URLs such as `http://10.0.0.1:8080`).
    pub fn new(
        parents: &[String],
        own_id: String,
        origin_ca: Option<&[u8]>,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamError> {
        let tls = crate::tls::client_config(origin_ca)?;
        let parents = parents
            .iter()
            .map(|p| {
                if let Some(a) = p.strip_prefix("probe:") {
                    let addr = a.parse().map_err(|_| UpstreamError::BadParent(p.clone()))?;
                    return Ok(Parent {
                        url: p.clone(),
                        addr: String::new(),
                        probe: Some(addr),
                        conn: Mutex::new(None),
                        down_until: Mutex::new(None),
                    });
                }
                let uri: Uri = p.parse().map_err(|_| UpstreamError::BadParent(p.clone()))?;
                if uri.scheme_str() != Some("http") || !matches!(uri.path(), "" | "/") {
                    return Err(UpstreamError::BadParent(p.clone()));
                }
                let auth = uri
                    .authority()
                    .ok_or_else(|| UpstreamError::BadParent(p.clone()))?;
                let port = auth.port_u16().unwrap_or(80);
                Ok(Parent {
                    url: p.clone(),
                    addr: format!("{}:{}", auth.host().trim_matches(['[', ']']), port),
                    probe: None,
                    conn: Mutex::new(None),
                    down_until: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        let origin = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Upstream {
            own_id,
            tls,
            parents,
            origin,
            timeouts,
            metrics,
        })
    }

    /// Fetches `key`: each parent in order, then the origin. `via` is the
    /// request's `Via` with this relay's entry already appended.
    pub async fn fetch(
        &self,
        key: &ChunkKey,
        origin: &Origin,
        via: &HeaderValue,
    ) -> Result<(Response<Incoming>, Source), UpstreamError> {
        let mut last = String::from("no parent configured");
        for (i, parent) in self.parents.iter().enumerate() {
            if parent.is_down() {
                continue;
            }
            match self.ask_parent(parent, key, via).await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    self.metrics.upstream("parent", "unavailable");
                    last = format!("{} answered 503", parent.url);
                }
                Ok(resp) => return Ok((resp, Source::Parent(i))),
                Err(e) => {
                    self.metrics.upstream("parent", "down");
                    tracing::warn!(parent = %parent.url, error = %e, "parent failed, trying next source");
                    parent.mark_down();
                    last = e;
                }
            }
        }
        if !self.parents.is_empty() {
            tracing::info!(%key, last_error = %last, "every parent failed, going to the origin");
        }
        self.ask_origin(key, origin, via)
            .await
            .map(|r| (r, Source::Origin))
    }

    async fn ask_parent(
        &self,
        parent: &Parent,
        key: &ChunkKey,
        via: &HeaderValue,
    ) -> Result<Response<Incoming>, String> {
        let mut sender = parent.sender(self.timeouts.connect, &self.own_id).await?;
        let req = Request::get(format!("http://{}{}", key.authority, key.path))
            .version(http::Version::HTTP_2)
            .header(http::header::VIA, via.clone())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let head = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        match tokio::time::timeout(self.timeouts.head, head).await {
            Err(_) => Err(format!(
                "{} sent no head within {:?}",
                parent.url, self.timeouts.head
            )),
            Ok(Err(e)) => Err(format!("{}: {e}", parent.url)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// One request over a fresh TLS connection to an `https://` origin.
    async fn ask_over_tls(
        &self,
        origin: &Origin,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, String> {
        let addr = format!("{}:{}", origin.host.trim_matches(['[', ']']), origin.port);
        let tcp = tokio::time::timeout(self.timeouts.connect, TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(
            origin.host.trim_matches(['[', ']']).to_string(),
        )
        .map_err(|e| format!("TLS name {}: {e}", origin.host))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send.send_request(req).await.map_err(|e| e.to_string())
    }

    async fn ask_origin(
        &self,
        key: &ChunkKey,
        origin: &Origin,
        via: &HeaderValue,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let url = match origin.scheme {
            Scheme::Http => origin.url(&key.path),
            // hyper sends the path and a Host header on a TLS connection.
            Scheme::Https => key.path.clone(),
        };
        let req = Request::get(url)
            .header(http::header::HOST, origin.host_header())
            .header(http::header::VIA, via.clone())
            .body(Empty::new())
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let sent = async {
            match origin.scheme {
                Scheme::Http => self.origin.request(req).await.map_err(|e| e.to_string()),
                Scheme::Https => self.ask_over_tls(origin, req).await,
            }
        };
        match tokio::time::timeout(self.timeouts.head, sent).await {
            Err(_) => {
                self.metrics.upstream("origin", "timeout");
                Err(UpstreamError::Timeout {
                    target: origin.canonical(),
                    after: self.timeouts.head,
                })
            }
            Ok(Err(e)) => {
                self.metrics.upstream("origin", "error");
                Err(UpstreamError::Unreachable(format!(
                    "origin {}: {e}",
                    origin.canonical()
                )))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}
