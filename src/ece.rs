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

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

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

struct Keys {
    cipher: Aes128Gcm,
    nonce: [u8; 12],
}

impl Keys {
    fn derive(ikm: &[u8], salt: &[u8; 16]) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .expect("16 bytes is a valid HKDF length");
        hk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .expect("12 bytes is a valid HKDF length");
        Keys {
            cipher: Aes128Gcm::new(&cek.into()),
            nonce,
        }
    }

    fn nonce(&self, seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = self.nonce;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n.into()
    }
}

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

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.rs.to_be_bytes());
        out.push(self.keyid.len() as u8);
        out.extend_from_slice(&self.keyid);
    }
}

/// Encrypts `records`, each given as (data, padding length), under `ikm`.
/// The caller chooses the split; each record must fit in `rs`.
pub fn encrypt_records(ikm: &[u8], header: &Header, records: &[(&[u8], usize)]) -> Vec<u8> {
    assert!(
        header.keyid.len() <= 255 && (MIN_RS..=MAX_RS).contains(&header.rs),
        "valid header"
    );
    let keys = Keys::derive(ikm, &header.salt);
    let mut out = Vec::new();
    header.write(&mut out);
    for (i, (data, pad)) in records.iter().enumerate() {
        let mut p = Vec::with_capacity(data.len() + 1 + pad);
        p.extend_from_slice(data);
        p.push(if i + 1 == records.len() { 2 } else { 1 });
        p.resize(p.len() + pad, 0);
        assert!(p.len() + TAG <= header.rs as usize, "record {i} exceeds rs");
        let ct = keys
            .cipher
            .encrypt(&keys.nonce(i as u64), p.as_slice())
            .expect("in-memory AES-GCM cannot fail");
        out.extend_from_slice(&ct);
    }
    out
}

/// Encrypts `plaintext` into records of `rs` octets (no padding).
pub fn encrypt(ikm: &[u8], salt: [u8; 16], rs: u32, keyid: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let per = rs as usize - TAG - 1;
    let mut records: Vec<(&[u8], usize)> = plaintext.chunks(per).map(|c| (c, 0)).collect();
    // A plaintext that fills its last record exactly still needs a final
    // record to carry the 0x02 delimiter.
    if records.is_empty() || plaintext.len().is_multiple_of(per) {
        records.push((&[], 0));
    }
    encrypt_records(
        ikm,
        &Header {
            salt,
            rs,
            keyid: keyid.to_vec(),
        },
        &records,
    )
}

/// The encrypted length of `n` plaintext bytes (for `Content-Length`).
pub fn encrypted_len(n: usize, rs: u32, keyid_len: usize) -> usize {
    let per = rs as usize - TAG - 1;
    let records = n / per + 1;
    21 + keyid_len + n + records * (TAG + 1)
}

/// Streaming decoder: push ciphertext as it arrives, take verified plaintext.
pub struct Decoder<F> {
    lookup: F,
    buf: Vec<u8>,
    state: State,
}

enum State {
    Header,
    Records {
        keys: Box<Keys>,
        rs: usize,
        seq: u64,
    },
    Done,
}

impl<F: FnMut(&[u8]) -> Option<Vec<u8>>> Decoder<F> {
    /// A decoder that asks `lookup(keyid)` for the key named in the header.
    pub fn new(lookup: F) -> Self {
        Decoder {
            lookup,
            buf: Vec::new(),
            state: State::Header,
        }
    }

    /// The key id, once the header has been read.
    pub fn started(&self) -> bool {
        !matches!(self.state, State::Header)
    }

    /// Feeds ciphertext; returns plaintext of every record now complete and
    /// verified. A record is released only when the next byte after it
    /// arrives (or at `finish`), because only then is it known whether it is
    /// the last.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EceError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Header => {
                    let Some((h, used)) = Header::parse(&self.buf)? else {
                        return Ok(out);
                    };
                    let ikm = (self.lookup)(&h.keyid).ok_or_else(|| {
                        EceError::UnknownKey(String::from_utf8_lossy(&h.keyid).into_owned())
                    })?;
                    self.buf.drain(..used);
                    self.state = State::Records {
                        keys: Box::new(Keys::derive(&ikm, &h.salt)),
                        rs: h.rs as usize,
                        seq: 0,
                    };
                }
                State::Records { keys, rs, seq } => {
                    // A full record followed by more data cannot be the last.
                    if self.buf.len() <= *rs {
                        return Ok(out);
                    }
                    let rec: Vec<u8> = self.buf.drain(..*rs).collect();
                    let plain = open(keys, *seq, &rec)?;
                    match plain.1 {
                        1 => {}
                        _ => return Err(EceError::Record(*seq)),
                    }
                    out.extend_from_slice(&plain.0);
                    *seq += 1;
                }
                State::Done => {
                    return if self.buf.is_empty() {
                        Ok(out)
                    } else {
                        Err(EceError::Trailing)
                    };
                }
            }
        }
    }

    /// Ends the stream: decrypts the final record and checks it is marked
    /// last.
    pub fn finish(&mut self) -> Result<Vec<u8>, EceError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Header => Err(EceError::Truncated),
            State::Done => Ok(Vec::new()),
            State::Records { keys, seq, .. } => {
                if self.buf.is_empty() {
                    return Err(EceError::Truncated);
                }
                let rec = std::mem::take(&mut self.buf);
                let (plain, delim) = open(&keys, seq, &rec)?;
                if delim != 2 {
                    return Err(EceError::Truncated);
                }
                Ok(plain)
            }
        }
    }
}

