//! mlcache: a multi-level streaming cache for encrypted live and VOD chunks.
//!
//! A viewer's request enters through [`server`], is named by [`key`], and is
//! answered through [`flight`]: from [`cache`] if the chunk is complete and
//! fresh, otherwise by joining the one in-flight [`slot`] for it, which a
//! single fill task in [`relay`] feeds from [`upstream`] (a parent relay or
//! the origin). Admission is decided in `flight` before any fetch starts, and
//! every chunk byte held is charged to one [`budget`]. [`config`] holds every
//! limit and timeout; [`metrics`] counts what happens.

pub mod budget;
pub mod cache;
pub mod client;
pub mod config;
pub mod ece;
pub mod flight;
pub mod key;
pub mod listener;
pub mod manifest;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod probe;
pub mod relay;
pub mod server;
pub mod slot;
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
}

/// Binds the listeners of `config` and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let relay = Relay::new(config)?;
    let bind = |addr: SocketAddr| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = l
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok::<_, StartError>((l, bound))
    };
    let (listener, addr) = bind(relay.config.listen).await?;
    let shutdown = CancellationToken::new();
    let admin = match relay.config.admin {
        Some(a) => {
            let (l, bound) = bind(a).await?;
            tokio::spawn(listener::serve_admin(relay.clone(), l, shutdown.clone()));
            Some(bound)
        }
        None => None,
    };
    tracing::info!(%addr, ?admin, id = %relay.id, origins = ?relay.config.allow_origin, upstreams = ?relay.config.upstream, "relay listening");
    let task = tokio::spawn(listener::serve(relay.clone(), listener, shutdown.clone()));
    Ok(Running {
        relay,
        addr,
        admin,
        shutdown,
        task,
    })
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

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn until_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("interrupt: shutting down") }
    }
    Ok(())
}

/// Runs a relay until SIGTERM or Ctrl-C, then drains it. Prints
/// `listening ADDR` (and `admin ADDR`) on stdout first, so scripts that start
/// it on port 0 learn where it is.
pub async fn run(config: Config) -> Result<(), StartError> {
    let (soft, _) = raise_fd_limit();
    if (soft as usize) < config.max_connections + 64 {
        tracing::warn!(
            fd_limit = soft,
            max_connections = config.max_connections,
            "the open-file limit is below --max-connections: connections beyond it will fail to be accepted"
        );
    }
    let running = start(config).await?;
    println!("listening {}", running.addr);
    if let Some(a) = running.admin {
        println!("admin {a}");
    }
    until_signal().await.map_err(StartError::Signal)?;
    running.shutdown.cancel();
    running.join().await;
    tracing::info!("stopped");
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
}
