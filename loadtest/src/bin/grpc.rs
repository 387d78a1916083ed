//! The gRPC side of the benchmarks (docs/PERFORMANCE.md, "gRPC (issue 13)"), driven by
//! `loadtest/grpc.sh`:
//!
//! - `bare --listen A --copy G --member N`: a bare tonic server (`tonic::transport::
//!   Server`, defaults) that answers every `GetEntitlement` with the one message node
//!   `G` answered for member `N`: the ceiling readtier's L1-hit path is held against.
//! - `load --target A --method entitlement|batch|batch-raw|http-single …`: closed-loop
//!   load for `--seconds` from `--concurrency` callers over `--connections` connections,
//!   ids cycling through `1..=--ids` (batches of `--batch` consecutive ids); prints calls/s,
//!   member lookups/s and, given `--server-pid`, the server's CPU µs per call and per
//!   lookup (from /proc). `http-single` is `GET /v1/members/{id}/entitlement` over
//!   HTTP/1.1 keep-alive on `--target` (the HTTP listener), for the batch comparison.
//!   `batch` decodes every answer with prost (a `BatchGetEntitlementsResponse` of
//!   `--batch` messages: a one-core client decoded ~910,000 `Entitlement`s a second and
//!   was the bottleneck); `batch-raw` sends requests encoded once beforehand and walks
//!   each answer's top-level fields (tag, length, skip), counting its results: a call
//!   counts only if it holds exactly `--batch` results, each starting with a
//!   `member_id`, and a catalog version. Its client costs little per member, so the rate
//!   is the server's.
//! - `watch --target G --db PATH --changes N`: the caching client (`readtier-client`)
//!   watching node `G`; N price changes written in raw SQL to the node's SQLite file,
//!   each timed from its commit until `CatalogCache::plans` answers the new price;
//!   then `plans()` timed over a loop. Prints the percentiles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[allow(clippy::all)]
mod pb {
    tonic::include_proto!("readtier.v1");
}

use pb::read_tier_client::ReadTierClient;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Bare {
        #[arg(long)]
        listen: SocketAddr,
        /// The node's gRPC address whose answer to copy.
        #[arg(long)]
        copy: SocketAddr,
        #[arg(long, default_value_t = 42)]
        member: u64,
    },
    Load {
        #[arg(long)]
        target: SocketAddr,
        /// entitlement, batch or http-single.
        #[arg(long)]
        method: String,
        #[arg(long, default_value_t = 1000)]
        ids: u64,
        #[arg(long, default_value_t = 100)]
        batch: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    Watch {
        #[arg(long)]
        target: SocketAddr,
        /// The node's SQLite file (the embedded store).
        #[arg(long)]
        db: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Pause between changes.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
}

/// User + system CPU time of a process so far.
fn cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // CLK_TCK is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

struct Bare {
    answer: pb::Entitlement,
}

#[tonic::async_trait]
impl pb::read_tier_server::ReadTier for Bare {
    async fn get_entitlement(
        &self,
        _req: tonic::Request<pb::GetEntitlementRequest>,
    ) -> Result<tonic::Response<pb::Entitlement>, tonic::Status> {
        Ok(tonic::Response::new(self.answer.clone()))
    }
}

async fn bare(listen: SocketAddr, copy: SocketAddr, member: u64) -> anyhow::Result<()> {
    let mut c = ReadTierClient::connect(format!("http://{copy}")).await?;
    let answer = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: member })
        .await?
        .into_inner();
    println!("bare tonic server on {listen} answering {answer:?}");
    tonic::transport::Server::builder()
        .add_service(pb::read_tier_server::ReadTierServer::new(Bare { answer }))
        .serve(listen)
        .await?;
    Ok(())
}

/// The `batch-raw` codec: the request is bytes encoded beforehand; the answer is not
/// decoded but walked ([`count_results`]), and is the number of results it holds.
#[derive(Clone, Copy)]
struct RawBatch;

impl tonic::codec::Codec for RawBatch {
    type Encode = bytes::Bytes;
    type Decode = u64;
    type Encoder = RawBatch;
    type Decoder = RawBatch;

    fn encoder(&mut self) -> RawBatch {
        RawBatch
    }

    fn decoder(&mut self) -> RawBatch {
        RawBatch
    }
}

impl tonic::codec::Encoder for RawBatch {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBatch {
    type Item = u64;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<u64>, tonic::Status> {
        count_results(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("a malformed batch answer: {e}")))
    }
}

