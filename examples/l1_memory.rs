//! Measures L1 memory per cached member and the cost of an L1 hit as the number of
//! members held grows (1M, then 10M), with a counting allocator; then the memory of
//! the same entries once each has been served (its entitlement answer rendered and
//! kept with it, as `http::handlers` does on the first hit), and once each has also
//! been answered in a gRPC batch (its encoded `Entitlement` kept too, as
//! `grpc::batch` does).
//!
//! `cargo run --release --example l1_memory [members…]` (default: 1000000 10000000)

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use readtier::catalog::Snapshot;
use readtier::config::Config;
use readtier::grpc::BatchAnswer;
use readtier::http::render_entitlement;
use readtier::lookup::{FillLimits, Members, ServedFrom};
use readtier::member::Member;
use readtier::plan::CatalogData;
use readtier::store::seed::MemberGenerator;
use readtier::store::Store;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let dir = std::env::temp_dir().join(format!("readtier-l1mem-{}", std::process::id()));
    let env = vec![
        ("READTIER_DATA_DIR".to_string(), dir.display().to_string()),
        ("READTIER_L1_CAPACITY".to_string(), "20000000".to_string()),
    ];
    let cfg = Config::from_layers(None, &env).unwrap();
    let store = Store::open(&cfg.store).unwrap();
    let gen = MemberGenerator::new(&CatalogData::reference().unwrap()).unwrap();
    let snapshot = Snapshot::build(&CatalogData::reference().unwrap());
    let snapshot = std::sync::Arc::new(snapshot);
    let sizes: Vec<u64> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(v) if !Vec::is_empty(&v) => v,
        _ => vec![1_000_000, 10_000_000],
    };
    println!(
        "{:>12} {:>16} {:>22} {:>22} {:>18} {:>18}",
        "members",
        "L1 bytes/member",
        "hit ns (1,000 hot)",
        "hit ns (uniform)",
        "served bytes/member",
        "+gRPC bytes/member"
    );
    for n in sizes {
        let members = Members::new(store.clone(), None, &cfg.l1, FillLimits::of(&cfg));
        let before = LIVE.load(Ordering::Relaxed);
        for id in 1..=n {
            let (id, status, plan_id, country) = gen.member(id);
            members.preload(Member {
                id,
                status,
                plan_id,
                country,
                version: 1,
                price_lock: None,
            });
        }
        let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        let rounds = 5_000_000u64;
        let started = Instant::now();
        for i in 0..rounds {
            black_box(members.get_l1(i % 1000 + 1));
        }
        let hot = started.elapsed().as_nanos() as f64 / rounds as f64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let started = Instant::now();
        for _ in 0..rounds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            black_box(members.get_l1(x % n + 1));
        }
        let uniform = started.elapsed().as_nanos() as f64 / rounds as f64;
        // Serve every entry once: the rendered answer is kept with it.
        for id in 1..=n {
            let entry = members.get_l1(id).expect("preloaded");
            let member = entry.member.as_ref().expect("a record");
            let body = render_entitlement(member, &snapshot);
            entry.rendered.store(Some(std::sync::Arc::new((
                snapshot.version(),
                i64::MAX,
                body,
            ))));
        }
        let served = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        // Answer every entry once in gRPC batches of 1,000: each keeps its encoding.
        let mut ids = Vec::with_capacity(1000);
        for start in (1..=n).step_by(1000) {
            ids.clear();
            ids.extend(start..(start + 1000).min(n + 1));
            let found = ids
                .iter()
                .map(|id| (members.get_l1(*id).expect("preloaded"), ServedFrom::L1))
                .collect();
            black_box(BatchAnswer::new(&ids, found, snapshot.clone()));
        }
        let grpc = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        println!("{n:>12} {bytes:>16.1} {hot:>22.1} {uniform:>22.1} {served:>18.1} {grpc:>18.1}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
