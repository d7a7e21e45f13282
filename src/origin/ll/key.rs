//! HLS `METHOD=AES-128` for the LL-HLS head end (`--ll-encrypt`): the seed's
//! security model in the form every HLS player understands.
//!
//! Every part and every segment is one resource encrypted whole with
//! AES-128-CBC and PKCS#7 padding (RFC 8216 §4.3.2.4 / rfc8216bis §4.4.4.4);
//! the init segment (`EXT-X-MAP`, listed before any `EXT-X-KEY`) stays clear.
//! The key of segment `M` is the key of epoch `M / rotation`, derived from a
//! per-run random master secret (HKDF-SHA256, as the seed's chunk keys); its
//! IV is `M` as a 128-bit big-endian number, written explicitly in the
//! playlist. A part inherits its parent segment's key and IV (the protocol
//! gives a part no sequence number of its own; hls.js decrypts a part with
//! its fragment's key data), so each part is encrypted separately with that
//! IV.
//!
//! Data flow: [`Keys`] lives in the `Timeline`. A closing part is sealed at
//! once with [`seal`]; a segment's fragments go through a [`CbcStream`] as
//! they arrive, so a segment is still streamed while produced (whole blocks
//! at once, the last partial block and the padding when it completes). The
//! ciphertext is made once and shared as `Bytes` by every viewer.
//!
//! The key itself is served only by the origin's HTTPS API
//! (`/keys/hls/{epoch}`, bearer token, `no-store`), never by the clear
//! listener, so relays carry ciphertext only and never see a key.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use bytes::Bytes;

/// AES block size.
pub(super) const BLOCK: usize = 16;

/// The keys of one run: a random master and the rotation.
#[derive(Clone)]
pub(super) struct Keys {
    master: [u8; 32],
    /// Segments per key.
    pub rotation: u64,
    /// `https://AUTHORITY` of the origin's API: key URIs are absolute, since
    /// the playlist reaches players through relays.
    pub base: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("rotation", &self.rotation)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from a fresh random master.
    pub(super) fn random(rotation: u64, base: String) -> Keys {
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master).expect("the OS random source");
        Keys::with_master(master, rotation, base)
    }

    /// Keys from a given master (tests).
    pub(super) fn with_master(master: [u8; 32], rotation: u64, base: String) -> Keys {
        Keys {
            master,
            rotation: rotation.max(1),
            base,
        }
    }

    /// The key epoch of segment `msn`.
    pub(super) fn epoch(&self, msn: u64) -> u64 {
        msn / self.rotation
    }

    /// The key of `epoch`.
    pub(super) fn key(&self, epoch: u64) -> [u8; 16] {
        crate::manifest::derive_key(&self.master, &format!("ll-hls.{epoch}"))
    }

    /// The key URI of `epoch` (the path the API serves).
    pub(super) fn uri(&self, epoch: u64) -> String {
        format!("{}/keys/hls/{epoch}", self.base)
    }

    /// A fresh encryptor for segment `msn` (or one of its parts).
    pub(super) fn stream(&self, msn: u64) -> CbcStream {
        CbcStream::new(&self.key(self.epoch(msn)), &iv(msn))
    }

    /// The `EXT-X-KEY` line for segment `msn`.
    pub(super) fn tag(&self, msn: u64) -> String {
        format!(
            "#EXT-X-KEY:METHOD=AES-128,URI=\"{}\",IV=0x{:032X}",
            self.uri(self.epoch(msn)),
            msn
        )
    }
}

/// The IV of segment `msn` and its parts: the sequence number, 128-bit big
/// endian (what RFC 8216 §5.2 derives when `IV` is absent; written anyway).
pub(super) fn iv(msn: u64) -> [u8; 16] {
    u128::from(msn).to_be_bytes()
}

/// AES-128-CBC over a resource that arrives in pieces: whole blocks go out
/// as soon as they are complete; [`CbcStream::finish`] pads (PKCS#7).
pub(super) struct CbcStream {
    cipher: Aes128,
    /// The last ciphertext block (the IV at first).
    chain: [u8; 16],
    /// Plaintext not yet a whole block.
    rest: Vec<u8>,
}

impl std::fmt::Debug for CbcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcStream")
            .field("pending", &self.rest.len())
            .finish_non_exhaustive()
    }
}

impl CbcStream {
    /// An encryptor with `key` and `iv`.
    pub(super) fn new(key: &[u8; 16], iv: &[u8; 16]) -> CbcStream {
        CbcStream {
            cipher: Aes128::new(key.into()),
            chain: *iv,
            rest: Vec::with_capacity(BLOCK),
        }
    }

    fn block(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let mut b = self.chain;
        for (x, p) in b.iter_mut().zip(plain) {
            *x ^= p;
        }
        let mut ga = aes::Block::from(b);
        self.cipher.encrypt_block(&mut ga);
        self.chain.copy_from_slice(&ga);
        out.extend_from_slice(&ga);
    }

    /// Encrypts what whole blocks `plain` completes.
    pub(super) fn push(&mut self, plain: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(plain.len() + BLOCK);
        let mut input = plain;
        if !self.rest.is_empty() {
            let take = (BLOCK - self.rest.len()).min(input.len());
            self.rest.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.rest.len() < BLOCK {
                return Bytes::new();
            }
            let r = std::mem::take(&mut self.rest);
            self.block(&r, &mut out);
            self.rest = r;
            self.rest.clear();
        }
        let mut chunks = input.chunks_exact(BLOCK);
        for c in &mut chunks {
            self.block(c, &mut out);
        }
        self.rest.extend_from_slice(chunks.remainder());
        Bytes::from(out)
    }

