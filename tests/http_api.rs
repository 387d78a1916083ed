//! The HTTP API through its public surface: a node on port 0, real sockets.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_are_listed_in_ascending_price_with_real_prices() {
    let node = TestNode::start(&[]).await;
    let us = node.get("/v1/plans?country=US").await;
    assert_eq!(us.status, 200);
    assert_eq!(us.header("content-type"), Some("application/json"));
    assert_eq!(us.header("x-served-from"), Some("snapshot"));
    let v = us.json();
    assert_eq!(v["country"], "US");
    assert_eq!(v["currency"], "USD");
    assert_eq!(
        v["catalog_version"].to_string(),
        us.header("x-catalog-version").unwrap()
    );
    let got: Vec<(String, String)> = v["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["price"]["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("standard-with-ads", "8.99"),
            ("standard", "19.99"),
            ("premium", "26.99")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let premium = &v["plans"][2];
    assert_eq!(premium["max_streams"], 4);
    assert_eq!(premium["max_resolution"], "2160p");
    assert_eq!(premium["download_devices"], 6);
    assert_eq!(premium["ads"], false);
    assert_eq!(premium["price"]["currency"], "USD");
    assert_eq!(
        premium["device_classes"],
        serde_json::json!(["tv", "computer", "mobile", "tablet"])
    );

    let jp = node.get("/v1/plans?country=JP").await.json();
    let amounts: Vec<&str> = jp["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["price"]["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["890", "1590", "2290"]);
    assert_eq!(jp["currency"], "JPY");

    // Lower case is accepted and means the same country.
    assert_eq!(node.get("/v1/plans?country=jp").await.json(), jp);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_errors_are_problems() {
    let node = TestNode::start(&[]).await;
    let p = node.get("/v1/plans?country=usa").await.assert_problem(400);
    assert!(p["detail"].as_str().unwrap().contains("usa"));
    node.get("/v1/plans?country=U1").await.assert_problem(400);
    node.get("/v1/plans").await.assert_problem(400);
    node.get("/v1/plans?country=ZZ").await.assert_problem(404);
    let r = post(
        node.addr(),
        "/v1/plans?country=US",
        "application/json",
        b"{}",
    )
    .await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    node.get("/v2/nothing").await.assert_problem(404);
    node.get("/v1/members/42/entitlement/extra")
        .await
        .assert_problem(404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_etag_answers_304() {
    let node = TestNode::start(&[]).await;
    let first = node.get("/v1/plans?country=US").await;
    let etag = first.header("etag").expect("etag").to_string();
    let again = get(
        node.addr(),
        "/v1/plans?country=US",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert!(again.header("x-catalog-version").is_some());
    let other = get(
        node.addr(),
        "/v1/plans?country=US",
        &[("If-None-Match", "\"nope\"")],
    )
    .await;
    assert_eq!(other.status, 200);
    // Another country's ETag does not match.
    let gb = get(
        node.addr(),
        "/v1/plans?country=GB",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(gb.status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entitlement_answers_from_store_then_l1_and_rejects_bad_ids() {
    let node = TestNode::start(&[]).await;
    sql(&node.db(), "UPDATE memberships SET status='active', plan_id='premium', country='US' WHERE member_id=42");
    node.caught_up().await;
    let first = node.get("/v1/members/42/entitlement").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-served-from"), Some("store"));
    assert!(first.header("x-catalog-version").is_some());
    let v = first.json();
    assert_eq!(v["member_id"], 42);
    assert_eq!(v["status"], "active");
    assert_eq!(v["plan"], "premium");
    assert_eq!(v["country"], "US");
    assert_eq!(v["can_stream"], true);
    assert_eq!(v["max_streams"], 4);
    assert_eq!(v["max_resolution"], "2160p");
    assert_eq!(v["download_devices"], 6);
    assert_eq!(
        v["device_classes"],
        serde_json::json!(["tv", "computer", "mobile", "tablet"])
    );
    assert!(
        v["version"].as_i64().unwrap() >= 2,
        "the raw update raised the version: {v}"
    );
    let second = node.get("/v1/members/42/entitlement").await;
    assert_eq!(second.header("x-served-from"), Some("l1"));
    assert_eq!(second.json(), v);

    for bad in ["abc", "-5", "0", "1.5", "99999999999999999999"] {
        node.get(&format!("/v1/members/{bad}/entitlement"))
            .await
            .assert_problem(400);
    }
    let unknown = node.get("/v1/members/999999999999/entitlement").await;
    unknown.assert_problem(404);
    assert_eq!(unknown.header("x-served-from"), Some("store"));
    let again = node.get("/v1/members/999999999999/entitlement").await;
    again.assert_problem(404);
    assert_eq!(
        again.header("x-served-from"),
        Some("l1"),
        "unknown ids are negatively cached"
    );
    let r = post(
        node.addr(),
        "/v1/members/42/entitlement",
        "application/json",
        b"{}",
    )
    .await;
    r.assert_problem(405);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_answers_every_reason() {
    let node = TestNode::start(&[]).await;
    sql(
        &node.db(),
        "INSERT INTO memberships (member_id, status, plan_id, country) VALUES
            (900001, 'active', 'premium', 'US'),
            (900002, 'grace', 'basic', 'GB'),
            (900003, 'on_hold', 'premium', 'US'),
            (900004, 'paused', 'premium', 'US'),
            (900005, 'cancelled', 'premium', 'US'),
            (900006, 'active', 'mobile', 'IN');",
    );
    // (member, device, active streams, allowed, reason, max_streams)
    type Case = (u64, &'static str, u64, bool, &'static str, Option<u32>);
    let cases: &[Case] = &[
        (900001, "tv", 3, true, "ok", Some(4)),
        (900001, "tv", 4, false, "stream_limit_reached", Some(4)),
        (900002, "computer", 0, true, "ok", Some(1)),
        (
            900002,
            "computer",
            1,
            false,
            "stream_limit_reached",
            Some(1),
        ),
        (900003, "tv", 0, false, "account_on_hold", Some(4)),
        (900004, "tv", 0, false, "account_paused", Some(4)),
        (900005, "tv", 0, false, "membership_cancelled", Some(4)),
        (900006, "tv", 0, false, "device_not_allowed", Some(1)),
        (900006, "mobile", 0, true, "ok", Some(1)),
        (900006, "toaster", 0, false, "device_not_allowed", Some(1)),
        (999999999999, "tv", 0, false, "not_a_member", None),
    ];
    for &(id, device, active, allowed, reason, max) in cases {
        let r = node
            .authorize(&format!(
                r#"{{"member_id":{id},"device_class":"{device}","active_streams":{active}}}"#
            ))
            .await;
        assert_eq!(
            r.status,
            200,
            "{id} {device}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(matches!(r.header("x-served-from"), Some("l1" | "store")));
        assert!(r.header("x-catalog-version").is_some());
        let v = r.json();
        assert_eq!(v["allowed"], allowed, "{id} {device} {active}: {v}");
        assert_eq!(v["reason"], reason, "{id} {device} {active}: {v}");
        match max {
            Some(m) => {
                assert_eq!(v["max_streams"], m);
                assert!(v["max_resolution"].is_string());
            }
            None => {
                assert_eq!(v["max_streams"], 0);
                assert!(v["max_resolution"].is_null());
            }
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_rejects_bad_bodies() {
    let node = TestNode::start(&[]).await;
    let a = node.addr();
    let ok_body = br#"{"member_id":1,"device_class":"tv","active_streams":0}"#;
    post(a, "/v1/playback/authorize", "text/plain", ok_body)
        .await
        .assert_problem(415);
    raw(a, b"POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .assert_problem(415);
    assert_eq!(
        post(
            a,
            "/v1/playback/authorize",
            "application/json; charset=utf-8",
            ok_body
        )
        .await
        .status,
        200
    );
    for bad in [
        &b"not json"[..],
        br#"{"member_id":1}"#,
        br#"{"member_id":"1","device_class":"tv","active_streams":0}"#,
        br#"{"member_id":1,"device_class":"tv","active_streams":-1}"#,
        br#"{"member_id":0,"device_class":"tv","active_streams":0}"#,
        br#"{"member_id":1,"device_class":"","active_streams":0}"#,
        br#"{"member_id":1,"device_class":"TV!","active_streams":0}"#,
        br#"[]"#,
        b"",
    ] {
        post(a, "/v1/playback/authorize", "application/json", bad)
            .await
            .assert_problem(400);
    }
    let big = format!(
        r#"{{"member_id":1,"device_class":"tv","active_streams":0,"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    post(
        a,
        "/v1/playback/authorize",
        "application/json",
        big.as_bytes(),
    )
    .await
    .assert_problem(413);
    // A chunked body with no declared length is cut off at the limit too.
    let mut chunked = b"POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    raw(a, &chunked).await.assert_problem(413);
    let r = get(a, "/v1/playback/authorize", &[]).await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_header_size_and_time() {
    let node = TestNode::start(&[
        ("READTIER_HTTP_REQUEST_TIMEOUT", "300ms"),
        ("READTIER_HTTP_IDLE_TIMEOUT", "600ms"),
    ])
    .await;
    let a = node.addr();
    let huge = "x".repeat(20_000);
    let r = get(a, "/v1/plans?country=US", &[("X-Huge", &huge)]).await;
    r.assert_problem(431);
    // Past twice the limit hyper refuses the head itself: still a 431, without a body.
    let huger = "x".repeat(40_000);
    let r = get(a, "/v1/plans?country=US", &[("X-Huge", &huger)]).await;
    assert_eq!(r.status, 431, "far oversized head");

    // A body that never finishes arriving is answered 408, not waited for forever.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"member_id\":")
        .await
        .unwrap();
    read_response(&mut s).await.assert_problem(408);

    // A head that never finishes: the connection is closed rather than held.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET /v1/plans?country=US HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the server closes a connection whose head stalls");
    assert!(n.is_ok());

    // A keep-alive connection left idle is closed after the idle timeout; one in use is not.
    let mut idle = tokio::net::TcpStream::connect(a).await.unwrap();
    let mut busy = tokio::net::TcpStream::connect(a).await.unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        busy.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut busy, &mut buf)
            .await
            .unwrap();
        assert!(
            n > 0 && buf.starts_with(b"HTTP/1.1 200"),
            "a busy connection stays open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut buf),
    )
    .await;
    assert!(
        closed.is_ok() && buf.is_empty(),
        "the idle connection was closed without an answer"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_writes_show_up_in_answers() {
    // A negative TTL far longer than the test: only the insert's change event can
    // make the cached 404 go.
    let node = TestNode::start(&[("READTIER_L1_NEGATIVE_TTL", "10m")]).await;
    let db = node.db();
    sql(&db, "UPDATE memberships SET status='active', plan_id='standard', country='US' WHERE member_id=42");
    node.caught_up().await;
    let before = node.get("/v1/members/42/entitlement").await.json();
    assert_eq!(
        node.get("/v1/members/42/entitlement")
            .await
            .header("x-served-from"),
        Some("l1")
    );
    assert_eq!(before["can_stream"], true);
    let version_before = node
        .get("/v1/plans?country=US")
        .await
        .header("x-catalog-version")
        .unwrap()
        .parse::<u64>()
        .unwrap();

    sql(
        &db,
        "UPDATE memberships SET status='on_hold' WHERE member_id=42",
    );
    sql(
        &db,
        "UPDATE plan_prices SET amount='9.49' WHERE country='US' AND plan_id='standard-with-ads'",
    );

    let after = eventually(LIMIT, "member 42 on hold", || async {
        let v = node.get("/v1/members/42/entitlement").await.json();
        (v["status"] == "on_hold").then_some(v)
    })
    .await;
    assert_eq!(after["can_stream"], false);
    assert!(after["version"].as_i64() > before["version"].as_i64());
    let plans = eventually(LIMIT, "US standard-with-ads at 9.49", || async {
        let r = node.get("/v1/plans?country=US").await;
        (r.json()["plans"][0]["price"]["amount"] == "9.49").then_some(r)
    })
    .await;
    let version_after: u64 = plans.header("x-catalog-version").unwrap().parse().unwrap();
    assert!(version_after > version_before);
    assert_eq!(plans.json()["catalog_version"], version_after);

    // A member negatively cached, then inserted, becomes known; a deleted one unknown.
    node.get("/v1/members/5000000/entitlement")
        .await
        .assert_problem(404);
    let cached = node.get("/v1/members/5000000/entitlement").await;
    cached.assert_problem(404);
    assert_eq!(
        cached.header("x-served-from"),
        Some("l1"),
        "the 404 is held in L1"
    );
    sql(&db, "INSERT INTO memberships (member_id, status, plan_id, country) VALUES (5000000, 'active', 'basic', 'FR')");
    eventually(LIMIT, "new member 5000000", || async {
        (node.get("/v1/members/5000000/entitlement").await.status == 200).then_some(())
    })
    .await;
    sql(&db, "DELETE FROM memberships WHERE member_id = 5000000");
    eventually(LIMIT, "deleted member 5000000", || async {
        (node.get("/v1/members/5000000/entitlement").await.status == 404).then_some(())
    })
    .await;

    // A price removed and a country added.
    sql(
        &db,
        "DELETE FROM plan_prices WHERE country='US' AND plan_id='standard'",
    );
    sql(&db, "INSERT INTO plan_prices (country, plan_id, currency, amount) VALUES ('XK', 'basic', 'EUR', 7.99)");
    eventually(LIMIT, "US without standard, XK with basic", || async {
        let us = node.get("/v1/plans?country=US").await.json();
        let xk = node.get("/v1/plans?country=XK").await;
        (us["plans"].as_array().unwrap().len() == 2 && xk.status == 200).then_some(())
    })
    .await;
    assert_eq!(
        node.get("/v1/plans?country=XK").await.json()["plans"][0]["price"]["amount"],
        "7.99"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let node = TestNode::start(&[]).await;
    assert_eq!(node.get("/healthz").await.status, 200);
    let ready = node.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    node.get("/metrics").await.assert_problem(404);

    assert_eq!(
        get(node.running.admin_addr, "/readyz", &[]).await.status,
        200
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_node_turns_unready_and_finishes_in_flight_requests() {
    let node = TestNode::start(&[("READTIER_HTTP_DRAIN_DELAY", "300ms")]).await;
    let a = node.addr();
    // A request in flight: head sent, body not yet.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    get(a, "/readyz", &[]).await.assert_problem(503);
    assert_eq!(
        get(a, "/healthz", &[]).await.status,
        200,
        "still live while draining"
    );
    // Past the drain delay the listener closes; the open connection must live on.
    eventually(Duration::from_secs(5), "the listener to close", || async {
        tokio::net::TcpStream::connect(a)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    s.write_all(br#"{"member_id":1,"device_class":"tv","active_streams":0}"#)
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(
        r.status,
        200,
        "the in-flight request finished after the listener closed: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("connection"), Some("close"));
    tokio::time::timeout(Duration::from_secs(10), node.running.wait())
        .await
        .expect("node stops after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_in_flight_requests_at_most_the_shutdown_timeout() {
    let node = TestNode::start(&[
        ("READTIER_HTTP_SHUTDOWN_TIMEOUT", "700ms"),
        // Longer than the test, so only the shutdown timeout can end the request.
        ("READTIER_HTTP_REQUEST_TIMEOUT", "30s"),
    ])
    .await;
    let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    node.shutdown.cancel();
    let TestNode {
        running, dir: _dir, ..
    } = node;
    let mut wait = Box::pin(running.wait());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut wait)
            .await
            .is_err(),
        "the node waits for the request in flight"
    );
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the shutdown timeout ends the wait");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(650),
        "stopped after {took:?}, before the shutdown timeout"
    );
    // The body never came: the connection was cut (closed, no answer), at once.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest))
        .await
        .expect("the connection is closed by the shutdown timeout");
    assert!(
        read.is_ok() && rest.is_empty(),
        "cut, not answered: {read:?} {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_its_disk_snapshot_when_the_store_is_down() {
    let node = TestNode::start_store_down(77).await;
    let us = node.get("/v1/plans?country=US").await;
    assert_eq!(us.status, 200);
    assert_eq!(us.header("x-catalog-version"), Some("77"));
    assert_eq!(us.json()["plans"][0]["price"]["amount"], "8.99");
    node.get("/v1/members/42/entitlement")
        .await
        .assert_problem(503);
    assert_eq!(node.get("/readyz").await.status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_reaches_members_held_in_l1_without_dropping_them() {
    let node = TestNode::start(&[]).await;
    sql(&node.db(), "UPDATE memberships SET status='active', plan_id='premium', country='US' WHERE member_id=42");
    node.caught_up().await;
    node.get("/v1/members/42/entitlement").await;
    let held = node.get("/v1/members/42/entitlement").await;
    assert_eq!(held.header("x-served-from"), Some("l1"));
    assert_eq!(held.json()["max_streams"], 4);
    sql(
        &node.db(),
        "UPDATE plans SET max_streams = 5 WHERE plan_id = 'premium'",
    );
    let after = eventually(LIMIT, "premium allows 5 streams", || async {
        let r = node.get("/v1/members/42/entitlement").await;
        (r.json()["max_streams"] == 5).then_some(r)
    })
    .await;
    assert_eq!(
        after.header("x-served-from"),
        Some("l1"),
        "the member entry was kept"
    );
    // The new answer is the one served from then on, not the one rendered first.
    assert_eq!(
        node.get("/v1/members/42/entitlement").await.json()["max_streams"],
        5
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_this_nodes_work_exactly() {
    // A process of its own, so every counter is this node's alone.
    let dir = tempfile::tempdir().unwrap();
    let node = common::infra::NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "1000".into()),
    ]);
    get(node.addr, "/v1/plans?country=US", &[]).await;
    get(node.addr, "/v1/plans?country=usa", &[]).await;
    get(node.addr, "/v1/members/7/entitlement", &[]).await;
    get(node.addr, "/v1/members/7/entitlement", &[]).await;
    get(node.addr, "/v1/members/9999999/entitlement", &[]).await;
    get(node.addr, "/metrics", &[]).await.assert_problem(404);
    let m = get(node.admin, "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    // Every metric explains itself: a `# HELP` beside each `# TYPE`.
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert!(typed.len() >= 10, "{text}");
    for name in &typed {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no # HELP for {name}"
        );
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let req = |route: &str, status: &str| {
        value(&format!(
            "readtier_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(req("plans", "200"), 1.0);
    assert_eq!(req("plans", "400"), 1.0);
    assert_eq!(req("entitlement", "200"), 2.0);
    assert_eq!(req("entitlement", "404"), 1.0);
    assert_eq!(req("other", "404"), 1.0);
    assert_eq!(value("readtier_l1_hits_total"), 1.0, "the second read of 7");
    assert_eq!(value("readtier_l1_misses_total"), 2.0, "7 and 9999999");
    assert_eq!(value("readtier_store_reads_total"), 2.0);
    assert_eq!(value("readtier_l1_entries"), 1.0, "member 7");
    assert_eq!(
        value("readtier_l1_negative_entries"),
        1.0,
        "the unknown id, held apart"
    );
    assert!(value("readtier_catalog_version") >= 1.0);
    let bucket = "readtier_http_request_duration_seconds_bucket{route=\"entitlement\",le=\"+Inf\"}";
    assert_eq!(value(bucket), 3.0, "cumulative buckets end at the count");
    assert_eq!(
        value("readtier_http_request_duration_seconds_count{route=\"entitlement\"}"),
        3.0
    );
}

/// JSON Schema, and so the OpenAPI document, counts `42.0` as an integer; Schemathesis
/// sent `"active_streams": 2185.0` and got a 400. Whole floats are taken now, fractions
/// and floats too large to name one integer still are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_takes_whole_numbers_written_as_floats() {
    let node = TestNode::start(&[]).await;
    let plain = node
        .authorize(r#"{"member_id":42,"device_class":"tv","active_streams":1}"#)
        .await;
    assert_eq!(plain.status, 200);
    let floats = node
        .authorize(r#"{"member_id":42.0,"device_class":"tv","active_streams":1e0}"#)
        .await;
    assert_eq!(
        floats.status,
        200,
        "{}",
        String::from_utf8_lossy(&floats.body)
    );
    assert_eq!(floats.json(), plain.json());
    for bad in [
        r#"{"member_id":42.5,"device_class":"tv","active_streams":1}"#,
        r#"{"member_id":42,"device_class":"tv","active_streams":0.5}"#,
        r#"{"member_id":9007199254740993.0,"device_class":"tv","active_streams":1}"#,
        r#"{"member_id":-42.0,"device_class":"tv","active_streams":1}"#,
    ] {
        node.authorize(bad).await.assert_problem(400);
    }
    node.stop().await;
}
