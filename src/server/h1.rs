//! The relay's own HTTP/1.1 server for clear viewer connections.
//!
//! A viewer at the live edge spends nearly all its life parked: its request
//! is in, its response waits for the next chunk. hyper's HTTP/1.1 server
//! keeps two fixed 8 KiB buffers (read and response head) per connection for
//! that whole time, and does not let a server size them; at 10,000 viewers
//! that is 160 MiB of empty buffers (issue 10). This module serves the same
//! requests with state that exists only while it is used:
//!
//! 1. the request head is read into a buffer that grows as needed up to
//!    `max-header-size` and is parsed with `httparse`; the buffer is freed
//!    (pipelined bytes kept) before the request is handed on;
//! 2. while the handler waits, the socket is watched for a hang-up with a
//!    one-byte `peek`, so a viewer that leaves gives up its slot place;
//! 3. the response head is written with the first body piece in one
//!    `writev`; the pieces are the slot's shared `Bytes`, never copied;
//! 4. a body that fails (upstream cut) ends the connection without a valid
//!    end (short `Content-Length`, or no last chunk), so a truncated chunk
//!    never passes as complete.
//!
//! The relay reads no request bodies: a small one with a known length is
//! discarded so the connection can be reused, anything else closes the
//! connection after the response (with a lingering close, so the client
//! gets the response before the reset an unread body would cause).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::stall::StallGuard;
use super::RequestError;

/// Most header fields a request head may have (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// The read buffer grows by this much at a time (most heads fit in one).
const READ_CHUNK: usize = 1024;
/// Most pieces one write takes: head, chunk size line, data, chunk end.
const MAX_PARTS: usize = 4;
/// Smallest body piece sent with `sendfile` when it lives in a spool.
const SENDFILE_MIN: usize = 4096;
/// A request body up to this long is read and dropped, keeping the
/// connection; a longer or chunked one closes it after the response.
const DISCARD_BODY: u64 = 64 * 1024;
/// How long a closing connection keeps reading (and dropping) what the
/// client still sends, so its response is not lost to a reset (nginx's
/// `lingering_timeout` is 5 s too).
const LINGER: Duration = Duration::from_secs(5);
/// How much a lingering close reads at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// Settings of the HTTP/1.1 server.
#[derive(Clone, Debug)]
pub(super) struct H1Limits {
    /// Longest request head (request line and fields) in bytes; a longer
    /// one is answered 431.
    pub max_head: usize,
    /// Counts body bytes sent with `sendfile` from a spool.
    pub sendfile_bytes: prometheus_client::metrics::counter::Counter,
}

/// Asks an [`serve`] connection to close once its current response is done
/// (or at once, if it is between requests).
#[derive(Default)]
pub(super) struct Grace {
    asked: AtomicBool,
    notify: Notify,
}

impl Grace {
    /// Starts the graceful close.
    pub(super) fn shutdown(&self) {
        self.asked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if self.asked() {
            return;
        }
        notified.await;
    }
}

/// Why a connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub(super) enum H1Error {
    /// The socket failed (reset, write timeout).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The request head was refused (malformed or too large); it was
    /// answered with the error's status and the connection closed.
    #[error("request head refused: {0}")]
    BadRequest(#[from] RequestError),
    /// A refused head was answered with this status; the connection closed.
    #[error("request head refused with {0}")]
    Refused(StatusCode),
    /// The client closed in the middle of a request head.
    #[error("connection closed in a request head")]
    IncompleteHead,
    /// The response body failed; the response was cut without a valid end.
    #[error("response body failed: {0}")]
    Body(crate::slot::SlotError),
    /// The response body ended before its `Content-Length`.
    #[error("response body ended {0} bytes short of its length")]
    ShortBody(u64),
}

/// One parsed request head and what it says about the connection.
struct Head {
    req: Request<()>,
    /// Bytes of request body that follow the head (`Content-Length`).
    body_len: u64,
    /// The body's end cannot be found without reading it (chunked coding,
    /// or a body that waits for a 100 (Continue)).
    chunked_body: bool,
    /// The client asked for (or its version implies) a close after this.
    close: bool,
}

