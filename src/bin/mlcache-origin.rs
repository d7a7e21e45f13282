//! `mlcache-origin`: the live head end and VOD origin simulator.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use mlcache::origin::{Faults, OriginConfig, Publish};

fn parse_size(s: &str) -> Result<usize, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64() as usize)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Live head end (long-poll) and VOD origin for mlcache tests and demos.
#[derive(Parser, Debug)]
#[command(name = "mlcache-origin", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Number of live streams (/live/0, /live/1, ...).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Chunk duration.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    cadence: Duration,
    /// Chunk size.
    #[arg(long = "chunk-size", default_value = "64KiB", value_parser = parse_size)]
    chunk_size: usize,
    /// Progressive (bytes across the chunk's duration) or whole (at its end).
    #[arg(long, value_enum, default_value = "progressive")]
    publish: Publish,
    /// Pieces a progressive chunk is written in.
    #[arg(long, default_value_t = 8)]
    pieces: usize,
    /// Longest a long-poll is held before "not yet".
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// How many chunks past the live edge are held rather than refused.
    #[arg(long = "max-ahead", default_value_t = 3)]
    max_ahead: u64,
    /// How many past chunks stay available.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// Number of VOD chunks (/vod/0 ...).
    #[arg(long = "vod-chunks", default_value_t = 100)]
    vod_chunks: u64,
    /// max-age of VOD chunks.
    #[arg(long = "vod-max-age", default_value = "1h", value_parser = parse_duration)]
    vod_max_age: Duration,
    /// Answer 404 at once for chunks that do not exist yet (no long-poll).
    #[arg(long)]
    plain: bool,
    /// Fault: delay every response head.
    #[arg(long = "delay-head", value_parser = parse_duration)]
    delay_head: Option<Duration>,
    /// Fault: cut every body after N bytes.
    #[arg(long = "abort-after")]
    abort_after: Option<u64>,
    /// Fault: stall every body after N bytes.
    #[arg(long = "stall-after")]
    stall_after: Option<u64>,
    /// Fault: answer every request with this status.
    #[arg(long)]
    status: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    anyhow::ensure!(!a.cadence.is_zero(), "--cadence must be more than 0");
    anyhow::ensure!(
        a.streams > 0 && a.chunk_size >= 16,
        "--streams must be ≥ 1 and --chunk-size ≥ 16 bytes"
    );
    let cfg = OriginConfig {
        listen: a.listen,
        streams: a.streams,
        cadence: Some(a.cadence),
        chunk_size: a.chunk_size,
        publish: a.publish,
        pieces: a.pieces.max(1),
        hold: a.hold,
        max_ahead: a.max_ahead,
        window: a.window.max(1),
        vod_chunks: a.vod_chunks,
        vod_max_age: a.vod_max_age,
        plain: a.plain,
        faults: Faults {
            delay_head: a.delay_head,
            abort_after: a.abort_after,
            stall_after: a.stall_after,
            status: a.status,
            cache_control: None,
        },
    };
    let origin = mlcache::origin::start(cfg).await?;
    println!("listening {}", origin.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    origin.shutdown.cancel();
    Ok(())
}
