//! TLS to Redis (`rediss://`, `redis_tls_ca_file`) and to PostgreSQL (`sslmode`,
//! `sslrootcert`), against a real redis-server with only a TLS port and a real
//! PostgreSQL with `ssl=on` that refuses plain connections, both with a CA and
//! certificates each test makes for itself.

mod common;

use std::process::Command;
use std::time::Duration;

use common::infra::*;
use common::pki::TestPki;
use common::*;

const LIMIT: Duration = Duration::from_secs(10);

fn served_from(r: &Resp) -> String {
    r.header("x-served-from").unwrap_or_default().to_string()
}

/// `redis-cli` over TLS, checking the server against `ca`: an independent client.
fn redis_cli_tls(port: u16, ca: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca.display().to_string()])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether member `id`'s field is in its bucket on this TLS Redis.
fn held(port: u16, ca: &std::path::Path, prefix: &str, id: u64) -> bool {
    let (key, field) = readtier::tier::encoding::locate(prefix, 100, id);
    redis_cli_tls(port, ca, &["HEXISTS", &key, &field]) == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_fills_and_reads_the_tier_and_without_it_the_node_never_uses_it() {
    let pki = TestPki::new("redis");
    let redis = RedisServer::start_tls(&pki);
    // The server speaks TLS only: a plain client gets no answer from it.
    let plain = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "PING"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("PONG"),
        "the test Redis answers plain TCP"
    );
    let (schema, _store) = seeded_pg(100).await;
    let prefix = format!("{}:", schema.name);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let env = |ca: bool| {
        let mut env = vec![
            ("READTIER_STORE_URL", schema.url()),
            ("READTIER_REDIS_URLS", url.clone()),
            ("READTIER_REDIS_PREFIX", prefix.clone()),
            ("READTIER_L1_TTL", "10m".to_string()),
            // A first TLS connect reads the system's trust store (redis-rs does, CA
            // given or not): ~20-40 ms in this debug build on a busy machine, too near
            // the 50 ms default for a test that asserts where the first read came from.
            ("READTIER_L2_TIMEOUT", "2s".to_string()),
        ];
        if ca {
            env.push(("READTIER_REDIS_TLS_CA_FILE", pki.ca.display().to_string()));
        }
        env
    };

    // With the CA: a read fills the TLS Redis, and a second node reads it from there.
    let n1 = TestNode::start_with(&env(true)).await;
    let r = n1.get("/v1/members/7/entitlement").await;
    assert_eq!((r.status, served_from(&r).as_str()), (200, "store"));
    eventually(LIMIT, "member 7 written to the TLS Redis", || async {
        held(redis.port, &pki.ca, &prefix, 7).then_some(())
    })
    .await;
    let n2 = TestNode::start_with(&env(true)).await;
    let r = n2.get("/v1/members/7/entitlement").await;
    assert_eq!(
        (r.status, served_from(&r).as_str()),
        (200, "l2"),
        "a node with the CA reads the tier over TLS"
    );
    n1.stop().await;
    n2.stop().await;

    // Without the CA (the system's trust store knows nothing of the test CA): the
    // server is refused. A process of its own, so its metrics are its alone.
    let dir = tempfile::tempdir().unwrap();
    let mut env = env(false);
    env.push(("READTIER_DATA_DIR", dir.path().display().to_string()));
    env.push(("RUST_LOG", "readtier=debug".to_string()));
    let mut lone = NodeProcess::start(&env);
    let r = get(lone.addr, "/v1/members/7/entitlement", &[]).await;
    assert_eq!(
        (r.status, served_from(&r).as_str()),
        (200, "store"),
        "member 7 is in the TLS Redis, but a node without the CA must not see it"
    );
    let r = get(lone.addr, "/v1/members/8/entitlement", &[]).await;
    assert_eq!((r.status, served_from(&r).as_str()), (200, "store"));
    let errors = eventually(LIMIT, "tier errors counted", || async {
        let metrics = String::from_utf8(get(lone.admin, "/metrics", &[]).await.body).unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("readtier_l2_errors_total{"))?
            .to_string();
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (n > 0.0).then_some(line)
    })
    .await;
    assert!(
        errors.contains(&format!("127.0.0.1:{}", redis.port)),
        "{errors}"
    );
    // Its fill of member 8 never reached the server (give a write time to land).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held(redis.port, &pki.ca, &prefix, 8),
        "a node without the CA wrote to the TLS Redis"
    );
    lone.signal("TERM");
    lone.wait_exit(Duration::from_secs(15));
    let log = lone.stderr.lock().unwrap().clone();
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "the log says why the Redis was refused: {}",
        &log[..log.len().min(3000)]
    );
}

