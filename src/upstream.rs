//! The client side of a relay: asks parent relays, in order, and falls back to
//! the origin itself.
//!
//! Parents are spoken to over HTTP/2 with prior knowledge, one connection per
//! parent, so every in-flight long-poll to a parent shares one TCP connection.
//! The request names the chunk CDN style (`:authority` = origin, `:path` =
//! path-and-query) and carries `Via`, so the parent applies its own allow-list
//! and loop check. Origins are HTTP/1.1, because any web server must do:
//! `http://` and `https://` ones (rustls, webpki roots or `--origin-ca`) both
//! through a small keep-alive pool of this module's own ([`OriginPool`]),
//! which decides itself which connection may carry another request.
//!
//! Every failure is a typed [`Failure`] with a [`Blame`] (which source), and
//! the retry rules follow from its kind:
//!
//! - **Connection-level failures** (connect refused or timed out, probe
//!   failure, the connection closed, reset or sent GOAWAY before a head) mark
//!   that one parent down for [`PARENT_DOWN_BACKOFF`], and the next source is
//!   tried. A failure on a *reused* connection first reconnects once: a
//!   pooled connection the peer has just closed is not evidence that the
//!   peer is down.
//! - **A parent's 5xx** (502, 503, 504, 508 loop, any 5xx: docs/protocol.md)
//!   tries the next source without marking the parent down: it answered.
//!   So do a stream the parent reset and a response head the relay refused
//!   (over [`UpstreamLimits::max_head`], or malformed).
//! - **No head within `--upstream-hold`** (a slow long-poll) never marks the
//!   parent down and does not go on to the origin either: the fetch ends with
//!   the timeout (504). The hold is most likely the head end holding a chunk
//!   that does not exist yet. Asking the origin directly would be held just
//!   the same, and every child relay doing so would bypass the tree and
//!   multiply the origin's load exactly at the live edge. A parent that is
//!   really wedged is caught by the h2 keep-alive ping, which fails the
//!   connection (a connection-level failure).
//! - **The origin** is the last source: its failure is the fetch's error, and
//!   any answer it gives (including a 5xx) is final.
//!
//! Before a response is returned its framing is normalised: with both
//! `Transfer-Encoding` and `Content-Length`, Transfer-Encoding wins and
//! Content-Length is removed (RFC 9112 §6.3). hyper decodes such a body as
//! chunked but keeps both headers, and keeps the connection alive; the pool
//! closes it after the response instead, since the message may be a
//! smuggling or response-splitting attempt (the same section says to treat
//! it as an error).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::key::{ChunkKey, Origin, Scheme};
use crate::metrics::Metrics;

/// How long a parent that could not be reached is skipped.
pub const PARENT_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// Default limit of an upstream response head, in bytes.
pub const DEFAULT_MAX_HEAD: usize = 64 << 10;

/// An idle origin connection older than this is closed rather than reused.
pub const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many idle connections are kept per origin.
pub const ORIGIN_MAX_IDLE: usize = 32;

/// hyper's default HTTP/1 read buffer limit (8 KiB + 100 × 4 KiB).
const H1_DEFAULT_BUF: usize = 8192 + 4096 * 100;

/// Who failed: the source that was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// A parent relay.
    Parent,
    /// The origin.
    Origin,
}

impl Blame {
    /// The metric label (`target`).
    pub fn label(self) -> &'static str {
        match self {
            Blame::Parent => "parent",
            Blame::Origin => "origin",
        }
    }
}

impl std::fmt::Display for Blame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What went wrong with one request to one source.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The TCP connection was refused.
    #[error("connection refused")]
    ConnectRefused,
    /// The TCP connection was not established in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Any other connect error (name resolution, unreachable network).
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// `probe:ADDR` found no usable parent.
    #[error("anycast probe: {0}")]
    Probe(String),
    /// The TLS handshake with an `https://` origin failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection was closed, reset or went away (GOAWAY) before a
    /// response head.
    #[error("connection closed before a response head: {0}")]
    Closed(String),
    /// The peer reset this request's stream (HTTP/2 `RST_STREAM`).
    #[error("stream reset by the peer: {0}")]
    Reset(String),
    /// No response head within the hold time (a slow long-poll).
    #[error("no response head within {0:?}")]
    HeadTimeout(Duration),
    /// The response head was over the limit (bytes, or more than 100 fields
    /// over HTTP/1.1).
    #[error("response head over the {limit}-byte limit")]
    HeadTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The response could not be parsed or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A parent answered with a server error.
    #[error("answered {0}")]
    Status(StatusCode),
}

