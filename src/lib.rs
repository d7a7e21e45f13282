//! mlcache: a multi-level streaming cache for encrypted live and VOD chunks.
//!
//! A viewer's connection is accepted and each request on it checked by
//! [`server`]; the request is named by [`key`] and answered through [`flight`]:
//! from [`cache`] if the chunk is complete and fresh, otherwise by joining the one in-flight [`slot`] for it, which a
//! single fill task in [`relay`] feeds from [`upstream`] (a parent relay or
//! the origin). Admission is decided in `flight` before any fetch starts, and
//! every chunk byte held is charged to one [`budget`]. [`config`] holds every
//! limit and timeout; [`metrics`] counts what happens.

pub mod budget;
pub mod cache;
pub mod client;
pub mod config;
pub mod connect;
pub mod ece;
pub mod flight;
pub mod heap;
pub mod inherit;
pub mod key;
pub mod manifest;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod probe;
pub mod protocol;
pub mod ratelog;
pub mod relay;
pub mod server;
pub mod slot;
pub mod spool;
pub mod status;
pub mod tls;
pub mod upstream;

pub use config::{Cli, Config};
pub use relay::Relay;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A relay bound to its sockets and serving in the background.
pub struct Running {
    /// The relay itself (metrics, cache, id).
    pub relay: Arc<Relay>,
    /// Where viewers connect.
    pub addr: SocketAddr,
    /// Where viewers connect over TLS, if `listen-tls` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The TLS listener's certificate, reloaded by [`Running::reload_tls`].
    pub tls: Option<Arc<server::TlsCerts>>,
    /// Where `/metrics` and `/healthz` are served, if enabled.
    pub admin: Option<SocketAddr>,
    /// Cancel to start a graceful shutdown.
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the relay has drained after `shutdown` was cancelled.
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Applies a reloaded configuration (SIGHUP; `new` comes from
    /// [`Config::load`], so it is validated and keeps flags over
    /// environment over file over defaults): the allow-list, parents and
    /// limits ([`relay::LIVE_SETTINGS`]) are swapped for new requests,
    /// viewers in flight are untouched, and any other changed setting is
    /// logged as ignored (it needs a restart). The TLS certificate is read
    /// again too. A configuration that cannot be applied is refused with a
    /// log line and the old one stays.
    pub fn reload_config(&self, new: Result<Config, config::ConfigError>) -> bool {
        let new = match new {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused: still running the old configuration");
                return false;
            }
        };
        match self.relay.reload(new) {
            Ok(ignored) => {
                let live = self.relay.live();
                tracing::info!(origins = ?live.config.allow_origin, upstreams = ?live.config.upstream, parent_select = ?live.config.parent_select, "configuration reloaded");
                if !ignored.is_empty() {
                    tracing::warn!(settings = ?ignored, "changed settings that need a restart were ignored");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused: still running the old configuration");
                return false;
            }
        }
        self.reload_tls().is_ok()
    }

    /// Reads the TLS certificate and key files again (SIGHUP) and presents
    /// them to new connections; open ones keep theirs. A pair that cannot be
    /// read or used is refused with a log line and the old one stays. Nothing
    /// else of the configuration is reloaded.
    pub fn reload_tls(&self) -> Result<(), server::CertError> {
        let Some(certs) = &self.tls else {
            return Ok(());
        };
        match certs.reload() {
            Ok(()) => {
                tracing::info!(cert = ?self.relay.config.tls_cert, "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload refused: still serving the old certificate");
                Err(e)
            }
        }
    }
}

/// Binds the listeners of `config` (`listen`, and `listen-tls` and `admin`
/// if set) and starts serving on them: [`start_on_tls`] with listeners of
/// its own.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr| listen(addr).map_err(|source| StartError::Bind { addr, source });
    let viewers = bind(config.listen)?;
    let tls = config.listen_tls.map(bind).transpose()?;
    let admin = config.admin.map(bind).transpose()?;
    start_on_tls(config, viewers, tls, admin).await
}

/// Starts serving viewers on `listener`, and `/metrics` and `/healthz` on
/// `admin` if given; `config.listen` and `config.admin` are replaced by the
/// listeners' addresses. The caller binds the sockets, so a test or an
/// embedding program owns its ports (no bind, drop and rebind race).
/// Cancelling [`Running::shutdown`] starts the drain: `/healthz` answers 503
/// at once, viewers are still served for `drain-delay`, then the viewer
/// listener closes, in-flight responses get `shutdown-grace`, and the admin
/// listener closes last.
///
/// If `config.listen-tls` is set, its listener is bound here (use
/// [`start_on_tls`] to bind it yourself).
pub async fn start_on(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
) -> Result<Running, StartError> {
    let tls = config
        .listen_tls
        .map(|addr| listen(addr).map_err(|source| StartError::Bind { addr, source }))
        .transpose()?;
    start_on_tls(config, listener, tls, admin).await
}

