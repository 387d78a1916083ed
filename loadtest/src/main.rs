//! `loadtest`: the load generator readtier's benchmarks use.
//!
//! - **open loop** (`--rate R`, or `--stages 10s@20000,10s@60000,10s@0`): sends are
//!   *scheduled* at a fixed total rate, spread over the connections; latency is measured
//!   from each send's intended time, so a target that stalls cannot hide the queue it
//!   causes (no coordinated omission), less the generator's own lag (how late a send
//!   went out after it was due with its connection free), which is the generator's
//!   doing and is reported apart (`send_lag`). A request is timed from when the
//!   generator's connection task got round to writing it, not from when it was handed
//!   to that task (the hop between is `write_lag`), and its answer to when its last
//!   byte reached this host's kernel (its receive stamp), not to when the generator
//!   got round to reading it (`read_lag`): both waits are the generator's, reported
//!   apart.
//! - **closed loop** (`--rate 0`, the default): every connection sends its next request
//!   as soon as the last answer arrives; this measures maximum throughput.
//!
//! The run ends when its window does. Sends still due then are *dropped* and counted,
//! not made afterwards; answers in flight get a short grace (`--grace`). The report
//! gives the offered rate, the achieved rate (answers completed inside the window ÷ the
//! window), dropped and late sends, shed answers (503 with Retry-After) apart from
//! errors, and the generator's own send lag, so an overloaded target and a starved
//! generator are told apart. `--expect` turns thresholds into the exit status (3 when
//! one is missed); `--hlog` writes an HdrHistogram interval log; `loadtest compare`
//! and `loadtest merge` put reports and logs together.
//!
//! Requests are drawn from a mix of plans (countries by population or a list),
//! entitlement and authorize (member ids from a Zipf distribution). Optionally a
//! freshness probe writes to the store while the load runs and measures the time from
//! commit to the new value being answered by every target.
//!
//! Example: `loadtest --target http://127.0.0.1:8080 --rate 20000 --duration 20s
//! --expect 'p99<5ms,errors=0,achieved>=0.99' --json out.json --svg out.svg`.

mod compare;
mod expect;
mod freshness;
mod hlog;
mod report;
mod schedule;
mod stamped;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use report::{Late, Outcome, Percentiles, Place, Recorder, Report, Second, StagePlan};
use schedule::{parse_duration, Cursor, Schedule, Stage};
use workload::{Countries, Kind, Mix, Rng, Zipf};

/// Exit status when an `--expect` threshold is missed (1: the run failed; 2: bad usage).
const EXIT_MISSED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "Load generator for readtier",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put two JSON reports side by side, with B ÷ A for every figure.
    Compare { a: PathBuf, b: PathBuf },
    /// Merge .hlog files (runs from several generator machines) and print the combined
    /// latency as JSON.
    Merge {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write the JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// `--stages`, parsed (a newtype so clap takes the whole list as one value).
#[derive(Debug, Clone)]
struct Stages(Vec<Stage>);

/// `--expect`, parsed.
#[derive(Debug, Clone)]
struct Expect(Vec<expect::Clause>);

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Base URL of a target node; repeat (or separate with commas) for several.
    #[arg(long, required = true, value_delimiter = ',')]
    target: Vec<String>,
    /// Open connections in total (spread over the targets).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests per second in total (open loop); 0 = as fast as answers come (closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Measured window, e.g. 30s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Open-loop stages instead of --rate and --duration: DURATION@RATE, or
    /// DURATION@FROM..TO for a linear ramp, e.g. 10s@20000,10s@20000..60000,10s@0.
    /// Each stage is reported on its own; the warm-up runs at the first stage's rate.
    #[arg(long, value_parser = parse_stages, conflicts_with_all = ["rate", "duration"])]
    stages: Option<Stages>,
    /// Unmeasured warm-up before the window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long answers in flight when the window closes are waited for; sends still
    /// unanswered then are counted as errors (unanswered).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    grace: Duration,
    /// Open loop: a send made more than this after it was due is counted as late.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    late_bound: Duration,
    /// Thresholds that fail the run (exit status 3), e.g. 'p99<2ms,errors=0,achieved>=0.99'.
    /// Metrics: p50 p90 p99 p999 max send_lag_p99 (latency: us, ms, s), errors shed
    /// dropped late (a count, or % of sends), achieved (ratio to offered), rps.
    #[arg(long, value_parser = parse_expect)]
    expect: Option<Expect>,
    /// Request mix: fractions of plans, entitlement and authorize.
    #[arg(long, default_value = "plans=0.5,entitlement=0.3,authorize=0.2")]
    mix: String,
    /// Member ids are drawn from 1..=members.
    #[arg(long, default_value_t = 1_000_000)]
    members: u64,
    /// Zipf exponent of member popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// `population`, or a comma-separated list of country codes.
    #[arg(long, default_value = "population")]
    countries: String,
    /// Fixed path to request instead of the mix (for baseline comparisons).
    #[arg(long)]
    path: Option<String>,
    /// Plans requests carry `&visitor=v<n>`, n uniform in 0..visitors (0: no visitor),
    /// so each lands in its cells of the country's running experiments.
    #[arg(long, default_value_t = 0)]
    visitors: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the report as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per second) here.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// Freshness probe: writes per second to the store while the load runs.
    #[arg(long, default_value_t = 0.0)]
    write_rate: f64,
    /// The store the probe writes to: a postgres:// URL or an SQLite file path
    /// (default: READTIER_STORE_URL).
    #[arg(long)]
    store_url: Option<String>,
    /// Probe members are drawn from 1..=probe_members.
    #[arg(long, default_value_t = 1000)]
    probe_members: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1)]
    progress: u64,
}