impl Failure {
    /// The metric label (`result`).
    pub fn label(&self) -> &'static str {
        match self {
            Failure::ConnectRefused => "refused",
            Failure::ConnectTimeout(_) => "connect_timeout",
            Failure::Connect(_) => "connect_error",
            Failure::Probe(_) => "probe_failed",
            Failure::Tls(_) => "tls_error",
            Failure::Closed(_) => "closed",
            Failure::Reset(_) => "reset",
            Failure::HeadTimeout(_) => "timeout",
            Failure::HeadTooLarge { .. } => "head_too_large",
            Failure::Protocol(_) => "protocol_error",
            Failure::Status(_) => "status_5xx",
        }
    }

    /// Whether this says the source cannot be reached at all, so a parent is
    /// marked down. Only connection-level failures do.
    pub fn is_connection_level(&self) -> bool {
        matches!(
            self,
            Failure::ConnectRefused
                | Failure::ConnectTimeout(_)
                | Failure::Connect(_)
                | Failure::Probe(_)
                | Failure::Tls(_)
                | Failure::Closed(_)
        )
    }

    /// Whether the source was too slow (504) rather than broken (502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Failure::ConnectTimeout(_) | Failure::HeadTimeout(_))
    }

    /// Whether a request that failed this way on a reused connection should
    /// be sent again once on a fresh one.
    fn is_stale_connection(&self) -> bool {
        matches!(self, Failure::Closed(_))
    }
}

/// Why a fetch (or setting up the client) failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The source that ended the fetch failed.
    #[error("{blame} {target}: {failure}")]
    Fetch {
        /// Which kind of source.
        blame: Blame,
        /// The parent's URL or the origin's `host:port`.
        target: String,
        /// What went wrong.
        failure: Failure,
    },
    /// The TLS trust roots for https origins could not be set up.
    #[error("TLS for https origins: {0}")]
    TlsSetup(#[from] crate::tls::TlsError),
    /// A parent URL in the configuration is unusable.
    #[error("invalid upstream {0:?}: expected http://HOST:PORT or probe:IP:PORT")]
    BadParent(String),
}

impl UpstreamError {
    /// Whether the viewer should get 504 (a timeout) rather than 502.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Fetch { failure, .. } if failure.is_timeout())
    }

    /// The status to answer a viewer with: 504 for a timeout, else 502.
    pub fn status(&self) -> StatusCode {
        if self.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }

    /// The metric label of the failure (`result`).
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Fetch { failure, .. } => failure.label(),
            UpstreamError::TlsSetup(_) | UpstreamError::BadParent(_) => "config",
        }
    }

    /// Which source failed, for a fetch error.
    pub fn blame(&self) -> Option<Blame> {
        match self {
            UpstreamError::Fetch { blame, .. } => Some(*blame),
            _ => None,
        }
    }

    /// The failure of a fetch error.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            UpstreamError::Fetch { failure, .. } => Some(failure),
            _ => None,
        }
    }
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

/// Size limits of upstream responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Largest response head accepted, in bytes: the raw head (status line
    /// and fields) from origins, and the decoded header list (RFC 9113
    /// §6.5.2 sizes: name + value + 32 per field) from parents.
    /// A bigger head is a [`Failure::HeadTooLarge`]: 502, no parent marked
    /// down.
    pub max_head: usize,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        UpstreamLimits {
            max_head: DEFAULT_MAX_HEAD,
        }
    }
}

struct Parent {
    url: String,
    addr: String,
    /// `probe:ADDR`: the parent is whichever relay answers the anycast probe.
    probe: Option<std::net::SocketAddr>,
    conn: Mutex<Option<http2::SendRequest<Empty<Bytes>>>>,
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

