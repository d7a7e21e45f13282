//! Origins over HTTP/1.1: a small keep-alive pool of this module's own
//! ([`OriginPool`]), which decides itself which connection may carry
//! another request, and the one request per fetch that
//! [`Upstream::ask_origin`] sends through it (plain TCP or rustls).
//!
//! A connection is taken from the pool (or opened), carries one request,
//! and goes back only once its response body has been read to the end;
//! a stale pooled connection is replaced once before it counts as a failure.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use parking_lot::Mutex;

use super::error::classify;
use super::head::normalize_framing;
use super::{Failure, Upstream, ORIGIN_IDLE_TIMEOUT, ORIGIN_MAX_IDLE};
use crate::key::{ChunkKey, Origin, Scheme};
use crate::tls::TlsConnectError;

/// hyper's default HTTP/1 read buffer limit (8 KiB + 100 × 4 KiB).
const H1_DEFAULT_BUF: usize = 8192 + 4096 * 100;

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
/// response with broken framing (see the module doc of [`crate::upstream`]).
/// hyper closes a connection whose body failed or was dropped unread, so
/// those never come back either. Closed and expired connections are swept
/// whenever the pool of that origin is used.
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

impl Upstream {
    /// One HTTP/1.1 connection to `origin` (TLS for `https://`).
    async fn connect_origin(
        &self,
        origin: &Origin,
    ) -> Result<http1::SendRequest<Empty<Bytes>>, Failure> {
        let host = origin.host.trim_matches(['[', ']']);
        let addr = format!("{host}:{}", origin.port);
        let mut builder = http1::Builder::new();
        // `max_header_size` is exact (status line and fields); the read
        // buffer must be able to hold that much.
        builder
            .max_header_size(self.limits.max_head)
            .max_buf_size(self.limits.max_head.max(H1_DEFAULT_BUF));
        let send = match origin.scheme {
            Scheme::Http => {
                let tcp = crate::connect::tcp(addr.as_str(), self.timeouts.connect).await?;
                crate::connect::http1(tcp, &builder).await
            }
            Scheme::Https => {
                let tls =
                    crate::tls::connect(&self.tls, host, addr.as_str(), self.timeouts.connect)
                        .await
                        .map_err(|e| match e {
                            TlsConnectError::Connect(e) => Failure::from(e),
                            e => Failure::Tls(e.to_string()),
                        })?;
                crate::connect::http1(tls, &builder).await
            }
        };
        send.map_err(|e| classify(&e, self.limits.max_head))
    }

    /// One request to `origin`: a pooled connection if one is ready, else a
    /// new one; a stale pooled one is replaced once. The connection goes
    /// back to the pool after the body was read to the end.
    pub(super) async fn ask_origin(
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