fn parse_stages(s: &str) -> Result<Stages, schedule::StagesError> {
    schedule::parse_stages(s).map(Stages)
}

fn parse_expect(s: &str) -> Result<Expect, expect::ExpectError> {
    expect::parse(s).map(Expect)
}

/// One target, parsed.
#[derive(Clone)]
struct Target {
    base: String,
    /// `host:port`: where to connect, and the Host header.
    host: String,
}

fn target(base: &str) -> anyhow::Result<Target> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("target {base:?} must start with http://"))?;
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    Ok(Target {
        base: base.trim_end_matches('/').to_string(),
        host,
    })
}

/// Shared settings of the connection tasks.
struct Plan {
    mix: Mix,
    zipf: Zipf,
    countries: Countries,
    path: Option<String>,
    visitors: u64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Open loop: when each send is due.
    schedule: Option<Schedule>,
    connections: u64,
    late_bound: Duration,
    /// Stage start times, seconds from the window start (one stage in closed loop).
    stage_starts: Vec<f64>,
    /// For progress lines: answers, sends, error answers and failures, shed answers.
    done: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
    shed: AtomicU64,
}

impl Plan {
    /// The stage and second of the window an instant falls in.
    fn window_place(&self, at: Instant) -> Option<Place> {
        if at < self.measure_from || at >= self.end {
            return None;
        }
        let t = (at - self.measure_from).as_secs_f64();
        let stage = self
            .stage_starts
            .partition_point(|s| *s <= t)
            .saturating_sub(1);
        Some((stage, t as usize))
    }
}

fn request(plan: &Plan, t: &Target, rng: &mut Rng) -> http::Request<Full<Bytes>> {
    let b = http::Request::builder().header("host", &t.host);
    if let Some(p) = &plan.path {
        return b
            .method("GET")
            .uri(p.as_str())
            .body(Full::new(Bytes::new()))
            .expect("valid request");
    }
    match plan.mix.sample(rng) {
        Kind::Plans if plan.visitors > 0 => b
            .uri(format!(
                "/v1/plans?country={}&visitor=v{}",
                plan.countries.sample(rng),
                rng.next_u64() % plan.visitors
            ))
            .body(Full::new(Bytes::new())),
        Kind::Plans => b
            .uri(format!("/v1/plans?country={}", plan.countries.sample(rng)))
            .body(Full::new(Bytes::new())),
        Kind::Entitlement => b
            .uri(format!("/v1/members/{}/entitlement", plan.zipf.sample(rng)))
            .body(Full::new(Bytes::new())),
        Kind::Authorize => {
            let id = plan.zipf.sample(rng);
            let device = ["tv", "computer", "mobile", "tablet"][(rng.next_u64() % 4) as usize];
            let streams = rng.next_u64() % 3;
            b.method("POST")
                .uri("/v1/playback/authorize")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"member_id\":{id},\"device_class\":\"{device}\",\"active_streams\":{streams}}}"
                ))))
        }
    }
    // Built from a fixed method, a path of digits and country codes, and fixed headers.
    .expect("valid request")
}