    /// The shared connection if it is still open, else a new one; `true`
    /// when it was reused.
    async fn sender(
        &self,
        up: &Upstream,
    ) -> Result<(http2::SendRequest<Empty<Bytes>>, bool), Failure> {
        let cached = self.conn.lock().clone();
        if let Some(s) = cached.filter(|s| !s.is_closed()) {
            return Ok((s, true));
        }
        Ok((self.connect(up).await?, false))
    }

    /// Opens a new HTTP/2 connection and makes it the shared one.
    async fn connect(&self, up: &Upstream) -> Result<http2::SendRequest<Empty<Bytes>>, Failure> {
        let addr = match self.probe {
            None => self.addr.clone(),
            Some(anycast) => {
                let answer = crate::probe::probe(anycast, crate::probe::DEFAULT_TIMEOUT)
                    .await
                    .map_err(|e| Failure::Probe(e.to_string()))?;
                if answer.id == up.own_id {
                    return Err(Failure::Probe(format!("{anycast} found this relay itself")));
                }
                if !answer.healthy {
                    return Err(Failure::Probe(format!(
                        "{anycast}: relay {} is not healthy",
                        answer.id
                    )));
                }
                let a = answer
                    .unicast()
                    .ok_or_else(|| Failure::Probe(format!("{anycast}: no usable URL")))?;
                tracing::info!(%anycast, parent = %answer.id, unicast = %a, "found parent by probe");
                a.to_string()
            }
        };
        let tcp = connect_tcp(&addr, up.timeouts.connect).await?;
        // The h2 limit is a backstop at twice the head limit, so a head just
        // over the limit is decoded and refused with a precise error
        // (`check_head_size`) instead of an anonymous stream reset.
        let backstop = u32::try_from(up.limits.max_head.saturating_mul(2)).unwrap_or(u32::MAX);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_header_list_size(backstop)
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| classify(&e, up.limits.max_head))?;
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

struct Idle {
    send: http1::SendRequest<Empty<Bytes>>,
    since: Instant,
}

impl Idle {
    fn usable(&self) -> bool {
        !self.send.is_closed() && self.since.elapsed() < ORIGIN_IDLE_TIMEOUT
    }
}

/// Idle HTTP/1.1 keep-alive connections to origins, by `scheme://host:port`.
///
/// A connection goes back only after its response body was read to the end
/// and hyper says it is ready for another request, and never after a
/// response with broken framing (see the module doc). hyper closes a
/// connection whose body failed or was dropped unread, so those never come
/// back either. Closed and expired connections are swept whenever the pool
/// of that origin is used.
#[derive(Default)]
pub struct OriginPool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl OriginPool {
    fn take(&self, key: &str) -> Option<http1::SendRequest<Empty<Bytes>>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.usable() && c.send.is_ready() {
                return Some(c.send);
            }
        }
        None
    }

    fn put(&self, key: &str, send: http1::SendRequest<Empty<Bytes>>) {
        let mut idle = self.idle.lock();
        let list = idle.entry(key.to_string()).or_default();
        list.retain(Idle::usable);
        if list.len() >= ORIGIN_MAX_IDLE {
            // Dropping a SendRequest closes its idle connection.
            list.remove(0);
        }
        list.push(Idle {
            send,
            since: Instant::now(),
        });
    }

    /// Idle connections held for `origin` (closed ones that were not swept
    /// yet included).
    pub fn idle(&self, origin: &Origin) -> usize {
        self.idle.lock().get(&pool_key(origin)).map_or(0, Vec::len)
    }
}

