//! One parent relay: its address (or the anycast probe that finds it), the
//! one HTTP/2 connection every request to it shares, and its mark-down.
//!
//! [`Upstream::ask_parent`] sends one request over that connection. A
//! failure on the shared connection reconnects once before it counts, and
//! the head must arrive before the hold deadline and pass the size check.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::classify;
use super::head::{check_head_size, normalize_framing};
use super::{Failure, Upstream, UpstreamError, PARENT_DOWN_BACKOFF};
use crate::key::ChunkKey;
use crate::tls::TlsConnectError;

/// One parent relay and its shared HTTP/2 connection.
pub(super) struct Parent {
    /// As configured (for logs and errors).
    pub(super) url: String,
    addr: String,
    /// `https://`: the name the parent's certificate must carry.
    tls_host: Option<String>,
    /// `probe:ADDR`: the parent is whichever relay answers the anycast probe.
    probe: Option<std::net::SocketAddr>,
    conn: Mutex<Option<http2::SendRequest<Empty<Bytes>>>>,
    down_until: Mutex<Option<Instant>>,
}

impl Parent {
    /// Parses one `--upstream` entry: `http://HOST[:PORT]`,
    /// `https://HOST[:PORT]` or `probe:IP:PORT`.
    pub(super) fn parse(p: &str) -> Result<Parent, UpstreamError> {
        if let Some(a) = p.strip_prefix("probe:") {
            let addr = a
                .parse()
                .map_err(|_| UpstreamError::BadParent(p.to_string()))?;
            return Ok(Parent {
                url: p.to_string(),
                addr: String::new(),
                tls_host: None,
                probe: Some(addr),
                conn: Mutex::new(None),
                down_until: Mutex::new(None),
            });
        }
        let uri: Uri = p
            .parse()
            .map_err(|_| UpstreamError::BadParent(p.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(UpstreamError::BadParent(p.to_string())),
        };
        if !matches!(uri.path(), "" | "/") {
            return Err(UpstreamError::BadParent(p.to_string()));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| UpstreamError::BadParent(p.to_string()))?;
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = auth.host().trim_matches(['[', ']']);
        Ok(Parent {
            url: p.to_string(),
            addr: format!("{host}:{port}"),
            tls_host: tls.then(|| host.to_string()),
            probe: None,
            conn: Mutex::new(None),
            down_until: Mutex::new(None),
        })
    }

    pub(super) fn is_down(&self) -> bool {
        matches!(*self.down_until.lock(), Some(t) if t > Instant::now())
    }

    pub(super) fn mark_down(&self) {
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
        let io = match &self.tls_host {
            None => Io::Clear(crate::connect::tcp(addr.as_str(), up.timeouts.connect).await?),
            Some(host) => {
                // The handshake gets a `connect-timeout` of its own after the
                // TCP connect's: a parent that accepts but never answers must
                // not hold the fetch until the long-poll deadline.
                let limit = up.timeouts.connect;
                let tls = crate::tls::connect(&up.parent_tls, host, addr.as_str(), limit);
                let tls = tokio::time::timeout(limit.saturating_mul(2), tls)
                    .await
                    .map_err(|_| Failure::Tls(format!("no TLS handshake within {limit:?}")))?
                    .map_err(|e| match e {
                        TlsConnectError::Connect(e) => Failure::from(e),
                        e => Failure::Tls(e.to_string()),
                    })?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(Failure::Tls(format!("{} did not negotiate h2", self.url)));
                }
                Io::Tls(Box::new(tls))
            }
        };
        // The h2 limit is a backstop at twice the head limit, so a head just
        // over the limit is decoded and refused with a precise error
        // (`check_head_size`) instead of an anonymous stream reset.
        let backstop = u32::try_from(up.limits.max_head.saturating_mul(2)).unwrap_or(u32::MAX);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            // Large DATA frames: the parent sends a 64 KiB chunk in one frame
            // and one write instead of four 16 KiB ones (issue 10).
            .max_frame_size(crate::protocol::H2_MAX_FRAME_SIZE)
            .max_header_list_size(backstop)
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
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

impl Upstream {
    /// One request to `parent`, reconnecting once if the shared connection
    /// was stale.
    pub(super) async fn ask_parent(
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
}

/// A parent connection's transport: h2c, or h2 over TLS.
enum Io {
    Clear(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Clear(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Clear(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Clear(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Clear(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Clear(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Clear(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
