//! `mlcache-loadgen flash` end to end, as a process with its own origin and
//! relay processes: a small flash crowd, the same crowd split over three
//! worker processes (its merged histograms hold exactly as many chunks as
//! one process's), and `--pin` read back from /proc. Every number asserted
//! comes from the `--json` output or from /proc.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use mlcache_loadgen::child::{spawn_listening, Listening};
use mlcache_loadgen::pin::Plan;
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_mlcache-loadgen");

/// Runs `mlcache-loadgen flash ARGS --json F`; its exit status, output and JSON.
fn flash(tag: &str, args: &[&str]) -> (bool, String, serde_json::Value) {
    let json: PathBuf =
        std::env::temp_dir().join(format!("mlcache-flash-{}-{tag}.json", std::process::id()));
    let out = std::process::Command::new(EXE)
        .arg("flash")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run the loadgen");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    std::fs::remove_file(&json).ok();
    (out.status.success(), text, v)
}

/// Sum of a `(value, count)` histogram's counts.
fn count(h: &serde_json::Value) -> u64 {
    h.as_array()
        .expect("histogram buckets")
        .iter()
        .map(|b| b[1].as_u64().unwrap())
        .sum()
}

/// `0-2,4` → {0, 1, 2, 4}.
fn cpus(list: &str) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => {
                out.insert(part.parse::<usize>().unwrap());
            }
        }
    }
    out
}

fn allowed_list(pid: u32) -> String {
    mlcache_loadgen::pin::allowed_list(pid).expect("the process is alive")
}

/// The crowd every test runs: 300 viewers within 200 ms, two 16 KiB chunks
/// each, every 300 ms.
const CROWD: &[&str] = &[
    "--viewers",
    "300",
    "--within",
    "200ms",
    "--chunks",
    "2",
    "--cadence",
    "300ms",
    "--chunk-size",
    "16384",
    "--viewer-timeout",
    "20s",
];

