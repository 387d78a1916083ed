//! The continuous consistency inspector and the member admin endpoints
//! (`/admin/members/{id}/inspect`, `/admin/members/{id}/flush`), over HTTP on port 0
//! against real PostgreSQL, two Redis zones of one private redis-server each, a
//! private redis-server for the change stream, and an in-process relay.

mod common;

use std::time::Duration;

use common::infra::*;
use common::*;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(20);

struct Setup {
    schema: PgSchema,
    a: RedisServer,
    b: RedisServer,
    stream: RedisServer,
}

impl Setup {
    async fn new(members: u64) -> Setup {
        let (schema, _store) = seeded_pg(members).await;
        Setup {
            schema,
            a: RedisServer::start(),
            b: RedisServer::start(),
            stream: RedisServer::start(),
        }
    }

    fn prefix(&self) -> String {
        format!("{}:", self.schema.name)
    }

    fn env(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("READTIER_STORE_URL", self.schema.url()),
            (
                "READTIER_REDIS_URLS",
                format!("a={};b={}", self.a.url(), self.b.url()),
            ),
            ("READTIER_ZONE", "a".to_string()),
            ("READTIER_CHANGES_STREAM_URL", self.stream.url()),
            ("READTIER_REDIS_PREFIX", self.prefix()),
            ("READTIER_L1_TTL", "10m".to_string()),
            ("READTIER_L2_BREAKER_COOLDOWN", "500ms".to_string()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k, v.to_string()));
        }
        env
    }

    async fn node(&self, extra: &[(&'static str, &str)]) -> TestNode {
        TestNode::start_with(&self.env(extra)).await
    }

    fn relay(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        relay_task(&config_of(&self.env(&[])), "relay")
    }

    /// The raw value zone `a` or `b` holds for a member.
    async fn raw(&self, zone: &RedisServer, id: u64) -> Option<Vec<u8>> {
        let (key, field) = readtier::tier::encoding::locate(&self.prefix(), 100, id);
        redis::cmd("HGET")
            .arg(&key)
            .arg(&field)
            .query_async(&mut zone.conn().await)
            .await
            .unwrap()
    }

    /// Writes a raw value into a zone behind the relay's back (no version check).
    async fn plant(&self, zone: &RedisServer, id: u64, raw: &[u8]) {
        let (key, field) = readtier::tier::encoding::locate(&self.prefix(), 100, id);
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&field)
            .arg(raw)
            .query_async(&mut zone.conn().await)
            .await
            .unwrap();
    }
}

fn version_of(r: &Resp) -> i64 {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["version"].as_i64().unwrap()
}

async fn admin_get(node: &TestNode, path: &str) -> Resp {
    get(node.running.admin_addr, path, &[]).await
}

async fn admin_post(node: &TestNode, path: &str) -> Resp {
    post(node.running.admin_addr, path, "application/json", b"").await
}

