//! The relay's lease, renewed by a task of its own every third of `relay.lease_ttl`,
//! so a long step (a large batch, a slow zone) never lets it lapse; the relay asks
//! [`Lease::held`] before each step and stands by when it is not.
//!
//! The local deadline is counted from *before* each renewal was sent, and a tenth of
//! the TTL short, so the relay believes it holds the lease only while the store
//! certainly agrees. The store still fences every write (see `RelayStore::save`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::RelayStore;

/// Whether this relay holds the lease, as far as it can be sure.
pub struct Lease {
    epoch: Instant,
    /// Milliseconds after `epoch` until which the lease is held (0: not held).
    held_until: AtomicU64,
    /// Woken on every change of hands.
    pub changed: tokio::sync::Notify,
}

impl Lease {
    pub fn new() -> Arc<Lease> {
        Arc::new(Lease {
            epoch: Instant::now(),
            held_until: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn held(&self) -> bool {
        self.now_ms() < self.held_until.load(Ordering::Acquire)
    }

    /// Renews (or takes) the lease until `shutdown`, then gives it up.
    pub async fn keep(
        self: Arc<Lease>,
        pg: RelayStore,
        holder: String,
        ttl: Duration,
        shutdown: CancellationToken,
    ) {
        let every = ttl / 3;
        let good_for = ttl.mul_f64(0.9).as_millis() as u64;
        loop {
            let sent = self.now_ms();
            let was = self.held();
            match pg.acquire_lease(&holder, ttl).await {
                Ok(true) => self.held_until.store(sent + good_for, Ordering::Release),
                Ok(false) => self.held_until.store(0, Ordering::Release),
                // Unknown: it lapses by itself at the deadline already set.
                Err(e) => tracing::warn!(error = %e, "relay lease renewal failed"),
            }
            if was != self.held() {
                self.changed.notify_waiters();
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if self.held() {
            self.held_until.store(0, Ordering::Release);
            if let Err(e) = pg.release_lease(&holder).await {
                tracing::warn!(error = %e, "releasing the relay lease failed");
            }
        }
    }
}