    /// The last block: the rest and PKCS#7 padding (a whole block of 16s
    /// when the plaintext was a multiple of 16).
    pub(super) fn finish(mut self) -> Bytes {
        let pad = BLOCK - self.rest.len();
        let mut last = std::mem::take(&mut self.rest);
        last.resize(BLOCK, pad as u8);
        let mut out = Vec::with_capacity(BLOCK);
        self.block(&last, &mut out);
        Bytes::from(out)
    }
}

/// Encrypts a whole resource.
pub(super) fn seal(mut s: CbcStream, plain: &[u8]) -> Bytes {
    let head = s.push(plain);
    let tail = s.finish();
    let mut v = Vec::with_capacity(head.len() + tail.len());
    v.extend_from_slice(&head);
    v.extend_from_slice(&tail);
    Bytes::from(v)
}

#[cfg(test)]
pub(super) mod tests {
    use aes::cipher::BlockDecrypt;

    use super::*;

    /// Length of `n` plaintext bytes once padded.
    pub fn sealed_len(n: usize) -> usize {
        (n / BLOCK + 1) * BLOCK
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// AES-128-CBC decryption with PKCS#7 checked (an independent path: the
    /// block cipher's decryption direction, not the encryptor run backwards).
    pub fn open(key: &[u8; 16], iv: &[u8; 16], c: &[u8]) -> Option<Vec<u8>> {
        if c.is_empty() || !c.len().is_multiple_of(BLOCK) {
            return None;
        }
        let cipher = Aes128::new(key.into());
        let mut prev = *iv;
        let mut out = Vec::with_capacity(c.len());
        for blk in c.chunks(BLOCK) {
            let mut b = aes::Block::clone_from_slice(blk);
            cipher.decrypt_block(&mut b);
            out.extend(b.iter().zip(prev).map(|(x, p)| x ^ p));
            prev.copy_from_slice(blk);
        }
        let pad = *out.last()? as usize;
        if !(1..=BLOCK).contains(&pad) || out[out.len() - pad..].iter().any(|&p| p as usize != pad)
        {
            return None;
        }
        out.truncate(out.len() - pad);
        Some(out)
    }

    /// NIST SP 800-38A F.2.1 (CBC-AES128.Encrypt), four blocks, plus the
    /// PKCS#7 block a whole-block plaintext gets.
    #[test]
    fn nist_cbc_vector() {
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let plain = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710"
        ));
        let want = hex(concat!(
            "7649abac8119b246cee98e9b12e9197d",
            "5086cb9b507219ee95db113a917678b2",
            "73bed6b8e3c1743b7116e69e22229516",
            "3ff1caa1681fac09120eca307586e1a7"
        ));
        let c = seal(CbcStream::new(&key, &iv), &plain);
        assert_eq!(&c[..64], &want[..]);
        assert_eq!(c.len(), 80, "a whole block of padding");
        assert_eq!(open(&key, &iv, &c).unwrap(), plain);
    }

    #[test]
    fn pkcs7_padding_lengths() {
        let key = [7u8; 16];
        for n in [0usize, 1, 15, 16, 17, 31, 32, 1000] {
            let plain: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let c = seal(CbcStream::new(&key, &iv(3)), &plain);
            assert_eq!(c.len(), sealed_len(n), "{n}");
            assert!(c.len() > n && c.len() - n <= BLOCK);
            assert_eq!(open(&key, &iv(3), &c).unwrap(), plain, "{n}");
            // Wrong IV: the first block is garbled.
            if n >= BLOCK {
                assert_ne!(
                    open(&key, &iv(4), &c).map(|p| p[..BLOCK].to_vec()),
                    Some(plain[..BLOCK].to_vec())
                );
            }
        }
    }

    /// Pieces of any size give the same ciphertext as the whole.
    #[test]
    fn streaming_equals_whole() {
        let key = [9u8; 16];
        let plain: Vec<u8> = (0..1234u32).map(|i| (i * 31) as u8).collect();
        let whole = seal(CbcStream::new(&key, &iv(1)), &plain);
        for step in [1usize, 5, 16, 17, 100, 600] {
            let mut s = CbcStream::new(&key, &iv(1));
            let mut got = Vec::new();
            for piece in plain.chunks(step) {
                got.extend_from_slice(&s.push(piece));
                assert_eq!(got.len() % BLOCK, 0);
            }
            got.extend_from_slice(&s.finish());
            assert_eq!(got, whole.to_vec(), "step {step}");
        }
    }

    #[test]
    fn iv_epochs_and_tags() {
        assert_eq!(iv(0), [0u8; 16]);
        let mut want = [0u8; 16];
        want[12..].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(iv(0x0102_0304), want);
        assert_eq!(iv(u64::MAX)[8..], [0xff; 8]);
        let k = Keys::with_master([1; 32], 10, "https://127.0.0.1:9100".into());
        assert_eq!((k.epoch(0), k.epoch(9), k.epoch(10)), (0, 0, 1));
        assert_eq!(k.key(0), k.key(0));
        assert_ne!(k.key(0), k.key(1));
        assert_ne!(
            k.key(0),
            Keys::with_master([2; 32], 10, String::new()).key(0),
            "the master matters"
        );
        assert_eq!(
            k.tag(12),
            "#EXT-X-KEY:METHOD=AES-128,URI=\"https://127.0.0.1:9100/keys/hls/1\",IV=0x0000000000000000000000000000000C"
        );
        assert!(
            !format!("{k:?}").contains("master"),
            "the master never logs"
        );
    }
}