/// [`start_on`] with the TLS viewer listener bound by the caller too
/// (`tls`, used only if `config.listen-tls` is set; `config.listen-tls` is
/// replaced by its address). TLS connections share the clear listener's
/// accept loop, connection cap, timeouts and drain.
pub async fn start_on_tls(
    mut config: Config,
    listener: TcpListener,
    tls: Option<TcpListener>,
    admin: Option<TcpListener>,
) -> Result<Running, StartError> {
    let local = |l: &TcpListener, addr: SocketAddr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { addr, source })
    };
    let addr = local(&listener, config.listen)?;
    config.listen = addr;
    config.admin = match &admin {
        Some(l) => Some(local(l, config.admin.unwrap_or(addr))?),
        None => None,
    };
    let tls = match (tls, config.listen_tls) {
        (Some(l), Some(want)) => {
            let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
                return Err(StartError::Tls(server::CertError::NoCert(
                    "(no --tls-cert or --tls-key)".into(),
                )));
            };
            let certs = Arc::new(server::TlsCerts::load(cert, key)?);
            let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config()?);
            config.listen_tls = Some(local(&l, want)?);
            Some((l, acceptor, certs))
        }
        _ => None,
    };
    let tls_addr = config.listen_tls.filter(|_| tls.is_some());
    let (tls, certs) = match tls {
        Some((l, a, c)) => (Some((l, a)), Some(c)),
        None => (None, None),
    };
    let relay = Relay::new(config)?;
    let shutdown = CancellationToken::new();
    // The admin listener and the log summaries outlive the viewer drain.
    let admin_stop = CancellationToken::new();
    let admin_addr = relay.config.admin;
    if let Some(l) = admin {
        tokio::spawn(crate::server::serve_admin(
            relay.clone(),
            l,
            admin_stop.clone(),
        ));
    }
    tokio::spawn(flush_logs(relay.clone(), admin_stop.clone()));
    tracing::info!(%addr, tls = ?tls_addr, admin = ?admin_addr, id = %relay.id, origins = ?relay.config.allow_origin, upstreams = ?relay.config.upstream, "relay listening");
    let task = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move {
            crate::server::serve_with_tls(relay, listener, tls, shutdown).await;
            admin_stop.cancel();
        }
    });
    Ok(Running {
        relay,
        addr,
        tls_addr,
        tls: certs,
        admin: admin_addr,
        shutdown,
        task,
    })
}

/// Writes the refused/shed summary lines every `log-interval`, so the last
/// window of a burst is logged even if no refusal follows it.
async fn flush_logs(relay: Arc<Relay>, stop: CancellationToken) {
    let m = &relay.metrics;
    m.shed_log.set_interval(relay.config.log_interval);
    m.refused_log.set_interval(relay.config.log_interval);
    let mut tick = tokio::time::interval(relay.config.log_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                m.shed_log.flush();
                m.refused_log.flush();
            }
        }
    }
    m.shed_log.flush();
    m.refused_log.flush();
}

/// Accept queue length of the relay's listeners. The standard library's 128
/// drops handshakes when a crowd of viewers connects at once (the kernel caps
/// it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, as [`start`]
/// does; for callers of [`start_on`] that want the same listeners.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises this process's soft open-file limit to its hard limit, and returns
/// `(soft, hard)`. A relay needs one descriptor per viewer, and many systems
/// start processes with a soft limit of 1,024.
pub fn raise_fd_limit() -> (u64, u64) {
    // SAFETY: getrlimit/setrlimit only read and write the local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        (lim.rlim_cur, lim.rlim_max)
    }
}

/// The log filter when `RUST_LOG` is not set. The h2 crate logs each peer's
/// protocol misbehaviour (a rapid-reset flood, say) at `warn`, one line per
/// connection: exactly a log storm under attack, and the relay counts those
/// connections in its metrics anyway. rustls does the same for each bad TLS
/// client (with the client's SNI in the line: 65 KB of it, if the client
/// likes); failed handshakes are counted in
/// `mlcache_connections_closed_total{reason="tls_handshake"}`.
pub const DEFAULT_LOG_FILTER: &str = "info,h2=error,rustls=error";

/// Logs to stderr, filtered by `RUST_LOG` (default [`DEFAULT_LOG_FILTER`]).
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn until_signal() -> std::io::Result<()> {
    Signals::install()?.until_stop().await;
    Ok(())
}