/// A connection's request sender and where its socket notes its write and read times.
type Sender = (http1::SendRequest<Full<Bytes>>, Arc<stamped::Stamps>);

async fn connect(t: &Target) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(&t.host).await?;
    stream.set_nodelay(true)?;
    let (stream, stamps) = stamped::Stamped::new(stream);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, stamps))
}

/// Every runtime thread's recorder, registered on first use.
static RECORDERS: Mutex<Vec<Arc<Mutex<Recorder>>>> = Mutex::new(Vec::new());

thread_local! {
    /// Connections record into their thread's recorder: one per core rather than one
    /// per connection keeps the hot loop in cache and the merge at the end small (1,024
    /// connections × per-second histograms of 139 KB would be most of a gigabyte to
    /// walk). It sits behind a mutex, uncontended (tasks on one thread never run at
    /// once), so that `run` can take it while a connection abandoned at the end of the
    /// grace is still alive.
    static LOCAL: Arc<Mutex<Recorder>> = {
        let r = Arc::new(Mutex::new(Recorder::new()));
        lock(&RECORDERS).push(r.clone());
        r
    };
}

/// A poisoned lock only means a connection task panicked; what it recorded still counts.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records into this thread's recorder.
fn record<R>(f: impl FnOnce(&mut Recorder) -> R) -> R {
    LOCAL.with(|r| f(&mut lock(r)))
}

