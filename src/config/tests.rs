//! Tests of the one-struct configuration: defaults, precedence (flags over
//! file over defaults), the example file, unknown keys, and `--help`.

use super::*;

/// A TOML file in a fresh temporary directory, removed on drop.
struct TempToml(PathBuf);

impl TempToml {
    fn new(name: &str, text: &str) -> TempToml {
        let dir = std::env::temp_dir().join(format!("mlcache-cfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(&file, text).unwrap();
        TempToml(file)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    let cli = Cli::try_parse_from(std::iter::once("mlcache-relay").chain(args.iter().copied()))?;
    Config::load(cli)
}

/// Every setting's TOML key, as serde knows them: the list its
/// unknown-field error gives.
fn serde_keys() -> Vec<String> {
    let err = toml::from_str::<Config>("no-such-key = 1")
        .unwrap_err()
        .to_string();
    let list = err
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("serde lists the fields: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every setting's flag (without `--`), as clap knows them.
fn flags() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !["config", "help", "version"].contains(l))
        .map(str::to_owned)
        .collect()
}

/// The TOML key of a flag: its name, but for the one negated flag.
fn key_of(flag: &str) -> &str {
    match flag {
        "no-prefetch" => "prefetch",
        "no-zero-copy" => "zero-copy",
        f => f,
    }
}

#[test]
fn defaults_are_unchanged() {
    let c = Config::default();
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(c.allow_origin.is_empty() && c.upstream.is_empty() && c.advertise.is_empty());
    assert_eq!((c.admin, c.id.as_deref()), (None, None));
    assert_eq!(c.cache_size, ByteSize::mib(512));
    assert_eq!(c.max_object_size, ByteSize::mib(64));
    assert_eq!(
        (c.max_connections, c.max_viewers_per_slot, c.max_parked),
        (19_000, 50_000, 100_000)
    );
    assert_eq!(c.max_header_size, ByteSize::kib(16));
    let s = Duration::from_secs;
    assert_eq!(
        [
            c.max_wait,
            c.upstream_hold,
            c.connect_timeout,
            c.body_idle_timeout,
            c.send_timeout,
            c.default_ttl,
            c.negative_ttl,
            c.repoll_interval,
            c.shutdown_grace,
        ],
        [
            s(20),
            s(30),
            s(2),
            s(10),
            s(30),
            s(60),
            s(1),
            Duration::from_millis(100),
            s(10)
        ]
    );
    assert!(c.prefetch);
    assert_eq!((c.origin_ca.as_ref(), c.memory_limit_bytes), (None, None));
    assert_eq!(
        (c.max_inflight_fetches, c.max_inflight_fetches_per_origin),
        (4096, 1024)
    );
    assert_eq!(c.max_upstream_head, ByteSize::kib(64));
    assert_eq!(
        [
            c.idle_timeout,
            c.drain_delay,
            c.h2_keepalive_interval,
            c.h2_keepalive_timeout,
            c.log_interval
        ],
        [s(10), s(5), s(20), s(20), s(1)]
    );
    assert_eq!(c.memory_limit(), ByteSize::mib(1024));
    // A file that sets nothing gives the same defaults.
    let empty: Config = toml::from_str("").unwrap();
    assert_eq!(format!("{empty:?}"), format!("{c:?}"));
}

#[test]
fn flags_override_file_override_defaults() {
    let file = TempToml::new(
        "precedence",
        "allow-origin = [\"http://127.0.0.1:9100\"]\ncache-size = \"1MiB\"\nmax-wait = \"5s\"\n\
         send-timeout = \"7s\"\nprefetch = false\nupstream = [\"http://10.0.0.1:8080\"]\n",
    );
    // A flag wins over the file; a setting the flags leave out keeps the
    // file's value even though its flag has a default (cache-size, prefetch);
    // one neither sets keeps the default.
    let c = load(&["--config", file.path(), "--max-wait", "250ms"]).unwrap();
    assert_eq!(c.max_wait, Duration::from_millis(250));
    assert_eq!(c.cache_size, ByteSize::mib(1));
    assert_eq!(c.send_timeout, Duration::from_secs(7));
    assert!(!c.prefetch);
    assert_eq!(c.allow_origin, vec!["http://127.0.0.1:9100"]);
    assert_eq!(c.upstream, vec!["http://10.0.0.1:8080"]);
    assert_eq!(c.upstream_hold, Config::default().upstream_hold);
    // A flag given with the default's value still wins over the file.
    let c = load(&["--config", file.path(), "--send-timeout", "30s"]).unwrap();
    assert_eq!(c.send_timeout, Duration::from_secs(30));
    assert_eq!(c.max_wait, Duration::from_secs(5));
    // A repeatable flag replaces the file's list.
    let c = load(&[
        "--config",
        file.path(),
        "--upstream",
        "http://a:1",
        "--upstream",
        "http://b:2",
    ])
    .unwrap();
    assert_eq!(c.upstream, vec!["http://a:1", "http://b:2"]);
    // The negated flag turns prefetch off over a file that turns it on.
    let on = TempToml::new(
        "prefetch-on",
        "allow-origin = [\"http://o\"]\nprefetch = true\n",
    );
    assert!(load(&["--config", on.path()]).unwrap().prefetch);
    assert!(
        !load(&["--config", on.path(), "--no-prefetch"])
            .unwrap()
            .prefetch
    );
    // No file: flags over defaults.
    let c = load(&["--allow-origin", "http://o", "--memory-limit", "2GiB"]).unwrap();
    assert_eq!(c.memory_limit(), ByteSize::gib(2));
    assert_eq!(c.cache_size, ByteSize::mib(512));
}

#[test]
fn every_setting_is_a_flag_and_a_toml_key() {
    let mut keys = serde_keys();
    let mut from_flags: Vec<String> = flags().iter().map(|f| key_of(f).to_owned()).collect();
    keys.sort();
    from_flags.sort();
    assert_eq!(keys, from_flags);
    assert!(keys.len() >= 32, "{keys:?}");
}

#[test]
fn the_example_config_lists_and_checks_every_setting() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/relay.example.toml");
    let c = Config::from_file(&path).unwrap();
    c.validate().unwrap();
    assert_eq!(c.id.as_deref(), Some("relay-par1"));
    assert_eq!(c.repoll_interval, Duration::from_millis(100));
    assert_eq!(c.hold_404, Duration::ZERO);
    assert_eq!(c.drain_delay, Duration::from_secs(5));
    // The example names every setting, set or commented out (`# key = ...`),
    // and the commented-out values are valid too.
    let text = std::fs::read_to_string(&path).unwrap();
    let is_key = |l: &str| {
        l.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
    };
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_key(rest) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let all: Config = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}"));
    all.validate().unwrap();
    let named: Vec<&str> = uncommented
        .lines()
        .filter(|l| is_key(l))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    for key in serde_keys() {
        assert!(
            named.contains(&key.as_str()),
            "docs/relay.example.toml does not name `{key}`"
        );
    }
}

#[test]
fn an_unknown_key_is_rejected_by_name() {
    let file = TempToml::new(
        "unknown",
        "allow-origin = [\"http://o\"]\ncache-sise = \"1MiB\"\n",
    );
    let err = Config::from_file(&file.0).unwrap_err().to_string();
    assert!(err.contains("cache-sise"), "{err}");
    let err = load(&["--config", file.path()]).unwrap_err().to_string();
    assert!(err.contains("cache-sise"), "{err}");
    // A flag-only name is not a key either.
    let err = toml::from_str::<Config>("no-prefetch = true")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-prefetch"), "{err}");
}

/// Each `Config` field's doc comment, read from this module's source.
fn field_docs() -> Vec<(String, String)> {
    let src = include_str!("mod.rs");
    let body = src
        .split("pub struct Config {")
        .nth(1)
        .and_then(|s| s.split("\n}\n").next())
        .expect("Config in the source");
    let mut out = Vec::new();
    let mut doc = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim().to_owned());
        } else if let Some(field) = line.strip_prefix("pub ") {
            let name = field.split(':').next().unwrap().to_owned();
            out.push((name, std::mem::take(&mut doc).join(" ")));
        }
    }
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn help_shows_every_field_doc_and_variable() {
    let help = squash(&Cli::command().render_long_help().to_string());
    let docs = field_docs();
    assert_eq!(docs.len(), flags().len(), "{docs:?}");
    for (field, doc) in docs {
        assert!(!doc.is_empty(), "{field} has no doc comment");
        let doc = squash(doc.trim_end_matches('.'));
        assert!(
            help.contains(&doc),
            "--help lacks the doc of {field}: {doc}"
        );
    }
    for arg in Cli::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let var = format!("MLCACHE_{}", key_of(long).replace('-', "_").to_uppercase());
        assert_eq!(
            arg.get_env().and_then(|v| v.to_str()),
            Some(var.as_str()),
            "--{long}"
        );
        assert!(help.contains(&format!("--{long}")), "--help lacks --{long}");
        assert!(help.contains(&var), "--help lacks {var}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let err = load(&["--cache-size", "lots"]).unwrap_err().to_string();
    assert!(err.contains("--cache-size"), "{err}");
    let err = load(&["--max-wait", "soon"]).unwrap_err().to_string();
    assert!(err.contains("--max-wait"), "{err}");
    let err = load(&[]).unwrap_err();
    assert!(err.to_string().contains("allow-origin"));
    let err = load(&["--allow-origin", "http://o", "--idle-timeout", "0s"]).unwrap_err();
    assert!(err.to_string().contains("idle-timeout"));
    let c = load(&["--allow-origin", "http://o", "--drain-delay", "0s"]).unwrap();
    assert_eq!(c.drain_delay, Duration::ZERO);
    let file = TempToml::new(
        "bad-value",
        "allow-origin = [\"http://o\"]\nmax-wait = \"soon\"\n",
    );
    let err = load(&["--config", file.path()]).unwrap_err().to_string();
    assert!(err.contains("max-wait"), "{err}");
}
