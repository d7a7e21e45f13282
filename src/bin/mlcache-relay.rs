//! `mlcache-relay`: parse flags, start the relay, stop cleanly on SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use mlcache::{Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(Cli::parse())?;
    let running = mlcache::start(config).await.context("starting relay")?;
    // Scripts read the bound address from stdout (useful with port 0).
    println!("listening {}", running.addr);
    if let Some(a) = running.admin {
        println!("admin {a}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.shutdown.cancel();
    running.join().await;
    tracing::info!("stopped");
    Ok(())
}