/// The parent relays and the origin client.
pub struct Upstream {
    own_id: String,
    tls: Arc<rustls::ClientConfig>,
    parents: Vec<Parent>,
    pool: Arc<OriginPool>,
    timeouts: Timeouts,
    limits: UpstreamLimits,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Builds the client for `parents` (URLs such as `http://10.0.0.1:8080`)
    /// with the default [`UpstreamLimits`].
    pub fn new(
        parents: &[String],
        own_id: String,
        origin_ca: Option<&[u8]>,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamError> {
        Upstream::with_limits(
            parents,
            own_id,
            origin_ca,
            timeouts,
            metrics,
            UpstreamLimits::default(),
        )
    }

    /// Builds the client with explicit limits.
    pub fn with_limits(
        parents: &[String],
        own_id: String,
        origin_ca: Option<&[u8]>,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
        limits: UpstreamLimits,
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
        Ok(Upstream {
            own_id,
            tls,
            parents,
            pool: Arc::new(OriginPool::default()),
            timeouts,
            limits,
            metrics,
        })
    }

    /// Whether parent `index` (into `--upstream`) is marked down right now.
    pub fn parent_down(&self, index: usize) -> bool {
        self.parents.get(index).is_some_and(Parent::is_down)
    }

    /// The origin connection pool (for diagnostics and tests).
    pub fn origin_pool(&self) -> &OriginPool {
        &self.pool
    }

    /// Fetches `key`: each parent in order, then the origin. `via` is the
    /// request's `Via` with this relay's entry already appended. The retry
    /// rules are in the module doc.
    pub async fn fetch(
        &self,
        key: &ChunkKey,
        origin: &Origin,
        via: &HeaderValue,
    ) -> Result<(Response<Incoming>, Source), UpstreamError> {
        for (i, parent) in self.parents.iter().enumerate() {
            if parent.is_down() {
                self.metrics.upstream("parent", "skipped_down");
                continue;
            }
            let failure = match self.ask_parent(parent, key, via).await {
                Ok(resp) if resp.status().is_server_error() => Failure::Status(resp.status()),
                Ok(resp) => return Ok((resp, Source::Parent(i))),
                Err(f) => f,
            };
            self.metrics.upstream("parent", failure.label());
            if failure.is_connection_level() {
                parent.mark_down();
                self.metrics.upstream("parent", "down");
                tracing::warn!(parent = %parent.url, %key, error = %failure, backoff = ?PARENT_DOWN_BACKOFF, "parent unreachable: marked down, trying the next source");
            } else if let Failure::HeadTimeout(_) = failure {
                // Not down, and not bypassed either: see the module doc.
                tracing::info!(parent = %parent.url, %key, error = %failure, "parent held the request past --upstream-hold");
                return Err(UpstreamError::Fetch {
                    blame: Blame::Parent,
                    target: parent.url.clone(),
                    failure,
                });
            } else {
                tracing::debug!(parent = %parent.url, %key, error = %failure, "parent failed this request, trying the next source");
            }
        }
        self.ask_origin(key, origin, via)
            .await
            .map(|r| (r, Source::Origin))
            .map_err(|failure| {
                self.metrics.upstream("origin", failure.label());
                UpstreamError::Fetch {
                    blame: Blame::Origin,
                    target: origin.canonical(),
                    failure,
                }
            })
    }

    async fn ask_parent(
        &self,
        parent: &Parent,
        key: &ChunkKey,
        via: &HeaderValue,
    ) -> Result<Response<Incoming>, Failure> {
        let request = || {
            Request::get(format!("http://{}{}", key.authority, key.path))
                .version(http::Version::HTTP_2)
                .header(http::header::VIA, via.clone())
                .body(Empty::new())
                .map_err(|e| Failure::Protocol(format!("request: {e}")))
        };
        let deadline = tokio::time::Instant::now() + self.timeouts.head;
        let (sender, reused) = parent.sender(self).await?;
        let mut resp = match self.send_h2(sender, request()?, deadline).await {
            Err(f) if reused && f.is_stale_connection() => {
                tracing::debug!(parent = %parent.url, error = %f, "shared parent connection was stale: reconnecting once");
                self.metrics.upstream("parent", "stale_retried");
                let sender = parent.connect(self).await?;
                self.send_h2(sender, request()?, deadline).await?
            }
            r => r?,
        };
        normalize_framing(&mut resp);
        Ok(resp)
    }

    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<Empty<Bytes>>,
        req: Request<Empty<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, Failure> {
        let head = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        let resp = match tokio::time::timeout_at(deadline, head).await {
            Err(_) => return Err(Failure::HeadTimeout(self.timeouts.head)),
            Ok(Err(e)) => return Err(classify(&e, self.limits.max_head)),
            Ok(Ok(resp)) => resp,
        };
        check_head_size(resp.headers(), self.limits.max_head)?;
        Ok(resp)
    }

    /// One HTTP/1.1 connection to `origin` (TLS for `https://`).
    async fn connect_origin(
        &self,
        origin: &Origin,
    ) -> Result<http1::SendRequest<Empty<Bytes>>, Failure> {
        let host = origin.host.trim_matches(['[', ']']);
        let tcp = connect_tcp(&format!("{host}:{}", origin.port), self.timeouts.connect).await?;
        let mut builder = http1::Builder::new();
        // `max_header_size` is exact (status line and fields); the read
        // buffer must be able to hold that much.
        builder
            .max_header_size(self.limits.max_head)
            .max_buf_size(self.limits.max_head.max(H1_DEFAULT_BUF));
        let limit = self.limits.max_head;
        let send = match origin.scheme {
            Scheme::Http => {
                let (send, conn) = builder
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| classify(&e, limit))?;
                tokio::spawn(conn);
                send
            }
            Scheme::Https => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| Failure::Tls(format!("server name {host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Failure::Tls(e.to_string()))?;
                let (send, conn) = builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| classify(&e, limit))?;
                tokio::spawn(conn);
                send
            }
        };
        Ok(send)
    }

