//! Randomised hostile input for every parser that sees bytes from the
//! network: none may panic, and each keeps its invariants. A fixed-seed
//! xorshift generator keeps failures reproducible.

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use mlcache::cache::Policy;
use mlcache::client::Name;
use mlcache::ece::{Decoder, Header};
use mlcache::key::{ChunkKey, OriginSet, RawKey};
use mlcache::relay::next_link;
use mlcache::server::{parse_range, RangeSpec};
use std::time::Duration;

const ROUNDS: usize = 20_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A string biased towards the characters parsers care about.
    fn text(&mut self, max: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789abcxyz-=,;:/.[]<>\"'@?#% _*\\\tHTTPSbytesrel=next";
        let n = self.below(max + 1);
        (0..n)
            .map(|_| ALPHABET[self.below(ALPHABET.len())] as char)
            .collect()
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn range_headers() {
    let mut r = Rng(0x1234_5678);
    for _ in 0..ROUNDS {
        let len = r.below(1000) as u64;
        let spec = format!("bytes={}", r.text(12));
        let Ok(v) = HeaderValue::from_str(&spec) else {
            continue;
        };
        if let RangeSpec::Part(s, e) = parse_range(Some(&v), len) {
            assert!(s <= e && e < len, "{spec} on {len} -> {s}-{e}");
        }
    }
}

#[test]
fn authorities_paths_and_names() {
    let mut r = Rng(0x9abc_def0);
    let set = OriginSet::parse(&["http://127.0.0.1:9100", "https://a.example"]).unwrap();
    for _ in 0..ROUNDS {
        let auth = r.text(24);
        if let Ok(o) = set.find(&auth) {
            assert!(o.port == 9100 || o.port == 443, "{auth}");
        }
        let _ = Name::parse(&format!("mlcache://{}", r.text(30)));
        let uri = match r.below(3) {
            0 => format!("/mlcache/{}", r.text(30)),
            1 => format!("http://{}/{}", r.text(12), r.text(12)),
            _ => format!("/{}", r.text(30)),
        };
        let Ok(req) = Request::get(uri.as_str())
            .header("host", "127.0.0.1:9100")
            .body(())
        else {
            continue;
        };
        if let Ok(raw) = RawKey::from_request(&req) {
            assert!(raw.path.starts_with('/'), "{uri} -> {raw:?}");
            let _ = set.resolve(&raw);
        }
    }
}

#[test]
fn link_and_cache_control_headers() {
    let mut r = Rng(0x0f0f_0f0f);
    let key = ChunkKey {
        authority: "o.example:80".into(),
        path: "/live/0/7".into(),
    };
    for _ in 0..ROUNDS {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&r.text(40)) {
            h.insert(http::header::LINK, v.clone());
            h.insert(http::header::CACHE_CONTROL, v);
        }
        if let Some(next) = next_link(&h, &key) {
            assert!(next.starts_with('/'), "{h:?} -> {next}");
        }
        let p = Policy::from_response(
            StatusCode::OK,
            &h,
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        assert!(!p.store || !p.ttl.is_zero());
    }
}

#[test]
fn encrypted_content_coding() {
    let mut r = Rng(0x5555_aaaa);
    let key = [3u8; 16];
    let good = mlcache::ece::encrypt(&key, [9; 16], 64, b"k", &[7u8; 300]);
    for _ in 0..ROUNDS / 4 {
        // Pure noise, and a valid body with random damage.
        let mut input = if r.below(2) == 0 {
            r.bytes(400)
        } else {
            good.clone()
        };
        if !input.is_empty() {
            for _ in 0..r.below(4) {
                let i = r.below(input.len());
                input[i] = r.next() as u8;
            }
            input.truncate(r.below(input.len() + 1));
        }
        let _ = Header::parse(&input);
        let mut d = Decoder::new(|_| Some(key.to_vec()));
        let mut out = 0;
        for piece in input.chunks(1 + r.below(50)) {
            match d.push(piece) {
                Ok(p) => out += p.len(),
                Err(_) => break,
            }
        }
        if let Ok(p) = d.finish() {
            out += p.len();
        }
        assert!(out <= input.len(), "more plaintext than ciphertext");
    }
}
