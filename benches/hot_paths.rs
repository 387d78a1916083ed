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
use readtier::members::{authorize, Member, Members, Status};
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
}

fn entitlement(c: &mut Criterion) {
    let snap = Snapshot::build(&CatalogData::reference().unwrap());
    let m = Member {
        id: 42,
        status: Status::Active,
        plan_id: "premium".into(),
        country: "US".into(),
        version: 3,
    };
    c.bench_function("entitlement: decision", |b| {
        b.iter(|| {
            black_box(authorize(
                Some(black_box(&m)),
                &snap,
                black_box("tv"),
                black_box(1),
            ))
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

fn l1(c: &mut Criterion) {
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
    rt.block_on(prepare_store(&store, 1000)).unwrap();
    let members = Arc::new(Members::new(store, &cfg.l1));
    rt.block_on(async {
        for id in 1..=1000 {
            members.get(id).await.unwrap();
        }
    });
    let mut id = 0u64;
    c.bench_function("members: L1 hit (moka future)", |b| {
        b.iter(|| {
            id = id % 1000 + 1;
            rt.block_on(async { black_box(members.get(id).await.unwrap()) })
        })
    });
}

criterion_group!(benches, catalog, entitlement, l1);
criterion_main!(benches);
