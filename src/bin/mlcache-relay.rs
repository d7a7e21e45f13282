//! `mlcache-relay`: parse flags, run the relay until SIGTERM or Ctrl-C.

use clap::Parser;
use mlcache::{Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mlcache::init_tracing();
    let config = Config::load(Cli::parse())?;
    mlcache::run(config).await?;
    Ok(())
}
