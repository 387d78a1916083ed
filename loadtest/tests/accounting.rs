//! The report's accounting, tested by running the real `loadtest` binary against
//! deliberately slow HTTP/1.1 servers started in-process on port 0: one that answers
//! every request after a fixed delay (so its capacity is exactly connections ÷ delay),
//! one that also sheds (503 with Retry-After) and fails (503 without), one that never
//! answers. Every test takes a few seconds at most.
//!
//! What the generator reports is checked against what the server itself did (the
//! requests it answered, and when), so the checks hold on a busy machine too; the
//! tests that time things run one at a time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Clone, Copy)]
enum Mode {
    /// 200 after the delay.
    Slow(Duration),
    /// By arrival order: a third shed at once (503 + Retry-After), a third fail after the
    /// delay (503 without Retry-After), a third 200 after the delay.
    ShedAndFail(Duration),
    /// Never answers.
    Silent,
}

/// Timing tests run one at a time: ten generators and servers at once on a small
/// machine would measure each other.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Server {
    url: String,
    /// Requests the server has answered.
    answered: Arc<AtomicU64>,
    /// When it answered each (just before writing the answer).
    times: Arc<Mutex<Vec<SystemTime>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    /// Answers the server wrote between `from` and `to` (Unix seconds).
    fn answered_between(&self, from: f64, to: f64) -> u64 {
        let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        times
            .iter()
            .map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs_f64()
            })
            .filter(|t| (from..to).contains(t))
            .count() as u64
    }
}

fn server(mode: Mode) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind port 0");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let answered = Arc::new(AtomicU64::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new(AtomicU64::new(0));
    let (counter, log) = (answered.clone(), times.clone());
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (answered, arrived, log) = (counter.clone(), arrived.clone(), log.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let (answered, log) = (answered.clone(), log.clone());
                    let n = arrived.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let (status, retry_after, delay) = match mode {
                            Mode::Slow(d) => (200, false, Some(d)),
                            Mode::ShedAndFail(d) => match n % 3 {
                                0 => (503, true, None),
                                1 => (503, false, Some(d)),
                                _ => (200, false, Some(d)),
                            },
                            Mode::Silent => std::future::pending().await,
                        };
                        if let Some(d) = delay {
                            tokio::time::sleep(d).await;
                        }
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                        *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        if retry_after {
                            resp.headers_mut()
                                .insert("retry-after", http::HeaderValue::from_static("1"));
                        }
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(SystemTime::now());
                        answered.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server {
        url: format!("http://{addr}"),
        answered,
        times,
        _rt: rt,
    }
}

struct Run {
    out: Output,
    report: Value,
    wall: Duration,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn u(&self, pointer: &str) -> u64 {
        u(&self.report, pointer)
    }
    fn f(&self, pointer: &str) -> f64 {
        f(&self.report, pointer)
    }
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a count in {v:#}"))
}

fn f(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}

/// Starts loadtest with `args`, its output captured, and when.
fn start(args: &[&str]) -> (std::process::Child, Instant) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run loadtest");
    (child, started)
}

/// Runs loadtest with `args` to its end: its output and how long it took.
fn exe(args: &[&str]) -> (Output, Duration) {
    let (child, started) = start(args);
    let out = child.wait_with_output().expect("loadtest ends");
    (out, started.elapsed())
}

/// Starts loadtest against `url` with the path fixed and no progress lines.
fn spawn(url: &str, args: &[&str]) -> (std::process::Child, Instant) {
    let mut all = vec!["--target", url, "--path", "/", "--progress", "0"];
    all.extend_from_slice(args);
    start(&all)
}

/// Waits for a run started by [`spawn`]; the report is its stdout.
fn finish((child, started): (std::process::Child, Instant)) -> Run {
    let out = child.wait_with_output().expect("loadtest ends");
    let wall = started.elapsed();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); status {:?}, stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Run { out, report, wall }
}

