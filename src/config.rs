//! Relay configuration: command-line flags over an optional TOML file over
//! built-in defaults.
//!
//! [`Cli`] is what `mlcache-relay` parses; [`Config`] is the resolved result
//! the rest of the crate reads. Every limit and timeout the relay enforces is
//! a named field here, so none is a magic number in the code that uses it.
//! Sizes are human-readable (`512MiB`) and durations too (`30s`, `250ms`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;
use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse::<ByteSize>()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Command-line flags of `mlcache-relay`. Anything left out comes from
/// `--config`, then from the defaults.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mlcache-relay",
    version,
    about = "mlcache relay: one upstream fetch per chunk, streamed to every viewer"
)]
pub struct Cli {
    /// Address to serve viewers and child relays on (HTTP/1.1 and h2c).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// An origin this relay may fetch from, e.g. http://127.0.0.1:9100 (repeatable).
    #[arg(long = "allow-origin", value_name = "URL")]
    pub allow_origin: Vec<String>,
    /// A parent relay, e.g. http://10.0.0.1:8080, tried in order (repeatable).
    #[arg(long, value_name = "URL")]
    pub upstream: Vec<String>,
    /// Address for /metrics and /healthz.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Cache capacity, e.g. 512MiB.
    #[arg(long = "cache-size", value_parser = parse_size)]
    pub cache_size: Option<ByteSize>,
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This relay's id in Via headers (default: `mlcache-` and 8 random hex digits).
    #[arg(long)]
    pub id: Option<String>,
    /// Largest object the relay will buffer and cache.
    #[arg(long = "max-object-size", value_parser = parse_size)]
    pub max_object_size: Option<ByteSize>,
    /// Most downstream connections at once.
    #[arg(long = "max-connections")]
    pub max_connections: Option<usize>,
    /// Most viewers parked on one slot.
    #[arg(long = "max-viewers-per-slot")]
    pub max_viewers_per_slot: Option<usize>,
    /// Most viewers parked on all slots together.
    #[arg(long = "max-parked")]
    pub max_parked: Option<usize>,
    /// Largest request head (request line plus headers).
    #[arg(long = "max-header-size", value_parser = parse_size)]
    pub max_header_size: Option<ByteSize>,
    /// Longest a viewer waits for a response head.
    #[arg(long = "max-wait", value_parser = parse_duration)]
    pub max_wait: Option<Duration>,
    /// Longest one upstream long-poll is held before the relay gives up on it.
    #[arg(long = "upstream-hold", value_parser = parse_duration)]
    pub upstream_hold: Option<Duration>,
    /// Timeout for connecting to a parent or origin.
    #[arg(long = "connect-timeout", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Longest gap between two body pieces from upstream.
    #[arg(long = "body-idle-timeout", value_parser = parse_duration)]
    pub body_idle_timeout: Option<Duration>,
    /// Longest a write to a viewer may stall before the connection is dropped.
    #[arg(long = "send-timeout", value_parser = parse_duration)]
    pub send_timeout: Option<Duration>,
    /// Freshness of a 200 without Cache-Control.
    #[arg(long = "default-ttl", value_parser = parse_duration)]
    pub default_ttl: Option<Duration>,
    /// Freshness of a 404 without Cache-Control (negative caching).
    #[arg(long = "negative-ttl", value_parser = parse_duration)]
    pub negative_ttl: Option<Duration>,
    /// Shortest gap between two upstream polls of a chunk that is "not yet".
    #[arg(long = "repoll-interval", value_parser = parse_duration)]
    pub repoll_interval: Option<Duration>,
    /// How long in-flight responses may finish after SIGTERM.
    #[arg(long = "shutdown-grace", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Do not start the long-poll for the chunk named by Link rel=next.
    #[arg(long = "no-prefetch")]
    pub no_prefetch: bool,
    /// CA certificate (PEM) to trust for https origins (default: webpki roots).
    #[arg(long = "origin-ca", value_name = "FILE")]
    pub origin_ca: Option<PathBuf>,
    /// Unicast URL this relay gives in its probe answer (repeatable; default:
    /// the address the probe arrived on).
    #[arg(long, value_name = "URL")]
    pub advertise: Vec<String>,
    /// Bound on every chunk byte the relay holds: cache, in-flight slots,
    /// bodies still streaming after eviction (default: twice --cache-size,
    /// at least --cache-size + 256MiB).
    #[arg(long = "memory-limit", value_parser = parse_size)]
    pub memory_limit: Option<ByteSize>,
    /// Most upstream fetches in flight at once.
    #[arg(long = "max-inflight-fetches")]
    pub max_inflight_fetches: Option<usize>,
    /// Most upstream fetches in flight at once for one origin.
    #[arg(long = "max-inflight-fetches-per-origin")]
    pub max_inflight_fetches_per_origin: Option<usize>,
    /// Largest response head accepted from a parent or origin (502 beyond).
    #[arg(long = "max-upstream-head", value_parser = parse_size)]
    pub max_upstream_head: Option<ByteSize>,
    /// Longest a downstream connection may stay open without an unfinished
    /// request: silent, still sending its first request head, or idle
    /// between requests.
    #[arg(long = "idle-timeout", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// After SIGTERM, how long the viewer listener keeps serving while
    /// /healthz already answers 503, so routing can move away first.
    #[arg(long = "drain-delay", value_parser = parse_duration)]
    pub drain_delay: Option<Duration>,
    /// Interval of HTTP/2 keep-alive PINGs to downstream peers.
    #[arg(long = "h2-keepalive-interval", value_parser = parse_duration)]
    pub h2_keepalive_interval: Option<Duration>,
    /// Longest wait for a PING acknowledgement before the connection is closed.
    #[arg(long = "h2-keepalive-timeout", value_parser = parse_duration)]
    pub h2_keepalive_timeout: Option<Duration>,
    /// Period of the summary log line for refused and shed requests.
    #[arg(long = "log-interval", value_parser = parse_duration)]
    pub log_interval: Option<Duration>,
}