/// Serves HTTP/1.1 on `io` until the client closes, an error, or `grace`.
/// `respond` answers each request head (it owns the watchdog bookkeeping);
/// `refuse` renders a head that cannot be served (counted and logged in
/// the one place errors become responses).
pub(super) async fn serve<R, F, B>(
    mut io: StallGuard<TcpStream>,
    limits: H1Limits,
    grace: &Grace,
    respond: R,
    refuse: impl Fn(RequestError) -> Response<super::Body>,
) -> Result<(), H1Error>
where
    R: Fn(Request<()>) -> F,
    F: Future<Output = Response<B>>,
    B: ResponseBody,
{
    // Bytes read but not yet used: the start of the next request head.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head = match read_head(&mut io, &mut buf, &limits, grace).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(H1Error::BadRequest(e)) => {
                let resp = refuse(e);
                let status = resp.status();
                let _ = write_response(&mut io, resp, Version::HTTP_11, false, true, None).await;
                linger(&mut io).await;
                return Err(H1Error::Refused(status));
            }
            Err(e) => return Err(e),
        };
        // Nothing of the head's bytes is kept while the request waits.
        if buf.is_empty() {
            buf = Vec::new();
        }
        let Head {
            req,
            body_len,
            chunked_body,
            mut close,
        } = head;
        let version = req.version();
        let head_only = req.method() == Method::HEAD;
        let resp = {
            let answer = pin!(respond(req));
            match until_hangup(io.get_ref(), buf.is_empty(), answer).await {
                Some(resp) => resp,
                // The viewer left: dropping the answer gives up its place.
                None => return Ok(()),
            }
        };
        let body_unread = chunked_body || body_len > buf.len() as u64 + DISCARD_BODY;
        close |= body_unread || grace.asked();
        let close = write_response(&mut io, resp, version, head_only, close, Some(&limits)).await?;
        if close {
            // Unread bytes (a body, a pipelined request) would make the
            // close a reset, which can destroy the response in flight.
            linger(&mut io).await;
            return Ok(());
        }
        discard_body(&mut io, &mut buf, body_len).await?;
        if grace.asked() {
            // Asked while the response was going out: the client may have
            // sent more since.
            linger(&mut io).await;
            return Ok(());
        }
    }
}

/// Reads until `buf` holds a whole request head and parses it; `None` when
/// the client closed (or `grace` asked) between requests.
async fn read_head(
    io: &mut StallGuard<TcpStream>,
    buf: &mut Vec<u8>,
    limits: &H1Limits,
    grace: &Grace,
) -> Result<Option<Head>, H1Error> {
    loop {
        if !buf.is_empty() {
            if let Some((head, used)) = parse_head(buf)? {
                buf.drain(..used);
                return Ok(Some(head));
            }
        }
        if buf.len() > limits.max_head {
            return Err(RequestError::HeaderTooLarge(buf.len()).into());
        }
        if buf.is_empty() && grace.asked() {
            return Ok(None);
        }
        // Exact growth: a doubling `Vec` would let a partial head hold
        // twice the limit.
        buf.reserve_exact(READ_CHUNK.min(limits.max_head + 1 - buf.len()).max(1));
        let n = if buf.is_empty() {
            tokio::select! {
                r = io.read_buf(buf) => r?,
                _ = grace.wait() => return Ok(None),
            }
        } else {
            io.read_buf(buf).await?
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(H1Error::IncompleteHead)
            };
        }
    }
}

