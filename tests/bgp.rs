//! Anycast with a real BGP speaker: BIRD 2 in network namespaces built by
//! this test (iproute2, bird2, root), announcing the anycast /32 only while
//! the local relay's `/healthz` answers 200.
//!
//! ```text
//!  region A (AS 65000)                          region B (AS 65001)
//!   e1 (AS 65101, pref 200) ─┐                ┌─ e2 (AS 65102, pref 200)
//!   e3 (AS 65103, pref 150) ─┤ ra ══ eBGP ══ rb
//!   c1 ──────────────────────┤ │                └─ c2
//!                    origin o┘
//! ```
//!
//! Each edge host `eN` runs a relay (unicast 10.2.N.2, anycast 10.99.0.1 on
//! its loopback), BIRD with an eBGP session to its region's router
//! (hold 3 s, keepalive 1 s, BFD 3 × 100 ms) and the shipped health check
//! `deploy/bird/mlcache-anycast-check`, which enables the BIRD `protocol
//! static` holding the anycast route while `/healthz` passes and disables it
//! at the first failure. Each router prefers its own region's edges (local
//! preference 200, then 150) over the other region (100), and installs the
//! best route in its kernel table. Viewers `c1`, `c2` play a live stream
//! with `mlcache play --probe 10.99.0.1:8080`. The test proves, in order:
//!
//! 1. each viewer's probe reaches its region's nearest relay (c1 → e1,
//!    c2 → e2);
//! 2. SIGKILL of e1's relay: the health check withdraws e1's route at ra
//!    within the hold time; c1 re-probes onto e3 (region A's next edge) and
//!    loses no chunk;
//! 3. SIGTERM of e2's relay (planned drain): the route is gone from rb before
//!    e2's listener closes, and c2 moves with 0 failed fetches and no chunk
//!    lost;
//! 4. a hung edge host (e3's BIRD frozen with SIGSTOP): ra drops its route
//!    within the hold time (BFD, when up, within a fraction of a second).
//!
//! Figures are printed (`bgp:` lines). Every process is killed and every
//! namespace deleted on the way out, pass or fail. Where namespaces or BIRD
//! are not available the test says so and skips, except under CI, where it
//! fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{check_output, ip, spawn_in, wait_until, Proc};
use common::TestProcess;

const CHUNK: usize = 16 * 1024;
const CHUNKS: u64 = 60;
const ANYCAST: &str = "10.99.0.1";
const ORIGIN: &str = "10.0.1.2:9100";
/// BGP hold time configured on every session, seconds.
const HOLD: u64 = 3;
/// The relays' `--drain-delay`.
const DRAIN_DELAY: Duration = Duration::from_secs(2);

/// The namespaces of one run; deleted on drop.
struct Net {
    names: Vec<String>,
    tag: String,
}

/// (namespace a, interface a, address a, namespace b, interface b, address b)
const LINKS: [(&str, &str, &str, &str, &str, &str); 7] = [
    ("ra", "a1", "10.2.1.1/24", "e1", "uplink", "10.2.1.2/24"),
    ("ra", "a3", "10.2.3.1/24", "e3", "uplink", "10.2.3.2/24"),
    ("rb", "b2", "10.2.2.1/24", "e2", "uplink", "10.2.2.2/24"),
    ("ra", "ab", "10.3.0.1/24", "rb", "ba", "10.3.0.2/24"),
    ("ra", "ac", "10.1.1.1/24", "c1", "uplink", "10.1.1.2/24"),
    ("rb", "bc", "10.1.2.1/24", "c2", "uplink", "10.1.2.2/24"),
    ("ra", "ao", "10.0.1.1/24", "o", "uplink", "10.0.1.2/24"),
];

/// Hosts with one uplink: their default route.
const DEFAULTS: [(&str, &str); 6] = [
    ("e1", "10.2.1.1"),
    ("e2", "10.2.2.1"),
    ("e3", "10.2.3.1"),
    ("c1", "10.1.1.1"),
    ("c2", "10.1.2.1"),
    ("o", "10.0.1.1"),
];

