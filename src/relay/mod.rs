//! The relay: reads the store's change log, applies every member change to each zone
//! of the hash tier (the member's current row, or a tombstone, with a versioned set),
//! and only then publishes the change on the change stream — so a node that drops its
//! L1 entry on the event and reads the tier finds the new value there.
//!
//! Several relays may run; exactly one is active. The active one holds a lease row in
//! the store (`relay_state.holder`, `lease_until`) and renews it every third of
//! `relay.lease_ttl`; a standby tries to take it each time and succeeds once it has
//! lapsed, so a relay that dies (even `kill -9`) is replaced within about one lease.
//!
//! The durable position is the change-log reader's cursor, saved in the same row
//! after each batch is published, with a fenced write (only while the saver still
//! holds a live lease). A relay that crashes between publishing and saving repeats
//! that batch on restart: delivery is at-least-once, and nodes apply events
//! idempotently. If publishing fails, the reader is rebuilt from the saved cursor so
//! the batch is read and published again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::changes::TrimSchedule;
use crate::store::{
    ChangeEvent, ChangeKind, ChangeListener, ChangeReader, Position, RelayStore, Store, StoreError,
};
use crate::stream::{stream_key, StreamError, StreamPublisher};
use crate::telemetry::RelayMetrics;
use crate::tier::{Tier, TierEntry, TierError};

/// Why a relay could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error("the relay needs Redis: set redis_urls (READTIER_REDIS_URLS)")]
    NoRedis,
}

/// One relay process: active while it holds the lease, standby otherwise.
pub struct Relay {
    /// The change log and member rows.
    store: Store,
    /// Lease, durable position and LISTEN (PostgreSQL only).
    pg: RelayStore,
    /// Where events go once the tier holds them.
    publisher: StreamPublisher,
    /// The hash tier every change is applied to before it is published.
    tier: Option<Arc<Tier>>,
    /// Members whose tier write failed in some zone, with when it first failed: they
    /// are re-read and re-applied on every pass until written (or until the tier's TTL
    /// has expired whatever the zone held).
    repairs: HashMap<u64, Instant>,
    tier_ttl: Duration,
    /// This relay's name in the lease.
    holder: String,
    lease_ttl: Duration,
    poll_interval: Duration,
    retention: Duration,
    metrics: RelayMetrics,
}

/// What the relay reports as it runs (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standby,
    Active,
}

impl Relay {
    /// The relay a configuration describes, named `holder` in the lease.
    pub fn from_config(cfg: &Config, holder: String) -> Result<Relay, RelayError> {
        let url = cfg
            .changes
            .stream_url
            .as_deref()
            .ok_or(RelayError::NoRedis)?;
        let store = Store::open(&cfg.store)?;
        let pg = store.relay_store()?;
        let publisher = StreamPublisher::new(
            url,
            stream_key(&cfg.redis_prefix),
            cfg.changes.stream_maxlen,
        )?;
        let tier = Tier::from_config(cfg)?.map(Arc::new);
        Ok(Relay {
            store,
            pg,
            publisher,
            tier,
            repairs: HashMap::new(),
            tier_ttl: cfg.l2.ttl,
            holder,
            lease_ttl: cfg.relay.lease_ttl,
            poll_interval: cfg.changes.poll_interval,
            retention: cfg.changes.retention,
            metrics: RelayMetrics::register(),
        })
    }

