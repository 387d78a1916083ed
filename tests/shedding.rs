//! Shed only real overload, measured as a user first measures the tier: the release
//! binaries, the node on its embedded default (1,000,000 members) pinned to one core,
//! the load generator (`loadtest`, `grpc load`) on the other.
//!
//! Release, not the debug build the other tests run: a debug node spends about ten
//! times the CPU on a store read, so 64 connections keep a queue in front of it that a
//! release node never has, and what it sheds says nothing of the default a user runs.
//! The binaries are built once (`cargo build --release -p readtier -p loadtest`, which
//! `.ci/run`'s instruction guard needs after the tests anyway). The tests run one at a
//! time, each needing both cores, and assert counts and ratios, never timings.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::infra::NodeProcess;
use serde_json::Value;

/// The release binaries, and one data directory every node of these tests shares
/// (seeded by the first; a node's L1 starts cold at each start whatever the store).
struct Release {
    bin: PathBuf,
    data: tempfile::TempDir,
}

fn release() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| {
        // target/debug/readtier → target
        let target = Path::new(env!("CARGO_BIN_EXE_readtier"))
            .parent()
            .and_then(Path::parent)
            .expect("the test binary's target directory")
            .to_path_buf();
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "readtier",
                "-p",
                "loadtest",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release failed");
        Release {
            bin: target.join("release"),
            data: tempfile::tempdir().expect("temp dir"),
        }
    })
}

