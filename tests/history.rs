//! Member and catalog history (README, "History"), against real PostgreSQL, real
//! redis-server processes and the `readtier` binary: what the triggers record, what
//! the admin API and the CLI answer, that `history tail` never skips a late commit, and
//! the incident end to end: a bad deploy corrupts 10,000 members and `restore` brings
//! the store, every zone and two nodes back.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::infra::*;
use common::*;
use readtier::tier::{Tier, TierEntry};

const LIMIT: Duration = Duration::from_secs(20);

fn readtier(store_url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_readtier"));
    for (k, _) in std::env::vars() {
        if k.starts_with("READTIER_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn")
        .env("READTIER_STORE_URL", store_url);
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run readtier");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The database's clock now, as RFC 3339 (history's `at` comes from it).
async fn db_now(c: &tokio_postgres::Client) -> String {
    c.query_one(
        r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#,
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn admin_get(node: &TestNode, path: &str) -> Resp {
    get(node.running.admin_addr, path, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_every_change_with_who_and_why_and_answers_as_of() {
    let (schema, _store) = seeded_pg(0).await;
    let node = TestNode::start_with(&[("READTIER_STORE_URL", schema.url())]).await;
    // A writer that names itself only by application_name.
    let app = pg_client(&format!("{}&application_name=signup-service", schema.url())).await;
    let c = schema.client().await;

    let t0 = db_now(&c).await;
    app.batch_execute("INSERT INTO memberships (member_id, status, plan_id, country) VALUES (1, 'active', 'standard', 'DE')")
        .await
        .unwrap();
    let t1 = db_now(&c).await;
    c.batch_execute(
        "BEGIN; SET LOCAL readtier.actor = 'billing-service';
         SET LOCAL readtier.reason = 'renewal declined';
         UPDATE memberships SET status = 'on_hold' WHERE member_id = 1; COMMIT;",
    )
    .await
    .unwrap();
    let t2 = db_now(&c).await;
    c.batch_execute("BEGIN; SET LOCAL readtier.actor = 'support'; DELETE FROM memberships WHERE member_id = 1; COMMIT;")
        .await
        .unwrap();
    let t3 = db_now(&c).await;
    c.batch_execute("INSERT INTO memberships (member_id, status, plan_id, country) VALUES (1, 'active', 'premium', 'FR')")
        .await
        .unwrap();
    let t4 = db_now(&c).await;
    // One transaction touching many members.
    c.batch_execute(
        "BEGIN; SET LOCAL readtier.actor = 'bulk-import';
         INSERT INTO memberships (member_id, status, plan_id, country)
         SELECT g, 'active', 'basic', 'US' FROM generate_series(2, 41) g;
         UPDATE memberships SET plan_id = 'standard' WHERE member_id BETWEEN 2 AND 41; COMMIT;",
    )
    .await
    .unwrap();

    let r = admin_get(&node, "/admin/members/1/history").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let entries = v["entries"].as_array().unwrap();
    let ops: Vec<&str> = entries.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["insert", "delete", "update", "insert"],
        "newest first"
    );
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    // No actor set: application_name, then the session's user.
    assert_eq!(actors[3], "signup-service");
    assert_eq!(actors[2], "billing-service");
    assert_eq!(actors[1], "support");
    assert_eq!(actors[0], "postgres");
    assert_eq!(entries[2]["reason"], "renewal declined");
    assert_eq!(entries[2]["before"]["status"], "active");
    assert_eq!(entries[2]["after"]["status"], "on_hold");
    assert_eq!(entries[1]["after"], serde_json::Value::Null);
    assert_eq!(entries[0]["after"]["plan_id"], "premium");
    let versions: Vec<i64> = entries
        .iter()
        .filter_map(|e| e["after"]["version"].as_i64())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] > w[1]),
        "versions rise: {versions:?}"
    );
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]));
    // Microsecond timestamps in UTC.
    let at = entries[0]["at"].as_str().unwrap();
    assert_eq!(at.len(), "2026-11-30T08:00:00.000000Z".len(), "{at}");

    // Paging by cursor.
    let p1 = admin_get(&node, "/admin/members/1/history?limit=3")
        .await
        .json();
    assert_eq!(p1["entries"].as_array().unwrap().len(), 3);
    let next = p1["next_before"]
        .as_i64()
        .expect("a cursor to the next page");
    let p2 = admin_get(
        &node,
        &format!("/admin/members/1/history?limit=3&before={next}"),
    )
    .await
    .json();
    assert_eq!(p2["entries"].as_array().unwrap().len(), 1);
    assert_eq!(p2["entries"][0]["op"], "insert");
    assert!(p2.get("next_before").is_none());

    // As of each instant.
    let as_of = |t: &str| format!("/admin/members/1/history?as_of={}", t.replace(':', "%3A"));
    admin_get(&node, &as_of(&t0)).await.assert_problem(404);
    let s1 = admin_get(&node, &as_of(&t1)).await.json();
    assert_eq!(s1["state"]["status"], "active");
    assert_eq!(s1["state"]["country"], "DE");
    assert_eq!(
        admin_get(&node, &as_of(&t2)).await.json()["state"]["status"],
        "on_hold"
    );
    admin_get(&node, &as_of(&t3)).await.assert_problem(404);
    assert_eq!(
        admin_get(&node, &as_of(&t4)).await.json()["state"]["plan_id"],
        "premium"
    );
    // An offset other than Z means the same instant.
    let t2_plus_one = {
        let p = t2.trim_end_matches('Z');
        let (date, time) = p.split_once('T').unwrap();
        let hour: u32 = time[..2].parse().unwrap();
        if hour < 23 {
            Some(format!("{date}T{:02}{}+01:00", hour + 1, &time[2..]))
        } else {
            None
        }
    };
    if let Some(t) = t2_plus_one {
        let r = admin_get(&node, &as_of(&t).replace('+', "%2B"))
            .await
            .json();
        assert_eq!(r["state"]["status"], "on_hold", "{t}");
    }

    // The many-member transaction: each member has its insert and its update.
    for id in [2, 41] {
        let e = admin_get(&node, &format!("/admin/members/{id}/history"))
            .await
            .json();
        let ops: Vec<&str> = e["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["op"].as_str().unwrap())
            .collect();
        assert_eq!(ops, ["update", "insert"]);
        assert_eq!(e["entries"][0]["actor"], "bulk-import");
        assert_eq!(e["entries"][0]["after"]["plan_id"], "standard");
    }

    // Catalog history: a price change, who made it and why.
    c.batch_execute(
        "BEGIN; SET LOCAL readtier.actor = 'pricing'; SET LOCAL readtier.reason = 'annual review';
         UPDATE plan_prices SET amount = 21.99 WHERE country = 'DE' AND plan_id = 'premium'; COMMIT;",
    )
    .await
    .unwrap();
    let cat = admin_get(&node, "/admin/catalog/history?country=de&limit=2")
        .await
        .json();
    // Before it, the reference catalog's load, which names itself.
    assert_eq!(cat["entries"][1]["op"], "insert");
    assert_eq!(cat["entries"][1]["actor"], "readtier-seed");
    let e = &cat["entries"][0];
    assert_eq!(e["op"], "update");
    assert_eq!(e["table"], "plan_prices");
    assert_eq!(e["actor"], "pricing");
    assert_eq!(e["reason"], "annual review");
    assert_eq!(e["after"]["amount"], 21.99);
    assert_ne!(e["before"]["amount"], e["after"]["amount"]);

    // Bad input is a 400 naming what was wrong; wrong method 405; not on the public side.
    for bad in [
        "/admin/members/1/history?as_of=yesterday",
        "/admin/members/1/history?limit=0",
        "/admin/members/1/history?limit=5000",
        "/admin/members/1/history?before=-3",
        "/admin/members/1/history?colour=blue",
        "/admin/members/abc/history",
        "/admin/catalog/history?country=Germany",
    ] {
        let p = admin_get(&node, bad).await.assert_problem(400);
        assert!(p["detail"].as_str().unwrap().len() > 10, "{bad}: {p}");
    }
    let r = post(
        node.running.admin_addr,
        "/admin/members/1/history",
        "application/json",
        b"{}",
    )
    .await;
    r.assert_problem(405);
    node.get("/admin/members/1/history")
        .await
        .assert_problem(404);

    // The CLI mirrors the API: a table by default, JSON on request.
    let (code, out, err) = run(readtier(&schema.url()).args(["history", "1"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("billing-service") && out.contains("renewal declined"),
        "{out}"
    );
    let (code, out, _) =
        run(readtier(&schema.url()).args(["history", "1", "--as-of", &t2, "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "on_hold");
    let (code, _, err) = run(readtier(&schema.url()).args(["history", "1", "--as-of", &t3]));
    assert_eq!(code, 1);
    assert!(err.contains("did not exist"), "{err}");
    // History answers equal the current rows.
    let (code, out, err) = run(readtier(&schema.url()).args(["reconcile", "--history"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 mismatches"), "{out}");
    // A row written with the triggers off is a mismatch.
    c.batch_execute(
        "BEGIN; SET LOCAL session_replication_role = replica;
         UPDATE memberships SET status = 'paused' WHERE member_id = 7; COMMIT;",
    )
    .await
    .unwrap();
    let (code, out, _) = run(readtier(&schema.url()).args(["reconcile", "--history"]));
    assert_eq!(code, 1);
    assert!(
        out.contains("member 7:") && out.contains("1 mismatches"),
        "{out}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_tail_never_skips_a_transaction_that_commits_late() {
    let (schema, _store) = seeded_pg(0).await;
    let c = schema.client().await;
    c.batch_execute(
        "INSERT INTO memberships (member_id, status, plan_id, country)
         SELECT g, 'active', 'basic', 'US' FROM generate_series(1, 3) g",
    )
    .await
    .unwrap();
    let tail = |from: Option<i64>| {
        let mut cmd = readtier(&schema.url());
        cmd.args(["history", "tail", "--no-follow"]);
        if let Some(f) = from {
            cmd.args(["--from", &f.to_string()]);
        }
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let start = tail(None);
    let last = start.last().unwrap()["seq"].as_i64().unwrap();
    // Late: takes its transaction id first, then writes history *before* Early does,
    // and commits last.
    let early = schema.client().await;
    let late = schema.client().await;
    early.batch_execute("BEGIN").await.unwrap();
    early
        .query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    late.batch_execute("BEGIN").await.unwrap();
    late.query_one("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    late.batch_execute("SET LOCAL readtier.actor = 'late'; UPDATE memberships SET status = 'paused' WHERE member_id = 1")
        .await
        .unwrap();
    early
        .batch_execute("SET LOCAL readtier.actor = 'early'; UPDATE memberships SET status = 'grace' WHERE member_id = 2; COMMIT")
        .await
        .unwrap();
    // A third, autocommit, after Late's write: its seq is above Late's.
    c.batch_execute("UPDATE memberships SET status = 'cancelled' WHERE member_id = 3")
        .await
        .unwrap();
    // Early's transaction is older than Late's and done: it is shown once every older
    // transaction in the database has ended (other tests' too); the third is newer
    // than Late, still running, and is held back all along.
    let deadline = Instant::now() + LIMIT;
    let seen = loop {
        let seen = tail(Some(last));
        let actors: Vec<&str> = seen.iter().map(|e| e["actor"].as_str().unwrap()).collect();
        assert!(
            actors.is_empty() || actors == ["early"],
            "only Early may show while Late runs: {seen:?}"
        );
        if !actors.is_empty() {
            break seen;
        }
        assert!(Instant::now() < deadline, "Early's entry never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resume = seen.last().unwrap()["seq"].as_i64().unwrap();
    late.batch_execute("COMMIT").await.unwrap();
    let rest = eventually(LIMIT, "Late and the third to show", || async {
        let rest = tail(Some(resume));
        (rest.len() == 2).then_some(rest)
    })
    .await;
    let actors: Vec<&str> = rest.iter().map(|e| e["actor"].as_str().unwrap()).collect();
    assert_eq!(actors, ["late", "postgres"], "{rest:?}");
    // Late's entry has a lower seq than what came before it in the tail: a reader that
    // followed seq alone would have skipped it.
    assert!(rest[0]["seq"].as_i64().unwrap() < resume);
    // Nothing is repeated or lost over the whole tail.
    let all = tail(None);
    let mut seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let n = seqs.len();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), n);
    assert_eq!(n, start.len() + 3);
}

/// Every member's business columns, from the store.
async fn rows(c: &tokio_postgres::Client) -> HashMap<i64, (String, String, String)> {
    c.query(
        "SELECT member_id, status, plan_id, country FROM memberships",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

/// Reads every member on `node` until each answers `want`'s status and plan.
async fn node_answers(node: &TestNode, want: &HashMap<i64, (String, String, String)>, what: &str) {
    let deadline = Instant::now() + LIMIT;
    let mut pending: Vec<i64> = want.keys().copied().collect();
    while !pending.is_empty() {
        let mut left = Vec::new();
        // 64 requests at a time: a pass stays short in a debug build.
        for chunk in pending.chunks(64) {
            let answers = futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|id| node.get_owned(format!("/v1/members/{id}/entitlement"))),
            )
            .await;
            for (id, r) in chunk.iter().zip(answers) {
                let v = r.json();
                let w = &want[id];
                if v["status"] != w.0.as_str() || v["plan"] != w.1.as_str() {
                    left.push(*id);
                }
            }
        }
        assert!(
            Instant::now() < deadline || left.is_empty(),
            "{what}: {} members still differ, e.g. {:?}",
            left.len(),
            &left[..left.len().min(5)]
        );
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pending = left;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_deploy_corrupting_10000_members_is_restored_on_the_store_every_zone_and_two_nodes() {
    const N: i64 = 10_000;
    let (schema, _store) = seeded_pg(N as u64).await;
    let (za, zb, stream) = (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    );
    let env = |zone: &str| {
        vec![
            ("READTIER_STORE_URL", schema.url()),
            (
                "READTIER_REDIS_URLS",
                format!("a={};b={}", za.url(), zb.url()),
            ),
            ("READTIER_ZONE", zone.to_string()),
            ("READTIER_CHANGES_STREAM_URL", stream.url()),
            ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
            ("READTIER_L1_TTL", "10m".to_string()),
        ]
    };
    let (stop_relay, relay) = relay_task(&config_of(&env("a")), "r1");
    let a = TestNode::start_with(&env("a")).await;
    let b = TestNode::start_with(&env("b")).await;
    let c = schema.client().await;
    let good = rows(&c).await;
    assert_eq!(good.len(), N as usize);
    // Both nodes hold every member (and so do both zones, filled on the misses).
    node_answers(&a, &good, "node a answers every member").await;
    node_answers(&b, &good, "node b answers every member").await;

    let before = db_now(&c).await;
    c.batch_execute(
        "BEGIN; SET LOCAL readtier.actor = 'bad-deploy';
         SET LOCAL readtier.reason = 'migration 0042 ran against production';
         UPDATE memberships SET status = 'cancelled', plan_id = 'premium'; COMMIT;",
    )
    .await
    .unwrap();
    let bad = rows(&c).await;
    assert!(bad.values().all(|r| r.0 == "cancelled"));
    // Members the bad UPDATE rewrote to what they already were need no repair.
    let changed = good.iter().filter(|(id, r)| bad[*id] != **r).count();
    assert!(changed > N as usize * 9 / 10);
    for id in [101, 102, 105] {
        assert_ne!(good[&id], bad[&id], "member {id} was corrupted");
    }
    // Then, legitimately: billing moves member 101 to another plan (on its corrupted
    // row), a signup, and an erasure of member 105.
    c.batch_execute(
        "BEGIN; SET LOCAL readtier.actor = 'billing'; SET LOCAL readtier.reason = 'plan change';
         UPDATE memberships SET plan_id = 'basic' WHERE member_id = 101;
         UPDATE memberships SET price_locked_amount = 5.99, price_locked_currency = 'USD'
          WHERE member_id = 102; COMMIT;
         BEGIN; SET LOCAL readtier.actor = 'signup';
         INSERT INTO memberships (member_id, status, plan_id, country) VALUES (30001, 'active', 'standard', 'US'); COMMIT;
         BEGIN; SET LOCAL readtier.actor = 'gdpr'; SET LOCAL readtier.reason = 'erasure request';
         DELETE FROM memberships WHERE member_id = 105; COMMIT;",
    )
    .await
    .unwrap();
    let mut later = rows(&c).await;
    node_answers(
        &a,
        &later,
        "node a serves the corruption and the later changes",
    )
    .await;
    node_answers(
        &b,
        &later,
        "node b serves the corruption and the later changes",
    )
    .await;

    // A dry run changes nothing, and says what a run would do.
    let (code, out, err) = run(readtier(&schema.url()).args([
        "restore",
        "--as-of",
        &before,
        "--actor",
        "bad-deploy",
        "--dry-run",
    ]));
    assert_eq!(code, 3, "conflicts: exit status 3; {err}");
    let restorable = changed - 3;
    assert!(
        out.contains(&format!("would restore {restorable} of {N} members")),
        "{out}"
    );
    assert!(out.contains("3 conflicts"), "{out}");
    assert_eq!(rows(&c).await, later);

    let report = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let (code, out, err) = run(readtier(&schema.url()).args([
        "restore",
        "--as-of",
        &before,
        "--actor",
        "bad-deploy",
        "--report",
        report.path().to_str().unwrap(),
    ]));
    let took = started.elapsed();
    assert_eq!(code, 3, "conflicts: exit status 3; {err}");
    assert!(
        out.contains(&format!("restored {restorable} of {N} members")),
        "{out}"
    );
    assert!(out.contains("3 conflicts"), "{out}");
    // Each conflict names the later change, and what the restore would have written.
    let conflict_101 = out
        .lines()
        .find(|l| l.starts_with("member 101: conflict"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        conflict_101.contains("by billing (plan change)"),
        "{conflict_101}"
    );
    assert!(
        conflict_101.contains(&format!("would have written {}", good[&101].0)),
        "{conflict_101}"
    );
    let conflict_105 = out
        .lines()
        .find(|l| l.starts_with("member 105: conflict"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(conflict_105.contains("delete by gdpr"), "{conflict_105}");
    assert!(
        out.lines().filter(|l| l.contains(": restored: ")).count() == restorable,
        "each restored member is listed"
    );
    println!(
        "restore of {N} members took {:.2}s: {}",
        took.as_secs_f64(),
        out.lines().last().unwrap_or("")
    );
    // The report file: one JSON line a member not unchanged.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(report.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), restorable + 3);
    let c101 = lines.iter().find(|l| l["member_id"] == 101).unwrap();
    assert_eq!(c101["outcome"], "conflict");
    assert_eq!(c101["later"]["actor"], "billing");

    // The store: every other corrupted member back; 101 keeps billing's change; the
    // signup stays; the erased member stays erased.
    let now = rows(&c).await;
    for (id, row) in &good {
        match *id {
            101 | 102 => assert_eq!(now[id], later[id], "billing's change kept"),
            105 => assert!(!now.contains_key(id), "the erasure is not undone"),
            _ => assert_eq!(&now[id], row, "member {id} restored"),
        }
    }
    assert!(now.contains_key(&30001), "the signup is not undone");
    later = now;
    // Both nodes (through change capture, the relay and the stream: no restart).
    let mut want = later.clone();
    want.remove(&30001);
    node_answers(&a, &want, "node a answers the restored state").await;
    node_answers(&b, &want, "node b answers the restored state").await;
    // Every zone holds the restored row (or nothing, so a read goes to the store).
    let tier = Tier::from_config(&config_of(&env("a"))).unwrap().unwrap();
    for zone in 0..2 {
        for id in (1..=N).step_by(97) {
            if let Some(TierEntry::Member(m)) = tier.get_from(zone, id as u64).await.unwrap() {
                let w = &later[&id];
                assert_eq!(
                    (m.status.as_str(), m.plan_id.as_str()),
                    (w.0.as_str(), w.1.as_str()),
                    "zone {zone} member {id}"
                );
            }
        }
    }
    // History shows the corruption and the repair, with their actors and reasons.
    let h = admin_get(&a, "/admin/members/4242/history?limit=2")
        .await
        .json();
    let e = h["entries"].as_array().unwrap();
    assert_eq!(e[0]["actor"], "readtier-restore");
    assert!(e[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("restore as of"));
    assert_eq!(e[0]["after"]["status"], good[&4242].0.as_str());
    assert_eq!(e[1]["actor"], "bad-deploy");
    assert_eq!(e[1]["reason"], "migration 0042 ran against production");
    assert_eq!(e[1]["after"]["status"], "cancelled");
    // A second restore writes nothing (the conflicts are still reported).
    let writes_before: i64 = c
        .query_one("SELECT count(*) FROM member_history", &[])
        .await
        .unwrap()
        .get(0);
    let (code, out, _) =
        run(readtier(&schema.url()).args(["restore", "--as-of", &before, "--actor", "bad-deploy"]));
    assert_eq!(code, 3);
    assert!(out.contains(&format!("restored 0 of {N} members")), "{out}");
    assert!(out.contains("3 conflicts"), "{out}");
    let writes_after: i64 = c
        .query_one("SELECT count(*) FROM member_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(writes_after, writes_before, "a second run writes nothing");
    // With --overwrite-later the fields the bad deploy touched are reverted (status and
    // plan: billing's later plan for 101 is overwritten) and the others keep their later
    // values (102's price lock, which the bad deploy did not touch); the erasure stays
    // without --undo-deletes.
    let (code, out, err) = run(readtier(&schema.url()).args([
        "restore",
        "--as-of",
        &before,
        "--actor",
        "bad-deploy",
        "--overwrite-later",
    ]));
    assert_eq!(code, 3, "105 is still a conflict: {out} {err}");
    let now = rows(&c).await;
    assert_eq!(
        now[&101], good[&101],
        "status and plan reverted over billing's"
    );
    assert_eq!(now[&102], good[&102], "status and plan reverted");
    let lock: Option<String> = c
        .query_one(
            "SELECT price_locked_amount::text FROM memberships WHERE member_id = 102",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lock.as_deref(), Some("5.99"), "the later lock kept");
    assert!(!now.contains_key(&105), "the erasure is not undone");

    stop_relay.cancel();
    relay.await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history_names_writers_through_history_context_follows_and_restores() {
    use std::io::{BufRead, BufReader};
    let node = TestNode::start(&[("READTIER_SEED_MEMBERS", "20")]).await;
    let db = node.db();
    let url = format!("sqlite://{}", db.display());
    // `history tail` following the file from its start.
    let mut follower = readtier(&url)
        .args(["history", "tail"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(first["seq"].as_i64().unwrap() > 0);

    let at: String = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row(
            "SELECT strftime('%Y-%m-%dT%H:%M:%f','now') || '000Z'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(5));
    sql(
        &db,
        "BEGIN;
         UPDATE history_context SET actor = 'billing', reason = 'renewal declined';
         UPDATE memberships SET status = 'on_hold' WHERE member_id = 3;
         UPDATE history_context SET actor = NULL, reason = NULL;
         COMMIT;
         DELETE FROM memberships WHERE member_id = 4;",
    );
    let h = admin_get(&node, "/admin/members/3/history").await.json();
    assert_eq!(h["entries"][0]["actor"], "billing");
    assert_eq!(h["entries"][0]["reason"], "renewal declined");
    assert_eq!(h["entries"][0]["after"]["status"], "on_hold");
    // The node's own seed of the reference catalog names itself.
    let cat = admin_get(&node, "/admin/catalog/history?country=US&limit=1")
        .await
        .json();
    assert_eq!(cat["entries"][0]["actor"], "readtier-seed");
    assert_eq!(cat["entries"][0]["reason"], "reference catalog");
    let d = admin_get(&node, "/admin/members/4/history").await.json();
    assert_eq!(d["entries"][0]["op"], "delete");
    assert_eq!(d["entries"][0]["actor"], "sqlite");

    // The follower sees both changes, in order, without being restarted.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if e["member_id"] == 3 || e["member_id"] == 4 {
            seen.push(e["op"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["update", "delete"]);
    follower.kill().unwrap();
    let _ = follower.wait();

    // Revert both changes since `at`: the deletion only with its own flag.
    let (code, out, err) = run(readtier(&url).args(["restore", "--as-of", &at]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 1 of 2 members"), "{out}");
    assert!(
        out.contains("member 4: left alone: the selected changes deleted it"),
        "{out}"
    );
    let (code, out, err) = run(readtier(&url).args(["restore", "--as-of", &at, "--undo-deletes"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 1 of 2 members"), "{out}");
    assert!(out.contains("1 unchanged"), "{out}");
    eventually(LIMIT, "the node to answer the restored members", || async {
        let three = node.get("/v1/members/3/entitlement").await;
        let four = node.get("/v1/members/4/entitlement").await;
        (three.json()["status"] != "on_hold" && four.status == 200).then_some(())
    })
    .await;
    let h = admin_get(&node, "/admin/members/4/history").await.json();
    assert_eq!(h["entries"][0]["op"], "insert");
    assert_eq!(h["entries"][0]["actor"], "readtier-restore");
    let (code, out, _) = run(readtier(&url).args(["reconcile", "--history"]));
    assert_eq!(code, 0, "{out}");
    node.stop().await;
}

/// Values compare as what they are: a price lock written from a session in another
/// time zone (its history image holds the instant in that zone's offset) and an amount
/// written as `19.990` are the same as the row restored; so a restore converges, and a
/// second run writes nothing. A member the reverted changes created is deleted only
/// with `--undo-inserts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_compares_typed_values_converges_and_undoes_creations_only_when_told() {
    let (schema, _store) = seeded_pg(300).await;
    let c = schema.client().await;
    c.batch_execute(
        "SET timezone = 'America/New_York';
         UPDATE memberships SET price_locked_amount = 19.990, price_locked_currency = 'USD',
                price_locked_until = '2027-06-01T00:00:00Z' WHERE member_id = 200;
         RESET timezone;",
    )
    .await
    .unwrap();
    let t = db_now(&c).await;
    c.batch_execute(
        "BEGIN; SET LOCAL readtier.actor = 'bad';
         UPDATE memberships SET status = 'cancelled', price_locked_amount = NULL WHERE member_id = 200;
         INSERT INTO memberships (member_id, status, plan_id, country) VALUES (99999, 'active', 'premium', 'US');
         COMMIT;",
    )
    .await
    .unwrap();
    let count = || async {
        c.query_one("SELECT count(*) FROM member_history", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let (code, out, err) =
        run(readtier(&schema.url()).args(["restore", "--as-of", &t, "--actor", "bad"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 1 of 2 members"), "{out}");
    assert!(
        out.contains("member 99999: left alone: the selected changes created it"),
        "{out}"
    );
    let lock: (Option<String>, Option<String>) = {
        let r = c
            .query_one(
                "SELECT price_locked_amount::text, to_char(price_locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM memberships WHERE member_id = 200",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    // The amount as a decimal (its image holds a JSON number), the instant as itself.
    assert_eq!(
        lock,
        (Some("19.99".into()), Some("2027-06-01 00:00".into())),
        "the instant, not its text"
    );
    // Again, and again with no actor filter (its own writes among the changes): nothing
    // to write.
    let before = count().await;
    for args in [
        vec!["restore", "--as-of", &t, "--actor", "bad"],
        vec!["restore", "--as-of", &t, "--member", "200"],
    ] {
        let (code, out, err) = run(readtier(&schema.url()).args(&args));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("restored 0 of"), "{args:?}: {out}");
    }
    assert_eq!(count().await, before, "a second run writes nothing");
    // The creation, only when told.
    let (code, out, err) = run(readtier(&schema.url()).args([
        "restore",
        "--as-of",
        &t,
        "--actor",
        "bad",
        "--undo-inserts",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("member 99999: restored: active premium US -> (absent)"),
        "{out}"
    );
    let gone = c
        .query_opt("SELECT 1 FROM memberships WHERE member_id = 99999", &[])
        .await
        .unwrap();
    assert!(gone.is_none());
}

/// A member's state at an instant, a restore's selection and the seeds they read use
/// the history's indexes: no sequential scan of `member_history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lookups_use_indexes_not_a_scan_of_the_whole_history() {
    let (schema, _store) = seeded_pg(10).await;
    let c = schema.client().await;
    c.batch_execute("SET enable_seqscan = off").await.unwrap();
    for query in [
        "SELECT seq FROM member_history WHERE op = 'seed' ORDER BY seq",
        "SELECT DISTINCT member_id FROM member_history WHERE at > now() - interval '1 hour' AND actor = 'x'",
        "SELECT seq FROM member_history WHERE member_id = ANY('{1,2}') AND at > now() ORDER BY member_id, seq",
    ] {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN {query}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{query}:\n{plan}");
    }
}

/// Catalog history by country covers every pricing table: an experiment's cells and
/// prices are found by their experiment's country.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_history_by_country_includes_an_experiments_cells_and_prices() {
    let (schema, _store) = seeded_pg(10).await;
    schema
        .exec(
            "INSERT INTO experiments VALUES ('ca-test', 'CA', '2020-01-01T00:00:00Z', NULL);
             INSERT INTO experiment_cells VALUES ('ca-test', 'low', 5000);
             INSERT INTO experiment_prices VALUES ('ca-test', 'low', 'premium', 'CAD', '9.99');",
        )
        .await;
    let (code, out, err) =
        run(readtier(&schema.url()).args(["history", "catalog", "--country", "CA", "--json"]));
    assert_eq!(code, 0, "{err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for table in ["experiments", "experiment_cells", "experiment_prices"] {
        assert!(
            entries.iter().any(|e| e["table"] == table),
            "{table} in CA's history: {out}"
        );
    }
    let (_, out, _) =
        run(readtier(&schema.url()).args(["history", "catalog", "--country", "DE", "--json"]));
    assert!(!out.contains("ca-test"), "not DE's: {out}");
}