/// Parses one request head at the start of `buf`: the head and its length,
/// or `None` if it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, H1Error> {
    let bad = |why| H1Error::BadRequest(RequestError::BadHead(why));
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::HeaderTooLarge(buf.len()).into())
        }
        Err(_) => return Err(bad("malformed head")),
    };
    let method =
        Method::from_bytes(parsed.method.unwrap_or("").as_bytes()).map_err(|_| bad("method"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let (mut body_len, mut chunked_body, mut te) = (None::<u64>, false, false);
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    let mut hosts = 0;
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| bad("field name"))?;
        // An owned copy (unlike hyper's slices of the read buffer), so
        // nothing here keeps the buffer alive.
        let value = HeaderValue::from_bytes(f.value).map_err(|_| bad("field value"))?;
        if name == http::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(f.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("content-length"))?;
            if body_len.is_some_and(|m| m != n) {
                return Err(bad("conflicting content-length"));
            }
            body_len = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            te = true;
            chunked_body = true;
        } else if name == http::header::HOST {
            hosts += 1;
        } else if name == http::header::EXPECT {
            // No 100 (Continue) is ever sent, so the client may or may not
            // send its body after the answer: the connection cannot be
            // reused without guessing where the next request starts.
            expect_continue = true;
        } else if name == http::header::CONNECTION {
            for token in f.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host, and no
    // request has two. An absolute-form target carries its authority
    // (§3.2.2 says to use it over Host), so a forward-proxy request without
    // Host is still served, as hyper did.
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11 && uri.authority().is_none()) {
        return Err(bad("host"));
    }
    if te && version == Version::HTTP_10 {
        return Err(bad("transfer-encoding in HTTP/1.0"));
    }
    // With Transfer-Encoding, Content-Length is ignored (RFC 9112 §6.3).
    let body_len = if te { 0 } else { body_len.unwrap_or(0) };
    let chunked_body = chunked_body || (expect_continue && body_len > 0);
    if version == Version::HTTP_10 && !keep_alive {
        close = true;
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    let head = Head {
        req,
        body_len,
        chunked_body,
        close,
    };
    Ok(Some((head, used)))
}

/// Awaits `answer`; `None` if the client hangs up first. Only watched while
/// the client has sent nothing more (`watch`): a pipelined request's bytes
/// stay in the socket for the next head, and the hang-up then shows as a
/// failed write.
async fn until_hangup<F: Future>(
    tcp: &TcpStream,
    mut watch: bool,
    answer: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    let mut answer = answer;
    loop {
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            r = &mut answer => return Some(r),
            r = tcp.peek(&mut byte), if watch => match r {
                Ok(0) | Err(_) => return None,
                Ok(_) => watch = false,
            },
        }
    }
}

/// The fields the connection itself sets; the handler's are dropped.
fn is_framing(name: &HeaderName) -> bool {
    name == http::header::CONNECTION
        || name == http::header::TRANSFER_ENCODING
        || name == "keep-alive"
}

