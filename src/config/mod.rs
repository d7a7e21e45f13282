//! Relay configuration: one struct, [`Config`], whose every field is a
//! setting. The field's doc comment is its `--help` text; its name is the flag
//! (`--max-wait`), the TOML key (`max-wait`) and, upper-cased, the environment
//! variable (`MLCACHE_MAX_WAIT`); its `default_value` is the one default.
//!
//! Data flow: [`Cli`] holds the parsed command line. [`Config::load`] starts
//! from the `--config` TOML file (serde; a key it leaves out takes the
//! default) or from the defaults, then lets clap write over it only the values
//! that were given on the command line or in the environment, so the order is
//! flags, then `MLCACHE_*` variables, then the file, then the defaults. A
//! flag's default never overwrites the file: clap's [`ValueSource`] tells a
//! default from a given value. Sizes are human-readable (`512MiB`) and
//! durations too (`30s`, `250ms`).
//!
//! Why one flat struct and not `#[serde(flatten)]` groups: serde cannot deny
//! unknown keys through `flatten`, and the TOML keys stay flat; the groups are
//! `--help` headings instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Serialize};

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
    /// A flag or environment variable could not be applied.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

const NET: &str = "Network";
const CACHE: &str = "Cache and memory";
const LIMITS: &str = "Limits";
const TIMEOUTS: &str = "Timeouts";
const DRAIN: &str = "Connections and shutdown";

