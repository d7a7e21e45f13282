//! The viewers of one process: each starts connecting on its slot of the
//! crowd's window, asks for the next chunk after the live edge it sees, and
//! reads `chunks` chunks. What they saw goes into one [`WorkerResult`],
//! histograms serialised, so a parent can add several processes' results.
//!
//! Viewer `i` of the whole crowd (`0..total`) starts at
//! `start + within × i / total`, connects to `targets[i % targets.len()]`
//! from source address `i % sources`; a worker takes `first, first + stride,
//! ...` so every process's viewers are spread over the whole window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::{Request, StatusCode};
use http_body_util::Empty;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use mlcache::protocol::now_ns;

use crate::live::viewer::{fetch, Fetched};
use crate::net::{self, Client};
use crate::report::{self, histogram};

/// What one process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The origin, to read the live edge from.
    pub origin: SocketAddr,
    pub stream: usize,
    /// Where viewers connect (relays), round-robin by viewer index.
    pub targets: Vec<SocketAddr>,
    /// The crowd's size.
    pub total: usize,
    /// This process's first viewer index and the step between its viewers.
    pub first: usize,
    pub stride: usize,
    /// When the crowd starts (Unix ns) and over how long it connects.
    pub start_ns: u64,
    pub within_ns: u64,
    /// Chunks per viewer.
    pub chunks: u64,
    pub h2: bool,
    pub per_conn: usize,
    /// Source addresses 127.0.0.1..N.
    pub sources: usize,
    /// Longest one viewer may take.
    pub viewer_timeout_ms: u64,
}

impl WorkerSpec {
    /// The viewer indexes this process drives.
    pub fn indexes(&self) -> impl Iterator<Item = usize> + '_ {
        (self.first..self.total).step_by(self.stride.max(1))
    }
}

/// What one process's viewers saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub pid: u32,
    /// This process's `Cpus_allowed_list` while it ran.
    pub cpus_allowed_list: String,
    /// Its CPU seconds.
    pub cpu_s: f64,
    pub viewers: u64,
    /// Viewers whose connection was established.
    pub connected: u64,
    /// Viewers that got their first chunk.
    pub got_first: u64,
    /// Chunks received in all.
    pub chunks: u64,
    /// "Not yet" answers (re-asked).
    pub not_yet: u64,
    /// Bytes received, per target.
    pub bytes_per_target: Vec<u64>,
    /// Errors by kind (a viewer stops at its first error).
    pub errors: BTreeMap<String, u64>,
    /// Earliest connect start and latest connect done, Unix ns.
    pub first_connect_ns: u64,
    pub last_connected_ns: u64,
    /// When the last viewer had its whole first chunk, Unix ns.
    pub last_first_chunk_ns: u64,
    /// Histograms (µs), [`report::encode`]d: connect time; connect start →
    /// last byte of the first chunk; publish → first byte and publish →
    /// last byte of every chunk.
    pub connect_us: String,
    pub first_chunk_us: String,
    pub chunk_first_byte_us: String,
    pub chunk_last_byte_us: String,
}

/// Histograms and counters while the viewers run.
struct Record {
    connect: Histogram<u64>,
    first_chunk: Histogram<u64>,
    first_byte: Histogram<u64>,
    last_byte: Histogram<u64>,
    r: WorkerResult,
}

/// Counts one error of `kind`.
fn error(rec: &Mutex<Record>, kind: &str) {
    *rec.lock().r.errors.entry(kind.to_string()).or_default() += 1;
}

/// The origin's `/live/N`.
#[derive(Deserialize)]
pub(super) struct EdgeInfo {
    pub edge: i64,
    pub cadence_ms: u64,
    pub chunk_size: usize,
}

