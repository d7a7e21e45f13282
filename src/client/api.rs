//! The origin's manifest and key API: one HTTPS GET per document, with the
//! bearer token, over a fresh TLS connection (rustls, trusting the
//! configured CA or the webpki roots). Keys are cached per (origin, key id);
//! a title's manifest is indexed by chunk so a chunk's key id is known before
//! any byte of it is trusted.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use super::{pool, Client, ClientError, Name};
use crate::manifest::{KeyDoc, KeyIndex, Manifest};

/// Largest manifest or key document the client reads.
const MAX_DOC: usize = 4 << 20;

impl Client {
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
        let work = async {
            let tls = crate::tls::connect(&self.tls, host, addr_s.as_str(), pool::CONNECT_TIMEOUT)
                .await
                .map_err(|e| api_err(&e))?;
            let mut send = pool::http1(tls).await.map_err(|e| api_err(&e))?;
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
}
