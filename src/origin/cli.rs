//! The `mlcache-origin` command line: every flag, its checks, and the
//! [`OriginConfig`] it becomes.
//!
//! clap parses the flags (durations with `humantime`, sizes with
//! `bytesize`); [`OriginArgs::into_config`] checks them, makes the run-time
//! TLS PKI (writing its CA where `--ca-out` says), picks or prints the API
//! token, and reads `--live-dir` into memory.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;

use super::{Encryption, Faults, Feed, LlConfig, OriginConfig, Publish};

/// Live head end (long-poll) and VOD origin for mlcache tests and demos; with
/// --ll, also an LL-HLS (/ll/master.m3u8) and LL-DASH (/dash/manifest.mpd) head
/// end fed by ffmpeg.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "mlcache-origin", version)]
pub struct OriginArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Number of live streams (/live/0, /live/1, ...).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Chunk duration.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub cadence: Duration,
    /// Chunk size.
    #[arg(long = "chunk-size", default_value = "64KiB")]
    pub chunk_size: ByteSize,
    /// Progressive (bytes across the chunk's duration) or whole (at its end).
    #[arg(long, value_enum, default_value = "progressive")]
    pub publish: Publish,
    /// Pieces a progressive chunk is written in.
    #[arg(long, default_value_t = 8)]
    pub pieces: usize,
    /// Longest a long-poll is held before "not yet".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// How many chunks past the live edge are held rather than refused.
    #[arg(long = "max-ahead", default_value_t = 3)]
    pub max_ahead: u64,
    /// How many past chunks stay available.
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Number of VOD chunks (/vod/0 ...).
    #[arg(long = "vod-chunks", default_value_t = 100)]
    pub vod_chunks: u64,
    /// max-age of VOD chunks.
    #[arg(long = "vod-max-age", default_value = "1h", value_parser = humantime::parse_duration)]
    pub vod_max_age: Duration,
    /// Answer 404 at once for chunks that do not exist yet (no long-poll).
    #[arg(long)]
    pub plain: bool,
    /// Fault: delay every response head.
    #[arg(long = "delay-head", value_parser = humantime::parse_duration)]
    pub delay_head: Option<Duration>,
    /// Fault: cut every body after N bytes.
    #[arg(long = "abort-after")]
    pub abort_after: Option<u64>,
    /// Fault: stall every body after N bytes.
    #[arg(long = "stall-after")]
    pub stall_after: Option<u64>,
    /// Fault: answer every request with this status.
    #[arg(long)]
    pub status: Option<u16>,
    /// Fault: close every connection as soon as it is accepted.
    #[arg(long = "refuse-connections")]
    pub refuse_connections: bool,
    /// Serve chunks unencrypted (default: RFC 8188 aes128gcm). For relay load
    /// tests only: the `mlcache` viewer refuses unencrypted chunks.
    #[arg(long)]
    pub plaintext: bool,
    /// Rotate keys every K chunks.
    #[arg(long = "key-rotation", default_value_t = 10)]
    pub key_rotation: u64,
    /// RFC 8188 record size.
    #[arg(long = "record-size", default_value_t = crate::ece::DEFAULT_RS)]
    pub record_size: u32,
    /// Bearer token for the manifest and key API (default: random, printed).
    #[arg(long, env = "MLCACHE_TOKEN")]
    pub token: Option<String>,
    /// Write the run-time CA certificate (PEM) here, for clients' --ca.
    #[arg(long = "ca-out")]
    pub ca_out: Option<std::path::PathBuf>,
    /// Extra DNS name or IP for the TLS certificate (repeatable).
    #[arg(long = "tls-name")]
    pub tls_name: Vec<String>,
    /// Authority used in chunk names (default: the listen address).
    #[arg(long)]
    pub authority: Option<String>,
    /// Publish the files of this directory (sorted by name) as stream 0, then end it.
    #[arg(long = "live-dir")]
    pub live_dir: Option<std::path::PathBuf>,
    /// Run the LL-HLS / LL-DASH head end: /ll/master.m3u8 (LL-HLS) and
    /// /dash/manifest.mpd (LL-DASH, chunked CMAF) from one live fMP4 feed
    /// (--feed, default lavfi), beside the other routes.
    #[arg(long)]
    pub ll: bool,
    /// The head end's fMP4 feed (implies --ll): `lavfi` spawns ffmpeg with a
    /// testsrc2 source paced in real time; `-` reads standard input; a path
    /// reads a file or FIFO. An external feed needs a keyframe at every
    /// segment start (ffmpeg: -g = fps × segment duration, -movflags
    /// empty_moov+default_base_moof+frag_every_frame).
    #[arg(long)]
    pub feed: Option<Feed>,
    /// LL-HLS part (and LL-DASH chunk availability) duration.
    #[arg(long = "part-duration", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub part_duration: Duration,
    /// LL segment duration: a whole number of parts, starting at a keyframe.
    #[arg(long = "segment-duration", default_value = "1s", value_parser = humantime::parse_duration)]
    pub segment_duration: Duration,
    /// LL segments kept and listed (the sliding window).
    #[arg(long = "ll-window", default_value_t = 10)]
    pub ll_window: usize,
    /// Frame rate of the lavfi feed.
    #[arg(long = "ll-fps", default_value_t = 25)]
    pub ll_fps: u32,
    /// Picture size of the lavfi feed, WIDTHxHEIGHT (tests use a small one:
    /// every player window decodes it).
    #[arg(long = "ll-size", default_value = "640x360")]
    pub ll_size: String,
    /// Encrypt every LL-HLS part and segment with HLS METHOD=AES-128 (implies
    /// --ll; the init segment stays clear). The playlist's EXT-X-KEY names
    /// https://AUTHORITY/keys/hls/EPOCH, served only over HTTPS with the
    /// bearer token (--token), never cacheable: relays carry ciphertext
    /// only. LL-DASH is off (404) in this mode.
    #[arg(long = "ll-encrypt")]
    pub ll_encrypt: bool,
    /// With --ll-encrypt: a new key every N segments.
    #[arg(long = "ll-key-rotation", default_value_t = 10)]
    pub ll_key_rotation: u64,
}

