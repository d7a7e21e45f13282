//! Slot fan-out: one 64 KiB chunk, written in 8 pieces, delivered to N
//! in-process viewers. Timed from the head's publication to the moment the
//! last viewer has read the last byte, so it measures waking and handing out
//! shared `Bytes`, not task spawning.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, StatusCode};
use mlcache::slot::{Head, HeadWait, Slot};

const CHUNK: usize = 64 * 1024;
const PIECES: usize = 8;

async fn fan_out(viewers: usize) -> Duration {
    let (slot, writer) = Slot::unbounded();
    let body = Bytes::from(vec![0x5a; CHUNK]);
    let mut tasks = Vec::with_capacity(viewers);
    for _ in 0..viewers {
        let mut v = slot.subscribe();
        tasks.push(tokio::spawn(async move {
            let HeadWait::Head(_) = v.head().await else {
                panic!("no head")
            };
            let mut n = 0;
            while let Some(piece) = v.next_piece().await {
                n += piece.expect("complete").len();
            }
            assert_eq!(n, CHUNK);
        }));
    }
    // Let the viewers park before the clock starts.
    tokio::task::yield_now().await;
    let start = Instant::now();
    let _ = writer.publish_head(Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        len: Some(CHUNK as u64),
    });
    for i in 0..PIECES {
        let _ = writer.push(body.slice(i * CHUNK / PIECES..(i + 1) * CHUNK / PIECES));
    }
    writer.finish();
    for t in tasks {
        t.await.expect("viewer");
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("slot_fanout_64KiB");
    for viewers in [1usize, 100, 1_000, 10_000] {
        g.throughput(Throughput::Bytes((viewers * CHUNK) as u64));
        if viewers >= 1_000 {
            g.sample_size(20);
        }
        g.bench_with_input(BenchmarkId::from_parameter(viewers), &viewers, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += fan_out(n).await;
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
