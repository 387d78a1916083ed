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