/// The relay's signal handlers. Installed before the relay prints its
/// address, so a signal sent as soon as a script has read it is handled.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP (whose default
    /// action would kill the process).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT. SIGHUP is logged and ignored (this
    /// waits out a drain, when there is nothing left to reload).
    pub async fn until_stop(&mut self) {
        self.until_stop_or(|| tracing::info!("SIGHUP while stopping: ignored"))
            .await
    }

    /// Waits for SIGTERM or SIGINT, calling `on_hup` on every SIGHUP.
    pub async fn until_stop_or(&mut self, mut on_hup: impl FnMut()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    return;
                }
                _ = self.int.recv() => {
                    tracing::info!("interrupt: shutting down");
                    return;
                }
                _ = self.hup.recv() => on_hup(),
            }
        }
    }
}

/// Runs a relay until SIGTERM or Ctrl-C, then drains it (see [`start`]); a
/// second SIGTERM or Ctrl-C during the drain stops at once. Prints
/// `listening ADDR` (and `admin ADDR`) on stdout first, so scripts that start
/// it on port 0 learn where it is. SIGHUP reloads the TLS certificate only
/// (see [`run_cli`] for a configuration reload).
pub async fn run(config: Config) -> Result<(), StartError> {
    run_inner(config, None).await
}

/// [`run`] for a command line: SIGHUP loads the configuration again from
/// `cli` (re-reading its `--config` file) and applies it
/// ([`Running::reload_config`]).
pub async fn run_cli(cli: Cli) -> Result<(), StartError> {
    let config = Config::load(cli.clone()).map_err(StartError::Config)?;
    run_inner(config, Some(cli)).await
}

async fn run_inner(config: Config, cli: Option<Cli>) -> Result<(), StartError> {
    let (soft, _) = raise_fd_limit();
    if (soft as usize) < config.max_connections + 64 {
        tracing::warn!(
            fd_limit = soft,
            max_connections = config.max_connections,
            "the open-file limit is below --max-connections: connections beyond it will fail to be accepted"
        );
    }
    // Memory files for zero-copy sends take descriptors too: only what the
    // viewers leave over.
    let spools = spool::limit_for(soft, config.max_connections);
    spool::set_limit(spools);
    if config.zero_copy {
        tracing::info!(
            spools,
            fd_limit = soft,
            "zero-copy: at most this many bodies in memory files"
        );
    }
    let mut signals = Signals::install().map_err(StartError::Signal)?;
    let inherited = inherit::Inherited::take(config.listen_tls.is_some(), config.admin.is_some())
        .map_err(StartError::Inherit)?;
    let running = if inherited.is_empty() {
        start(config).await?
    } else {
        let bind =
            |addr: SocketAddr| listen(addr).map_err(|source| StartError::Bind { addr, source });
        let viewers = match inherited.listen {
            Some(l) => l,
            None => bind(config.listen)?,
        };
        let tls = match (inherited.listen_tls, config.listen_tls) {
            (Some(l), _) => Some(l),
            (None, Some(a)) => Some(bind(a)?),
            (None, None) => None,
        };
        let admin = match (inherited.admin, config.admin) {
            (Some(l), _) => Some(l),
            (None, Some(a)) => Some(bind(a)?),
            (None, None) => None,
        };
        start_on_tls(config, viewers, tls, admin).await?
    };
    println!("listening {}", running.addr);
    if let Some(a) = running.tls_addr {
        println!("tls {a}");
    }
    if let Some(a) = running.admin {
        println!("admin {a}");
    }
    signals
        .until_stop_or(|| match &cli {
            Some(cli) => {
                tracing::info!("SIGHUP: reloading the configuration");
                running.reload_config(Config::load(cli.clone()));
            }
            None if running.tls.is_some() => {
                tracing::info!("SIGHUP: reloading the TLS certificate");
                let _ = running.reload_tls();
            }
            None => tracing::info!("SIGHUP: no configuration source to reload, ignored"),
        })
        .await;
    running.shutdown.cancel();
    tokio::select! {
        _ = running.join() => tracing::info!("stopped"),
        _ = signals.until_stop() => tracing::warn!("second signal: stopping without finishing the drain"),
    }
    Ok(())
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad origins or upstreams.
    #[error(transparent)]
    Setup(#[from] relay::SetupError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Inherited listening sockets (`LISTEN_FDS`) could not be used.
    #[error("inherited listening socket: {0}")]
    Inherit(std::io::Error),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS listener: {0}")]
    Tls(#[from] server::CertError),
}
