//! Operating readtier: metrics that explain themselves (build, process, the
//! commit-to-applied lag), and the Grafana dashboard in `deploy/grafana/` querying only
//! metrics a live node exports. Every node here is a process of its own, so its
//! figures are its alone.

mod common;

use std::time::Duration;

use common::infra::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(20);

/// The text of a node's `/metrics`.
async fn scrape(admin: std::net::SocketAddr) -> String {
    let r = get(admin, "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).expect("metrics are UTF-8")
}

/// The value of one series (name and labels exactly as rendered), if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok())?
    })
}

const LAG: &str = "readtier_change_commit_to_applied_seconds";

/// The lag histogram's count and sum (0, 0 before its first sample).
fn lag(text: &str) -> (f64, f64) {
    (
        series(text, &format!("{LAG}_count")).unwrap_or(0.0),
        series(text, &format!("{LAG}_sum")).unwrap_or(0.0),
    )
}

/// Waits until the node has recorded more than `before` lag samples; the new count and sum.
async fn lag_after(admin: std::net::SocketAddr, before: f64) -> (f64, f64, String) {
    eventually(LIMIT, "the change counted in the lag histogram", || async {
        let text = scrape(admin).await;
        let (count, sum) = lag(&text);
        (count > before).then_some((count, sum, text))
    })
    .await
}

/// The lag histogram's count and sum once they have not moved for half a second (a
/// node's first reads may count the changes made while it started: a seed, the relay's
/// first announcements).
async fn settled(admin: std::net::SocketAddr) -> (f64, f64) {
    let mut last = lag(&scrape(admin).await);
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = lag(&scrape(admin).await);
        if now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lag histogram never settled"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_the_build_and_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "1000".into()),
    ]);
    let text = scrape(node.admin).await;

    // The commit the binary was built from: what `git` says of this checkout, or
    // "unknown" where there is no checkout (the value build.rs falls back to).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let info = format!(
        "readtier_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(series(&text, &info), Some(1.0), "{info} in\n{text}");

    let value = |name: &str| series(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    // A node that seeded 1,000 members and built a catalog has spent CPU and memory.
    assert!(value("process_cpu_seconds_total") > 0.0);
    let rss = value("process_resident_memory_bytes");
    assert!(
        rss > 4.0 * 1024.0 * 1024.0 && rss < 4.0 * 1024.0 * 1024.0 * 1024.0,
        "{rss}"
    );
    assert!(value("process_virtual_memory_bytes") >= rss);
    // Its listeners, its store and its stdio at least.
    let fds = value("process_open_fds");
    assert!(fds >= 5.0, "{fds}");
    assert!(value("process_max_fds") >= fds);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );

    // Each kind is declared once, with its help.
    for (name, kind) in [
        ("readtier_build_info", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        let typed = format!("# TYPE {name} {kind}");
        assert_eq!(text.lines().filter(|l| *l == typed).count(), 1, "{typed}");
        assert!(text
            .lines()
            .any(|l| l.starts_with(&format!("# HELP {name} "))));
    }

    // The figures are read at each scrape: CPU time does not go back, and rises
    // under work.
    for i in 0..200 {
        get(
            node.addr,
            &format!("/v1/members/{}/entitlement", i % 1000 + 1),
            &[],
        )
        .await;
    }
    let later = scrape(node.admin).await;
    assert!(
        series(&later, "process_cpu_seconds_total").unwrap() >= value("process_cpu_seconds_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_written_to_the_embedded_store_is_counted_in_the_lag_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "1000".into()),
    ]);
    let text = scrape(node.admin).await;
    // Declared from the start, with its help, before any change is applied.
    assert!(text.contains(&format!("# TYPE {LAG} histogram")), "{text}");
    assert!(text.contains(&format!("# HELP {LAG} ")), "{text}");
    // The follower re-reads the retained log at start (the seed's event among it):
    // changes committed before the node started are not late deliveries.
    let (before, sum_before) = settled(node.admin).await;
    assert_eq!(before, 0.0, "nothing was committed since the node started");

    let db = dir.path().join("readtier.db");
    tokio::task::spawn_blocking(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute(
            "UPDATE memberships SET status = 'paused' WHERE member_id = 42",
            [],
        )
        .unwrap();
    })
    .await
    .unwrap();
    let (count, sum, text) = lag_after(node.admin, before).await;
    assert_eq!(count, before + 1.0, "one change, one sample");
    let took = sum - sum_before;
    // Polled every 10 ms: applied well within a second of its commit.
    assert!((0.0..1.0).contains(&took), "lag {took} s");
    assert_eq!(
        series(&text, &format!("{LAG}_bucket{{le=\"+Inf\"}}")),
        Some(count),
        "cumulative buckets end at the count"
    );
    assert_eq!(
        series(&text, &format!("{LAG}_bucket{{le=\"300\"}}")),
        Some(count)
    );
    // The node serves the change it counted.
    let r = get(node.addr, "/v1/members/42/entitlement", &[]).await;
    assert_eq!(r.json()["status"], "paused");

    // A catalog change is counted once its new snapshot is installed.
    let db = dir.path().join("readtier.db");
    tokio::task::spawn_blocking(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute(
            "UPDATE plan_prices SET amount = '9.49' WHERE country = 'US' AND plan_id = 'standard-with-ads'",
            [],
        )
        .unwrap();
    })
    .await
    .unwrap();
    let (after, _, _) = lag_after(node.admin, count).await;
    assert_eq!(after, count + 1.0, "one catalog change, one sample");
    let plans = get(node.addr, "/v1/plans?country=US", &[]).await.json();
    assert_eq!(plans["plans"][0]["price"]["amount"], "9.49");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_the_relay_and_stream_is_counted_in_the_lag_histogram() {
    let (schema, _store) = seeded_pg(100).await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", redis.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        // The relay is paused below for under three seconds: it keeps its lease.
        ("READTIER_RELAY_LEASE_TTL", "10s".into()),
    ];
    let relay = relay_process("ops-relay", &env);
    let node = NodeProcess::start(&env);
    // The relay is publishing and the node reading once a first change arrives.
    schema
        .exec("UPDATE memberships SET status = 'grace' WHERE member_id = 1")
        .await;
    lag_after(node.admin, 0.0).await;
    let (before, sum_before) = settled(node.admin).await;

    schema
        .exec("UPDATE memberships SET status = 'on_hold' WHERE member_id IN (7, 8)")
        .await;
    let (count, sum, _) = lag_after(node.admin, before).await;
    // Both rows travel in one stream entry (one transaction); wait for the second
    // sample should they have come apart.
    let (count, sum) = if count < before + 2.0 {
        let (c, s, _) = lag_after(node.admin, count).await;
        (c, s)
    } else {
        (count, sum)
    };
    assert_eq!(count, before + 2.0, "two changes, two samples");
    let took = sum - sum_before;
    assert!((0.0..4.0).contains(&took), "lag {took} s for two changes");
    let r = get(node.addr, "/v1/members/7/entitlement", &[]).await;
    assert_eq!(r.json()["status"], "on_hold");

    // Two commits 2.5 s apart while the relay is paused reach the node together (in
    // one stream entry, as a relay catching up publishes them): each is counted from
    // its own commit, the first over 2.5 s, the second well under.
    let bucket = |text: &str| series(text, &format!("{LAG}_bucket{{le=\"2.5\"}}")).unwrap();
    let text = scrape(node.admin).await;
    let (before, under_before) = (lag(&text).0, bucket(&text));
    let paused = Stopped::new(relay.0.id());
    schema
        .exec("UPDATE memberships SET status = 'paused' WHERE member_id = 9")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    schema
        .exec("UPDATE memberships SET status = 'paused' WHERE member_id = 10")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(paused);
    let (mut count, _, mut text) = lag_after(node.admin, before).await;
    if count < before + 2.0 {
        (count, _, text) = lag_after(node.admin, count).await;
    }
    assert_eq!(count, before + 2.0);
    assert_eq!(
        bucket(&text) - under_before,
        1.0,
        "only the second change was applied within 2.5 s of its commit"
    );
}

