//! A caching readtier client: the plan catalog in the caller's own memory, fed by the
//! node's `WatchCatalog` stream, so plans are answered without a network call and
//! without polling.
//!
//! ```no_run
//! # async fn f() -> Result<(), readtier_client::Error> {
//! let cache = readtier_client::CatalogCache::start("http://127.0.0.1:50051", &[])?;
//! cache.ready().await; // the first catalog has arrived
//! if let Some(us) = cache.plans("US") {
//!     println!("{} plans in {} at catalog version {}", us.plans.len(), us.currency, cache.version());
//! }
//! println!("{:?}", cache.staleness());
//! # Ok(()) }
//! ```
//!
//! - [`CatalogCache::plans`] is an `ArcSwap` load and an index into a table of 676
//!   slots (two letters): well under a microsecond, no lock, no allocation.
//! - A background task keeps one `WatchCatalog` call open. When the connection or the
//!   stream fails it reconnects with jittered exponential backoff (100 ms to 5 s) and
//!   resumes from the last version it holds (`known_version`), so the node sends only
//!   what changed meanwhile. Until then the cache keeps answering from what it holds:
//!   [`CatalogCache::staleness`] says how old that may be.
//! - The node coalesces versions under bursts but the cache always ends at the node's
//!   newest catalog.
//! - The generated client for every method is in [`pb`] (`pb::read_tier_client`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Messages and the client of `readtier.v1.ReadTier`, generated from the proto.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("readtier.v1");
}

/// Why a cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("country codes are two letters; got {0:?}")]
    Country(String),
}

/// Backoff between reconnects: from the first to the most, doubling, jittered.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn index(cc: &[u8]) -> Option<usize> {
    match cc {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => Some(
            (a.to_ascii_uppercase() - b'A') as usize * 26
                + (b.to_ascii_uppercase() - b'A') as usize,
        ),
        _ => None,
    }
}

/// The catalog held at one version.
struct Catalog {
    version: u64,
    /// By country index (`index`): 26 × 26 slots.
    countries: Vec<Option<Arc<pb::CountryPlans>>>,
}

impl Catalog {
    fn empty() -> Catalog {
        Catalog {
            version: 0,
            countries: vec![None; 26 * 26],
        }
    }

    /// This catalog with an update applied.
    fn apply(&self, update: pb::CatalogUpdate) -> Catalog {
        let mut countries = if update.full {
            vec![None; 26 * 26]
        } else {
            self.countries.clone()
        };
        for c in update.countries {
            if let Some(i) = index(c.country.as_bytes()) {
                countries[i] = Some(Arc::new(c));
            }
        }
        for cc in update.removed {
            if let Some(i) = index(cc.as_bytes()) {
                countries[i] = None;
            }
        }
        Catalog {
            version: update.version,
            countries,
        }
    }
}

/// How fresh the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// The catalog version held (0: none yet).
    pub version: u64,
    /// Whether the watch stream is open now.
    pub connected: bool,
    /// Time since the last message from the node (updates and heartbeats, every few
    /// seconds while connected); `None` before the first.
    pub since_last_message: Option<Duration>,
}

struct Inner {
    catalog: ArcSwap<Catalog>,
    connected: AtomicBool,
    /// Nanoseconds after `epoch` of the last message; 0: none yet.
    last_message: AtomicU64,
    epoch: Instant,
    /// The version held, for [`CatalogCache::wait_for`].
    version: watch::Sender<u64>,
}

