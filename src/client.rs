//! The viewer client: manifests and keys from the origin over authenticated
//! HTTPS, chunks through the nearest relay, decrypted and verified as they
//! stream.
//!
//! Sources for a chunk, in order: the relay the anycast probe found (if it
//! says it is healthy), the relays given explicitly, then the origin itself.
//! Nothing a source sends is trusted until checked (docs/protocol.md §8):
//!
//! 1. the response must say `Content-Encoding: aes128gcm` and nothing else
//!    ([`ece::check_coding`]); a body without it could be anything;
//! 2. the RFC 8188 header's `rs` must be within `ece::MIN_RS..=ece::MAX_RS`,
//!    checked before a byte is buffered for a record;
//! 3. the header's key id must be the one the manifest gives for this chunk
//!    ([`KeyIndex`]), checked before the API is asked for any key;
//! 4. every record must authenticate under the key derived from that key and
//!    the chunk's binding name ([`ece::name_key`]), so another chunk (an old
//!    one, or one for another name) fails its first record.
//!
//! Plaintext is streamed: a record's plaintext goes to the output as soon as
//! its tag verifies, so memory per chunk is one record (at most 1 MiB), not
//! one chunk. If a source fails (it is down, it resets, or any check above
//! fails), the chunk is fetched again from the next source; that source's
//! plaintext is decrypted from the start and the part already written is
//! skipped, so the output stays exact: nothing duplicated, nothing lost,
//! nothing unverified. `written` advances with each completed `write` call,
//! so a timeout that cancels an attempt mid-write cannot make a byte be
//! written twice. A relay failure also triggers a new probe, because routing
//! may now lead to another relay. Name resolution is asynchronous
//! (`tokio::net::lookup_host`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ece::{self, Decoder, EceError, Header};
use crate::manifest::{ChunkRef, KeyDoc, KeyIndex, Manifest};
use crate::probe;

/// Largest manifest or key document the client reads.
const MAX_DOC: usize = 4 << 20;
/// How often a whole round of sources is retried for one chunk.
const ROUNDS: usize = 3;
/// Without a nearest relay, probe again at most this often: routing may have
/// converged on another relay since.
const REPROBE: Duration = Duration::from_secs(2);

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not an `mlcache://AUTHORITY/PATH` name.
    #[error("invalid name {0:?}: expected mlcache://AUTHORITY/PATH")]
    BadName(String),
    /// The API refused the token.
    #[error("the origin refused the token (401)")]
    Unauthorized,
    /// The API does not know the manifest or key.
    #[error("not found at the origin: {0}")]
    NotFound(String),
    /// The API could not be reached or answered nonsense.
    #[error("origin API: {0}")]
    Api(String),
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Every source failed for a chunk.
    #[error("every source failed for {chunk}: {last}")]
    Exhausted {
        /// The chunk.
        chunk: String,
        /// The last error.
        last: String,
    },
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    /// No manifest lists the chunk, so its key id is unknown and nothing it
    /// is served as could be verified.
    #[error("{0} is not in its title's manifest: its key id is unknown")]
    UnknownChunk(String),
}

/// Why one source failed for one chunk; the client then tries the next
/// source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The origin's authority did not resolve.
    #[error("resolve {0}: {1}")]
    Resolve(String, String),
    /// No connection.
    #[error("connect: {0}")]
    Connect(String),
    /// The request failed before a response head.
    #[error("request: {0}")]
    Request(String),
    /// A status other than 200 (or "not yet").
    #[error("status {0}")]
    Status(StatusCode),
    /// The body failed in transit.
    #[error("body: {0}")]
    Body(String),
    /// Content coding, header, record or authentication failure.
    #[error("{0}")]
    Ece(#[from] EceError),
    /// The header names a key id other than the manifest's for this chunk.
    #[error("key id {got:?} is not this chunk's (the manifest says {expected:?})")]
    KeyId {
        /// What the header said.
        got: String,
        /// What the manifest says.
        expected: String,
    },
    /// The chunk's key could not be had from the API.
    #[error("key: {0}")]
    Key(String),
    /// A verified body shorter than what an earlier source already verified.
    #[error("verified plaintext ends at {got} bytes, but {written} were already written")]
    Inconsistent {
        /// Plaintext length of this source's body.
        got: u64,
        /// Plaintext already written for this chunk.
        written: u64,
    },
    /// The attempt ran out of time.
    #[error("no complete chunk within {0:?}")]
    Timeout(Duration),
}