/// The metric names a PromQL expression reads (`readtier_…` and `process_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            // Labels and functions never start so; label values are in quotes and
            // none of the dashboard's does.
            if w.starts_with("readtier_") || w.starts_with("process_") {
                out.push(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported_by_a_live_node() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/readtier.json"
        ))
        .expect("deploy/grafana/readtier.json"),
    )
    .expect("the dashboard is JSON");
    let mut queried = std::collections::BTreeSet::new();
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {}: no metric in {expr}",
                p["title"]
            );
            queried.extend(names);
        }
    }
    // The panels the issue asks for are there (by the metric each one reads).
    for wanted in [
        "readtier_http_requests_total",
        "readtier_http_request_duration_seconds_bucket",
        "readtier_l1_hits_total",
        "readtier_l2_hits_total",
        "readtier_store_reads_total",
        "readtier_shed_total",
        "readtier_queue_delay_seconds",
        "readtier_l2_breaker_open",
        "readtier_change_commit_to_applied_seconds_bucket",
        "readtier_inspector_stale_total",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard does not query {wanted}"
        );
    }

    // A node of the production topology (PostgreSQL, a Redis zone, the relay), with a
    // change applied and some traffic, so every kind of series exists.
    let (schema, _store) = seeded_pg(100).await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", redis.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
    ];
    let _relay = relay_process("dashboard-relay", &env);
    let node = NodeProcess::start(&env);
    get(node.addr, "/v1/plans?country=US", &[]).await;
    get(node.addr, "/v1/members/3/entitlement", &[]).await;
    get(node.addr, "/v1/members/3/entitlement", &[]).await;
    schema
        .exec("UPDATE memberships SET status = 'grace' WHERE member_id = 3")
        .await;
    let (_, _, text) = lag_after(node.admin, 0.0).await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried by the dashboard, absent from /metrics: {missing:?}\n{text}"
    );
}

#[test]
fn the_kubernetes_configuration_is_a_valid_readtier_configuration() {
    // The ConfigMap's file, with the variables the example overlay's pods get.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base/readtier.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let env: Vec<(String, String)> = [
        ("READTIER_STORE_URL", "postgres://readtier@postgres.db.svc:5432/readtier?sslmode=require"),
        ("READTIER_REDIS_URLS", "a=redis://redis-a-0.redis.svc:6379,redis://redis-a-1.redis.svc:6379;b=redis://redis-b-0.redis.svc:6379"),
        ("READTIER_L1_CAPACITY", "500000"),
        // Injected by Kubernetes for a Service named readtier were service links on.
        ("READTIER_PORT", "tcp://10.0.0.1:80"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg =
        readtier::config::Config::from_layers(Some((std::path::Path::new(path), &text)), &env)
            .expect("deploy/k8s/base/readtier.toml is a valid configuration");
    assert!(
        !cfg.admin_listen.ip().is_loopback(),
        "the kubelet probes the admin listener"
    );
    assert_eq!(cfg.data_dir, std::path::Path::new("/var/lib/readtier"));
    assert_eq!(cfg.seed_members, 0);
    assert!(cfg.http.drain_delay >= Duration::from_secs(5));
    // terminationGracePeriodSeconds in deploy/k8s/base/serve.yaml.
    assert!(cfg.http.drain_delay + cfg.http.shutdown_timeout < Duration::from_secs(30));
    assert_eq!(cfg.l1.capacity, 500_000);
}