/// Waits until `at`. tokio's timer has a 1 ms grain: sleep to just short of it, then
/// yield until it, so sends go out on time rather than in 1 ms bursts. The yielding
/// costs CPU only in the last millisecond before a send, and lets other tasks run.
async fn pace(at: Instant) {
    let early = at.checked_sub(Duration::from_millis(1)).unwrap_or(at);
    if early > Instant::now() {
        tokio::time::sleep_until(early.into()).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// One connection: sends until the window closes, records what it measured.
async fn connection(plan: Arc<Plan>, t: Target, index: usize, mut sender: Option<Sender>) {
    let mut rng = Rng::new(index as u64 + 1);
    let mut cursor = Cursor::default();
    // Open loop: this connection's slots are index, index + C, index + 2C, …
    let mut slot = index as u64;
    // When the connection last became free (connected, or its last answer arrived):
    // a send due before then waited for the target, not for the generator.
    let mut free_since = Instant::now();
    if plan.schedule.is_none() {
        // A closed loop sends from the plan's start, like an open one: a send made
        // before it would be answered but neither warm-up nor window (with no warm-up
        // the test suite saw the target answer one more than was counted as sent).
        tokio::time::sleep_until(plan.start.into()).await;
    }
    loop {
        let (intended, place) = match &plan.schedule {
            Some(s) => {
                let Some(at) = s.slot_time(slot, &mut cursor.seg) else {
                    break; // the schedule has no more slots for this connection
                };
                let place = cursor.place(s, slot);
                slot += plan.connections;
                let at = plan.start + Duration::from_secs_f64(at);
                pace(at).await;
                (at, place)
            }
            None => {
                let now = Instant::now();
                (now, plan.window_place(now))
            }
        };
        if Instant::now() >= plan.end {
            // The window has closed: this send and the rest are not made. They are
            // counted as dropped (offered − sent), not sent afterwards.
            break;
        }
        if sender.is_none() {
            match connect(&t).await {
                Ok(s) => {
                    sender = Some(s);
                    free_since = Instant::now();
                }
                Err(_) => {
                    // The due send is spent: count it made, and failed.
                    if let Some(p) = place {
                        record(|r| {
                            r.sent(p, Late::No, None);
                            r.transport_error(p);
                        });
                    }
                    plan.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    free_since = Instant::now();
                    continue;
                }
            }
        }
        let (s, stamps) = sender.as_mut().expect("connected just above");
        let req = request(&plan, &t, &mut rng);
        let sent_at = Instant::now();
        // The generator's own lag: how late this send went out after it was due and its
        // connection was free. Not the target's doing, so not in the latency (below);
        // reported apart as the send lag, with a warning when it is large.
        let own_lag = match plan.schedule {
            Some(_) => sent_at.saturating_duration_since(intended.max(free_since)),
            None => Duration::ZERO,
        };
        if let Some(p) = place {
            let (late, lag) = match plan.schedule {
                Some(_) => {
                    // Late by the target's doing when it held the connection past the
                    // bound after the send was due, whatever the generator added to
                    // that (it reads an answer a little after its arrival, and on a
                    // busy machine more than the bound after: such a send, due seconds
                    // before behind a backlog, is not the generator's lateness).
                    let held = free_since.saturating_duration_since(intended);
                    let late = if held > plan.late_bound {
                        Late::Target
                    } else if own_lag > plan.late_bound {
                        Late::Generator
                    } else if sent_at.saturating_duration_since(intended) > plan.late_bound {
                        Late::Target
                    } else {
                        Late::No
                    };
                    (late, Some(own_lag.as_micros() as u64))
                }
                None => (Late::No, None),
            };
            record(|r| r.sent(p, late, lag));
        }
        plan.sent.fetch_add(1, Ordering::Relaxed);
        // Stamps left from before this send (none is expected) must not time this one.
        let _ = (stamps.arrival(), stamps.written());
        let result = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key(http::header::RETRY_AFTER);
            let from = resp.headers().get("x-served-from").cloned();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, retry_after, from))
        }
        .await;
        // The request is timed from when the connection task first tried to write it,
        // not from when it was handed over: the hop in between is the generator's
        // (write lag, reported apart). The answer is timed to when its last byte
        // reached this host, not to when this task got to read it: the wait in between
        // is the generator's too (read lag). Without a kernel stamp, when it was read.
        let read = Instant::now();
        let written = stamps
            .written()
            .map_or(sent_at, |at| at.clamp(sent_at, read));
        let write_lag = written.duration_since(sent_at);
        let done = stamps.arrival().map_or(read, |at| at.clamp(written, read));
        let read_lag = read.duration_since(done);
        free_since = done;
        match result {
            Ok((status, retry_after, from)) => {
                let outcome = Outcome::of(status, retry_after);
                let completed = plan.window_place(done);
                if place.is_some() || completed.is_some() {
                    record(|r| {
                        if let Some(p) = place {
                            r.lags(write_lag.as_micros() as u64, read_lag.as_micros() as u64);
                            r.answer(
                                p,
                                done.saturating_duration_since(intended + own_lag + write_lag)
                                    .as_micros() as u64,
                                status,
                                outcome,
                                from.as_ref().map(|v| v.as_bytes()),
                                done >= plan.end,
                            );
                        }
                        if let Some(p) = completed {
                            r.completed(p);
                        }
                    });
                }
                match outcome {
                    Outcome::Ok => {}
                    Outcome::Shed => {
                        plan.shed.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::ErrorStatus => {
                        plan.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                plan.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                sender = None;
                if let Some(p) = place {
                    record(|r| r.transport_error(p));
                }
                plan.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// CPU time of this process so far (user + system), from /proc (Linux only).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) closed by ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which is 100 on Linux for every architecture's ABI.
    Some(Duration::from_millis(ticks * 10))
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Compare { a, b }) => match compare::compare(&a, &b) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => failed(&e),
        },
        Some(Command::Merge { files, json }) => {
            let merged = match hlog::merge(&files) {
                Ok(m) => m,
                Err(e) => return failed(&e),
            };
            let text = match serde_json::to_string_pretty(&merged) {
                Ok(t) => t,
                Err(e) => return failed(&e),
            };
            if let Some(p) = json {
                if let Err(e) = std::fs::write(&p, &text) {
                    return failed(&format!("{}: {e}", p.display()));
                }
            }
            println!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            let args = cli.run;
            usage_checks(&args);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return failed(&e),
            };
            match rt.block_on(run(args, started)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_MISSED),
                Err(e) => failed(&format!("{e:#}")),
            }
        }
    }
}

fn failed(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("loadtest: error: {e}");
    ExitCode::FAILURE
}

/// Combinations clap cannot check; exits with status 2 and the reason, like clap.
fn usage_checks(args: &Args) {
    let bad = |msg: String| -> ! {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit()
    };
    if args.connections == 0 {
        bad("--connections must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bad(format!(
            "--rate {}: not a number of requests per second ≥ 0",
            args.rate
        ));
    }
    if args.stages.is_none() && args.duration.is_zero() {
        bad("--duration must be longer than 0s".into());
    }
    let open = args.stages.is_some() || args.rate > 0.0;
    if let (false, Some(e)) = (open, &args.expect) {
        if let Some(c) = e.0.iter().find(|c| c.metric.needs_open_loop()) {
            bad(format!(
                "--expect clause {:?} needs an open-loop run (--rate or --stages): a closed loop offers no schedule; use rps>=N for its throughput",
                c.text
            ));
        }
    }
}

