//! Encryption: plaintext in, header plus records out. The origin uses
//! [`encrypt`] for every chunk; [`encrypt_records`] lets the caller choose
//! the split and the padding (the RFC's own examples need that).

use aes_gcm::aead::Aead;

use super::keys::Keys;
use super::{Header, MAX_RS, MIN_RS, TAG};

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
