//! How close to its instant a scheduled price change shows on every node.
//!
//! Writes `--changes` scheduled changes of one country's two plans into the nodes'
//! store (SQLite file or PostgreSQL), `--gap` apart starting `--lead` from now, well
//! before any of them takes effect; then polls every node as fast as it answers, on
//! `--connections` keep-alive connections each, and reports for each change and node
//! the spread between the instant and the first answer carrying the new price (when
//! that answer was received), p50/p99/max over all of them. It also counts answers
//! that mix two states (one plan's old price with the other's new one) and answers
//! asked for after an instant that still carry the old price: both must be 0.
//!
//!   switch_spread --target http://127.0.0.1:8080 --target http://127.0.0.1:8081 \
//!       --store-url var/readtier.db [--changes 50] [--gap 2s] [--country FR]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[derive(Parser, Debug)]
struct Args {
    /// Base URL of a node; repeat for each.
    #[arg(long, required = true)]
    target: Vec<String>,
    /// The nodes' store: a postgres:// URL or an SQLite file path.
    #[arg(long)]
    store_url: String,
    /// Scheduled changes to write.
    #[arg(long, default_value_t = 50)]
    changes: u32,
    /// Time between two changes.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    gap: Duration,
    /// Time from now to the first change (the nodes must have the writes by then).
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    lead: Duration,
    /// The country whose `standard` and `premium` prices change.
    #[arg(long, default_value = "FR")]
    country: String,
    /// Polling connections per node.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?}: give a unit, as in 2s or 500ms"))?;
    let n: f64 = n.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_secs_f64(n / 1000.0)),
        "s" => Ok(Duration::from_secs_f64(n)),
        _ => Err(format!("{s:?}: units are ms and s")),
    }
}

/// Microseconds since the Unix epoch (the nodes' clock: same host).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// RFC 3339, UTC, whole milliseconds (days to civil date, Hinnant's algorithm).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The prices of change `k`: standard `{900+k}.01`, premium `{900+k}.02`.
fn prices(k: u32) -> (String, String) {
    (format!("{}.01", 900 + k), format!("{}.02", 900 + k))
}

/// Which change an answer shows (`Some(k)`: change k; `None`: none of them yet), or an
/// error for a mixed answer.
fn state_of(body: &[u8], changes: u32) -> Result<Option<u32>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let find = |suffix: &str| -> Option<u32> {
        // "amount":"9KK.01" — the 900-series prices are only ours.
        text.match_indices("\"amount\":\"9").find_map(|(i, _)| {
            let rest = &text[i + 10..];
            let end = rest.find('"')?;
            let amount = &rest[..end];
            let k: u32 = amount.strip_suffix(suffix)?.parse().ok()?;
            (900..900 + changes).contains(&k).then(|| k - 900)
        })
    };
    match (find(".01"), find(".02")) {
        (a, b) if a == b => Ok(a),
        (a, b) => Err(format!(
            "mixed answer: standard {a:?}, premium {b:?}: {text}"
        )),
    }
}

