//! Failover: a chunk is asked of each source in turn (nearest relay, the
//! configured relays, the origin), for up to [`ROUNDS`] rounds, each attempt
//! bounded by the fetch timeout. One attempt sends the request on a pooled
//! connection, long-polls through "not yet", and hands the response to the
//! decryption driver (`decrypt.rs`), which writes only verified plaintext
//! past what earlier sources already wrote.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::io::AsyncWrite;

use super::decrypt::Expect;
use super::{Client, ClientError, Fail, Name, SourceError};
use crate::manifest::ChunkRef;

/// How often a whole round of sources is retried for one chunk.
const ROUNDS: usize = 3;

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

impl Client {
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
        self.reprobe_if_stale().await;
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

    /// One attempt at one source: long-polls through "not yet", then lets
    /// the decryption driver write the verified plaintext past `written`.
    async fn attempt<W: AsyncWrite + Unpin>(
        &self,
        src: &Source,
        name: &Name,
        want: &Expect,
        out: &mut W,
        written: &mut u64,
    ) -> Result<(), Fail> {
        loop {
            let (addr, req) = self.request(src, name).await?;
            // Keep-alive, as players do: reuse the source's idle connection. One
            // the server has closed meanwhile fails before any response, and is
            // replaced by a fresh one without blaming the source.
            let (mut send, reused) = self.connection(addr).await?;
            // hyper's HTTP/1.1 sender refuses a request ("connection was not
            // ready") until its connection task has finished the last one,
            // which may lag the end of that response's body by a poll; a
            // refusal would cost a needless new connection.
            let sent = match send.ready().await {
                Ok(()) => send.send_request(req.clone()).await,
                Err(e) => Err(e),
            };
            let resp = match sent {
                Ok(r) => r,
                Err(_) if reused => {
                    send = self.connection(addr).await?.0;
                    send.send_request(req)
                        .await
                        .map_err(|e| SourceError::Request(e.to_string()))?
                }
                Err(e) => return Err(SourceError::Request(e.to_string()).into()),
            };
            let draining = resp
                .headers()
                .contains_key(crate::protocol::DRAINING_HEADER);
            if crate::protocol::is_not_yet(resp.status(), resp.headers()) {
                if resp.into_body().collect().await.is_ok() {
                    self.give_back(addr, send);
                }
                continue;
            }
            self.decrypt(resp, name, want, out, written).await?;
            self.give_back(addr, send);
            if draining && self.nearest() == Some(addr) {
                // Planned drain: routing is moving the anycast address away
                // while this relay still serves, so ask again now rather than
                // after its listener has closed.
                tracing::info!(relay = %addr, "nearest relay is draining; probing again");
                self.discover().await;
            }
            return Ok(());
        }
    }

    /// Where to send the request for `name` to `src`, and the request: a
    /// relay gets the absolute form, the origin its own path.
    async fn request(
        &self,
        src: &Source,
        name: &Name,
    ) -> Result<(SocketAddr, Request<Empty<Bytes>>), Fail> {
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
        Ok((addr, req))
    }
}
