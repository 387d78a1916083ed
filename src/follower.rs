//! Following committed changes, so that every one reaches this node.
//!
//! Changes come from one of two sources:
//! - the store's change log, read directly ([`ChangeReader`]): the embedded default,
//!   or a PostgreSQL store without Redis;
//! - the change stream in Redis ([`StreamReader`]), which the relay process fills
//!   from the change log: the production topology, so that N nodes do not each poll
//!   the store.
//!
//! Whatever the source, the follower applies each change the same way:
//! - a member change drops that member's L1 entry (the next read fetches the new row);
//! - a catalog change builds a new snapshot from the store and swaps it in (never an
//!   older version than the one served), and saves it to disk as the last good one; a
//!   reload that fails stays pending and is retried until it succeeds (also when the
//!   node started from its disk copy because the store was down);
//! - a bulk reseed, or an event kind this build does not know, drops the whole L1;
//! - a **gap** (the source cannot prove nothing was missed: log or stream trimmed
//!   past this node's position, Redis unreachable for longer than the L1 TTL) drops
//!   the whole L1 and reloads the catalog: a node that cannot be sure forgets rather
//!   than serve what might be stale.
//!
//! Delivery is at-least-once and every action is idempotent (dropping an entry twice,
//! installing a snapshot no newer than the current one), so duplicates, replays and
//! out-of-order delivery are harmless.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::{disk, CatalogHandle, Snapshot};
use crate::config::ChangesConfig;
use crate::lookup::Members;
use crate::store::changes::TrimSchedule;
use crate::store::{now_ms, ChangeBatch, ChangeKind, ChangeReader, Store, StoreError};
use crate::stream::{StreamError, StreamReader};
use crate::telemetry::ChangeMetrics;

/// Failures reading changes.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Where a follower reads changes from.
pub enum Source {
    Log(ChangeReader),
    Stream(Box<StreamReader>),
}

impl Source {
    async fn next_batch(&mut self) -> Result<ChangeBatch, ChangeError> {
        match self {
            Source::Log(r) => Ok(r.next_batch().await?),
            Source::Stream(r) => Ok(r.next_batch().await?),
        }
    }

    /// The position reached, as one ever-rising number (see
    /// [`crate::store::Position::progress`], or the number of the last stream entry).
    pub fn progress(&self) -> Option<u64> {
        match self {
            Source::Log(r) => r.position().map(|p| p.progress()),
            Source::Stream(r) => r.position(),
        }
    }

    /// Whether reads wait for new changes themselves (no poll interval needed).
    fn blocks(&self) -> bool {
        matches!(self, Source::Stream(_))
    }
}

/// Applies committed changes to one node's L1 and catalog.
pub struct Follower {
    /// Where changes are read from.
    source: Source,
    /// Read to rebuild the catalog; trimmed (embedded store only) by this node.
    store: Store,
    /// L1, dropped entry by entry or whole.
    members: Arc<Members>,
    /// The catalog snapshot, swapped on catalog changes.
    catalog: Arc<CatalogHandle>,
    /// Where the last good catalog is kept on disk.
    snapshot_path: PathBuf,
    poll_interval: Duration,
    retention: Duration,
    /// The position applied so far ([`Source::progress`]), published after applying.
    position: Arc<AtomicU64>,
    /// The catalog must be read again (a change or gap was seen, or the node started
    /// from its disk copy) and has not been yet.
    reload_pending: bool,
    /// When a pending reload was last tried.
    reload_tried: Option<std::time::Instant>,
    /// Commit times (ms) of catalog changes not applied until the pending reload
    /// succeeds: their commit-to-applied lag is recorded then. At most
    /// [`LAG_PENDING_MAX`] are kept (a long store outage must not grow it unbounded).
    lag_pending: Vec<i64>,
    /// When this follower was made (ms since the epoch): changes committed before it
    /// are not counted in the lag histogram. A node may still be handed such changes
    /// (a relay's first pass republishing the log, or a reader that could not learn
    /// its position at start re-reading the whole retained log, up to
    /// `changes.retention` old); they are not late deliveries to this node, and
    /// counting them would page after a restart.
    started_ms: i64,
    /// What this node has applied, for [`watch_lag`].
    applied: Arc<Applied>,
    metrics: ChangeMetrics,
}

/// How far a node has applied the store's changes, shared with [`watch_lag`]: the
/// newest commit time (ms, store clock) among the changes applied (from the node's
/// start: earlier ones are none of its lag), and the oldest commit time of a catalog
/// change waiting on a reload (`i64::MAX`: none).
#[derive(Debug)]
pub struct Applied {
    through_ms: AtomicI64,
    waiting_since_ms: AtomicI64,
}

impl Applied {
    fn new(started_ms: i64) -> Applied {
        Applied {
            through_ms: AtomicI64::new(started_ms),
            waiting_since_ms: AtomicI64::new(i64::MAX),
        }
    }
}

/// Sets `readtier_change_log_lag_seconds` every second, until `stop`, to what is
/// committed and not yet applied: the age of the store's oldest change committed after
/// the newest this node applied (one indexed read of the change log), or of a catalog
/// change waiting on a reload that keeps failing, whichever is older. Asked of the
/// store, not of the last batch received: a relay that stopped publishing, or a reader
/// stuck on one page, delivers no batch at all, and the old gauge (the age of the last
/// batch's newest change when it came) stayed at 0.015 s while nothing moved (issue 27).
pub async fn watch_lag(applied: Arc<Applied>, store: Store, stop: CancellationToken) {
    let gauge = metrics::gauge!("readtier_change_log_lag_seconds");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let through = applied.through_ms.load(Ordering::Acquire);
        let now = now_ms();
        let mut oldest = applied.waiting_since_ms.load(Ordering::Acquire);
        match store.first_change_after(through).await {
            Ok(Some(at)) => oldest = oldest.min(at),
            Ok(None) => {}
            // The store cannot say: keep the last value (reading changes fails too,
            // and counts in readtier_change_log_poll_errors_total).
            Err(_) => continue,
        }
        let lag = if oldest == i64::MAX {
            0.0
        } else {
            (now - oldest).max(0) as f64 / 1000.0
        };
        gauge.set(lag);
    }
}

