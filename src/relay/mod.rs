//! The relay: reads the store's change log, applies every member change to each zone
//! of the hash tier (the member's current row, or a tombstone, with a versioned set),
//! and only then publishes the batch on the change stream — so a node that drops its
//! L1 entry on the event and reads the tier finds the new value there.
//!
//! Several relays may run; exactly one is active: the one holding the lease row in the
//! store ([`lease`]), renewed by a task of its own. Each step, bounded to one page of
//! the change log (at most [`crate::store::changes::PAGE`] changes):
//! 1. retries pending tier repairs (at most 256, at most twice a second while they
//!    keep failing); a repair made is announced in this step's entry;
//! 2. reads the next page of the change log; a gap (the log was trimmed past the
//!    relay) is treated as a reseed: the tier is flushed and every node drops L1;
//! 3. applies the page to every zone ([`apply`]); failed zone writes become repairs;
//! 4. saves, in one fenced transaction, the position *before* this page, the stream
//!    ids it reserves (a block of [`RESERVE_BLOCK`], so that most pages need no save)
//!    and the new repairs — before publishing whenever there are new repairs, the
//!    page's id `k` is past the reserved block, or [`SAVE_EVERY`] has passed;
//! 5. appends entry `k` to every copy of the stream; if no copy takes it, the page is
//!    read again from the last published position and published under a new id.
//!
//! When idle, it saves the position after the last published page. A relay that
//! crashes anywhere repeats at most [`SAVE_EVERY`] of pages (nodes apply events
//! idempotently), and a successor starts above every id ever reserved, filling any
//! reserved id no copy holds with a filler (see [`crate::stream`]): a reader sees no
//! gap for the ids a relay reserved and never used.

pub mod admin;
mod apply;
mod lease;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::changes::TrimSchedule;
use crate::store::{
    ChangeEvent, ChangeKind, ChangeListener, ChangeReader, PgPosition, Position, Progress,
    RelayStore, Repair, Store, StoreError,
};
use crate::stream::{encode, StreamError, StreamPublisher};
use crate::telemetry::RelayMetrics;
use crate::tier::{Tier, TierError};
use lease::Lease;

/// Why a relay could not be built, or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error("the relay needs Redis for the change stream: set redis_urls (READTIER_REDIS_URLS)")]
    NoRedis,
    #[error("the lease was lost")]
    LostLease,
}

/// Stream ids reserved by one save: a page whose id is inside the block is published
/// without a save before it (one PostgreSQL round trip off the commit-to-visible path).
const RESERVE_BLOCK: u64 = 64;

/// Longest the saved position may trail what was published under load.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// Most repairs tried per step.
const REPAIRS_PER_STEP: i64 = 256;
/// Least time between tries of repairs that keep failing.
const REPAIR_RETRY: Duration = Duration::from_millis(500);

/// One relay process: active while it holds the lease, standby otherwise.
pub struct Relay {
    /// The change log and member rows.
    store: Store,
    /// Lease, durable state and LISTEN (PostgreSQL only).
    pg: RelayStore,
    /// Where entries go once the tier holds their changes.
    publisher: StreamPublisher,
    /// The hash tier every change is applied to before it is published.
    tier: Option<Arc<Tier>>,
    /// This relay's name in the lease.
    holder: String,
    lease_ttl: Duration,
    poll_interval: Duration,
    retention: Duration,
    metrics: RelayMetrics,
    /// What the admin listener reports ([`admin`]).
    health: Arc<admin::Health>,
}

/// What an active relay carries from step to step.
struct Active {
    reader: ChangeReader,
    /// Every change before it has been published (and, once saved, durably so).
    published: PgPosition,
    /// The position last saved: the log is trimmed below it, never further.
    saved: PgPosition,
    /// The last entry published, and the next id to use.
    stream_seq: u64,
    next_id: u64,
    /// Published since the last save.
    dirty: bool,
    /// The highest stream id reserved by a save, and when the last save was.
    reserved: u64,
    last_save: Instant,
    /// Repairs made and announced, to be cleared at the next save.
    repaired: Vec<Repair>,
    /// Pending repairs, as last counted, and when they were last tried.
    repairs_pending: u64,
    repairs_tried: Option<Instant>,
}

