//! Issue 17, "claims with nothing behind them": each test here shows one claim of
//! README / config/default.toml end to end, through the public surface (HTTP, the
//! `readtier` binary), against real PostgreSQL and private redis-server processes,
//! and fails when the feature it is named for is broken.
//!
//! Two tests showed a claim false when written: a store read that outlived
//! `http.request_timeout` freed its `l2.max_store_fills` slot while its query ran on,
//! and left its pooled connection busy for the change follower. Both pass since member
//! reads hold their permit until the store answers, on a pool of their own.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::infra::*;
use common::*;
use readtier::member::Member;
use readtier::store::Store;
use readtier::stream::{entry_number, stream_key};
use readtier::tier::{encoding, Tier, TierEntry};

const LIMIT: Duration = Duration::from_secs(10);

type Env = Vec<(&'static str, String)>;

async fn entitlement(addr: std::net::SocketAddr, id: u64) -> Resp {
    get(addr, &format!("/v1/members/{id}/entitlement"), &[]).await
}

fn served_from(r: &Resp) -> String {
    r.header("x-served-from").unwrap_or("none").to_string()
}

fn version_of(r: &Resp) -> i64 {
    r.json()["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("no version in {}", String::from_utf8_lossy(&r.body)))
}

fn status_of(r: &Resp) -> String {
    r.json()["status"].as_str().unwrap_or("?").to_string()
}

/// Reads member `id` until the node answers it from L1.
async fn hold_in_l1(addr: std::net::SocketAddr, id: u64) -> Resp {
    eventually(LIMIT, "member held in L1", || async {
        let r = entitlement(addr, id).await;
        assert_eq!(r.status, 200, "member {id}");
        (r.header("x-served-from") == Some("l1")).then_some(r)
    })
    .await
}

async fn current(store: &Store, id: u64) -> Member {
    store.get_member(id).await.unwrap().expect("member exists")
}

/// Writes every member `1..=n` the store holds into every zone of the tier.
async fn fill_every_zone(tier: &Tier, store: &Store, n: u64) {
    let entries: Vec<(u64, TierEntry)> = store
        .members_range(1, n as i64)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let m = r.expect("readable row");
            (m.id, TierEntry::Member(m))
        })
        .collect();
    assert_eq!(entries.len() as u64, n);
    for zone in 0..tier.zones.len() {
        assert!(tier.set_many_in(zone, &entries).await.is_empty());
    }
}

/// The tier as the test itself writes and reads it (setup and checks): the same
/// zones, with a timeout that a loaded test machine cannot trip.
fn patient_tier(env: &Env) -> Tier {
    let mut env = env.clone();
    env.push(("READTIER_L2_TIMEOUT", "5s".into()));
    Tier::from_config(&config_of(&env)).unwrap().unwrap()
}

