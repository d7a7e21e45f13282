//! Randomised hostile input for every parser that sees bytes from the
//! network: none may panic, and each keeps its invariants. A fixed-seed
//! xorshift generator keeps failures reproducible.

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use mlcache::client::Name;
use mlcache::ece::{Decoder, Header};
use mlcache::key::{ChunkKey, OriginSet, RawKey};
use mlcache::policy::{self, MAX_DELTA};
use mlcache::policy::{Defaults, Policy};
use mlcache::relay::next_link;
use mlcache::server::{parse_range, RangeSpec};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROUNDS: usize = 20_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        mlcache::origin::xorshift64(&mut self.0)
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
            std::time::SystemTime::now(),
            &Defaults {
                default_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(1),
            },
        );
        assert!(!p.store || !p.ttl.is_zero());
    }
}

/// A real HTTP date near `now`, shifted either way, sometimes damaged, or noise.
fn date(r: &mut Rng, now: SystemTime) -> String {
    let shift = Duration::from_secs(r.next() % 100_000_000);
    let t = if r.below(2) == 0 {
        now + shift
    } else {
        now - shift
    };
    let mut d = httpdate::fmt_http_date(t).into_bytes();
    match r.below(3) {
        0 => {}
        1 => {
            let i = r.below(d.len());
            d[i] = b"0123456789 ,:-"[r.below(14)];
        }
        _ => d = r.text(30).into_bytes(),
    }
    String::from_utf8(d).unwrap_or_default()
}

#[test]
fn freshness_headers() {
    let mut r = Rng(0x7777_1111);
    let defaults = Defaults {
        default_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(1),
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    const DIRECTIVES: &[&str] = &[
        "max-age=",
        "s-maxage=",
        "no-store",
        "private",
        "no-cache",
        "public",
        "=",
        "\"",
        ",",
    ];
    const NUMBERS: &[&str] = &[
        "0",
        "1",
        "-1",
        "18446744073709551615",
        "99999999999999999999999",
        "2147483648",
        "",
    ];
    for _ in 0..ROUNDS {
        let mut h = HeaderMap::new();
        let mut cc = String::new();
        for _ in 0..r.below(4) {
            cc.push_str(DIRECTIVES[r.below(DIRECTIVES.len())]);
            cc.push_str(&if r.below(2) == 0 {
                NUMBERS[r.below(NUMBERS.len())].to_string()
            } else {
                r.text(8)
            });
            cc.push_str(&r.text(2));
        }
        let values = [
            (http::header::CACHE_CONTROL, cc),
            (
                http::header::AGE,
                NUMBERS[r.below(NUMBERS.len())].to_string() + &r.text(3),
            ),
            (http::header::DATE, date(&mut r, now)),
            (http::header::EXPIRES, date(&mut r, now)),
            (http::header::EXPIRES, date(&mut r, now)),
            (http::header::VARY, r.text(5)),
        ];
        for (name, v) in values {
            if r.below(4) == 0 {
                continue;
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.append(name, v);
            }
        }
        if r.below(2) == 0 {
            h.append(
                http::header::AGE,
                HeaderValue::from_static("18446744073709551615"),
            );
        }
        let status = [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::GONE][r.below(3)];
        let at = if r.below(8) == 0 {
            SystemTime::UNIX_EPOCH
        } else {
            now
        };
        let p = policy::Policy::from_response(status, &h, at, &defaults);
        assert_eq!(p.store, p.why_not.is_none(), "{h:?}");
        assert!(
            p.ttl <= MAX_DELTA && p.initial_age <= MAX_DELTA,
            "{h:?} -> {p:?}"
        );
        if p.store {
            assert!(
                p.initial_age < p.ttl && p.fresh(Duration::ZERO),
                "{h:?} -> {p:?}"
            );
        }
        assert!(!p.fresh(Duration::MAX));
        assert!(p.age_now(Duration::MAX) <= MAX_DELTA);
        let _ = policy::age_field(&h);
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
        if let Ok(Some((h, _))) = Header::parse(&input) {
            assert!(
                (mlcache::ece::MIN_RS..=mlcache::ece::MAX_RS).contains(&h.rs),
                "rs {} accepted",
                h.rs
            );
        }
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

#[test]
fn binding_names_key_indexes_and_content_codings() {
    use mlcache::manifest::{binding_name, binding_of, ChunkRef, KeyIndex, Manifest};
    let mut r = Rng(0x7777_1234);
    let live = KeyIndex::new(&Manifest::Live {
        template: "mlcache://o.example:9/live/0/{seq}".into(),
        keyid_template: "live0.{epoch}".into(),
        key_rotation: 4,
        edge: 0,
        first: 0,
        last: None,
        cadence_ms: 500,
        next: vec![],
    })
    .unwrap();
    for _ in 0..ROUNDS {
        // Half the paths start with '/', so many inputs get past the first check.
        let auth = r.text(20);
        let path = match r.below(2) {
            0 => format!("/{}", r.text(30)),
            _ => r.text(30),
        };
        if let Ok(b) = binding_name(&auth, &path) {
            // Canonical: a port, no query or fragment, and stable.
            let rest = b.strip_prefix("mlcache://").expect("prefix");
            let (a, p) = rest.split_at(rest.find('/').expect("a path"));
            assert!(
                a.rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok()),
                "{b}"
            );
            assert!(!p.contains(['?', '#']), "{b}");
            assert_eq!(
                binding_of(&b).as_deref(),
                Ok(b.as_str()),
                "{auth:?} {path:?}"
            );
        }
        let name = format!("mlcache://{}", r.text(40));
        let _ = binding_of(&name);
        // Random manifests and random names: never a panic; a live key id
        // only for a canonical sequence number.
        let template = format!("mlcache://{}{{seq}}{}", r.text(12), r.text(6));
        let m = if r.below(2) == 0 {
            Manifest::Live {
                template,
                keyid_template: r.text(8),
                key_rotation: r.next() % 5,
                edge: 0,
                first: 0,
                last: (r.below(2) == 0).then(|| r.next() % 100),
                cadence_ms: 0,
                next: vec![],
            }
        } else {
            Manifest::Vod {
                chunks: (0..r.below(4))
                    .map(|_| ChunkRef {
                        name: format!("mlcache://{}", r.text(20)),
                        keyid: r.text(6),
                    })
                    .collect(),
            }
        };
        if let Ok(i) = KeyIndex::new(&m) {
            let _ = i.keyid_for(&name);
        }
        let seq = match r.below(3) {
            0 => (r.next() % 1000).to_string(),
            1 => format!("0{}", r.next() % 1000),
            _ => r.text(6),
        };
        let probe = format!("mlcache://o.example:9/live/0/{seq}");
        if let Some(k) = live.keyid_for(&probe) {
            let seq = probe.rsplit('/').next().unwrap();
            assert_eq!(
                k,
                format!("live0.{}", seq.parse::<u64>().unwrap() / 4),
                "{probe}"
            );
        }
        let mut h = HeaderMap::new();
        for _ in 0..r.below(3) {
            let v = if r.below(3) == 0 {
                "aes128gcm".to_string()
            } else {
                r.text(14)
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.append(http::header::CONTENT_ENCODING, v);
            }
        }
        if mlcache::ece::check_coding(&h).is_ok() {
            let all: Vec<_> = h.get_all(http::header::CONTENT_ENCODING).iter().collect();
            assert_eq!(all.len(), 1, "{h:?}");
            assert!(
                all[0]
                    .to_str()
                    .unwrap()
                    .trim()
                    .eq_ignore_ascii_case("aes128gcm"),
                "{h:?}"
            );
        }
    }
}