/// Runs loadtest against `url` with the path fixed and no progress lines.
fn loadtest(url: &str, args: &[&str]) -> Run {
    finish(spawn(url, args))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// The case, scaled down: offered 10× what the target can answer. The old
/// report said "2,000/s" and took ~20 s to send its backlog; now the run ends with its
/// window and says what was achieved and what was never sent.
#[test]
fn over_capacity_reports_achieved_and_counts_dropped_sends() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let r = loadtest(
        &s.url,
        &[
            "--connections",
            "4",
            "--rate",
            "2000",
            "--duration",
            "2s",
            "--warmup",
            "0s",
        ],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.f("/offered_rps"), 2000.0);
    // Achieved is what the server answered inside the window (give or take the 4
    // answers in flight across its edges), and 4 connections × 1 answer per 20 ms
    // cannot beat 200/s.
    let achieved = r.f("/achieved_rps");
    let from = r.f("/window_start_unix_s");
    let truth = s.answered_between(from, from + 2.0);
    assert!(
        (achieved * 2.0 - truth as f64).abs() <= 4.0,
        "achieved {achieved}/s, the server answered {truth} in the 2 s window"
    );
    assert!(achieved > 0.0 && achieved <= 205.0, "achieved {achieved}");
    let (offered, sent, dropped, late) = (
        r.u("/sends/offered"),
        r.u("/sends/sent"),
        r.u("/sends/dropped"),
        r.u("/sends/late"),
    );
    assert_eq!(offered, 4000);
    assert_eq!(offered, sent + dropped);
    assert!(sent <= 410 && dropped >= 3590, "sent {sent}");
    // All but each connection's first send waited for the previous answer: late, and
    // (nearly all) by the target's doing, not the generator's.
    assert!(late + 4 >= sent && late <= sent, "late {late} of {sent}");
    // (A send due behind the backlog is the target's even when the generator read the
    // answer before it late: CI, with the suite running beside, once put more than a
    // twentieth on the generator when its read lag counted.)
    let late_generator = r.u("/sends/late_generator");
    assert!(
        late_generator <= sent / 20,
        "late by the generator's doing: {late_generator} of {sent}"
    );
    // Every send made was answered (the last ones inside the grace), and the target
    // saw exactly those.
    assert_eq!(r.u("/answers/ok"), sent);
    assert!(r.u("/answers/after_window_in_grace") <= 4);
    assert_eq!(r.u("/errors"), 0);
    assert_eq!(s.answered.load(Ordering::SeqCst), sent);
    assert_eq!(
        achieved * 2.0,
        (sent - r.u("/answers/after_window_in_grace")) as f64
    );
    // Latency is from when each send was due: it grows with the backlog.
    assert!(r.f("/latency_ms/max") > 1000.0);
    // The window closed on time: 2 s plus one answer in flight, not 20 s of backlog.
    assert!(
        r.wall < Duration::from_millis(3500),
        "took {:?} for a 2 s window",
        r.wall
    );
    assert!(r.f("/wall_seconds") >= 2.0);
    assert!(
        r.stderr().contains("were never made"),
        "a warning says so: {}",
        r.stderr()
    );
}

/// Under capacity nothing waits for the target. Each connection's sends are 160 ms
/// apart and answered in ~20, so even after the generator itself is descheduled for
/// 100 ms (it happens on a busy machine) no send finds its connection busy: every late
/// send must be put down to the generator.
#[test]
fn under_capacity_nothing_waits_for_the_target() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let r = loadtest(
        &s.url,
        &[
            "--connections",
            "8",
            "--rate",
            "50",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--late-bound",
            "15ms",
        ],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let (sent, dropped) = (r.u("/sends/sent"), r.u("/sends/dropped"));
    assert_eq!(r.u("/sends/offered"), 100);
    assert_eq!(sent + dropped, 100);
    // Only a stall in the window's last moments could leave a send unmade.
    assert!(dropped <= 5, "dropped {dropped}");
    let (late, late_generator) = (r.u("/sends/late"), r.u("/sends/late_generator"));
    // At most 3 of 100: twice on 2026-11-30 a full `.ci/run` on this machine saw 2
    // sends here find their connection busy (never in five runs of this file alone;
    // the cause is not found; issue 10's note of that day says so).
    assert!(
        late - late_generator <= 3,
        "late {late}, of which the generator's {late_generator}"
    );
    // The typical send goes out on time.
    assert!(r.f("/generator/send_lag_ms/p50") < 5.0);
    // Every send made was answered; those due in the final moments inside the grace.
    assert_eq!(r.u("/answers/ok"), sent);
    assert_eq!(s.answered.load(Ordering::SeqCst), sent);
    let achieved = r.f("/achieved_rps");
    assert_eq!(
        achieved * 2.0,
        (sent - r.u("/answers/after_window_in_grace")) as f64
    );
    let from = r.f("/window_start_unix_s");
    let truth = s.answered_between(from, from + 2.0);
    assert!((achieved * 2.0 - truth as f64).abs() <= 8.0);
    assert!(r.f("/achieved_ratio") >= 0.9, "{}", r.f("/achieved_ratio"));
    assert!(r.f("/latency_ms/p50") >= 20.0);
    // Timeline: sends due per second as scheduled, answers per second as achieved.
    let tl = r.report["timeline"].as_array().expect("timeline");
    assert_eq!(tl.len(), 2);
    assert_eq!(u(&tl[0], "/offered"), 50);
    assert_eq!(u(&tl[0], "/sent"), 50);
    assert_eq!(
        u(&tl[0], "/completed") + u(&tl[1], "/completed"),
        sent - r.u("/answers/after_window_in_grace")
    );
}

