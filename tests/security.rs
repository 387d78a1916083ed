//! Secrets stay inside: passwords in Redis and PostgreSQL URLs never reach metrics
//! labels or the log, not even in connection errors.

mod common;

use std::time::Duration;

use common::infra::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_metrics_or_the_log() {
    const REDIS_SECRET: &str = "redis-Pa55word-xyzzy";
    const PG_SECRET: &str = "pg-Pa55word-plugh";
    let (schema, _store) = seeded_pg(100).await;
    let mut redis = RedisServer::start_with(&["--requirepass", REDIS_SECRET]);
    let redis_url = format!("redis://:{REDIS_SECRET}@127.0.0.1:{}", redis.port);
    // The test PostgreSQL trusts local connections: the password is carried, not checked.
    let store_url = schema
        .url()
        .replacen("postgres@", &format!("postgres:{PG_SECRET}@"), 1);
    assert!(store_url.contains(PG_SECRET), "{store_url}");
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(&[
        ("READTIER_STORE_URL", store_url.clone()),
        ("READTIER_REDIS_URLS", redis_url.clone()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_L1_TTL", "100ms".into()),
        ("RUST_LOG", "debug".into()),
    ]);
    let r = get(node.addr, "/v1/members/7/entitlement", &[]).await;
    assert_eq!(r.status, 200, "the node works with both passwords");
    // Errors: Redis dies (reads, the stream reader and fills fail and are logged)…
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in 1..=20 {
        get(node.addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = String::from_utf8(get(node.admin, "/metrics", &[]).await.body).unwrap();
    assert!(
        metrics.contains(&format!("127.0.0.1:{}", redis.port)),
        "the Redis node is named by host:port in metrics"
    );
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(15));
    let log = node.stderr.lock().unwrap().clone();
    assert!(
        log.contains(&format!("127.0.0.1:{}", redis.port)),
        "the failing Redis is named in the log: {}",
        &log[..log.len().min(2000)]
    );
    for (what, text) in [("metrics", &metrics), ("log", &log)] {
        for secret in [REDIS_SECRET, PG_SECRET] {
            assert!(
                !text.contains(secret),
                "a password reached the {what}: {}",
                text.lines()
                    .find(|l| l.contains(secret))
                    .unwrap_or_default()
            );
        }
    }
    // … and a store that refuses the connection (a wrong port) fails the start with
    // an error that names host:port, not the URL.
    let bad_store = store_url.replacen(":5432/", ":1/", 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"))
        .arg("migrate")
        .env("READTIER_STORE_URL", &bad_store)
        .env("READTIER_DATA_DIR", dir.path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PG_SECRET), "store password in: {text}");
    assert!(text.contains("127.0.0.1:1"), "the store is named: {text}");
}
