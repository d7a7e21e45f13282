//! `mlcache-origin`: the live head end and VOD origin simulator.

use clap::Parser;
use mlcache::origin::OriginArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mlcache::init_tracing();
    let cfg = OriginArgs::parse()
        .into_config()
        .map_err(anyhow::Error::msg)?;
    mlcache::origin::run(cfg).await?;
    Ok(())
}