#[test]
fn closed_loop_ends_with_its_window() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let r = loadtest(
        &s.url,
        &["--connections", "4", "--duration", "1s", "--warmup", "0s"],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.report["mode"], "closed-loop");
    assert!(r.report["offered_rps"].is_null() && r.report["sends"]["dropped"].is_null());
    let achieved = r.f("/achieved_rps");
    let from = r.f("/window_start_unix_s");
    let truth = s.answered_between(from, from + 1.0);
    assert!(
        (achieved - truth as f64).abs() <= 4.0,
        "achieved {achieved}/s, the server answered {truth} in the window"
    );
    assert!(achieved > 0.0 && achieved <= 205.0);
    let sent = r.u("/sends/sent");
    assert_eq!(s.answered.load(Ordering::SeqCst), sent, "{}", r.stderr());
    assert_eq!(
        achieved,
        (sent - r.u("/answers/after_window_in_grace")) as f64
    );
    assert!(r.wall < Duration::from_millis(2500), "took {:?}", r.wall);
}

/// A target that never answers: the run still ends at the window plus the grace, and
/// the sends in flight are counted unanswered (errors), the rest dropped.
#[test]
fn window_plus_grace_bounds_the_run() {
    let _serial = serial();
    let s = server(Mode::Silent);
    let r = loadtest(
        &s.url,
        &[
            "--connections",
            "4",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--grace",
            "500ms",
        ],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(
        r.wall >= Duration::from_millis(1500) && r.wall < Duration::from_millis(3000),
        "took {:?} for 1 s + 500 ms grace",
        r.wall
    );
    assert_eq!(r.u("/sends/offered"), 100);
    assert_eq!(r.u("/sends/sent"), 4);
    assert_eq!(r.u("/sends/dropped"), 96);
    assert_eq!(r.u("/answers/unanswered"), 4);
    assert_eq!(r.u("/errors"), 4);
    assert_eq!(r.f("/achieved_rps"), 0.0);
    assert!(r.stderr().contains("unanswered"), "{}", r.stderr());
}

#[test]
fn expect_sets_the_exit_status() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let base = [
        "--connections",
        "4",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ];
    let with = |rate: &str, e: &str| {
        let mut a = base.to_vec();
        a[3] = rate;
        a.extend_from_slice(&["--expect", e]);
        loadtest(&s.url, &a)
    };
    // Every answer takes ≥ 20 ms: p99 < 2 ms is missed, errors = 0 holds.
    let missed = with("50", "p99<2ms,errors=0");
    assert_eq!(missed.code(), Some(3), "{}", missed.stderr());
    assert!(
        missed.stderr().contains("MISSED p99<2ms"),
        "{}",
        missed.stderr()
    );
    assert!(missed.stderr().contains("ok     errors=0"));
    let verdicts = missed.report["expect"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 2);
    assert_eq!(verdicts[0]["passed"], false);
    assert!(f(&verdicts[0], "/observed") >= 20.0);
    assert_eq!(verdicts[1]["passed"], true);
    let passed = with("50", "p50>=20ms,errors=0,shed=0,achieved>=0.8,rps>=20");
    assert_eq!(passed.code(), Some(0), "{}", passed.stderr());
    // Overload (2,000/s against 200/s): achieved falls short, and so do the sends.
    let over = with("2000", "achieved>=0.99");
    assert_eq!(over.code(), Some(3), "{}", over.stderr());
    let over = with("2000", "dropped<10%");
    assert_eq!(over.code(), Some(3), "{}", over.stderr());
}

