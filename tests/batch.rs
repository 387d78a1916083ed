//! `POST /v1/entitlements:batch`: answers equal to the single lookups, the cost bound
//! (one round trip per Redis node, one store query), the limits, and shedding.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::infra::*;
use common::*;
use serde_json::Value;

const BATCH: &str = "/v1/entitlements:batch";

fn body_of(ids: &[u64]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "member_ids": ids })).unwrap()
}

async fn batch(addr: std::net::SocketAddr, ids: &[u64]) -> Resp {
    post(addr, BATCH, "application/json", &body_of(ids)).await
}

/// The results of a 200 batch answer.
fn results(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "body: {}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-catalog-version").is_some());
    r.json()["results"].as_array().expect("results").clone()
}

/// Sum of the samples of `name` on a node's `/metrics` whose labels contain `label`.
async fn metric(admin: std::net::SocketAddr, name: &str, label: &str) -> f64 {
    let text = String::from_utf8(get(admin, "/metrics", &[]).await.body).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && (label.is_empty() || l.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `calls` of `cmdstat_<cmd>` in a redis-server's `INFO commandstats`.
async fn command_calls(server: &RedisServer, cmd: &str) -> u64 {
    let mut c = server.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until every zone node together holds a bucket field for each of `ids`.
async fn in_tier(servers: &[&RedisServer], ids: &[u64], bucket_size: u64) {
    eventually(Duration::from_secs(10), "the tier fill", || async {
        let mut held = 0;
        for id in ids {
            let (key, field) = readtier::tier::encoding::locate("readtier:", bucket_size, *id);
            for s in servers {
                let mut c = s.conn().await;
                let v: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg(&field)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                held += v.is_some() as usize;
            }
        }
        (held == ids.len()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_equal_the_single_lookups() {
    let (schema, _store) = seeded_pg(300).await;
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let zones = format!("a={},{}", r1.url(), r2.url());
    let env = [
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", zones),
    ];
    let filler = TestNode::start_with(&env).await;
    let node = TestNode::start_with(&env).await;
    // 10..=19 only in the tier (read through the other node), 20..=29 in this node's L1.
    for id in 10..=19u64 {
        assert_eq!(
            filler
                .get(&format!("/v1/members/{id}/entitlement"))
                .await
                .status,
            200
        );
    }
    in_tier(&[&r1, &r2], &(10..=19).collect::<Vec<_>>(), 100).await;
    for id in 20..=29u64 {
        assert_eq!(
            node.get(&format!("/v1/members/{id}/entitlement"))
                .await
                .status,
            200
        );
    }
    // 30..=39 nowhere yet; 900_000+ unknown; repeats of each kind.
    let ids: Vec<u64> = vec![
        12, 25, 33, 900_001, 10, 25, 33, 20, 900_001, 19, 30, 11, 39, 900_002,
    ];
    let r = batch(node.addr(), &ids).await;
    let got = results(&r);
    assert_eq!(got.len(), ids.len(), "one result per id");
    let mut from = BTreeMap::new();
    for (id, result) in ids.iter().zip(&got) {
        assert_eq!(result["member_id"], *id, "in order: {result}");
        let served = result["served_from"]
            .as_str()
            .expect("served_from")
            .to_string();
        from.entry(*id).or_insert(served);
        // The single lookup (now an L1 hit) answers the same, bar `served_from`.
        let single = node.get(&format!("/v1/members/{id}/entitlement")).await;
        assert_eq!(single.header("x-served-from"), Some("l1"), "{id}");
        let mut result = result.clone();
        result.as_object_mut().unwrap().remove("served_from");
        if *id > 300 {
            assert_eq!(
                single.assert_problem(404)["type"],
                "urn:readtier:problem:unknown-member"
            );
            assert_eq!(
                result,
                serde_json::json!({ "member_id": id, "error": "unknown-member" })
            );
        } else {
            assert_eq!(single.status, 200);
            assert_eq!(result, single.json(), "member {id}");
        }
    }
    for (id, served) in &from {
        let want = match id {
            10..=19 => "l2",
            20..=29 => "l1",
            _ => "store",
        };
        assert_eq!(served, want, "member {id}");
    }
    // Asked again, everything is in L1, and the answer is the same.
    let again = batch(node.addr(), &ids).await;
    for (a, b) in results(&again).iter().zip(&got) {
        assert_eq!(a["served_from"], "l1");
        let (mut a, mut b) = (a.clone(), b.clone());
        a.as_object_mut().unwrap().remove("served_from");
        b.as_object_mut().unwrap().remove("served_from");
        assert_eq!(a, b);
    }
    filler.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_misses_costs_one_round_trip_per_zone_node_and_one_store_query() {
    let (schema, _store) = seeded_pg(300).await;
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let zones = format!("a={},{}", r1.url(), r2.url());
    // Small buckets, so 100 ids span 11 of them, on both nodes.
    let env = [
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", zones),
        ("READTIER_L2_BUCKET_SIZE", "10".to_string()),
    ];
    let filler = TestNode::start_with(&env).await;
    let ids: Vec<u64> = (1..=100).collect();
    let reads = filler.running.app.members.store_reads();
    let first = batch(filler.addr(), &ids).await;
    assert!(results(&first).iter().all(|r| r["served_from"] == "store"));
    assert_eq!(
        filler.running.app.members.store_reads() - reads,
        1,
        "100 misses in no zone: one store query"
    );
    in_tier(&[&r1, &r2], &ids, 10).await;

    // A node with an empty L1: every id is in the tier.
    let node = TestNode::start_with(&env).await;
    let calls = |s: &RedisServer| format!("node=\"127.0.0.1:{}\"", s.port);
    let count = "readtier_l2_request_duration_seconds_count";
    let before = (
        metric(node.running.admin_addr, count, &calls(&r1)).await,
        metric(node.running.admin_addr, count, &calls(&r2)).await,
    );
    let hmget = (
        command_calls(&r1, "hmget").await,
        command_calls(&r2, "hmget").await,
    );
    let reads = node.running.app.members.store_reads();
    let second = batch(node.addr(), &ids).await;
    assert!(results(&second).iter().all(|r| r["served_from"] == "l2"));
    let after = (
        metric(node.running.admin_addr, count, &calls(&r1)).await,
        metric(node.running.admin_addr, count, &calls(&r2)).await,
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1.0, 1.0),
        "one round trip (one pipelined call) per node"
    );
    let hmget = (
        command_calls(&r1, "hmget").await - hmget.0,
        command_calls(&r2, "hmget").await - hmget.1,
    );
    assert!(
        hmget.0 >= 1 && hmget.1 >= 1,
        "both nodes hold some: {hmget:?}"
    );
    assert_eq!(hmget.0 + hmget.1, 11, "one HMGET per bucket: {hmget:?}");
    assert_eq!(node.running.app.members.store_reads() - reads, 0);

    // Half in the tier (95..=100), half in no zone (201..=206, 900_000): still one
    // round trip per node and one store query for the rest.
    let mixed: Vec<u64> = (95..=100).chain(201..=206).chain([900_000]).collect();
    let node2 = TestNode::start_with(&env).await;
    let before = (
        metric(node2.running.admin_addr, count, &calls(&r1)).await,
        metric(node2.running.admin_addr, count, &calls(&r2)).await,
    );
    let reads = node2.running.app.members.store_reads();
    let third = batch(node2.addr(), &mixed).await;
    let after = (
        metric(node2.running.admin_addr, count, &calls(&r1)).await,
        metric(node2.running.admin_addr, count, &calls(&r2)).await,
    );
    let got = results(&third);
    for (id, r) in mixed.iter().zip(&got) {
        let want = if *id <= 100 { "l2" } else { "store" };
        assert_eq!(r["served_from"], want, "{r}");
    }
    assert_eq!(got.last().unwrap()["error"], "unknown-member");
    assert_eq!(node2.running.app.members.store_reads() - reads, 1);
    // Reads: at most one per node. (The fill of 201..=206 writes afterwards, in the
    // background, and may already be counted: one more call per node at most.)
    assert!(
        after.0 - before.0 <= 2.0 && after.1 - before.1 <= 2.0,
        "{before:?} {after:?}"
    );
    filler.stop().await;
    node.stop().await;
    node2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_problems() {
    let node = TestNode::start(&[]).await;
    let addr = node.addr();
    let over: Vec<u64> = (1..=1001).collect();
    let r = batch(addr, &over).await;
    let p = r.assert_problem(413);
    assert_eq!(p["type"], "urn:readtier:problem:too-many-ids");
    assert!(p["detail"].as_str().unwrap().contains("1001"), "{p}");
    // 1,000 is allowed, unknown ids included.
    let full: Vec<u64> = (1..=1000).map(|i| i * 3).collect();
    let got = results(&batch(addr, &full).await);
    assert_eq!(got.len(), 1000);
    assert_eq!(got[0]["member_id"], 3);
    assert_eq!(got[999]["error"], "unknown-member");
    for (body, status, slug) in [
        (&br#"{"member_ids":[]}"#[..], 400, "malformed-body"),
        (br#"{"member_ids":[1,0]}"#, 400, "malformed-member-id"),
        (br#"{"member_ids":[1,-4]}"#, 400, "malformed-body"),
        (br#"{"member_ids":["1"]}"#, 400, "malformed-body"),
        (br#"{"member_ids":[1"#, 400, "malformed-body"),
        (br#"{}"#, 400, "malformed-body"),
        (b"not json", 400, "malformed-body"),
    ] {
        let r = post(addr, BATCH, "application/json", body).await;
        let p = r.assert_problem(status);
        assert_eq!(
            p["type"],
            format!("urn:readtier:problem:{slug}"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let r = post(addr, BATCH, "text/plain", b"{\"member_ids\":[1]}").await;
    r.assert_problem(415);
    let huge = format!("{{\"member_ids\":[1{}]}}", " ".repeat(40_000));
    let r = post(addr, BATCH, "application/json", huge.as_bytes()).await;
    assert_eq!(
        r.assert_problem(413)["type"],
        "urn:readtier:problem:body-too-large"
    );
    let r = get(addr, BATCH, &[]).await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
    // Whole floats are integers, as for authorize.
    let r = post(addr, BATCH, "application/json", br#"{"member_ids":[42.0]}"#).await;
    assert_eq!(results(&r)[0]["member_id"], 42);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_with_misses_are_shed_past_max_waiting_while_l1_batches_go_on() {
    let (schema, _store) = seeded_pg(100).await;
    let node = TestNode::start(&[
        ("READTIER_STORE_URL", &schema.url()),
        ("READTIER_HTTP_MAX_WAITING", "2"),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "20s"),
    ])
    .await;
    assert_eq!(results(&batch(node.addr(), &[1, 2]).await).len(), 2);
    // The store stops answering member reads; two misses take the two places.
    let locker = schema.lock_members().await;
    let addr = node.addr();
    let waiting: Vec<_> = [10u64, 11]
        .into_iter()
        .map(|id| tokio::spawn(async move { batch(addr, &[1, id]).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let shed = batch(addr, &[1, 12]).await;
    assert_eq!(
        shed.assert_problem(503)["type"],
        "urn:readtier:problem:overloaded"
    );
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(1), "shed at once");
    // A batch answered from memory waits for nothing and is not shed.
    let hit = batch(addr, &[2, 1, 2]).await;
    assert!(results(&hit).iter().all(|r| r["served_from"] == "l1"));
    locker.release().await;
    for w in waiting {
        let r = w.await.unwrap();
        assert_eq!(results(&r).len(), 2);
    }
    node.stop().await;
}

/// The floor rule holds for batches: a batch that reads a version older than one a
/// change event announced answers it but does not keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_never_keeps_a_version_below_the_floor() {
    let (_schema, store) = seeded_pg(20).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), &[]);
    let members = Arc::new(readtier::lookup::Members::new(
        store,
        None,
        &cfg.l1,
        readtier::lookup::FillLimits::of(&cfg),
    ));
    // Member 5 is held, then an event announces a version the store does not have
    // yet (its transaction in flight): the entry is dropped, the floor raised.
    let (held, _) = members.get(5).await.unwrap();
    members.invalidate(5, held.version + 1_000_000);
    assert!(members.get_l1(5).is_none());
    let reads = members.store_reads();
    let got = members.get_many(&[4, 5, 6, 4]).await.unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(
        members.store_reads() - reads,
        1,
        "one store query for three misses"
    );
    assert_eq!(got[1].0.version, held.version);
    assert!(members.get_l1(4).is_some() && members.get_l1(6).is_some());
    assert!(
        members.get_l1(5).is_none(),
        "below the floor: answered, not kept"
    );
    assert!(
        std::ptr::eq(&*got[0].0, &*got[3].0),
        "a repeated id is looked up once"
    );
}
