//! Warm restarts: a node that stops keeps the ids of the members its L1 held, and
//! loads those members back (from the store, anew) when it starts again, before anyone
//! asks for them; what changed while it was down comes back changed.

mod common;

use std::time::Duration;

use common::infra::NodeProcess;
use common::*;

fn start(dir: &std::path::Path) -> NodeProcess {
    NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.display().to_string()),
        ("READTIER_SEED_MEMBERS", "2000".into()),
    ])
}

/// A metric's value on `/metrics` (the series without labels).
async fn metric(node: &NodeProcess, name: &str) -> f64 {
    let m = get(node.admin, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_loads_its_members_back_as_the_store_has_them_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    for id in 1..=300u64 {
        let r = get(node.addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
        assert_eq!(r.status, 200);
    }
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    assert!(
        dir.path().join("l1-members.bin").exists(),
        "the ids written at shutdown"
    );
    // While it is down, another service changes a member it held.
    sql(
        &dir.path().join("readtier.db"),
        "UPDATE memberships SET status = 'on_hold' WHERE member_id = 7",
    );

    let node = start(dir.path());
    // Loaded back before anyone asked, and counted as no lookup.
    eventually(
        Duration::from_secs(20),
        "the 300 members loaded back",
        || async { (metric(&node, "readtier_l1_entries").await >= 300.0).then_some(()) },
    )
    .await;
    assert_eq!(metric(&node, "readtier_l1_hits_total").await, 0.0);
    assert_eq!(metric(&node, "readtier_l1_misses_total").await, 0.0);
    let changed = get(node.addr, "/v1/members/7/entitlement", &[]).await;
    assert_eq!(changed.header("x-served-from"), Some("l1"));
    assert_eq!(
        changed.json()["status"],
        "on_hold",
        "read anew, not the value held before the restart"
    );
    for id in [1u64, 150, 300] {
        let r = get(node.addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
        assert_eq!(r.header("x-served-from"), Some("l1"), "member {id}");
    }
    let never = get(node.addr, "/v1/members/301/entitlement", &[]).await;
    assert_eq!(
        never.header("x-served-from"),
        Some("store"),
        "a member the last run never held is not loaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_warm_start_off_a_restart_is_cold() {
    let dir = tempfile::tempdir().unwrap();
    let off = |dir: &std::path::Path| {
        NodeProcess::start(&[
            ("READTIER_DATA_DIR", dir.display().to_string()),
            ("READTIER_SEED_MEMBERS", "2000".into()),
            ("READTIER_L1_WARM_START", "false".into()),
        ])
    };
    let mut node = off(dir.path());
    for id in 1..=50u64 {
        get(node.addr, &format!("/v1/members/{id}/entitlement"), &[]).await;
    }
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    assert!(!dir.path().join("l1-members.bin").exists());
    let node = off(dir.path());
    let r = get(node.addr, "/v1/members/1/entitlement", &[]).await;
    assert_eq!(r.header("x-served-from"), Some("store"));
}