#[test]
fn bad_expect_and_stages_are_usage_errors_naming_the_part() {
    let run = |args: &[&str]| {
        let mut a = vec!["--target", "http://127.0.0.1:9"];
        a.extend_from_slice(args);
        let (out, _) = exe(&a);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--rate", "10", "--expect", "errors=0,p99<<2ms"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("\"p99<<2ms\"") && err.contains("\"<2ms\""),
        "{err}"
    );
    let (code, err) = run(&["--expect", "p98<2ms"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"p98\""), "{err}");
    let (code, err) = run(&["--stages", "10s@100,oops"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"oops\""), "{err}");
    let (code, err) = run(&["--stages", "1s@fast"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"fast\""), "{err}");
    let (code, err) = run(&["--stages", "1s@10", "--rate", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rate"), "{err}");
    // A closed loop has no offered rate to achieve.
    let (code, err) = run(&["--expect", "achieved>=0.9"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("achieved>=0.9"), "{err}");
}

#[test]
fn shed_answers_are_counted_apart_from_errors() {
    let _serial = serial();
    let s = server(Mode::ShedAndFail(Duration::from_millis(20)));
    let r = loadtest(
        &s.url,
        &[
            "--connections",
            "8",
            "--rate",
            "75",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--expect",
            "shed=0",
        ],
    );
    // Shedding is not an error, but a threshold on it is checked.
    assert_eq!(r.code(), Some(3), "{}", r.stderr());
    let sent = r.u("/sends/sent");
    assert!(sent >= 140, "sent {sent} of 150");
    assert_eq!(s.answered.load(Ordering::SeqCst), sent);
    let (ok, shed, failed) = (
        r.u("/answers/ok"),
        r.u("/answers/shed"),
        r.u("/answers/error_status"),
    );
    // The server deals them out in turn by arrival: shed, failed, ok, shed, …
    let third = |k: u64| (0..sent).filter(|n| n % 3 == k).count() as u64;
    assert_eq!((shed, failed, ok), (third(0), third(1), third(2)));
    assert_eq!(r.u("/errors"), failed);
    assert_eq!(r.u("/statuses/503"), shed + failed);
    // Shed answers come at once and have their own latency; the rest took ≥ 20 ms.
    assert_eq!(r.u("/shed_latency_ms/count"), shed);
    assert!(r.f("/shed_latency_ms/p50") < 20.0);
    assert_eq!(r.u("/latency_ms/count"), ok + failed);
    assert!(r.f("/latency_ms/p50") >= 20.0);
    // What the server served is reported beside what it answered, and a third shed
    // is warned of (achieved_rps counts the 503s).
    let served = r.f("/served_rps");
    assert!(
        (served - ok as f64 / 2.0).abs() < 1e-9,
        "served {served}, ok {ok}"
    );
    assert!(
        r.f("/achieved_rps") > served * 2.5,
        "sheds and failures are answers"
    );
    assert!(
        r.stderr().contains("were 503s the target shed: achieved"),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains(&format!("served {:.0}/s", served)),
        "{}",
        r.stderr()
    );
}

#[test]
fn hlog_is_written_and_merges() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let path = tmp("run.hlog");
    let p = path.to_str().expect("utf-8 path");
    let r = loadtest(
        &s.url,
        &[
            "--connections",
            "4",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--hlog",
            p,
        ],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    // Read it back with HdrHistogram's own interval log reader.
    use base64::Engine;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let bytes = std::fs::read(&path).expect("hlog written");
    let mut de = hdrhistogram::serialization::Deserializer::new();
    let (mut intervals, mut count, mut base) = (0, 0, None);
    for e in IntervalLogIterator::new(&bytes) {
        match e.expect("parses") {
            LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                assert!(i.tag().is_none(), "no shed answers, no shed interval");
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .expect("base64");
                let h: hdrhistogram::Histogram<u64> =
                    de.deserialize(&mut raw.as_slice()).expect("decodes");
                assert_eq!(i.start_timestamp(), Duration::from_secs(intervals));
                assert!(h.min() >= 20_000, "µs, all ≥ 20 ms: {}", h.min());
                intervals += 1;
                count += h.len();
            }
        }
    }
    let base = base.expect("BaseTime");
    assert!((base - r.f("/window_start_unix_s")).abs() < 0.01);
    assert_eq!(intervals, 2);
    assert_eq!(count, r.u("/latency_ms/count"));
    assert_eq!(count, r.u("/sends/sent"));
    // Two generators' logs merged.
    let (out, _) = exe(&["merge", p, p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: Value = serde_json::from_slice(&out.stdout).expect("merge JSON");
    assert_eq!(u(&merged, "/latency_ms/count"), 2 * count);
    assert_eq!(merged["files"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        f(&merged, "/latency_ms/p99"),
        r.f("/latency_ms/p99"),
        "merging a log with itself keeps its percentiles"
    );
}

#[test]
fn compare_puts_two_reports_side_by_side() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let (a, b) = (tmp("a.json"), tmp("b.json"));
    for (rate, path) in [("50", &a), ("100", &b)] {
        let r = loadtest(
            &s.url,
            &[
                "--connections",
                "4",
                "--rate",
                rate,
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--json",
                path.to_str().expect("utf-8 path"),
            ],
        );
        assert_eq!(r.code(), Some(0), "{}", r.stderr());
    }
    let read = |p: &PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(p).expect("report")).expect("JSON")
    };
    let (ja, jb) = (read(&a), read(&b));
    let (out, _) = exe(&[
        "compare",
        a.to_str().expect("utf-8"),
        b.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in\n{text}"))
            .to_string()
    };
    assert!(row("offered req/s").ends_with("2.000"), "{text}");
    let expected = f(&jb, "/achieved_rps") / f(&ja, "/achieved_rps");
    assert!(
        row("achieved req/s").ends_with(&format!("{expected:.3}")),
        "{text}"
    );
    assert!(text.contains("latency p99 ms"));
}

/// Stages: each reported on its own. 4 connections × 20 ms answer 200/s: the first
/// stage is under that, the second 4× over it, the third offers nothing and so the
/// connections drain the second stage's backlog (late) until the window closes.
#[test]
fn stages_are_reported_each() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(20)));
    let svg = tmp("stages.svg");
    let r = loadtest(
        &s.url,
        &[
            "--connections",
            "4",
            "--stages",
            "1s@100,1s@800,1s@0",
            "--warmup",
            "0s",
            "--svg",
            svg.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let st = r.report["stages"].as_array().expect("stages");
    assert_eq!(st.len(), 3);
    let offered: Vec<u64> = st.iter().map(|s| u(s, "/sends/offered")).collect();
    assert_eq!(offered, vec![100, 800, 0]);
    assert_eq!(r.u("/sends/offered"), 900);
    assert_eq!(r.f("/window_seconds"), 3.0);
    // Each stage's achieved rate is what the server answered during it.
    let from = r.f("/window_start_unix_s");
    for (i, stage) in st.iter().enumerate() {
        let t = from + i as f64;
        let truth = s.answered_between(t, t + 1.0);
        let achieved = f(stage, "/achieved_rps");
        assert!(
            (achieved - truth as f64).abs() <= 4.0,
            "stage {i}: achieved {achieved}/s, the server answered {truth}"
        );
    }
    // Stage 0: under capacity, everything sent.
    assert_eq!(u(&st[0], "/sends/sent"), 100);
    assert_eq!(u(&st[0], "/sends/dropped"), 0);
    // Stage 1: over capacity; what it could not send in its own second went out late
    // in stage 2, which had nothing due; the rest was dropped when the window closed.
    assert_eq!(u(&st[2], "/sends/sent"), 0);
    assert!(f(&st[2], "/achieved_rps") > 0.0);
    let sent1 = u(&st[1], "/sends/sent");
    assert!(sent1 <= 410, "stage 1 sent {sent1}");
    assert_eq!(u(&st[1], "/sends/dropped"), 800 - sent1);
    assert_eq!(
        r.u("/sends/dropped"),
        st.iter().map(|s| u(s, "/sends/dropped")).sum::<u64>()
    );
    // Stage 1's latency includes the backlog.
    assert!(f(&st[1], "/latency_ms/p99") > 700.0);
    assert!(f(&st[1], "/latency_ms/p99") > 5.0 * f(&st[0], "/latency_ms/p99"));
    let picture = std::fs::read_to_string(&svg).expect("svg written");
    assert!(picture.contains("stage 1: 800/s"), "stages drawn");
}

/// An answer is timed to when it reached this host, not to when the generator read
/// it. The generator is stopped (SIGSTOP) for 400 ms while every connection of a
/// closed loop has a request in flight at a server that answers in 50 ms: those
/// answers wait unread for ~350 ms. Timed at their reading they take ~400 ms (405 ms
/// measured on the old timing); timed at their arrival, ~50 ms, and the wait shows as
/// the read lag.
#[test]
fn a_stopped_generator_reports_its_read_lag_apart_from_latency() {
    let _serial = serial();
    let s = server(Mode::Slow(Duration::from_millis(50)));
    let run = spawn(
        &s.url,
        &["--connections", "8", "--duration", "2s", "--warmup", "0s"],
    );
    let pid = run.0.id().to_string();
    // Well inside the window (connecting 8 takes milliseconds).
    std::thread::sleep(Duration::from_millis(900));
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(400));
    signal("-CONT");
    let r = finish(run);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let read_lag_max = r.f("/generator/read_lag_ms/max");
    let latency_max = r.f("/latency_ms/max");
    assert!(
        read_lag_max >= 250.0,
        "the answers that arrived during the stop waited: read lag max {read_lag_max} ms"
    );
    // 50 ms of server delay, plus whatever a busy machine adds; far below the stop.
    assert!(
        latency_max < 200.0,
        "latency max {latency_max} ms: the generator's stop was counted as the target's"
    );
    assert!(r.u("/answers/ok") > 0);
}
