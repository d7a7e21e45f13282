//! A fleet of relays on loopback: a hashed mid tier (`--parent-select
//! hash`) and deep trees. Every viewer checks each chunk's exact bytes (the
//! origin runs `--plaintext`, so a body is `chunk_bytes(stream, seq, size,
//! publish time)` and the publish time is its first 8 bytes), and the
//! origin's `/stats` counts how often each chunk was fetched from it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mlcache::upstream::{parent_order, ParentSelect};
use parking_lot::Mutex;

const CHUNK: usize = 2048;
const CADENCE: &str = "200ms";

/// `mlcache-origin --streams N` with small chunks on a quick clock.
fn origin(streams: usize) -> TestProcess {
    TestProcess::origin(&[
        "--streams",
        &streams.to_string(),
        "--cadence",
        CADENCE,
        "--chunk-size",
        "2KiB",
        "--hold",
        "10s",
        "--window",
        "600",
    ])
}

/// The origin's per-path request counts.
async fn origin_counts(origin: SocketAddr) -> HashMap<String, u64> {
    let got = h1(origin, path_only("/stats"))
        .await
        .expect("origin /stats");
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    serde_json::from_value(v["requests"].clone()).unwrap()
}

/// The live edge of `stream`.
async fn live_edge(origin: SocketAddr, stream: usize) -> u64 {
    let got = h1(origin, path_only(&format!("/live/{stream}")))
        .await
        .expect("edge info");
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    v["edge"].as_i64().unwrap().max(0) as u64
}