impl OriginArgs {
    /// Checks the flags and turns them into a configuration.
    pub fn into_config(self) -> Result<OriginConfig, String> {
        let mut a = self;
        let live_files = match a.live_dir.take() {
            Some(d) => read_live_dir(&d).map_err(|e| format!("--live-dir {}: {e}", d.display()))?,
            None => Vec::new(),
        };
        let ca_out = a.ca_out.take();
        let mut names = std::mem::take(&mut a.tls_name);
        names.extend(["localhost".to_string(), a.listen.ip().to_string()]);
        if let Some(auth) = &a.authority {
            names.push(
                auth.rsplit_once(':')
                    .map_or(auth.as_str(), |(h, _)| h)
                    .to_string(),
            );
        }
        if a.cadence.is_zero() {
            return Err("--cadence must be more than 0".into());
        }
        if !(crate::ece::MIN_RS..=crate::ece::MAX_RS).contains(&a.record_size) {
            return Err(format!(
                "--record-size must be {} to {} (viewers refuse larger records)",
                crate::ece::MIN_RS,
                crate::ece::MAX_RS
            ));
        }
        if let Some(auth) = &a.authority {
            crate::manifest::canonical_authority(auth).map_err(|e| format!("--authority: {e}"))?;
        }
        let chunk_size = a.chunk_size.as_u64() as usize;
        if a.streams == 0 || chunk_size < 16 {
            return Err("--streams must be at least 1 and --chunk-size at least 16 bytes".into());
        }
        let ll = (a.ll || a.feed.is_some() || a.ll_encrypt)
            .then(|| ll_config(&a))
            .transpose()?;
        let pki = crate::tls::TestPki::generate(&names).map_err(|e| e.to_string())?;
        if let Some(path) = ca_out {
            std::fs::write(&path, &pki.ca_pem)
                .map_err(|e| format!("--ca-out {}: {e}", path.display()))?;
        }
        let token = a.token.take().or_else(|| {
            let mut t = [0u8; 16];
            getrandom::getrandom(&mut t).ok()?;
            let t: String = t.iter().map(|b| format!("{b:02x}")).collect();
            println!("token {t}");
            Some(t)
        });
        Ok(OriginConfig {
            listen: a.listen,
            streams: a.streams,
            cadence: Some(a.cadence),
            chunk_size,
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
                refuse: a.refuse_connections,
            },
            encryption: (!a.plaintext).then(|| Encryption::random(a.key_rotation, a.record_size)),
            tls: Some(pki.server),
            token,
            authority: a.authority,
            live_files,
            ll,
        })
    }
}