#[test]
fn a_rediss_url_with_insecure_or_an_unreadable_ca_file_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (env, key) in [
        (
            vec![("READTIER_REDIS_URLS", "rediss://127.0.0.1:1/#insecure")],
            "redis_urls",
        ),
        (
            vec![
                ("READTIER_REDIS_URLS", "rediss://127.0.0.1:1"),
                ("READTIER_REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
            ],
            "redis_tls_ca_file",
        ),
        (
            vec![(
                "READTIER_STORE_URL",
                "postgres://postgres@127.0.0.1:1/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            )],
            "store_url",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_readtier"))
            .arg("migrate")
            .envs(env.iter().copied())
            .env("READTIER_DATA_DIR", dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{env:?}: {err}");
    }
}

/// A PostgreSQL that takes TLS connections from 127.0.0.0/8 and refuses plain ones.
fn tls_pg(pki: &TestPki) -> PrivatePg {
    PrivatePg::start_tls(&PgTlsSetup {
        pki,
        hba: &[
            "local all all trust",
            "hostssl all all 127.0.0.0/8 trust",
            "host all all 127.0.0.0/8 reject",
        ],
        listen: "127.0.0.1,127.0.0.2",
    })
}

/// `readtier migrate` against this store URL: (success, stdout and stderr).
fn migrate(store_url: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_readtier"))
        .arg("migrate")
        .env("READTIER_STORE_URL", store_url)
        .env("READTIER_DATA_DIR", dir.path())
        .env("READTIER_STORE_CONNECT_TIMEOUT", "3s")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmodes_encrypt_verify_or_refuse_as_libpq_does() {
    let pki = TestPki::new("pg");
    let other = TestPki::new("impostor");
    let pg = tls_pg(&pki);
    let at = |host: &str, query: String| {
        format!("postgres://postgres@{host}:{}/postgres?{query}", pg.port)
    };
    let ca = pki.ca.display().to_string();
    let verify_full = at("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}"));

    // verify-full with the CA: migrate, then a node serves a member from the store
    // over TLS connections only.
    let (ok, out) = migrate(&verify_full);
    assert!(ok, "migrate with sslmode=verify-full: {out}");
    {
        let cfg = readtier::config::Config::from_layers(
            None,
            &[("READTIER_STORE_URL".into(), verify_full.clone())],
        )
        .unwrap();
        let store = readtier::store::Store::open(&cfg.store).unwrap();
        readtier::node::prepare_store(&store, 0).await.unwrap();
        readtier::node::seed_members_into(
            &store,
            &readtier::plan::CatalogData::reference().unwrap(),
            50,
        )
        .await
        .unwrap();
    }
    let node = TestNode::start_with(&[("READTIER_STORE_URL", verify_full.clone())]).await;
    let r = node.get("/v1/members/7/entitlement").await;
    assert_eq!((r.status, served_from(&r).as_str()), (200, "store"));
    // Every TCP connection the server has (the node's) is encrypted.
    let local = pg_client(&pg.socket_config()).await;
    let row = local
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl), min(s.version)
               FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.client_addr IS NOT NULL AND a.backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
    let (all, encrypted, version): (i64, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    assert!(all > 0, "the node has connections to the store");
    assert_eq!(encrypted, all, "every connection of the node is encrypted");
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{version:?}"
    );
    node.stop().await;

    // disable: plain TCP, which the server refuses (and says so).
    let (ok, out) = migrate(&at("127.0.0.1", "sslmode=disable".into()));
    assert!(!ok, "sslmode=disable got through");
    assert!(
        out.contains("pg_hba.conf rejects connection") && out.contains("no encryption"),
        "{out}"
    );

    // verify-full against another CA: refused, naming the certificate problem.
    let wrong = other.ca.display().to_string();
    let (ok, out) = migrate(&at(
        "127.0.0.1",
        format!("sslmode=verify-full&sslrootcert={wrong}"),
    ));
    assert!(!ok, "verify-full accepted a server of another CA");
    assert!(
        out.contains("invalid peer certificate") && out.contains("UnknownIssuer"),
        "{out}"
    );

    // A host name the certificate does not carry (127.0.0.2): verify-full refuses it,
    // verify-ca (chain only) takes it.
    let (ok, out) = migrate(&at(
        "127.0.0.2",
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(!ok, "verify-full accepted a certificate for another name");
    assert!(
        out.contains("invalid peer certificate") && out.contains("not valid for name"),
        "{out}"
    );
    let (ok, out) = migrate(&at(
        "127.0.0.2",
        format!("sslmode=verify-ca&sslrootcert={ca}"),
    ));
    assert!(ok, "verify-ca: {out}");
    // … but not with the other CA.
    let (ok, out) = migrate(&at(
        "127.0.0.2",
        format!("sslmode=verify-ca&sslrootcert={wrong}"),
    ));
    assert!(!ok && out.contains("UnknownIssuer"), "{out}");

    // require without a CA: encrypted, the certificate not checked.
    let (ok, out) = migrate(&at("127.0.0.1", "sslmode=require".into()));
    assert!(ok, "sslmode=require: {out}");
    // With a CA, require checks the chain, as libpq's does.
    let (ok, out) = migrate(&at(
        "127.0.0.1",
        format!("sslmode=require&sslrootcert={wrong}"),
    ));
    assert!(!ok && out.contains("UnknownIssuer"), "{out}");
    // No sslmode is libpq's prefer: TLS when the server offers it.
    let (ok, out) = migrate(&at("127.0.0.1", String::new()));
    assert!(ok, "no sslmode (prefer): {out}");
}