    async fn ask_origin(
        &self,
        key: &ChunkKey,
        origin: &Origin,
        via: &HeaderValue,
    ) -> Result<Response<Incoming>, Failure> {
        // Origin-form path plus Host, as on any HTTP/1.1 connection.
        let request = || {
            Request::get(key.path.as_str())
                .header(http::header::HOST, origin.host_header())
                .header(http::header::VIA, via.clone())
                .body(Empty::new())
                .map_err(|e| Failure::Protocol(format!("request: {e}")))
        };
        let pool_key = pool_key(origin);
        let limit = self.limits.max_head;
        let attempt = async {
            let (mut send, reused) = match self.pool.take(&pool_key) {
                Some(s) => (s, true),
                None => (self.connect_origin(origin).await?, false),
            };
            match send_h1(&mut send, request()?, limit).await {
                Err(f) if reused && f.is_stale_connection() => {
                    tracing::debug!(origin = %pool_key, error = %f, "pooled origin connection was stale: reconnecting once");
                    self.metrics.upstream("origin", "stale_retried");
                    let mut send = self.connect_origin(origin).await?;
                    let resp = send_h1(&mut send, request()?, limit).await?;
                    Ok((resp, send))
                }
                r => r.map(|resp| (resp, send)),
            }
        };
        let (mut resp, send) = match tokio::time::timeout(self.timeouts.head, attempt).await {
            Err(_) => return Err(Failure::HeadTimeout(self.timeouts.head)),
            Ok(r) => r?,
        };
        let reusable = !normalize_framing(&mut resp);
        if !reusable {
            self.metrics.upstream("origin", "bad_framing");
            tracing::warn!(origin = %pool_key, %key, "origin sent Content-Length with Transfer-Encoding: Content-Length dropped, connection not reused");
        }
        // Once the body has been read to the end, hyper says the connection
        // is ready again; only then may it carry another request. If the
        // body fails, or is dropped unread, hyper closes the connection and
        // `ready` fails.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut send = send;
            if send.ready().await.is_ok() && reusable {
                pool.put(&pool_key, send);
            }
            // Otherwise dropping `send` closes the connection.
        });
        Ok(resp)
    }
}

fn pool_key(origin: &Origin) -> String {
    format!("{}://{}", origin.scheme.as_str(), origin.canonical())
}

async fn send_h1(
    send: &mut http1::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
    limit: usize,
) -> Result<Response<Incoming>, Failure> {
    let head = async {
        send.ready().await?;
        send.send_request(req).await
    };
    head.await.map_err(|e| classify(&e, limit))
}