impl Net {
    fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.tag)
    }

    fn exec(&self, short: &str, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(short);
        let mut a = vec!["-n", ns.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    fn sysctl(&self, short: &str, kv: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(short), "sysctl", "-qw", kv])
            .output()
            .map_err(|e| e.to_string())?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| format!("sysctl {kv} in {short} failed"))
    }

    /// Builds the topology. `Err` only when namespaces cannot be created at
    /// all; any later failure is a test failure (and still cleans up).
    fn build() -> Result<Net, String> {
        let mut net = Net {
            names: Vec::new(),
            tag: format!("mlb{}", std::process::id() % 100_000),
        };
        ip(&["netns", "add", &net.ns("ra")])?;
        net.names.push(net.ns("ra"));
        net.setup()
            .unwrap_or_else(|e| panic!("building the test network: {e}"));
        Ok(net)
    }

    fn setup(&mut self) -> Result<(), String> {
        for short in ["ra", "rb", "e1", "e2", "e3", "c1", "c2", "o"] {
            if short != "ra" {
                ip(&["netns", "add", &self.ns(short)])?;
                self.names.push(self.ns(short));
            }
            self.exec(short, &["link", "set", "lo", "up"])?;
            for kv in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                self.sysctl(short, kv)?;
            }
        }
        for (i, (na, ia, aa, nb, ib, ab)) in LINKS.into_iter().enumerate() {
            let (ta, tb) = (format!("{}x{i}a", self.tag), format!("{}x{i}b", self.tag));
            ip(&["link", "add", &ta, "type", "veth", "peer", "name", &tb])?;
            ip(&["link", "set", &ta, "netns", &self.ns(na), "name", ia])?;
            ip(&["link", "set", &tb, "netns", &self.ns(nb), "name", ib])?;
            self.exec(na, &["addr", "add", aa, "dev", ia])?;
            self.exec(nb, &["addr", "add", ab, "dev", ib])?;
            self.exec(na, &["link", "set", ia, "up"])?;
            self.exec(nb, &["link", "set", ib, "up"])?;
        }
        for (host, gw) in DEFAULTS {
            self.exec(host, &["route", "add", "default", "via", gw])?;
        }
        // The anycast address, on every edge host's loopback. The relay
        // accepts on it always; whether it is reachable is up to BGP.
        for e in ["e1", "e2", "e3"] {
            self.exec(e, &["addr", "add", &format!("{ANYCAST}/32"), "dev", "lo"])?;
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

/// BIRD's configuration for a region router: eBGP to its edges (anycast /32
/// only, local preference by edge), eBGP to the other region (everything,
/// local preference 100), connected networks exported, best routes in the
/// kernel.
fn router_conf(
    log: &Path,
    id: &str,
    asn: u32,
    edges: &[(&str, &str, u32, u32)],
    peer: (&str, u32),
) -> String {
    let mut c = format!(
        r#"log "{log}" all;
router id {id};
protocol device {{ scan time 2; }}
protocol direct {{ ipv4; interface "-lo", "*"; }}
protocol kernel {{
    ipv4 {{ import none; export filter {{ if source = RTS_DEVICE then reject; accept; }}; }};
}}
protocol bfd {{
    interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
protocol bgp region {{
    local as {asn}; neighbor {peer_ip} as {peer_as};
    hold time {HOLD}; keepalive time 1; connect retry time 1; error wait time 1, 5; bfd on;
    ipv4 {{ import filter {{ bgp_local_pref = 100; accept; }}; export all; }};
}}
"#,
        log = log.display(),
        peer_ip = peer.0,
        peer_as = peer.1,
    );
    for (name, nbr, nbr_as, pref) in edges {
        c.push_str(&format!(
            r#"protocol bgp {name} {{
    local as {asn}; neighbor {nbr} as {nbr_as};
    hold time {HOLD}; keepalive time 1; connect retry time 1; error wait time 1, 5; bfd on;
    ipv4 {{
        import filter {{ if net != {ANYCAST}/32 then reject; bgp_local_pref = {pref}; accept; }};
        export none;
    }};
}}
"#
        ));
    }
    c
}

/// BIRD's configuration for an edge host, as docs/deployment.md gives it:
/// the anycast route in a `protocol static` that starts disabled (the health
/// check enables it), exported to the upstream router and nothing else.
fn edge_conf(log: &Path, id: &str, asn: u32, upstream: (&str, u32)) -> String {
    format!(
        r#"log "{log}" all;
router id {id};
protocol device {{ scan time 2; }}
protocol bfd {{
    interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
protocol static mlcache_anycast {{
    disabled;
    ipv4;
    route {ANYCAST}/32 blackhole;
}}
protocol bgp upstream {{
    local as {asn}; neighbor {up} as {up_as};
    hold time {HOLD}; keepalive time 1; connect retry time 1; error wait time 1, 5; bfd on;
    ipv4 {{ import none; export where proto = "mlcache_anycast"; }};
}}
"#,
        log = log.display(),
        up = upstream.0,
        up_as = upstream.1,
    )
}

/// A BIRD daemon in a namespace, with its own control socket.
struct Bird {
    proc: Proc,
    sock: PathBuf,
    ns: String,
}

impl Bird {
    fn start(net: &Net, short: &str, conf: &str, dir: &Path) -> Bird {
        let path = dir.join(format!("{short}.conf"));
        std::fs::write(&path, conf).unwrap();
        let sock = dir.join(format!("{short}.ctl"));
        let pid = dir.join(format!("{short}.pid"));
        let ns = net.ns(short);
        let proc = spawn_in(
            &ns,
            "bird",
            &[
                "-f",
                "-c",
                path.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
                "-P",
                pid.to_str().unwrap(),
            ],
            &[],
            &dir.join(format!("{short}.stderr")),
        );
        Bird { proc, sock, ns }
    }

    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "birdc", "-s"])
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The protocols BIRD holds a route to the anycast /32 from, and which
    /// of them is best (`birdc show route`).
    fn anycast_routes(&self) -> (Vec<String>, Option<String>) {
        let out = self.birdc(&["show", "route", &format!("{ANYCAST}/32")]);
        let mut all = Vec::new();
        let mut best = None;
        for line in out.lines() {
            let Some((_, rest)) = line.split_once(" [") else {
                continue;
            };
            let Some(proto) = rest.split_whitespace().next() else {
                continue;
            };
            if !line.contains("unicast") && !line.contains("blackhole") {
                continue;
            }
            if line.contains(" * ") {
                best = Some(proto.to_string());
            }
            all.push(proto.to_string());
        }
        (all, best)
    }
}

/// The next hop a namespace's kernel uses for the anycast address.
fn fib_next_hop(net: &Net, short: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &net.ns(short), "route", "get", ANYCAST])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .unwrap_or("none")
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn played(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize / CHUNK)
}

