//! Where the live fMP4 comes from: ffmpeg spawned with a `lavfi` test
//! source, standard input, or a file/FIFO. The bytes are cut by
//! [`Fmp4Reader`] and every item goes to [`LlHead::add`]; when the input
//! ends (or is not fragmented MP4) the head end is told the feed ended.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::super::fmp4::Fmp4Reader;
use super::{Feed, LlConfig, LlHead};

/// The ffmpeg arguments for the test feed: `testsrc2` at `fps`, H.264 with a
/// keyframe at every segment start, one fragment per frame, to stdout.
pub fn lavfi_args(cfg: &LlConfig) -> Vec<String> {
    let gop = ((cfg.segment.as_secs_f64() * f64::from(cfg.fps)).round() as u64).max(1);
    let (w, h) = cfg.size;
    let src = format!("testsrc2=size={w}x{h}:rate={}", cfg.fps);
    [
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &src,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        &gop.to_string(),
        "-keyint_min",
        &gop.to_string(),
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mp4",
        "-flush_packets",
        "1",
        "-movflags",
        "empty_moov+default_base_moof+frag_every_frame",
        "pipe:1",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs the feed until it ends or `stop` is cancelled.
pub(super) async fn run(head: Arc<LlHead>, stop: CancellationToken) {
    let cfg = head.cfg().clone();
    let mut child = None;
    let input: Box<dyn AsyncRead + Unpin + Send> = match &cfg.feed {
        Feed::Lavfi => {
            let spawned = tokio::process::Command::new("ffmpeg")
                .args(lavfi_args(&cfg))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(mut c) => {
                    let out = c.stdout.take().expect("piped");
                    child = Some(c);
                    Box::new(out)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start ffmpeg for the lavfi feed");
                    head.end();
                    return;
                }
            }
        }
        Feed::Stdin => Box::new(tokio::io::stdin()),
        Feed::File(p) => match tokio::fs::File::open(p).await {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(error = %e, path = %p.display(), "cannot open the feed");
                head.end();
                return;
            }
        },
    };
    tokio::select! {
        _ = pump(&head, input) => {}
        _ = stop.cancelled() => {}
    }
    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    head.end();
}

/// Reads `input` to its end, cutting and adding items.
async fn pump(head: &LlHead, mut input: Box<dyn AsyncRead + Unpin + Send>) {
    let mut reader = Fmp4Reader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) => {
                tracing::info!("the feed ended");
                return;
            }
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "reading the feed failed");
                return;
            }
        };
        match reader.push(&buf[..n]) {
            Ok(items) => items.into_iter().for_each(|i| head.add(i)),
            Err(e) => {
                tracing::error!(error = %e, "the feed is not fragmented MP4");
                return;
            }
        }
    }
}
