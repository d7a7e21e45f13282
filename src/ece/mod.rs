//! Encrypted content coding `aes128gcm` (RFC 8188), record by record.
//!
//! The origin encrypts every chunk with [`encrypt`]; relays carry the result
//! as opaque bytes; the viewer feeds bytes to a [`Decoder`] as they stream in
//! and gets verified plaintext one record at a time, so a progressive chunk
//! stays progressive end to end. The primitives (AES-128-GCM, HKDF-SHA-256)
//! come from RustCrypto; this module only does the RFC's framing:
//!
//! ```text
//! header  = salt(16) | rs(u32 BE) | idlen(1) | keyid(idlen)
//! PRK     = HKDF-Extract(salt, IKM)
//! CEK     = HKDF-Expand(PRK, "Content-Encoding: aes128gcm\0", 16)
//! NONCE_i = HKDF-Expand(PRK, "Content-Encoding: nonce\0", 12) XOR i
//! record  = AES-GCM(CEK, NONCE_i, data | 0x01 (0x02 on the last) | 0x00*)
//! ```
//!
//! Every record but the last is exactly `rs` octets of ciphertext.
//!
//! Two mlcache rules sit on top of the RFC (docs/protocol.md §8):
//!
//! - **Binding to the name.** The IKM is not the key the API serves but
//!   [`name_key`]`(key, NAME)`, so a body only decrypts under the chunk name
//!   it was made for; a relay that serves chunk M for chunk N fails the first
//!   record's tag. The framing above stays exactly RFC 8188, so any RFC 8188
//!   library encrypts and decrypts mlcache chunks given the derived IKM.
//! - **Bounded records.** A header naming `rs` over [`MAX_RS`] is refused
//!   before anything is buffered for it: `rs` is not authenticated, and the
//!   decoder holds up to one record.
//!
//! Files: `header.rs` reads and writes the header, `keys.rs` derives a
//! body's keys and opens one record, `encrypt.rs` makes a body, `decoder.rs`
//! streams one back to plaintext; this file holds the constants, the errors,
//! the name binding and the `Content-Encoding` check.

mod decoder;
mod encrypt;
mod header;
mod keys;
#[cfg(test)]
mod tests;

use hkdf::Hkdf;
use sha2::Sha256;

pub use decoder::Decoder;
pub use encrypt::{encrypt, encrypt_records};
pub use header::Header;

/// The `Content-Encoding` token.
pub const CODING: &str = "aes128gcm";
/// Length of the AES-GCM tag.
pub const TAG: usize = 16;
/// Smallest record size the RFC allows.
pub const MIN_RS: u32 = 18;
/// The record size the origin uses: small enough that a viewer verifies and
/// releases plaintext every 4 KiB while a chunk streams in.
pub const DEFAULT_RS: u32 = 4096;
/// Largest record size a decoder accepts (1 MiB). The decoder holds one
/// record before it can verify it, and `rs` comes unauthenticated from
/// whoever relayed the body, so this bounds what a relay can make a viewer
/// buffer.
pub const MAX_RS: u32 = 1 << 20;
/// HKDF info prefix of the name binding (see [`name_key`]).
pub const NAME_INFO: &[u8] = b"mlcache chunk name\0";

/// Why decoding failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EceError {
    /// The header is malformed.
    #[error("bad aes128gcm header: {0}")]
    Header(&'static str),
    /// A record failed authentication: tampered bytes or the wrong key.
    #[error("record {0} failed authentication")]
    Auth(u64),
    /// A record's padding or delimiter is wrong.
    #[error("record {0} is malformed")]
    Record(u64),
    /// The body ended without a final record (truncation).
    #[error("content ended before its last record")]
    Truncated,
    /// Bytes came after the last record.
    #[error("data after the last record")]
    Trailing,
    /// The decoder has no key for this key id.
    #[error("no key for key id {0:?}")]
    UnknownKey(String),
    /// The response does not say `Content-Encoding: aes128gcm` (alone).
    #[error("Content-Encoding is {0}, not exactly aes128gcm: unverifiable")]
    Coding(String),
}

/// Derives the IKM of one chunk from the key its key id names and the
/// chunk's binding name (`manifest::binding_name`):
///
/// ```text
/// IKM' = HKDF-SHA-256(salt = "", IKM = key, info = "mlcache chunk name\0" || NAME, L = 16)
/// ```
///
/// The body is plain RFC 8188 under `IKM'`, so a body made for one name does
/// not authenticate under any other.
pub fn name_key(key: &[u8], name: &str) -> [u8; 16] {
    let hk = Hkdf::<Sha256>::new(None, key);
    let mut ikm = [0u8; 16];
    hk.expand_multi_info(&[NAME_INFO, name.as_bytes()], &mut ikm)
        .expect("16 bytes is a valid HKDF length");
    ikm
}

/// Checks that a response's content coding is exactly `aes128gcm`: one
/// `Content-Encoding` field, one token, compared case-insensitively (RFC 9110
/// §8.4.1). Anything else (no field, `identity`, `gzip`, a list, a second
/// field) means the body is not what the origin encrypted and must not be
/// trusted.
pub fn check_coding(headers: &http::HeaderMap) -> Result<(), EceError> {
    let mut all = headers.get_all(http::header::CONTENT_ENCODING).iter();
    let (first, second) = (all.next(), all.next());
    let Some(v) = first else {
        return Err(EceError::Coding("absent".into()));
    };
    if second.is_some() {
        return Err(EceError::Coding("given twice".into()));
    }
    let token = v.to_str().unwrap_or("").trim_matches([' ', '\t']);
    if token.eq_ignore_ascii_case(CODING) {
        Ok(())
    } else {
        Err(EceError::Coding(format!(
            "{:?}",
            String::from_utf8_lossy(v.as_bytes())
        )))
    }
}