/// Writes `resp` (head, then body as it comes). Returns whether the
/// connection must close after it. With `zero_copy`, body pieces that live
/// in a spool are sent with `sendfile`.
async fn write_response<B: ResponseBody>(
    io: &mut StallGuard<TcpStream>,
    resp: Response<B>,
    version: Version,
    head_only: bool,
    mut close: bool,
    zero_copy: Option<&H1Limits>,
) -> Result<bool, H1Error> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    // How the body is delimited on the wire.
    let framing = match (bodiless, length) {
        (true, _) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
        (false, None) if version == Version::HTTP_11 => Framing::Chunked,
        (false, None) => {
            close = true;
            Framing::Close
        }
    };

    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if is_framing(name) {
            continue;
        }
        has_length |= name == http::header::CONTENT_LENGTH;
        field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(http::header::DATE) {
        field(&mut head, b"date", http_date().as_bytes());
    }
    match framing {
        Framing::Length(n) if !has_length => {
            field(&mut head, b"content-length", n.to_string().as_bytes())
        }
        Framing::Chunked => field(&mut head, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if close {
        field(&mut head, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        field(&mut head, b"connection", b"keep-alive");
    }
    head.extend_from_slice(b"\r\n");

    if matches!(framing, Framing::None) {
        drop(body);
        write_all(io, &[&head]).await?;
        return Ok(close);
    }
    // The head goes out with the first piece when that is ready at once
    // (a streamed response is answered with its first piece in hand).
    let mut pending_head = Some(head);
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    loop {
        if left == Some(0) {
            break;
        }
        let frame = if pending_head.is_some() {
            match futures_util::FutureExt::now_or_never(body.frame()) {
                Some(f) => f,
                None => {
                    let head = pending_head.take().unwrap_or_default();
                    write_all(io, &[&head]).await?;
                    body.frame().await
                }
            }
        } else {
            body.frame().await
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(H1Error::Body(e)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if d.is_empty() => continue,
                Ok(d) => d,
                Err(_) => continue, // trailers: not passed on
            },
        };
        let head = pending_head.take().unwrap_or_default();
        match (&framing, &mut left) {
            (Framing::Chunked, _) => {
                let mut size = [0u8; 18];
                let size = chunk_size_line(data.len(), &mut size);
                let last: &[u8] = if body.is_end_stream() {
                    b"\r\n0\r\n\r\n"
                } else {
                    b"\r\n"
                };
                write_all(io, &[&head, size, &data, last]).await?;
                if body.is_end_stream() {
                    return Ok(close);
                }
            }
            (_, Some(left)) => {
                // Never more than the length promised: the rest would be
                // read as the next response.
                let n = (data.len() as u64).min(*left) as usize;
                let data = data.slice(..n);
                let spooled = zero_copy
                    .filter(|_| n >= SENDFILE_MIN)
                    .and_then(|z| Some((z, crate::spool::find(&data)?)));
                match spooled {
                    Some((z, at)) => {
                        send_file(io, &head, &data, at).await?;
                        z.sendfile_bytes.inc_by(n as u64);
                    }
                    None => write_all(io, &[&head, &data]).await?,
                }
                *left -= n as u64;
            }
            (_, None) => write_all(io, &[&head, &data]).await?,
        }
    }
    if let Some(head) = pending_head {
        write_all(io, &[&head]).await?;
    }
    match (framing, left) {
        (Framing::Length(_), Some(short)) if short > 0 => Err(H1Error::ShortBody(short)),
        (Framing::Chunked, _) => {
            write_all(io, &[b"0\r\n\r\n"]).await?;
            Ok(close)
        }
        _ => Ok(close),
    }
}

/// A response body as the relay produces it: shared pieces of a chunk.
pub(super) trait ResponseBody:
    http_body::Body<Data = bytes::Bytes, Error = crate::slot::SlotError> + Unpin
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error = crate::slot::SlotError> + Unpin
{
}

/// How a response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 without a length).
    Close,
}

/// The chunk-size line of a `len`-byte chunk (`"{len:x}\r\n"`), written
/// into `buf` rather than allocated per piece per viewer.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, b) in buf[..digits].iter_mut().enumerate() {
        *b = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

fn field(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// The `Date` field value, formatted once per second per thread.
fn http_date() -> std::rc::Rc<str> {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, std::rc::Rc<str>)> =
            std::cell::RefCell::new((u64::MAX, std::rc::Rc::from("")));
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, std::rc::Rc::from(httpdate::fmt_http_date(now)));
        }
        c.1.clone()
    })
}

/// Writes all of `parts` (at most [`MAX_PARTS`]) with as few `writev`
/// calls as the socket allows; nothing is copied or allocated.
async fn write_all(io: &mut StallGuard<TcpStream>, parts: &[&[u8]]) -> io::Result<()> {
    let mut left: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
    let mut n_parts = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        left[n_parts] = p;
        n_parts += 1;
    }
    let mut first = 0;
    while first < n_parts {
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        for (s, p) in slices.iter_mut().zip(&left[first..n_parts]) {
            *s = IoSlice::new(p);
        }
        let mut n = io.write_vectored(&slices[..n_parts - first]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while first < n_parts && n >= left[first].len() {
            n -= left[first].len();
            first += 1;
        }
        if n > 0 {
            left[first] = &left[first][n..];
        }
    }
    Ok(())
}

