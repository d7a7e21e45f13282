//! VOD load: viewers fetch chunks from a fixed catalog with Zipf popularity.
//! Reports the hit ratio (from `X-Cache`), request latency and throughput.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::net::{self, Client};
use crate::report::{self, rate, GroupRecord, Percentiles};

/// What to run: the flags of `mlcache-loadgen vod`.
#[derive(Debug, Clone, clap::Args)]
pub struct VodOpts {
    /// The relay.
    #[arg(long)]
    pub relay: SocketAddr,
    /// The origin the chunks are named on.
    #[arg(long)]
    pub origin: SocketAddr,
    /// Concurrent viewers.
    #[arg(long, default_value_t = 200)]
    pub viewers: usize,
    /// Run length.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Catalog size (`/vod/0` .. `/vod/N-1`).
    #[arg(long, default_value_t = 100)]
    pub catalog: u64,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Share HTTP/2 connections.
    #[arg(long)]
    pub h2: bool,
}

/// Results.
#[derive(Debug, Serialize)]
pub struct VodReport {
    pub viewers: usize,
    pub catalog: u64,
    pub zipf: f64,
    pub requests: u64,
    pub hits: u64,
    pub hit_ratio: f64,
    pub requests_per_sec: f64,
    pub bytes_per_sec: f64,
    pub latency_ms: Percentiles,
    pub latency_histogram_us: Vec<(u64, u64)>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Cumulative Zipf distribution over ranks 1..=n.
pub fn zipf_cdf(n: u64, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect();
    for v in &mut cdf {
        *v /= acc;
    }
    cdf
}

/// Picks a rank (0-based) for a uniform `u` in [0, 1).
pub fn pick(cdf: &[f64], u: f64) -> u64 {
    cdf.partition_point(|c| *c < u)
        .min(cdf.len().saturating_sub(1)) as u64
}

fn uniform(state: &mut u64) -> f64 {
    (mlcache::origin::xorshift64(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the VOD load.
pub async fn run(opts: VodOpts) -> anyhow::Result<VodReport> {
    crate::sys::raise_fd_limit();
    let cdf = Arc::new(zipf_cdf(opts.catalog.max(1), opts.zipf));
    let rec = Arc::new(Mutex::new(GroupRecord::default()));
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t0 = Instant::now();
    let stop = t0 + opts.duration;
    let sources = opts.viewers.div_ceil(net::PORTS_PER_SOURCE).max(1);
    let mut tasks = JoinSet::new();
    for i in 0..opts.viewers {
        let (cdf, rec, bytes, o) = (cdf.clone(), rec.clone(), bytes.clone(), opts.clone());
        tasks.spawn(async move {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut client: Option<Client> = None;
            while Instant::now() < stop {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match Client::open(o.relay, net::source(i, sources), o.h2).await {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            rec.lock().error("connect");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let k = pick(&cdf, uniform(&mut rng));
                let req = Request::get(format!("http://{}/vod/{k}", o.origin))
                    .body(Empty::new())
                    .unwrap();
                let sent = Instant::now();
                let c = client.as_mut().expect("connected");
                let result = async {
                    let resp = c.send(req).await.map_err(|_| "request failed")?;
                    let status = resp.status();
                    let hit = mlcache::protocol::CacheStatus::of(resp.headers())
                        == Some(mlcache::protocol::CacheStatus::Hit);
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|_| "body cut")?
                        .to_bytes();
                    Ok::<_, &'static str>((status, hit, body.len() as u64))
                }
                .await;
                let mut r = rec.lock();
                r.requests += 1;
                match result {
                    Ok((StatusCode::OK, hit, n)) => {
                        report::record(&mut r.latency, sent.elapsed().as_micros() as u64);
                        r.hits += hit as u64;
                        bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok((s, _, _)) => r.error(format!("status {}", s.as_u16())),
                    Err(kind) => {
                        r.error(kind);
                        client = None;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = t0.elapsed().as_secs_f64();
    let r = rec.lock();
    let ok = r.latency.len();
    Ok(VodReport {
        viewers: opts.viewers,
        catalog: opts.catalog,
        zipf: opts.zipf,
        requests: r.requests,
        hits: r.hits,
        hit_ratio: if ok > 0 {
            r.hits as f64 / ok as f64
        } else {
            0.0
        },
        requests_per_sec: r.requests as f64 / elapsed,
        bytes_per_sec: bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed,
        latency_ms: Percentiles::of(&r.latency),
        latency_histogram_us: report::buckets(&r.latency),
        errors: r.errors.clone(),
    })
}

impl VodReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        format!(
            "VOD: {} viewers, catalog {} chunks, Zipf s={}\n\
             requests {} ({:.0}/s), hit ratio {:.3}, delivered {}\n\
             latency (ms)      p50      p90      p99    p99.9      max\n\
             request      {}\n\
             errors: {:?}\n",
            self.viewers,
            self.catalog,
            self.zipf,
            self.requests,
            self.requests_per_sec,
            self.hit_ratio,
            rate(self.bytes_per_sec),
            self.latency_ms.row(),
            self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_ranks() {
        let cdf = zipf_cdf(100, 1.0);
        assert!((cdf[99] - 1.0).abs() < 1e-9);
        assert_eq!(pick(&cdf, 0.0), 0);
        assert_eq!(pick(&cdf, 0.999_999_9), 99);
        let mut rng = 42u64;
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[pick(&cdf, uniform(&mut rng)) as usize] += 1;
        }
        // Rank 1 is about twice as popular as rank 2 at s = 1.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
    }
}
