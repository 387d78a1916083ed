//! The caching client in use: watch a node's catalog, answer plans from memory, and
//! time those answers.
//!
//! ```sh
//! cargo run --release -p readtier-client --example plans -- http://127.0.0.1:50051 US
//! ```
//!
//! Prints the country's plans, the cache's staleness, and the time per
//! `CatalogCache::plans` call over a few million calls; then, until interrupted, a
//! line for every new catalog version that arrives.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let country = args.next().unwrap_or_else(|| "US".into());
    let follow = !args.any(|a| a == "--once");

    let cache = readtier_client::CatalogCache::start(&endpoint, &[])?;
    tokio::time::timeout(Duration::from_secs(10), cache.ready())
        .await
        .map_err(|_| format!("no catalog from {endpoint} within 10 s"))?;
    match cache.plans(&country) {
        Some(p) => {
            println!(
                "{} ({}) at catalog version {}:",
                p.country,
                p.currency,
                cache.version()
            );
            for plan in &p.plans {
                let price = plan.price.clone().unwrap_or_default();
                println!("  {:<20} {:>10} {}", plan.id, price.amount, price.currency);
            }
        }
        None => println!("no plans are offered in {country}"),
    }
    println!("{:?}", cache.staleness());

    // A timed loop, not a test assertion: the figure goes to docs/PERFORMANCE.md.
    let countries = ["US", "JP", "DE", "BR", "IN", "FR", "GB", "MX"];
    let n = 8_000_000u64;
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..n {
        let cc = countries[(i % countries.len() as u64) as usize];
        found += std::hint::black_box(cache.plans(std::hint::black_box(cc))).is_some() as u64;
    }
    let took = started.elapsed();
    println!(
        "plans(): {:.1} ns per call over {n} calls ({found} found)",
        took.as_nanos() as f64 / n as f64
    );

    if follow {
        let mut versions = cache.subscribe();
        while versions.changed().await.is_ok() {
            println!(
                "catalog version {} {:?}",
                *versions.borrow(),
                cache.staleness()
            );
        }
    }
    Ok(())
}