/// Sends `head` (if any), then `piece`, which lives in a spool at
/// `(file, start)` ([`crate::spool::find`]), with `sendfile` from the
/// spool's memory file: the socket references the file's pages instead of
/// copying the bytes. `piece` is held (and with it the file) until the send
/// is done.
async fn send_file(
    io: &mut StallGuard<TcpStream>,
    head: &[u8],
    piece: &Bytes,
    (file, start): (std::os::fd::RawFd, u64),
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let tcp = io.get_ref();
    let sock = tcp.as_raw_fd();
    // Data sent with "more to come" (the head's MSG_MORE, and the tail of a
    // partial sendfile, which the kernel corks) waits in the socket for
    // the next send. Before waiting for room, it is pushed out; otherwise
    // it would sit there until TCP's 200 ms cork timer.
    // Only then: pushing before a send that succeeds would put the head in
    // a segment (a packet, an ACK) of its own.
    let mut corked = false;
    let wait = |corked: &mut bool| {
        if std::mem::take(corked) {
            push(sock);
        }
        tcp.writable()
    };
    // The head goes with MSG_MORE, so it leaves in one segment with the
    // start of the body rather than on its own.
    let mut head = head;
    while !head.is_empty() {
        match tcp.try_io(Interest::WRITABLE, || {
            // SAFETY: a plain send of a live buffer on a socket we own.
            let n = unsafe {
                libc::send(
                    sock,
                    head.as_ptr().cast(),
                    head.len(),
                    libc::MSG_MORE | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(n) => {
                head = &head[n..];
                corked = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(&mut corked).await?,
            Err(e) => return Err(e),
        }
    }
    let mut offset = start as libc::off_t;
    let end = offset + piece.len() as libc::off_t;
    while offset < end {
        match tcp.try_io(Interest::WRITABLE, || {
            // SAFETY: `file` is the spool's descriptor, kept open by
            // `piece`; the range lies within the file.
            let n = unsafe { libc::sendfile(sock, file, &mut offset, (end - offset) as usize) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // A short send leaves its last segment corked.
            Ok(_) => corked = offset < end,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(&mut corked).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends what a socket holds back for more (a corked segment): setting
/// `TCP_NODELAY` pushes pending data out, even when it is already set.
fn push(sock: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid option value on a socket we own; a
    // failure only means nothing is pushed early.
    unsafe {
        libc::setsockopt(
            sock,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Reads and drops a request body of `len` bytes (some may be in `buf`).
async fn discard_body(
    io: &mut StallGuard<TcpStream>,
    buf: &mut Vec<u8>,
    len: u64,
) -> Result<(), H1Error> {
    let in_buf = (len.min(buf.len() as u64)) as usize;
    buf.drain(..in_buf);
    let mut left = len - in_buf as u64;
    let mut sink = [0u8; 2048];
    while left > 0 {
        let want = (left as usize).min(sink.len());
        let n = io.read(&mut sink[..want]).await?;
        if n == 0 {
            return Err(H1Error::IncompleteHead);
        }
        left -= n as u64;
    }
    Ok(())
}

/// Closes the sending side, then reads and drops what the client still
/// sends for a moment, so it reads the response before the socket closes:
/// closing a socket with unread bytes resets it, and a reset throws away
/// what was still queued to send.
pub(super) async fn linger<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 2048];
        let mut total = 0;
        while total < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Head, usize)>, H1Error> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn a_head_parses_into_an_owned_request() {
        let (h, n) = parse("GET /a?b HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\nGET")
            .unwrap()
            .unwrap();
        assert_eq!(n, 48);
        assert_eq!(h.req.uri(), "/a?b");
        assert_eq!(h.req.headers()["range"], "bytes=0-1");
        assert!(!h.close);
        assert_eq!(h.body_len, 0);
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\nHost:")
            .unwrap()
            .is_none());
        for bad in [
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
        ] {
            match parse(bad) {
                Err(H1Error::BadRequest(e)) => assert_eq!(e.status(), 400, "{bad:?}"),
                other => panic!("{bad:?}: {:?}", other.map(|o| o.map(|(_, n)| n))),
            }
        }
        let many = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse(&many),
            Err(H1Error::BadRequest(RequestError::HeaderTooLarge(_)))
        ));
    }

    #[test]
    fn chunk_size_lines_are_lower_hex() {
        let mut buf = [0u8; 18];
        for n in [0usize, 1, 15, 16, 4096, 65_536, 0xdead_beef, usize::MAX] {
            assert_eq!(
                chunk_size_line(n, &mut buf),
                format!("{n:x}\r\n").as_bytes()
            );
        }
    }

    #[test]
    fn an_absolute_target_needs_no_host() {
        let h = parse("GET http://a:1/x HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(h.req.uri().authority().unwrap().as_str(), "a:1");
    }

    #[test]
    fn connection_and_body_framing() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert!(h.close, "HTTP/1.0 closes by default");
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(!h.close);
        let h = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(h.close);
        let h = parse(
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap()
        .unwrap()
        .0;
        assert!(h.chunked_body);
        assert_eq!(h.body_len, 0, "TE wins over CL");
        let h = parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(h.body_len, 7);
        assert!(!h.chunked_body);
        let h =
            parse("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n")
                .unwrap()
                .unwrap()
                .0;
        assert!(h.chunked_body, "a body behind Expect cannot be skipped");
    }
}