/// Reads stream `stream`'s edge from the origin.
pub(super) async fn edge_info(origin: SocketAddr, stream: usize) -> Result<EdgeInfo, String> {
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        net::get(origin, &format!("/live/{stream}"), &origin.to_string()),
    )
    .await
    .map_err(|_| "origin did not answer in 10 s".to_string())??;
    if status != StatusCode::OK {
        return Err(format!("origin answered {status} for /live/{stream}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("bad /live/{stream}: {e}"))
}

/// One shared HTTP/2 connection, opened by the first of its viewers.
type Shared = Arc<OnceCell<Option<Client>>>;

/// Runs this process's viewers and returns their result. Bounded: every
/// viewer gives up after `viewer_timeout`.
pub async fn run_worker(spec: WorkerSpec) -> anyhow::Result<WorkerResult> {
    crate::sys::raise_fd_limit();
    let info = edge_info(spec.origin, spec.stream)
        .await
        .map_err(anyhow::Error::msg)?;
    let edge = Arc::new(AtomicI64::new(info.edge));
    // The edge, polled from the origin several times per chunk, so a viewer
    // asks for the chunk after the newest one.
    let poll = {
        let edge = edge.clone();
        let every = Duration::from_millis((info.cadence_ms / 8).max(5));
        tokio::spawn(async move {
            loop {
                if let Ok(i) = edge_info(spec.origin, spec.stream).await {
                    edge.store(i.edge, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    let rec = Arc::new(Mutex::new(Record {
        connect: histogram(),
        first_chunk: histogram(),
        first_byte: histogram(),
        last_byte: histogram(),
        r: WorkerResult {
            bytes_per_target: vec![0; spec.targets.len()],
            first_connect_ns: u64::MAX,
            ..WorkerResult::default()
        },
    }));
    let bytes: Arc<Vec<AtomicU64>> =
        Arc::new(spec.targets.iter().map(|_| AtomicU64::new(0)).collect());
    let sources = if spec.sources == 0 {
        let conns = if spec.h2 {
            spec.total.div_ceil(spec.per_conn.max(1))
        } else {
            spec.total
        };
        conns.div_ceil(net::PORTS_PER_SOURCE).max(1)
    } else {
        spec.sources
    };
    let cpu = crate::sys::own_cpu();
    let mut shared: Vec<Vec<Shared>> = spec.targets.iter().map(|_| Vec::new()).collect();
    let mut tasks = JoinSet::new();
    let n_targets = spec.targets.len().max(1);
    for (k, i) in spec.indexes().enumerate() {
        let t = i % n_targets;
        let conn = if spec.h2 {
            // This process's k-th viewer on target t shares with its neighbours.
            let slot = (k / n_targets) / spec.per_conn.max(1);
            let pool = &mut shared[t];
            if slot >= pool.len() {
                pool.push(Arc::new(OnceCell::new()));
            }
            Some(pool[slot].clone())
        } else {
            None
        };
        let start_ns =
            spec.start_ns + (spec.within_ns as u128 * i as u128 / spec.total.max(1) as u128) as u64;
        let v = Viewer {
            target: spec.targets[t],
            t,
            src: net::source(i, sources),
            start_ns,
            conn,
        };
        tasks.spawn(viewer(
            v,
            spec.clone(),
            edge.clone(),
            rec.clone(),
            bytes.clone(),
        ));
    }
    // Progress on stderr every 5 s, so a slow crowd shows where it is.
    let progress = {
        let rec = rec.clone();
        let first = spec.first;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = &rec.lock().r;
                eprintln!(
                    "[flash worker {}] connected {}, first chunk {}, chunks {}, errors {}",
                    first + 1,
                    r.connected,
                    r.got_first,
                    r.chunks,
                    r.errors.values().sum::<u64>()
                );
            }
        })
    };
    while tasks.join_next().await.is_some() {}
    poll.abort();
    progress.abort();
    let mut r = rec.lock();
    let mut out = r.r.clone();
    out.viewers = spec.indexes().count() as u64;
    out.bytes_per_target = bytes.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    out.connect_us = report::encode(&r.connect);
    out.first_chunk_us = report::encode(&r.first_chunk);
    out.chunk_first_byte_us = report::encode(&r.first_byte);
    out.chunk_last_byte_us = report::encode(&r.last_byte);
    out.pid = std::process::id();
    out.cpus_allowed_list = crate::pin::allowed_list(out.pid).unwrap_or_default();
    out.cpu_s = crate::sys::own_cpu().saturating_sub(cpu).as_secs_f64();
    if out.first_connect_ns == u64::MAX {
        out.first_connect_ns = 0;
    }
    r.r = WorkerResult::default();
    Ok(out)
}

/// Where one viewer goes and when.
struct Viewer {
    target: SocketAddr,
    t: usize,
    src: Option<std::net::IpAddr>,
    start_ns: u64,
    conn: Option<Shared>,
}

/// Sleeps until Unix time `ns`.
async fn sleep_until_ns(ns: u64) {
    let now = now_ns();
    if ns > now {
        tokio::time::sleep(Duration::from_nanos(ns - now)).await;
    }
}

/// One viewer of the crowd.
async fn viewer(
    v: Viewer,
    spec: WorkerSpec,
    edge: Arc<AtomicI64>,
    rec: Arc<Mutex<Record>>,
    bytes: Arc<Vec<AtomicU64>>,
) {
    sleep_until_ns(v.start_ns).await;
    let began = now_ns();
    let timeout = Duration::from_millis(spec.viewer_timeout_ms);
    let work = async {
        let mut client = match &v.conn {
            None => Client::open(v.target, v.src, false).await.map_err(|e| {
                // "connect: Connection refused (os error 111)" → "connect: Connection refused"
                e.split(" (os error").next().unwrap_or(&e).to_string()
            })?,
            Some(cell) => cell
                .get_or_init(|| async { Client::open(v.target, v.src, true).await.ok() })
                .await
                .as_ref()
                .and_then(|c| c.share())
                .ok_or_else(|| "h2 connect".to_string())?,
        };
        let connected = now_ns();
        {
            let mut r = rec.lock();
            report::record(&mut r.connect, (connected - began) / 1000);
            r.r.connected += 1;
            r.r.first_connect_ns = r.r.first_connect_ns.min(began);
            r.r.last_connected_ns = r.r.last_connected_ns.max(connected);
        }
        let first_seq = (edge.load(Ordering::Relaxed) + 1).max(0) as u64;
        let origin = spec.origin;
        for k in 0..spec.chunks {
            let seq = first_seq + k;
            loop {
                let req = Request::get(format!("http://{origin}/live/{}/{seq}", spec.stream))
                    .header("host", origin.to_string())
                    .body(Empty::new())
                    .expect("static request");
                match fetch(&mut client, req, seq).await? {
                    Fetched::Chunk {
                        publish_ns,
                        first_ns,
                        last_ns,
                        len,
                        ..
                    } => {
                        bytes[v.t].fetch_add(len, Ordering::Relaxed);
                        let mut r = rec.lock();
                        report::record(
                            &mut r.first_byte,
                            first_ns.saturating_sub(publish_ns) / 1000,
                        );
                        report::record(&mut r.last_byte, last_ns.saturating_sub(publish_ns) / 1000);
                        r.r.chunks += 1;
                        if k == 0 {
                            report::record(&mut r.first_chunk, (last_ns - began) / 1000);
                            r.r.got_first += 1;
                            r.r.last_first_chunk_ns = r.r.last_first_chunk_ns.max(last_ns);
                        }
                        break;
                    }
                    Fetched::NotYet => rec.lock().r.not_yet += 1,
                    Fetched::Status(s) => return Err(format!("status {}", s.as_u16())),
                }
            }
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {}
        Ok(Err(kind)) => error(&rec, &kind),
        Err(_) => error(&rec, "timeout"),
    }
}
