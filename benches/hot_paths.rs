//! Micro-benchmarks of the request hot paths, below HTTP: what one request costs in
//! the lookup, decision and rendering, without sockets. `loadtest/` measures the whole.
//!
//! Run: `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use readtier::catalog::{CatalogData, CatalogHandle, Snapshot};
use readtier::config::Config;
use readtier::http::{country_param, render_entitlement, AuthorizeRequest};
use readtier::lookup::{FillLimits, Members};
use readtier::member::{authorize, Member, Status};
use readtier::node::prepare_store;
use readtier::store::Store;

fn catalog(c: &mut Criterion) {
    let data = CatalogData::reference().unwrap();
    let handle = CatalogHandle::new(Snapshot::build(&data));
    c.bench_function("plans: parse country + snapshot lookup", |b| {
        b.iter(|| {
            let cc = country_param(black_box(Some("country=US"))).unwrap();
            let snap = handle.load();
            black_box(snap.country(cc).unwrap().body.clone())
        })
    });
    c.bench_function("catalog: build snapshot of 245 countries", |b| {
        b.iter(|| black_box(Snapshot::build(black_box(&data))))
    });
    // Issue 12: the bundled examples put a US visitor in two running experiments.
    let examples = CatalogData::reference_with_examples().unwrap();
    let handle = CatalogHandle::new(Snapshot::build(&examples));
    c.bench_function("plans: plain answer, US with experiments scheduled", |b| {
        b.iter(|| {
            let snap = handle.load();
            black_box(snap.country(black_box(*b"US")).unwrap().body.clone())
        })
    });
    c.bench_function("plans: visitor in two experiments (hash + variant)", |b| {
        let mut i = 0u32;
        let visitors: Vec<String> = (0..1024).map(|n| format!("visitor-{n}")).collect();
        b.iter(|| {
            i = i.wrapping_add(1);
            let snap = handle.load();
            let v = &visitors[(i & 1023) as usize];
            let a = snap
                .plans(*b"US", Some(v), None, readtier::catalog::clock_ms)
                .unwrap();
            black_box(a.body.clone())
        })
    });
    let mut heavy = CatalogData::reference().unwrap();
    readtier::plan::examples::add_synthetic_rules(
        &mut heavy,
        200,
        1000,
        readtier::catalog::clock_ms(),
    );
    c.bench_function(
        "catalog: build snapshot with 200 experiments and 1,000 scheduled prices",
        |b| b.iter(|| black_box(Snapshot::build(black_box(&heavy)))),
    );
}

fn entitlement(c: &mut Criterion) {
    let snap = Snapshot::build(&CatalogData::reference().unwrap());
    let m = Member {
        id: 42,
        status: Status::Active,
        plan_id: "premium".into(),
        country: "US".into(),
        version: 3,
        price_lock: None,
    };
    c.bench_function("entitlement: decision (plan lookup included)", |b| {
        b.iter(|| {
            let m = black_box(&m);
            let plan = snap.plan(&m.plan_id).map(|e| &e.plan);
            black_box(authorize(Some(m), plan, black_box("tv"), black_box(1)))
        })
    });
    c.bench_function("entitlement: render body", |b| {
        b.iter(|| black_box(render_entitlement(black_box(&m), &snap)))
    });
    let body = br#"{"member_id":42,"device_class":"tv","active_streams":1}"#;
    c.bench_function("authorize: parse body", |b| {
        b.iter(|| black_box(serde_json::from_slice::<AuthorizeRequest>(black_box(body)).unwrap()))
    });
}

/// Members over an embedded store of `seeded` members in a temporary directory, and a
/// current-thread runtime to drive them.
fn members_over_temp_store(seeded: u64) -> (tempfile::TempDir, tokio::runtime::Runtime, Members) {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![(
        "READTIER_DATA_DIR".to_string(),
        dir.path().display().to_string(),
    )];
    let cfg = Config::from_layers(None, &env).unwrap();
    let store = Store::open(&cfg.store).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(prepare_store(&store, seeded)).unwrap();
    let members = Members::new(store, None, &cfg.l1, FillLimits::of(&cfg));
    (dir, rt, members)
}