/// The value of an unlabelled metric on a node's admin listener.
async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let r = get(admin, "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// The numbers of the first and last entries of a stream copy (0, 0 when empty).
async fn stream_bounds(r: &RedisServer, prefix: &str) -> (u64, u64) {
    let mut c = r.conn().await;
    let key = stream_key(prefix);
    let mut ends = [0u64; 2];
    for (i, cmd) in ["XRANGE", "XREVRANGE"].into_iter().enumerate() {
        let (from, to) = if i == 0 { ("-", "+") } else { ("+", "-") };
        let rows: Vec<(String, std::collections::HashMap<String, redis::Value>)> = redis::cmd(cmd)
            .arg(&key)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
        ends[i] = rows
            .first()
            .and_then(|(id, _)| entry_number(id))
            .unwrap_or(0);
    }
    (ends[0], ends[1])
}

/// Commits one update of member `id` (its status flipped), then waits until the relay
/// has published it as a stream entry of its own.
async fn commit_and_publish(pg: &tokio_postgres::Client, r: &RedisServer, prefix: &str, id: u64) {
    let (_, before) = stream_bounds(r, prefix).await;
    pg.batch_execute(&format!(
            "UPDATE memberships SET status = CASE WHEN status = 'paused' THEN 'active' ELSE 'paused' END WHERE member_id = {id}"
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while stream_bounds(r, prefix).await.1 <= before {
        assert!(
            Instant::now() < deadline,
            "the relay did not publish the update"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `nodes` have applied every change committed so far: a member each
/// holds in L1 is updated, and each must answer the new row (only the update's event,
/// which comes after every earlier change in the stream, can make it).
async fn settle(schema: &PgSchema, nodes: &[std::net::SocketAddr], sentinel: u64) {
    for n in nodes {
        hold_in_l1(*n, sentinel).await;
    }
    schema
        .exec(&format!(
            "UPDATE memberships SET status = CASE WHEN status = 'grace' THEN 'active' ELSE 'grace' END WHERE member_id = {sentinel}"
        ))
        .await;
    let c = schema.client().await;
    let want: String = c
        .query_one(
            &format!("SELECT status FROM memberships WHERE member_id = {sentinel}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for n in nodes {
        eventually(LIMIT, "the node to apply the sentinel update", || async {
            (status_of(&entitlement(*n, sentinel).await) == want).then_some(())
        })
        .await;
    }
}

/// Member reads blocked in PostgreSQL: requests for a lock on this schema's
/// `memberships` that are not granted (another session holds it exclusively).
async fn blocked_member_reads(watcher: &tokio_postgres::Client) -> i64 {
    watcher
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE relation = 'memberships'::regclass AND NOT granted",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs the `readtier` binary with exactly these settings; returns its stdout.
fn readtier(args: &[&str], env: &Env) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"));
    for (k, _) in std::env::vars() {
        if k.starts_with("READTIER_") {
            c.env_remove(k);
        }
    }
    let out = c
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "readtier {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

// ---------------------------------------------------------------------------------
// Claim: "each node call has a timeout; a node that fails repeatedly has its circuit
// opened for a cool-down and is skipped (then probed again), so a dead node costs
// nothing per request and no request fails because a node or zone is down" — for a
// node that is HUNG (SIGSTOP: it accepts and holds connections, answers nothing).
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_node_costs_reads_at_most_its_timeout_then_is_skipped_and_used_again() {
    const MEMBERS: u64 = 1000;
    let (schema, store) = seeded_pg(MEMBERS).await;
    let za = RedisServer::start();
    let mut zb = RedisServer::start();
    let stream = RedisServer::start();
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        (
            "READTIER_REDIS_URLS",
            format!("a={};b={}", za.url(), zb.url()),
        ),
        ("READTIER_ZONE", "a".into()),
        ("READTIER_CHANGES_STREAM_URL", stream.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_L1_TTL", "10m".into()),
        // l2.timeout (50ms) and l2.breaker_failures (5) are the defaults.
        ("READTIER_L2_BREAKER_COOLDOWN", "1s".into()),
    ];
    let cfg = config_of(&env);
    assert_eq!(cfg.l2.timeout, Duration::from_millis(50));
    fill_every_zone(&patient_tier(&env), &store, MEMBERS).await;
    let n = Arc::new(TestNode::start_with(&env).await);
    let r = entitlement(n.addr(), 1).await;
    assert_eq!(served_from(&r), "l2", "zone a answers while it is up");

    // Zone a's only node hangs. 8 clients read 400 members none of them has read
    // before (so every read is an L1 miss that goes to the tier).
    let hung = Stopped::new(za.pid());
    let mut clients = Vec::new();
    for k in 0..8u64 {
        let n = n.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..50u64 {
                let id = 101 + k * 50 + i;
                let started = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(2), entitlement(n.addr(), id))
                    .await
                    .unwrap_or_else(|_| panic!("member {id}: no answer within 2 s"));
                answers.push((id, r.status, served_from(&r), started.elapsed()));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    assert_eq!(answers.len(), 400);
    for (id, status, from, _) in &answers {
        assert_eq!(*status, 200, "member {id} answered {status}");
        assert!(
            from == "l2" || from == "store",
            "member {id} answered from {from}"
        );
    }
    // Zone b holds every member: it answers (the store only when zone b was slow too).
    let l2 = answers.iter().filter(|a| a.2 == "l2").count();
    assert!(
        l2 * 10 >= answers.len() * 9,
        "only {l2} of 400 answered by zone b"
    );
    let mut took: Vec<Duration> = answers.iter().map(|a| a.3).collect();
    took.sort();
    let slowest = *took.last().unwrap();
    let quick = took.iter().filter(|t| **t < cfg.l2.timeout).count();
    eprintln!(
        "hung node: {quick} of {} reads under l2.timeout; median {:?}, p90 {:?}, slowest {slowest:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 9 / 10]
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a read waited {slowest:?} with a hung node"
    );
    assert!(
        quick * 4 >= took.len() * 3,
        "only {quick} of {} reads answered in less than l2.timeout ({:?}): the hung node \
         is still being waited for (median {:?}, p90 {:?}, slowest {slowest:?})",
        took.len(),
        cfg.l2.timeout,
        took[took.len() / 2],
        took[took.len() * 9 / 10],
    );

    // SIGCONT, and zone b killed: from now on only zone a can answer from L2. Once
    // its cool-down is over the node reads it again.
    drop(hung);
    zb.kill9();
    let back = Instant::now();
    let mut id = 501;
    loop {
        let r = entitlement(n.addr(), id).await;
        assert_eq!(r.status, 200, "member {id}");
        id += 1;
        if served_from(&r) == "l2" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "zone a not read again within 5 s of SIGCONT (last answer from {})",
            served_from(&r)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut from_a = 0;
    for id in id..id + 50 {
        let r = entitlement(n.addr(), id).await;
        assert_eq!(r.status, 200, "member {id} after SIGCONT");
        from_a += usize::from(served_from(&r) == "l2");
    }
    assert!(
        from_a >= 45,
        "only {from_a} of 50 members read after SIGCONT were answered by zone a"
    );
    Arc::try_unwrap(n).ok().unwrap().stop().await;
}

// ---------------------------------------------------------------------------------
// Claim: `l2.max_store_fills` — "Most store reads in flight at once from this node".
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_store_fills_caps_the_store_reads_in_flight() {
    let (schema, _store) = seeded_pg(2000).await;
    // No Redis: every miss is a store read. The request timeout is long, so no load
    // gives up while this runs (see the ignored test below for loads that do).
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_L2_MAX_STORE_FILLS", "2".into()),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "10s".into()),
    ];
    let n = TestNode::start_with(&env).await;
    // Another session holds memberships exclusively: every member read blocks in
    // PostgreSQL, where it is counted.
    let locker = schema.lock_members().await;
    let watcher = schema.client().await;
    // 12 clients keep asking for members not read before, each one after the other.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = keep_missing(n.addr(), 12, stop.clone());
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        seen.push(blocked_member_reads(&watcher).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("blocked member reads, sampled: {seen:?}");
    assert_eq!(
        seen.iter().max(),
        Some(&2),
        "member reads blocked in PostgreSQL at once, sampled every 20 ms: {seen:?}"
    );
    // Past the limit a miss is not queued behind the store: it is answered 503
    // (overloaded, Retry-After) at once, and its client moves on to the next member.
    let shed = entitlement(n.addr(), 1999).await;
    let p = shed.assert_problem(503);
    assert_eq!(p["type"], "urn:readtier:problem:overloaded", "{p}");
    assert_eq!(shed.header("retry-after"), Some("1"));
    locker.release().await;
    let mut answers = std::collections::BTreeMap::new();
    for c in clients {
        for (status, took) in c.await.unwrap() {
            let e = answers.entry(status).or_insert((0, Duration::ZERO));
            e.0 += 1;
            e.1 = e.1.max(took);
        }
    }
    eprintln!("answers (status: count, slowest): {answers:?}");
    let (ok, _) = answers.get(&200).copied().unwrap_or_default();
    let (shed, slowest_shed) = answers.get(&503).copied().unwrap_or_default();
    assert_eq!(answers.len(), 2, "200s and 503s only: {answers:?}");
    assert!(
        ok >= 2,
        "the reads that held the two fills answered: {answers:?}"
    );
    assert!(
        shed >= 20,
        "the others were shed, each at once: {answers:?}"
    );
    assert!(
        slowest_shed < Duration::from_millis(500),
        "a shed miss took {slowest_shed:?}"
    );
    assert_eq!(
        n.running.app.members.store_reads() as usize,
        ok,
        "one store read per member answered: no shed miss read the store"
    );
    n.stop().await;
}

/// Misses for distinct members sent by `clients` tasks, one after another each, until
/// `stop` is set; a fresh member every time. Each answer: its status and how long it took.
fn keep_missing(
    addr: std::net::SocketAddr,
    clients: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, Duration)>>> {
    (0..clients)
        .map(|k| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut id = 1 + k * 150;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let status = entitlement(addr, id).await.status;
                    answers.push((status, started.elapsed()));
                    id += 1;
                    // A shed comes at once: a client backs off a little before the next
                    // (so none runs past its 150 members in the 2.5 s a test lasts).
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                answers
            })
        })
        .collect()
}

// The same bound once store reads outlive `http.request_timeout`: a load that times
// out gives its permit back, but its query goes on in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_store_fills_caps_store_reads_in_flight_even_when_they_time_out() {
    let (schema, _store) = seeded_pg(2000).await;
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_L2_MAX_STORE_FILLS", "2".into()),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "300ms".into()),
    ];
    let n = TestNode::start_with(&env).await;
    let locker = schema.lock_members().await;
    let watcher = schema.client().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = keep_missing(n.addr(), 12, stop.clone());
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(2500) {
        seen.push(blocked_member_reads(&watcher).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    locker.release().await;
    let mut answered = 0;
    for c in clients {
        let answers = c.await.unwrap();
        assert!(answers.iter().all(|(s, _)| *s == 503 || *s == 200));
        answered += answers.len();
    }
    assert!(
        answered > 24,
        "loads timed out and were retried: {answered}"
    );
    assert!(
        seen.iter().all(|b| *b <= 2),
        "member reads blocked in PostgreSQL at once with l2.max_store_fills = 2, \
         sampled every 50 ms while loads time out after 300 ms: {seen:?}"
    );
    n.stop().await;
}

// Follows from the same cause: a connection whose member read was abandoned goes back
// to the pool with the read still pending, and the change follower's next poll can be
// queued behind it: the node stops applying changes while member reads are stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_member_reads_do_not_stall_the_change_follower() {
    let (schema, _store) = seeded_pg(2000).await;
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_L2_MAX_STORE_FILLS", "2".into()),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "300ms".into()),
    ];
    let n = TestNode::start_with(&env).await;
    let version = |r: Resp| r.header("x-catalog-version").map(str::to_string);
    let v0 = version(get(n.addr(), "/v1/plans?country=US", &[]).await);
    let locker = schema.lock_members().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = keep_missing(n.addr(), 12, stop.clone());
    // Member loads time out for a second; then a price changes (plan_prices is not
    // locked: the catalog can be read).
    tokio::time::sleep(Duration::from_secs(1)).await;
    schema
        .exec("UPDATE plan_prices SET amount = amount + 1 WHERE country = 'US' AND plan_id = 'premium'")
        .await;
    let changed = Instant::now();
    let mut seen = None;
    while changed.elapsed() < Duration::from_millis(1500) {
        if version(get(n.addr(), "/v1/plans?country=US", &[]).await) != v0 {
            seen = Some(changed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    locker.release().await;
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        seen.is_some(),
        "a catalog change committed while member reads were timing out was not applied \
         within 1.5 s"
    );
    n.stop().await;
}

// ---------------------------------------------------------------------------------
// Claim: `http.request_timeout` "also bounds a member lookup (503)": a store that does
// not answer is a 503 problem within the timeout, not a hang.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_is_a_503_problem_within_the_request_timeout() {
    let (schema, _store) = seeded_pg(50).await;
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "1s".into()),
    ];
    let n = TestNode::start_with(&env).await;
    let locker = schema.lock_members().await;
    // Two requests for one member (coalesced on one load) and two for others.
    let mut requests = Vec::new();
    for id in [7u64, 7, 8, 9] {
        let addr = n.addr();
        requests.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(4), entitlement(addr, id))
                .await
                .unwrap_or_else(|_| panic!("member {id}: no answer within 4 s"));
            (id, r, started.elapsed())
        }));
    }
    for req in requests {
        let (id, r, took) = req.await.unwrap();
        let p = r.assert_problem(503);
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:readtier:problem:store-"),
            "member {id}: {p}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2000),
            "member {id}: 503 after {took:?}, want the 1 s request timeout (plus scheduling)"
        );
    }
    locker.release().await;
    // Nothing was cached from the failure.
    let r = entitlement(n.addr(), 7).await;
    assert_eq!((r.status, served_from(&r).as_str()), (200, "store"));
    n.stop().await;
}

