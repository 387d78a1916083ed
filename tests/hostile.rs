//! A hostile store: rows that the schema accepted before issue 27, written in raw SQL
//! as another service would, one after another while two nodes serve. After each:
//! - a later, legitimate member change and price change reach both nodes within 3 s;
//! - both nodes stay ready;
//! - every `/v1/plans` answer asked (plain, with a visitor, with a partner) is JSON;
//! - the odd entity's own answer is a clear 2xx or 4xx.
//!
//! Then, with every odd row in the store at once, a fresh node starts. Where the schema
//! now refuses a value, the test first checks that it does, then drops that rule (an
//! install whose rows predate it) and writes the row anyway.

mod common;

use std::time::Duration;

use common::infra::*;
use common::*;

/// A later change reaching both nodes (the issue's bound).
const VISIBLE: Duration = Duration::from_secs(3);

/// What the odd entity must answer: an entitlement, or a country's plans.
enum Own {
    Member(u64, u16),
    Plans(&'static str, u16),
}

/// One odd row: a name, the rule the schema now has against it (if any: it is checked
/// and then dropped), the SQL, and the odd entity's expected answer.
struct Odd {
    name: &'static str,
    refused_by: Option<(&'static str, &'static str)>,
    sql: String,
    own: Own,
}

fn odd_rows() -> Vec<Odd> {
    let lock = |id: u64, amount: &str, until: &str| {
        format!(
            "UPDATE memberships SET price_locked_amount = {amount}, price_locked_currency = 'USD', price_locked_until = {until} WHERE member_id = {id}"
        )
    };
    let big_name: String = "x".repeat(100_000);
    vec![
        Odd {
            name: "a price lock until infinity",
            refused_by: None,
            sql: lock(10, "19.99", "'infinity'"),
            own: Own::Member(10, 200),
        },
        Odd {
            name: "a price lock until -infinity",
            refused_by: None,
            sql: lock(11, "19.99", "'-infinity'"),
            own: Own::Member(11, 200),
        },
        Odd {
            name: "a NaN price lock",
            refused_by: Some(("memberships", "memberships_lock_amount")),
            sql: lock(12, "'NaN'", "NULL"),
            own: Own::Member(12, 422),
        },
        Odd {
            name: "a 1e300 price lock",
            refused_by: Some(("memberships", "memberships_lock_amount")),
            sql: lock(13, "1e300", "NULL"),
            own: Own::Member(13, 422),
        },
        Odd {
            name: "a member of a plan and country the catalog lacks",
            refused_by: None,
            sql: "UPDATE memberships SET plan_id = 'no-such-plan', country = 'ZZ' WHERE member_id = 14".into(),
            own: Own::Member(14, 200),
        },
        Odd {
            name: "the largest member id",
            refused_by: None,
            sql: "INSERT INTO memberships (member_id, status, plan_id, country) VALUES (9223372036854775807, 'active', 'premium', 'US')".into(),
            own: Own::Member(9_223_372_036_854_775_807, 200),
        },
        Odd {
            name: "scheduled prices at infinity and -infinity",
            refused_by: None,
            sql: "INSERT INTO scheduled_prices VALUES ('DE', 'premium', 'EUR', '1.11', 'infinity'), ('DE', 'standard', 'EUR', '2.22', '-infinity')".into(),
            own: Own::Plans("DE", 200),
        },
        Odd {
            name: "an experiment from -infinity to infinity",
            refused_by: None,
            sql: "INSERT INTO experiments VALUES ('forever', 'CA', '-infinity', 'infinity');
                  INSERT INTO experiment_cells VALUES ('forever', 'all', 10000);
                  INSERT INTO experiment_prices VALUES ('forever', 'all', 'premium', 'CAD', '3.33')".into(),
            own: Own::Plans("CA", 200),
        },
        Odd {
            name: "a partner offer from -infinity to infinity",
            refused_by: None,
            sql: "INSERT INTO partner_offers VALUES ('hostile', 'MX', 'premium', 'Forever', 'MXN', '4.44', '-infinity', 'infinity')".into(),
            own: Own::Plans("MX", 200),
        },
        Odd {
            name: "an experiment that ends before it starts",
            refused_by: Some(("experiments", "experiments_span")),
            sql: "INSERT INTO experiments VALUES ('backwards', 'GB', '2030-01-01T00:00:00Z', '2020-01-01T00:00:00Z');
                  INSERT INTO experiment_cells VALUES ('backwards', 'all', 10000);
                  INSERT INTO experiment_prices VALUES ('backwards', 'all', 'premium', 'GBP', '5.55')".into(),
            own: Own::Plans("GB", 200),
        },
        Odd {
            name: "experiment weights over 100%",
            refused_by: Some(("experiment_cells", "experiment_cells_weights")),
            sql: "INSERT INTO experiments VALUES ('greedy', 'JP', '2020-01-01T00:00:00Z', NULL);
                  INSERT INTO experiment_cells VALUES ('greedy', 'a', 8000), ('greedy', 'b', 8000);
                  INSERT INTO experiment_prices VALUES ('greedy', 'a', 'premium', 'JPY', '666')".into(),
            own: Own::Plans("JP", 200),
        },
        Odd {
            name: "a NaN price",
            refused_by: Some(("plan_prices", "plan_prices_amount")),
            sql: "UPDATE plan_prices SET amount = 'NaN' WHERE country = 'FR' AND plan_id = 'premium'".into(),
            own: Own::Plans("FR", 200),
        },
        Odd {
            name: "a price for a plan the catalog lacks",
            refused_by: None,
            sql: "INSERT INTO plan_prices VALUES ('IT', 'no-such-plan', 'EUR', '7.77')".into(),
            own: Own::Plans("IT", 200),
        },
        Odd {
            name: "a plan named with quotes, a backslash, control characters and emoji",
            refused_by: Some(("plans", "plans_name")),
            sql: "INSERT INTO plans VALUES ('odd', E'\"quoted\" \\\\ back\\u0001\\u001f\\ttab 😀', 1, '720p', 0, false, 'tv');
                  INSERT INTO plan_prices VALUES ('ES', 'odd', 'EUR', '0.99')".into(),
            own: Own::Plans("ES", 200),
        },
        Odd {
            name: "a 100 KB plan name",
            refused_by: Some(("plans", "plans_name")),
            sql: format!(
                "INSERT INTO plans VALUES ('long', '{big_name}', 1, '720p', 0, false, 'tv');
                 INSERT INTO plan_prices VALUES ('PT', 'long', 'EUR', '0.99')"
            ),
            own: Own::Plans("PT", 200),
        },
    ]
}

fn env(schema: &PgSchema, redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", redis.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
    ]
}

