//! Following committed changes, so that every one reaches this node.
//!
//! Changes come from one of two sources:
//! - the store's change log, read directly ([`log::LogReader`]): the embedded default,
//!   or a PostgreSQL store without Redis;
//! - the change stream in Redis ([`stream::StreamReader`]), which the relay
//!   ([`relay::Relay`]) fills from the change log: the production topology, so that N
//!   nodes do not each poll the store.
//!
//! Whatever the source, the follower applies each change the same way:
//! - a member change drops that member's L1 entry (the next read fetches the new row);
//! - a catalog change builds a new snapshot from the store and swaps it in (never an
//!   older version than the one served), and saves it to disk as the last good one;
//! - a bulk reseed, or an event kind this build does not know, drops the whole L1;
//! - a **gap** (the source cannot prove nothing was missed: log or stream trimmed
//!   past this node's position, Redis unreachable for longer than the L1 TTL) drops
//!   the whole L1 and reloads the catalog: a node that cannot be sure forgets rather
//!   than serve what might be stale.
//!
//! Delivery is at-least-once and every action is idempotent (dropping an entry twice,
//! installing a snapshot no newer than the current one), so duplicates, replays and
//! out-of-order delivery are harmless.

pub mod log;
pub mod relay;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogHandle, Snapshot};
use crate::members::Members;
use crate::store::{now_ms, ChangeEvent, ChangeKind, Store, StoreError};
use crate::telemetry::ChangeMetrics;

/// Failures reading changes.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
}

/// One read from a change source.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<ChangeEvent>,
    /// The source cannot prove that nothing was missed before these events.
    pub gap: bool,
    /// Another read would return more at once.
    pub more: bool,
    /// How many changes are known to be waiting beyond this batch, if the source knows.
    pub behind: Option<u64>,
}

/// Where a follower reads changes from.
pub enum Source {
    Log(log::LogReader),
    Stream(Box<stream::StreamReader>),
}

impl Source {
    async fn next_batch(&mut self) -> Result<Batch, ChangeError> {
        match self {
            Source::Log(r) => Ok(r.next_batch().await?),
            Source::Stream(r) => Ok(r.next_batch().await?),
        }
    }

    /// The position reached: the change-log cursor, or the stream id of the last
    /// entry read folded into one number ([`stream::id_to_u64`]).
    pub fn position(&self) -> Option<i64> {
        match self {
            Source::Log(r) => Some(r.cursor()),
            Source::Stream(r) => r.position().map(|p| p as i64),
        }
    }

    /// Whether reads wait for new changes themselves (no poll interval needed).
    fn blocks(&self) -> bool {
        matches!(self, Source::Stream(_))
    }
}

/// How often the embedded store's log is trimmed of rows older than the retention.
const TRIM_EVERY: Duration = Duration::from_secs(60);

pub struct Follower {
    source: Source,
    store: Store,
    members: Arc<Members>,
    catalog: Arc<CatalogHandle>,
    snapshot_path: PathBuf,
    poll_interval: Duration,
    retention: Duration,
    /// The log position reached (log sources only), published after applying.
    position: Arc<AtomicU64>,
    metrics: ChangeMetrics,
}

impl Follower {
    pub fn new(
        source: Source,
        store: Store,
        members: Arc<Members>,
        catalog: Arc<CatalogHandle>,
        snapshot_path: PathBuf,
        cfg: &crate::config::ChangesConfig,
    ) -> Follower {
        Follower {
            store,
            members,
            catalog,
            snapshot_path,
            poll_interval: cfg.poll_interval,
            retention: cfg.retention,
            position: Arc::new(AtomicU64::new(0)),
            metrics: ChangeMetrics::register(),
            source,
        }
    }

    /// A shared view of the position applied so far (see [`Source::position`]).
    pub fn position(&self) -> Arc<AtomicU64> {
        self.position.clone()
    }

    /// Reads and applies changes until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_trim = Instant::now();
        let mut failures = 0u32;
        loop {
            if !self.source.blocks() || failures > 0 {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            loop {
                let result = tokio::select! {
                    r = self.poll_once() => r,
                    _ = shutdown.cancelled() => return,
                };
                match result {
                    Ok(more) => {
                        failures = 0;
                        if !more {
                            break;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        self.metrics.poll_errors.increment(1);
                        if failures == 1 || failures.is_multiple_of(50) {
                            tracing::warn!(error = %e, failures, "reading changes failed; retrying");
                        }
                        break;
                    }
                }
            }
            if let (Store::Sqlite(s), false) = (&self.store, self.retention.is_zero()) {
                if last_trim.elapsed() >= TRIM_EVERY {
                    last_trim = Instant::now();
                    let cutoff = now_ms() - self.retention.as_millis() as i64;
                    if let Err(e) = crate::store::blocking(s, move |s| s.trim_changes(cutoff)).await
                    {
                        tracing::warn!(error = %e, "change log trim failed");
                    }
                }
            }
        }
    }

    /// Reads and applies one batch; returns whether more are waiting.
    pub async fn poll_once(&mut self) -> Result<bool, ChangeError> {
        let batch = self.source.next_batch().await?;
        let mut reload = false;
        if batch.gap {
            tracing::warn!("changes may have been missed: dropping L1 and reloading the catalog");
            self.metrics.gaps.increment(1);
            self.members.invalidate_all();
            reload = true;
        }
        let mut last_at = None;
        for ev in &batch.events {
            match ev.kind {
                ChangeKind::Member { id, .. } => self.members.invalidate(id).await,
                ChangeKind::Catalog { version } => {
                    reload |= version > self.catalog.load().version()
                }
                ChangeKind::MembersReseeded => self.members.invalidate_all(),
            }
            last_at = Some(ev.changed_at_ms);
            self.metrics.applied.increment(1);
        }
        if reload {
            self.reload_catalog().await?;
        }
        if let Some(p) = self.source.position() {
            self.position.store(p.max(0) as u64, Ordering::Release);
            self.metrics.position.set(p as f64);
        }
        if let Some(at) = last_at {
            self.metrics
                .lag_seconds
                .set((now_ms() - at).max(0) as f64 / 1000.0);
        }
        if let Some(behind) = batch.behind {
            self.metrics.lag_events.set(behind as f64);
        }
        Ok(batch.more)
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
}