// ---------------------------------------------------------------------------------
// Claim: a gap is "Redis unreachable for longer than the L1 TTL" → the node drops L1.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_longer_than_the_l1_ttl_makes_the_node_drop_l1() {
    const TTL: Duration = Duration::from_secs(4);
    let (schema, _store) = seeded_pg(100).await;
    // One Redis: the tier's only node and the only copy of the change stream.
    let mut r = RedisServer::start();
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", r.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_L1_TTL", "4s".into()),
    ];
    let n = TestNode::start_with(&env).await;
    hold_in_l1(n.addr(), 1).await;

    r.kill9();
    let down = Instant::now();
    // Reads go on from the store meanwhile.
    let r5 = entitlement(n.addr(), 5).await;
    assert_eq!((r5.status, served_from(&r5).as_str()), (200, "store"));
    tokio::time::sleep(
        (down + TTL + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    )
    .await;
    r.restart();
    // A member read right after Redis is back: held in L1 for the next 4 s, unless
    // the node drops L1. (Entries from before the outage have expired by themselves,
    // so they cannot show it.) The stream is empty after the restart and nothing is
    // written: no entry can be missing, only the outage can count as a gap.
    let cached = Instant::now();
    let first = entitlement(n.addr(), 50).await;
    assert_eq!(first.status, 200);
    let held = entitlement(n.addr(), 50).await;
    assert_eq!(served_from(&held), "l1", "member 50 held in L1");
    let dropped = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = entitlement(n.addr(), 50).await;
        assert_eq!(r.status, 200);
        if served_from(&r) != "l1" {
            break cached.elapsed();
        }
        assert!(
            cached.elapsed() < TTL - Duration::from_millis(500),
            "member 50, read after Redis came back from a {:?} outage (L1 TTL {TTL:?}), \
             still served from L1 {:?} later: the outage was not taken as a gap",
            cached - down,
            cached.elapsed()
        );
    };
    eprintln!(
        "L1 dropped {dropped:?} after the member was cached (outage {:?})",
        cached - down
    );
    assert!(dropped < TTL, "{dropped:?}");
    n.stop().await;
}