/// Checks the LL flags: a part is at least a frame; a segment is a whole
/// number of parts.
fn ll_config(a: &OriginArgs) -> Result<LlConfig, String> {
    let (part, seg) = (a.part_duration, a.segment_duration);
    if a.ll_fps == 0 || a.ll_fps > 120 {
        return Err("--ll-fps must be 1 to 120".into());
    }
    if part.as_secs_f64() * f64::from(a.ll_fps) < 0.999 {
        return Err("--part-duration must be at least one frame".into());
    }
    let n = seg.as_secs_f64() / part.as_secs_f64();
    if n < 0.999 || (n - n.round()).abs() > 0.001 {
        return Err("--segment-duration must be a whole number of --part-duration".into());
    }
    if a.ll_key_rotation == 0 {
        return Err("--ll-key-rotation must be at least 1 segment".into());
    }
    if a.ll_window < 3 {
        return Err("--ll-window must be at least 3 segments".into());
    }
    let size = a
        .ll_size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| {
            (16..=3840).contains(&w) && (16..=2160).contains(&h) && w % 2 == 0 && h % 2 == 0
        })
        .ok_or("--ll-size must be WIDTHxHEIGHT, even, 16x16 to 3840x2160")?;
    Ok(LlConfig {
        feed: a.feed.clone().unwrap_or(Feed::Lavfi),
        part,
        segment: seg,
        window: a.ll_window,
        hold: a.hold,
        fps: a.ll_fps,
        size,
        encrypt: a.ll_encrypt.then_some(a.ll_key_rotation),
    })
}

/// Reads the files of `dir`, sorted by name, as live chunk bodies.
pub fn read_live_dir(dir: &std::path::Path) -> std::io::Result<Vec<Bytes>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no files in {}", dir.display()),
        ));
    }
    paths
        .into_iter()
        .map(|p| std::fs::read(p).map(Bytes::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// Durations and sizes go through `humantime` and `bytesize` as clap
    /// value parsers, with the same spellings and defaults as before.
    #[test]
    fn flags_parse_durations_and_sizes() {
        let a = OriginArgs::try_parse_from([
            "mlcache-origin",
            "--chunk-size",
            "1MiB",
            "--cadence",
            "250ms",
            "--delay-head",
            "2s",
        ])
        .expect("valid flags");
        assert_eq!(a.chunk_size.as_u64(), 1 << 20);
        assert_eq!(a.cadence, Duration::from_millis(250));
        assert_eq!(a.delay_head, Some(Duration::from_secs(2)));
        assert_eq!(a.hold, Duration::from_secs(5));
        assert_eq!(a.vod_max_age, Duration::from_secs(3600));
        let d = OriginArgs::try_parse_from(["mlcache-origin", "--chunk-size", "65536"]).unwrap();
        assert_eq!(d.chunk_size.as_u64(), 65536);
        assert_eq!(
            OriginArgs::try_parse_from(["mlcache-origin"])
                .unwrap()
                .chunk_size
                .as_u64(),
            64 << 10
        );
        for bad in [["--cadence", "soon"], ["--chunk-size", "lots"]] {
            let err = OriginArgs::try_parse_from(["mlcache-origin", bad[0], bad[1]]).unwrap_err();
            assert!(err.to_string().contains(bad[0]), "{err}");
        }
    }

    /// The LL flags: off by default, on with --ll or --feed; a segment must
    /// be a whole number of parts.
    #[test]
    fn ll_flags() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["mlcache-origin", "--token", "t"];
            v.extend_from_slice(extra);
            OriginArgs::try_parse_from(v).unwrap().into_config()
        };
        assert!(parse(&[]).unwrap().ll.is_none());
        let ll = parse(&["--ll"]).unwrap().ll.unwrap();
        assert_eq!(ll.feed, Feed::Lavfi);
        assert_eq!(
            (ll.part, ll.segment, ll.window),
            (Duration::from_millis(200), Duration::from_secs(1), 10)
        );
        let ll = parse(&[
            "--feed",
            "-",
            "--segment-duration",
            "2s",
            "--part-duration",
            "250ms",
        ])
        .unwrap()
        .ll
        .unwrap();
        assert_eq!(ll.feed, Feed::Stdin);
        assert_eq!(ll.segment, Duration::from_secs(2));
        assert!(parse(&[
            "--ll",
            "--segment-duration",
            "1s",
            "--part-duration",
            "300ms"
        ])
        .is_err());
        assert!(parse(&["--ll", "--part-duration", "10ms"]).is_err());
        assert!(parse(&["--ll", "--ll-window", "1"]).is_err());
        assert_eq!(parse(&["--ll"]).unwrap().ll.unwrap().encrypt, None);
        let ll = parse(&["--ll-encrypt"]).unwrap().ll.unwrap();
        assert_eq!(ll.encrypt, Some(10));
        let ll = parse(&["--ll-encrypt", "--ll-key-rotation", "3"])
            .unwrap()
            .ll
            .unwrap();
        assert_eq!(ll.encrypt, Some(3));
        assert!(parse(&["--ll-encrypt", "--ll-key-rotation", "0"]).is_err());
    }
}