/// Runs the load; Ok(false) when an `--expect` threshold was missed.
async fn run(args: Args, started: Instant) -> anyhow::Result<bool> {
    let targets: Vec<Target> = args
        .target
        .iter()
        .map(|t| target(t))
        .collect::<anyhow::Result<_>>()?;
    let stages: Vec<Stage> = match (&args.stages, args.rate > 0.0) {
        (Some(s), _) => s.0.clone(),
        (None, true) => vec![Stage {
            duration: args.duration,
            from: args.rate,
            to: args.rate,
        }],
        (None, false) => Vec::new(),
    };
    let open = !stages.is_empty();
    let window = if open {
        stages.iter().map(|s| s.duration).sum()
    } else {
        args.duration
    };
    let schedule = open.then(|| Schedule::new(args.warmup, stages[0].from, &stages));
    let stage_starts = match &schedule {
        Some(s) => s.stage_t[..s.stage_t.len() - 1].to_vec(),
        None => vec![0.0],
    };
    // Connect every connection first, so connecting is neither booked as latency nor
    // makes the first sends late. At most 64 handshakes at a time: a thousand SYNs at
    // once overflow a listen backlog (128 by default) and the dropped ones are retried
    // only after 1 s.
    let connecting_from = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut connecting = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let t = targets[i % targets.len()].clone();
        let permits = permits.clone();
        connecting.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = permits.acquire().await.ok();
            connect(&t).await.ok()
        }));
    }
    let mut senders = Vec::with_capacity(args.connections);
    for c in connecting {
        senders.push(c.await?);
    }
    let connect_time = connecting_from.elapsed();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + args.warmup;
    let end = measure_from + window;
    let plan = Arc::new(Plan {
        mix: Mix::parse(&args.mix)?,
        zipf: Zipf::new(args.members.max(1), args.zipf),
        countries: Countries::new(&args.countries),
        path: args.path.clone(),
        visitors: args.visitors,
        start,
        measure_from,
        end,
        schedule,
        connections: args.connections as u64,
        late_bound: args.late_bound,
        stage_starts,
        done: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        shed: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for (i, sender) in senders.into_iter().enumerate() {
        let t = targets[i % targets.len()].clone();
        tasks.push(tokio::spawn(connection(plan.clone(), t, i, sender)));
    }
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let a = cpu_time()?;
        tokio::time::sleep_until(end.into()).await;
        Some(cpu_time()?.saturating_sub(a))
    });
    let probe = if args.write_rate > 0.0 {
        let url = args
            .store_url
            .clone()
            .or_else(|| std::env::var("READTIER_STORE_URL").ok())
            .ok_or_else(|| {
                anyhow::anyhow!("--write-rate needs --store-url or READTIER_STORE_URL")
            })?;
        let bases: Vec<String> = targets.iter().map(|t| t.base.clone()).collect();
        Some(tokio::spawn(freshness::probe(
            url,
            bases,
            args.write_rate,
            args.probe_members,
            measure_from,
            end,
        )))
    } else {
        None
    };
    if args.progress > 0 {
        tokio::spawn(progress(plan.clone(), args.progress));
    }
    // The run ends with its window, plus the grace for answers in flight; a connection
    // still waiting then is abandoned (its send counts as unanswered).
    let deadline = end + args.grace;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline.into(), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    let mut rec = Recorder::new();
    for r in lock(&RECORDERS).iter() {
        rec.merge(&lock(r));
    }
    let cpu = cpu.await.ok().flatten();
    let freshness = match probe {
        Some(p) => Some(p.await??),
        None => None,
    };
    let mut report = build_report(&args, &plan, &rec, window, cpu, started, freshness);
    report.connect_seconds = connect_time.as_secs_f64();
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &json).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    let total = rec.total();
    if let Some(p) = &args.svg {
        std::fs::write(p, report.svg(&total.latency))
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &args.hlog {
        write_hlog(p, &args, &plan, &rec, window, &total.shed_latency)?;
    }
    println!("{json}");
    for w in &report.warnings {
        eprintln!("loadtest: warning: {w}");
    }
    for v in &report.expect {
        eprintln!("loadtest: expect {v}");
    }
    Ok(report.expect.iter().all(|v| v.passed))
}

