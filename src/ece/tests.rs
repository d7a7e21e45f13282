//! RFC 8188's own test vectors, streaming, tampering, the name binding and
//! the bounds on `rs` and `Content-Encoding`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::*;

/// The encrypted length of `n` plaintext bytes in records of `rs` octets
/// without padding (what [`encrypt`] produces).
fn encrypted_len(n: usize, rs: u32, keyid_len: usize) -> usize {
    let per = rs as usize - TAG - 1;
    let records = n / per + 1;
    21 + keyid_len + n + records * (TAG + 1)
}

/// Decodes a whole body at once.
fn decrypt(lookup: impl FnMut(&[u8]) -> Option<Vec<u8>>, body: &[u8]) -> Result<Vec<u8>, EceError> {
    let mut d = Decoder::new(lookup);
    let mut out = d.push(body)?;
    out.extend(d.finish()?);
    Ok(out)
}

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
