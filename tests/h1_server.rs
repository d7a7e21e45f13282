//! The relay's own HTTP/1.1 server (src/server/h1.rs), byte by byte over
//! raw sockets: pipelining, request bodies it never reads, HTTP/1.0, HEAD,
//! heads in one-byte pieces, and a viewer that hangs up while parked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use mlcache::origin::chunk_bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(30);

/// One response as read off the wire.
#[derive(Debug)]
struct Wire {
    status_line: String,
    /// Field lines, lower-cased names.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `s` (leftover bytes in `buf`), framed by
/// Content-Length, chunked coding, or the close. `head_only` for HEAD.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Wire {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
        let mut tmp = [0u8; 8192];
        let n = tokio::time::timeout(LONG, s.read(&mut tmp))
            .await
            .expect("response in time")
            .expect("read");
        buf.extend_from_slice(&tmp[..n]);
        n
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        assert!(more(s, buf).await > 0, "closed in the head: {buf:?}");
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let fields: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut wire = Wire {
        status_line,
        fields,
        body: Vec::new(),
    };
    if head_only {
        return wire;
    }
    if let Some(len) = wire.field("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            assert!(more(s, buf).await > 0, "closed in the body");
        }
        wire.body = buf.drain(..len).collect();
    } else if wire.field("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(more(s, buf).await > 0, "closed in a chunk size");
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                assert!(more(s, buf).await > 0, "closed in a chunk");
            }
            wire.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        while more(s, buf).await > 0 {}
        wire.body = std::mem::take(buf);
    }
    wire
}

