//! The order in which a fetch asks the parents: `--parent-select`.
//!
//! `ordered` asks them as listed. `hash` uses rendezvous (highest random
//! weight) hashing on the key's *stream*: its origin and its path up to and
//! including the last `/` (the query left out), so one stream's chunks, and
//! the `Link: rel=next` prefetch of its next chunk, all go to the same
//! parent, and each parent of a mid tier caches only its share of the
//! streams. Every parent gets a score `H(parent URL, stream)`; the fetch
//! asks them by falling score, so when the first is down the next in *that
//! stream's* order takes over, and removing one parent moves only the
//! streams it ranked first (minimal disruption: no other stream's first
//! choice changes).
//!
//! The hash is SHA-256 (first 8 bytes of the digest): fixed by its
//! specification, so every relay of a fleet, whatever its build or Rust
//! version, ranks the parents the same way (std's `DefaultHasher` promises
//! no such thing); already a dependency (`sha2`); and its cost — a few
//! hundred nanoseconds per parent per upstream fetch, not per viewer or per
//! byte — is nothing next to the fetch itself.

use sha2::{Digest, Sha256};

use crate::key::ChunkKey;

/// How a relay orders its parents for a fetch.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ParentSelect {
    /// As listed in `--upstream`: the first parent takes every miss.
    #[default]
    Ordered,
    /// Rendezvous hashing on the stream (the key's path up to its last `/`).
    Hash,
}

/// The stream a key belongs to: its origin and its path up to and including
/// the last `/` (ignoring any query).
pub fn stream_of(key: &ChunkKey) -> (&str, &str) {
    let path = key.path.split('?').next().unwrap_or(&key.path);
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => path,
    };
    (&key.authority, dir)
}

/// The rendezvous score of `parent` (its configured URL) for `stream`.
pub fn score(parent: &str, (authority, dir): (&str, &str)) -> u64 {
    let mut h = Sha256::new();
    // Lengths first, so ("ab", "c") and ("a", "bc") differ.
    for part in [parent, authority, dir] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// The order in which to ask `parents` (their URLs) for `key`: indices into
/// `parents`.
pub fn order<S: AsRef<str>>(select: ParentSelect, parents: &[S], key: &ChunkKey) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..parents.len()).collect();
    if select == ParentSelect::Hash && parents.len() > 1 {
        let stream = stream_of(key);
        let mut scored: Vec<(u64, usize)> = idx
            .iter()
            .map(|&i| (score(parents[i].as_ref(), stream), i))
            .collect();
        // Highest score first; ties (astronomically unlikely) by position.
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        idx = scored.into_iter().map(|(_, i)| i).collect();
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> ChunkKey {
        ChunkKey {
            authority: "origin.example:80".into(),
            path: path.into(),
        }
    }

    const MIDS: [&str; 4] = [
        "http://10.0.1.1:8080",
        "http://10.0.1.2:8080",
        "http://10.0.1.3:8080",
        "http://10.0.1.4:8080",
    ];

    #[test]
    fn ordered_keeps_the_list() {
        assert_eq!(
            order(ParentSelect::Ordered, &MIDS, &key("/live/a/1.m4s")),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn one_stream_one_order() {
        let a = order(ParentSelect::Hash, &MIDS, &key("/live/a/1.m4s"));
        for p in ["/live/a/2.m4s", "/live/a/999.m4s?v=2", "/live/a/"] {
            assert_eq!(order(ParentSelect::Hash, &MIDS, &key(p)), a, "{p}");
        }
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3], "a permutation of the parents");
    }

    #[test]
    fn the_score_is_stable_across_builds() {
        // SHA-256 of the length-prefixed parts (checked with Python's
        // hashlib). A fixed value: if this changes, relays of two versions would split
        // the streams differently. Never update it casually.
        assert_eq!(
            score("http://10.0.1.1:8080", ("origin.example:80", "/live/a/")),
            score("http://10.0.1.1:8080", ("origin.example:80", "/live/a/"))
        );
        let s = score("p", ("a", "/"));
        assert_eq!(s, 0x9933_9520_33d8_9531, "got {s:#x}");
    }

    #[test]
    fn streams_spread_evenly() {
        let mut first = [0usize; 4];
        let n = 4000;
        for s in 0..n {
            let o = order(
                ParentSelect::Hash,
                &MIDS,
                &key(&format!("/live/s{s}/0.m4s")),
            );
            first[o[0]] += 1;
        }
        for (i, c) in first.iter().enumerate() {
            // Expect 1000 each; 4 sigma of a binomial(4000, 1/4) is ~110.
            assert!(
                (880..=1120).contains(c),
                "parent {i} got {c} of {n}: {first:?}"
            );
        }
    }

    #[test]
    fn removing_a_parent_moves_only_its_streams() {
        let three = [MIDS[0], MIDS[1], MIDS[3]]; // MIDS[2] removed
        let mut moved = 0;
        for s in 0..2000 {
            let k = key(&format!("/live/s{s}/0.m4s"));
            let before = order(ParentSelect::Hash, &MIDS, &k);
            let after = order(ParentSelect::Hash, &three, &k);
            let after_url = three[after[0]];
            if before[0] == 2 {
                moved += 1;
                // It goes to its second choice in the old order.
                assert_eq!(after_url, MIDS[before[1]], "stream s{s}");
            } else {
                assert_eq!(after_url, MIDS[before[0]], "stream s{s} must not move");
            }
            // The survivors keep their relative order.
            let kept: Vec<&str> = before
                .iter()
                .filter(|&&i| i != 2)
                .map(|&i| MIDS[i])
                .collect();
            let now: Vec<&str> = after.iter().map(|&i| three[i]).collect();
            assert_eq!(kept, now);
        }
        assert!(
            (380..=620).contains(&moved),
            "about a quarter moved: {moved}"
        );
    }
}