/// A parsed `mlcache://AUTHORITY/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The origin's authority.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Name {
    /// The binding name the chunk's ciphertext is bound to
    /// (`manifest::binding_name`).
    pub fn binding(&self) -> Result<String, ClientError> {
        crate::manifest::binding_name(&self.authority, &self.path)
            .map_err(|_| ClientError::BadName(self.to_string()))
    }

    /// Parses a chunk or title name.
    pub fn parse(s: &str) -> Result<Name, ClientError> {
        let rest = s
            .strip_prefix("mlcache://")
            .ok_or_else(|| ClientError::BadName(s.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(ClientError::BadName(s.into()));
        }
        Ok(Name {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mlcache://{}{}", self.authority, self.path)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL of the origin's API (`https://HOST:PORT`); default
    /// `https://AUTHORITY` of the name.
    pub api: Option<String>,
    /// Bearer token for the API.
    pub token: String,
    /// CA certificate (PEM) to trust for the API; default the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Anycast address to probe for the nearest relay.
    pub probe: Option<SocketAddr>,
    /// Probe timeout.
    pub probe_timeout: Duration,
    /// Relays to try after the probed one.
    pub relays: Vec<SocketAddr>,
    /// Longest one attempt at one chunk may take.
    pub fetch_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            api: None,
            token: String::new(),
            ca_pem: None,
            probe: None,
            probe_timeout: probe::DEFAULT_TIMEOUT,
            relays: Vec::new(),
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a chunk came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A relay, at its unicast address.
    Relay(SocketAddr),
    /// The origin, directly.
    Origin(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Relay(a) => write!(f, "relay {a}"),
            Source::Origin(a) => write!(f, "origin {a}"),
        }
    }
}

/// A source that failed for a chunk, and why.
#[derive(Debug, Clone)]
pub struct Event {
    /// The chunk.
    pub chunk: String,
    /// The source that failed.
    pub source: String,
    /// What went wrong.
    pub error: String,
}

/// What one chunk fetch produced.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Plaintext bytes written.
    pub bytes: u64,
    /// The source that delivered the end of it.
    pub source: Source,
}

/// A viewer.
pub struct Client {
    cfg: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    /// Keys by (authority, key id): key ids are per origin.
    keys: Mutex<HashMap<(String, String), Vec<u8>>>,
    /// Key id indexes of titles, by the title's binding name.
    titles: Mutex<HashMap<String, Arc<KeyIndex>>>,
    nearest: Mutex<Option<SocketAddr>>,
    probed: Mutex<Option<std::time::Instant>>,
    events: Mutex<Vec<Event>>,
    served: Mutex<BTreeMap<Source, u64>>,
    idle: Mutex<HashMap<SocketAddr, Http1Sender>>,
}

type Http1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

enum Attempt {
    Done,
    NotYet,
}

impl Client {
    /// A client; probes for the nearest relay at once when a probe address
    /// is configured.
    pub async fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let tls = crate::tls::client_config(cfg.ca_pem.as_deref())?;
        let c = Client {
            cfg,
            tls,
            keys: Mutex::new(HashMap::new()),
            titles: Mutex::new(HashMap::new()),
            nearest: Mutex::new(None),
            probed: Mutex::new(None),
            events: Mutex::new(Vec::new()),
            served: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(HashMap::new()),
        };
        c.discover().await;
        Ok(c)
    }

    /// Probes the anycast address; remembers the relay it names if healthy.
    pub async fn discover(&self) -> Option<SocketAddr> {
        let anycast = self.cfg.probe?;
        *self.probed.lock() = Some(std::time::Instant::now());
        let found = match probe::probe(anycast, self.cfg.probe_timeout).await {
            Ok(a) if a.healthy => {
                let u = a.unicast();
                tracing::info!(%anycast, relay = %a.id, unicast = ?u, "nearest relay found");
                u
            }
            Ok(a) => {
                tracing::warn!(%anycast, relay = %a.id, "nearest relay is unhealthy; going around it");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "no cache answered the probe");
                None
            }
        };
        *self.nearest.lock() = found;
        found
    }

    /// The relay the last probe found.
    pub fn nearest(&self) -> Option<SocketAddr> {
        *self.nearest.lock()
    }

    /// Sources failed so far, with reasons.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// Chunks delivered per source.
    pub fn served(&self) -> BTreeMap<Source, u64> {
        self.served.lock().clone()
    }

    fn sources(&self, name: &Name) -> Vec<Source> {
        let mut v: Vec<Source> = self.nearest().into_iter().map(Source::Relay).collect();
        v.extend(self.cfg.relays.iter().copied().map(Source::Relay));
        v.push(Source::Origin(name.authority.clone()));
        let mut seen = HashSet::new();
        v.retain(|s| seen.insert(s.clone()));
        v
    }

    /// GET `path` from the origin's API over HTTPS with the bearer token.
    pub async fn api_get(&self, authority: &str, path: &str) -> Result<Bytes, ClientError> {
        let base = self
            .cfg
            .api
            .clone()
            .unwrap_or_else(|| format!("https://{authority}"));
        // The API base is an origin URL like any other: reuse its parser.
        let api = crate::key::Origin::parse(&base)
            .ok()
            .filter(|o| o.scheme == crate::key::Scheme::Https)
            .ok_or_else(|| {
                ClientError::Api(format!("API URL must be https://HOST[:PORT]: {base}"))
            })?;
        let host = api.host.trim_matches(['[', ']']);
        let (addr_s, hostport) = (api.canonical(), api.host_header());
        let hostport = hostport.as_str();
        let api_err = |e: &dyn std::fmt::Display| ClientError::Api(format!("{base}: {e}"));
        let server_name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| api_err(&e))?;
        let work = async {
            let tcp = TcpStream::connect(&addr_s).await.map_err(|e| api_err(&e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|e| api_err(&e))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| api_err(&e))?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header(http::header::HOST, hostport)
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.cfg.token),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| api_err(&e))?;
            let resp = send.send_request(req).await.map_err(|e| api_err(&e))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_DOC)
                .collect()
                .await
                .map_err(|e| api_err(&e))?
                .to_bytes();
            match status {
                StatusCode::OK => Ok(body),
                StatusCode::UNAUTHORIZED => Err(ClientError::Unauthorized),
                StatusCode::NOT_FOUND => Err(ClientError::NotFound(path.to_string())),
                s => Err(ClientError::Api(format!("{base}{path}: status {s}"))),
            }
        };
        tokio::time::timeout(self.cfg.fetch_timeout, work)
            .await
            .map_err(|_| ClientError::Api(format!("{base}{path}: timed out")))?
    }

    /// The manifest of a title or stream (`/manifest` + its path).
    pub async fn manifest(&self, name: &Name) -> Result<Manifest, ClientError> {
        let body = self
            .api_get(&name.authority, &format!("/manifest{}", name.path))
            .await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Api(format!("bad manifest: {e}")))
    }

    /// The key for `keyid` of the origin `authority` (cached).
    pub async fn key(&self, authority: &str, keyid: &str) -> Result<Vec<u8>, ClientError> {
        let id = (authority.to_string(), keyid.to_string());
        if let Some(k) = self.keys.lock().get(&id) {
            return Ok(k.clone());
        }
        let enc: String = keyid
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = self.api_get(authority, &format!("/keys/{enc}")).await?;
        let doc: KeyDoc = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Api(format!("bad key document: {e}")))?;
        if doc.keyid != keyid {
            return Err(ClientError::Api(format!(
                "asked for key {keyid:?}, got {:?}",
                doc.keyid
            )));
        }
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(doc.key.as_bytes())
            .map_err(|e| ClientError::Api(format!("bad key encoding: {e}")))?;
        self.keys.lock().insert(id, key.clone());
        Ok(key)
    }

    /// The key id the manifest gives for chunk `name`. A chunk belongs to
    /// the title one path segment up (`mlcache://A/vod/3` to
    /// `mlcache://A/vod`, `mlcache://A/live/0/7` to `mlcache://A/live/0`);
    /// that title's manifest is read once and indexed, and read again once
    /// if it does not list the chunk (a VOD title may have grown, a live
    /// stream may have ended).
    pub async fn keyid_of(&self, name: &Name) -> Result<String, ClientError> {
        let binding = name.binding()?;
        let path = name.path.split(['?', '#']).next().unwrap_or("");
        let parent = path
            .rsplit_once('/')
            .map(|(p, _)| p)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ClientError::UnknownChunk(name.to_string()))?;
        let title = Name {
            authority: name.authority.clone(),
            path: parent.to_string(),
        };
        let title_key = title.binding()?;
        for reread in [false, true] {
            let cached = self.titles.lock().get(&title_key).cloned();
            let index = match cached {
                Some(i) if !reread => i,
                _ => {
                    let m = self.manifest(&title).await?;
                    let i = Arc::new(
                        KeyIndex::new(&m)
                            .map_err(|e| ClientError::Api(format!("bad manifest: {e}")))?,
                    );
                    self.titles.lock().insert(title_key.clone(), i.clone());
                    i
                }
            };
            if let Some(k) = index.keyid_for(&binding) {
                return Ok(k);
            }
        }
        Err(ClientError::UnknownChunk(name.to_string()))
    }

    /// Fetches one chunk and writes its verified plaintext to `out`. Its key
    /// id comes from its title's manifest ([`Client::keyid_of`]).
    pub async fn fetch<W: AsyncWrite + Unpin>(
        &self,
        name: &Name,
        out: &mut W,
    ) -> Result<Fetched, ClientError> {
        let keyid = self.keyid_of(name).await?;
        self.fetch_as(name, &keyid, out).await
    }

    /// Fetches a chunk a manifest listed, under the key id it gave.
    pub async fn fetch_chunk<W: AsyncWrite + Unpin>(
        &self,
        chunk: &ChunkRef,
        out: &mut W,
    ) -> Result<Fetched, ClientError> {
        self.fetch_as(&Name::parse(&chunk.name)?, &chunk.keyid, out)
            .await
    }

    /// Fetches chunk `name`, which must be under `keyid`, from the first
    /// source that delivers it verified.
    async fn fetch_as<W: AsyncWrite + Unpin>(
        &self,
        name: &Name,
        keyid: &str,
        out: &mut W,
    ) -> Result<Fetched, ClientError> {
        let want = Expect {
            binding: name.binding()?,
            keyid: keyid.to_string(),
        };
        let stale = self.probed.lock().is_some_and(|t| t.elapsed() >= REPROBE);
        if self.nearest().is_none() && stale {
            self.discover().await;
        }
        let mut written = 0u64;
        let mut last = String::new();
        let mut tried: HashSet<Source> = HashSet::new();
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(200 * round as u64)).await;
                tried.clear();
            }
            while let Some(src) = self.sources(name).into_iter().find(|s| !tried.contains(s)) {
                tried.insert(src.clone());
                let attempt = tokio::time::timeout(
                    self.cfg.fetch_timeout,
                    self.attempt(&src, name, &want, out, &mut written),
                )
                .await;
                let err = match attempt {
                    Ok(Ok(())) => {
                        *self.served.lock().entry(src.clone()).or_default() += 1;
                        return Ok(Fetched {
                            bytes: written,
                            source: src,
                        });
                    }
                    Ok(Err(Fail::Output(e))) => return Err(ClientError::Output(e)),
                    Ok(Err(Fail::Source(e))) => e.to_string(),
                    Err(_) => SourceError::Timeout(self.cfg.fetch_timeout).to_string(),
                };
                tracing::warn!(chunk = %name, source = %src, error = %err, "source failed; refetching from the next one");
                self.events.lock().push(Event {
                    chunk: name.to_string(),
                    source: src.to_string(),
                    error: err.clone(),
                });
                last = err;
                if matches!(src, Source::Relay(a) if self.nearest() == Some(a)) {
                    // Routing may have moved the anycast address elsewhere.
                    self.discover().await;
                }
            }
        }
        Err(ClientError::Exhausted {
            chunk: name.to_string(),
            last,
        })
    }

    /// One attempt at one source: long-polls through "not yet", decrypts as
    /// bytes arrive, writes only plaintext past `written`.
    async fn attempt<W: AsyncWrite + Unpin>(
        &self,
        src: &Source,
        name: &Name,
        want: &Expect,
        out: &mut W,
        written: &mut u64,
    ) -> Result<(), Fail> {
        loop {
            match self.attempt_once(src, name, want, out, written).await? {
                Attempt::Done => return Ok(()),
                Attempt::NotYet => continue,
            }
        }
    }

    async fn attempt_once<W: AsyncWrite + Unpin>(
        &self,
        src: &Source,
        name: &Name,
        want: &Expect,
        out: &mut W,
        written: &mut u64,
    ) -> Result<Attempt, Fail> {
        let (addr, req) = match src {
            Source::Relay(a) => (
                *a,
                Request::get(format!("http://{}{}", name.authority, name.path)),
            ),
            Source::Origin(auth) => {
                // Chunks come from the origin in clear HTTP: port 80 unless
                // the name says otherwise.
                let resolve =
                    |e: &dyn std::fmt::Display| SourceError::Resolve(auth.clone(), e.to_string());
                let hostport =
                    crate::manifest::canonical_authority(auth).map_err(|e| resolve(&e))?;
                let a = tokio::net::lookup_host(hostport.as_str())
                    .await
                    .map_err(|e| resolve(&e))?
                    .next()
                    .ok_or_else(|| resolve(&"no address"))?;
                (a, Request::get(name.path.as_str()))
            }
        };
        let req = req
            .header(http::header::HOST, name.authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| SourceError::Request(e.to_string()))?;
        // Keep-alive, as players do: reuse the source's idle connection. One
        // the server has closed meanwhile fails before any response, and is
        // replaced by a fresh one without blaming the source.
        let (mut send, reused) = self.connection(addr).await?;
        let resp = match send.send_request(req.clone()).await {
            Ok(r) => r,
            Err(_) if reused => {
                send = self.connection(addr).await?.0;
                send.send_request(req)
                    .await
                    .map_err(|e| SourceError::Request(e.to_string()))?
            }
            Err(e) => return Err(SourceError::Request(e.to_string()).into()),
        };
        let status = resp.status();
        if status == StatusCode::NOT_FOUND
            && resp.headers().contains_key(crate::protocol::NOT_YET_HEADER)
        {
            if resp.into_body().collect().await.is_ok() {
                self.give_back(addr, send);
            }
            return Ok(Attempt::NotYet);
        }
        if status != StatusCode::OK {
            return Err(SourceError::Status(status).into());
        }
        // Without the coding the body is unverifiable: not one byte of it
        // may reach the output.
        ece::check_coding(resp.headers()).map_err(SourceError::Ece)?;
        let mut body = resp.into_body();
        let mut pos = 0u64; // plaintext offset within this attempt
        let mut head: Vec<u8> = Vec::new();
        let mut dec: Option<KeyedDecoder> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(f) => f.map_err(|e| SourceError::Body(e.to_string()))?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let plain = if let Some(d) = dec.as_mut() {
                d.push(&data).map_err(SourceError::Ece)?
            } else {
                head.extend_from_slice(&data);
                // `rs` is bounded here, before the decoder buffers a record.
                let Some((h, _)) = Header::parse(&head).map_err(SourceError::Ece)? else {
                    continue;
                };
                let ikm = self.chunk_key(name, want, &h).await?;
                let mut d: KeyedDecoder = Decoder::new(Box::new(move |_| Some(ikm.to_vec())));
                let p = d
                    .push(&std::mem::take(&mut head))
                    .map_err(SourceError::Ece)?;
                dec = Some(d);
                p
            };
            emit(out, &plain, &mut pos, written).await?;
        }
        let d = dec.as_mut().ok_or(SourceError::Ece(EceError::Truncated))?;
        let plain = d.finish().map_err(SourceError::Ece)?;
        emit(out, &plain, &mut pos, written).await?;
        if pos < *written {
            return Err(SourceError::Inconsistent {
                got: pos,
                written: *written,
            }
            .into());
        }
        out.flush().await.map_err(Fail::Output)?;
        self.give_back(addr, send);
        Ok(Attempt::Done)
    }

    /// An idle connection to `addr`, or a new one; `true` when reused.
    async fn connection(&self, addr: SocketAddr) -> Result<(Http1Sender, bool), Fail> {
        let idle = self.idle.lock().remove(&addr);
        if let Some(s) = idle.filter(|s| !s.is_closed()) {
            return Ok((s, true));
        }
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        tokio::spawn(conn);
        Ok((send, false))
    }

    /// Parks a connection whose last response was read to the end.
    fn give_back(&self, addr: SocketAddr, send: Http1Sender) {
        if !send.is_closed() {
            self.idle.lock().insert(addr, send);
        }
    }

    /// The RFC 8188 IKM for a body whose header is `h`: only if the header
    /// names the chunk's own key id (checked before the API is asked for
    /// anything), and bound to the chunk's binding name.
    async fn chunk_key(&self, name: &Name, want: &Expect, h: &Header) -> Result<[u8; 16], Fail> {
        if h.keyid != want.keyid.as_bytes() {
            return Err(SourceError::KeyId {
                got: String::from_utf8_lossy(&h.keyid).into_owned(),
                expected: want.keyid.clone(),
            }
            .into());
        }
        let key = self
            .key(&name.authority, &want.keyid)
            .await
            .map_err(|e| SourceError::Key(e.to_string()))?;
        Ok(ece::name_key(&key, &want.binding))
    }
}

