//! The downstream side of the relay: the sockets viewers connect to, and
//! what the relay answers on them. One concept per file:
//!
//! - `listener.rs`: the accept loop ([`serve`], [`serve_with_tls`]) over the
//!   clear and the TLS listener, `max-connections` (reclaim an idle
//!   connection, or refuse with a bare 503), accept back-off
//!   ([`AcceptBackoff`]), the hyper builders, the drain.
//! - `conn.rs`: one connection's task (the TLS handshake first, bounded by
//!   `tls-handshake-timeout`, on the TLS listener), racing its server
//!   against the drain, a reclaim and its watchdog. A clear connection is
//!   sniffed: h2 prior knowledge goes to hyper, HTTP/1.1 to `h1.rs`; TLS
//!   goes to hyper's auto builder (ALPN).
//! - `h1.rs`: the relay's own HTTP/1.1 server for clear connections
//!   (`httparse` for heads), which holds no buffer while a viewer is parked
//!   (hyper's fixed 8 KiB buffers were most of an idle viewer: issue 10).
//! - `tls.rs`: [`TlsCerts`], the server certificate, reloaded on SIGHUP, and
//!   the rustls configuration (ALPN `h2`, `http/1.1`).
//! - `cors.rs`: [`Cors`], preflight answers and the CORS headers added to
//!   responses that lack them (`--cors`).
//! - `watch.rs`: the watchdog (unfinished requests, per-response progress)
//!   and [`Tracked`], the body wrapper that stamps progress.
//! - `stall.rs`: [`StallGuard`], the socket write timeout.
//! - `handler.rs`: what one request head is answered with ([`handle`]).
//! - `error.rs`: [`RequestError`] and the one mapping to statuses.
//! - `range.rs`: `Range` on cached objects ([`parse_range`]).
//! - `admin.rs`: `/metrics` and `/healthz` on their own listener
//!   ([`serve_admin`]).
//!
//! A viewer's request goes: accept (connection limit) → its connection task
//! → method, header size and loop checks → chunk key and allow-list (`key`)
//! → `Relay::join` → a cached body, or a slot viewer streamed out as the
//! response body. Every refusal is a [`RequestError`], and
//! [`RequestError::status`] is the one place that maps errors to HTTP
//! statuses (malformed HTTP/1.1 heads included). A body that fails mid-way
//! is returned to the server as a body error, which resets the HTTP/2
//! stream or closes the HTTP/1.1 connection before the declared end (short
//! of its `Content-Length`, or without the last chunk), so a truncated
//! chunk never looks whole.
//!
//! How a connection lives:
//!
//! - **Accept.** Over `max-connections` it first displaces the longest-idle
//!   open connection, if any; otherwise it is answered within a fraction of
//!   a second with a bare 503 and closed; it never gets an HTTP server.
//!   Accept errors (EMFILE and the like) back off instead of spinning
//!   ([`AcceptBackoff`]).
//! - **Requests.** A request's body is dropped unread: the relay serves GET
//!   and HEAD only, and a dropped h2 `RecvStream` discards what arrives and
//!   gives the connection window back at once, so nobody can park request
//!   bytes in the relay. The h2 receive windows are small for the same reason.
//!   On HTTP/1.1 a body of known length up to 64 KiB is skipped after the
//!   response; any other body closes the connection after the response.
//! - **Watchdog.** Each connection task watches two things besides its server:
//!   how long it has had no unfinished request
//!   (`idle-timeout`: silent sockets, a partial or bare h2 preface, idle
//!   keep-alive), and how long any of its response bodies has had data
//!   outstanding without progress (`send-timeout`). Progress is stamped by
//!   the body wrapper, one `Arc`'d pair of atomics per response; hyper's h2
//!   server stops polling a body whose stream has no flow-control window, so
//!   nothing inside the body could notice. A stalled connection is dropped,
//!   which drops all its bodies and the chunk memory they pin.
//!   [`StallGuard`] still fails TCP writes stalled for `send-timeout`.
//! - **Drain.** When `shutdown` fires the relay reports draining (`/healthz`
//!   503) but keeps accepting for `drain-delay`, then closes the listener,
//!   asks every connection to finish (h2 GOAWAY, h1 close after the current
//!   response) and drops what is left after `shutdown-grace`.

mod admin;
mod conn;
mod cors;
mod error;
mod h1;
mod handler;
mod listener;
mod range;
mod stall;
mod tls;
mod watch;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::protocol::{CacheStatus, X_CACHE};
use crate::slot::SlotError;

pub use admin::serve_admin;
pub use cors::{Cors, CorsError, EXPOSE_HEADERS};
pub use error::RequestError;
pub use handler::handle;
pub use listener::{serve, serve_with_tls, AcceptBackoff, ACCEPT_BACKOFF};
pub use range::{parse_range, RangeSpec};
pub use stall::StallGuard;
pub use tls::{CertError, TlsCerts, ALPN};
pub use watch::Tracked;

/// The response body type of every relay response.
pub type Body = UnsyncBoxBody<Bytes, SlotError>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response the relay makes itself (errors, probe, admin): never cached
/// downstream, and marked MISS like every relay response.
pub(crate) fn local_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    // Error texts may quote the request (a method, a name): never let a
    // browser take them for anything but text.
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(X_CACHE, CacheStatus::Miss.header_value());
    resp
}