/// The resolved configuration. Field names are the TOML keys (kebab-case).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Downstream listen address.
    pub listen: SocketAddr,
    /// Allowed origins (URLs).
    pub allow_origin: Vec<String>,
    /// Parent relays, in order.
    pub upstream: Vec<String>,
    /// Admin listen address.
    pub admin: Option<SocketAddr>,
    /// Relay id used in Via.
    pub id: Option<String>,
    /// Cache capacity.
    pub cache_size: ByteSize,
    /// Largest bufferable object.
    pub max_object_size: ByteSize,
    /// Connection cap.
    pub max_connections: usize,
    /// Viewers per slot cap.
    pub max_viewers_per_slot: usize,
    /// Total parked viewers cap.
    pub max_parked: usize,
    /// Request head size cap.
    pub max_header_size: ByteSize,
    /// Wait for a head.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Upstream long-poll cap.
    #[serde(with = "humantime_serde")]
    pub upstream_hold: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upstream body gap cap.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Downstream write stall cap.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Freshness of a 200 without Cache-Control.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Freshness of a 404 without Cache-Control.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Pace of re-polls after "not yet".
    #[serde(with = "humantime_serde")]
    pub repoll_interval: Duration,
    /// Grace period on SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Follow Link rel=next ahead of viewers.
    pub prefetch: bool,
    /// Unicast URLs for the probe answer.
    pub advertise: Vec<String>,
    /// Trust roots for https origins.
    pub origin_ca: Option<PathBuf>,
    /// Memory budget (see [`Config::memory_limit`] for the default).
    #[serde(rename = "memory-limit")]
    pub memory_limit_bytes: Option<ByteSize>,
    /// Upstream fetches in flight cap.
    pub max_inflight_fetches: usize,
    /// Upstream fetches in flight per origin cap.
    pub max_inflight_fetches_per_origin: usize,
    /// Upstream response head cap.
    pub max_upstream_head: ByteSize,
    /// Longest a connection may stay open with no unfinished request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Serving time between SIGTERM (health check failing) and closing the
    /// viewer listener.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// HTTP/2 keep-alive PING interval.
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_interval: Duration,
    /// HTTP/2 keep-alive PING acknowledgement timeout.
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_timeout: Duration,
    /// Period of the refused/shed summary log line.
    #[serde(with = "humantime_serde")]
    pub log_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            allow_origin: Vec::new(),
            upstream: Vec::new(),
            admin: None,
            id: None,
            cache_size: ByteSize::mib(512),
            max_object_size: ByteSize::mib(64),
            max_connections: 19_000,
            max_viewers_per_slot: 50_000,
            max_parked: 100_000,
            max_header_size: ByteSize::kib(16),
            max_wait: Duration::from_secs(20),
            upstream_hold: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            body_idle_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            default_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(1),
            repoll_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(10),
            prefetch: true,
            advertise: Vec::new(),
            origin_ca: None,
            memory_limit_bytes: None,
            max_inflight_fetches: 4096,
            max_inflight_fetches_per_origin: 1024,
            max_upstream_head: ByteSize::kib(64),
            idle_timeout: Duration::from_secs(10),
            drain_delay: Duration::from_secs(5),
            h2_keepalive_interval: Duration::from_secs(20),
            h2_keepalive_timeout: Duration::from_secs(20),
            log_interval: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Resolves flags over the `--config` file over the defaults, then checks
    /// the result.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let mut c = match &cli.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        macro_rules! flag {
            ($($f:ident),*) => { $( if let Some(v) = cli.$f { c.$f = v; } )* };
        }
        flag!(
            listen,
            cache_size,
            max_object_size,
            max_connections,
            max_viewers_per_slot,
            max_parked,
            max_header_size,
            max_wait,
            upstream_hold,
            connect_timeout,
            body_idle_timeout,
            send_timeout,
            default_ttl,
            negative_ttl,
            repoll_interval,
            shutdown_grace,
            idle_timeout,
            drain_delay,
            h2_keepalive_interval,
            h2_keepalive_timeout,
            log_interval
        );
        if cli.admin.is_some() {
            c.admin = cli.admin;
        }
        if cli.id.is_some() {
            c.id = cli.id;
        }
        if !cli.allow_origin.is_empty() {
            c.allow_origin = cli.allow_origin;
        }
        if !cli.upstream.is_empty() {
            c.upstream = cli.upstream;
        }
        if cli.origin_ca.is_some() {
            c.origin_ca = cli.origin_ca;
        }
        if !cli.advertise.is_empty() {
            c.advertise = cli.advertise;
        }
        if cli.memory_limit.is_some() {
            c.memory_limit_bytes = cli.memory_limit;
        }
        if let Some(v) = cli.max_inflight_fetches {
            c.max_inflight_fetches = v;
        }
        if let Some(v) = cli.max_inflight_fetches_per_origin {
            c.max_inflight_fetches_per_origin = v;
        }
        if let Some(v) = cli.max_upstream_head {
            c.max_upstream_head = v;
        }
        if cli.no_prefetch {
            c.prefetch = false;
        }
        c.validate()?;
        Ok(c)
    }

    /// The memory budget: `--memory-limit`, or by default twice the cache
    /// size and at least the cache size plus 256 MiB, so in-flight and
    /// still-streaming bodies have room beside a full cache.
    pub fn memory_limit(&self) -> ByteSize {
        let cache = self.cache_size.as_u64();
        self.memory_limit_bytes
            .unwrap_or(ByteSize::b((cache * 2).max(cache + (256 << 20))))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.allow_origin.is_empty() {
            return bad(
                "no --allow-origin given: a relay fetches only from origins it is told to allow",
            );
        }
        if self.max_connections == 0 || self.max_viewers_per_slot == 0 || self.max_parked == 0 {
            return bad("connection and viewer limits must be at least 1");
        }
        if self.max_header_size.as_u64() < 1024 {
            return bad("max-header-size must be at least 1KiB");
        }
        if self.cache_size.as_u64() == 0 {
            return bad("cache-size must be more than 0");
        }
        if self.memory_limit() < self.cache_size {
            return bad(
                "memory-limit must be at least cache-size: the cache is part of the budget",
            );
        }
        if self.max_inflight_fetches == 0 || self.max_inflight_fetches_per_origin == 0 {
            return bad(
                "max-inflight-fetches and max-inflight-fetches-per-origin must be at least 1",
            );
        }
        if self.max_wait.is_zero() || self.upstream_hold.is_zero() || self.connect_timeout.is_zero()
        {
            return bad("max-wait, upstream-hold and connect-timeout must be more than 0");
        }
        if self.send_timeout.is_zero()
            || self.idle_timeout.is_zero()
            || self.h2_keepalive_interval.is_zero()
            || self.h2_keepalive_timeout.is_zero()
            || self.log_interval.is_zero()
        {
            return bad(
                "send-timeout, idle-timeout, h2-keepalive-* and log-interval must be more than 0",
            );
        }
        if let Some(id) = &self.id {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad("id may only hold letters, digits, '-', '_' and '.'");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = std::env::temp_dir().join(format!("mlcache-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(
            &file,
            "allow-origin = [\"http://127.0.0.1:9100\"]\ncache-size = \"1MiB\"\nmax-wait = \"5s\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "mlcache-relay",
            "--config",
            file.to_str().unwrap(),
            "--max-wait",
            "250ms",
        ]);
        let c = Config::load(cli).unwrap();
        assert_eq!(c.cache_size, ByteSize::mib(1));
        assert_eq!(c.max_wait, Duration::from_millis(250));
        assert_eq!(c.allow_origin, vec!["http://127.0.0.1:9100"]);
        assert_eq!(c.upstream_hold, Config::default().upstream_hold);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/relay.example.toml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.id.as_deref(), Some("relay-par1"));
        assert_eq!(c.repoll_interval, Duration::from_millis(50));
        assert_eq!(c.drain_delay, Duration::from_secs(5));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(Cli::try_parse_from(["r", "--cache-size", "lots"]).is_err());
        assert!(Cli::try_parse_from(["r", "--max-wait", "soon"]).is_err());
        let err = Config::load(Cli::parse_from(["r"])).unwrap_err();
        assert!(err.to_string().contains("allow-origin"));
        let cli = Cli::parse_from(["r", "--allow-origin", "http://o", "--idle-timeout", "0s"]);
        assert!(Config::load(cli)
            .unwrap_err()
            .to_string()
            .contains("idle-timeout"));
        let cli = Cli::parse_from(["r", "--allow-origin", "http://o", "--drain-delay", "0s"]);
        assert_eq!(Config::load(cli).unwrap().drain_delay, Duration::ZERO);
        let err = toml::from_str::<Config>("cache-sise = 1").unwrap_err();
        assert!(err.to_string().contains("cache-sise"));
    }
}