// ---------------------------------------------------------------------------------
// Claim: "a node that falls further behind than [changes.stream_maxlen] drops its
// whole L1" — a node process paused while the stream is trimmed past it.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_trimmed_past_a_paused_node_makes_it_drop_l1_and_serve_new_rows() {
    let (schema, store) = seeded_pg(300).await;
    let r = RedisServer::start();
    let prefix = format!("{}:", schema.name);
    let dir = tempfile::tempdir().unwrap();
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", r.url()),
        ("READTIER_REDIS_PREFIX", prefix.clone()),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_L1_TTL", "10m".into()),
        ("READTIER_CHANGES_STREAM_MAXLEN", "10".into()),
    ];
    let (stop_relay, relay) = relay_task(&config_of(&env), "claims-relay");
    let node = NodeProcess::start(&env);
    settle(&schema, &[node.addr], 300).await;
    let (_, top) = stream_bounds(&r, &prefix).await;
    eventually(LIMIT, "the node at the end of the stream", || async {
        (metric(node.admin, "readtier_change_log_position").await as u64 == top).then_some(())
    })
    .await;
    // Held in L1: members that will change (1..=10) and members that will not.
    let changed: Vec<u64> = (1..=10).collect();
    let unchanged: Vec<u64> = (101..=110).collect();
    let mut before = std::collections::HashMap::new();
    for id in changed.iter().chain(&unchanged) {
        before.insert(*id, hold_in_l1(node.addr, *id).await);
    }
    assert_eq!(
        metric(node.admin, "readtier_change_log_gaps_total").await,
        0.0
    );

    // The node stops reading; the changes go out as entries of their own, and more
    // entries follow until the stream no longer holds the ones right after the node's
    // position (it may still take the one its blocked read was handed).
    let paused = Stopped::new(node.child.id());
    let pg = schema.client().await;
    for id in &changed {
        commit_and_publish(&pg, &r, &prefix, *id).await;
    }
    let mut filler = 200;
    let mut entries = changed.len();
    while stream_bounds(&r, &prefix).await.0 <= top + 2 {
        commit_and_publish(&pg, &r, &prefix, filler).await;
        filler = if filler == 299 { 200 } else { filler + 1 };
        entries += 1;
        assert!(entries < 1000, "the stream was never trimmed");
    }
    let (first, last) = stream_bounds(&r, &prefix).await;
    eprintln!("node at entry {top}; {entries} entries committed while paused; stream holds {first}..={last}");
    assert!(
        last - first < 200,
        "trimmed to about stream_maxlen: {first}..={last}"
    );
    drop(paused);

    eventually(LIMIT, "the node to report a gap", || async {
        (metric(node.admin, "readtier_change_log_gaps_total").await >= 1.0).then_some(())
    })
    .await;
    for id in &changed {
        let resp = entitlement(node.addr, *id).await;
        let now = current(&store, *id).await;
        assert_ne!(
            served_from(&resp),
            "l1",
            "member {id} changed while the node was paused"
        );
        assert_eq!(
            (status_of(&resp), version_of(&resp)),
            (now.status.as_str().to_string(), now.version),
            "member {id}: the store's new row (was {} at {})",
            status_of(&before[id]),
            version_of(&before[id])
        );
    }
    for id in &unchanged {
        let resp = entitlement(node.addr, *id).await;
        assert_ne!(
            served_from(&resp),
            "l1",
            "member {id} (unchanged) still in L1: L1 was not dropped"
        );
        assert_eq!(version_of(&resp), version_of(&before[id]));
    }
    assert!(
        node.stderr.lock().unwrap().contains("entries missing"),
        "the node logs the gap"
    );
    stop_relay.cancel();
    relay.await.unwrap();
}

