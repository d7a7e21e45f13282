//! Idle viewers for the per-viewer memory bench (benches/viewer_mem.sh):
//! opens `--viewers` viewers on a relay, each asking for one chunk that is
//! not published yet, so each is parked on the relay's slot for it, and
//! keeps them parked (a viewer answered anyway, say "not yet" after
//! `max-wait`, asks again) until `--hold` is over. HTTP/1.1 viewers get a
//! connection each; with `--h2`, `--per-conn` viewers share one.
//!
//! Prints `connected N` once every request is sent. Bounded in time by
//! `--hold`; talks to the address it is given (loopback in the bench).
//!
//! ```text
//! cargo run --release --example park -- --target 127.0.0.1:8080 \
//!     --origin 127.0.0.1:9100 --path /live/0/12 --viewers 10000 [--h2 --per-conn 100] --hold 60s
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The relay's viewer address.
    #[arg(long)]
    target: SocketAddr,
    /// The origin the relay fetches from (the request's authority, which
    /// must be on the relay's `--allow-origin` list).
    #[arg(long)]
    origin: String,
    /// The path every viewer asks for (a chunk not published yet).
    #[arg(long)]
    path: String,
    /// How many viewers.
    #[arg(long, default_value_t = 1000)]
    viewers: usize,
    /// HTTP/2 (h2c) viewers sharing connections.
    #[arg(long)]
    h2: bool,
    /// Viewers per HTTP/2 connection.
    #[arg(long = "per-conn", default_value_t = 100)]
    per_conn: usize,
    /// How long the viewers stay.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

/// One viewer's request, sent again whenever it is answered.
async fn park<F, Fut>(mut send: F, uri: String, sent: Arc<AtomicUsize>)
where
    F: FnMut(http::Request<Empty<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    let mut first = true;
    loop {
        let req = http::Request::get(&uri)
            .body(Empty::new())
            .expect("valid request");
        let fut = send(req);
        if std::mem::take(&mut first) {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        match fut.await {
            Ok(resp) => {
                // Answered anyway ("not yet" after `max-wait`, or refused):
                // ask again, but never in a tight loop.
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                eprintln!("park: answered {status}; asking again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                eprintln!("park: request failed: {e}");
                return;
            }
        }
    }
}

async fn tcp(target: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(target).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let uri = format!("http://{}{}", a.origin, a.path);
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    if a.h2 {
        let conns = a.viewers.div_ceil(a.per_conn.max(1));
        for c in 0..conns {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .max_concurrent_reset_streams(0)
                .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp(a.target).await))
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            let n = a.per_conn.min(a.viewers - c * a.per_conn);
            for _ in 0..n {
                let s = send.clone();
                tasks.push(tokio::spawn(park(
                    move |req| {
                        let mut s = s.clone();
                        async move {
                            s.ready().await?;
                            s.send_request(req).await
                        }
                    },
                    uri.clone(),
                    sent.clone(),
                )));
            }
        }
    } else {
        for _ in 0..a.viewers {
            let (send, conn) =
                http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp(a.target).await))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let send = Arc::new(tokio::sync::Mutex::new(send));
            tasks.push(tokio::spawn(park(
                move |req| {
                    let send = send.clone();
                    async move {
                        let mut s = send.lock().await;
                        s.ready().await?;
                        s.send_request(req).await
                    }
                },
                uri.clone(),
                sent.clone(),
            )));
        }
    }
    while sent.load(Ordering::Relaxed) < a.viewers {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("connected {}", a.viewers);
    tokio::time::sleep(a.hold).await;
}