fn l1(c: &mut Criterion) {
    let (_dir, rt, members) = members_over_temp_store(1000);
    let members = Arc::new(members);
    rt.block_on(async {
        for id in 1..=1000 {
            members.get(id).await.unwrap();
        }
    });
    let mut id = 0u64;
    c.bench_function("members: L1 hit (Members::get_l1, the request path)", |b| {
        b.iter(|| {
            id = id % 1000 + 1;
            black_box(members.get_l1(id).unwrap())
        })
    });
    c.bench_function("members: L1 hit (Members::get, block_on)", |b| {
        b.iter(|| {
            id = id % 1000 + 1;
            rt.block_on(async { black_box(members.get(id).await.unwrap()) })
        })
    });
}

/// The L1 candidates on the hit path, same keys, values and capacity: moka's async
/// cache, moka's sync cache, and quick_cache's sync cache (what `Members` uses).
fn cache_candidates(c: &mut Criterion) {
    let value = Arc::new(Member {
        id: 1,
        status: Status::Active,
        plan_id: "premium".into(),
        country: "US".into(),
        version: 1,
        price_lock: None,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let future: moka::future::Cache<u64, Arc<Member>> = moka::future::Cache::builder()
        .max_capacity(1_000_000)
        .time_to_live(std::time::Duration::from_secs(60))
        .build();
    let sync: moka::sync::Cache<u64, Arc<Member>> = moka::sync::Cache::builder()
        .max_capacity(1_000_000)
        .time_to_live(std::time::Duration::from_secs(60))
        .build();
    let quick: quick_cache::sync::Cache<u64, Arc<Member>> =
        quick_cache::sync::Cache::new(1_000_000);
    rt.block_on(async {
        for id in 1..=1000u64 {
            future.insert(id, value.clone()).await;
        }
    });
    for id in 1..=1000u64 {
        sync.insert(id, value.clone());
        quick.insert(id, value.clone());
    }
    let mut id = 0u64;
    c.bench_function("l1 candidates: moka::future get", |b| {
        b.iter(|| {
            id = id % 1000 + 1;
            rt.block_on(async { black_box(future.get(&id).await) })
        })
    });
    c.bench_function("l1 candidates: moka::sync get", |b| {
        b.iter(|| {
            id = id % 1000 + 1;
            black_box(sync.get(&id))
        })
    });
    c.bench_function("l1 candidates: quick_cache::sync get", |b| {
        b.iter(|| {
            id = id % 1000 + 1;
            black_box(quick.get(&id))
        })
    });
    c.bench_function(
        "l1 candidates: block_on of a ready future (overhead)",
        |b| b.iter(|| rt.block_on(async { black_box(id) })),
    );
}

/// Picking the node of a member's bucket in a zone of 8 nodes.
fn ring(c: &mut Criterion) {
    let names: Vec<String> = (0..8).map(|i| format!("redis://10.0.0.{i}:6379")).collect();
    let ring = readtier::tier::ring::Ring::new(&names);
    let mut id = 0u64;
    c.bench_function("tier: consistent-hash node pick (8 nodes)", |b| {
        b.iter(|| {
            id += 1;
            let (key, _) = readtier::tier::encoding::locate("readtier:", 100, id);
            black_box(ring.node_for(key.as_bytes()))
        })
    });
}

/// Applying one member change event on a node: dropping its L1 entry (held, with a
/// newer version each time) and raising its floor.
fn change_apply(c: &mut Criterion) {
    let (_dir, _rt, members) = members_over_temp_store(0);
    for id in 1..=1000 {
        members.preload(Member {
            id,
            status: Status::Active,
            plan_id: "premium".into(),
            country: "US".into(),
            version: 1,
            price_lock: None,
        });
    }
    let mut n = 0u64;
    c.bench_function("changes: apply a member event (L1 invalidate)", |b| {
        b.iter(|| {
            n += 1;
            members.invalidate(black_box(n % 1000 + 1), black_box(n as i64 + 1))
        })
    });
}

criterion_group!(
    benches,
    catalog,
    entitlement,
    l1,
    cache_candidates,
    ring,
    change_apply
);
criterion_main!(benches);