/// A metric's value from the admin listener's `/metrics` (0 if absent).
async fn metric(node: &TestNode, name: &str) -> f64 {
    let text = String::from_utf8(admin_get(node, "/metrics").await.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_at_zero_while_changes_flow_through_the_normal_path() {
    let s = Setup::new(200).await;
    let (stop, relay) = s.relay();
    // Many samples a second, so the few seconds below check hundreds of answers; a
    // grace of 2 s leaves room for a busy test machine's propagation, far above the
    // milliseconds it takes (the rule itself is what this test checks: changes
    // committed after an answer must not count).
    let node = s
        .node(&[
            ("READTIER_INSPECTOR_SAMPLES_PER_SECOND", "500"),
            ("READTIER_INSPECTOR_GRACE", "2s"),
        ])
        .await;
    let writer = {
        let schema_url = s.schema.url();
        tokio::spawn(async move {
            let c = pg_client(&schema_url).await;
            for round in 0..40u64 {
                let id = (round % 20 + 1) as i64;
                let status = if round % 2 == 0 { "grace" } else { "active" };
                c.execute(
                    "UPDATE memberships SET status = $1 WHERE member_id = $2",
                    &[&status, &id],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut answered = 0;
    while !writer.is_finished() {
        for id in 1..=40 {
            let r = node.get(&format!("/v1/members/{id}/entitlement")).await;
            assert_eq!(r.status, 200);
            answered += 1;
        }
    }
    writer.await.unwrap();
    eventually(LIMIT, "the inspector to check answers", || async {
        (node.running.app.inspector.counts().checked >= 50).then_some(())
    })
    .await;
    let counts = node.running.app.inspector.counts();
    assert_eq!(
        counts.stale, 0,
        "no answer was behind the store: {counts:?} of {answered} answers"
    );
    assert_eq!(counts.errors, 0, "{counts:?}");
    assert!(metric(&node, "readtier_inspector_checked_total").await >= 50.0);
    stop.cancel();
    relay.await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_written_behind_the_relays_back_is_counted_stale_inspected_and_flushed() {
    let s = Setup::new(100).await;
    let (stop, relay) = s.relay();
    let grace = [("READTIER_INSPECTOR_GRACE", "200ms")];
    let n1 = s.node(&grace).await;

    // Member 7 at its seeded version v1 in both zones (a store fill), then v2 through
    // the normal path: the relay writes it to both zones.
    let v1 = version_of(&n1.get("/v1/members/7/entitlement").await);
    let old = eventually(LIMIT, "the fill in zone a", || async {
        s.raw(&s.a, 7).await
    })
    .await;
    s.schema
        .exec("UPDATE memberships SET status = 'on_hold' WHERE member_id = 7")
        .await;
    let v2 = eventually(LIMIT, "v2 on n1 and in both zones", || async {
        let v2 = version_of(&n1.get("/v1/members/7/entitlement").await);
        let held = format!("{v2}|");
        let a = s
            .raw(&s.a, 7)
            .await
            .is_some_and(|r| r.starts_with(held.as_bytes()));
        let b = s
            .raw(&s.b, 7)
            .await
            .is_some_and(|r| r.starts_with(held.as_bytes()));
        (v2 > v1 && a && b).then_some(v2)
    })
    .await;
    assert_eq!(n1.running.app.inspector.counts().stale, 0);

    // Zone a gets v1 back behind the relay's back, and a fresh node of zone a
    // (no floor for member 7) serves it, well after v2 was committed.
    s.plant(&s.a, 7, &old).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stale_before = metric(&n1, "readtier_inspector_stale_total").await;
    let ages_before = metric(&n1, "readtier_inspector_stale_age_seconds_count").await;
    let n2 = s
        .node(&[grace[0], ("READTIER_INSPECTOR_SAMPLES_PER_SECOND", "1000")])
        .await;
    let r = n2.get("/v1/members/7/entitlement").await;
    assert_eq!(r.header("x-served-from"), Some("l2"));
    assert_eq!(version_of(&r), v1, "the planted old version is served");
    eventually(LIMIT, "the inspector to count stale answers", || async {
        // L1 now serves the old version too: every sampled answer is stale.
        assert_eq!(version_of(&n2.get("/v1/members/7/entitlement").await), v1);
        (n2.running.app.inspector.counts().stale >= 3).then_some(())
    })
    .await;
    let counts = n2.running.app.inspector.counts();
    assert_eq!(
        counts.stale, counts.checked,
        "every answer was stale: {counts:?}"
    );
    assert!(metric(&n2, "readtier_inspector_stale_total").await >= stale_before + 3.0);
    assert!(metric(&n2, "readtier_inspector_stale_age_seconds_count").await >= ages_before + 3.0);
    // Each stale answer was served at least 400 ms after v2 was written.
    let sum = metric(&n2, "readtier_inspector_stale_age_seconds_sum").await;
    assert!(sum >= 0.4 * 3.0, "age sum {sum}");

    // Inspect: L1 and zone a hold v1, zone b and the store v2.
    let r = admin_get(&n2, "/admin/members/7/inspect").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["member_id"], 7);
    assert_eq!(v["l1"]["state"], "member");
    assert_eq!(v["l1"]["version"], v1);
    assert_eq!(v["l1"]["served"], true);
    assert_eq!(v["l1"]["member"]["status"], "active");
    assert_eq!(v["zones"][0]["zone"], "a");
    assert_eq!(v["zones"][0]["local"], true);
    assert_eq!(v["zones"][0]["state"], "member");
    assert_eq!(v["zones"][0]["version"], v1);
    assert_eq!(v["zones"][1]["zone"], "b");
    assert_eq!(v["zones"][1]["version"], v2);
    assert_eq!(v["zones"][1]["member"]["status"], "on_hold");
    assert_eq!(v["store"]["state"], "member");
    assert_eq!(v["store"]["version"], v2);
    assert_eq!(v["store"]["member"]["status"], "on_hold");

    // Flush: zone a is repaired, zone b left alone, L1 dropped; the next read
    // answers the store's version.
    let r = admin_post(&n2, "/admin/members/7/flush").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["store"]["version"], v2);
    assert_eq!(v["l1"]["dropped"], true);
    assert_eq!(v["l1"]["floor"], v2);
    assert_eq!(v["zones"][0]["before"]["version"], v1);
    assert_eq!(v["zones"][0]["action"], "repaired");
    assert_eq!(v["zones"][1]["action"], "unchanged");
    assert!(s
        .raw(&s.a, 7)
        .await
        .unwrap()
        .starts_with(format!("{v2}|").as_bytes()));
    let r = n2.get("/v1/members/7/entitlement").await;
    assert_eq!(version_of(&r), v2);
    assert_eq!(r.header("x-served-from"), Some("l2"));
    let v = admin_get(&n2, "/admin/members/7/inspect").await.json();
    assert_eq!(v["l1"]["version"], v2);
    assert_eq!(v["zones"][0]["version"], v2);

    stop.cancel();
    relay.await.unwrap();
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_repairs_each_zone_to_the_store_and_a_down_zone_is_an_error_not_a_failure() {
    let mut s = Setup::new(100).await;
    let n = s
        .node(&[("READTIER_INSPECTOR_SAMPLES_PER_SECOND", "0")])
        .await;
    let v9 = version_of(&n.get("/v1/members/9/entitlement").await);
    eventually(LIMIT, "the fill in both zones", || async {
        (s.raw(&s.a, 9).await.is_some() && s.raw(&s.b, 9).await.is_some()).then_some(())
    })
    .await;
    // Zone b holds a version the store never had (corrupt), zone a nothing; a record
    // for an id the store lacks sits in zone a.
    s.plant(&s.b, 9, b"99999|a|US|premium").await;
    let (key, field) = readtier::tier::encoding::locate(&s.prefix(), 100, 9);
    let _: () = redis::cmd("HDEL")
        .arg(&key)
        .arg(&field)
        .query_async(&mut s.a.conn().await)
        .await
        .unwrap();
    s.plant(&s.a, 5000, b"3|a|US|premium").await;

    let v = admin_post(&n, "/admin/members/9/flush").await.json();
    assert_eq!(v["zones"][0]["before"]["state"], "absent");
    assert_eq!(v["zones"][0]["action"], "filled");
    assert_eq!(v["zones"][1]["before"]["version"], 99999);
    assert_eq!(v["zones"][1]["action"], "repaired");
    assert_eq!(
        v["l1"]["floor"], v9,
        "the floor is set to the store's version"
    );
    for zone in [&s.a, &s.b] {
        let held = s.raw(zone, 9).await.unwrap();
        assert!(held.starts_with(format!("{v9}|").as_bytes()));
    }
    assert_eq!(version_of(&n.get("/v1/members/9/entitlement").await), v9);

    let v = admin_post(&n, "/admin/members/5000/flush").await.json();
    assert_eq!(
        v["store"],
        serde_json::json!({"state": "absent", "version": null})
    );
    assert_eq!(v["zones"][0]["action"], "removed");
    assert_eq!(v["zones"][1]["action"], "unchanged");
    assert_eq!(s.raw(&s.a, 5000).await, None);

    // Zone b down: inspect still answers, showing the zone's error; flush reports it.
    s.b.kill9();
    let r = admin_get(&n, "/admin/members/9/inspect").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["zones"][0]["state"], "member");
    assert_eq!(v["zones"][1]["state"], "error");
    assert!(v["zones"][1]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(v["store"]["version"], v9);
    let r = admin_post(&n, "/admin/members/9/flush").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["zones"][0]["action"], "unchanged");
    assert_eq!(v["zones"][1]["action"], "error");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_admin_routes_answer_problems_for_bad_requests() {
    // The embedded store and no Redis: the routes work without a tier.
    let node = TestNode::start(&[]).await;
    for path in [
        "/admin/members/abc/inspect",
        "/admin/members/0/inspect",
        "/admin/members/-5/inspect",
        "/admin/members/99999999999999999999/inspect",
        "/admin/members//inspect",
    ] {
        let v = admin_get(&node, path).await.assert_problem(400);
        assert_eq!(
            v["type"], "urn:readtier:problem:malformed-member-id",
            "{path}"
        );
    }
    admin_post(&node, "/admin/members/abc/flush")
        .await
        .assert_problem(400);
    let r = admin_post(&node, "/admin/members/1/inspect").await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = admin_get(&node, "/admin/members/1/flush").await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
    admin_get(&node, "/admin/members/1/other")
        .await
        .assert_problem(404);
    admin_get(&node, "/admin/members/1")
        .await
        .assert_problem(404);
    // Not on the public listener.
    node.get("/admin/members/1/inspect")
        .await
        .assert_problem(404);

    // An id nobody has: every tier says so; flushing it is harmless.
    let v = admin_get(&node, "/admin/members/999999999/inspect")
        .await
        .json();
    assert_eq!(v["l1"]["state"], "absent");
    assert_eq!(v["zones"], serde_json::json!([]));
    assert_eq!(
        v["store"],
        serde_json::json!({"state": "absent", "version": null})
    );
    node.get("/v1/members/999999999/entitlement")
        .await
        .assert_problem(404);
    let v = admin_get(&node, "/admin/members/999999999/inspect")
        .await
        .json();
    assert_eq!(v["l1"]["state"], "no_member");
    let v = admin_post(&node, "/admin/members/999999999/flush")
        .await
        .json();
    assert_eq!(v["l1"]["dropped"], true);
    let v = admin_get(&node, "/admin/members/999999999/inspect")
        .await
        .json();
    assert_eq!(v["l1"]["state"], "absent");
    assert_eq!(v["l1"]["floor"], 0);
    node.stop().await;
}
