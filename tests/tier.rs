//! The Redis hash tier with two zones of two private redis-server processes each,
//! PostgreSQL as the store, and a dedicated redis-server for the change stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::infra::*;
use common::*;
use readtier::config::Config;
use readtier::member::{Member, Status};
use readtier::store::Store;
use readtier::tier::{Tier, TierEntry};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

struct Cluster {
    schema: PgSchema,
    a: Vec<RedisServer>,
    b: Vec<RedisServer>,
    stream: RedisServer,
    store: Store,
}

impl Cluster {
    async fn new(members: u64) -> Cluster {
        let (schema, store) = seeded_pg(members).await;
        Cluster {
            schema,
            a: vec![RedisServer::start(), RedisServer::start()],
            b: vec![RedisServer::start(), RedisServer::start()],
            stream: RedisServer::start(),
            store,
        }
    }

    fn urls(&self) -> String {
        let zone = |z: &[RedisServer]| z.iter().map(|r| r.url()).collect::<Vec<_>>().join(",");
        format!("a={};b={}", zone(&self.a), zone(&self.b))
    }

    fn env(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("READTIER_STORE_URL", self.schema.url()),
            ("READTIER_REDIS_URLS", self.urls()),
            ("READTIER_ZONE", "a".to_string()),
            ("READTIER_CHANGES_STREAM_URL", self.stream.url()),
            ("READTIER_REDIS_PREFIX", format!("{}:", self.schema.name)),
            ("READTIER_L1_TTL", "10m".to_string()),
            ("READTIER_L2_BREAKER_COOLDOWN", "500ms".to_string()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k, v.to_string()));
        }
        env
    }

    fn config(&self, extra: &[(&'static str, &str)]) -> Config {
        let pairs: Vec<(String, String)> = self
            .env(extra)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Config::from_layers(None, &pairs).unwrap()
    }

    fn tier(&self) -> Tier {
        let cfg = self.config(&[]);
        Tier::new(
            cfg.redis.as_ref().unwrap(),
            cfg.zone,
            &cfg.redis_prefix,
            &cfg.l2,
            cfg.redis_tls_ca.as_ref(),
        )
        .unwrap()
    }

    async fn node(&self, extra: &[(&'static str, &str)]) -> TestNode {
        let env = self.env(extra);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        TestNode::start(&pairs).await
    }

    /// Runs the `readtier` binary with this cluster's settings; returns its stdout,
    /// failing the test if it fails.
    fn readtier(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"))
            .args(args)
            .envs(self.env(&[]).into_iter().map(|(k, v)| (k.to_string(), v)))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Writes `entry` into one zone as a raw HSET on the node that holds its bucket,
    /// as an outside writer would (no version check).
    async fn plant(&self, zone: usize, entry: &TierEntry) {
        let id = match entry {
            TierEntry::Member(m) => m.id,
            TierEntry::Gone { .. } => unreachable!("plant records"),
        };
        let servers = if zone == 0 { &self.a } else { &self.b };
        let urls: Vec<String> = servers.iter().map(|r| r.url()).collect();
        let (key, field) =
            readtier::tier::encoding::locate(&format!("{}:", self.schema.name), 100, id);
        let node = readtier::tier::ring::Ring::new(&urls).node_for(key.as_bytes());
        let mut c = servers[node].conn().await;
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&field)
            .arg(readtier::tier::encoding::encode(entry))
            .query_async(&mut c)
            .await
            .unwrap();
    }

    fn relay(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        relay_task(&self.config(&[]), "relay")
    }
}

/// Member fields held by one redis-server (all buckets).
async fn fields_on(r: &RedisServer) -> u64 {
    let mut c = r.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:h:*")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut n = 0;
    for k in keys {
        let len: u64 = redis::cmd("HLEN")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        n += len;
    }
    n
}

async fn read_all(node: &TestNode, ids: impl Iterator<Item = u64>) -> Vec<String> {
    let mut from = Vec::new();
    for id in ids {
        let r = node.get(&format!("/v1/members/{id}/entitlement")).await;
        assert_eq!(r.status, 200, "member {id}");
        from.push(r.header("x-served-from").unwrap().to_string());
    }
    from
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fill_every_zone_spread_over_its_nodes_and_fresh_nodes_read_l2() {
    let c = Cluster::new(5000).await;
    // Ten members a bucket: 300 buckets to spread over a zone's two nodes. With the
    // default 100 there are 30, and how the ring splits so few depends on the bucket
    // keys, which carry this test's random prefix: one prefix in a few hundred put
    // fewer than a quarter on a node.
    const BUCKETS: (&str, &str) = ("READTIER_L2_BUCKET_SIZE", "10");
    let n1 = c.node(&[BUCKETS]).await;
    let from = read_all(&n1, 1..=3000).await;
    assert!(
        from.iter().all(|f| f == "store"),
        "a cold tier sends reads to the store"
    );
    eventually(LIMIT, "fills of 3000 members in both zones", || async {
        let (a0, a1) = (fields_on(&c.a[0]).await, fields_on(&c.a[1]).await);
        let (b0, b1) = (fields_on(&c.b[0]).await, fields_on(&c.b[1]).await);
        (a0 + a1 == 3000 && b0 + b1 == 3000).then_some(())
    })
    .await;
    for z in [&c.a, &c.b] {
        for node in z.iter() {
            let held = fields_on(node).await;
            assert!(
                held > 750,
                "each node of a zone holds more than a quarter: {held}"
            );
        }
    }
    // Second read on the same node: L1. First read on a fresh node: L2, not the store.
    assert!(read_all(&n1, 1..=50).await.iter().all(|f| f == "l1"));
    let n2 = c.node(&[BUCKETS]).await;
    assert!(read_all(&n2, 1..=200).await.iter().all(|f| f == "l2"));
    assert_eq!(n2.running.app.members.store_reads(), 0);
    // A node of zone b reads its own zone.
    let nb = c.node(&[("READTIER_ZONE", "b"), BUCKETS]).await;
    assert!(read_all(&nb, 201..=300).await.iter().all(|f| f == "l2"));
    n1.stop().await;
    n2.stop().await;
    nb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_fails_no_request_and_a_restarted_one_rejoins() {
    let mut c = Cluster::new(5000).await;
    let (stop, relay) = c.relay();
    let warmup = c.node(&[]).await;
    read_all(&warmup, 1..=3000).await;
    eventually(LIMIT, "fills in both zones", || async {
        (fields_on(&c.b[0]).await + fields_on(&c.b[1]).await == 3000).then_some(())
    })
    .await;
    c.a[1].kill9();

    let n = Arc::new(c.node(&[]).await);
    let mut clients = Vec::new();
    for k in 0..16u64 {
        let n = n.clone();
        clients.push(tokio::spawn(async move {
            let mut from = Vec::new();
            for i in 0..188u64 {
                let id = 1 + (k * 188 + i) % 3000;
                let r = n.get(&format!("/v1/members/{id}/entitlement")).await;
                assert_eq!(
                    r.status,
                    200,
                    "member {id}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                from.push(r.header("x-served-from").unwrap().to_string());
            }
            from
        }));
    }
    let mut all = Vec::new();
    for t in clients {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 3008);
    let l2 = all.iter().filter(|f| *f == "l2").count();
    let l1 = all.iter().filter(|f| *f == "l1").count();
    assert_eq!(
        l1 + l2,
        all.len(),
        "every answer from memory: the dead node's keys come from zone b"
    );
    assert!(l2 >= 3000 - 16, "each member read once from l2: {l2}");
    assert_eq!(
        n.running.app.members.store_reads(),
        0,
        "no read fell through to the store"
    );

    // A raw SQL write made now still reaches the node (zone b carries it).
    let victim = (1..=3000u64)
        .find(|id| {
            let t = c.tier();
            let (key, _) = readtier::tier::encoding::locate(
                &format!("{}:", c.schema.name),
                t.bucket_size(),
                *id,
            );
            readtier::tier::ring::Ring::new(&[c.a[0].url(), c.a[1].url()]).node_for(key.as_bytes())
                == 1
        })
        .unwrap();
    c.schema
        .exec(&format!(
            "UPDATE memberships SET status='paused' WHERE member_id={victim}"
        ))
        .await;
    eventually(
        LIMIT,
        "the write is visible with a zone-a node down",
        || async {
            let v = n
                .get(&format!("/v1/members/{victim}/entitlement"))
                .await
                .json();
            (v["status"] == "paused").then_some(())
        },
    )
    .await;

    // The node comes back empty; reads of its keys find them in zone b and write them
    // back. The relay is stopped first, so its repairs cannot be what fills it.
    stop.cancel();
    relay.await.unwrap();
    c.a[1].restart();
    assert_eq!(fields_on(&c.a[1]).await, 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh = c.node(&[]).await;
    read_all(&fresh, 1..=3000).await;
    eventually(LIMIT, "the restarted node is written back to", || async {
        (fields_on(&c.a[1]).await > 750).then_some(())
    })
    .await;
    warmup.stop().await;
    fresh.stop().await;
}

fn member(id: u64, status: Status, version: i64) -> Member {
    Member {
        id,
        status,
        plan_id: "premium".into(),
        country: "US".into(),
        version,
        price_lock: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_a_newer_change_loses_and_deleted_members_stay_deleted() {
    let c = Cluster::new(100).await;
    let tier = c.tier();
    let newer = TierEntry::Member(member(5, Status::Paused, 6));
    let older = TierEntry::Member(member(5, Status::Active, 5));
    for zone in 0..2 {
        assert!(tier.set_in(zone, 5, &newer).await.unwrap());
        assert!(
            !tier.set_in(zone, 5, &older).await.unwrap(),
            "an older fill loses"
        );
        assert!(
            !tier.set_in(zone, 5, &newer).await.unwrap(),
            "a duplicate is a no-op"
        );
        assert_eq!(tier.get_from(zone, 5).await.unwrap(), Some(newer.clone()));
    }

    // Deleting in SQL: the relay writes a tombstone everywhere; a slow fill of the old
    // row cannot bring the member back.
    let (stop, relay) = c.relay();
    let n = c.node(&[]).await;
    assert_eq!(n.get("/v1/members/7/entitlement").await.status, 200);
    let row = c.store.get_member(7).await.unwrap().unwrap();
    c.schema
        .exec("DELETE FROM memberships WHERE member_id = 7")
        .await;
    eventually(LIMIT, "member 7 gone", || async {
        (n.get("/v1/members/7/entitlement").await.status == 404).then_some(())
    })
    .await;
    for zone in 0..2 {
        assert!(matches!(
            tier.get_from(zone, 7).await.unwrap(),
            Some(TierEntry::Gone { .. })
        ));
        assert!(!tier
            .set_in(zone, 7, &TierEntry::Member(row.clone()))
            .await
            .unwrap());
    }
    let fresh = c.node(&[]).await;
    let r = fresh.get("/v1/members/7/entitlement").await;
    r.assert_problem(404);
    assert_eq!(
        r.header("x-served-from"),
        Some("l2"),
        "the tombstone answers"
    );
    stop.cancel();
    relay.await.unwrap();
    n.stop().await;
    fresh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_planted_drift_in_the_store_and_tier_buckets() {
    let c = Cluster::new(500).await;
    let tier = c.tier();
    let current = c.store.get_member(33).await.unwrap().unwrap();
    for id in 1..=500 {
        let m = c.store.get_member(id).await.unwrap().unwrap();
        tier.set_all(id, &TierEntry::Member(m)).await;
    }
    // Plant drift as an outside writer would (raw HSET): an old version in zone b, a
    // wrong record at the same version in zone a, a record for a member the store
    // does not have in a bucket it has members in, and one in a bucket where it has
    // none at all (only a walk of the tier's own buckets finds that one).
    let mut stale = current.clone();
    stale.version -= 1;
    stale.status = Status::Cancelled;
    c.plant(1, &TierEntry::Member(stale)).await;
    let mut wrong = c.store.get_member(34).await.unwrap().unwrap();
    wrong.plan_id = "mobile".into();
    c.plant(0, &TierEntry::Member(wrong)).await;
    c.plant(0, &TierEntry::Member(member(499_999, Status::Active, 1)))
        .await;
    c.plant(1, &TierEntry::Member(member(777_777, Status::Active, 1)))
        .await;
    c.schema.exec("INSERT INTO memberships (member_id, status, plan_id, country) VALUES (499901, 'active', 'basic', 'FR')").await;

    let text = c.readtier(&["reconcile"]);
    assert!(text.contains("checked 501 members"), "{text}");
    assert!(
        text.contains("zone a: missing 1, stale 2, repaired 2"),
        "{text}"
    );
    assert!(
        text.contains("zone b: missing 1, stale 2, repaired 2"),
        "{text}"
    );
    assert_eq!(
        tier.get_from(1, 33).await.unwrap(),
        Some(TierEntry::Member(current))
    );
    assert_eq!(
        tier.get_from(0, 34).await.unwrap(),
        Some(TierEntry::Member(
            c.store.get_member(34).await.unwrap().unwrap()
        ))
    );
    assert_eq!(tier.get_from(0, 499_999).await.unwrap(), None);
    assert_eq!(tier.get_from(1, 777_777).await.unwrap(), None);
    // A second pass finds nothing stale; --fill-missing fills the cold member.
    let again = c.readtier(&["reconcile", "--fill-missing"]);
    assert!(
        again.contains("zone a: missing 1, stale 0, repaired 1")
            && again.contains("zone b: missing 1, stale 0, repaired 1"),
        "{again}"
    );
    let last = readtier::tier::reconcile::reconcile(&c.store, &tier, false)
        .await
        .unwrap();
    assert!(
        last.zones.iter().all(|z| z.stale == 0 && z.missing == 0),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_copies_a_live_zone_into_a_write_only_one() {
    let c = Cluster::new(1000).await;
    let tier = c.tier();
    for id in 1..=1000 {
        let m = c.store.get_member(id).await.unwrap().unwrap();
        tier.set_in(0, id, &TierEntry::Member(m)).await.unwrap();
    }
    // Zone b is new: write-only while it warms, so nodes never read its misses.
    let n = c.node(&[("READTIER_L2_WRITE_ONLY_ZONES", "b")]).await;
    let mut a0 = c.a[0].conn().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut a0).await.unwrap();
    let mut a1 = c.a[1].conn().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut a1).await.unwrap();
    let r = n.get("/v1/members/3/entitlement").await;
    assert_eq!(
        r.header("x-served-from"),
        Some("store"),
        "write-only zone b is not read"
    );
    n.stop().await;

    for id in 1..=1000 {
        let m = c.store.get_member(id).await.unwrap().unwrap();
        tier.set_in(0, id, &TierEntry::Member(m)).await.unwrap();
    }
    let text = c.readtier(&["warm", "--from", "a", "--to", "b"]);
    // Member 3 was already written to b by the node's fill (writes go to every zone).
    assert!(
        text.contains("999 members copied, 1 already as new"),
        "{text}"
    );
    assert_eq!(fields_on(&c.b[0]).await + fields_on(&c.b[1]).await, 1000);
    let nb = c.node(&[("READTIER_ZONE", "b")]).await;
    assert!(read_all(&nb, 1..=100).await.iter().all(|f| f == "l2"));
    nb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_zone_is_read_filled_warmed_and_flushed() {
    let c = Cluster::new(2000).await;
    let dir = tempfile::tempdir().unwrap();
    let cluster: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_cluster_node(dir.path()))
        .collect();
    create_cluster(&cluster);
    // Zone a is the two plain nodes; zone c is the cluster, named by two of its seeds.
    let zones = format!(
        "a={},{};c=redis+cluster://127.0.0.1:{},redis+cluster://127.0.0.1:{}",
        c.a[0].url(),
        c.a[1].url(),
        cluster[0].port,
        cluster[1].port
    );
    let env = [("READTIER_REDIS_URLS", zones.as_str())];
    let n = c.node(&env).await;
    read_all(&n, 1..=500).await;
    // The fills reach the cluster, spread over its masters by slot.
    eventually(LIMIT, "fills in the cluster zone", || async {
        let mut total = 0;
        for node in &cluster {
            total += fields_on(node).await;
        }
        (total == 500).then_some(())
    })
    .await;
    let mut holding = 0;
    for node in &cluster {
        holding += (fields_on(node).await > 0) as u32;
    }
    assert!(holding >= 2, "buckets spread over the cluster's masters");
    // A node whose own zone is the cluster reads it.
    let mut zc = env.to_vec();
    zc.push(("READTIER_ZONE", "c"));
    let nc = c.node(&zc).await;
    assert!(read_all(&nc, 1..=100).await.iter().all(|f| f == "l2"));
    assert_eq!(nc.running.app.members.store_reads(), 0);

    // Warm the cluster zone from zone a after emptying it, then flush (a reseed's path).
    let mut cfg_env: Vec<(String, String)> = c
        .env(&env)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    cfg_env.push(("READTIER_ZONE".into(), "a".into()));
    let cfg = Config::from_layers(None, &cfg_env).unwrap();
    let tier = Tier::from_config(&cfg).unwrap().unwrap();
    let (removed, errors) = tier.flush_members().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(removed >= 5, "buckets removed from both zones: {removed}");
    for node in &cluster {
        assert_eq!(fields_on(node).await, 0);
    }
    for id in 1..=300 {
        let m = c.store.get_member(id).await.unwrap().unwrap();
        tier.set_in(0, id, &TierEntry::Member(m)).await.unwrap();
    }
    let (copied, _) = tier.warm(0, 1).await.unwrap();
    assert_eq!(copied, 300);
    let mut total = 0;
    for node in &cluster {
        total += fields_on(node).await;
    }
    assert_eq!(total, 300);
    n.stop().await;
    nc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_zone_down_fails_no_request() {
    let mut c = Cluster::new(1000).await;
    let warmup = c.node(&[]).await;
    read_all(&warmup, 1..=500).await;
    eventually(LIMIT, "fills in zone b", || async {
        (fields_on(&c.b[0]).await + fields_on(&c.b[1]).await == 500).then_some(())
    })
    .await;
    c.a[0].kill9();
    c.a[1].kill9();
    let n = c.node(&[]).await;
    let from = read_all(&n, 1..=500).await;
    assert!(
        from.iter().all(|f| f == "l2"),
        "every read answered by zone b"
    );
    assert_eq!(n.running.app.members.store_reads(), 0);
    warmup.stop().await;
    n.stop().await;
}

/// Issue 10: a flood of unknown ids costs the tier nothing and cannot evict members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_write_nothing_to_the_tier_and_evict_no_member() {
    let c = Cluster::new(200).await;
    let node = c
        .node(&[
            ("READTIER_L1_CAPACITY", "1000"),
            ("READTIER_L1_NEGATIVE_CAPACITY", "500"),
            ("READTIER_L1_NEGATIVE_TTL", "10m"),
        ])
        .await;
    // 200 members held in L1.
    read_all(&node, 1..=200).await;
    assert!(read_all(&node, 1..=200).await.iter().all(|f| f == "l1"));
    let mut before = 0;
    for r in c.a.iter().chain(&c.b) {
        before += fields_on(r).await;
    }
    assert_eq!(before, 400, "each member filled into both zones");
    // 5,000 unknown ids, 5× the L1 capacity and 10× the negative capacity.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = 1_000_000 + x % (1 << 50);
        let r = node.get(&format!("/v1/members/{id}/entitlement")).await;
        assert_eq!(r.status, 404, "member {id}");
    }
    let mut after = 0;
    for r in c.a.iter().chain(&c.b) {
        after += fields_on(r).await;
    }
    assert_eq!(after, before, "unknown ids wrote nothing to the tier");
    let from = read_all(&node, 1..=200).await;
    assert!(
        from.iter().all(|f| f == "l1"),
        "every member still in L1 after the flood: {:?}",
        from.iter().filter(|f| *f != "l1").count()
    );
    // An unknown id answered from the negative cache, then inserted, becomes known.
    let r = node.get("/v1/members/5000000/entitlement").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        node.get("/v1/members/5000000/entitlement")
            .await
            .header("x-served-from"),
        Some("l1")
    );
    let (stop, relay) = c.relay();
    c.schema
        .exec(
            "INSERT INTO memberships (member_id, status, plan_id, country) \
             VALUES (5000000, 'active', 'premium', 'US')",
        )
        .await;
    eventually(LIMIT, "the inserted member becomes known", || async {
        (node.get("/v1/members/5000000/entitlement").await.status == 200).then_some(())
    })
    .await;
    stop.cancel();
    relay.await.unwrap();
    node.stop().await;
}