// ---------------------------------------------------------------------------------
// Claim: "a bulk reseed ... drops the whole L1" on every node.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseed_makes_every_node_drop_l1_and_serve_the_reseeded_rows() {
    const MEMBERS: u64 = 300;
    let (schema, store) = seeded_pg(MEMBERS).await;
    let r = RedisServer::start();
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", r.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_L1_TTL", "10m".into()),
    ];
    let (stop_relay, relay) = relay_task(&config_of(&env), "claims-relay");
    // Members 1..=40 differ from what a reseed writes (it writes the generated rows).
    schema
        .exec("UPDATE memberships SET status = CASE WHEN status = 'paused' THEN 'active' ELSE 'paused' END WHERE member_id <= 40")
        .await;
    let a = TestNode::start_with(&env).await;
    let b = TestNode::start_with(&env).await;
    settle(&schema, &[a.addr(), b.addr()], MEMBERS).await;
    let ids: Vec<u64> = (1..=60).collect();
    let mut before = std::collections::HashMap::new();
    for n in [&a, &b] {
        for id in &ids {
            let r = hold_in_l1(n.addr(), *id).await;
            before.insert(*id, (status_of(&r), version_of(&r)));
        }
    }

    let out = readtier(
        &["seed", "--members", &MEMBERS.to_string()],
        &vec![("READTIER_STORE_URL", schema.url())],
    );
    assert!(out.contains("seeded 300 members"), "{out}");
    let mut after = std::collections::HashMap::new();
    for id in &ids {
        let m = current(&store, *id).await;
        assert!(
            m.version > before[id].1,
            "member {id} rewritten by the seed"
        );
        after.insert(*id, m);
    }
    for id in 1..=40 {
        assert_ne!(after[&id].status.as_str(), before[&id].0, "member {id}");
    }
    // The seed writes with the member triggers off: no member event, one reseed
    // event. Each node must answer every member it held with the reseeded row, and
    // the first answer of each must come from outside L1.
    for n in [&a, &b] {
        let deadline = Instant::now() + LIMIT;
        loop {
            let r = entitlement(n.addr(), 1).await;
            if version_of(&r) == after[&1].version {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member 1 still answered at version {} from {} {LIMIT:?} after the reseed \
                 (the store has {}): L1 was not dropped",
                version_of(&r),
                served_from(&r),
                after[&1].version
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for id in &ids[1..] {
            let r = entitlement(n.addr(), *id).await;
            assert_ne!(
                served_from(&r),
                "l1",
                "member {id} still served from L1 after the reseed"
            );
            assert_eq!(
                (status_of(&r), version_of(&r)),
                (after[id].status.as_str().to_string(), after[id].version),
                "member {id}"
            );
        }
    }
    stop_relay.cancel();
    relay.await.unwrap();
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------
// Claim: `readtier reconcile` finds and repairs drift in a zone that is a Redis
// Cluster (buckets spread over its masters, found by a SCAN of each).
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_and_repairs_drift_in_a_redis_cluster_zone() {
    const MEMBERS: u64 = 300;
    let (schema, store) = seeded_pg(MEMBERS).await;
    let a = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cluster: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_cluster_node(dir.path()))
        .collect();
    create_cluster(&cluster);
    let prefix = format!("{}:", schema.name);
    let env: Env = vec![
        ("READTIER_STORE_URL", schema.url()),
        (
            "READTIER_REDIS_URLS",
            format!(
                "a={};c=redis+cluster://127.0.0.1:{},redis+cluster://127.0.0.1:{}",
                a.url(),
                cluster[0].port,
                cluster[1].port
            ),
        ),
        ("READTIER_REDIS_PREFIX", prefix.clone()),
        // Not what is shown here: generous, so a loaded machine cannot fail a call.
        ("READTIER_L2_TIMEOUT", "2s".into()),
    ];
    let tier = Tier::from_config(&config_of(&env)).unwrap().unwrap();
    let c = tier.zone_index("c").unwrap();
    fill_every_zone(&tier, &store, MEMBERS).await;

    // Drift planted as an outside writer would (raw HSET through a cluster client):
    // an older version, a different record at the store's version, and a record for a
    // member the store does not have, in a bucket it has no member in (only the SCAN
    // of the cluster's masters finds that one).
    let client =
        redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}", cluster[2].port)])
            .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let mut old = current(&store, 42).await;
    old.version -= 1;
    old.status = readtier::member::Status::Cancelled;
    let mut wrong = current(&store, 43).await;
    wrong.plan_id = if wrong.plan_id == "mobile" {
        "premium".into()
    } else {
        "mobile".into()
    };
    let mut orphan = current(&store, 44).await;
    orphan.id = 250_042;
    for m in [&old, &wrong, &orphan] {
        let (key, field) = encoding::locate(&prefix, tier.bucket_size(), m.id);
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&field)
            .arg(encoding::encode(&TierEntry::Member(m.clone())))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            tier.get_from(c, m.id).await.unwrap(),
            Some(TierEntry::Member(m.clone())),
            "planted"
        );
    }

    let text = readtier(&["reconcile"], &env);
    assert!(
        text.contains("zone a: missing 0, stale 0, repaired 0"),
        "{text}"
    );
    assert!(
        text.contains("zone c: missing 0, stale 3, repaired 3"),
        "{text}"
    );
    for id in [42, 43] {
        assert_eq!(
            tier.get_from(c, id).await.unwrap(),
            Some(TierEntry::Member(current(&store, id).await)),
            "member {id} repaired in the cluster zone"
        );
    }
    assert_eq!(tier.get_from(c, 250_042).await.unwrap(), None);
    let again = readtier(&["reconcile"], &env);
    assert!(
        again.contains("zone a: missing 0, stale 0, repaired 0")
            && again.contains("zone c: missing 0, stale 0, repaired 0"),
        "{again}"
    );
}
