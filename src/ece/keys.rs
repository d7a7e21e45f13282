//! Content-encryption key and nonce derivation (HKDF-SHA-256, RFC 8188 §2.2
//! and §2.3), and opening one record: what the encryptor and the decoder
//! share.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

use super::{EceError, TAG};

/// The keys of one body: its CEK (as a ready cipher) and its base nonce.
pub(super) struct Keys {
    pub(super) cipher: Aes128Gcm,
    nonce: [u8; 12],
}

impl Keys {
    /// CEK and base nonce from the IKM and the header's salt.
    pub(super) fn derive(ikm: &[u8], salt: &[u8; 16]) -> Keys {
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

    /// The nonce of record `seq`: the base nonce XOR `seq`.
    pub(super) fn nonce(&self, seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = self.nonce;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n.into()
    }
}

/// Decrypts one record and strips padding; returns the data and delimiter.
pub(super) fn open(keys: &Keys, seq: u64, rec: &[u8]) -> Result<(Vec<u8>, u8), EceError> {
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
