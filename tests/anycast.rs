//! Anycast discovery with real routing: network namespaces, veth links and
//! routes built by this test (iproute2, root).
//!
//! ```text
//!   c1 ── r1 ──┐                 r1, r2: relays, both holding anycast 10.99.0.1
//!              o (origin 10.0.0.100)
//!   c2 ── r2 ──┘                 c1 routes via r1, c2 via r2
//! ```
//!
//! Each client probes 10.99.0.1 and must use its own nearest relay. Then r1
//! is stopped and its anycast address withdrawn (as a BGP health check would):
//! c1 must carry on through r2 or the origin without losing a chunk.
//! Every namespace is deleted on the way out, pass or fail. Where namespaces
//! cannot be created the test says so and skips, except under CI, where it
//! fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{check_output, ip, spawn_in, wait_until};
use common::TestProcess;

const CHUNK: usize = 16 * 1024;
const CHUNKS: u64 = 16;

/// The namespaces of one run; deleted on drop.
struct Net {
    names: Vec<String>,
    tag: String,
}

impl Net {
    fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.tag)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["-n", ns];
        a.extend_from_slice(args);
        ip(&a)
    }

    fn sysctl(&self, ns: &str, kv: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", kv])
            .output()
            .map_err(|e| e.to_string())?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| format!("sysctl {kv} in {ns} failed"))
    }

    /// Builds the topology. `Err` only when namespaces cannot be created at
    /// all; any later failure is a test failure (and still cleans up).
    fn build() -> Result<Net, String> {
        let tag = format!("mlc{}", std::process::id() % 100_000);
        let mut net = Net {
            names: Vec::new(),
            tag,
        };
        ip(&["netns", "add", &net.ns("o")])?;
        net.names.push(net.ns("o"));
        net.setup()
            .unwrap_or_else(|e| panic!("building the test network: {e}"));
        Ok(net)
    }

    fn setup(&mut self) -> Result<(), String> {
        let net = self;
        for short in ["o", "r1", "r2", "c1", "c2"] {
            let ns = net.ns(short);
            if short != "o" {
                ip(&["netns", "add", &ns])?;
                net.names.push(ns.clone());
            }
            net.exec(&ns, &["link", "set", "lo", "up"])?;
            for kv in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                net.sysctl(&ns, kv)?;
            }
        }
        // (ns a, if a, addr a, ns b, if b, addr b)
        let links = [
            ("o", "o1", "10.0.1.1/24", "r1", "r1o", "10.0.1.2/24"),
            ("o", "o2", "10.0.2.1/24", "r2", "r2o", "10.0.2.2/24"),
            ("r1", "r1c", "10.1.1.1/24", "c1", "c1r", "10.1.1.2/24"),
            ("r2", "r2c", "10.1.2.1/24", "c2", "c2r", "10.1.2.2/24"),
        ];
        for (na, ia, aa, nb, ib, ab) in links {
            let (na, nb) = (net.ns(na), net.ns(nb));
            let (ta, tb) = (format!("{}{ia}", net.tag), format!("{}{ib}", net.tag));
            ip(&["link", "add", &ta, "type", "veth", "peer", "name", &tb])?;
            ip(&["link", "set", &ta, "netns", &na, "name", ia])?;
            ip(&["link", "set", &tb, "netns", &nb, "name", ib])?;
            net.exec(&na, &["addr", "add", aa, "dev", ia])?;
            net.exec(&nb, &["addr", "add", ab, "dev", ib])?;
            net.exec(&na, &["link", "set", ia, "up"])?;
            net.exec(&nb, &["link", "set", ib, "up"])?;
        }
        let (o, r1, r2, c1, c2) = (
            net.ns("o"),
            net.ns("r1"),
            net.ns("r2"),
            net.ns("c1"),
            net.ns("c2"),
        );
        net.exec(&o, &["addr", "add", "10.0.0.100/32", "dev", "lo"])?;
        for r in [&r1, &r2] {
            net.exec(r, &["addr", "add", "10.99.0.1/32", "dev", "lo"])?;
        }
        let routes: [(&str, &[&str]); 10] = [
            (&c1, &["route", "add", "default", "via", "10.1.1.1"]),
            (&c2, &["route", "add", "default", "via", "10.1.2.1"]),
            (&r1, &["route", "add", "10.0.0.100/32", "via", "10.0.1.1"]),
            (&r1, &["route", "add", "10.1.2.0/24", "via", "10.0.1.1"]),
            // Used once r1's own anycast address is withdrawn.
            (&r1, &["route", "add", "10.99.0.1/32", "via", "10.0.1.1"]),
            (&r2, &["route", "add", "10.0.0.100/32", "via", "10.0.2.1"]),
            (&r2, &["route", "add", "10.1.1.0/24", "via", "10.0.2.1"]),
            (&o, &["route", "add", "10.1.1.0/24", "via", "10.0.1.2"]),
            (&o, &["route", "add", "10.1.2.0/24", "via", "10.0.2.2"]),
            (&o, &["route", "add", "10.99.0.1/32", "via", "10.0.2.2"]),
        ];
        for (ns, args) in routes {
            net.exec(ns, args)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A server in a namespace, once it has printed where it listens.
fn serve_in(ns: &str, bin: &str, args: &[&str]) -> TestProcess {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, bin]).args(args);
    TestProcess::start(cmd, false)
}