fn path_only(p: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(p)
        .header("host", "origin")
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// Whether `body` is exactly chunk `seq` of `stream`.
fn exact(stream: usize, seq: u64, body: &[u8]) -> bool {
    if body.len() != CHUNK {
        return false;
    }
    let ns = u64::from_be_bytes(body[..8].try_into().unwrap());
    mlcache::origin::chunk_bytes(stream as u64, seq, CHUNK, ns).as_ref() == body
}

/// What one viewer saw of one chunk.
#[derive(Debug, Clone)]
struct Seen {
    /// The relay ids in the response's Via, origin side first.
    via: Vec<String>,
    /// Failed attempts before the exact chunk arrived.
    retries: u32,
    /// Arrival time.
    at: Instant,
}

/// Every viewer's record: (relay index, stream, seq) → what it saw.
type Log = Arc<Mutex<BTreeMap<(usize, usize, u64), Seen>>>;

/// A viewer on `relay` playing `stream` from `first` while `seq < *last`
/// (read each time: the test extends it), h1 or h2 by `h2`. A failed or
/// inexact fetch is retried (a player would), at most 50 times per chunk.
#[allow(clippy::too_many_arguments)]
fn viewer(
    relay: SocketAddr,
    index: usize,
    origin: SocketAddr,
    stream: usize,
    first: u64,
    last: Arc<Mutex<u64>>,
    use_h2: bool,
    log: Log,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let mut seq = first;
        while seq < *last.lock() {
            let mut retries = 0;
            loop {
                let req = proxy_get(origin, &format!("/live/{stream}/{seq}"));
                let got = if use_h2 {
                    h2(relay, req).await
                } else {
                    h1(relay, req).await
                };
                let ok = match &got {
                    Ok(g) => {
                        g.status == 200 && g.body.as_ref().is_ok_and(|b| exact(stream, seq, b))
                    }
                    Err(_) => false,
                };
                if ok {
                    let g = got.unwrap();
                    let via =
                        mlcache::protocol::via_ids(g.headers.get_all(http::header::VIA).iter())
                            .map(str::to_string)
                            .collect();
                    log.lock().insert(
                        (index, stream, seq),
                        Seen {
                            via,
                            retries,
                            at: Instant::now(),
                        },
                    );
                    break;
                }
                retries += 1;
                if retries > 50 {
                    return Err(format!(
                        "relay {index} stream {stream} chunk {seq}: gave up: {got:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seq += 1;
        }
        Ok(())
    })
}

/// A mid relay process with id `mid-{n}` that may fetch from `origin`.
fn mid(n: usize, origin: SocketAddr) -> TestProcess {
    TestProcess::relay(&[
        "--allow-origin",
        &format!("http://{origin}"),
        "--id",
        &format!("mid-{n}"),
    ])
}

/// For each stream, the mids in hash order (indices into `urls`).
fn hash_orders(urls: &[String], origin: SocketAddr, streams: usize) -> Vec<Vec<usize>> {
    (0..streams)
        .map(|s| {
            let key = mlcache::key::ChunkKey {
                authority: origin.to_string(),
                path: format!("/live/{s}/0"),
            };
            parent_order(ParentSelect::Hash, urls, &key)
        })
        .collect()
}

/// Four mids (each allowed the origin), eight edges with `--upstream` all
/// four and `--parent-select hash`, eight live streams, a viewer on every
/// edge for every stream. Every chunk comes from the origin exactly once,
/// each stream's chunks through exactly one mid (its first in hash order),
/// 1-4 streams per mid; then one mid is SIGKILLed: only its streams move, to
/// their second mid in hash order, and every viewer still gets every chunk,
/// exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_mid_tier_splits_streams_and_survives_losing_a_mid() {
    const STREAMS: usize = 8;
    const EDGES: usize = 8;
    let origin_p = origin(STREAMS);
    let origin = origin_p.addr;

    // The split depends on the mids' URLs, i.e. on their ephemeral ports.
    // Start mids until some four of them split the eight streams 1-4 each
    // (a random port set does so about two times in three), and use those.
    let mut pool: Vec<TestProcess> = Vec::new();
    let chosen: Vec<usize> = 'pick: loop {
        assert!(
            pool.len() < 12,
            "no balanced four among {} mids",
            pool.len()
        );
        pool.push(mid(pool.len(), origin));
        let n = pool.len();
        if n < 4 {
            continue;
        }
        for a in 0..n {
            for b in a + 1..n {
                for c in b + 1..n {
                    for d in c + 1..n {
                        let set = [a, b, c, d];
                        let urls: Vec<String> = set
                            .iter()
                            .map(|&i| format!("http://{}", pool[i].addr))
                            .collect();
                        let mut per = [0; 4];
                        for o in hash_orders(&urls, origin, STREAMS) {
                            per[o[0]] += 1;
                        }
                        if per.iter().all(|&c| (1..=4).contains(&c)) {
                            break 'pick set.to_vec();
                        }
                    }
                }
            }
        }
    };
    let mut mids: Vec<TestProcess> = Vec::new();
    let mut ids = Vec::new();
    for (i, p) in pool.into_iter().enumerate() {
        if chosen.contains(&i) {
            mids.push(p);
            ids.push(format!("mid-{i}"));
        } // the others are killed on drop
    }
    let urls: Vec<String> = mids.iter().map(|m| format!("http://{}", m.addr)).collect();
    let orders = hash_orders(&urls, origin, STREAMS);

    let mut edges = Vec::new();
    for e in 0..EDGES {
        let mut cfg = relay_config(&format!("http://{origin}"));
        cfg.upstream = urls.clone();
        cfg.parent_select = ParentSelect::Hash;
        cfg.id = Some(format!("edge-{e}"));
        edges.push(relay(cfg).await);
    }

    let first = (0..STREAMS).map(|_| 0).collect::<Vec<u64>>();
    let mut first = first;
    for (s, f) in first.iter_mut().enumerate() {
        *f = live_edge(origin, s).await + 1;
    }
    let last: Vec<Arc<Mutex<u64>>> = first.iter().map(|f| Arc::new(Mutex::new(f + 18))).collect();
    let log: Log = Arc::default();
    let mut viewers = Vec::new();
    for (e, edge) in edges.iter().enumerate() {
        for s in 0..STREAMS {
            viewers.push(viewer(
                edge.addr,
                e,
                origin,
                s,
                first[s],
                last[s].clone(),
                (e + s) % 2 == 1,
                log.clone(),
            ));
        }
    }
    // Phase 1: six chunks per stream on every edge.
    let want1 = EDGES * STREAMS * 6;
    let t = Instant::now();
    let phase1 = || {
        log.lock()
            .keys()
            .filter(|(_, s, q)| *q < first[*s] + 6)
            .count()
    };
    while phase1() < want1 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "phase 1: {} of {want1}",
            phase1()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = origin_counts(origin).await;
    let mut per_mid = [0usize; 4];
    for s in 0..STREAMS {
        let want_mid = &ids[orders[s][0]];
        per_mid[orders[s][0]] += 1;
        for q in first[s]..first[s] + 6 {
            let path = format!("/live/{s}/{q}");
            assert_eq!(
                counts.get(&path),
                Some(&1),
                "{path} from the origin once: {counts:?}"
            );
            for e in 0..EDGES {
                let seen = &log.lock()[&(e, s, q)];
                assert_eq!(
                    seen.via.first(),
                    Some(want_mid),
                    "stream {s} via its hash mid: {seen:?}"
                );
                assert_eq!(seen.retries, 0, "no errors before the kill: {seen:?}");
            }
        }
    }
    eprintln!("streams per mid: {per_mid:?} (ids {ids:?})");
    assert!(per_mid.iter().all(|&c| (1..=4).contains(&c)));

    // Phase 2: SIGKILL the mid with the most streams while the viewers go
    // on to chunk 18.
    let victim = (0..4).max_by_key(|&m| per_mid[m]).unwrap();
    let killed_at: Vec<u64> = {
        let l = log.lock();
        (0..STREAMS)
            .map(|s| {
                (0..EDGES)
                    .filter_map(|e| {
                        l.range((e, s, 0)..(e, s, u64::MAX))
                            .next_back()
                            .map(|(k, _)| k.2)
                    })
                    .max()
                    .unwrap()
            })
            .collect()
    };
    mids[victim].kill();
    eprintln!("killed {} ({})", ids[victim], urls[victim]);
    for v in viewers {
        v.await.unwrap().unwrap();
    }
    let counts = origin_counts(origin).await;
    let l = log.lock();
    let mut retries = 0;
    for s in 0..STREAMS {
        let moved = orders[s][0] == victim;
        for q in first[s]..first[s] + 18 {
            let path = format!("/live/{s}/{q}");
            let n = counts.get(&path).copied().unwrap_or(0);
            // The chunks in flight on the killed mid are fetched again by
            // the next one; every other chunk exactly once.
            let near_kill = moved && q >= killed_at[s].saturating_sub(1) && q <= killed_at[s] + 4;
            if near_kill {
                assert!((1..=2).contains(&n), "{path}: {n} origin fetches");
            } else {
                assert_eq!(n, 1, "{path}: from the origin once (moved: {moved})");
            }
            for e in 0..EDGES {
                let seen = l
                    .get(&(e, s, q))
                    .unwrap_or_else(|| panic!("edge {e} stream {s} chunk {q} lost"));
                retries += seen.retries;
                if q > killed_at[s] + 4 {
                    let want = if moved {
                        &ids[orders[s][1]]
                    } else {
                        &ids[orders[s][0]]
                    };
                    assert_eq!(
                        seen.via.first(),
                        Some(want),
                        "stream {s} chunk {q} (moved: {moved})"
                    );
                }
            }
        }
    }
    eprintln!(
        "after the kill: 0 chunks lost, {retries} viewer retries, {} chunks checked",
        l.len()
    );
}

/// Starts a tree of in-process relays: `parents[i]` is the index of relay
/// `i`'s parent (`None`: it fetches from the origin), parents first. Puts a
/// viewer on the origin itself (level 0) and two (h1 and h2) on every relay
/// for `chunks` chunks of stream 0; checks every chunk exact and fetched from
/// the origin once; returns the median added delay of each level over the
/// one above (complete chunk in hand, relay viewers vs the level above).
async fn tree(parents: &[Option<usize>], chunks: u64) -> Vec<Duration> {
    let origin_p = origin(1);
    let origin = origin_p.addr;
    let mut relays: Vec<mlcache::Running> = Vec::new();
    let mut level = vec![0usize; parents.len() + 1]; // index 0: the origin
    for (i, p) in parents.iter().enumerate() {
        let mut cfg = relay_config(&format!("http://{origin}"));
        cfg.id = Some(format!("r{i}"));
        if let Some(p) = p {
            cfg.upstream = vec![format!("http://{}", relays[*p].addr)];
            level[i + 1] = level[*p + 1] + 1;
        } else {
            level[i + 1] = 1;
        }
        relays.push(relay(cfg).await);
    }
    let first = live_edge(origin, 0).await + 1;
    let last = Arc::new(Mutex::new(first + chunks));
    let log: Log = Arc::default();
    // Viewer "relay" 0 is the origin itself (plain path requests).
    let mut tasks = vec![tokio::spawn({
        let (log, last) = (log.clone(), last.clone());
        async move {
            let end = *last.lock();
            for q in first..end {
                // `?control`: the origin counts by path and query, so this
                // viewer's requests are told from the tree's.
                let got = h1(origin, path_only(&format!("/live/0/{q}?control"))).await?;
                if !(got.status == 200 && got.body.as_ref().is_ok_and(|b| exact(0, q, b))) {
                    return Err(format!("origin chunk {q}: {got:?}"));
                }
                let seen = Seen {
                    via: vec![],
                    retries: 0,
                    at: Instant::now(),
                };
                log.lock().insert((0, 0, q), seen);
            }
            Ok(())
        }
    })];
    for (i, r) in relays.iter().enumerate() {
        for use_h2 in [false, true] {
            // Two viewers per relay: h2 ones are logged under a second index.
            let index = (i + 1) * 2 + use_h2 as usize;
            tasks.push(viewer(
                r.addr,
                index,
                origin,
                0,
                first,
                last.clone(),
                use_h2,
                log.clone(),
            ));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let counts = origin_counts(origin).await;
    let l = log.lock();
    for q in first..first + chunks {
        assert_eq!(
            counts.get(&format!("/live/0/{q}")),
            Some(&1),
            "chunk {q}: origin requests per chunk must be 1"
        );
        for (k, s) in l.range((2, 0, q)..).filter(|(k, _)| k.2 == q) {
            assert_eq!(s.retries, 0, "viewer {k:?} had errors");
        }
    }
    // Per level: median over chunks of (latest arrival on the level -
    // latest arrival on the level above).
    let depth = *level.iter().max().unwrap();
    let at = |lv: usize, q: u64| -> Instant {
        l.iter()
            .filter(|(k, _)| k.2 == q && level[k.0 / 2] == lv && (lv == 0) == (k.0 == 0))
            .map(|(_, s)| s.at)
            .max()
            .unwrap()
    };
    (1..=depth)
        .map(|lv| {
            let mut d: Vec<Duration> = (first..first + chunks)
                .map(|q| at(lv, q).saturating_duration_since(at(lv - 1, q)))
                .collect();
            d.sort();
            d[d.len() / 2]
        })
        .collect()
}

/// origin → r0 → r1 → r2 → r3, viewers on the origin and every relay:
/// origin requests per chunk 1.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_four_chain_fetches_each_chunk_once() {
    let delays = tree(&[None, Some(0), Some(1), Some(2)], 8).await;
    eprintln!("chain of 4: added delay per level (median, complete chunk): {delays:?}");
}

/// origin → 1 → 3 → 9, viewers on the origin and every relay: origin
/// requests per chunk 1.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_three_nine_tree_fetches_each_chunk_once() {
    let mut parents = vec![None, Some(0), Some(0), Some(0)];
    parents.extend((0..9).map(|i| Some(1 + i / 3)));
    let delays = tree(&parents, 8).await;
    eprintln!("1+3+9 tree: added delay per level (median, complete chunk): {delays:?}");
}