/// Connects with a timeout and tells refused, timed out and other errors
/// apart. `addr` is `host:port`; names resolve asynchronously.
async fn connect_tcp(addr: &str, limit: Duration) -> Result<TcpStream, Failure> {
    let tcp = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Err(_) => return Err(Failure::ConnectTimeout(limit)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Failure::ConnectRefused)
        }
        Ok(Err(e)) => return Err(Failure::Connect(e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Names a hyper error by what it means for the retry rules.
fn classify(e: &hyper::Error, limit: usize) -> Failure {
    if e.is_parse_too_large() {
        return Failure::HeadTooLarge { limit };
    }
    if e.is_parse() || e.is_parse_status() {
        return Failure::Protocol(chain(e));
    }
    if let Some(h2) = find_source::<h2::Error>(e) {
        let reason = h2.reason().map(|r| r.to_string()).unwrap_or_default();
        return if h2.is_go_away() {
            Failure::Closed(format!("GOAWAY {reason}"))
        } else if h2.is_reset() && h2.is_remote() {
            Failure::Reset(reason)
        } else if h2.is_reset() {
            // h2 itself reset the stream: the head broke the protocol or was
            // over the header-list backstop.
            Failure::Protocol(format!("response head refused ({reason})"))
        } else if h2.is_io() {
            Failure::Closed(chain(e))
        } else {
            Failure::Protocol(chain(e))
        };
    }
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() || e.is_timeout() {
        return Failure::Closed(chain(e));
    }
    if find_source::<std::io::Error>(e).is_some() {
        return Failure::Closed(chain(e));
    }
    Failure::Protocol(chain(e))
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// Refuses a head whose decoded size (RFC 9113 §6.5.2: name + value + 32
/// per field, `:status` included) is over `limit`.
fn check_head_size(headers: &HeaderMap, limit: usize) -> Result<(), Failure> {
    let size = headers
        .iter()
        .fold(":status".len() + 3 + 32, |acc, (k, v)| {
            acc.saturating_add(k.as_str().len() + v.len() + 32)
        });
    if size > limit {
        return Err(Failure::HeadTooLarge { limit });
    }
    Ok(())
}

/// Applies RFC 9112 §6.3 to a response before anyone sees it: with
/// `Transfer-Encoding`, `Content-Length` is removed (the body is delimited
/// by the transfer coding, as hyper already decodes it). Repeated equal
/// `Content-Length` values, which hyper accepts (`5, 5`, or two lines),
/// become one. Returns true when the framing was contradictory, so the
/// connection must not be reused.
pub fn normalize_framing(resp: &mut Response<Incoming>) -> bool {
    let exact = resp.body().size_hint().exact();
    let bodiless = matches!(resp.status().as_u16(), 204 | 304);
    let headers = resp.headers_mut();
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return headers.remove(http::header::CONTENT_LENGTH).is_some();
    }
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let repeated = match values.next() {
        Some(first) => values.next().is_some() || first.as_bytes().contains(&b','),
        None => false,
    };
    if let (true, false, Some(n)) = (repeated, bodiless, exact) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_status_labels_and_rules() {
        let fetch = |failure| UpstreamError::Fetch {
            blame: Blame::Parent,
            target: "http://p".into(),
            failure,
        };
        let e = fetch(Failure::HeadTimeout(Duration::from_secs(1)));
        assert!(e.is_timeout());
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.label(), "timeout");
        assert_eq!(e.blame(), Some(Blame::Parent));
        let e = fetch(Failure::ConnectTimeout(Duration::from_secs(1)));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let e = fetch(Failure::HeadTooLarge { limit: 10 });
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(!e.failure().unwrap().is_connection_level());
        assert!(Failure::ConnectRefused.is_connection_level());
        assert!(Failure::Closed("x".into()).is_connection_level());
        for f in [
            Failure::HeadTimeout(Duration::ZERO),
            Failure::Reset("x".into()),
            Failure::Protocol("x".into()),
            Failure::Status(StatusCode::BAD_GATEWAY),
        ] {
            assert!(!f.is_connection_level(), "{f}");
        }
        assert_eq!(
            e.to_string(),
            "parent http://p: response head over the 10-byte limit"
        );
    }

    #[test]
    fn head_size_counts_fields_like_h2() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("12345"));
        // :status (7 + 3 + 32) + x-a (3 + 5 + 32).
        assert!(check_head_size(&h, 82).is_ok());
        assert!(matches!(
            check_head_size(&h, 81),
            Err(Failure::HeadTooLarge { limit: 81 })
        ));
    }
}