#[test]
fn clients_use_their_nearest_relay_and_survive_its_withdrawal() {
    let net = match Net::build() {
        Ok(n) => n,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to create network namespaces: {e}"
            );
            eprintln!(
                "SKIPPED: cannot create network namespaces here ({e}); run as root with iproute2"
            );
            return;
        }
    };
    let dir = tempdir();
    let ca = dir.join("ca.pem");
    let _origin = serve_in(
        &net.ns("o"),
        env!("CARGO_BIN_EXE_mlcache-origin"),
        &[
            "--listen",
            "0.0.0.0:9100",
            "--authority",
            "10.0.0.100:9100",
            "--token",
            "netns-token",
            "--ca-out",
            ca.to_str().unwrap(),
            "--cadence",
            "300ms",
            "--chunk-size",
            "16KiB",
            "--key-rotation",
            "4",
        ],
    );
    let mut relays = Vec::new();
    for (r, unicast) in [("r1", "10.1.1.1"), ("r2", "10.1.2.1")] {
        let p = serve_in(
            &net.ns(r),
            env!("CARGO_BIN_EXE_mlcache-relay"),
            &[
                "--listen",
                "0.0.0.0:8080",
                "--allow-origin",
                "http://10.0.0.100:9100",
                "--advertise",
                &format!("http://{unicast}:8080"),
                "--id",
                &format!("relay-{r}"),
            ],
        );
        relays.push(Some(p));
    }
    let play = |c: &str| {
        let out = dir.join(format!("{c}.out"));
        let err = dir.join(format!("{c}.err"));
        let p = spawn_in(
            &net.ns(c),
            env!("CARGO_BIN_EXE_mlcache"),
            &[
                "play",
                "mlcache://10.0.0.100:9100/live/0",
                "--probe",
                "10.99.0.1:8080",
                "--ca",
                ca.to_str().unwrap(),
                "--token",
                "netns-token",
                "--chunks",
                &CHUNKS.to_string(),
                "--out",
                out.to_str().unwrap(),
                "--timeout",
                "10s",
            ],
            &[],
            &err,
        );
        (p, out, err)
    };
    let (mut p1, out1, err1) = play("c1");
    let (mut p2, out2, err2) = play("c2");

    // Once c1 is three chunks in, stop r1 and withdraw its anycast address.
    wait_until(Duration::from_secs(30), "c1 to play three chunks", || {
        std::fs::metadata(&out1)
            .map(|m| m.len() as usize >= 3 * CHUNK)
            .unwrap_or(false)
    });
    relays[0] = None; // killed
    net.exec(&net.ns("r1"), &["addr", "del", "10.99.0.1/32", "dev", "lo"])
        .unwrap();

    for (p, name) in [(&mut p1, "c1"), (&mut p2, "c2")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{name} did not finish");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{name} failed: {}",
            std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
        );
    }
    check_output(&out1, CHUNKS, CHUNK);
    check_output(&out2, CHUNKS, CHUNK);
    let log1 = std::fs::read_to_string(&err1).unwrap();
    let log2 = std::fs::read_to_string(&err2).unwrap();
    // Each client found its own relay first.
    assert!(
        log1.contains("unicast=Some(10.1.1.1:8080)"),
        "c1 used r1 first:\n{log1}"
    );
    assert!(
        log2.contains("unicast=Some(10.1.2.1:8080)"),
        "c2 used r2:\n{log2}"
    );
    assert!(!log2.contains("10.1.1.1"), "c2 never touched r1:\n{log2}");
    // c1 got chunks from r1, then from r2 or the origin, and said so.
    assert!(log1.contains("from relay 10.1.1.1:8080"), "{log1}");
    assert!(
        log1.contains("from relay 10.1.2.1:8080") || log1.contains("from origin 10.0.0.100:9100"),
        "c1 carried on elsewhere:\n{log1}"
    );
    assert!(
        log1.contains("refetched"),
        "the failover was reported:\n{log1}"
    );
    eprintln!(
        "c1's summary:\n{}",
        log1.lines()
            .filter(|l| l.starts_with("mlcache:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mlcache-anycast-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
