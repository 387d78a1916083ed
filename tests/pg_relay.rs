//! PostgreSQL store, the relay and the change stream, against real PostgreSQL and
//! private redis-server processes: every committed SQL write reaches every node.

mod common;

use std::time::Duration;

use common::infra::*;
use common::*;
use readtier::config::Config;
use readtier::node::seed_members_into;
use readtier::plan::CatalogData;
use readtier::store::{ChangeBatch, ChangeEvent, ChangeKind, Store};
use readtier::stream::{encode, entry_number, stream_key, StreamPublisher};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

/// A migrated schema with the reference catalog and `members` members.
async fn seeded(members: u64) -> (PgSchema, Store) {
    seeded_pg(members).await
}

fn env(schema: &PgSchema, redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", redis.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_L1_TTL", "10m".into()),
    ]
}

/// A relay in this process; cancel the token to stop it (releasing its lease).
fn relay_task(
    env: &[(&'static str, String)],
    id: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    common::infra::relay_task(&config_of(env), id)
}

async fn status_of(node: &TestNode, id: u64) -> String {
    let r = node.get(&format!("/v1/members/{id}/entitlement")).await;
    r.json()["status"].as_str().unwrap_or("?").to_string()
}

async fn await_status(node: &TestNode, id: u64, want: &str, what: &str) {
    eventually(LIMIT, what, || async {
        (status_of(node, id).await == want).then_some(())
    })
    .await;
}

/// Waits until every change committed so far has been published by the relay and
/// applied by each node (so no earlier event can arrive later and muddle a check).
async fn settle(schema: &PgSchema, redis: &RedisServer, nodes: &[&TestNode]) {
    let c = schema.client().await;
    let head: i64 = c
        .query_one("SELECT coalesce(max(txid), 0) FROM change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert!(head > 0, "settle is for after changes were made");
    // The relay has saved a position past every transaction that wrote so far.
    eventually(LIMIT, "the relay to publish everything", || async {
        let text: Option<String> = c
            .query_one("SELECT position FROM relay_state", &[])
            .await
            .unwrap()
            .get(0);
        let p: serde_json::Value = serde_json::from_str(&text?).ok()?;
        let pending: Vec<i64> = serde_json::from_value(p["pending"].clone()).ok()?;
        (p["xmax"].as_i64()? > head && !pending.contains(&head) && p["scan"].is_null())
            .then_some(())
    })
    .await;
    let mut conn = redis.conn().await;
    let key = stream_key(&format!("{}:", schema.name));
    let last: Vec<(String, std::collections::HashMap<String, redis::Value>)> =
        redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
    let (id, _) = last
        .first()
        .expect("the stream holds the published changes");
    let want = entry_number(id).expect("a relay entry id");
    // Every entry the relay recorded as published is in the stream, densely: none
    // skipped (a relay that published only some entries would leave holes).
    let saved: i64 = c
        .query_one("SELECT stream_seq FROM relay_state", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        want >= saved as u64,
        "the stream ends at {want}, the relay saved {saved} as published"
    );
    let all: Vec<(String, std::collections::HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<u64> = all.iter().filter_map(|(id, _)| entry_number(id)).collect();
    let first = ids.first().copied().unwrap_or(1);
    assert_eq!(
        ids,
        (first..=want).collect::<Vec<_>>(),
        "the stream's entries are dense"
    );
    for n in nodes {
        let pos = n.running.change_position.clone();
        eventually(LIMIT, "the node to apply the stream", || async {
            (pos.load(std::sync::atomic::Ordering::Acquire) >= want).then_some(())
        })
        .await;
    }
}

/// Reads member `id` on the node until it is held in L1 (so only a change event can
/// make the node answer differently).
async fn warm(node: &TestNode, id: u64) -> serde_json::Value {
    eventually(LIMIT, "member held in L1", || async {
        let r = node.get(&format!("/v1/members/{id}/entitlement")).await;
        (r.header("x-served-from") == Some("l1")).then(|| r.json())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_writes_reach_both_nodes_and_prices_converge() {
    let (schema, _store) = seeded(1000).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let (stop_relay, relay) = relay_task(&env, "r1");
    let a = TestNode::start_with(&env).await;
    let b = TestNode::start_with(&env).await;
    schema
        .exec("UPDATE memberships SET status='active' WHERE member_id=7")
        .await;
    await_status(&a, 7, "active", "member 7 active on a").await;
    await_status(&b, 7, "active", "member 7 active on b").await;
    settle(&schema, &redis, &[&a, &b]).await;
    let before = warm(&a, 7).await;
    warm(&b, 7).await;

    pg_exec(
        &schema.url(),
        &format!(
            "UPDATE {}.memberships SET status='paused' WHERE member_id=7",
            schema.name
        ),
    )
    .await;
    await_status(&a, 7, "paused", "paused on a").await;
    await_status(&b, 7, "paused", "paused on b").await;
    let after = a.get("/v1/members/7/entitlement").await.json();
    assert_eq!(after["can_stream"], false);
    assert!(after["version"].as_i64() > before["version"].as_i64());

    // NUMERIC prices render without stray zeros, and both nodes converge on one version.
    schema
        .exec("UPDATE plan_prices SET amount=27.49 WHERE country='US' AND plan_id='premium'")
        .await;
    schema.exec("UPDATE plan_prices SET amount=9.990 WHERE country='US' AND plan_id='standard-with-ads'").await;
    let versions = eventually(LIMIT, "both nodes answer 27.49 and 9.99", || async {
        let ra = a.get("/v1/plans?country=US").await;
        let rb = b.get("/v1/plans?country=US").await;
        let ok = |r: &Resp| {
            let v = r.json();
            v["plans"][2]["price"]["amount"] == "27.49"
                && v["plans"][0]["price"]["amount"] == "9.99"
        };
        (ok(&ra) && ok(&rb)).then(|| {
            (
                ra.header("x-catalog-version").unwrap().to_string(),
                rb.header("x-catalog-version").unwrap().to_string(),
            )
        })
    })
    .await;
    assert_eq!(
        versions.0, versions.1,
        "both nodes serve the same catalog version"
    );

    stop_relay.cancel();
    relay.await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_reader_never_skips_a_late_commit() {
    let (schema, store) = seeded(100).await;
    let mut reader = store.change_reader_at_head().await.unwrap();
    let late = schema.client().await;
    late.batch_execute("BEGIN; UPDATE memberships SET status='paused' WHERE member_id=8")
        .await
        .unwrap();
    schema
        .exec("UPDATE memberships SET status='paused' WHERE member_id=9")
        .await;
    let ids = |b: &ChangeBatch| -> Vec<u64> {
        b.events
            .iter()
            .filter_map(|e| match e.kind {
                ChangeKind::Member { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    };
    let first = reader.next_batch().await.unwrap();
    assert_eq!(ids(&first), [9], "the early commit is delivered at once");
    let late_txid: i64 = late
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    match reader.position() {
        Some(readtier::store::Position::Postgres(p)) => assert!(
            p.pending.contains(&late_txid),
            "the open transaction is remembered: {p:?}"
        ),
        other => panic!("a PostgreSQL position, not {other:?}"),
    }
    let again = reader.next_batch().await.unwrap();
    assert!(ids(&again).is_empty(), "not delivered twice");
    late.batch_execute("COMMIT").await.unwrap();
    let second = reader.next_batch().await.unwrap();
    assert_eq!(
        ids(&second),
        [8],
        "the late commit (lower seq) is delivered after it commits"
    );
    // (The horizon is cluster-wide: other tests' open transactions may hold it back,
    // so rows can stay remembered; they are never delivered twice.)
    let third = reader.next_batch().await.unwrap();
    assert!(ids(&third).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_committing_3s_late_reaches_the_node() {
    let (schema, _store) = seeded(100).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let (stop_relay, relay) = relay_task(&env, "r1");
    let n = TestNode::start_with(&env).await;
    for id in [8, 9] {
        schema
            .exec(&format!(
                "UPDATE memberships SET status='active' WHERE member_id={id}"
            ))
            .await;
        await_status(&n, id, "active", "active").await;
    }
    settle(&schema, &redis, &[&n]).await;
    for id in [8, 9] {
        warm(&n, id).await;
    }
    let late = schema.client().await;
    late.batch_execute("BEGIN; UPDATE memberships SET status='on_hold' WHERE member_id=8")
        .await
        .unwrap();
    schema
        .exec("UPDATE memberships SET status='cancelled' WHERE member_id=9")
        .await;
    await_status(&n, 9, "cancelled", "member 9's early commit").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status_of(&n, 8).await,
        "active",
        "uncommitted change not visible"
    );
    late.batch_execute("COMMIT").await.unwrap();
    await_status(&n, 8, "on_hold", "member 8's late commit").await;
    stop_relay.cancel();
    relay.await.unwrap();
    n.stop().await;
}

async fn lease_holder(schema: &PgSchema) -> Option<String> {
    let c = schema.client().await;
    c.query_one(
        "SELECT holder FROM relay_state WHERE id = 1 AND lease_until > clock_timestamp()",
        &[],
    )
    .await
    .ok()
    .and_then(|r| r.get::<_, Option<String>>(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_with_sigkill_is_replaced_and_nothing_is_lost() {
    let (schema, _store) = seeded(100).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let n = TestNode::start_with(&env).await;
    schema
        .exec("UPDATE memberships SET status='active' WHERE member_id IN (11, 12, 13)")
        .await;
    for id in [11, 12, 13] {
        await_status(&n, id, "active", "initial state").await;
    }
    // Nothing relays yet: the node still answers from the store on a miss, but the
    // members it holds only change through the stream.
    let mut a = relay_process("relay-a", &env);
    eventually(LIMIT, "relay-a active", || async {
        (lease_holder(&schema).await.as_deref() == Some("relay-a")).then_some(())
    })
    .await;
    settle(&schema, &redis, &[&n]).await;
    for id in [11, 12, 13] {
        warm(&n, id).await;
    }
    let _b = relay_process("relay-b", &env);
    schema
        .exec("UPDATE memberships SET status='paused' WHERE member_id=11")
        .await;
    await_status(&n, 11, "paused", "change through relay-a").await;

    a.kill9();
    schema
        .exec("UPDATE memberships SET status='paused' WHERE member_id=12")
        .await;
    // The standby takes over once the 3 s lease lapses.
    eventually(
        Duration::from_secs(8),
        "member 12 delivered by the standby within 8 s",
        || async { (status_of(&n, 12).await == "paused").then_some(()) },
    )
    .await;
    assert_eq!(lease_holder(&schema).await.as_deref(), Some("relay-b"));
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_with_no_relay_running_is_delivered_once_one_starts() {
    let (schema, _store) = seeded(100).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let mut first = relay_process("first", &env);
    let n = TestNode::start_with(&env).await;
    schema
        .exec("UPDATE memberships SET status='active' WHERE member_id=21")
        .await;
    await_status(&n, 21, "active", "initial").await;
    settle(&schema, &redis, &[&n]).await;
    warm(&n, 21).await;
    first.kill9();
    schema
        .exec("UPDATE memberships SET status='cancelled' WHERE member_id=21")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_of(&n, 21).await,
        "active",
        "held in L1 while nothing relays"
    );
    let _second = relay_process("second", &env);
    await_status(&n, 21, "cancelled", "delivered after a relay starts").await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_after_changes_sees_them() {
    let (schema, _store) = seeded(100).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let (stop_relay, relay) = relay_task(&env, "r1");
    schema
        .exec("UPDATE memberships SET status='grace' WHERE member_id=31")
        .await;
    schema
        .exec("UPDATE plan_prices SET amount=1.23 WHERE country='JP' AND plan_id='premium'")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = TestNode::start_with(&env).await;
    assert_eq!(status_of(&n, 31).await, "grace");
    let jp = n.get("/v1/plans?country=JP").await.json();
    assert_eq!(jp["plans"][0]["id"], "premium");
    assert_eq!(jp["plans"][0]["price"]["amount"], "1.23");
    stop_relay.cancel();
    relay.await.unwrap();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_out_of_order_events_are_harmless() {
    let (schema, _store) = seeded(100).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let (stop_relay, relay) = relay_task(&env, "r1");
    let n = TestNode::start_with(&env).await;
    schema
        .exec("UPDATE plan_prices SET amount=30 WHERE country='US' AND plan_id='premium'")
        .await;
    schema
        .exec("UPDATE memberships SET status='on_hold' WHERE member_id=41")
        .await;
    let version: u64 = eventually(LIMIT, "price 30", || async {
        let r = n.get("/v1/plans?country=US").await;
        (r.json()["plans"][2]["price"]["amount"] == "30")
            .then(|| r.header("x-catalog-version").unwrap().parse().unwrap())
    })
    .await;
    await_status(&n, 41, "on_hold", "on hold").await;
    settle(&schema, &redis, &[&n]).await;
    warm(&n, 41).await;
    // The marker is held in L1 too: only an event applied after the replayed ones can
    // change what the node answers for it.
    let marker = warm(&n, 42).await;
    assert_ne!(marker["status"], "paused");

    // Replay old, duplicate and out-of-order events straight onto the stream, as a
    // relay that was replaced could, while no relay runs.
    stop_relay.cancel();
    relay.await.unwrap();
    let cfg = config_of(&env);
    let mut p = StreamPublisher::from_config(&cfg).unwrap();
    let next = p.sync(0, 0).await;
    let ev = |seq, kind| ChangeEvent {
        seq,
        kind,
        changed_at_ms: 0,
    };
    let replayed = [
        ev(1, ChangeKind::Catalog { version: 1 }),
        ev(
            2,
            ChangeKind::Member {
                id: 41,
                version: 1,
                deleted: false,
            },
        ),
        ev(
            2,
            ChangeKind::Member {
                id: 41,
                version: 1,
                deleted: false,
            },
        ),
        ev(
            3,
            ChangeKind::Member {
                id: 41,
                version: 0,
                deleted: true,
            },
        ),
        ev(
            1,
            ChangeKind::Catalog {
                version: version - 1,
            },
        ),
    ];
    p.append(next, &encode(&replayed)).await.unwrap();
    let (stop_relay, relay) = relay_task(&env, "r2");
    // A marker after them: once it is visible, the replayed events were applied too.
    schema
        .exec("UPDATE memberships SET status='paused' WHERE member_id=42")
        .await;
    await_status(&n, 42, "paused", "marker").await;
    let r = n.get("/v1/plans?country=US").await;
    assert_eq!(
        r.header("x-catalog-version")
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        version,
        "catalog never moves back"
    );
    assert_eq!(r.json()["plans"][2]["price"]["amount"], "30");
    assert_eq!(
        status_of(&n, 41).await,
        "on_hold",
        "the store's truth, whatever the events said"
    );
    stop_relay.cancel();
    relay.await.unwrap();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_postgres_copies_members_with_plans_their_country_offers() {
    let (schema, store) = seeded(5000).await;
    let c = schema.client().await;
    let row = c
        .query_one(
            "SELECT count(*), min(member_id), max(member_id),
                    count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM plan_prices p WHERE p.country = m.country AND p.plan_id = m.plan_id))
               FROM memberships m",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        (5000, 1, 5000, 0)
    );
    // Seeding again overwrites with raised versions, and logs one reseed, not 5000 rows.
    let highest: i64 = c
        .query_one("SELECT max(version) FROM memberships", &[])
        .await
        .unwrap()
        .get(0);
    let before: i64 = c
        .query_one("SELECT count(*) FROM change_log", &[])
        .await
        .unwrap()
        .get(0);
    seed_members_into(&store, &CatalogData::reference().unwrap(), 5000)
        .await
        .unwrap();
    let after: i64 = c
        .query_one("SELECT count(*) FROM change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after - before, 1);
    let (lowest, top): (i64, i64) = {
        let r = c
            .query_one("SELECT min(version), max(version) FROM memberships", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        lowest > highest,
        "every reseeded row is newer than any before ({lowest} > {highest})"
    );
    // Triggers are back on: a raw write is logged and takes the next version.
    schema
        .exec("UPDATE memberships SET country = country WHERE member_id = 1")
        .await;
    let v: i64 = c
        .query_one("SELECT version FROM memberships WHERE member_id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(v > top, "{v} > {top}");
    let prices = c
        .query_one(
            "SELECT amount::text FROM plan_prices WHERE country='US' AND plan_id='premium'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(prices.get::<_, String>(0), "26.99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stream_redis_loses_no_change_for_a_node_that_read_everything() {
    let (schema, _store) = seeded(100).await;
    let mut redis = RedisServer::start();
    let env = env(&schema, &redis);
    let (stop_relay, relay) = relay_task(&env, "r1");
    let n = TestNode::start_with(&env).await;
    schema
        .exec("UPDATE memberships SET status='active' WHERE member_id IN (51, 52)")
        .await;
    await_status(&n, 51, "active", "initial").await;
    settle(&schema, &redis, &[&n]).await;
    warm(&n, 51).await;
    warm(&n, 52).await;

    // Redis keeps nothing on disk: the restart empties the stream. The node had read
    // every entry, so nothing was lost to it and it keeps its L1 ...
    redis.restart();
    schema
        .exec("UPDATE memberships SET status='paused' WHERE member_id=52")
        .await;
    // ... and a change made after the restart reaches it, on the same dense ids.
    await_status(
        &n,
        52,
        "paused",
        "a change after the restart reaches the node",
    )
    .await;
    let r = n.get("/v1/members/51/entitlement").await;
    assert_eq!(r.header("x-served-from"), Some("l1"), "no gap: L1 kept");
    stop_relay.cancel();
    relay.await.unwrap();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_unread_entries_were_lost_reports_a_gap() {
    let mut redis = RedisServer::start();
    let prefix = format!("gap{}:", std::process::id());
    let cfg = Config::from_layers(
        None,
        &[
            ("READTIER_REDIS_URLS".into(), redis.url()),
            ("READTIER_REDIS_PREFIX".into(), prefix),
        ],
    )
    .unwrap();
    let mut p = StreamPublisher::from_config(&cfg).unwrap();
    let mut reader = readtier::stream::StreamReader::from_config(&cfg, LIMIT).unwrap();
    let ev = |id| ChangeEvent {
        seq: 0,
        kind: ChangeKind::Member {
            id,
            version: 1,
            deleted: false,
        },
        changed_at_ms: 0,
    };
    let first = p.sync(0, 0).await;
    assert_eq!(first, 1);
    p.append(1, &encode(&[ev(1)])).await.unwrap();
    reader.start_at_head().await.unwrap();
    assert_eq!(reader.position(), Some(1));
    // Entry 2 is appended, and lost with a restart before the reader reads it.
    p.append(2, &encode(&[ev(2)])).await.unwrap();
    redis.restart();
    // The first call after the restart may meet the dead connection (the relay then
    // publishes again); the next reconnects.
    let mut tries = 0;
    while let Err(e) = p.append(3, &encode(&[ev(3)])).await {
        tries += 1;
        assert!(tries < 20, "append after restart keeps failing: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let batch = loop {
        match reader.next_batch().await {
            Ok(b) if !b.events.is_empty() || b.gap => break b,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(batch.gap, "entry 2 was never read: a gap");
    assert_eq!(reader.position(), Some(3));
    // Nothing lost afterwards: no gap.
    p.append(4, &encode(&[ev(4)])).await.unwrap();
    let next = reader.next_batch().await.unwrap();
    assert!(!next.gap && next.events.len() == 1, "{next:?}");
}

/// Two relays started without `--id` (as two containers would be: same hostname, both
/// pid 1 in theirs) name themselves apart, and exactly one holds the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_started_without_an_id_name_themselves_apart() {
    use std::io::{BufRead, BufReader};
    let (schema, _store) = seeded(10).await;
    let redis = RedisServer::start();
    let start = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"));
        for (k, _) in std::env::vars() {
            if k.starts_with("READTIER_") {
                c.env_remove(k);
            }
        }
        c.arg("relay")
            .envs(env(&schema, &redis))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = Proc(c.spawn().unwrap());
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let holder = line
            .strip_prefix("readtier relay ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("relay printed {line:?}"))
            .to_string();
        (child, holder)
    };
    let (_a, first) = start();
    let (_b, second) = start();
    assert_ne!(first, second, "two relays, two names");
    let holder = eventually(LIMIT, "one relay holds the lease", || async {
        lease_holder(&schema).await
    })
    .await;
    assert!(holder == first || holder == second, "{holder}");
}
