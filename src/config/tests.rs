//! Loading, layering and validating configuration.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_and_name_the_embedded_store() {
    let c = Config::from_layers(None, &[]).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.grpc_listen, Some("0.0.0.0:50051".parse().unwrap()));
    assert_eq!(c.grpc_max_connections, 10000);
    assert_eq!(
        c.store,
        StoreUrl::Sqlite(PathBuf::from("./var/readtier.db"))
    );
    assert_eq!(c.l1.ttl, Duration::from_secs(60));
    assert_eq!(c.http.max_body_bytes, 4096);
    assert_eq!(c.l2.bucket_size, 100);
    assert!(c.redis.is_none() && c.changes.stream_urls.is_empty() && !c.has_stream());
}

#[test]
fn every_default_key_has_a_comment_above_it() {
    let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        assert!(
            i > 0 && lines[i - 1].trim().starts_with('#'),
            "key line {l:?} has no comment above it"
        );
    }
}

#[test]
fn file_then_env_override_in_order() {
    let file = "data_dir = \"/tmp/x\"\n[l1]\nttl = \"5s\"\nnegative_ttl = \"9s\"\n";
    let c = Config::from_layers(
        Some((Path::new("f.toml"), file)),
        &env(&[
            ("READTIER_L1_TTL", "7s"),
            ("READTIER_LISTEN", "127.0.0.1:0"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.l1.ttl, Duration::from_secs(7), "environment over file");
    assert_eq!(
        c.l1.negative_ttl,
        Duration::from_secs(9),
        "file over default"
    );
    assert_eq!(c.listen.port(), 0);
    assert_eq!(
        c.store,
        StoreUrl::Sqlite(PathBuf::from("/tmp/x/readtier.db"))
    );
}

#[test]
fn grpc_listen_is_an_address_or_empty_for_none() {
    let c = Config::from_layers(None, &env(&[("READTIER_GRPC_LISTEN", "")])).unwrap();
    assert_eq!(c.grpc_listen, None);
    let c = Config::from_layers(None, &env(&[("READTIER_GRPC_LISTEN", "127.0.0.1:0")])).unwrap();
    assert_eq!(c.grpc_listen, Some("127.0.0.1:0".parse().unwrap()));
    let err = Config::from_layers(
        Some((Path::new("f.toml"), "grpc_listen = \":50051\"\n")),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`grpc_listen`") && err.contains("f.toml"),
        "{err}"
    );
}

#[test]
fn errors_name_the_key_and_the_layer() {
    let cases = [
        (env(&[("READTIER_LISTEN", "nope")]), "`listen`"),
        (
            env(&[("READTIER_GRPC_LISTEN", "localhost")]),
            "`grpc_listen`",
        ),
        (
            env(&[("READTIER_GRPC_MAX_CONNECTIONS", "0")]),
            "`grpc_max_connections`",
        ),
        (env(&[("READTIER_L1_TTL", "5 parsecs")]), "`l1.ttl`"),
        (env(&[("READTIER_L1_CAPACITY", "-1")]), "`l1.capacity`"),
        (env(&[("READTIER_L1_CAPACITY", "0")]), "`l1.capacity`"),
        (env(&[("READTIER_L1_CAPACITY", "many")]), "`l1.capacity`"),
        (env(&[("READTIER_NO_SUCH_KEY", "1")]), "`no_such_key`"),
        (env(&[("READTIER_STORE_URL", "mysql://x")]), "`store_url`"),
        (
            env(&[("READTIER_HTTP_MAX_HEADER_BYTES", "100")]),
            "`http.max_header_bytes`",
        ),
        (env(&[("READTIER_L2_TIMEOUT", "0")]), "`l2.timeout`"),
        (
            env(&[("READTIER_RELAY_LEASE_TTL", "10ms")]),
            "`relay.lease_ttl`",
        ),
    ];
    for (e, needle) in cases {
        let err = Config::from_layers(None, &e).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should name {needle}");
        assert!(
            err.contains("environment variable READTIER_"),
            "{err} should name the layer"
        );
    }
    let err = Config::from_layers(Some((Path::new("f.toml"), "[l1]\ncapacty = 3\n")), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`l1.capacty`") && err.contains("f.toml"),
        "{err}"
    );
    let err = Config::from_layers(Some((Path::new("f.toml"), "listen = 3\n")), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`listen`") && err.contains("f.toml") && err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn zones_and_the_stream_resolve_from_the_topology() {
    let env = env(&[
        ("READTIER_REDIS_URLS", "a=redis://h:1;b=redis://h:2"),
        ("READTIER_ZONE", "b"),
    ]);
    let c = Config::from_layers(None, &env).unwrap();
    assert_eq!(c.zone, 1);
    assert!(
        c.has_stream() && c.changes.stream_urls.is_empty(),
        "a copy per zone"
    );
    let listed = vec![(
        "READTIER_CHANGES_STREAM_URL".to_string(),
        "redis://h:1, redis://h:2".to_string(),
    )];
    let c = Config::from_layers(None, &listed).unwrap();
    assert_eq!(c.changes.stream_urls, ["redis://h:1", "redis://h:2"]);
    let bad = vec![(
        "READTIER_CHANGES_STREAM_URL".to_string(),
        "redis://h:1,http://x".to_string(),
    )];
    assert!(Config::from_layers(None, &bad)
        .unwrap_err()
        .to_string()
        .contains("`changes.stream_url`"));
    let bad_zone = vec![
        (
            "READTIER_REDIS_URLS".to_string(),
            "a=redis://h:1".to_string(),
        ),
        ("READTIER_ZONE".to_string(), "c".to_string()),
    ];
    assert!(Config::from_layers(None, &bad_zone)
        .unwrap_err()
        .to_string()
        .contains("`zone`"));
    let pg = vec![(
        "READTIER_STORE_URL".to_string(),
        "postgres://u@127.0.0.1:5432/db".to_string(),
    )];
    assert!(matches!(
        Config::from_layers(None, &pg).unwrap().store,
        StoreUrl::Postgres(_)
    ));
    let all_write_only = vec![
        (
            "READTIER_REDIS_URLS".to_string(),
            "a=redis://h:1".to_string(),
        ),
        ("READTIER_L2_WRITE_ONLY_ZONES".to_string(), "a".to_string()),
    ];
    assert!(Config::from_layers(None, &all_write_only)
        .unwrap_err()
        .to_string()
        .contains("`l2.write_only_zones`"));
}

#[test]
fn kubernetes_service_variables_are_ignored_and_other_unknown_keys_still_fail() {
    // What Kubernetes injects for a Service named `readtier`.
    let k8s = env(&[
        ("READTIER_PORT", "tcp://10.0.0.1:8080"),
        ("READTIER_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ("READTIER_PORT_8080_TCP_ADDR", "10.0.0.1"),
        ("READTIER_PORT_8080_TCP_PORT", "8080"),
        ("READTIER_PORT_8080_TCP_PROTO", "tcp"),
        ("READTIER_SERVICE_HOST", "10.0.0.1"),
        ("READTIER_SERVICE_PORT", "8080"),
        ("READTIER_SERVICE_PORT_HTTP", "8080"),
        ("READTIER_L1_TTL", "7s"),
    ]);
    let cfg = Config::from_layers(None, &k8s).expect("Kubernetes variables are not config");
    assert_eq!(cfg.l1.ttl, std::time::Duration::from_secs(7));
    for bad in ["READTIER_PORTS", "READTIER_SERVICES", "READTIER_L1_TTLS"] {
        let err = Config::from_layers(None, &env(&[(bad, "1")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&bad["READTIER_".len()..].to_ascii_lowercase()),
            "{bad}: {text}"
        );
    }
}

#[test]
fn store_time_limits_reach_the_postgres_target() {
    let cfg = Config::from_layers(
        None,
        &env(&[
            ("READTIER_STORE_URL", "postgres://u:secret@db:5432/x"),
            ("READTIER_STORE_CONNECT_TIMEOUT", "2s"),
            ("READTIER_STORE_STATEMENT_TIMEOUT", "250ms"),
        ]),
    )
    .unwrap();
    match cfg.store {
        StoreUrl::Postgres(t) => {
            assert_eq!(t.connect_timeout, std::time::Duration::from_secs(2));
            assert_eq!(t.statement_timeout, std::time::Duration::from_millis(250));
        }
        other => panic!("{other:?}"),
    }
    let err =
        Config::from_layers(None, &env(&[("READTIER_STORE_CONNECT_TIMEOUT", "0s")])).unwrap_err();
    assert!(err.to_string().contains("`store_connect_timeout`"), "{err}");
}

#[test]
fn tls_urls_and_the_redis_ca_file_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let ca_text = ca.display().to_string();
    let c = Config::from_layers(
        None,
        &env(&[
            ("READTIER_REDIS_URLS", "a=rediss://h:1;b=redis://h:2"),
            ("READTIER_CHANGES_STREAM_URL", "rediss://h:3,redis://h:4"),
            ("READTIER_REDIS_TLS_CA_FILE", &ca_text),
        ]),
    )
    .unwrap();
    assert_eq!(c.redis.unwrap().zones[0].nodes, ["rediss://h:1"]);
    assert_eq!(c.changes.stream_urls, ["rediss://h:3", "redis://h:4"]);
    assert_eq!(c.redis_tls_ca.unwrap().path, ca);
    assert!(Config::from_layers(None, &[])
        .unwrap()
        .redis_tls_ca
        .is_none());

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let not_pem = not_pem.display().to_string();
    for (pairs, key) in [
        (
            vec![("READTIER_REDIS_TLS_CA_FILE", "/nonexistent/ca.pem")],
            "`redis_tls_ca_file`",
        ),
        (
            vec![("READTIER_REDIS_TLS_CA_FILE", not_pem.as_str())],
            "`redis_tls_ca_file`",
        ),
        (
            vec![("READTIER_CHANGES_STREAM_URL", "rediss+cluster://h:1")],
            "`changes.stream_url`",
        ),
        (
            vec![(
                "READTIER_CHANGES_STREAM_URL",
                "rediss://:secret@h:1#insecure",
            )],
            "`changes.stream_url`",
        ),
        (
            vec![(
                "READTIER_STORE_URL",
                "postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            )],
            "`store_url`",
        ),
    ] {
        let err = Config::from_layers(None, &env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{pairs:?}: {err}");
        assert!(!err.contains("secret"), "{pairs:?}: {err}");
    }
}

#[test]
fn inspector_keys_are_read_and_checked() {
    let c = Config::from_layers(None, &[]).unwrap();
    assert_eq!(c.inspector.samples_per_second, 10);
    assert_eq!(c.inspector.grace, Duration::from_secs(1));
    let c = Config::from_layers(
        None,
        &env(&[
            ("READTIER_INSPECTOR_SAMPLES_PER_SECOND", "0"),
            ("READTIER_INSPECTOR_GRACE", "250ms"),
        ]),
    )
    .unwrap();
    assert_eq!(c.inspector.samples_per_second, 0, "0 turns it off");
    assert_eq!(c.inspector.grace, Duration::from_millis(250));
    for (pairs, key) in [
        (
            vec![("READTIER_INSPECTOR_SAMPLES_PER_SECOND", "10001")],
            "`inspector.samples_per_second`",
        ),
        (
            vec![("READTIER_INSPECTOR_SAMPLES_PER_SECOND", "-1")],
            "`inspector.samples_per_second`",
        ),
        (
            vec![("READTIER_INSPECTOR_GRACE", "soon")],
            "`inspector.grace`",
        ),
        (
            vec![
                ("READTIER_INSPECTOR_GRACE", "2h"),
                ("READTIER_CHANGES_RETENTION", "1h"),
            ],
            "`inspector.grace`",
        ),
    ] {
        let err = Config::from_layers(None, &env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err} should name {key}");
    }
}