/// Decrypts one record and strips padding; returns the data and delimiter.
fn open(keys: &Keys, seq: u64, rec: &[u8]) -> Result<(Vec<u8>, u8), EceError> {
    if rec.len() <= TAG {
        return Err(EceError::Record(seq));
    }
    let mut p = keys
        .cipher
        .decrypt(&keys.nonce(seq), rec)
        .map_err(|_| EceError::Auth(seq))?;
    let end = p
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(EceError::Record(seq))?;
    let delim = p[end];
    if delim != 1 && delim != 2 {
        return Err(EceError::Record(seq));
    }
    p.truncate(end);
    Ok((p, delim))
}

/// Decodes a whole body at once.
pub fn decrypt(
    lookup: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    body: &[u8],
) -> Result<Vec<u8>, EceError> {
    let mut d = Decoder::new(lookup);
    let mut out = d.push(body)?;
    out.extend(d.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    const EX1: &str = "I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg";
    const EX2: &str = "uNCkWiNYzKTnBN9ji3-qWAAAABkCYTHOG8chz_gnvgOqdGYovxyjuqRyJFjEDyoF1Fvkj6hQPdPHI51OEUKEpgz3SsLWIqS_uA";

    #[test]
    fn rfc8188_section_3_1() {
        let ikm = b64("yqdlZ-tYemfogSmv7Ws5PQ");
        let salt: [u8; 16] = b64("I1BsxtFttlv3u_Oo94xnmw").try_into().unwrap();
        assert_eq!(encrypt(&ikm, salt, 4096, b"", b"I am the walrus"), b64(EX1));
        assert_eq!(
            decrypt(|_| Some(ikm.clone()), &b64(EX1)).unwrap(),
            b"I am the walrus"
        );
    }

    #[test]
    fn rfc8188_section_3_2_two_records_keyid_and_padding() {
        let ikm = b64("BO3ZVPxUlnLORbVGMpbT1Q");
        let body = b64(EX2);
        let (h, _) = Header::parse(&body).unwrap().unwrap();
        assert_eq!((h.rs, h.keyid.as_slice()), (25, &b"a1"[..]));
        // The RFC's split: 7 octets plus one octet of padding, then 8.
        let pt = b"I am the walrus";
        assert_eq!(
            encrypt_records(&ikm, &h, &[(&pt[..7], 1), (&pt[7..], 0)]),
            body
        );
        let mut asked = Vec::new();
        let out = decrypt(
            |id| {
                asked.push(id.to_vec());
                Some(ikm.clone())
            },
            &body,
        )
        .unwrap();
        assert_eq!(out, pt);
        assert_eq!(asked, vec![b"a1".to_vec()]);
    }

    #[test]
    fn streaming_decode_releases_records_as_they_arrive() {
        let ikm = [7u8; 16];
        let pt: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let ct = encrypt(&ikm, [1; 16], 1024, b"k1", &pt);
        assert_eq!(ct.len(), encrypted_len(pt.len(), 1024, 2));
        let mut d = Decoder::new(|_| Some(ikm.to_vec()));
        let mut out = Vec::new();
        let mut pushed = 0;
        for piece in ct.chunks(333) {
            out.extend(d.push(piece).unwrap());
            pushed += piece.len();
            // Every record followed by at least one more byte is released.
            let body = pushed.saturating_sub(23);
            let released_records = body.saturating_sub(1) / 1024;
            assert!(
                out.len() >= released_records * 1007,
                "{} of {pushed}",
                out.len()
            );
        }
        out.extend(d.finish().unwrap());
        assert_eq!(out, pt);
        // Exactly a multiple of the record payload still ends with a final record.
        let exact = vec![9u8; 1007 * 2];
        assert_eq!(
            decrypt(
                |_| Some(ikm.to_vec()),
                &encrypt(&ikm, [2; 16], 1024, b"", &exact)
            )
            .unwrap(),
            exact
        );
        assert_eq!(
            decrypt(
                |_| Some(ikm.to_vec()),
                &encrypt(&ikm, [2; 16], 1024, b"", b"")
            )
            .unwrap(),
            b""
        );
    }

    #[test]
    fn tampering_truncation_and_wrong_keys_are_caught() {
        let ikm = [7u8; 16];
        let pt = vec![5u8; 5000];
        let ct = encrypt(&ikm, [3; 16], 1024, b"k", &pt);
        let key = |_: &[u8]| Some(ikm.to_vec());
        let mut flipped = ct.clone();
        flipped[2000] ^= 1;
        assert!(matches!(decrypt(key, &flipped), Err(EceError::Auth(1))));
        // Cut at a record boundary: every record verifies but none is last.
        let cut = 22 + 1024 * 2;
        assert_eq!(decrypt(key, &ct[..cut]), Err(EceError::Truncated));
        assert!(decrypt(key, &ct[..ct.len() - 1]).is_err());
        assert!(matches!(
            decrypt(|_| Some(vec![8u8; 16]), &ct),
            Err(EceError::Auth(0))
        ));
        assert_eq!(
            decrypt(|_| None, &ct),
            Err(EceError::UnknownKey("k".into()))
        );
        let mut extra = ct.clone();
        extra.push(0);
        assert!(decrypt(key, &extra).is_err());
        assert_eq!(decrypt(key, &ct[..10]), Err(EceError::Truncated));
    }

    #[test]
    fn a_body_decrypts_only_under_its_own_name() {
        let key = [7u8; 16];
        let pt = vec![1u8; 3000];
        let n7 = "mlcache://o:80/live/0/7";
        let ct = encrypt(&name_key(&key, n7), [4; 16], 1024, b"k", &pt);
        assert_eq!(decrypt(|_| Some(name_key(&key, n7).to_vec()), &ct), Ok(pt));
        for other in ["mlcache://o:80/live/0/6", "mlcache://o:80/live/0/70", ""] {
            assert_eq!(
                decrypt(|_| Some(name_key(&key, other).to_vec()), &ct),
                Err(EceError::Auth(0)),
                "{other}"
            );
        }
        // Nor under the bare key, as an unbound RFC 8188 body would be.
        assert_eq!(decrypt(|_| Some(key.to_vec()), &ct), Err(EceError::Auth(0)));
        // The derivation is fixed (docs/protocol.md): HKDF-SHA-256, empty salt.
        let hk = Hkdf::<Sha256>::new(Some(&[]), &key);
        let mut want = [0u8; 16];
        hk.expand(&[NAME_INFO, n7.as_bytes()].concat(), &mut want)
            .unwrap();
        assert_eq!(name_key(&key, n7), want);
        // The test vector in docs/protocol.md §8, for other implementations.
        let k: Vec<u8> = (0..16).collect();
        let hex: String = name_key(&k, "mlcache://o.example:9100/vod/0")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "538c4bf0066e3736b14b420d699992c1");
    }

    #[test]
    fn record_size_is_bounded_before_anything_is_buffered() {
        let h = vec![0u8; 16];
        for (rs, ok) in [
            (17u32, false),
            (18, true),
            (MAX_RS, true),
            (MAX_RS + 1, false),
            (u32::MAX, false),
        ] {
            let mut b = h.clone();
            b.extend_from_slice(&rs.to_be_bytes());
            // Refused from the rs field alone, before idlen and keyid arrive.
            assert_eq!(Header::parse(&b).is_err(), !ok, "{rs}");
            b.extend_from_slice(&[1, b'k']);
            assert_eq!(Header::parse(&b).is_ok_and(|h| h.is_some()), ok, "{rs}");
            let mut d = Decoder::new(|_| Some(vec![0u8; 16]));
            assert_eq!(d.push(&b).is_err(), !ok, "{rs}");
        }
    }

    #[test]
    fn only_exactly_aes128gcm_is_accepted() {
        use http::header::CONTENT_ENCODING as CE;
        let mut h = http::HeaderMap::new();
        assert!(check_coding(&h).is_err());
        for (v, ok) in [
            ("aes128gcm", true),
            ("AES128GCM", true),
            (" aes128gcm ", true),
            ("identity", false),
            ("gzip", false),
            ("aes128gcm, identity", false),
            ("gzip, aes128gcm", false),
            ("", false),
        ] {
            h.insert(CE, http::HeaderValue::from_str(v).unwrap());
            assert_eq!(check_coding(&h).is_ok(), ok, "{v:?}");
        }
        h.insert(CE, http::HeaderValue::from_static("aes128gcm"));
        h.append(CE, http::HeaderValue::from_static("aes128gcm"));
        assert!(check_coding(&h).is_err(), "two fields");
    }
}