/// One test at a time: each drives both cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A release binary, pinned to `core` when the machine has two and `taskset`.
fn pinned(core: usize, name: &str) -> Command {
    let program = release().bin.join(name);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if cores >= 2 && taskset {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The default node (embedded store, 1,000,000 members) on core 0, with `extra`.
fn node(extra: &[(&str, &str)]) -> NodeProcess {
    let mut env = vec![(
        "READTIER_DATA_DIR",
        release().data.path().display().to_string(),
    )];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    NodeProcess::start_command(pinned(0, "readtier"), &env)
}

/// `loadtest` on core 1 against `node` with `args`; its JSON report.
fn loadtest(node: &NodeProcess, args: &[&str]) -> Value {
    let out = pinned(1, "loadtest")
        .arg("--target")
        .arg(format!("http://{}", node.addr))
        .args(["--progress", "0"])
        .args(args)
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest {args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("loadtest's report: {e}"))
}

/// Entitlement reads of members 1..=1,000,000, uniformly at random, or by Zipf's law.
const UNIFORM: [&str; 6] = [
    "--mix",
    "plans=0,entitlement=1,authorize=0",
    "--zipf",
    "0",
    "--members",
    "1000000",
];

fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no {pointer} in the report"))
}

/// A plain GET, its status and body (HTTP/1.0: the node closes after answering).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("an answer");
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The sum of every series of the metric `name` on `/metrics` at `admin`.
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lookups answered from L1, and lookups L1 did not answer, so far.
fn l1(admin: SocketAddr) -> (f64, f64) {
    (
        metric(admin, "readtier_l1_hits_total"),
        metric(admin, "readtier_l1_misses_total"),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The first measurement: a benchmark's closed loop of 64 connections over
/// random members, every lookup a store read, answered 99% 503 by the earlier gate. A
/// node at its capacity is busy, not overloaded: nothing is shed, on HTTP or gRPC.
#[test]
fn a_closed_loop_of_64_over_random_members_is_served_in_full_on_http_and_grpc() {
    let _one = serial();
    let node = node(&[("READTIER_GRPC_LISTEN", "127.0.0.1:0")]);
    let r = loadtest(
        &node,
        &[
            &["--connections", "64", "--duration", "8s", "--warmup", "1s"],
            &UNIFORM[..],
        ]
        .concat(),
    );
    let ok = num(&r, "/answers/ok");
    assert_eq!(num(&r, "/answers/shed"), 0.0, "shed over HTTP");
    assert_eq!(num(&r, "/errors"), 0.0);
    assert!(ok > 8.0 * 1000.0, "a real load: {ok} answers");
    eprintln!("HTTP: {ok} answers in 8 s, none shed");
    // gRPC, 64 calls in flight over 4 connections, members in turn from 1 (each call a
    // store read); `grpc load` fails on any call not OK (a shed is UNAVAILABLE).
    let grpc = node.grpc.expect("the gRPC listener");
    let out = pinned(1, "grpc")
        .args(["load", "--method", "entitlement", "--ids", "1000000"])
        .args([
            "--concurrency",
            "64",
            "--connections",
            "4",
            "--seconds",
            "5",
        ])
        .arg("--target")
        .arg(grpc.to_string())
        .arg("--server-pid")
        .arg(node.child.id().to_string())
        .output()
        .expect("run grpc load");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gRPC calls failed: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Value = serde_json::from_str(said.trim()).expect("grpc load's line");
    assert!(num(&calls, "/calls_per_s") > 1000.0, "{calls}");
    assert_eq!(num(&calls, "/errors"), 0.0);
    eprintln!("gRPC: {calls}");
    assert_eq!(
        metric(node.admin, "readtier_shed_total"),
        0.0,
        "nothing shed at all"
    );
}

/// An open loop at three times what the node serves is shed (fast 503s, not a queue),
/// `/healthz` answers throughout and memory stays put; and the L1 hit ratio the
/// dashboard draws, hits ÷ (hits + misses), is the share of lookups answered from L1,
/// sheds counted among those L1 did not answer.
#[test]
fn an_open_loop_at_three_times_capacity_is_shed_and_the_hit_ratio_stays_true() {
    let _one = serial();
    // L1 held to 20,000 members, as loadtest/shed.sh has it: memory that grows is then
    // a queue's, not L1 filling with the members served.
    let node = node(&[("READTIER_L1_CAPACITY", "20000")]);
    let capacity = num(
        &loadtest(
            &node,
            &[
                &["--connections", "64", "--duration", "4s", "--warmup", "1s"],
                &UNIFORM[..],
            ]
            .concat(),
        ),
        "/served_rps",
    );
    let rate = format!("{:.0}", 3.0 * capacity);
    let (hits0, misses0) = l1(node.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let (probes, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // /healthz every 100 ms, and the node's RSS with each.
    let rss = Arc::new(Mutex::new(Vec::new()));
    let health = {
        let (stop, probes, failed, admin) =
            (stop.clone(), probes.clone(), failed.clone(), node.admin);
        let (rss, pid) = (rss.clone(), node.child.id());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                probes.fetch_add(1, Ordering::Relaxed);
                if http_get(admin, "/healthz").0 != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                rss.lock().unwrap().push(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = loadtest(
        &node,
        &[
            &[
                "--connections",
                "1024",
                "--rate",
                &rate,
                "--duration",
                "8s",
                "--warmup",
                "0s",
            ],
            &UNIFORM[..],
        ]
        .concat(),
    );
    stop.store(true, Ordering::Relaxed);
    health.join().unwrap();
    let (hits1, misses1) = l1(node.admin);
    let (ok, shed) = (num(&r, "/answers/ok"), num(&r, "/answers/shed"));
    // Memory once the load's 1,024 connections are open (a second in), and its most
    // after: bounded. Not flat to the byte: the store's connections fill their page
    // caches as the reads go on (measured: 48 MB at 2 s, 75 MB at 12 s, then level);
    // what it rules out is a queue, which at 50,000 sends a second over capacity
    // would hold hundreds of thousands of requests within these 8 s.
    let rss = rss.lock().unwrap().clone();
    assert!(rss.len() > 20, "{} samples", rss.len());
    let (rss1, most) = (rss[10], rss[10..].iter().copied().max().unwrap_or(0));
    eprintln!(
        "capacity {capacity:.0}/s; at {rate}/s: {ok} served ({:.0}/s), {shed} shed; RSS {rss1} KiB a second in, at most {most} KiB; /healthz {} probes",
        num(&r, "/served_rps"),
        probes.load(Ordering::Relaxed)
    );
    assert_eq!(num(&r, "/errors"), 0.0);
    assert!(
        shed > 0.3 * (ok + shed),
        "well past capacity, most of it shed: {shed} shed, {ok} served"
    );
    assert!(
        num(&r, "/served_rps") > 0.2 * capacity,
        "and the rest served: {} a second of {capacity}",
        num(&r, "/served_rps")
    );
    assert!(probes.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "/healthz answered throughout"
    );
    assert!(
        most < 2 * rss1,
        "memory bounded: {rss1} KiB, then {most} KiB"
    );
    // What the dashboard draws against what the answers said.
    let (dh, dm) = (hits1 - hits0, misses1 - misses0);
    let drawn = dh / (dh + dm);
    let l1_answers = r
        .pointer("/served_from/l1")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let truth = l1_answers / (ok + shed);
    assert!(
        (drawn - truth).abs() < 0.01,
        "the hit ratio drawn {drawn:.4} is the share answered from L1 {truth:.4} ({dh} hits, {dm} misses, {shed} shed)"
    );
}

/// A node started cold under a steady open loop at 80% of what it serves warm (the
/// default mix of plans, entitlements and authorizations, members by Zipf's law):
/// within 30 s it sheds nothing and its L1 hit ratio is within 5 points of a warm
/// node's under the same load. With `l1.ttl` at 20 s, so that "warm" (a cache holding
/// a whole TTL of traffic) is reached in the test's time: what is tested is that
/// nothing, shedding above all, keeps a cold node from getting there. (With the default
/// 60 s a cold node is 4-6 points short at 30 s for want of history, whatever it does:
/// docs/PERFORMANCE.md; a restart loads its members back, tests/warm_start.rs.)
#[test]
fn a_cold_node_under_80_percent_of_its_warm_capacity_warms_and_stops_shedding() {
    let _one = serial();
    let settings = [
        ("READTIER_L1_TTL", "20s"),
        ("READTIER_L1_WARM_START", "false"),
    ];
    let warm = node(&settings);
    let closed = ["--connections", "64", "--warmup", "0s"];
    loadtest(&warm, &[&closed[..], &["--duration", "10s"]].concat());
    let capacity = num(
        &loadtest(&warm, &[&closed[..], &["--duration", "5s"]].concat()),
        "/served_rps",
    );
    let rate = format!("{:.0}", 0.8 * capacity);
    let open = ["--connections", "256", "--rate", &rate, "--warmup", "0s"];
    // A whole TTL at the load, then its hit ratio over 10 s more.
    loadtest(&warm, &[&open[..], &["--duration", "20s"]].concat());
    let (h0, m0) = l1(warm.admin);
    let r = loadtest(&warm, &[&open[..], &["--duration", "10s"]].concat());
    let (h1, m1) = l1(warm.admin);
    let warm_ratio = (h1 - h0) / ((h1 - h0) + (m1 - m0));
    assert_eq!(
        num(&r, "/answers/shed"),
        0.0,
        "a warm node at 80% sheds nothing"
    );
    drop(warm);

    let cold = node(&settings);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, admin) = (samples.clone(), stop.clone(), cold.admin);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                samples.lock().unwrap().push(l1(admin));
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let r = loadtest(&cold, &[&open[..], &["--duration", "40s"]].concat());
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let shed: Vec<u64> = r["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|t| t["shed"].as_u64().unwrap_or(0))
        .collect();
    let s = samples.lock().unwrap();
    let ratios: Vec<String> = s
        .windows(2)
        .map(|w| {
            let (dh, dm) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
            format!("{:.3}", dh / (dh + dm).max(1.0))
        })
        .collect();
    eprintln!(
        "warm capacity {capacity:.0}/s, load {rate}/s, warm hit ratio {warm_ratio:.3}; cold, per second: shed {shed:?}, hit ratio {ratios:?}"
    );
    assert!(shed.len() >= 40, "{shed:?}");
    // From second 30 of the load on (the sampler's first sample came at its start).
    assert!(
        shed[30..].iter().all(|&s| s == 0),
        "no sheds from second 30 on: {shed:?}"
    );
    assert!(s.len() >= 36, "{} samples", s.len());
    let ((h0, m0), (h1, m1)) = (s[30], s[35]);
    let cold_ratio = (h1 - h0) / ((h1 - h0) + (m1 - m0));
    assert!(
        cold_ratio >= warm_ratio - 0.05,
        "by second 30 the hit ratio {cold_ratio:.3} is within 5 points of a warm node's {warm_ratio:.3}"
    );
}
