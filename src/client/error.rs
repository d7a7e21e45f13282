//! Why the client failed: [`ClientError`] for the caller, [`SourceError`]
//! for one source's failure at one chunk (the client then tries the next
//! source), and `Fail`, which tells the two apart inside an attempt.

use std::time::Duration;

use http::StatusCode;

use crate::ece::EceError;

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

/// How one attempt failed: the source's fault (try the next one) or the
/// output's (stop).
#[derive(Debug)]
pub(super) enum Fail {
    /// The source failed: try the next one.
    Source(SourceError),
    /// Writing the output failed: stop.
    Output(std::io::Error),
}

impl From<SourceError> for Fail {
    fn from(e: SourceError) -> Fail {
        Fail::Source(e)
    }
}