/// Why this host cannot run the test, if it cannot.
fn missing_tools() -> Option<String> {
    for tool in ["bird", "birdc", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install bird2 curl)"
            ));
        }
    }
    None
}

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must be able to run the BGP anycast test: {why}"
    );
    eprintln!("SKIPPED: {why}; run as root with iproute2 and bird2");
}

#[test]
fn bgp_anycast_follows_relay_health() {
    if let Some(why) = missing_tools() {
        return skip_or_fail(&why);
    }
    let net = match Net::build() {
        Ok(n) => n,
        Err(e) => return skip_or_fail(&format!("cannot create network namespaces ({e})")),
    };
    let dir = std::env::temp_dir().join(format!("mlcache-bgp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/bird/mlcache-anycast-check"
    );

    // Routers and edge BIRDs.
    let ra = Bird::start(
        &net,
        "ra",
        &router_conf(
            &dir.join("ra.log"),
            "10.3.0.1",
            65000,
            &[
                ("e1", "10.2.1.2", 65101, 200),
                ("e3", "10.2.3.2", 65103, 150),
            ],
            ("10.3.0.2", 65001),
        ),
        &dir,
    );
    let rb = Bird::start(
        &net,
        "rb",
        &router_conf(
            &dir.join("rb.log"),
            "10.3.0.2",
            65001,
            &[("e2", "10.2.2.2", 65102, 200)],
            ("10.3.0.1", 65000),
        ),
        &dir,
    );
    // (edge, unicast address and router id, AS, upstream router, its AS)
    let edges = [
        ("e1", "10.2.1.2", 65101, "10.2.1.1", 65000),
        ("e2", "10.2.2.2", 65102, "10.2.2.1", 65001),
        ("e3", "10.2.3.2", 65103, "10.2.3.1", 65000),
    ];
    let edge_birds: Vec<Bird> = edges
        .iter()
        .map(|&(e, unicast, asn, upstream, upstream_as)| {
            let log = dir.join(format!("{e}.log"));
            let conf = edge_conf(&log, unicast, asn, (upstream, upstream_as));
            Bird::start(&net, e, &conf, &dir)
        })
        .collect();

    let ca = dir.join("ca.pem");
    let _origin = TestProcess::start(
        {
            let mut c = Command::new("ip");
            c.args([
                "netns",
                "exec",
                &net.ns("o"),
                env!("CARGO_BIN_EXE_mlcache-origin"),
            ])
            .args([
                "--listen",
                "0.0.0.0:9100",
                "--authority",
                ORIGIN,
                "--token",
                "bgp-token",
                "--ca-out",
                ca.to_str().unwrap(),
                "--cadence",
                "200ms",
                "--chunk-size",
                "16KiB",
                "--key-rotation",
                "4",
            ]);
            c
        },
        false,
    );
    let mut relays = Vec::new();
    let mut checks = Vec::new();
    for (e, unicast, ..) in edges {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &net.ns(e),
            env!("CARGO_BIN_EXE_mlcache-relay"),
        ])
        .args([
            "--listen",
            "0.0.0.0:8080",
            "--admin",
            "127.0.0.1:9090",
            "--allow-origin",
            &format!("http://{ORIGIN}"),
            "--advertise",
            &format!("http://{unicast}:8080"),
            "--id",
            &format!("relay-{e}"),
            "--drain-delay",
            "2s",
            "--shutdown-grace",
            "2s",
        ])
        .env("RUST_LOG", "info");
        relays.push(Some(TestProcess::start(c, true)));
        let sock = dir.join(format!("{e}.ctl"));
        checks.push(spawn_in(
            &net.ns(e),
            check,
            &[
                "http://127.0.0.1:9090/healthz",
                "mlcache_anycast",
                sock.to_str().unwrap(),
            ],
            &[("INTERVAL", "0.2"), ("RISE", "2"), ("TIMEOUT", "0.5")],
            &dir.join(format!("{e}.check.log")),
        ));
    }

    // Converged: each router's best route is its region's first edge, and
    // the other region's routes reached it (the origin from rb's side).
    let converge = wait_until(Duration::from_secs(40), "BGP to converge", || {
        let (all_a, best_a) = ra.anycast_routes();
        let (all_b, best_b) = rb.anycast_routes();
        all_a.len() == 3
            && best_a.as_deref() == Some("e1")
            && all_b.len() == 2
            && best_b.as_deref() == Some("e2")
    });
    let bfd = ra.birdc(&["show", "bfd", "sessions"]);
    let bfd_up = bfd.lines().filter(|l| l.contains(" Up ")).count();
    eprintln!("bgp: converged {converge:?} after start; BFD sessions up at ra: {bfd_up}\n{bfd}");
    assert_eq!(fib_next_hop(&net, "ra"), "10.2.1.2", "ra forwards to e1");
    assert_eq!(fib_next_hop(&net, "rb"), "10.2.2.2", "rb forwards to e2");

    // Viewers, one per region.
    let play = |c: &str| {
        let out = dir.join(format!("{c}.out"));
        let err = dir.join(format!("{c}.err"));
        let p = spawn_in(
            &net.ns(c),
            env!("CARGO_BIN_EXE_mlcache"),
            &[
                "play",
                &format!("mlcache://{ORIGIN}/live/0"),
                "--probe",
                &format!("{ANYCAST}:8080"),
                "--ca",
                ca.to_str().unwrap(),
                "--token",
                "bgp-token",
                "--chunks",
                &CHUNKS.to_string(),
                "--out",
                out.to_str().unwrap(),
                "--timeout",
                "3s",
            ],
            &[],
            &err,
        );
        (p, out, err)
    };
    let (mut p1, out1, err1) = play("c1");
    let (mut p2, out2, err2) = play("c2");

    // 1. Nearest relay per region.
    wait_until(
        Duration::from_secs(30),
        "both viewers to play 5 chunks",
        || played(&out1) >= 5 && played(&out2) >= 5,
    );
    assert!(
        read(&err1).contains("unicast=Some(10.2.1.2:8080)"),
        "c1 → e1:\n{}",
        read(&err1)
    );
    assert!(
        read(&err2).contains("unicast=Some(10.2.2.2:8080)"),
        "c2 → e2:\n{}",
        read(&err2)
    );

    // 2. SIGKILL e1's relay: the health check withdraws, ra moves to e3.
    let kill_at = Instant::now();
    relays[0].as_mut().unwrap().kill();
    let kill_withdraw = wait_until(Duration::from_secs(HOLD), "ra to drop e1's route", || {
        !ra.anycast_routes().0.contains(&"e1".to_string())
    });
    assert_eq!(
        ra.anycast_routes().1.as_deref(),
        Some("e3"),
        "region A falls back to e3"
    );
    wait_until(
        Duration::from_secs(2),
        "ra's kernel to forward to e3",
        || fib_next_hop(&net, "ra") == "10.2.3.2",
    );
    wait_until(Duration::from_secs(10), "c1 to probe e3", || {
        read(&err1).contains("unicast=Some(10.2.3.2:8080)")
    });
    let c1_moved = kill_at.elapsed();
    eprintln!(
        "bgp: SIGKILL e1 relay → route withdrawn at ra in {kill_withdraw:?}; c1 on e3 after {c1_moved:?}"
    );

    // 3. Planned drain of e2: the route must leave rb before the listener closes.
    let c2_before = played(&out2);
    assert!(
        c2_before < CHUNKS as usize - 10,
        "c2 still has chunks to play"
    );
    let term_at = Instant::now();
    relays[1].as_ref().unwrap().sigterm();
    let (mut withdrawn, mut closed) = (None, None);
    let e2 = relays[1].as_ref().unwrap();
    wait_until(
        DRAIN_DELAY + Duration::from_secs(3),
        "e2 to withdraw and close",
        || {
            if withdrawn.is_none() && !rb.anycast_routes().0.contains(&"e2".to_string()) {
                withdrawn = Some(term_at.elapsed());
            }
            if closed.is_none() && e2.logged("listener closed") {
                closed = Some(term_at.elapsed());
            }
            withdrawn.is_some() && closed.is_some()
        },
    );
    let (withdrawn, closed) = (withdrawn.unwrap(), closed.unwrap());
    eprintln!("bgp: SIGTERM e2 relay → route withdrawn at rb in {withdrawn:?}; listener closed at {closed:?}");
    assert!(
        withdrawn < closed,
        "withdrawn ({withdrawn:?}) before the listener closed ({closed:?})"
    );
    assert!(withdrawn < DRAIN_DELAY, "withdrawn within --drain-delay");
    assert_eq!(
        fib_next_hop(&net, "rb"),
        "10.3.0.1",
        "region B now goes to region A"
    );

    for (p, name, err) in [(&mut p1, "c1", &err1), (&mut p2, "c2", &err2)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{name} did not finish");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{name} failed:\n{}", read(err));
    }
    check_output(&out1, CHUNKS, CHUNK);
    check_output(&out2, CHUNKS, CHUNK);
    let (log1, log2) = (read(&err1), read(&err2));
    let summary = |log: &str| {
        log.lines()
            .filter(|l| l.starts_with("mlcache:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let failed = |log: &str| log.lines().filter(|l| l.contains("refetched")).count();
    eprintln!(
        "bgp: c1 summary ({} failed fetches):\n{}",
        failed(&log1),
        summary(&log1)
    );
    eprintln!(
        "bgp: c2 summary ({} failed fetches):\n{}",
        failed(&log2),
        summary(&log2)
    );
    // c1 stayed in region A: e1, then (after the origin, if it probed before
    // the withdrawal) e3; never region B's e2.
    assert!(log1.contains("from relay 10.2.1.2:8080"), "{log1}");
    assert!(log1.contains("from relay 10.2.3.2:8080"), "{log1}");
    assert!(
        !log1.contains("10.2.2.2"),
        "c1 never left region A:\n{log1}"
    );
    // c2 moved on the drain signal, without a single failed fetch.
    assert!(log2.contains("from relay 10.2.2.2:8080"), "{log2}");
    assert!(log2.contains("nearest relay is draining"), "{log2}");
    assert_eq!(
        failed(&log2),
        0,
        "no failed fetch across the drain:\n{log2}"
    );
    assert!(!log2.contains("source failed"), "{log2}");

    // 4. A hung edge host: e3's BIRD stops answering; ra must notice by
    // itself (BFD, else the hold timer).
    edge_birds[2].proc.signal("-STOP");
    let hang_withdraw = wait_until(
        Duration::from_secs(HOLD + 1),
        "ra to drop e3's route",
        || !ra.anycast_routes().0.contains(&"e3".to_string()),
    );
    eprintln!(
        "bgp: e3's BIRD frozen → route withdrawn at ra in {hang_withdraw:?} (hold time {HOLD} s; BFD sessions up before: {bfd_up})"
    );
    assert!(
        hang_withdraw < Duration::from_secs(HOLD),
        "within the hold time"
    );

    drop(checks);
    drop(edge_birds);
    drop((ra, rb));
    std::fs::remove_dir_all(&dir).ok();
}
