//! `loadtest`: the load generator readtier's benchmarks use.
//!
//! - **open loop** (`--rate R`): requests are *scheduled* at a fixed total rate, spread
//!   over the connections; latency is measured from each request's intended send time,
//!   so a server that stalls cannot hide the queue it causes (no coordinated omission).
//! - **closed loop** (`--rate 0`, the default): every connection sends its next request
//!   as soon as the last answer arrives; this measures maximum throughput.
//!
//! Requests are drawn from a mix of plans (countries by population or a list),
//! entitlement and authorize (member ids from a Zipf distribution). Optionally a
//! freshness probe writes to the store while the load runs and measures the time from
//! commit to the new value being answered by every target.
//!
//! Example: `loadtest --target http://127.0.0.1:8080 --connections 64 --duration 20s
//! --mix plans=0.5,entitlement=0.3,authorize=0.2 --json out.json --svg out.svg`.

mod freshness;
mod report;
mod workload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use report::{Percentiles, Recorder, Report, Second};
use workload::{Countries, Kind, Mix, Rng, Zipf};

#[derive(Parser, Debug, Clone)]
#[command(name = "loadtest", about = "Load generator for readtier")]
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
    /// Measured duration, e.g. 30s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
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
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<String>,
    /// Draw the report as SVG here.
    #[arg(long)]
    svg: Option<String>,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 20s"))?;
    Ok(match unit {
        "ms" => Duration::from_secs_f64(n / 1000.0),
        "s" | "" => Duration::from_secs_f64(n),
        "m" => Duration::from_secs_f64(n * 60.0),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    })
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
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Open loop: seconds between a connection's intended sends.
    interval: Option<f64>,
    /// Requests answered so far (for progress).
    done: AtomicU64,
    errors: AtomicU64,
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
    .expect("valid request")
}

async fn connect(t: &Target) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(&t.host).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One connection: sends until the end, records what it measured.
async fn connection(plan: Arc<Plan>, t: Target, index: usize, connections: usize) -> Recorder {
    let mut rec = Recorder::new();
    let mut rng = Rng::new(index as u64 + 1);
    let mut sender = None;
    // Open loop: this connection's k-th request is due at start + (index + k*C) * interval.
    let mut k: u64 = 0;
    loop {
        let intended = match plan.interval {
            Some(iv) => {
                let at = plan.start
                    + Duration::from_secs_f64((index as f64 + k as f64 * connections as f64) * iv);
                k += 1;
                if at >= plan.end {
                    break;
                }
                // tokio's timer has a 1 ms grain: sleep to just short of the send time,
                // then yield until it, so the generator's own lateness is not booked
                // as server latency.
                let early = at.checked_sub(Duration::from_millis(1)).unwrap_or(at);
                if early > Instant::now() {
                    tokio::time::sleep_until(early.into()).await;
                }
                while Instant::now() < at {
                    tokio::task::yield_now().await;
                }
                at
            }
            None => {
                let now = Instant::now();
                if now >= plan.end {
                    break;
                }
                now
            }
        };
        if sender.is_none() {
            match connect(&t).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    rec.transport_errors += 1;
                    plan.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        let req = request(&plan, &t, &mut rng);
        let result = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let from = resp
                .headers()
                .get("x-served-from")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, from))
        }
        .await;
        let now = Instant::now();
        match result {
            Ok((status, from)) => {
                if intended >= plan.measure_from {
                    let second = (intended - plan.measure_from).as_secs() as usize;
                    rec.record(
                        second,
                        (now - intended).as_micros() as u64,
                        status,
                        from.as_deref(),
                    );
                }
                if !(200..400).contains(&status) {
                    plan.errors.fetch_add(1, Ordering::Relaxed);
                }
                plan.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                sender = None;
                rec.transport_errors += 1;
                plan.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    rec
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let targets: Vec<Target> = args
        .target
        .iter()
        .map(|t| target(t))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let plan = Arc::new(Plan {
        mix: Mix::parse(&args.mix)?,
        zipf: Zipf::new(args.members.max(1), args.zipf),
        countries: Countries::new(&args.countries),
        path: args.path.clone(),
        start,
        measure_from,
        end,
        interval: (args.rate > 0.0).then(|| 1.0 / args.rate),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let t = targets[i % targets.len()].clone();
        tasks.push(tokio::spawn(connection(
            plan.clone(),
            t,
            i,
            args.connections,
        )));
    }
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
        let p = plan.clone();
        let every = args.progress;
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(every)).await;
                let now = Instant::now();
                if now > p.end {
                    break;
                }
                let done = p.done.load(Ordering::Relaxed);
                let phase = if now < p.measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprintln!(
                    "loadtest: {phase} t={:.0}s {:.0} req/s, {} errors",
                    (now - p.start).as_secs_f64(),
                    (done - last) as f64 / every as f64,
                    p.errors.load(Ordering::Relaxed)
                );
                last = done;
            }
        });
    }
    let mut rec = Recorder::new();
    for t in tasks {
        rec.merge(t.await?);
    }
    let freshness = match probe {
        Some(p) => Some(p.await??),
        None => None,
    };
    let measured = args.duration.as_secs_f64();
    let requests: u64 = rec.statuses.values().sum();
    let non_2xx: u64 = rec
        .statuses
        .iter()
        .filter(|(s, _)| !(200..400).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let timeline = rec
        .seconds
        .iter()
        .enumerate()
        .take(args.duration.as_secs().max(1) as usize)
        .map(|(t, (n, h))| Second {
            t,
            requests: *n,
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        })
        .collect();
    let report = Report {
        mode: if args.rate > 0.0 {
            "open-loop".into()
        } else {
            "closed-loop".into()
        },
        targets: args.target.clone(),
        connections: args.connections,
        target_rate: (args.rate > 0.0).then_some(args.rate),
        measured_seconds: measured,
        requests,
        throughput_rps: requests as f64 / measured,
        latency_ms: Percentiles::of(&rec.latency),
        statuses: rec.statuses.clone(),
        non_2xx,
        transport_errors: rec.transport_errors,
        served_from: rec.served_from.clone(),
        timeline,
        freshness,
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.json {
        std::fs::write(p, &json)?;
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, report.svg(&rec))?;
    }
    println!("{json}");
    Ok(())
}
