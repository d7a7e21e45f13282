//! The RFC 8188 header: `salt(16) | rs(u32 BE) | idlen(1) | keyid(idlen)`.
//!
//! [`Header::parse`] reads it from the first bytes of a body as they arrive
//! and refuses an out-of-range `rs` from its four octets alone, before the
//! key id is even there; the encryptor writes it in front of the records.

use super::{EceError, MAX_RS, MIN_RS};

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Salt.
    pub salt: [u8; 16],
    /// Record size.
    pub rs: u32,
    /// Key id (names the key the viewer must use).
    pub keyid: Vec<u8>,
}

impl Header {
    /// Parses a header from the start of `b`; `Ok(None)` when more bytes are
    /// needed. The record size is checked as soon as its four octets are
    /// there: below [`MIN_RS`] (RFC 8188 §2.1) or above [`MAX_RS`] is an
    /// error.
    pub fn parse(b: &[u8]) -> Result<Option<(Header, usize)>, EceError> {
        if b.len() < 20 {
            return Ok(None);
        }
        let rs = u32::from_be_bytes(b[16..20].try_into().expect("4 bytes"));
        if rs < MIN_RS {
            return Err(EceError::Header("record size below 18"));
        }
        if rs > MAX_RS {
            return Err(EceError::Header("record size above 1 MiB"));
        }
        if b.len() < 21 {
            return Ok(None);
        }
        let idlen = b[20] as usize;
        if b.len() < 21 + idlen {
            return Ok(None);
        }
        Ok(Some((
            Header {
                salt: b[..16].try_into().expect("16 bytes"),
                rs,
                keyid: b[21..21 + idlen].to_vec(),
            },
            21 + idlen,
        )))
    }

    /// Appends the header's octets to `out` (the encryptor's first step).
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.rs.to_be_bytes());
        out.push(self.keyid.len() as u8);
        out.extend_from_slice(&self.keyid);
    }
}
