//! The `readtier` binary as an operator runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn readtier() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_readtier"));
    // Keep the test's own environment from leaking configuration in.
    for (k, _) in std::env::vars() {
        if k.starts_with("READTIER_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn invalid_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("READTIER_L1_TTL", "soon", "l1.ttl"),
        ("READTIER_LISTEN", "localhost", "listen"),
        ("READTIER_GRPC_LISTEN", "localhost:x", "grpc_listen"),
        ("READTIER_L1_CAPACITY", "many", "l1.capacity"),
        ("READTIER_LISTN", "127.0.0.1:0", "listn"),
        ("READTIER_HTTP_RUNTIME", "fibers", "http.runtime"),
    ];
    for (key, value, named) in cases {
        let out = readtier()
            .env("READTIER_DATA_DIR", dir.path())
            .env(key, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{key}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`{named}`")),
            "{key}: stderr should name {named}: {err}"
        );
    }
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[http]\nmax_body_bytes = \"big\"\n").unwrap();
    let out = readtier()
        .arg("--config")
        .arg(&file)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`http.max_body_bytes`"));
    let out = readtier().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn kubernetes_service_variables_do_not_stop_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = readtier()
        .env("READTIER_DATA_DIR", dir.path())
        .env("READTIER_PORT", "tcp://10.0.0.1:8080")
        .env("READTIER_PORT_8080_TCP_ADDR", "10.0.0.1")
        .env("READTIER_SERVICE_HOST", "10.0.0.1")
        .env("READTIER_SERVICE_PORT", "8080")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate under Kubernetes variables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrated"));
}

#[test]
fn migrate_and_seed_report_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let out = readtier()
        .env("READTIER_DATA_DIR", dir.path())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = readtier()
        .env("READTIER_DATA_DIR", dir.path())
        .args(["seed", "--members", "5000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("seeded 5000 members in"), "{text}");
    assert!(text.contains("one entry (op seed)"), "{text}");
    let c = rusqlite::Connection::open(dir.path().join("readtier.db")).unwrap();
    // History holds one entry for the load, none per member.
    let (seeds, members): (i64, i64) = c
        .query_row(
            "SELECT count(*) FILTER (WHERE op = 'seed'), count(member_id) FROM member_history",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((seeds, members), (1, 0));
    let (n, lo, hi): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), min(member_id), max(member_id) FROM memberships",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((n, lo, hi), (5000, 1, 5000));
    let orphans: i64 = c
        .query_row(
            "SELECT count(*) FROM memberships m WHERE NOT EXISTS
               (SELECT 1 FROM plan_prices p WHERE p.country = m.country AND p.plan_id = m.plan_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        orphans, 0,
        "every member's plan is offered in their country"
    );
    let countries: i64 = c
        .query_row("SELECT count(DISTINCT country) FROM plan_prices", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(countries, 245);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_then_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = readtier()
        .env("READTIER_DATA_DIR", dir.path())
        .env("READTIER_LISTEN", "127.0.0.1:0")
        .env("READTIER_ADMIN_LISTEN", "127.0.0.1:0")
        .env("READTIER_GRPC_LISTEN", "127.0.0.1:0")
        .env("READTIER_SEED_MEMBERS", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let grpc: std::net::SocketAddr = line
        .split("(grpc ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no gRPC address in {line:?}"));
    assert_ne!(grpc.port(), 0);
    let us = get(addr, "/v1/plans?country=US", &[]).await;
    assert_eq!(us.status, 200);
    assert_eq!(
        get(addr, "/v1/members/42/entitlement", &[]).await.status,
        200
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("readtier did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.path().join("catalog-snapshot.json").exists(),
        "the last good snapshot is on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_0_on_sigint_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::infra::NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "100".into()),
    ]);
    assert_eq!(get(node.addr, "/healthz", &[]).await.status, 200);
    node.signal("INT");
    let status = tokio::task::spawn_blocking(move || node.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readtier_config_names_a_file_layered_under_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "seed_members = 50\n[http]\nmax_body_bytes = 100\n[l1]\nttl = \"1s\"\n",
    )
    .unwrap();
    let node = common::infra::NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_CONFIG", file.display().to_string()),
        // The environment wins over the file.
        ("READTIER_L1_TTL", "10m".into()),
    ]);
    // From the file: 50 members seeded, and bodies over 100 bytes refused.
    assert_eq!(
        get(node.addr, "/v1/members/50/entitlement", &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(node.addr, "/v1/members/51/entitlement", &[])
            .await
            .status,
        404
    );
    let big = format!(
        r#"{{"member_id":1,"device_class":"tv","active_streams":0,"pad":"{}"}}"#,
        "x".repeat(100)
    );
    post(
        node.addr,
        "/v1/playback/authorize",
        "application/json",
        big.as_bytes(),
    )
    .await
    .assert_problem(413);
    // From the environment: a 10 minute TTL, so a second read after 1.5 s is still L1.
    get(node.addr, "/v1/members/7/entitlement", &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = get(node.addr, "/v1/members/7/entitlement", &[]).await;
    assert_eq!(again.header("x-served-from"), Some("l1"));
    // A file that does not exist is an error naming it.
    let out = readtier()
        .env("READTIER_CONFIG", dir.path().join("missing.toml"))
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
