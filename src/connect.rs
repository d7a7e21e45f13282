//! Opening client connections: the TCP connect with a timeout, and the
//! HTTP/1 handshake whose connection is then driven on its own task.
//!
//! Every client in the library (the relay's origin pool in
//! [`crate::upstream`], the anycast [`crate::probe`], TLS through
//! [`crate::tls::connect`]) goes `tcp` → (TLS) → `http1` through these two
//! functions, so a connect timeout, `TCP_NODELAY` and the spawned
//! connection task are set up in one place. HTTP/2 to parent relays uses
//! [`tcp`] too, with its own handshake.

use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Why a TCP connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not established within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// Refused, unreachable, or the name did not resolve.
    #[error("{0}")]
    Io(std::io::Error),
}

impl ConnectError {
    /// Whether the peer refused the connection (nothing listens there).
    pub fn is_refused(&self) -> bool {
        matches!(self, ConnectError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// Connects to `addr` (`host:port` or a socket address; names resolve
/// asynchronously) within `timeout`, with `TCP_NODELAY` set: requests and
/// heads are small and must not wait for Nagle.
pub async fn tcp(addr: impl ToSocketAddrs, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(r) => r.map_err(ConnectError::Io)?,
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Runs the HTTP/1 client handshake of `builder` over `io` (plain TCP or
/// TLS) and spawns the connection's task, which ends when the returned
/// sender and every response body are gone. The caller bounds the handshake
/// in time.
pub async fn http1<T, B>(
    io: T,
    builder: &http1::Builder,
) -> Result<http1::SendRequest<B>, hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = builder.handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}
