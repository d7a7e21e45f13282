//! Connections: keep-alive HTTP/1.1 to each chunk source, as players do.
//! An idle connection per source address is parked after a response was
//! read to its end and taken again for the next request; [`http1`] is the one
//! place a stream (TCP, or TLS for the API) becomes an HTTP/1.1 sender.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Client, Fail, SourceError};

/// A request sender on one HTTP/1.1 connection.
pub(super) type Http1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// HTTP/1.1 over an open stream: the handshake, and the connection driven by
/// its own task until the sender is dropped or the peer closes.
pub(super) async fn http1<T>(io: T) -> Result<Http1Sender, hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

impl Client {
    /// An idle connection to `addr`, or a new one; `true` when reused.
    pub(super) async fn connection(&self, addr: SocketAddr) -> Result<(Http1Sender, bool), Fail> {
        let idle = self.idle.lock().remove(&addr);
        if let Some(s) = idle.filter(|s| !s.is_closed()) {
            return Ok((s, true));
        }
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
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