#[test]
fn small_flash_crowd_and_a_forced_split_count_the_same() {
    let (ok, out, one) = flash("one", CROWD);
    assert!(ok, "{out}");
    assert_eq!(one["processes"], 1, "{out}");
    assert_eq!(one["total_errors"], 0, "{out}");
    assert_eq!(one["connected"], 300, "{out}");
    assert_eq!(
        one["got_first"], 300,
        "every viewer got the next chunk: {out}"
    );
    assert_eq!(one["chunks"], 600, "{out}");
    assert_eq!(one["expected_chunks"], 600);
    let one_count = count(&one["chunk_last_byte_histogram_us"]);
    assert_eq!(one_count, 600, "one entry per viewer per chunk");
    assert_eq!(count(&one["first_chunk_histogram_us"]), 300);
    assert!(one["accept_rate_per_s"].as_f64().unwrap() > 0.0);
    let last = one["last_first_chunk_ms"].as_f64().unwrap();
    // The last viewer starts at 200 ms and waits at most a cadence for the
    // next chunk, plus the delivery.
    assert!(last > 0.0 && last < 20_000.0, "{out}");
    assert!(out.contains("not pinned"), "{out}");

    let (ok, out, split) = flash(
        "split",
        &[CROWD, &["--max-viewers-per-process", "100"]].concat(),
    );
    assert!(ok, "{out}");
    assert_eq!(split["processes"], 3, "{out}");
    let workers = split["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let pids: BTreeSet<u64> = workers.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3, "three worker processes");
    assert!(workers.iter().all(|w| w["viewers"] == 100));
    assert_eq!(split["total_errors"], 0, "{out}");
    assert_eq!(split["got_first"], 300, "{out}");
    // The merged histograms hold exactly what one process's held.
    assert_eq!(count(&split["chunk_last_byte_histogram_us"]), 600);
    assert_eq!(count(&split["chunk_last_byte_histogram_us"]), one_count);
    assert_eq!(count(&split["first_chunk_histogram_us"]), 300);
    assert_eq!(split["chunk_last_byte_ms"]["count"], 600);
    assert_eq!(split["connect_ms"]["count"], 300);
}

#[tokio::test]
async fn pin_puts_relays_on_one_cpu_and_the_rest_on_the_others() {
    let plan = Plan::new();
    if mlcache_loadgen::pin::allowed().unwrap().len() < 2 {
        // Nothing to separate: --pin refuses rather than pretending.
        let (ok, out, _) = flash("pin1", &[CROWD, &["--pin"]].concat());
        assert!(!ok && out.contains("at least two CPUs"), "{out}");
        assert!(plan.is_err());
        return;
    }
    let plan = plan.unwrap();
    let (relay_set, rest_set): (BTreeSet<usize>, BTreeSet<usize>) = (
        plan.relay.iter().copied().collect(),
        plan.rest.iter().copied().collect(),
    );

    // Processes the loadgen starts itself (origin, relay, three workers):
    // their masks, read back while they ran.
    let (ok, out, v) = flash(
        "pin-own",
        &[CROWD, &["--pin", "--max-viewers-per-process", "100"]].concat(),
    );
    assert!(ok, "{out}");
    assert_eq!(v["pin"]["pinned"], true);
    let procs = v["pin"]["processes"].as_array().unwrap();
    let roles: Vec<&str> = procs.iter().map(|p| p["role"].as_str().unwrap()).collect();
    for r in [
        "loadgen", "origin", "relay B", "worker 1", "worker 2", "worker 3",
    ] {
        assert!(roles.contains(&r), "{r} missing from {roles:?}");
    }
    for p in procs {
        let want = if p["role"].as_str().unwrap().starts_with("relay") {
            &relay_set
        } else {
            &rest_set
        };
        assert_eq!(&cpus(p["cpus_allowed_list"].as_str().unwrap()), want, "{p}");
    }
    for w in v["workers"].as_array().unwrap() {
        assert_eq!(cpus(w["cpus_allowed_list"].as_str().unwrap()), rest_set);
    }
    assert!(
        v["relays"][0]["cpu_s_per_gb"].as_f64().unwrap() > 0.0,
        "{out}"
    );
    assert!(out.contains("pinned: relays on CPU"), "{out}");

    // Processes given by address and pid: pinned by sched_setaffinity on
    // every thread; read back here from /proc after the run.
    let spawn = |name: &'static str, args: Vec<String>| async move {
        let mut cmd = Command::new(EXE);
        cmd.args(args).env("RUST_LOG", "warn");
        spawn_listening(cmd, name, false, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"))
    };
    let s = |x: &str| x.to_string();
    let origin: Listening = spawn(
        "origin",
        vec![
            s("origin"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--cadence"),
            s("300ms"),
            s("--chunk-size"),
            s("16384"),
        ],
    )
    .await;
    let relay: Listening = spawn(
        "relay",
        vec![
            s("relay"),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--allow-origin"),
            format!("http://{}", origin.addr),
        ],
    )
    .await;
    let (op, rp) = (origin.pid().unwrap(), relay.pid().unwrap());
    assert_ne!(cpus(&allowed_list(rp)), relay_set, "not pinned before");
    let args: Vec<String> = [
        "--pin",
        "--origin",
        &origin.addr.to_string(),
        "--origin-pid",
        &op.to_string(),
        "--relay",
        &relay.addr.to_string(),
        "--relay-pid",
        &rp.to_string(),
        "--viewers",
        "100",
        "--within",
        "100ms",
        "--chunks",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (ok, out, v) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        flash("pin-given", &args)
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert_eq!(v["total_errors"], 0, "{out}");
    // Every thread of the relay, not just its main thread.
    for t in std::fs::read_dir(format!("/proc/{rp}/task")).unwrap() {
        let tid = t.unwrap().file_name();
        let status =
            std::fs::read_to_string(format!("/proc/{rp}/task/{}/status", tid.to_string_lossy()))
                .unwrap();
        let l = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(cpus(l), relay_set, "relay thread {tid:?}");
    }
    assert_eq!(cpus(&allowed_list(op)), rest_set, "the origin");
}
