//! Shed, don't queue: past its limits a node answers 503 with Retry-After at once,
//! and what it answers from memory keeps being answered.

mod common;

use std::time::{Duration, Instant};

use common::infra::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request on a connection left open (keep-alive); returns the answer's head.
async fn request_on(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_one_503_and_are_closed() {
    let node = TestNode::start(&[("READTIER_HTTP_MAX_CONNECTIONS", "4")]).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        let head = request_on(&mut s, "/v1/plans?country=US").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(s);
    }
    let started = Instant::now();
    let r = get(node.addr(), "/v1/plans?country=US", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["type"], "urn:readtier:problem:overloaded");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The open ones keep working.
    let head = request_on(&mut open[0], "/v1/members/1/entitlement").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // One closes: a new connection is served again.
    open.pop();
    eventually(Duration::from_secs(5), "a slot frees up", || async {
        (get(node.addr(), "/v1/plans?country=US", &[]).await.status == 200).then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_waiting_are_shed_at_once_while_memory_answers_go_on() {
    let (schema, _store) = seeded_pg(100).await;
    let node = TestNode::start(&[
        ("READTIER_STORE_URL", &schema.url()),
        ("READTIER_HTTP_MAX_WAITING", "2"),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "20s"),
    ])
    .await;
    assert_eq!(node.get("/v1/members/1/entitlement").await.status, 200);
    // The store stops answering member reads.
    let locker = schema.lock_members().await;
    let addr = node.addr();
    let misses: Vec<_> = (2..=11u64)
        .map(|id| {
            tokio::spawn(async move {
                let started = Instant::now();
                let r = get(addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
                (r, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Memory answers are not shed.
    let hit = node.get("/v1/members/1/entitlement").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-served-from"), Some("l1"));
    assert_eq!(node.get("/v1/plans?country=US").await.status, 200);
    locker.release().await;
    let mut shed = 0;
    let mut served = 0;
    for m in misses {
        let (r, took) = m.await.unwrap();
        match r.status {
            503 => {
                shed += 1;
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.json()["type"], "urn:readtier:problem:overloaded");
                assert!(took < Duration::from_millis(400), "shed at once: {took:?}");
            }
            200 => {
                served += 1;
                assert!(took >= Duration::from_millis(400), "waited for the store");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((served, shed), (2, 8));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_fills_past_their_limit_are_shed_not_queued() {
    let (schema, _store) = seeded_pg(100).await;
    let node = TestNode::start(&[
        ("READTIER_STORE_URL", &schema.url()),
        ("READTIER_L2_MAX_STORE_FILLS", "1"),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "20s"),
    ])
    .await;
    let locker = schema.lock_members().await;
    let addr = node.addr();
    let first = tokio::spawn(async move { get(addr, "/v1/members/2/entitlement", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let second = node.get("/v1/members/3/entitlement").await;
    let took = started.elapsed();
    assert_eq!(second.status, 503, "the one fill permit is taken");
    assert_eq!(second.header("retry-after"), Some("1"));
    assert!(took < Duration::from_millis(500), "not queued: {took:?}");
    locker.release().await;
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(node.get("/v1/members/3/entitlement").await.status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_statement_is_cancelled_by_the_statement_timeout() {
    let (schema, _store) = seeded_pg(100).await;
    let node = TestNode::start(&[
        ("READTIER_STORE_URL", &schema.url()),
        ("READTIER_STORE_STATEMENT_TIMEOUT", "300ms"),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "20s"),
    ])
    .await;
    let locker = schema.lock_members().await;
    let started = Instant::now();
    let r = node.get("/v1/members/5/entitlement").await;
    let took = started.elapsed();
    r.assert_problem(503);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "cancelled by the server after the statement timeout: {took:?}"
    );
    locker.release().await;
    assert_eq!(node.get("/v1/members/5/entitlement").await.status, 200);
    node.stop().await;
}

/// A gauge of this node's, from the admin listener's `/metrics`.
async fn gauge(admin: std::net::SocketAddr, name: &str) -> f64 {
    let m = get(admin, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `n` concurrent misses (members the store never had, so each is a store read),
/// each answered with its status and how long it took.
async fn concurrent_misses(
    addr: std::net::SocketAddr,
    next: &mut u64,
    n: u64,
) -> Vec<tokio::task::JoinHandle<(Resp, Duration)>> {
    let first = *next;
    *next += n;
    (first..first + n)
        .map(|id| {
            tokio::spawn(async move {
                let started = Instant::now();
                let r = get(addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
                (r, started.elapsed())
            })
        })
        .collect()
}

/// A node on a fresh schema with `permits` store fills at once and `extra` settings.
async fn node_on_pg(permits: &str, extra: &[(&str, &str)]) -> (PgSchema, TestNode) {
    let (schema, _store) = seeded_pg(10).await;
    let url = schema.url();
    let mut env = vec![
        ("READTIER_STORE_URL", url.as_str()),
        ("READTIER_L2_MAX_STORE_FILLS", permits),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "20s"),
    ];
    env.extend_from_slice(extra);
    let node = TestNode::start(&env).await;
    (schema, node)
}

/// What 16 clients, each sending misses of new members one after another for
/// `secs`, were answered: (404s, 503s answered within 20 ms of being asked, slower
/// 503s), and the highest shed level `/metrics` showed meanwhile.
async fn sixteen_clients(
    node: &TestNode,
    next: &mut u64,
    secs: f64,
) -> ((usize, usize, usize), f64) {
    let addr = node.addr();
    let clients: Vec<_> = (0..16u64)
        .map(|c| {
            let first = *next + c * 1_000_000;
            tokio::spawn(async move {
                let (mut found, mut fast, mut slow) = (0, 0, 0);
                let until = Instant::now() + Duration::from_secs_f64(secs);
                let mut id = first;
                while Instant::now() < until {
                    let started = Instant::now();
                    let r = get(addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
                    match r.status {
                        404 => found += 1,
                        503 if started.elapsed() < Duration::from_millis(20) => fast += 1,
                        503 => slow += 1,
                        other => panic!("unexpected {other}"),
                    }
                    id += 1;
                }
                (found, fast, slow)
            })
        })
        .collect();
    *next += 16 * 1_000_000;
    let mut level: f64 = 0.0;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        level = level.max(gauge(node.running.admin_addr, "readtier_shed_level").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut total = (0, 0, 0);
    for c in clients {
        let (f, a, b) = c.await.unwrap();
        total = (total.0 + f, total.1 + a, total.2 + b);
    }
    (total, level)
}

/// A table locked for 800 ms at a time, sixteen misses waiting on it at once with a
/// permit each: requests wait, but nothing queues in the node and its process is
/// idle, so nothing is shed (the fall-through answers them all once the lock goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dependency_with_an_idle_process_sheds_nothing() {
    let mut next = 2_000_000_000u64;
    let (schema, node) = node_on_pg("16", &[]).await;
    for _ in 0..4 {
        let locker = schema.lock_members().await;
        let round = concurrent_misses(node.addr(), &mut next, 16).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let level = gauge(node.running.admin_addr, "readtier_shed_level").await;
        assert_eq!(level, 0.0, "nothing queued in the node");
        locker.release().await;
        for m in round {
            let (r, took) = m.await.unwrap();
            assert_eq!(r.status, 404, "answered after the lock: {took:?}");
        }
    }
    node.stop().await;
}

/// Four permits and sixteen clients sending misses against a locked table: every read
/// past the first four queues for a permit, a queue in the node whatever its CPU, so
/// the shed level rises and misses are refused at once (503 in well under the 50 ms a
/// read may wait for a permit); with the adaptive part off, only that 50 ms bound
/// sheds. Once the table is free the level returns to 0 and every miss is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_queue_of_the_nodes_own_reads_is_shed_at_once_and_then_served() {
    let mut next = 3_000_000_000u64;
    for adaptive in ["true", "false"] {
        let (schema, node) = node_on_pg("4", &[("READTIER_HTTP_ADAPTIVE_WAITING", adaptive)]).await;
        let locker = schema.lock_members().await;
        let ((found, fast, slow), level) = sixteen_clients(&node, &mut next, 1.5).await;
        locker.release().await;
        assert_eq!(found, 0, "the table was locked");
        if adaptive == "true" {
            assert!(level > 0.0, "the store's queue raised the level");
            assert!(
                fast > slow,
                "most sheds at once, not after waiting for a permit: {fast} fast, {slow} slow"
            );
        } else {
            assert_eq!(level, 0.0, "no adaptive shedding when off");
            assert_eq!(fast, 0, "every shed waited for a permit first");
            assert!(slow > 16, "the 50 ms permit bound still sheds: {slow}");
        }
        // The queue is gone: the level falls back and every miss is answered.
        let admin = node.running.admin_addr;
        eventually(Duration::from_secs(10), "the level back to 0", || async {
            (gauge(admin, "readtier_shed_level").await == 0.0).then_some(())
        })
        .await;
        let ((found, fast, slow), _) = sixteen_clients(&node, &mut next, 0.5).await;
        assert!(found > 16, "served: {found}");
        assert_eq!((fast, slow), (0, 0), "nothing shed once the queue is gone");
        node.stop().await;
    }
}
