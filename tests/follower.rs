//! The L1 and the change follower at library level, against a real SQLite store file.

mod common;

use std::sync::Arc;

use readtier::catalog::{CatalogHandle, Snapshot};
use readtier::follower::{Follower, Source};
use readtier::lookup::{FillLimits, Members, ServedFrom};
use readtier::member::Status;
use readtier::node::prepare_store;
use readtier::store::{now_ms, Position, SqlitePosition, Store};

async fn store_in(dir: &std::path::Path, members: u64) -> Store {
    let cfg = common::test_config(dir, &[]);
    let store = Store::open(&cfg.store).unwrap();
    prepare_store(&store, members).await.unwrap();
    store
}

/// A reader of the whole retained log, from its first row.
fn from_start(store: &Store) -> readtier::store::ChangeReader {
    store.change_reader(Some(Position::Sqlite(SqlitePosition { seq: 0 })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_member_make_one_store_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), 100).await;
    let cfg = common::test_config(dir.path(), &[]);
    let members = Arc::new(Members::new(store, None, &cfg.l1, FillLimits::of(&cfg)));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let m = members.clone();
        tasks.push(tokio::spawn(async move { m.get(7).await.unwrap() }));
    }
    let mut from_store = 0;
    for t in tasks {
        let (entry, from) = t.await.unwrap();
        assert_eq!(entry.member.as_ref().unwrap().id, 7);
        from_store += (from == ServedFrom::Store) as u32;
    }
    assert_eq!(
        members.store_reads(),
        1,
        "64 concurrent misses coalesced into one read"
    );
    assert!(from_store >= 1);
    let (_, from) = members.get(7).await.unwrap();
    assert_eq!(from, ServedFrom::L1);
    // Unknown ids are remembered too.
    assert!(members.get(1_000_000).await.unwrap().0.member.is_none());
    assert!(members.get(1_000_000).await.unwrap().0.member.is_none());
    assert_eq!(members.store_reads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_gap_drops_the_whole_l1() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), 100).await;
    let cfg = common::test_config(dir.path(), &[]);
    let members = Arc::new(Members::new(
        store.clone(),
        None,
        &cfg.l1,
        FillLimits::of(&cfg),
    ));
    let catalog = Arc::new(CatalogHandle::new(Snapshot::build(
        &store.load_catalog().await.unwrap(),
    )));
    let source = Source::Log(store.change_reader_at_head().await.unwrap());
    let mut follower = Follower::new(
        source,
        store.clone(),
        members.clone(),
        catalog,
        dir.path().join("snap.json"),
        &cfg.changes,
    );
    common::sql(
        &dir.path().join("readtier.db"),
        "UPDATE memberships SET status='active' WHERE member_id=9",
    );
    follower.poll_once().await.unwrap();
    let (m, _) = members.get(9).await.unwrap();
    assert_eq!(m.member.as_ref().unwrap().status, Status::Active);
    assert_eq!(members.get(9).await.unwrap().1, ServedFrom::L1);

    // The change is committed, but the log is trimmed before this node reads it.
    common::sql(
        &dir.path().join("readtier.db"),
        "UPDATE memberships SET status='paused' WHERE member_id=9",
    );
    let trimmed = store.trim_changes(now_ms() + 60_000, None).await.unwrap();
    assert!(trimmed >= 1);
    follower.poll_once().await.unwrap();
    let (m, from) = members.get(9).await.unwrap();
    assert_eq!(from, ServedFrom::Store, "L1 was dropped");
    assert_eq!(m.member.as_ref().unwrap().status, Status::Paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_replayed_events_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path(), 100).await;
    let cfg = common::test_config(dir.path(), &[]);
    let members = Arc::new(Members::new(
        store.clone(),
        None,
        &cfg.l1,
        FillLimits::of(&cfg),
    ));
    let catalog = Arc::new(CatalogHandle::new(Snapshot::build(
        &store.load_catalog().await.unwrap(),
    )));
    let db = dir.path().join("readtier.db");
    common::sql(
        &db,
        "UPDATE plan_prices SET amount='30' WHERE country='US' AND plan_id='premium'",
    );
    common::sql(
        &db,
        "UPDATE memberships SET status='cancelled' WHERE member_id=3",
    );
    // Replay the whole log from the start twice: the node ends in the same state.
    for _ in 0..2 {
        let mut f = Follower::new(
            Source::Log(from_start(&store)),
            store.clone(),
            members.clone(),
            catalog.clone(),
            dir.path().join("s.json"),
            &cfg.changes,
        );
        while f.poll_once().await.unwrap() {}
    }
    let snap = catalog.load();
    let us =
        serde_json::from_slice::<serde_json::Value>(&snap.country(*b"US").unwrap().body).unwrap();
    assert_eq!(us["plans"][2]["price"]["amount"], "30");
    assert_eq!(
        members
            .get(3)
            .await
            .unwrap()
            .0
            .member
            .as_ref()
            .unwrap()
            .status,
        Status::Cancelled
    );
    let version = snap.version();
    drop(snap);
    let mut f = Follower::new(
        Source::Log(from_start(&store)),
        store.clone(),
        members.clone(),
        catalog.clone(),
        dir.path().join("s.json"),
        &cfg.changes,
    );
    f.poll_once().await.unwrap();
    assert_eq!(
        catalog.load().version(),
        version,
        "a replay never moves the catalog back"
    );
}