/// The results in a `BatchGetEntitlementsResponse`, from its top-level fields alone:
/// field 1 (a result: length-delimited, skipped whole once its first field is seen to
/// be `member_id`) counted, field 2 (the catalog version, a varint) required non-zero;
/// anything else is an error.
fn count_results(buf: &mut impl bytes::Buf) -> Result<u64, String> {
    use prost::encoding::decode_varint;
    let (mut results, mut version) = (0u64, 0u64);
    while buf.has_remaining() {
        let key = decode_varint(buf).map_err(|e| e.to_string())?;
        match (key >> 3, key & 7) {
            (1, 2) => {
                let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
                if len > buf.remaining() {
                    return Err(format!("a result of {len} bytes past the end"));
                }
                // member_id, a varint: field 1, wire type 0.
                if len == 0 || buf.chunk()[0] != 0x08 {
                    return Err("a result without its member_id first".into());
                }
                buf.advance(len);
                results += 1;
            }
            (2, 0) => version = decode_varint(buf).map_err(|e| e.to_string())?,
            (tag, wire) => return Err(format!("unexpected field {tag} (wire type {wire})")),
        }
    }
    if version == 0 {
        return Err("no catalog_version".into());
    }
    Ok(results)
}

/// One HTTP/1.1 keep-alive connection's sender.
type Http = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

async fn http_conn(target: SocketAddr) -> anyhow::Result<Http> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (s, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(s)
}