/// What a chunk's body must prove: its binding name and its key id.
struct Expect {
    binding: String,
    keyid: String,
}

/// A decoder that already holds the one key its chunk needs.
type KeyedDecoder = Decoder<Box<dyn FnMut(&[u8]) -> Option<Vec<u8>> + Send>>;

/// How one attempt failed: the source's fault (try the next one) or the
/// output's (stop).
#[derive(Debug)]
enum Fail {
    Source(SourceError),
    Output(std::io::Error),
}

impl From<SourceError> for Fail {
    fn from(e: SourceError) -> Fail {
        Fail::Source(e)
    }
}

/// Writes the part of `plain` (which starts at plaintext offset `pos`) that
/// lies beyond what was already written for this chunk. `written` advances
/// after every `write` call rather than after the whole slice: if the
/// attempt is cancelled (its timeout) mid-slice, the bytes already out are
/// counted and the next source does not write them again.
async fn emit<W: AsyncWrite + Unpin>(
    out: &mut W,
    plain: &[u8],
    pos: &mut u64,
    written: &mut u64,
) -> Result<(), Fail> {
    let end = *pos + plain.len() as u64;
    while end > *written {
        let from = (*written - *pos) as usize;
        let n = out.write(&plain[from..]).await.map_err(Fail::Output)?;
        if n == 0 {
            return Err(Fail::Output(std::io::ErrorKind::WriteZero.into()));
        }
        *written += n as u64;
    }
    *pos = end;
    Ok(())
}

