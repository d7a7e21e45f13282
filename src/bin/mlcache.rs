//! `mlcache`: the viewer client. Fetches chunks through the nearest relay,
//! decrypts and verifies them, and writes plaintext to stdout or a file.
//! Only verified plaintext is written: a chunk that is not `aes128gcm`, names
//! the wrong key id, or was made for another name is refetched from the next
//! source (see `mlcache::client`). A single chunk's key id comes from its
//! title's manifest, one path segment up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mlcache::client::{self, Client, ClientConfig, ClientError, Name};
use tokio::io::AsyncWrite;

#[derive(Parser)]
#[command(
    name = "mlcache",
    version,
    about = "mlcache viewer: fetch and decrypt chunks through the nearest cache"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch one chunk, or a whole VOD title via its manifest.
    Get {
        /// mlcache://AUTHORITY/PATH
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Follow a live stream from the live edge (or --from).
    Play {
        /// mlcache://AUTHORITY/STREAM, e.g. mlcache://127.0.0.1:9100/live/0
        name: String,
        /// First chunk to play (default: the live edge).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many chunks (default: until the stream ends).
        #[arg(long)]
        chunks: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Write plaintext here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Origin API base URL (default https://AUTHORITY).
    #[arg(long)]
    api: Option<String>,
    /// Bearer token for the origin API.
    #[arg(long, env = "MLCACHE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long = "token-file")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the origin API.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Anycast address to probe for the nearest cache.
    #[arg(long)]
    probe: Option<SocketAddr>,
    /// Probe timeout.
    #[arg(long = "probe-timeout", default_value = "300ms", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// A relay to use after the probed one (repeatable).
    #[arg(long)]
    relay: Vec<SocketAddr>,
    /// Longest one attempt at one chunk may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Common {
    /// The client settings. Files are read with `tokio::fs`: nothing blocks
    /// the runtime.
    async fn config(&self) -> anyhow::Result<ClientConfig> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => tokio::fs::read_to_string(f)
                .await
                .with_context(|| format!("reading --token-file {}", f.display()))?
                .trim()
                .to_string(),
            (None, None) => {
                anyhow::bail!("a token is needed: --token, --token-file or MLCACHE_TOKEN")
            }
        };
        let ca_pem = match &self.ca {
            Some(p) => Some(
                tokio::fs::read(p)
                    .await
                    .with_context(|| format!("reading --ca {}", p.display()))?,
            ),
            None => None,
        };
        Ok(ClientConfig {
            api: self.api.clone(),
            token,
            ca_pem,
            probe: self.probe,
            probe_timeout: self.probe_timeout,
            relays: self.relay.clone(),
            fetch_timeout: self.timeout,
        })
    }

    async fn output(&self) -> anyhow::Result<Box<dyn AsyncWrite + Unpin + Send>> {
        Ok(match &self.out {
            Some(p) => Box::new(
                tokio::fs::File::create(p)
                    .await
                    .with_context(|| format!("creating {}", p.display()))?,
            ),
            None => Box::new(tokio::io::stdout()),
        })
    }
}

fn summary(c: &Client, chunks: u64) {
    eprintln!("mlcache: {chunks} chunk(s) delivered");
    for (src, n) in c.served() {
        eprintln!("mlcache:   {n} from {src}");
    }
    for e in c.events() {
        eprintln!(
            "mlcache:   refetched {} after {} failed: {}",
            e.chunk, e.source, e.error
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mlcache::init_tracing();
    match Cli::parse().cmd {
        Cmd::Get { name, common } => {
            let name = Name::parse(&name)?;
            let client = Client::new(common.config().await?).await?;
            let mut out = common.output().await?;
            // A title has a manifest; anything else is a single chunk.
            let chunks = match client::get_title(&client, &name, &mut out).await {
                Ok(_) => client.served().values().sum(),
                Err(ClientError::NotFound(_)) => {
                    client.fetch(&name, &mut out).await?;
                    1
                }
                Err(e) => return Err(e.into()),
            };
            summary(&client, chunks);
        }
        Cmd::Play {
            name,
            from,
            chunks,
            common,
        } => {
            let name = Name::parse(&name)?;
            let client = Client::new(common.config().await?).await?;
            let mut out = common.output().await?;
            let n = client::play(&client, &name, from, chunks, &mut out).await?;
            summary(&client, n);
        }
    }
    Ok(())
}