impl Relay {
    /// The relay a configuration describes, named `holder` in the lease.
    pub fn from_config(cfg: &Config, holder: String) -> Result<Relay, RelayError> {
        if !cfg.has_stream() {
            return Err(RelayError::NoRedis);
        }
        let store = Store::open(&cfg.store)?;
        let pg = store.relay_store()?;
        Ok(Relay {
            publisher: StreamPublisher::from_config(cfg)?,
            tier: Tier::from_config(cfg)?.map(Arc::new),
            store,
            pg,
            holder,
            lease_ttl: cfg.relay.lease_ttl,
            poll_interval: cfg.changes.poll_interval,
            retention: cfg.changes.retention,
            metrics: RelayMetrics::register(),
            health: Arc::default(),
        })
    }

    /// What the admin listener reports of this relay.
    pub fn health(&self) -> Arc<admin::Health> {
        self.health.clone()
    }

    /// The store the relay reads (so its caller can migrate it first).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs until `shutdown`; gives the lease up on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let lease = Lease::new();
        let keeper = tokio::spawn(lease.clone().keep(
            self.pg.clone(),
            self.holder.clone(),
            self.lease_ttl,
            shutdown.clone(),
        ));
        let mut active: Option<Active> = None;
        let mut trims = TrimSchedule::new(self.retention);
        let mut listener: Option<ChangeListener> = None;
        // Steps failed in a row: retries back off (jittered) while the store or Redis
        // is down.
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            if !lease.held() {
                if active.take().is_some() {
                    tracing::warn!(holder = %self.holder, "relay lost its lease; standing by");
                    self.metrics.active.set(0.0);
                    self.health.set_active(false);
                }
                tokio::select! {
                    _ = lease.changed.notified() => {}
                    _ = tokio::time::sleep(self.lease_ttl / 6) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let state = match active.as_mut() {
                Some(state) => state,
                None => match self.take_over().await {
                    Ok(state) => active.insert(state),
                    Err(e) => {
                        tracing::warn!(error = %e, "taking over as the active relay failed; retrying");
                        tokio::time::sleep(self.poll_interval.max(Duration::from_millis(100)))
                            .await;
                        continue;
                    }
                },
            };
            let started = crate::store::now_ms();
            let more = match self.step(state).await {
                Ok((more, newest)) => {
                    self.health.stepped(started, newest, !more);
                    more
                }
                Err(RelayError::LostLease) => {
                    tracing::warn!(holder = %self.holder, "relay lease lapsed before its state was saved; standing by");
                    active = None;
                    self.metrics.active.set(0.0);
                    self.health.set_active(false);
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "relay step failed; reading again from what was published");
                    state.reader = self
                        .store
                        .change_reader(Some(Position::Postgres(state.published.clone())));
                    tokio::time::sleep(crate::store::changes::retry_delay(failures)).await;
                    continue;
                }
            };
            failures = 0;
            trims
                .tick(&self.store, Some(&Position::Postgres(state.saved.clone())))
                .await;
            if !more {
                self.wait_for_commit(&mut listener, &shutdown).await;
            }
        }
        let _ = keeper.await;
        self.metrics.active.set(0.0);
        self.health.set_active(false);
        tracing::info!(holder = %self.holder, "relay stopped");
    }

    /// Becomes the active relay: reads the durable state and brings the stream's
    /// copies level before anything is published.
    async fn take_over(&mut self) -> Result<Active, RelayError> {
        let saved = self.pg.saved_state().await?;
        let next_id = self
            .publisher
            .sync(saved.stream_seq, saved.stream_reserved)
            .await;
        let (_, repairs_pending) = self.pg.repairs(0).await?;
        tracing::info!(
            holder = %self.holder,
            xmax = saved.position.xmax,
            next_entry = next_id,
            repairs_pending,
            "relay is active"
        );
        self.metrics.active.set(1.0);
        self.health.set_active(true);
        self.metrics.repairs_pending.set(repairs_pending as f64);
        Ok(Active {
            reader: self
                .store
                .change_reader(Some(Position::Postgres(saved.position.clone()))),
            published: saved.position.clone(),
            saved: saved.position,
            stream_seq: saved.stream_seq,
            next_id,
            dirty: false,
            // Below `next_id`: the first page reserves a block.
            reserved: 0,
            last_save: Instant::now(),
            repaired: Vec::new(),
            repairs_pending,
            repairs_tried: None,
        })
    }

    /// One step (see the module comment); returns whether more is waiting, and the
    /// newest commit time among the changes it published.
    async fn step(&mut self, state: &mut Active) -> Result<(bool, Option<i64>), RelayError> {
        let mut announce: Vec<ChangeEvent> = Vec::new();
        let mut repaired_now = Vec::new();
        if let Some(tier) = self.tier.clone() {
            let due = state.repairs_pending > 0
                && state
                    .repairs_tried
                    .is_none_or(|t| t.elapsed() >= REPAIR_RETRY);
            if due {
                state.repairs_tried = Some(Instant::now());
                let (repairs, total) = self.pg.repairs(REPAIRS_PER_STEP).await?;
                let (done, events) = apply::repair(&self.store, &tier, &repairs).await?;
                if !done.is_empty() {
                    // Progress: keep going without waiting.
                    state.repairs_tried = None;
                }
                state.repairs_pending = total.saturating_sub(done.len() as u64);
                repaired_now = done;
                announce = events;
            }
        }
        let batch = state.reader.next_batch().await?;
        let mut events = batch.events;
        let newest = events.iter().map(|e| e.changed_at_ms).max();
        if batch.gap {
            tracing::error!("the change log was trimmed past the relay's position: flushing the tier, every node drops L1");
            events.push(ChangeEvent {
                seq: 0,
                kind: ChangeKind::MembersReseeded,
                changed_at_ms: crate::store::now_ms(),
            });
        }
        let failed = match &self.tier {
            Some(tier) => apply::apply(&self.store, tier, &events).await?,
            None => Vec::new(),
        };
        state.repairs_pending += failed.len() as u64;
        self.metrics
            .repairs_pending
            .set(state.repairs_pending as f64);
        // The reader's position after this page (it always knows one).
        let after = match state.reader.position() {
            Some(Position::Postgres(p)) => p,
            _ => state.published.clone(),
        };
        events.extend(announce);
        if events.is_empty() {
            if state.dirty || !failed.is_empty() || !state.repaired.is_empty() {
                self.save(state, &after, state.stream_seq, &failed).await?;
                state.published = after;
                state.dirty = false;
            } else {
                state.published = after;
            }
            state.repaired.extend(repaired_now);
            return Ok((batch.more, newest));
        }
        let k = state.next_id;
        let before = state.published.clone();
        if !failed.is_empty() || k > state.reserved || state.last_save.elapsed() >= SAVE_EVERY {
            let reserve = state.reserved.max(k + RESERVE_BLOCK - 1);
            self.save(state, &before, reserve, &failed).await?;
            state.reserved = reserve;
        }
        state.next_id = k + 1;
        self.publisher.append(k, &encode(&events)).await?;
        self.metrics.published.increment(events.len() as u64);
        state.stream_seq = k;
        state.published = after;
        state.dirty = true;
        state.repaired.extend(repaired_now);
        Ok((batch.more, newest))
    }

    /// Saves `position` with the stream counters and repairs (fenced by the lease).
    async fn save(
        &self,
        state: &mut Active,
        position: &PgPosition,
        reserved: u64,
        failed: &[Repair],
    ) -> Result<(), RelayError> {
        let progress = Progress {
            position,
            stream_seq: state.stream_seq,
            stream_reserved: reserved,
            failed,
            repaired: &state.repaired,
        };
        if !self
            .pg
            .save(&self.holder, self.lease_ttl, &progress)
            .await?
        {
            return Err(RelayError::LostLease);
        }
        state.repaired.clear();
        state.saved = position.clone();
        state.last_save = Instant::now();
        Ok(())
    }

    /// Waits for a commit (LISTEN/NOTIFY), or the poll interval at most.
    async fn wait_for_commit(
        &self,
        listener: &mut Option<ChangeListener>,
        shutdown: &CancellationToken,
    ) {
        if !listener
            .as_ref()
            .is_some_and(|l| l.alive.load(std::sync::atomic::Ordering::Relaxed))
        {
            *listener = match self.pg.listen().await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN failed; polling");
                    None
                }
            };
        }
        let wake = async {
            match listener {
                Some(l) => l.notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(self.poll_interval) => {}
            _ = wake => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
