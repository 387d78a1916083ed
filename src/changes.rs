//! Following the store's change log, so that every committed change reaches this node.
//!
//! The follower keeps a position in the log and polls for rows after it:
//! - a member change drops that member's L1 entry (the next read fetches the new row);
//! - a catalog change builds a new snapshot from the store and swaps it in (never an
//!   older version than the one served), and saves it to disk as the last good one;
//! - a bulk reseed, or an event kind this build does not know, drops the whole L1;
//! - a **gap** (the log was trimmed past this node's position, so changes were missed
//!   unseen) drops the whole L1 and reloads the catalog: a node that cannot be sure
//!   forgets rather than serve what might be stale.
//!
//! Delivery is at-least-once and every action is idempotent (dropping an entry twice,
//! installing a snapshot no newer than the current one), so a duplicate or replayed
//! event is harmless.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogHandle, Snapshot};
use crate::members::Members;
use crate::store::{now_ms, ChangeKind, Store, StoreError};
use crate::telemetry::ChangeMetrics;

/// Rows read per poll; a full batch is followed at once by another read.
const BATCH: usize = 1000;
/// How often the log is trimmed of rows older than the retention.
const TRIM_EVERY: Duration = Duration::from_secs(60);

pub struct Follower {
    store: Store,
    members: Arc<Members>,
    catalog: Arc<CatalogHandle>,
    snapshot_path: PathBuf,
    poll_interval: Duration,
    retention: Duration,
    position: u64,
    /// `position`, published for readers outside the follower (readiness, tests).
    published: Arc<AtomicU64>,
    metrics: ChangeMetrics,
}

impl Follower {
    /// A follower that will apply every change after `position`.
    pub fn new(
        store: Store,
        members: Arc<Members>,
        catalog: Arc<CatalogHandle>,
        snapshot_path: PathBuf,
        cfg: &crate::config::ChangesConfig,
        position: u64,
    ) -> Follower {
        Follower {
            store,
            members,
            catalog,
            snapshot_path,
            poll_interval: cfg.poll_interval,
            retention: cfg.retention,
            position,
            published: Arc::new(AtomicU64::new(position)),
            metrics: ChangeMetrics::register(),
        }
    }

    /// A shared view of the follower's position: every change at or below it has been
    /// applied to this node.
    pub fn published_position(&self) -> Arc<AtomicU64> {
        self.published.clone()
    }

    /// Polls until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_trim = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            loop {
                match self.poll_once().await {
                    Ok(n) if n == BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        self.metrics.poll_errors.increment(1);
                        tracing::warn!(error = %e, position = self.position, "change log poll failed; retrying");
                        break;
                    }
                }
            }
            if !self.retention.is_zero() && last_trim.elapsed() >= TRIM_EVERY {
                last_trim = Instant::now();
                let cutoff = now_ms() - self.retention.as_millis() as i64;
                match self.store.trim_changes(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "trimmed change log"),
                    Err(e) => tracing::warn!(error = %e, "change log trim failed"),
                }
            }
        }
    }

    /// Reads and applies one batch; returns how many events it held.
    pub async fn poll_once(&mut self) -> Result<usize, StoreError> {
        let (events, state) = self.store.changes_after(self.position, BATCH).await?;
        let mut reload = false;
        if state.trimmed_through > self.position {
            tracing::warn!(
                position = self.position,
                trimmed_through = state.trimmed_through,
                "change log trimmed past this node's position: dropping L1"
            );
            self.metrics.gaps.increment(1);
            self.members.invalidate_all();
            reload = true;
            self.position = state.trimmed_through;
        }
        let n = events.len();
        let mut last_at = None;
        for ev in events {
            match ev.kind {
                ChangeKind::Member { id, .. } => self.members.invalidate(id).await,
                ChangeKind::Catalog { version } => {
                    reload |= version > self.catalog.load().version()
                }
                ChangeKind::MembersReseeded => self.members.invalidate_all(),
            }
            self.position = self.position.max(ev.seq);
            last_at = Some(ev.changed_at_ms);
            self.metrics.applied.increment(1);
        }
        if reload {
            self.reload_catalog().await?;
        }
        if let Some(at) = last_at {
            self.metrics
                .lag_seconds
                .set((now_ms() - at).max(0) as f64 / 1000.0);
        }
        self.published.store(self.position, Ordering::Release);
        self.metrics.position.set(self.position as f64);
        self.metrics
            .lag_events
            .set(state.head.saturating_sub(self.position) as f64);
        Ok(n)
    }

    async fn reload_catalog(&self) -> Result<(), StoreError> {
        let data = self.store.load_catalog().await?;
        self.metrics.catalog_reloads.increment(1);
        let version = data.version;
        if self.catalog.install(Snapshot::build(&data)) {
            tracing::info!(version, "catalog snapshot swapped");
            let path = self.snapshot_path.clone();
            let saved = tokio::task::spawn_blocking(move || data.save(&path)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "could not save the catalog snapshot to disk");
            }
        }
        Ok(())
    }

    pub fn position(&self) -> u64 {
        self.position
    }
}