/// Every setting of a relay. Each field is a flag, a TOML key and an
/// `MLCACHE_*` environment variable (see the module doc).
#[derive(Debug, Clone, Args, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Address to serve viewers and child relays on (HTTP/1.1 and h2c on one
    /// port).
    #[arg(long, env = "MLCACHE_LISTEN", default_value = "127.0.0.1:8080", help_heading = NET)]
    pub listen: SocketAddr,
    /// An origin this relay may fetch from, and with which scheme, e.g.
    /// http://127.0.0.1:9100 (repeatable; comma-separated in the environment).
    /// Required: a relay is never an open proxy.
    #[arg(long, env = "MLCACHE_ALLOW_ORIGIN", value_name = "URL", value_delimiter = ',', help_heading = NET)]
    pub allow_origin: Vec<String>,
    /// A parent relay, tried in order: http://HOST:PORT, https://HOST:PORT
    /// (h2 over TLS, see --upstream-ca), or probe:IP:PORT for
    /// whichever relay answers the anycast probe (repeatable).
    #[arg(long, env = "MLCACHE_UPSTREAM", value_name = "URL", value_delimiter = ',', help_heading = NET)]
    pub upstream: Vec<String>,
    /// How the parents are ordered for a fetch: `ordered` (as listed: the
    /// first takes every miss) or `hash` (rendezvous hash of the stream, the
    /// key's path up to its last `/`: each parent of a mid tier takes its
    /// share of the streams, the next in hash order when it is down).
    #[arg(long, env = "MLCACHE_PARENT_SELECT", value_enum, default_value = "ordered", help_heading = NET)]
    pub parent_select: crate::upstream::ParentSelect,
    /// Address for /metrics, /healthz, /status.json and the status page at
    /// / (default: off).
    #[arg(long, env = "MLCACHE_ADMIN", help_heading = NET)]
    pub admin: Option<SocketAddr>,
    /// This relay's id in Via headers, used for loop detection (default:
    /// `mlcache-` and 8 random hex digits).
    #[arg(long, env = "MLCACHE_ID", help_heading = NET)]
    pub id: Option<String>,
    /// Cache capacity, counting each entry's overhead, e.g. 512MiB.
    #[arg(long, env = "MLCACHE_CACHE_SIZE", default_value = "512MiB", help_heading = CACHE)]
    pub cache_size: ByteSize,
    /// Largest object the relay will buffer and cache.
    #[arg(long, env = "MLCACHE_MAX_OBJECT_SIZE", default_value = "64MiB", help_heading = CACHE)]
    pub max_object_size: ByteSize,
    /// Most downstream connections at once; at the cap a new one displaces
    /// the longest-idle connection.
    #[arg(long, env = "MLCACHE_MAX_CONNECTIONS", default_value = "19000", help_heading = LIMITS)]
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams on one downstream connection (a child
    /// relay's fetches to this one share a connection: keep it above their
    /// in-flight fetches per origin).
    #[arg(long, env = "MLCACHE_MAX_STREAMS_PER_CONNECTION", default_value = "1024", help_heading = LIMITS)]
    pub max_streams_per_connection: u32,
    /// Most viewers parked on one slot.
    #[arg(long, env = "MLCACHE_MAX_VIEWERS_PER_SLOT", default_value = "50000", help_heading = LIMITS)]
    pub max_viewers_per_slot: usize,
    /// Most viewers parked on all slots together.
    #[arg(long, env = "MLCACHE_MAX_PARKED", default_value = "100000", help_heading = LIMITS)]
    pub max_parked: usize,
    /// Largest request head (request line plus headers); larger gets 431.
    #[arg(long, env = "MLCACHE_MAX_HEADER_SIZE", default_value = "16KiB", help_heading = LIMITS)]
    pub max_header_size: ByteSize,
    /// Longest a viewer waits for a response head.
    #[arg(long, env = "MLCACHE_MAX_WAIT", default_value = "20s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Longest one upstream long-poll is held before the relay gives up on it.
    #[arg(long, env = "MLCACHE_UPSTREAM_HOLD", default_value = "30s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub upstream_hold: Duration,
    /// Timeout for connecting to a parent or origin.
    #[arg(long, env = "MLCACHE_CONNECT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest gap between two body pieces from upstream.
    #[arg(long, env = "MLCACHE_BODY_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Longest a write to a viewer may stall before the connection is dropped.
    #[arg(long, env = "MLCACHE_SEND_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Freshness of a 200 without Cache-Control or Expires (at most: with
    /// Last-Modified, a tenth of its age).
    #[arg(long, env = "MLCACHE_DEFAULT_TTL", default_value = "60s", value_parser = humantime::parse_duration, help_heading = CACHE)]
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Freshness of a 404 without Cache-Control (negative caching).
    #[arg(long, env = "MLCACHE_NEGATIVE_TTL", default_value = "1s", value_parser = humantime::parse_duration, help_heading = CACHE)]
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Shortest gap between two upstream polls of a chunk that is "not yet"
    /// (or held by --hold-404): at most one poll per key per interval,
    /// whatever the number of viewers.
    #[arg(long, env = "MLCACHE_REPOLL_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub repoll_interval: Duration,
    /// Plain origins made live: hold viewers this long after the origin
    /// answers 404 (no "not yet" marker), re-polling it once per
    /// --repoll-interval until the object appears; then the 404 goes out.
    /// Origin answers only, GET fills with viewers waiting (0: off).
    #[arg(long = "hold-404", env = "MLCACHE_HOLD_404", value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(rename = "hold-404", with = "humantime_serde")]
    pub hold_404: Duration,
    /// How long in-flight responses may finish after SIGTERM.
    #[arg(long, env = "MLCACHE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration, help_heading = DRAIN)]
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Zero-copy sending: bodies of known length (16 KiB to 64 MiB) are held
    /// in memory files and sent to HTTP/1.1 viewers with sendfile. The flag
    /// turns it off, as do `zero-copy = false` in TOML and
    /// MLCACHE_ZERO_COPY=false.
    #[arg(long = "no-zero-copy", env = "MLCACHE_ZERO_COPY", action = clap::ArgAction::SetFalse, help_heading = CACHE)]
    #[serde(rename = "zero-copy")]
    pub zero_copy: bool,
    /// Prefetch: start the long-poll for the chunk named by Link rel=next
    /// ahead of viewers. The flag turns it off, as do `prefetch = false` in
    /// TOML and MLCACHE_PREFETCH=false.
    #[arg(long = "no-prefetch", env = "MLCACHE_PREFETCH", action = clap::ArgAction::SetFalse, help_heading = CACHE)]
    pub prefetch: bool,
    /// Unicast URL this relay gives in its probe answer (repeatable; default:
    /// the address the probe arrived on).
    #[arg(long, env = "MLCACHE_ADVERTISE", value_name = "URL", value_delimiter = ',', help_heading = NET)]
    pub advertise: Vec<String>,
    /// CA certificate (PEM) to trust for https origins (default: webpki roots).
    #[arg(long, env = "MLCACHE_ORIGIN_CA", value_name = "FILE", help_heading = NET)]
    pub origin_ca: Option<PathBuf>,
    /// Address to serve viewers and child relays on over TLS (HTTP/1.1 and h2
    /// by ALPN on one port; default: off). Needs --tls-cert and --tls-key.
    #[arg(long, env = "MLCACHE_LISTEN_TLS", value_name = "ADDR", help_heading = NET)]
    pub listen_tls: Option<SocketAddr>,
    /// Certificate chain (PEM) the TLS listener presents; reloaded on SIGHUP.
    #[arg(long, env = "MLCACHE_TLS_CERT", value_name = "FILE", help_heading = NET)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert; reloaded with it on SIGHUP.
    #[arg(long, env = "MLCACHE_TLS_KEY", value_name = "FILE", help_heading = NET)]
    pub tls_key: Option<PathBuf>,
    /// Longest a TLS client may take to finish its handshake before the
    /// connection is closed.
    #[arg(long, env = "MLCACHE_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, help_heading = TIMEOUTS)]
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// CA certificate (PEM) to trust for https:// parent relays (default:
    /// webpki roots).
    #[arg(long, env = "MLCACHE_UPSTREAM_CA", value_name = "FILE", help_heading = NET)]
    pub upstream_ca: Option<PathBuf>,
    /// Page origin allowed to read responses by CORS, or * for any
    /// (repeatable; default: off, and OPTIONS gets 405). The relay answers
    /// preflights and adds Access-Control-* headers the origin did not set.
    #[arg(long, env = "MLCACHE_CORS", value_name = "ORIGIN", value_delimiter = ',', help_heading = NET)]
    pub cors: Vec<String>,
    /// Bound on every chunk byte the relay holds: cache, in-flight slots,
    /// bodies still streaming after eviction (default: twice --cache-size, at
    /// least --cache-size + 256MiB).
    #[arg(long = "memory-limit", env = "MLCACHE_MEMORY_LIMIT", value_name = "MEMORY_LIMIT", help_heading = CACHE)]
    #[serde(rename = "memory-limit")]
    pub memory_limit_bytes: Option<ByteSize>,
    /// Most upstream fetches in flight at once.
    #[arg(long, env = "MLCACHE_MAX_INFLIGHT_FETCHES", default_value = "4096", help_heading = LIMITS)]
    pub max_inflight_fetches: usize,
    /// Most upstream fetches in flight at once for one origin.
    #[arg(long, env = "MLCACHE_MAX_INFLIGHT_FETCHES_PER_ORIGIN", default_value = "1024", help_heading = LIMITS)]
    pub max_inflight_fetches_per_origin: usize,
    /// Largest response head accepted from a parent or origin (502 beyond).
    #[arg(long, env = "MLCACHE_MAX_UPSTREAM_HEAD", default_value = "64KiB", help_heading = LIMITS)]
    pub max_upstream_head: ByteSize,
    /// Longest a downstream connection may stay open without an unfinished
    /// request: silent, still sending its first request head, or idle between
    /// requests.
    #[arg(long, env = "MLCACHE_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, help_heading = DRAIN)]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// After SIGTERM, how long the viewer listener keeps serving while
    /// /healthz already answers 503, so routing can move away first (0
    /// allowed).
    #[arg(long, env = "MLCACHE_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration, help_heading = DRAIN)]
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Interval of HTTP/2 keep-alive PINGs to downstream peers.
    #[arg(long, env = "MLCACHE_H2_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration, help_heading = DRAIN)]
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_interval: Duration,
    /// Longest wait for a PING acknowledgement before the connection is
    /// closed.
    #[arg(long, env = "MLCACHE_H2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration, help_heading = DRAIN)]
    #[serde(with = "humantime_serde")]
    pub h2_keepalive_timeout: Duration,
    /// Period of the summary log line for refused and shed requests.
    #[arg(long, env = "MLCACHE_LOG_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, help_heading = DRAIN)]
    #[serde(with = "humantime_serde")]
    pub log_interval: Duration,
}

