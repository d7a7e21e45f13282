//! `MLCACHE_*` environment variables in the relay's configuration order:
//! flags over variables over the `--config` file over the defaults. The only
//! test in this binary, because it sets the process environment.

use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;
use mlcache::{Cli, Config};

#[test]
fn variables_sit_between_flags_and_the_file() {
    let dir = std::env::temp_dir().join(format!("mlcache-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(
        &file,
        "allow-origin = [\"http://file\"]\ncache-size = \"1MiB\"\nmax-wait = \"5s\"\n\
         repoll-interval = \"70ms\"\nconnect-timeout = \"4s\"\n",
    )
    .unwrap();
    let vars = [
        ("MLCACHE_CONFIG", file.to_str().unwrap()),
        ("MLCACHE_MAX_WAIT", "3s"),
        ("MLCACHE_REPOLL_INTERVAL", "20ms"),
        ("MLCACHE_ALLOW_ORIGIN", "http://a:1,http://b:2"),
        ("MLCACHE_PREFETCH", "false"),
        ("MLCACHE_MEMORY_LIMIT", "3GiB"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let c = Config::load(Cli::parse_from([
        "mlcache-relay",
        "--repoll-interval",
        "10ms",
    ]));
    let defaults = Config::default();
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    std::fs::remove_dir_all(&dir).ok();
    let c = c.unwrap();
    // A flag wins over a variable.
    assert_eq!(c.repoll_interval, Duration::from_millis(10));
    // A variable wins over the file (the file itself named by a variable).
    assert_eq!(c.max_wait, Duration::from_secs(3));
    assert_eq!(c.allow_origin, vec!["http://a:1", "http://b:2"]);
    // The file wins over the defaults.
    assert_eq!(c.cache_size, ByteSize::mib(1));
    assert_eq!(c.connect_timeout, Duration::from_secs(4));
    // The negated flag's variable names the setting, not the flag.
    assert!(!c.prefetch);
    assert_eq!(c.memory_limit(), ByteSize::gib(3));
    // The defaults never read the environment.
    assert_eq!(defaults.max_wait, Duration::from_secs(20));
    assert!(defaults.prefetch);
}