    /// The store the relay reads (so its caller can migrate it first).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies a batch to every zone of the tier: the members' current rows (or
    /// tombstones) with versioned sets. A zone that fails leaves the member in
    /// `repairs`, retried on later passes.
    async fn apply_to_tier(&mut self, events: &[ChangeEvent]) -> Result<(), StoreError> {
        let Some(tier) = self.tier.clone() else {
            return Ok(());
        };
        if events.iter().any(|e| e.kind == ChangeKind::MembersReseeded) {
            let (removed, errors) = tier.flush_members().await;
            tracing::info!(
                buckets = removed,
                failed_nodes = errors.len(),
                "members reseeded: flushed the tier"
            );
        }
        let mut latest: HashMap<u64, i64> = HashMap::new();
        for e in events {
            if let ChangeKind::Member { id, version, .. } = e.kind {
                let v = latest.entry(id).or_insert(version);
                *v = (*v).max(version);
            }
        }
        let now = Instant::now();
        self.repairs
            .retain(|_, since| now.duration_since(*since) < self.tier_ttl);
        for id in self.repairs.keys() {
            latest.entry(*id).or_insert(0);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = latest.keys().copied().collect();
        let rows: HashMap<u64, _> = self
            .store
            .members_by_ids(ids)
            .await?
            .into_iter()
            .map(|r| match r {
                Ok(m) => (m.id, Ok(m)),
                Err(bad) => (bad.id, Err(bad)),
            })
            .collect();
        let tier_ref = &tier;
        // An unreadable row is left as the tier has it (and logged by the store):
        // writing a tombstone for it would pass it off as deleted.
        let writes = latest.iter().filter_map(|(id, version)| {
            let entry = match rows.get(id) {
                Some(Ok(m)) => TierEntry::Member(m.clone()),
                Some(Err(_)) => return None,
                None => TierEntry::Gone { version: *version },
            };
            Some(async move { (*id, tier_ref.set_all(*id, &entry).await) })
        });
        for (id, failed) in futures_util::future::join_all(writes).await {
            if failed.is_empty() {
                self.repairs.remove(&id);
            } else {
                for (zone, e) in &failed {
                    tracing::debug!(member = id, zone, error = %e, "tier write failed; will retry");
                }
                self.repairs.entry(id).or_insert(now);
            }
        }
        self.metrics.repairs_pending.set(self.repairs.len() as f64);
        Ok(())
    }

    /// Runs until `shutdown`; gives the lease up on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let renew_every = self.lease_ttl / 3;
        let mut role = Role::Standby;
        let mut reader: Option<ChangeReader> = None;
        let mut last_renew = Instant::now() - renew_every;
        let mut trims = TrimSchedule::new(self.retention);
        let mut listener: Option<ChangeListener> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if last_renew.elapsed() >= renew_every || role == Role::Standby {
                match self.pg.acquire_lease(&self.holder, self.lease_ttl).await {
                    Ok(true) => {
                        last_renew = Instant::now();
                        if role == Role::Standby {
                            match self.pg.saved_position().await {
                                Ok(at) => {
                                    tracing::info!(holder = %self.holder, horizon = at.horizon, "relay is active");
                                    reader = Some(
                                        self.store.change_reader(Some(Position::Postgres(at))),
                                    );
                                    role = Role::Active;
                                    self.metrics.active.set(1.0);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "reading the relay cursor failed")
                                }
                            }
                        }
                    }
                    Ok(false) => {
                        if role == Role::Active {
                            tracing::warn!(holder = %self.holder, "relay lost its lease; standing by");
                        }
                        role = Role::Standby;
                        reader = None;
                        self.metrics.active.set(0.0);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay lease check failed");
                        if role == Role::Active && last_renew.elapsed() >= self.lease_ttl {
                            // The lease has surely lapsed: another relay may be active.
                            role = Role::Standby;
                            reader = None;
                            self.metrics.active.set(0.0);
                        }
                    }
                }
            }
            if role == Role::Standby {
                tokio::select! {
                    _ = tokio::time::sleep(renew_every) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let Some(r) = reader.as_mut() else { continue };
            let mut more = false;
            match r.next_batch().await {
                Ok(batch) => {
                    more = batch.more;
                    let n = batch.events.len();
                    if let Err(e) = self.apply_to_tier(&batch.events).await {
                        tracing::warn!(error = %e, "reading members for the tier failed; will read the batch again");
                        reader = self.resume().await;
                        if reader.is_none() {
                            role = Role::Standby;
                        }
                        tokio::time::sleep(self.poll_interval).await;
                        continue;
                    }
                    match self.publisher.publish(&batch.events).await {
                        Ok(()) => {
                            self.metrics.published.increment(n as u64);
                            let saved = match r.position() {
                                Some(Position::Postgres(at)) => {
                                    self.pg.save_position(&self.holder, at).await
                                }
                                // A PostgreSQL reader always knows its position.
                                _ => Ok(true),
                            };
                            match saved {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::warn!("relay lease lapsed before the cursor was saved; standing by");
                                    role = Role::Standby;
                                    reader = None;
                                    self.metrics.active.set(0.0);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "saving the relay cursor failed")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, events = n, "publishing changes failed; will read them again");
                            reader = self.resume().await;
                            if reader.is_none() {
                                role = Role::Standby;
                            }
                            tokio::time::sleep(self.poll_interval).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the change log failed"),
            }
            if role == Role::Active {
                trims.tick(&self.store).await;
            }
            if !more {
                // Wait for a commit (LISTEN/NOTIFY), or the poll interval at most.
                if !listener
                    .as_ref()
                    .is_some_and(|l| l.alive.load(std::sync::atomic::Ordering::Relaxed))
                {
                    listener = match self.pg.listen().await {
                        Ok(l) => Some(l),
                        Err(e) => {
                            tracing::debug!(error = %e, "LISTEN failed; polling");
                            None
                        }
                    };
                }
                let wake = async {
                    match &listener {
                        Some(l) => l.notify.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    _ = wake => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        if role == Role::Active {
            if let Err(e) = self.pg.release_lease(&self.holder).await {
                tracing::warn!(error = %e, "releasing the relay lease failed");
            }
        }
        self.metrics.active.set(0.0);
        tracing::info!(holder = %self.holder, "relay stopped");
    }

    /// A reader from the saved position (after a failure: the batch is read again).
    async fn resume(&self) -> Option<ChangeReader> {
        match self.pg.saved_position().await {
            Ok(at) => Some(self.store.change_reader(Some(Position::Postgres(at)))),
            Err(e) => {
                tracing::warn!(error = %e, "reading the relay position failed");
                None
            }
        }
    }
}
