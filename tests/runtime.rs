//! `http.runtime = "per_core"`: the public listener on one current-thread runtime per
//! core, each accepting on its own `SO_REUSEPORT` socket. The node as a process: it
//! answers from every tier (the Redis connection is made on one of those runtimes and
//! shared by the others), and drains and exits on SIGTERM.

mod common;

use std::time::Duration;

use common::infra::{NodeProcess, RedisServer};

/// Threads of `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_runtimes_answer_from_every_tier_and_drain_on_sigterm() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "3000".into()),
        ("READTIER_REDIS_URLS", format!("a={}", redis.url())),
        ("READTIER_ZONE", "a".into()),
        ("READTIER_HTTP_RUNTIME", "per_core".into()),
    ]);
    // One accepting runtime per core this process may use (the child inherits the
    // test's affinity mask).
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(threads_named(node.child.id(), "readtier-http-"), cores);

    // 48 connections at once (the kernel spreads them over the sockets), each reading
    // plans and 20 members no one read before: misses filled from the store into L1
    // and the zone.
    let addr = node.addr;
    let first: Vec<_> = (0..48u64)
        .map(|c| {
            tokio::spawn(async move {
                let plans = common::get(addr, "/v1/plans?country=DE", &[]).await;
                assert_eq!(plans.status, 200);
                assert!(String::from_utf8_lossy(&plans.body).contains("\"EUR\""));
                for i in 0..20 {
                    let id = 1 + c * 20 + i;
                    let r = common::get(addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
                    assert_eq!(r.status, 200, "member {id}");
                    let body = String::from_utf8_lossy(&r.body).into_owned();
                    assert!(body.contains(&format!("\"member_id\":{id},")), "{body}");
                    assert_eq!(r.header("x-served-from"), Some("store"), "member {id}");
                }
            })
        })
        .collect();
    for t in first {
        t.await.unwrap();
    }
    // Read again: from L1, whichever runtime loaded them.
    for id in [1u64, 480, 960] {
        let r = common::get(addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
        assert_eq!(r.header("x-served-from"), Some("l1"), "member {id}");
    }
    // The zone was filled (through a connection made on one runtime, used by all).
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("readtier:h:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the zone holds the members read");
    // A second node on the same zone, multi-thread, reads them from L2: what the
    // per-core node wrote is there and well formed.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = NodeProcess::start(&[
        ("READTIER_DATA_DIR", other_dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "3000".into()),
        ("READTIER_REDIS_URLS", format!("a={}", redis.url())),
        ("READTIER_ZONE", "a".into()),
    ]);
    let r = common::get(other.addr, "/v1/members/480/entitlement", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-from"), Some("l2"));
    other.kill9();

    // SIGTERM: the node drains (keep-alive connections closed, in-flight answered) and
    // exits 0, per-core runtimes included.
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit {status:?}: {}",
        node.stderr.lock().unwrap()
    );
}