/// Most catalog changes whose lag waits on a reload (catalog writes are rare; past
/// this, later ones go unrecorded until the reload).
const LAG_PENDING_MAX: usize = 1024;

impl Follower {
    pub fn new(
        source: Source,
        store: Store,
        members: Arc<Members>,
        catalog: Arc<CatalogHandle>,
        snapshot_path: PathBuf,
        cfg: &ChangesConfig,
    ) -> Follower {
        Follower {
            store,
            members,
            catalog,
            snapshot_path,
            poll_interval: cfg.poll_interval,
            retention: cfg.retention,
            position: Arc::new(AtomicU64::new(0)),
            reload_pending: false,
            reload_tried: None,
            lag_pending: Vec::new(),
            started_ms: now_ms(),
            applied: Arc::new(Applied::new(now_ms())),
            metrics: ChangeMetrics::register(),
            source,
        }
    }

    /// The catalog being served did not come from the store (it came from disk): read
    /// it from the store as soon as the store answers.
    pub fn reload_catalog_soon(mut self) -> Follower {
        self.reload_pending = true;
        self
    }

    /// What this follower has applied, for [`watch_lag`].
    pub fn applied(&self) -> Arc<Applied> {
        self.applied.clone()
    }

    /// A shared view of the position applied so far (see [`Source::progress`]).
    pub fn position(&self) -> Arc<AtomicU64> {
        self.position.clone()
    }

    /// Reads and applies changes until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trims = TrimSchedule::new(self.retention);
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
                        // Back off (jittered, doubling up to half a second) so a fleet of
                        // nodes does not hammer a source that is down, in step.
                        tokio::select! {
                            _ = tokio::time::sleep(crate::store::changes::retry_delay(failures)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        break;
                    }
                }
            }
            self.retry_reload().await;
            // A node reading the log itself trims it (never past its own position).
            if let Source::Log(r) = &self.source {
                trims.tick(&self.store, r.position().as_ref()).await;
            }
        }
    }

    /// Retries a pending catalog reload, at most twice a second.
    async fn retry_reload(&mut self) {
        if !self.reload_pending
            || self
                .reload_tried
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        if let Err(e) = self.reload_catalog().await {
            tracing::warn!(error = %e, "reloading the catalog failed; will retry");
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
        // Commit times of the changes applied by now (a catalog change newer than the
        // snapshot is applied by the reload below, and recorded there).
        let mut applied_at = Vec::with_capacity(batch.events.len());
        for ev in &batch.events {
            match ev.kind {
                ChangeKind::Member { id, version, .. } => {
                    self.members.invalidate(id, version);
                    applied_at.push(ev.changed_at_ms);
                }
                ChangeKind::Catalog { version } => {
                    if version > self.catalog.load().version() {
                        reload = true;
                        if self.lag_pending.len() < LAG_PENDING_MAX {
                            self.lag_pending.push(ev.changed_at_ms);
                        }
                        self.applied
                            .waiting_since_ms
                            .fetch_min(ev.changed_at_ms, Ordering::AcqRel);
                    } else {
                        applied_at.push(ev.changed_at_ms);
                    }
                }
                ChangeKind::MembersReseeded => {
                    self.members.invalidate_all();
                    applied_at.push(ev.changed_at_ms);
                }
            }
            self.metrics.applied.increment(1);
        }
        self.record_lag(&applied_at);
        if reload {
            self.reload_pending = true;
            self.reload_tried = None;
            self.retry_reload().await;
        }
        if let Some(p) = self.source.progress() {
            self.position.store(p, Ordering::Release);
            self.metrics.position.set(p as f64);
        }
        if let Some(newest) = applied_at.iter().max() {
            self.applied.through_ms.fetch_max(*newest, Ordering::AcqRel);
        }
        if let Some(behind) = batch.behind {
            self.metrics.lag_events.set(behind as f64);
        }
        Ok(batch.more)
    }

    /// Records the commit-to-applied lag of changes committed at `committed` (ms, store
    /// clock) and applied now. Changes committed before this follower started are
    /// skipped (see `started_ms`); a store clock ahead of this node's counts as no lag
    /// rather than a negative one.
    fn record_lag(&self, committed: &[i64]) {
        if committed.is_empty() {
            return;
        }
        let now = now_ms();
        for &at in committed.iter().filter(|&&at| at >= self.started_ms) {
            self.metrics
                .applied_lag
                .record((now - at).max(0) as f64 / 1000.0);
        }
    }

    async fn reload_catalog(&mut self) -> Result<(), StoreError> {
        self.reload_tried = Some(std::time::Instant::now());
        let data = self.store.load_catalog().await?;
        self.reload_pending = false;
        self.metrics.catalog_reloads.increment(1);
        let version = data.version;
        let installed = self.catalog.install(Snapshot::build(&data));
        let waited = std::mem::take(&mut self.lag_pending);
        self.record_lag(&waited);
        if let Some(newest) = waited.iter().max() {
            self.applied.through_ms.fetch_max(*newest, Ordering::AcqRel);
        }
        self.applied
            .waiting_since_ms
            .store(i64::MAX, Ordering::Release);
        if installed {
            tracing::info!(version, "catalog snapshot swapped");
            disk::save_in_background(data, self.snapshot_path.clone()).await;
        }
        Ok(())
    }
}