/// Every plans answer asked of `node` is JSON (200) or a problem (4xx), never broken.
async fn plans_are_json(node: &TestNode, countries: &[&str]) {
    for cc in countries {
        for query in ["", "&visitor=v1", "&partner=hostile"] {
            let r = node.get(&format!("/v1/plans?country={cc}{query}")).await;
            assert!(
                r.status == 200 || (400..500).contains(&r.status),
                "{cc}{query}: {}",
                r.status
            );
            serde_json::from_slice::<serde_json::Value>(&r.body)
                .unwrap_or_else(|e| panic!("{cc}{query}: not JSON ({e})"));
        }
    }
}

/// A later member change and price change reach both nodes within [`VISIBLE`].
async fn later_changes_arrive(schema: &PgSchema, nodes: &[&TestNode], round: u32, what: &str) {
    let status = if round.is_multiple_of(2) {
        "paused"
    } else {
        "active"
    };
    // Ends in 1: answers normalise decimals, dropping trailing zeros.
    let amount = format!("{}.{}1", 10 + round, round % 10);
    schema
        .exec(&format!(
            "UPDATE memberships SET status = '{status}' WHERE member_id = 7;
             UPDATE plan_prices SET amount = '{amount}' WHERE country = 'US' AND plan_id = 'standard'"
        ))
        .await;
    for n in nodes {
        eventually(
            VISIBLE,
            &format!("after {what}: the later changes"),
            || async {
                let m = n.get("/v1/members/7/entitlement").await.json();
                let p = n.get("/v1/plans?country=US").await.json();
                let standard = p["plans"]
                    .as_array()?
                    .iter()
                    .find(|x| x["id"] == "standard")?["price"]["amount"]
                    .as_str()?
                    .to_string();
                (m["status"] == status && standard == amount).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_rows_on_postgres_never_stall_delivery_or_break_an_answer() {
    let (schema, _store) = seeded_pg(200).await;
    let redis = RedisServer::start();
    let env = env(&schema, &redis);
    let (stop_relay, relay) = relay_task(&config_of(&env), "r1");
    let a = TestNode::start_with(&env).await;
    let b = TestNode::start_with(&env).await;
    let countries = ["US", "DE", "CA", "MX", "GB", "JP", "FR", "IT", "ES", "PT"];
    // The schema refuses what it now has a rule against: each such row first.
    let mut dropped = std::collections::BTreeSet::new();
    for odd in odd_rows() {
        let Some((table, rule)) = odd.refused_by else {
            continue;
        };
        let c = schema.client().await;
        let err = c
            .batch_execute(&format!("BEGIN; {}; COMMIT", odd.sql))
            .await
            .expect_err(odd.name);
        let said = err.as_db_error().map(|d| d.to_string()).unwrap_or_default();
        assert!(
            said.contains(rule) || err.as_db_error().and_then(|d| d.constraint()) == Some(rule),
            "{}: refused by {rule}, not {said}",
            odd.name
        );
        dropped.insert((table, rule));
    }
    // Then an install whose rows predate those rules.
    for (table, rule) in &dropped {
        schema
            .exec(&if *rule == "experiment_cells_weights" {
                format!("ALTER TABLE {table} DISABLE TRIGGER {rule}")
            } else {
                format!("ALTER TABLE {table} DROP CONSTRAINT {rule}")
            })
            .await;
    }
    for (round, odd) in odd_rows().into_iter().enumerate() {
        schema.exec(&odd.sql).await;
        later_changes_arrive(&schema, &[&a, &b], round as u32, odd.name).await;
        for n in [&a, &b] {
            assert_eq!(n.get("/readyz").await.status, 200, "{}: ready", odd.name);
            plans_are_json(n, &countries).await;
            let (path, want) = match &odd.own {
                Own::Member(id, want) => (format!("/v1/members/{id}/entitlement"), *want),
                Own::Plans(cc, want) => (format!("/v1/plans?country={cc}"), *want),
            };
            let r = n.get(&path).await;
            assert_eq!(
                r.status,
                want,
                "{}: {path}: {}",
                odd.name,
                String::from_utf8_lossy(&r.body)
            );
            serde_json::from_slice::<serde_json::Value>(&r.body).expect("a JSON answer");
        }
    }
    // What each odd row meant.
    let locked = a.get("/v1/members/10/entitlement").await.json();
    assert_eq!(
        locked["price"]["source"], "locked",
        "locked until infinity: no end"
    );
    let ended = a.get("/v1/members/11/entitlement").await.json();
    assert_eq!(
        ended["price"]["source"], "catalog",
        "locked until -infinity: ended"
    );
    let nan = a.get("/v1/members/12/entitlement").await;
    assert_eq!(nan.json()["type"], "urn:readtier:problem:unreadable-member");
    let batch = post(
        a.addr(),
        "/v1/entitlements:batch",
        "application/json",
        br#"{"member_ids":[12,7,13]}"#,
    )
    .await;
    assert_eq!(batch.status, 200, "a batch answers the readable members");
    let results = batch.json()["results"].clone();
    assert_eq!(results[0]["error"], "unreadable-member");
    assert!(results[1]["status"].is_string(), "{results}");
    assert_eq!(results[2]["error"], "unreadable-member");
    let de = a.get("/v1/plans?country=DE").await.json();
    let de_price = |id: &str| {
        de["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["price"]["amount"].clone())
    };
    assert_eq!(
        de_price("standard").unwrap(),
        "2.22",
        "scheduled since always"
    );
    assert_ne!(de_price("premium").unwrap(), "1.11", "scheduled never");
    let es = a.get("/v1/plans?country=ES").await.json();
    let odd_name = es["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "odd")
        .map(|p| p["name"].as_str().unwrap().to_string());
    assert_eq!(
        odd_name.as_deref(),
        Some("\"quoted\" \\ back\u{1}\u{1f}\ttab 😀"),
        "names are answered as written, escaped"
    );
    // The rows no answer could show are quarantined and listed on the admin listener.
    let listed = get(a.running.admin_addr, "/admin/store/rejected", &[])
        .await
        .json();
    let rows = listed["rows"].as_array().expect("rows").clone();
    let has = |table: &str, key: &str| rows.iter().any(|r| r["table"] == table && r["key"] == key);
    assert!(has("memberships", "12"), "{listed}");
    assert!(has("memberships", "13"), "{listed}");
    assert!(has("experiments", "greedy"), "{listed}");
    assert!(has("plan_prices", "FR/premium"), "{listed}");
    assert!(has("plan_prices", "IT/no-such-plan"), "{listed}");
    // With every odd row in the store, a fresh node starts and serves.
    let c = TestNode::start_with(&env).await;
    assert_eq!(c.get("/readyz").await.status, 200);
    plans_are_json(&c, &countries).await;
    later_changes_arrive(&schema, &[&a, &b, &c], 99, "all odd rows").await;
    // And a fresh migrate reports the rows the dropped rules would refuse.
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"))
        .arg("migrate")
        .env("READTIER_STORE_URL", schema.url())
        .output()
        .expect("run migrate");
    let said = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{said}");
    assert!(said.contains("memberships_lock_amount"), "{said}");
    assert!(said.contains("plans_name"), "{said}");
    stop_relay.cancel();
    relay.await.unwrap();
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// The embedded store's own odd values: text in number columns, unknown words in
/// instant columns, `infinity`, written past its rules (`PRAGMA
/// ignore_check_constraints`, the rule triggers dropped: a file written by an older
/// build or by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_rows_in_the_embedded_store_are_read_by_their_meaning_or_quarantined() {
    let node = TestNode::start(&[]).await;
    let db = node.db();
    // The rules refuse these now.
    let refused = rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE plans SET max_streams = 'lots' WHERE plan_id = 'premium'")
        .expect_err("text in a number column");
    assert!(refused.to_string().contains("plans_limits"), "{refused}");
    sql(
        &db,
        "PRAGMA ignore_check_constraints = ON;
         DROP TRIGGER plans_rules_bu; DROP TRIGGER memberships_rules_bu;
         DROP TRIGGER scheduled_prices_rules_bi; DROP TRIGGER partner_offers_rules_bi;
         UPDATE plans SET max_streams = 'lots' WHERE plan_id = 'premium';
         UPDATE memberships SET price_locked_amount = 'abc', price_locked_currency = 'USD' WHERE member_id = 20;
         UPDATE memberships SET price_locked_amount = '9.99', price_locked_currency = 'USD', price_locked_until = 'infinity' WHERE member_id = 21;
         UPDATE memberships SET price_locked_amount = '9.99', price_locked_currency = 'USD', price_locked_until = 'someday' WHERE member_id = 22;
         INSERT INTO scheduled_prices VALUES ('DE', 'standard', 'EUR', '2.22', '-infinity');
         INSERT INTO scheduled_prices VALUES ('DE', 'premium', 'EUR', '1.11', 'next tuesday');
         INSERT INTO partner_offers VALUES ('hostile', 'MX', 'standard', 'Forever', 'MXN', '4.44', '-infinity', 'infinity');",
    );
    // The catalog reloads without the unreadable rows, and the rest is served.
    eventually(
        Duration::from_secs(10),
        "the catalog without premium",
        || async {
            let us = node.get("/v1/plans?country=US").await.json();
            let ids: Vec<String> = us["plans"]
                .as_array()?
                .iter()
                .filter_map(|p| p["id"].as_str().map(str::to_string))
                .collect();
            (!ids.is_empty() && !ids.contains(&"premium".to_string())).then_some(())
        },
    )
    .await;
    let de = node.get("/v1/plans?country=DE").await.json();
    let standard = de["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "standard")
        .unwrap()["price"]["amount"]
        .clone();
    assert_eq!(standard, "2.22", "in force since -infinity");
    let mx = node.get("/v1/plans?country=MX&partner=hostile").await;
    assert_eq!(mx.status, 200);
    assert_eq!(
        mx.json()["partner"]["id"],
        "hostile",
        "{}",
        String::from_utf8_lossy(&mx.body)
    );
    assert_eq!(node.get("/v1/members/20/entitlement").await.status, 422);
    let forever = node.get("/v1/members/21/entitlement").await.json();
    assert_eq!(forever["price"]["source"], "locked");
    assert_eq!(node.get("/v1/members/22/entitlement").await.status, 422);
    let listed = get(node.running.admin_addr, "/admin/store/rejected", &[])
        .await
        .json();
    let rows = listed["rows"].as_array().unwrap().clone();
    let has = |table: &str, key: &str| rows.iter().any(|r| r["table"] == table && r["key"] == key);
    assert!(has("plans", "premium"), "{listed}");
    assert!(has("memberships", "20"), "{listed}");
    assert!(has("memberships", "22"), "{listed}");
    assert!(
        rows.iter().any(|r| r["table"] == "scheduled_prices"),
        "{listed}"
    );
    // Later changes still arrive.
    sql(
        &db,
        "UPDATE memberships SET status = 'paused' WHERE member_id = 7",
    );
    eventually(VISIBLE, "a later member change", || async {
        (node.get("/v1/members/7/entitlement").await.json()["status"] == "paused").then_some(())
    })
    .await;
    node.stop().await;
}

/// The gauge named on a `/metrics` page (the series without labels).
async fn gauge(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = String::from_utf8_lossy(&get(admin, "/metrics", &[]).await.body).into_owned();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Lag that tells the truth: with the relay stopped, a committed change is delivered
/// to nobody, and the nodes' lag (asked of the store) grows from it at once; the
/// relay's own admin listener says whether it is active and how far behind it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pipeline_shows_as_growing_lag_and_the_relay_reports_itself() {
    let (schema, _store) = seeded_pg(50).await;
    let redis = RedisServer::start();
    let mut env = env(&schema, &redis);
    let relay_admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut relay_env = env.clone();
    relay_env.push(("READTIER_RELAY_ADMIN_LISTEN", relay_admin.to_string()));
    let mut relay = relay_process("r1", &relay_env);
    env.push((
        "READTIER_DATA_DIR",
        tempfile::tempdir().unwrap().keep().display().to_string(),
    ));
    let node = NodeProcess::start(&env);
    // Caught up: a change arrives, and the lag is nil.
    schema
        .exec("UPDATE memberships SET status = 'paused' WHERE member_id = 5")
        .await;
    eventually(Duration::from_secs(10), "the change applied", || async {
        let r = get(node.addr, "/v1/members/5/entitlement", &[]).await;
        (r.json()["status"] == "paused").then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "no lag", || async {
        (gauge(node.admin, "readtier_change_log_lag_seconds").await? < 1.0).then_some(())
    })
    .await;
    let health = get(relay_admin, "/healthz", &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["role"], "active");
    assert_eq!(gauge(relay_admin, "readtier_relay_active").await, Some(1.0));
    assert!(gauge(relay_admin, "readtier_relay_lag_seconds")
        .await
        .is_some());
    // No relay: a committed change reaches no node, and the lag grows from it.
    relay.kill9();
    schema
        .exec("UPDATE memberships SET status = 'active' WHERE member_id = 5")
        .await;
    let lag = eventually(
        Duration::from_secs(10),
        "the lag to grow past 2 s",
        || async {
            let lag = gauge(node.admin, "readtier_change_log_lag_seconds").await?;
            (lag >= 2.0).then_some(lag)
        },
    )
    .await;
    assert!(lag < 10.0, "counted from the change's commit: {lag}");
    // A relay again: delivered, and the lag back to nil.
    let _relay = relay_process("r2", &relay_env);
    eventually(
        Duration::from_secs(20),
        "delivered after the relay's return",
        || async {
            let r = get(node.addr, "/v1/members/5/entitlement", &[]).await;
            (r.json()["status"] == "active").then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(5), "no lag again", || async {
        (gauge(node.admin, "readtier_change_log_lag_seconds").await? < 1.0).then_some(())
    })
    .await;
}
