//! The client side of a relay: asks parent relays, in order (as listed, or
//! by rendezvous hash of the stream: `--parent-select`, see `select`), and
//! falls back to the origin itself.
//!
//! Parents are spoken to over HTTP/2 with prior knowledge (`http://`), or
//! over TLS with ALPN `h2` (`https://`, trusting `--upstream-ca` or the
//! webpki roots), one connection per parent, so every in-flight long-poll to
//! a parent shares one TCP connection. A TLS failure (handshake, certificate)
//! is [`Failure::Tls`], a connection-level failure like a refused connect.
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
//! - **A parent's own 5xx** (502, 503, 504, 508 loop, any 5xx it made
//!   itself: docs/protocol.md) tries the next source without marking the
//!   parent down: it answered. A 5xx the parent relayed (it carries a `Via`:
//!   relays add theirs to every response they pass on, never to their own
//!   errors) is the origin's answer and final, like any other answer.
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
//!
//! The files, one concept each: this one holds the [`Upstream`] client and
//! its source order ([`Upstream::fetch`]); `error` the [`Failure`] kinds,
//! [`Blame`] and [`UpstreamError`], and how a hyper error is classified;
//! `parent` the HTTP/2 connection to one parent (probe, mark-down, stale
//! retry); `origin_pool` the HTTP/1.1 keep-alive pool and the origin
//! request; `head` the checks a response head passes before anyone sees it;
//! `select` the order of the parents for one key (`--parent-select`).

mod error;
mod head;
mod origin_pool;
mod parent;
mod select;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response};
use hyper::body::Incoming;

use crate::key::{ChunkKey, Origin};
use crate::metrics::Metrics;

pub use error::{Blame, Failure, UpstreamError};
pub use origin_pool::OriginPool;
pub use select::{order as parent_order, stream_of, ParentSelect};

use parent::Parent;

/// How long a parent that could not be reached is skipped.
pub const PARENT_DOWN_BACKOFF: Duration = Duration::from_secs(1);

/// Default limit of an upstream response head, in bytes.
pub const DEFAULT_MAX_HEAD: usize = 64 << 10;

/// An idle origin connection older than this is closed rather than reused.
pub const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many idle connections are kept per origin.
pub const ORIGIN_MAX_IDLE: usize = 32;

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

/// The parent relays and the origin client.
pub struct Upstream {
    own_id: String,
    tls: Arc<rustls::ClientConfig>,
    /// For `https://` parents: ALPN `h2`, `--upstream-ca` or webpki roots.
    parent_tls: Arc<rustls::ClientConfig>,
    parents: Vec<Parent>,
    select: ParentSelect,
    pool: Arc<OriginPool>,
    timeouts: Timeouts,
    limits: UpstreamLimits,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Builds the client for `parents` (URLs such as `http://10.0.0.1:8080`
    /// or `probe:IP:PORT`) with `limits` (usually [`UpstreamLimits::default`]).
    pub fn with_limits(
        parents: &[String],
        own_id: String,
        origin_ca: Option<&[u8]>,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
        limits: UpstreamLimits,
    ) -> Result<Upstream, UpstreamError> {
        let tls = crate::tls::client_config(origin_ca)?;
        let parent_tls = crate::tls::client_config_alpn(None, &[b"h2"])?;
        let parents = parents
            .iter()
            .map(|p| Parent::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstream {
            own_id,
            tls,
            parent_tls,
            parents,
            select: ParentSelect::Ordered,
            pool: Arc::new(OriginPool::default()),
            timeouts,
            limits,
            metrics,
        })
    }

    /// Trusts the CA in `ca_pem` (`--upstream-ca`) for `https://` parents
    /// instead of the webpki roots.
    pub fn with_parent_ca(mut self, ca_pem: Option<&[u8]>) -> Result<Upstream, UpstreamError> {
        self.parent_tls = crate::tls::client_config_alpn(ca_pem, &[b"h2"])?;
        Ok(self)
    }

    /// Orders the parents per key by `select` (`--parent-select`; default
    /// [`ParentSelect::Ordered`]).
    pub fn with_select(mut self, select: ParentSelect) -> Upstream {
        self.select = select;
        self
    }

    /// Shares `pool` for origin connections instead of a new one (a
    /// reloaded configuration keeps the old client's idle connections).
    pub fn with_pool(mut self, pool: Arc<OriginPool>) -> Upstream {
        self.pool = pool;
        self
    }

    /// The shared origin connection pool.
    pub fn pool(&self) -> Arc<OriginPool> {
        self.pool.clone()
    }

    /// Whether parent `index` (into `--upstream`) is marked down right now.
    pub fn parent_down(&self, index: usize) -> bool {
        self.parents.get(index).is_some_and(Parent::is_down)
    }

    /// Every parent as configured, and whether it is marked down right now.
    pub fn parents(&self) -> Vec<(String, bool)> {
        self.parents
            .iter()
            .map(|p| (p.url.clone(), p.is_down()))
            .collect()
    }

    /// The origin connection pool (for diagnostics and tests).
    pub fn origin_pool(&self) -> &OriginPool {
        &self.pool
    }

    /// Fetches `key`: each parent in the order `--parent-select` gives for
    /// it, then the origin. `via` is the
    /// request's `Via` with this relay's entry already appended. The retry
    /// rules are in the module doc.
    pub async fn fetch(
        &self,
        key: &ChunkKey,
        origin: &Origin,
        via: &HeaderValue,
    ) -> Result<(Response<Incoming>, Source), UpstreamError> {
        let urls: Vec<&str> = self.parents.iter().map(|p| p.url.as_str()).collect();
        for i in select::order(self.select, &urls, key) {
            let parent = &self.parents[i];
            if parent.is_down() {
                self.metrics.upstream("parent", "skipped_down");
                continue;
            }
            let failure = match self.ask_parent(parent, key, via).await {
                // A 5xx the parent relayed from further up (it carries a
                // `Via`) is the origin's final answer, e.g. an LL-HLS head
                // end's 503 for a blocking reload it gave up on: asking the
                // origin again directly would only bypass the tree.
                Ok(resp) if resp.status().is_server_error() && !relayed(&resp) => {
                    Failure::Status(resp.status())
                }
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
}

/// Whether a parent's response was passed on from further up (a relay
/// appends its `Via` entry to every response it relays, and to none it makes
/// itself).
fn relayed<B>(resp: &Response<B>) -> bool {
    resp.headers().contains_key(http::header::VIA)
}
