//! The head end's accept loop: one port, two kinds of connection.
//!
//! Chunks are served in the clear (HTTP/1.1 or h2c, hyper-util's auto
//! builder); the manifest and key API only over TLS. A connection is told
//! apart by its first byte, peeked without consuming it: a TLS connection
//! starts with a handshake record (0x16). Each connection then runs
//! `router::handle`, told whether it came over TLS,
//! until it ends or the origin shuts down.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{router, State};

/// Longest wait for a new connection's first byte (which says TLS or not);
/// a connection silent for longer is served as clear text.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Spawns the accept loop on `listener`; it stops when `stop` is cancelled.
pub(super) fn spawn(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut backoff = crate::server::AcceptBackoff::new("origin");
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((t, _)) => t,
                    Err(e) => { backoff.failed(&e).await; continue }
                },
            };
            if state.refuse.load(Ordering::Relaxed) {
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp, state.clone(), builder.clone(), stop.clone()));
        }
    });
}

/// Serves one connection: TLS (API) or clear text (chunks), by its first byte.
async fn serve(
    tcp: TcpStream,
    s: Arc<State>,
    builder: auto::Builder<TokioExecutor>,
    stop: CancellationToken,
) {
    let mut first = [0u8; 1];
    let is_tls = matches!(
        tokio::time::timeout(SNIFF_TIMEOUT, tcp.peek(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == TLS_HANDSHAKE;
    let svc = |tls: bool| {
        let s = s.clone();
        service_fn(move |req| {
            let s = s.clone();
            async move { Ok::<_, Infallible>(router::handle(s, req, tls).await) }
        })
    };
    match (is_tls, s.cfg.tls.clone()) {
        (true, Some(tls)) => {
            let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                return;
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc(true));
            tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
        }
        (true, None) => {}
        (false, _) => {
            let conn = builder.serve_connection(TokioIo::new(tcp), svc(false));
            tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
        }
    }
}