/// One line per interval on stderr: answers and sends per second.
async fn progress(p: Arc<Plan>, every: u64) {
    let (mut last_done, mut last_sent) = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let now = Instant::now();
        if now > p.end {
            break;
        }
        let done = p.done.load(Ordering::Relaxed);
        let sent = p.sent.load(Ordering::Relaxed);
        let phase = if now < p.measure_from {
            "warm-up"
        } else {
            "measuring"
        };
        eprintln!(
            "loadtest: {phase} t={:.0}s {:.0} answers/s, {:.0} sends/s, {} errors, {} shed",
            now.saturating_duration_since(p.start).as_secs_f64(),
            (done - last_done) as f64 / every as f64,
            (sent - last_sent) as f64 / every as f64,
            p.errors.load(Ordering::Relaxed),
            p.shed.load(Ordering::Relaxed)
        );
        (last_done, last_sent) = (done, sent);
    }
}

/// The wall-clock time the window opened (it is in the past when this is called).
fn window_start(plan: &Plan) -> SystemTime {
    let since = Instant::now().saturating_duration_since(plan.measure_from);
    SystemTime::now()
        .checked_sub(since)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn write_hlog(
    path: &std::path::Path,
    args: &Args,
    plan: &Plan,
    rec: &Recorder,
    window: Duration,
    shed: &hdrhistogram::Histogram<u64>,
) -> anyhow::Result<()> {
    let window_start = window_start(plan);
    let seconds = window.as_secs_f64().ceil().max(1.0) as usize;
    let empty = report::histogram();
    let intervals: Vec<hlog::Interval<'_>> = (0..seconds)
        .map(|i| hlog::Interval {
            start: Duration::from_secs(i as u64),
            length: Duration::from_secs_f64((window.as_secs_f64() - i as f64).clamp(0.0, 1.0)),
            histogram: rec.seconds.get(i).map_or(&empty, |b| &b.latency),
        })
        .collect();
    let comment = format!(
        "loadtest {} against {}, {} connections",
        if plan.schedule.is_some() {
            "open loop"
        } else {
            "closed loop"
        },
        args.target.join(","),
        args.connections
    );
    let shed = (!shed.is_empty()).then_some(hlog::Interval {
        start: Duration::ZERO,
        length: window,
        histogram: shed,
    });
    hlog::write(path, window_start, &comment, &intervals, shed)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &Args,
    plan: &Plan,
    rec: &Recorder,
    window: Duration,
    cpu: Option<Duration>,
    started: Instant,
    freshness: Option<report::Freshness>,
) -> Report {
    let total = rec.total();
    let c = total.counts;
    let window_s = window.as_secs_f64();
    let schedule = plan.schedule.as_ref();
    let offered = schedule.map(Schedule::offered);
    let achieved_rps = c.completed as f64 / window_s;
    let served_rps = c.ok as f64 / window_s;
    let offered_rps = offered.map(|o| o as f64 / window_s);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_utilisation = cpu.map(|c| c.as_secs_f64() / (window_s * cores as f64));
    let send_lag = schedule.map(|_| Percentiles::of(&rec.send_lag));
    let n_seconds = window_s.ceil().max(1.0) as usize;
    let empty = report::Bucket::new();
    let timeline = (0..n_seconds)
        .map(|t| {
            let b = rec.seconds.get(t).unwrap_or(&empty);
            Second {
                t,
                offered: schedule.map(|s| s.second_j[t + 1] - s.second_j[t]),
                sent: b.counts.sent,
                completed: b.counts.completed,
                ok: b.counts.ok,
                shed: b.counts.shed,
                p50_ms: b.latency.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: b.latency.value_at_quantile(0.99) as f64 / 1000.0,
            }
        })
        .collect();
    let stages = match (&args.stages, schedule) {
        (Some(st), Some(s)) => {
            let plans: Vec<StagePlan> =
                st.0.iter()
                    .enumerate()
                    .map(|(i, g)| StagePlan {
                        start_s: s.stage_t[i],
                        duration_s: g.duration.as_secs_f64(),
                        from: g.from,
                        to: g.to,
                        offered: s.stage_j[i + 1] - s.stage_j[i],
                    })
                    .collect();
            report::stage_reports(rec, &plans)
        }
        _ => Vec::new(),
    };
    let sends = report::sends(&c, offered);
    let mut warnings = Vec::new();
    let late_bound_ms = args.late_bound.as_secs_f64() * 1e3;
    // Generator health. In open loop the send lag is the measure: sends due while their
    // connection was free that went out late mean the generator's core could not keep
    // up. Its CPU time says nothing there, since it spins in the last millisecond before
    // each send (reading ~100% while perfectly on time). In closed loop CPU is the measure.
    if let Some(lag) = &send_lag {
        if lag.p99 > late_bound_ms {
            warnings.push(format!(
                "the generator's core could not keep up: send lag p99 {:.3} ms is over the late bound ({late_bound_ms} ms) with connections free; part of the latency and of the late sends is the generator's, not the target's (fewer connections, a lower rate, or more cores for it)",
                lag.p99
            ));
        }
    }
    // Its waits around each send: for its connection task to write the request, and
    // for it to read the answer. Not in the latency (timed from the write to the
    // answer's arrival), but a sign the generator was short of core.
    let read_lag = Percentiles::of(&rec.read_lag);
    let write_lag = Percentiles::of(&rec.write_lag);
    for (lag, what, timed) in [
        (
            &read_lag,
            "read answers late: read lag",
            "answers timed to their arrival",
        ),
        (
            &write_lag,
            "wrote requests late: write lag",
            "requests timed from their write",
        ),
    ] {
        if lag.p99 > late_bound_ms {
            warnings.push(format!(
                "the generator {what} p99 {:.3} ms ({timed}, so not in the latency); its core was short",
                lag.p99
            ));
        }
    }
    if let (None, Some(u)) = (schedule, cpu_utilisation) {
        if u >= 0.9 {
            warnings.push(format!(
                "the generator's core was saturated: {:.0}% of {cores} core(s) over the window; a closed loop then measures the generator as much as the target",
                u * 100.0
            ));
        }
    }
    if let (Some(d), Some(o)) = (sends.dropped, offered) {
        if d > 0 {
            warnings.push(format!(
                "{d} of {o} sends due in the window ({:.1}%) were never made: achieved {achieved_rps:.0}/s of the {:.0}/s offered",
                100.0 * d as f64 / o as f64,
                offered_rps.unwrap_or(0.0)
            ));
        }
    }
    // A target that sheds: its 503s are answers, counted in achieved_rps, not service.
    if c.shed * 100 > c.completed {
        warnings.push(format!(
            "{} of {} answers ({:.1}%) were 503s the target shed: achieved {achieved_rps:.0}/s counts them, served {served_rps:.0}/s",
            c.shed,
            c.completed,
            100.0 * c.shed as f64 / c.completed.max(1) as f64
        ));
    }
    if c.unanswered() > 0 {
        warnings.push(format!(
            "{} sends were still unanswered {} ms after the window closed (counted as errors)",
            c.unanswered(),
            args.grace.as_millis()
        ));
    }
    let mut report = Report {
        mode: if schedule.is_some() {
            "open-loop".into()
        } else {
            "closed-loop".into()
        },
        targets: args.target.clone(),
        connections: args.connections,
        window_seconds: window_s,
        warmup_seconds: args.warmup.as_secs_f64(),
        grace_seconds: args.grace.as_secs_f64(),
        window_start_unix_s: window_start(plan)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        wall_seconds: started.elapsed().as_secs_f64(),
        connect_seconds: 0.0,
        offered_rps,
        achieved_rps,
        served_rps,
        achieved_ratio: offered.map(|o| {
            if o == 0 {
                0.0
            } else {
                c.completed as f64 / o as f64
            }
        }),
        late_bound_ms: schedule.map(|_| late_bound_ms),
        sends,
        answers: report::answers(&c),
        errors: c.errors(),
        latency_ms: Percentiles::of(&total.latency),
        shed_latency_ms: Percentiles::of(&total.shed_latency),
        statuses: rec.statuses.clone(),
        served_from: rec.served_from.clone(),
        generator: report::Generator {
            send_lag_ms: send_lag,
            read_lag_ms: read_lag,
            write_lag_ms: write_lag,
            cpu_seconds: cpu.map(|c| c.as_secs_f64()),
            cores,
            cpu_utilisation,
        },
        warnings,
        stages,
        timeline,
        expect: Vec::new(),
        freshness,
    };
    if let Some(e) = &args.expect {
        let o = report.observed();
        report.expect = e.0.iter().map(|c| c.check(&o)).collect();
    }
    report
}