async fn write_changes(args: &Args, first_ms: i64) -> anyhow::Result<()> {
    let cc = &args.country;
    let mut rows = Vec::new();
    for k in 0..args.changes {
        let at = rfc3339(first_ms + k as i64 * args.gap.as_millis() as i64);
        let (s, p) = prices(k);
        rows.push((at, s, p));
    }
    if args.store_url.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(&args.store_url, tokio_postgres::NoTls)
            .await
            .context("connect to the store")?;
        tokio::spawn(conn);
        let mut sql = String::from("BEGIN;");
        for (at, s, p) in &rows {
            sql.push_str(&format!(
                "INSERT INTO scheduled_prices VALUES ('{cc}', 'standard', 'EUR', {s}, '{at}');
                 INSERT INTO scheduled_prices VALUES ('{cc}', 'premium', 'EUR', {p}, '{at}');"
            ));
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await?;
    } else {
        let path = args.store_url.trim_start_matches("sqlite://").to_string();
        let cc = cc.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut c = rusqlite::Connection::open(path)?;
            c.busy_timeout(Duration::from_secs(10))?;
            let tx = c.transaction()?;
            for (at, s, p) in &rows {
                tx.execute(
                    "INSERT INTO scheduled_prices VALUES (?1, 'standard', 'EUR', ?2, ?3)",
                    rusqlite::params![cc, s, at],
                )?;
                tx.execute(
                    "INSERT INTO scheduled_prices VALUES (?1, 'premium', 'EUR', ?2, ?3)",
                    rusqlite::params![cc, p, at],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await??;
    }
    Ok(())
}

/// What one node's pollers saw.
#[derive(Default)]
struct Seen {
    /// Per change: the earliest receive time (µs) of an answer carrying it or later.
    first_new: Vec<Option<i64>>,
    mixed: u64,
    stale_after_instant: u64,
    answers: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lead_ms = args.lead.as_millis() as i64;
    let first_ms = (now_us() / 1000 + lead_ms) / 1000 * 1000 + 1000;
    let instants_us: Vec<i64> = (0..args.changes)
        .map(|k| (first_ms + k as i64 * args.gap.as_millis() as i64) * 1000)
        .collect();
    let country = args.country.clone();
    write_changes(&args, first_ms).await?;
    eprintln!(
        "wrote {} changes of {country}, the first at {}, every {:?}",
        args.changes,
        rfc3339(first_ms),
        args.gap
    );
    let end_us = instants_us.last().copied().unwrap_or(0) + 1_000_000;
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let instants = Arc::new(instants_us.clone());
    let mut per_node = Vec::new();
    let mut tasks = Vec::new();
    for target in &args.target {
        let seen = Arc::new(Mutex::new(Seen {
            first_new: vec![None; args.changes as usize],
            ..Default::default()
        }));
        per_node.push((target.clone(), seen.clone()));
        let authority = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        for _ in 0..args.connections {
            let (seen, stop, polls, instants) =
                (seen.clone(), stop.clone(), polls.clone(), instants.clone());
            let authority = authority.clone();
            let path = format!("/v1/plans?country={country}");
            let changes = args.changes;
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&authority).await?;
                stream.set_nodelay(true)?;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) {
                    let req = http::Request::get(path.as_str())
                        .header("host", authority.as_str())
                        .body(Empty::<Bytes>::new())?;
                    let sent = now_us();
                    let resp = send.send_request(req).await?;
                    let body = resp.into_body().collect().await?.to_bytes();
                    let received = now_us();
                    polls.fetch_add(1, Ordering::Relaxed);
                    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                    s.answers += 1;
                    match state_of(&body, changes) {
                        Err(e) => {
                            s.mixed += 1;
                            eprintln!("{e}");
                        }
                        Ok(state) => {
                            // The change in force when the request was sent.
                            let due = instants.partition_point(|t| *t <= sent);
                            let shown = state.map_or(0, |k| k as usize + 1);
                            if shown < due {
                                s.stale_after_instant += 1;
                            }
                            for k in 0..shown {
                                let f = &mut s.first_new[k];
                                if f.is_none_or(|f| received < f) {
                                    *f = Some(received);
                                }
                            }
                        }
                    }
                }
                anyhow::Ok(())
            }));
        }
    }
    while now_us() < end_us {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let mut spreads_us = Vec::new();
    let mut report_nodes = Vec::new();
    let mut mixed = 0;
    let mut stale = 0;
    for (target, seen) in &per_node {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        mixed += s.mixed;
        stale += s.stale_after_instant;
        let mut node_spreads = Vec::new();
        for (k, f) in s.first_new.iter().enumerate() {
            let f = f.with_context(|| format!("{target} never showed change {k}"))?;
            node_spreads.push(f - instants_us[k]);
        }
        spreads_us.extend(node_spreads.iter().copied());
        report_nodes.push(serde_json::json!({
            "target": target, "answers": s.answers, "mixed": s.mixed,
            "stale_after_instant": s.stale_after_instant,
            "spread_us": node_spreads,
        }));
    }
    spreads_us.sort_unstable();
    let pct = |p: f64| {
        let i = ((spreads_us.len() as f64 * p).ceil() as usize).clamp(1, spreads_us.len()) - 1;
        spreads_us[i]
    };
    let report = serde_json::json!({
        "changes": args.changes,
        "nodes": args.target.len(),
        "samples": spreads_us.len(),
        "polls": polls.load(Ordering::Relaxed),
        "spread_us": {"min": spreads_us[0], "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "mixed_answers": mixed,
        "stale_answers_after_instant": stale,
        "per_node": report_nodes,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if mixed > 0 || stale > 0 {
        anyhow::bail!("{mixed} mixed answers, {stale} stale answers after an instant");
    }
    Ok(())
}
