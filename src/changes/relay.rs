//! The relay: reads the store's change log and publishes every change on the change
//! stream (and, with the hash tier, applies it there first).
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::log::LogReader;
use super::stream::StreamPublisher;
use crate::store::{now_ms, PgStore, Store};

/// How often the active relay trims delivered change-log rows past the retention.
const TRIM_EVERY: Duration = Duration::from_secs(60);

pub struct Relay {
    store: Store,
    pg: Arc<PgStore>,
    publisher: StreamPublisher,
    holder: String,
    lease_ttl: Duration,
    poll_interval: Duration,
    retention: Duration,
}

/// What the relay reports as it runs (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standby,
    Active,
}

impl Relay {
    pub fn new(
        store: Store,
        publisher: StreamPublisher,
        holder: String,
        cfg: &crate::config::Config,
    ) -> Result<Relay, crate::store::StoreError> {
        let Store::Postgres(pg) = &store else {
            return Err(crate::store::StoreError::Unsupported("the relay", "sqlite"));
        };
        Ok(Relay {
            pg: pg.clone(),
            store,
            publisher,
            holder,
            lease_ttl: cfg.relay.lease_ttl,
            poll_interval: cfg.changes.poll_interval,
            retention: cfg.changes.retention,
        })
    }

    /// Runs until `shutdown`; gives the lease up on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let renew_every = self.lease_ttl / 3;
        let mut role = Role::Standby;
        let mut reader: Option<LogReader> = None;
        let mut last_renew = Instant::now() - renew_every;
        let mut last_trim = Instant::now();
        let published = metrics::counter!("readtier_relay_published_total");
        let active_gauge = metrics::gauge!("readtier_relay_active");
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if last_renew.elapsed() >= renew_every || role == Role::Standby {
                match self.pg.acquire_lease(&self.holder, self.lease_ttl).await {
                    Ok(true) => {
                        last_renew = Instant::now();
                        if role == Role::Standby {
                            match self.pg.relay_cursor().await {
                                Ok(cursor) => {
                                    tracing::info!(holder = %self.holder, cursor, "relay is active");
                                    reader = Some(LogReader::from_cursor(&self.store, cursor));
                                    role = Role::Active;
                                    active_gauge.set(1.0);
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
                        active_gauge.set(0.0);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay lease check failed");
                        if role == Role::Active && last_renew.elapsed() >= self.lease_ttl {
                            // The lease has surely lapsed: another relay may be active.
                            role = Role::Standby;
                            reader = None;
                            active_gauge.set(0.0);
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
                    match self.publisher.publish(&batch.events).await {
                        Ok(()) => {
                            published.increment(n as u64);
                            match self.pg.save_relay_cursor(&self.holder, r.cursor()).await {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::warn!("relay lease lapsed before the cursor was saved; standing by");
                                    role = Role::Standby;
                                    reader = None;
                                    active_gauge.set(0.0);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "saving the relay cursor failed")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, events = n, "publishing changes failed; will read them again");
                            match self.pg.relay_cursor().await {
                                Ok(cursor) => {
                                    reader = Some(LogReader::from_cursor(&self.store, cursor))
                                }
                                Err(_) => reader = None,
                            }
                            if reader.is_none() {
                                role = Role::Standby;
                            }
                            tokio::time::sleep(self.poll_interval).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the change log failed"),
            }
            if role == Role::Active
                && !self.retention.is_zero()
                && last_trim.elapsed() >= TRIM_EVERY
            {
                last_trim = Instant::now();
                let cutoff = now_ms() - self.retention.as_millis() as i64;
                match self.pg.trim_changes(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "trimmed the change log"),
                    Err(e) => tracing::warn!(error = %e, "trimming the change log failed"),
                }
            }
            if !more {
                tokio::select! {
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        if role == Role::Active {
            if let Err(e) = self.pg.release_lease(&self.holder).await {
                tracing::warn!(error = %e, "releasing the relay lease failed");
            }
        }
        active_gauge.set(0.0);
        tracing::info!(holder = %self.holder, "relay stopped");
    }
}
