//! Connections: keep-alive HTTP/1.1 to each chunk source, as players do.
//! An idle connection per source address is parked after a response was
//! read to its end and taken again for the next request; [`http1`] is the one
//! place a stream (TCP, or TLS for the API) becomes an HTTP/1.1 sender.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Client, Fail, SourceError};

/// A request sender on one HTTP/1.1 connection.
pub(super) type Http1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// How long the client waits for a TCP connection to a source or the API.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// HTTP/1.1 over an open stream, through the library's one handshake helper.
pub(super) async fn http1<T>(io: T) -> Result<Http1Sender, hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    crate::connect::http1(io, &hyper::client::conn::http1::Builder::new()).await
}

impl Client {
    /// An idle connection to `addr`, or a new one; `true` when reused.
    pub(super) async fn connection(&self, addr: SocketAddr) -> Result<(Http1Sender, bool), Fail> {
        let idle = self.idle.lock().remove(&addr);
        if let Some(s) = idle.filter(|s| !s.is_closed()) {
            return Ok((s, true));
        }
        let tcp = crate::connect::tcp(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let send = http1(tcp)
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        Ok((send, false))
    }

    /// Parks a connection whose last response was read to the end.
    pub(super) fn give_back(&self, addr: SocketAddr, send: Http1Sender) {
        if !send.is_closed() {
            self.idle.lock().insert(addr, send);
        }
    }
}
