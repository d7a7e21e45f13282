//! `mlcache-relay`: parse flags, run the relay until SIGTERM or Ctrl-C
//! (SIGHUP reloads the configuration); or `mlcache-relay check-config FILE`:
//! load FILE as `--config` would (environment and flags still win), validate
//! it and print the effective settings as TOML.

use clap::Parser;
use mlcache::{Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check-config") {
        std::process::exit(check_config(&args));
    }
    mlcache::init_tracing();
    mlcache::run_cli(Cli::parse()).await?;
    Ok(())
}

/// `check-config FILE [FLAGS]`: 0 and the effective settings, or 1 and the
/// error on stderr.
fn check_config(args: &[String]) -> i32 {
    let Some(file) = args.get(2).filter(|f| !f.starts_with('-')) else {
        eprintln!("usage: mlcache-relay check-config FILE [FLAGS]");
        return 1;
    };
    let cli = [args[0].as_str(), "--config", file.as_str()]
        .into_iter()
        .chain(args[3..].iter().map(String::as_str));
    let loaded = Cli::try_parse_from(cli)
        .map_err(|e| e.to_string())
        .and_then(|cli| Config::load(cli).map_err(|e| e.to_string()))
        .and_then(|c| {
            mlcache::Relay::new(c.clone())
                .map(|_| c)
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok(c) => match toml::to_string(&c.to_table()) {
            Ok(t) => {
                println!("# {file}: valid; effective settings (flags > MLCACHE_* > file > defaults), sizes in bytes");
                print!("{t}");
                0
            }
            Err(e) => {
                eprintln!("{file}: valid, but the settings cannot be printed: {e}");
                0
            }
        },
        Err(e) => {
            eprintln!("{file}: {}", e.trim_end());
            1
        }
    }
}