/// Whether the relay closes `s` (EOF) within `LONG`, after any bytes.
async fn closes(s: &mut TcpStream) -> bool {
    let mut tmp = [0u8; 4096];
    loop {
        match tokio::time::timeout(LONG, s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn vod(n: u64) -> Vec<u8> {
    chunk_bytes(u64::MAX, n, 64 * 1024, 0).to_vec()
}

fn get(o: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET http://{o}{path} HTTP/1.1\r\nHost: {o}\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_head_are_answered_in_order() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let all = [
        get(o, "/vod/1", ""),
        format!("HEAD http://{o}/vod/2 HTTP/1.1\r\nHost: {o}\r\n\r\n"),
        get(o, "/vod/3", ""),
        get(o, "/vod/2", "Connection: close\r\n"),
    ]
    .concat();
    s.write_all(all.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let one = read_response(&mut s, &mut buf, false).await;
    assert_eq!(one.status_line, "HTTP/1.1 200 OK");
    assert_eq!(one.body, vod(1));
    assert!(one.field("date").is_some(), "{one:?}");
    let head = read_response(&mut s, &mut buf, true).await;
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.field("content-length"), Some("65536"));
    // No body after a HEAD: the next bytes are the next response's head.
    let three = read_response(&mut s, &mut buf, false).await;
    assert_eq!(three.body, vod(3));
    let two = read_response(&mut s, &mut buf, false).await;
    assert_eq!(two.body, vod(2));
    assert_eq!(two.field("connection"), Some("close"));
    assert!(closes(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_one_byte_pieces_is_served() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for b in get(origin.addr, "/vod/4", "").bytes() {
        s.write_all(&[b]).await.unwrap();
        s.flush().await.unwrap();
    }
    let got = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(got.body, vod(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_answered_in_http10_and_closed() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(format!("GET http://{o}/vod/5 HTTP/1.0\r\nHost: {o}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let got = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(got.status_line, "HTTP/1.0 200 OK");
    assert_eq!(got.body, vod(5));
    assert!(got.field("transfer-encoding").is_none());
    assert!(closes(&mut s).await);

    // With keep-alive asked for, it stays open for the next request.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let ka =
        format!("GET http://{o}/vod/6 HTTP/1.0\r\nHost: {o}\r\nConnection: keep-alive\r\n\r\n");
    s.write_all(ka.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let got = read_response(&mut s, &mut buf, false).await;
    assert_eq!(got.field("connection"), Some("keep-alive"));
    s.write_all(get(o, "/vod/7", "").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, vod(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_dropped_and_never_break_framing() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;

    // A small body with a length: dropped, the connection stays usable, and
    // the body's bytes are not taken for a request.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let req = format!(
        "{}0123456789{}",
        get(o, "/vod/8", "Content-Length: 10\r\n"),
        get(o, "/vod/9", "")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, vod(8));
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, vod(9));

    // A chunked body that never ends: the response still comes whole, then
    // the connection closes (it cannot be reused).
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let req = format!(
        "{}10\r\n0123456789abcdef\r\n",
        get(o, "/vod/10", "Transfer-Encoding: chunked\r\n")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(got.body, vod(10));
    assert_eq!(got.field("connection"), Some("close"));
    assert!(closes(&mut s).await);

    // Smuggling: a request hidden in a chunked body is never served.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let hidden = get(o, "/vod/11", "");
    let req = format!(
        "{}{:x}\r\n{hidden}\r\n0\r\n\r\n",
        get(
            o,
            "/vod/12",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"
        ),
        hidden.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).await.body, vod(12));
    assert!(closes(&mut s).await);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "a second response: {buf:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_hangs_up_while_parked_gives_up_its_place() {
    let origin = origin_with(|c| c.hold = LONG).await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;
    let path = format!("/live/0/{}", origin.edge(0) + 1);
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(get(o, &path, "").as_bytes()).await.unwrap();
        viewers.push(s);
    }
    until(LONG, "3 parked", || r.relay.parked() == 3).await;
    viewers.pop();
    until(LONG, "the leaver's place freed", || r.relay.parked() == 2).await;
    // The others still get the chunk.
    origin.publish(0);
    for mut s in viewers {
        let got = read_response(&mut s, &mut Vec::new(), false).await;
        assert_eq!(got.status_line, "HTTP/1.1 200 OK");
        assert_eq!(got.body.len(), 64 * 1024);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heads_are_refused_counted_and_closed() {
    let origin = manual_origin().await;
    let r = relay(relay_config(&origin.url())).await;
    let o = origin.addr;
    let many: String = (0..200).map(|i| format!("x-{i}: y\r\n")).collect();
    let cases = [
        (
            "GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n".to_string(),
            "HTTP/1.1 400",
        ),
        (
            format!("GET /vod/1 HTTP/1.1\r\nHost: {o}\r\n{many}\r\n"),
            "HTTP/1.1 431",
        ),
        (
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_string(),
            "HTTP/1.1 400",
        ),
    ];
    for (req, expect) in cases {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let got = read_response(&mut s, &mut Vec::new(), false).await;
        assert!(got.status_line.starts_with(expect), "{req:?} -> {got:?}");
        assert_eq!(got.field("connection"), Some("close"));
        assert!(closes(&mut s).await);
    }
    let admin = r.admin.unwrap();
    assert_eq!(
        metric(admin, "mlcache_rejected_total{reason=\"header_size\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_bodies_go_out_with_sendfile_and_arrive_exact() {
    let origin = manual_origin().await;
    let o = origin.addr;
    for zero_copy in [true, false] {
        let mut cfg = relay_config(&origin.url());
        cfg.zero_copy = zero_copy;
        let r = relay(cfg).await;
        let admin = r.admin.unwrap();
        let sent = || metric(admin, "mlcache_sendfile_bytes_total");
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        let mut buf = Vec::new();
        // A miss (streamed from the fill), a hit (from the cache), a range.
        s.write_all(get(o, "/vod/13", "").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s, &mut buf, false).await.body, vod(13));
        let after_miss = sent().await;
        s.write_all(get(o, "/vod/13", "").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s, &mut buf, false).await.body, vod(13));
        let after_hit = sent().await;
        let range = get(o, "/vod/13", "Range: bytes=100-40099\r\n");
        s.write_all(range.as_bytes()).await.unwrap();
        let part = read_response(&mut s, &mut buf, false).await;
        assert_eq!(part.status_line, "HTTP/1.1 206 Partial Content");
        assert_eq!(part.body, vod(13)[100..40100]);
        let after_range = sent().await;
        if zero_copy {
            assert!(after_miss > 0.0, "the miss was all copied");
            assert_eq!(after_hit - after_miss, 65536.0);
            assert_eq!(after_range - after_hit, 40000.0);
        } else {
            assert_eq!(after_range, 0.0);
        }
    }
}