#[allow(clippy::too_many_arguments)]
async fn load(
    target: SocketAddr,
    method: String,
    ids: u64,
    batch: u64,
    concurrency: usize,
    connections: usize,
    seconds: u64,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    let per_call = match method.as_str() {
        "entitlement" | "http-single" => 1,
        "batch" | "batch-raw" => batch,
        other => anyhow::bail!("unknown method {other}"),
    };
    // batch-raw: each request a call can send (the ids start at a multiple of
    // `batch`, modulo `ids`), encoded once.
    let raw_requests: Arc<Vec<Option<bytes::Bytes>>> = Arc::new(if method == "batch-raw" {
        use prost::Message;
        let mut reqs = vec![None; ids as usize];
        let mut start = 0u64;
        while reqs[start as usize].is_none() {
            let member_ids = (0..batch).map(|k| (start + k) % ids + 1).collect();
            reqs[start as usize] = Some(
                pb::BatchGetEntitlementsRequest { member_ids }
                    .encode_to_vec()
                    .into(),
            );
            start = (start + batch) % ids;
        }
        reqs
    } else {
        Vec::new()
    });
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
                .tcp_nodelay(true)
                .connect_lazy(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let cpu_before = server_pid.and_then(cpu);
    let started = Instant::now();
    for i in 0..concurrency {
        let channel = channels[i % channels.len()].clone();
        let (stop, calls, errors, next, method, raw_requests) = (
            stop.clone(),
            calls.clone(),
            errors.clone(),
            next.clone(),
            method.clone(),
            raw_requests.clone(),
        );
        let mut http = if method == "http-single" {
            Some(http_conn(target).await?)
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let mut raw = tonic::client::Grpc::new(channel.clone());
            let mut c = ReadTierClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(per_call, Ordering::Relaxed);
                let ok = match method.as_str() {
                    "entitlement" => c
                        .get_entitlement(pb::GetEntitlementRequest {
                            member_id: n % ids + 1,
                        })
                        .await
                        .is_ok(),
                    "batch" => {
                        let member_ids = (0..batch).map(|k| (n + k) % ids + 1).collect();
                        c.batch_get_entitlements(pb::BatchGetEntitlementsRequest { member_ids })
                            .await
                            .map(|r| r.into_inner().results.len() as u64 == batch)
                            .unwrap_or(false)
                    }
                    "batch-raw" => {
                        // Every start reachable from 0 by steps of `batch` was encoded.
                        let Some(req) = raw_requests[(n % ids) as usize].clone() else {
                            return;
                        };
                        match raw.ready().await {
                            Ok(()) => raw
                                .unary(
                                    tonic::Request::new(req),
                                    http::uri::PathAndQuery::from_static(
                                        "/readtier.v1.ReadTier/BatchGetEntitlements",
                                    ),
                                    RawBatch,
                                )
                                .await
                                .map(|r| r.into_inner() == batch)
                                .unwrap_or(false),
                            Err(_) => false,
                        }
                    }
                    _ => {
                        // Only http-single has a connection.
                        let Some(s) = http.as_mut() else { return };
                        let req = http::Request::builder()
                            .uri(format!("/v1/members/{}/entitlement", n % ids + 1))
                            .header("host", "readtier")
                            .body(http_body_util::Empty::new())
                            .expect("a valid request");
                        match s.send_request(req).await {
                            Ok(resp) => {
                                use http_body_util::BodyExt;
                                let ok = resp.status() == 200;
                                ok && resp.into_body().collect().await.is_ok()
                            }
                            Err(_) => false,
                        }
                    }
                };
                if ok {
                    calls.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    let cpu_after = server_pid.and_then(cpu);
    for t in tasks {
        let _ = t.await;
    }
    let calls = calls.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let rate = calls as f64 / took.as_secs_f64();
    let cpu_us = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if calls > 0 => (b - a).as_secs_f64() * 1e6 / calls as f64,
        _ => f64::NAN,
    };
    // The share of one core the server used: near 1 when it, not this client, bound
    // the rate (the server is pinned to one core).
    let busy = rate * cpu_us / 1e6;
    println!(
        "{{\"method\":\"{method}\",\"calls_per_s\":{rate:.0},\"lookups_per_s\":{:.0},\"server_cpu_us_per_call\":{cpu_us:.2},\"server_cpu_us_per_lookup\":{:.3},\"server_busy\":{busy:.2},\"errors\":{errors}}}",
        rate * per_call as f64,
        cpu_us / per_call as f64
    );
    if errors > 0 {
        anyhow::bail!("{errors} calls failed");
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn watch(
    target: SocketAddr,
    db: std::path::PathBuf,
    changes: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let cache = readtier_client::CatalogCache::start(&format!("http://{target}"), &[])?;
    tokio::time::timeout(Duration::from_secs(10), cache.ready()).await?;
    let conn = rusqlite::Connection::open(&db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let price = |cache: &readtier_client::CatalogCache| {
        cache.plans("US").and_then(|p| {
            p.plans
                .iter()
                .find(|p| p.id == "standard")
                .and_then(|p| p.price.as_ref().map(|p| p.amount.clone()))
        })
    };
    let mut seen = Vec::with_capacity(changes);
    for i in 0..changes {
        // Ends in 1: prices are normalised (no trailing zeros), and the comparison
        // is with the string written.
        let amount = format!("{}.{:02}1", 20 + i / 100, i % 100);
        let mut versions = cache.subscribe();
        conn.execute(
            "UPDATE plan_prices SET amount = ?1 WHERE country = 'US' AND plan_id = 'standard'",
            [&amount],
        )?;
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), async {
            while price(&cache).as_deref() != Some(amount.as_str()) {
                if versions.changed().await.is_err() {
                    break;
                }
            }
        })
        .await?;
        seen.push(committed.elapsed());
        tokio::time::sleep(interval).await;
    }
    seen.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{{\"changes\":{changes},\"visible_ms\":{{\"p50\":{:.2},\"p90\":{:.2},\"p99\":{:.2},\"max\":{:.2}}}}}",
        ms(percentile(&seen, 0.5)),
        ms(percentile(&seen, 0.9)),
        ms(percentile(&seen, 0.99)),
        ms(*seen.last().expect("at least one change"))
    );

    // plans(): a timed loop over a few countries (not a test assertion).
    let countries = ["US", "JP", "DE", "BR", "IN", "FR", "GB", "MX"];
    let n = 20_000_000u64;
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..n {
        let cc = countries[(i % countries.len() as u64) as usize];
        found += std::hint::black_box(cache.plans(std::hint::black_box(cc))).is_some() as u64;
    }
    let took = started.elapsed();
    println!(
        "{{\"plans_calls\":{n},\"plans_ns_per_call\":{:.1},\"found\":{found}}}",
        took.as_nanos() as f64 / n as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = match &args.cmd {
        // The server as readtier runs: tokio's multi-thread runtime (one worker per
        // core it may use: pinned to one, one worker).
        Cmd::Bare { .. } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    rt.block_on(async move {
        match args.cmd {
            Cmd::Bare {
                listen,
                copy,
                member,
            } => bare(listen, copy, member).await,
            Cmd::Load {
                target,
                method,
                ids,
                batch,
                concurrency,
                connections,
                seconds,
                server_pid,
            } => {
                load(
                    target,
                    method,
                    ids,
                    batch,
                    concurrency,
                    connections,
                    seconds,
                    server_pid,
                )
                .await
            }
            Cmd::Watch {
                target,
                db,
                changes,
                interval_ms,
            } => watch(target, db, changes, Duration::from_millis(interval_ms)).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn answer(n: u64, version: u64) -> Vec<u8> {
        pb::BatchGetEntitlementsResponse {
            results: (1..=n)
                .map(|id| pb::EntitlementResult {
                    member_id: id,
                    entitlement: Some(pb::Entitlement {
                        member_id: id,
                        status: "active".into(),
                        ..Default::default()
                    }),
                    served_from: "l1".into(),
                    ..Default::default()
                })
                .collect(),
            catalog_version: version,
        }
        .encode_to_vec()
    }

    #[test]
    fn results_are_counted_from_the_top_level_fields() {
        assert_eq!(count_results(&mut &answer(100, 7)[..]), Ok(100));
        assert_eq!(count_results(&mut &answer(1, 1 << 40)[..]), Ok(1));
        assert!(count_results(&mut &answer(3, 0)[..]).is_err(), "no version");
        let whole = answer(5, 7);
        // Cut short anywhere: an error, never a count.
        for cut in 1..whole.len() {
            if let Ok(n) = count_results(&mut &whole[..cut]) {
                panic!("{n} results counted in {cut} of {} bytes", whole.len());
            }
        }
        // A field the response does not have.
        let mut odd = whole.clone();
        odd.extend_from_slice(&[3 << 3, 1]);
        assert!(count_results(&mut &odd[..]).is_err());
    }
}