impl Default for Config {
    /// The `default_value` of every field. The environment is not read.
    fn default() -> Self {
        let cmd = Config::augment_args(clap::Command::new("defaults").no_binary_name(true))
            .mut_args(|a| a.env(None::<&'static str>));
        let matches = cmd
            .try_get_matches_from(std::iter::empty::<&str>())
            .expect("every default value parses");
        Config::from_arg_matches(&matches).expect("every default value parses")
    }
}

/// The `mlcache-relay` command line as given: `--config FILE` and one flag
/// per [`Config`] field. It keeps clap's matches, so that [`Config::load`]
/// can tell a flag that was given from one left at its default.
#[derive(Debug, Clone)]
pub struct Cli {
    matches: ArgMatches,
}

const ABOUT: &str = "mlcache relay: one upstream fetch per chunk, streamed to every viewer";
const AFTER_HELP: &str = "Every flag is also a key of the --config TOML file (its name without \
the dashes: max-wait = \"5s\") and an environment variable (MLCACHE_MAX_WAIT=5s). \
Flags win over the environment, which wins over the file, which wins over the defaults.";

impl CommandFactory for Cli {
    fn command() -> clap::Command {
        let cmd = Self::augment_args(clap::Command::new("mlcache-relay"));
        cmd.version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .after_help(AFTER_HELP)
    }

    fn command_for_update() -> clap::Command {
        Self::command()
    }
}

impl Args for Cli {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = Arg::new("config")
            .long("config")
            .env("MLCACHE_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML file with any of the settings below (flags and MLCACHE_* variables win)");
        Config::augment_args(cmd.arg(config))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for Cli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Cli {
            matches: matches.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

impl Parser for Cli {}

impl Config {
    /// Reads a TOML configuration file; keys it leaves out take their
    /// defaults, and an unknown key is an error that names it.
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

    /// Resolves flags over `MLCACHE_*` variables over the `--config` file
    /// over the defaults, then checks the result.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let mut given = cli.matches;
        let mut config = match given.get_one::<PathBuf>("config") {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        // Drop the values clap filled in from `default_value`, so only flags
        // and variables actually given write over the file.
        let defaulted: Vec<String> = given
            .ids()
            .filter(|id| given.value_source(id.as_str()) == Some(ValueSource::DefaultValue))
            .map(|id| id.as_str().to_owned())
            .collect();
        for id in defaulted {
            let _ = given.try_clear_id(&id);
        }
        config.update_from_arg_matches(&given)?;
        config.validate()?;
        Ok(config)
    }

    /// The settings as a TOML table (keys as in the file), sizes in exact
    /// bytes: `check-config` prints it, and a reload compares two of them.
    pub fn to_table(&self) -> toml::Table {
        let mut t = toml::Table::try_from(self).unwrap_or_default();
        let sizes = [
            ("cache-size", Some(self.cache_size)),
            ("max-object-size", Some(self.max_object_size)),
            ("max-header-size", Some(self.max_header_size)),
            ("max-upstream-head", Some(self.max_upstream_head)),
            ("memory-limit", self.memory_limit_bytes),
        ];
        for (k, v) in sizes {
            if let Some(v) = v {
                t.insert(k.into(), toml::Value::Integer(v.as_u64() as i64));
            }
        }
        t
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
        if self.max_connections == 0
            || self.max_viewers_per_slot == 0
            || self.max_parked == 0
            || self.max_streams_per_connection == 0
        {
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
        if self.listen_tls.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return bad("listen-tls needs tls-cert and tls-key");
        }
        if self.tls_handshake_timeout.is_zero() {
            return bad("tls-handshake-timeout must be more than 0");
        }
        if let Err(e) = crate::server::Cors::parse(&self.cors) {
            return Err(ConfigError::Invalid(e.to_string()));
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
mod tests;