/// The catalog of one node (or a load balancer in front of several), kept in memory.
/// Cheap to clone; the watch stops when the last clone is dropped.
#[derive(Clone)]
pub struct CatalogCache {
    inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl CatalogCache {
    /// Starts watching `endpoint` (`http://host:port`) for `countries` (empty: all)
    /// on the current tokio runtime. Returns at once: [`CatalogCache::ready`] waits for
    /// the first catalog.
    pub fn start(endpoint: &str, countries: &[&str]) -> Result<CatalogCache, Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|source| Error::Endpoint {
                endpoint: endpoint.to_string(),
                source,
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let countries = countries
            .iter()
            .map(|c| match index(c.as_bytes()) {
                Some(_) => Ok(c.to_ascii_uppercase()),
                None => Err(Error::Country(c.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let inner = Arc::new(Inner {
            catalog: ArcSwap::from_pointee(Catalog::empty()),
            connected: AtomicBool::new(false),
            last_message: AtomicU64::new(0),
            epoch: Instant::now(),
            version: watch::Sender::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(run(inner.clone(), channel, countries, stop.clone()));
        Ok(CatalogCache {
            inner,
            _stop: Arc::new(StopOnDrop(stop)),
        })
    }

    /// A country's plans (two letters, either case) as of [`CatalogCache::version`];
    /// `None` if it offers none (or nothing has arrived yet). The message's own
    /// `catalog_version` is the version it was sent at, which may be older when
    /// the country has not changed since.
    #[inline]
    pub fn plans(&self, country: &str) -> Option<Arc<pb::CountryPlans>> {
        let i = index(country.as_bytes())?;
        self.inner.catalog.load().countries[i].clone()
    }

    /// The catalog version held (0: none yet).
    pub fn version(&self) -> u64 {
        self.inner.catalog.load().version
    }

    pub fn staleness(&self) -> Staleness {
        let last = self.inner.last_message.load(Ordering::Acquire);
        Staleness {
            version: self.version(),
            connected: self.inner.connected.load(Ordering::Acquire),
            since_last_message: (last != 0).then(|| {
                self.inner
                    .epoch
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(last))
            }),
        }
    }

    /// Waits until a catalog has arrived.
    pub async fn ready(&self) {
        self.wait_for(1).await;
    }

    /// Waits until the cache holds version `v` or newer.
    pub async fn wait_for(&self, v: u64) {
        let mut rx = self.inner.version.subscribe();
        let _ = rx.wait_for(|held| *held >= v).await;
    }

    /// A receiver that changes whenever a new version is applied (its value).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }
}

/// Cheap jitter (no RNG dependency): the low bits of the clock, 0.5–1.5 × `d`.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

/// Keeps a watch open until `stop`, reconnecting with backoff and resuming from the
/// version held.
async fn run(
    inner: Arc<Inner>,
    endpoint: tonic::transport::Endpoint,
    countries: Vec<String>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let session = watch_once(&inner, &endpoint, &countries, &mut backoff);
        let outcome = tokio::select! {
            r = session => r,
            _ = stop.cancelled() => return,
        };
        inner.connected.store(false, Ordering::Release);
        tracing::debug!(error = %outcome, ?backoff, "catalog watch ended; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's watch, until it fails; resets `backoff` once a message arrives.
async fn watch_once(
    inner: &Inner,
    endpoint: &tonic::transport::Endpoint,
    countries: &[String],
    backoff: &mut Duration,
) -> tonic::Status {
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return tonic::Status::unavailable(e.to_string()),
    };
    let mut client = pb::read_tier_client::ReadTierClient::new(channel);
    let known_version = inner.catalog.load().version;
    let request = pb::WatchCatalogRequest {
        countries: countries.to_vec(),
        known_version,
    };
    let mut stream = match client.watch_catalog(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status,
    };
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                let now = inner.epoch.elapsed().as_nanos().max(1) as u64;
                inner.last_message.store(now, Ordering::Release);
                inner.connected.store(true, Ordering::Release);
                *backoff = BACKOFF_FIRST;
                let current = inner.catalog.load();
                let changes =
                    update.full || !update.countries.is_empty() || !update.removed.is_empty();
                if changes || update.version > current.version {
                    let version = update.version;
                    inner.catalog.store(Arc::new(current.apply(update)));
                    inner.version.send_replace(version);
                }
            }
            Ok(None) => return tonic::Status::unavailable("the node ended the watch"),
            Err(status) => return status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn country(cc: &str, amount: &str) -> pb::CountryPlans {
        pb::CountryPlans {
            country: cc.into(),
            currency: "USD".into(),
            catalog_version: 1,
            plans: vec![pb::Plan {
                id: "basic".into(),
                price: Some(pb::Price {
                    amount: amount.into(),
                    currency: "USD".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn updates_apply_in_full_and_as_changes() {
        let c = Catalog::empty().apply(pb::CatalogUpdate {
            version: 5,
            full: true,
            countries: vec![country("US", "1"), country("JP", "2")],
            removed: vec![],
            ..Default::default()
        });
        assert_eq!(c.version, 5);
        let c = c.apply(pb::CatalogUpdate {
            version: 7,
            full: false,
            countries: vec![country("US", "3")],
            removed: vec!["JP".into()],
            ..Default::default()
        });
        assert_eq!(c.version, 7);
        let us = c.countries[index(b"us").unwrap()].as_ref().unwrap();
        assert_eq!(us.plans[0].price.as_ref().unwrap().amount, "3");
        assert!(c.countries[index(b"JP").unwrap()].is_none());
        let c = c.apply(pb::CatalogUpdate {
            version: 8,
            full: true,
            countries: vec![country("FR", "4")],
            removed: vec![],
            ..Default::default()
        });
        assert!(c.countries[index(b"US").unwrap()].is_none());
        assert!(c.countries[index(b"FR").unwrap()].is_some());
        assert_eq!(index(b"U"), None);
        assert_eq!(index(b"U1"), None);
    }
}