/// Fetches a whole VOD title (its manifest's chunks, in order) into `out`.
pub async fn get_title<W: AsyncWrite + Unpin>(
    client: &Client,
    title: &Name,
    out: &mut W,
) -> Result<u64, ClientError> {
    let Manifest::Vod { chunks } = client.manifest(title).await? else {
        return Err(ClientError::Api(format!(
            "{title} is a live stream: use play"
        )));
    };
    let mut total = 0;
    for c in &chunks {
        total += client.fetch_chunk(c, out).await?.bytes;
    }
    Ok(total)
}

/// Follows a live stream from `from` (default: the live edge) for at most
/// `count` chunks, or to its end.
pub async fn play<W: AsyncWrite + Unpin>(
    client: &Client,
    stream: &Name,
    from: Option<u64>,
    count: Option<u64>,
    out: &mut W,
) -> Result<u64, ClientError> {
    let Manifest::Live {
        template,
        keyid_template,
        key_rotation,
        edge,
        last,
        ..
    } = client.manifest(stream).await?
    else {
        return Err(ClientError::Api(format!(
            "{stream} is not a live stream: use get"
        )));
    };
    let start = from.unwrap_or(edge.max(0) as u64);
    let mut n = 0;
    let mut seq = start;
    while count.is_none_or(|c| n < c) && last.is_none_or(|l| seq <= l) {
        let c = Manifest::live_chunk(&template, &keyid_template, key_rotation, seq);
        let f = client.fetch_chunk(&c, out).await?;
        tracing::debug!(seq, bytes = f.bytes, source = %f.source, "chunk played");
        n += 1;
        seq += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = Name::parse("mlcache://data.example.com/starwars/chunk12345").unwrap();
        assert_eq!(n.authority, "data.example.com");
        assert_eq!(n.path, "/starwars/chunk12345");
        assert_eq!(
            n.to_string(),
            "mlcache://data.example.com/starwars/chunk12345"
        );
        assert!(Name::parse("http://x/y").is_err());
        assert!(Name::parse("mlcache:///y").is_err());
    }

    #[tokio::test]
    async fn emit_skips_what_was_already_written() {
        let mut out = Vec::new();
        let mut written = 0;
        let mut pos = 0;
        emit(&mut out, b"hello ", &mut pos, &mut written)
            .await
            .unwrap();
        // A second source starts over: the first 6 bytes are not repeated.
        let mut pos = 0;
        emit(&mut out, b"hel", &mut pos, &mut written)
            .await
            .unwrap();
        emit(&mut out, b"lo world", &mut pos, &mut written)
            .await
            .unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(written, 11);
    }

    /// A writer that takes at most 3 bytes per call and then blocks once its
    /// budget is spent.
    struct Stingy {
        got: Vec<u8>,
        budget: usize,
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(3).min(self.budget);
            if n == 0 {
                return std::task::Poll::Pending;
            }
            self.budget -= n;
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn an_attempt_cancelled_mid_write_duplicates_nothing() {
        use futures_util::FutureExt;
        let mut out = Stingy {
            got: Vec::new(),
            budget: 7,
        };
        let (mut written, mut pos) = (0, 0);
        // The first source's record is cut off after 7 bytes by cancellation
        // (as the fetch timeout does): the future is dropped while pending.
        let first = emit(&mut out, b"hello world", &mut pos, &mut written).now_or_never();
        assert!(first.is_none(), "the write blocked");
        assert_eq!(written, 7, "bytes already out are counted");
        out.budget = usize::MAX;
        let mut pos = 0;
        emit(&mut out, b"hello world", &mut pos, &mut written)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(out.got, b"hello world");
    }
}
