//! The member lookup service: L1 in-process cache → L2 hash tier (local zone, then the
//! others) → store, with one load per member however many requests miss at once.
//!
//! Rules:
//! - **hit**: the entry (a record, or "no such member") is answered from memory;
//! - **miss**: one load per member however many requests miss at once (the others
//!   wait for it: coalescing). The load runs as a task of its own, so a request that
//!   gives up never strands the others. It reads the L2 tier (skipping a zone that
//!   holds a version below the member's floor), else the store (at most
//!   `l2.max_store_fills` store reads in flight), filling L2; a found record is kept
//!   for `l1.ttl`, an unknown id for `l1.negative_ttl`;
//! - **stale**: a change event for version `v` drops the entry if it is older than
//!   `v` (a duplicate or older event leaves it), and raises the member's *floor* to
//!   `v`; a load that finishes below its member's floor (an event came while it read)
//!   is answered but not kept. A gap (the node cannot prove it saw every event) starts
//!   a new L1 generation: every entry becomes a miss, floors stay;
//! - **floor**: per member, the newest version this node has answered or been told
//!   of. Reads never take an L2 value below it, so a node never answers an older
//!   version than it already has, even when a zone is behind (a write the relay is
//!   still repairing, a node that was hung); it is kept while L1 remembers the member;
//! - **expiry**: each entry carries its deadline, checked on read;
//! - **failure**: a store error is answered as an error and nothing is cached.
//!
//! - **batch**: [`Members::get_many`] follows the same rules for many members, with
//!   one tier round trip per Redis node and one store query for all its misses.
//!
//! L1 is a `quick_cache` sync cache (bounded, CLOCK-Pro eviction): on the hit path it
//! measured 31 ns against 154 ns for moka's sync cache and 396 ns for moka's async
//! one driven from a future (`cargo bench --bench hot_paths`, "l1 candidates";
//! docs/PERFORMANCE.md); TTLs are kept in the entry, which quick_cache lacks. Loads in
//! flight and the read-modify-write of a member's slot (an event against a finishing
//! load) are serialized by a small striped lock, off the hit path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::config::L1Config;
use crate::member::Member;
use crate::store::{Store, StoreError};

mod entry;
pub mod inspector;
pub mod warm;
use crate::telemetry::MemberMetrics;
use crate::tier::{Tier, TierEntry};
pub use entry::{Cached, Encoded, Entry, FillLimits, LookupError, ServedFrom};

/// What L1 holds per member.
#[derive(Clone)]
struct Slot {
    /// The answer, or `None` when only a floor is known (an event dropped it).
    entry: Option<Entry>,
    /// The newest version answered or announced for this member.
    floor: i64,
    /// When the entry stops being served.
    expires: Instant,
    /// The L1 generation the entry belongs to (see [`Members::invalidate_all`]).
    generation: u32,
}

/// What L1 holds for one member ([`Members::l1_view`]).
#[derive(Clone)]
pub struct L1View {
    /// The record or "no such member" held, if any (perhaps expired or of an old
    /// generation: see `served`).
    pub entry: Option<Entry>,
    /// The member's floor, if L1 remembers one.
    pub floor: Option<i64>,
    /// Whether a read now would be answered from `entry`.
    pub served: bool,
    /// Time left before `entry` expires.
    pub expires_in: Duration,
}

/// A "no such member" answer held in the negative cache.
#[derive(Clone)]
struct Negative {
    entry: Entry,
    expires: Instant,
    generation: u32,
}

type LoadResult = Result<Entry, LookupError>;

/// A load in flight; its waiters watch for the result.
struct Load {
    result: watch::Sender<Option<LoadResult>>,
}

/// Longest a store fill waits for one of the `l2.max_store_fills` permits before the
/// lookup is shed (503, Retry-After): past the limit, queueing only adds latency.
const FILL_QUEUE: Duration = Duration::from_millis(50);

/// Stripes of the lock that serializes loads and events per member.
const STRIPES: usize = 64;

/// One stripe: the loads in flight of the members it covers.
type Stripe = Mutex<HashMap<u64, Arc<Load>>>;

/// Member lookups: L1, then the L2 hash tier (when configured), then the store.
pub struct Members {
    /// The in-process cache of records (and of floors).
    l1: Cache<u64, Slot>,
    /// "No such member" answers, apart (`l1.negative_capacity`): unknown ids cannot
    /// evict records.
    negative: Cache<u64, Negative>,
    /// How long a record is served from L1.
    ttl: Duration,
    /// How long "no such member" is served from L1.
    negative_ttl: Duration,
    /// The source of truth, read on a miss in every tier.
    store: Store,
    /// The L2 hash tier, if Redis is configured.
    tier: Option<Arc<Tier>>,
    /// Bounds concurrent store reads, so an outage of the tier cannot flatten the store.
    fills: Arc<Semaphore>,
    /// The least time a store read waited for its permit since last taken, in
    /// nanoseconds (`u64::MAX`: no read): a store saturated by this node's own reads
    /// is a queue in the node (`admission`).
    fill_wait: AtomicU64,
    limits: FillLimits,
    /// Loads in flight, by member, striped; holding a stripe also serializes the
    /// read-modify-write of that member's slot.
    loading: Box<[Stripe]>,
    /// The current L1 generation; raised when all of L1 is dropped.
    generation: AtomicU32,
    /// Store reads made by this instance (the metrics are per process).
    store_reads: AtomicU64,
    metrics: MemberMetrics,
}

impl Members {
    pub fn new(
        store: Store,
        tier: Option<Arc<Tier>>,
        cfg: &L1Config,
        limits: FillLimits,
    ) -> Members {
        Members {
            l1: Cache::new(cfg.capacity.min(usize::MAX as u64) as usize),
            negative: Cache::new(cfg.negative_capacity.min(usize::MAX as u64) as usize),
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
            store,
            tier,
            fills: Arc::new(Semaphore::new(limits.max_in_flight)),
            fill_wait: AtomicU64::new(u64::MAX),
            limits,
            loading: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            generation: AtomicU32::new(0),
            store_reads: AtomicU64::new(0),
            metrics: MemberMetrics::register(),
        }
    }

    /// A permit for one store read, or `None` when none came free within
    /// [`FILL_QUEUE`]: shed rather than queue. How long it waited is kept for
    /// [`Members::take_fill_wait`].
    async fn fill_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = self.fills.clone().try_acquire_owned() {
            self.fill_wait.fetch_min(0, Ordering::Relaxed);
            return Some(p);
        }
        let queued = Instant::now();
        let queue = self.limits.wait.min(FILL_QUEUE);
        let permit = tokio::time::timeout(queue, self.fills.clone().acquire_owned()).await;
        let waited = u64::try_from(queued.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.fill_wait.fetch_min(waited, Ordering::Relaxed);
        match permit {
            Ok(Ok(p)) => Some(p),
            _ => None,
        }
    }

    /// The least time a store read waited for one of the `l2.max_store_fills` permits
    /// since the last call (`None`: no store read since): above zero only when every
    /// read queued, the store saturated by this node's own reads.
    pub fn take_fill_wait(&self) -> Option<Duration> {
        match self.fill_wait.swap(u64::MAX, Ordering::Relaxed) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    fn stripe(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Load>>> {
        // Never poisoned in practice (nothing panics while holding it); recover if so.
        self.loading[(id as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// An L1 hit, or `None` (the caller then uses [`Members::get`]). Cheaper than
    /// `get` on the hit path: no future, no timer.
    #[inline]
    pub fn get_l1(&self, id: u64) -> Option<Entry> {
        let hit = self.probe_l1(id, Instant::now(), self.generation.load(Ordering::Relaxed));
        if hit.is_some() {
            self.metrics.l1_hits.increment(1);
        }
        hit
    }

    /// Counts `n` lookups shed before they reached [`Members::get`] (they missed L1,
    /// and L1 did not answer them: the hit ratio stays the share L1 answered).
    pub fn count_shed_misses(&self, n: u64) {
        self.metrics.l1_misses.increment(n);
    }

    /// An L1 hit as of `now` and `generation`, not counted.
    #[inline]
    fn probe_l1(&self, id: u64, now: Instant, generation: u32) -> Option<Entry> {
        if let Some(slot) = self.l1.get(&id) {
            if slot.expires > now && slot.generation == generation {
                if let Some(entry) = slot.entry {
                    return Some(entry);
                }
            }
        }
        let negative = self.negative.get(&id)?;
        if negative.expires > now && negative.generation == generation {
            return Some(negative.entry);
        }
        None
    }

    /// Looks a member up through L1, L2 and the store.
    pub async fn get(self: &Arc<Self>, id: u64) -> Result<(Entry, ServedFrom), LookupError> {
        if let Some(entry) = self.get_l1(id) {
            return Ok((entry, ServedFrom::L1));
        }
        self.metrics.l1_misses.increment(1);
        let (load, leader) = {
            let mut loading = self.stripe(id);
            match loading.get(&id) {
                Some(load) => (load.clone(), false),
                None => {
                    // A load may have finished between the L1 miss above and taking
                    // the stripe (it fills L1 under this lock): look again first.
                    if let Some(entry) = self.get_l1(id) {
                        return Ok((entry, ServedFrom::L1));
                    }
                    let load = Arc::new(Load {
                        result: watch::channel(None).0,
                    });
                    loading.insert(id, load.clone());
                    (load, true)
                }
            }
        };
        let mut rx = load.result.subscribe();
        if leader {
            // A task of its own, traced under the request that started it (misses
            // only: the spans below are DEBUG, free unless a layer wants them).
            tokio::spawn(
                self.clone()
                    .run_load(id, load)
                    .instrument(tracing::debug_span!("member_load")),
            );
        } else {
            self.metrics.l1_coalesced.increment(1);
        }
        // The load task always sends a result before it ends.
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        let entry = result.unwrap_or(Err(LookupError::Timeout(self.limits.wait)))?;
        let origin = entry.origin;
        Ok((entry, origin))
    }

    /// The load of one member, its result kept (if still current) and sent to every
    /// request waiting for it.
    async fn run_load(self: Arc<Self>, id: u64, load: Arc<Load>) {
        let generation = self.generation.load(Ordering::Acquire);
        let floor = self.l1.peek(&id).map(|s| s.floor).unwrap_or(0);
        let result = match tokio::time::timeout(self.limits.wait, self.load(id, floor)).await {
            Ok(r) => r,
            Err(_) => Err(LookupError::Timeout(self.limits.wait)),
        };
        self.settle(id, generation, &result);
        load.result.send_replace(Some(result));
    }

    /// Ends the load of `id`, begun under L1 generation `generation`: keeps its result
    /// in L1 unless an event raised the member's floor above it meanwhile, or a gap
    /// started a new generation (then it is answered but not kept). One rule for
    /// single and batch loads, so a batch can never install what a single load would
    /// not.
    fn settle(&self, id: u64, generation: u32, result: &LoadResult) {
        let mut loading = self.stripe(id);
        loading.remove(&id);
        let Ok(entry) = result else { return };
        if entry.is_unreadable() {
            // Read again each time (bounded by the fill permits): a fix shows at once.
            return;
        }
        let current = self.l1.peek(&id);
        let floor_now = current.as_ref().map(|s| s.floor).unwrap_or(0);
        let kept =
            entry.version >= floor_now && generation == self.generation.load(Ordering::Acquire);
        let generation_now = self.generation.load(Ordering::Acquire);
        if entry.member.is_some() {
            self.l1.insert(
                id,
                Slot {
                    // Not kept: what it read may be older than an event that came
                    // meanwhile, or than a gap; nothing held is served.
                    entry: kept.then(|| entry.clone()),
                    floor: floor_now.max(entry.version),
                    expires: Instant::now() + self.ttl,
                    generation: generation_now,
                },
            );
        } else {
            // "No such member" goes to the negative cache; the records' cache is
            // touched only to keep a floor it already holds.
            if let Some(slot) = current {
                self.l1.insert(
                    id,
                    Slot {
                        entry: None,
                        floor: floor_now.max(entry.version),
                        ..slot
                    },
                );
            }
            if kept {
                self.negative.insert(
                    id,
                    Negative {
                        entry: entry.clone(),
                        expires: Instant::now() + self.negative_ttl,
                        generation: generation_now,
                    },
                );
            }
        }
    }

    /// Looks many members up at once, answering in the order of `ids` (a repeated id
    /// is looked up once and answered each time it appears). L1 hits answer at once;
    /// a miss another request is already loading waits for that load (coalescing
    /// both ways: single lookups that miss meanwhile wait for the batch's load). The
    /// rest are loaded together: one round trip per Redis node holding any of them
    /// (per zone read), then one store query for what no zone had, each result kept
    /// by the same floor and generation rules as a single load ([`Members::settle`]).
    /// Fails, as a single lookup would, if any member could not be read.
    pub async fn get_many(
        self: &Arc<Self>,
        ids: &[u64],
    ) -> Result<Vec<(Entry, ServedFrom)>, LookupError> {
        let l1 = self.get_many_l1(ids);
        self.get_many_after(ids, l1).await
    }

    /// The L1 pass of a batch: each id's hit, or `None`. A caller that answers
    /// all-hit batches at once (no waiting, so not under the waiting limit) hands
    /// this to [`Members::get_many_after`] otherwise, so no id is looked up twice.
    pub fn get_many_l1(&self, ids: &[u64]) -> Vec<Option<Entry>> {
        // The clock read and the hit counted once a batch, not once an id (~30
        // instructions a member each, callgrind).
        let (now, generation) = (Instant::now(), self.generation.load(Ordering::Relaxed));
        let found: Vec<Option<Entry>> = ids
            .iter()
            .map(|id| self.probe_l1(*id, now, generation))
            .collect();
        let hits = found.iter().filter(|e| e.is_some()).count();
        self.metrics.l1_hits.increment(hits as u64);
        found
    }

    /// [`Members::get_many`] after its L1 pass (`l1`, one per id of `ids`).
    pub async fn get_many_after(
        self: &Arc<Self>,
        ids: &[u64],
        l1: Vec<Option<Entry>>,
    ) -> Result<Vec<(Entry, ServedFrom)>, LookupError> {
        let mut answers: Vec<Option<(Entry, ServedFrom)>> = Vec::with_capacity(ids.len());
        let mut waits: HashMap<u64, watch::Receiver<Option<LoadResult>>> = HashMap::new();
        let mut led: Vec<(u64, Arc<Load>)> = Vec::new();
        for (&id, hit) in ids.iter().zip(l1) {
            if let Some(entry) = hit {
                answers.push(Some((entry, ServedFrom::L1)));
                continue;
            }
            if waits.contains_key(&id) {
                answers.push(None);
                continue;
            }
            self.metrics.l1_misses.increment(1);
            let load = {
                let mut loading = self.stripe(id);
                match loading.get(&id) {
                    Some(load) => {
                        self.metrics.l1_coalesced.increment(1);
                        load.clone()
                    }
                    None => {
                        // As in `get`: a load may have finished since the miss above.
                        if let Some(entry) = self.get_l1(id) {
                            answers.push(Some((entry, ServedFrom::L1)));
                            continue;
                        }
                        let load = Arc::new(Load {
                            result: watch::channel(None).0,
                        });
                        loading.insert(id, load.clone());
                        led.push((id, load.clone()));
                        load
                    }
                }
            };
            waits.insert(id, load.result.subscribe());
            answers.push(None);
        }
        if !led.is_empty() {
            // A task of its own, as a single load is: a request that gives up never
            // strands the others waiting on these members.
            tokio::spawn(self.clone().run_batch_load(led));
        }
        let mut loaded: HashMap<u64, Entry> = HashMap::with_capacity(waits.len());
        for (id, mut rx) in waits {
            // The load task always sends a result before it ends.
            let result = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                Err(_) => None,
            };
            let entry = result.unwrap_or(Err(LookupError::Timeout(self.limits.wait)))?;
            loaded.insert(id, entry);
        }
        ids.iter()
            .zip(answers)
            .map(|(id, answer)| match answer {
                Some(hit) => Ok(hit),
                None => {
                    // Every id without an answer above was given a load to wait for.
                    let entry = loaded
                        .get(id)
                        .cloned()
                        .ok_or(LookupError::Timeout(self.limits.wait))?;
                    let origin = entry.origin;
                    Ok((entry, origin))
                }
            })
            .collect()
    }

    /// The members L1 serves now (records, not floors alone; current generation, not
    /// expired): what a restart loads back ([`warm`], [`Members::load_back`]).
    pub fn held_ids(&self) -> Vec<u64> {
        let (now, generation) = (Instant::now(), self.generation.load(Ordering::Relaxed));
        self.l1
            .iter()
            .filter(|(_, s)| s.entry.is_some() && s.expires > now && s.generation == generation)
            .map(|(id, _)| id)
            .collect()
    }

    /// Loads `ids` into L1 as one batch of misses would (L2, then one store query;
    /// the same floor and generation rules), but counted as no lookup: nobody asked.
    /// Members in L1 or being loaded already are skipped. Returns how many it loaded.
    pub async fn load_back(self: &Arc<Self>, ids: &[u64]) -> usize {
        let (now, generation) = (Instant::now(), self.generation.load(Ordering::Relaxed));
        let mut led: Vec<(u64, Arc<Load>)> = Vec::new();
        for &id in ids {
            if self.probe_l1(id, now, generation).is_some() {
                continue;
            }
            let mut loading = self.stripe(id);
            if loading.contains_key(&id) {
                continue;
            }
            let load = Arc::new(Load {
                result: watch::channel(None).0,
            });
            loading.insert(id, load.clone());
            led.push((id, load));
        }
        let n = led.len();
        if n > 0 {
            // A task of its own, as any load: requests that meet these loads wait for
            // them, and must not be stranded if the caller stops waiting.
            let _ = tokio::spawn(self.clone().run_batch_load(led)).await;
        }
        n
    }

    /// The loads a batch leads, run together; each result kept (if still current) and
    /// sent to every request waiting for that member.
    async fn run_batch_load(self: Arc<Self>, led: Vec<(u64, Arc<Load>)>) {
        let generation = self.generation.load(Ordering::Acquire);
        let wanted: Vec<(u64, i64)> = led
            .iter()
            .map(|(id, _)| (*id, self.l1.peek(id).map(|s| s.floor).unwrap_or(0)))
            .collect();
        // Timed out: every id is answered as such below.
        let mut results = tokio::time::timeout(self.limits.wait, self.load_many(&wanted))
            .await
            .unwrap_or_default();
        for (id, load) in led {
            let result = results
                .remove(&id)
                .unwrap_or(Err(LookupError::Timeout(self.limits.wait)));
            self.settle(id, generation, &result);
            load.result.send_replace(Some(result));
        }
    }

    /// L1 misses of a batch, each with its floor: the tier (one round trip per node
    /// per zone read), then one store query for the rest, filling every zone with
    /// what the store had. Every id of `wanted` gets a result.
    async fn load_many(self: &Arc<Self>, wanted: &[(u64, i64)]) -> HashMap<u64, LoadResult> {
        let mut out: HashMap<u64, LoadResult> = HashMap::with_capacity(wanted.len());
        if let Some(tier) = &self.tier {
            for (id, entry) in tier.get_many(wanted).await {
                let version = entry.version();
                let member = match entry {
                    TierEntry::Member(m) => Some(m),
                    TierEntry::Gone { .. } => None,
                };
                out.insert(
                    id,
                    Ok(Arc::new(Cached::new(member, version, ServedFrom::L2))),
                );
            }
        }
        let rest: Vec<(u64, i64)> = wanted
            .iter()
            .filter(|(id, _)| !out.contains_key(id))
            .copied()
            .collect();
        if rest.is_empty() {
            return out;
        }
        // One permit for the one query: a batch weighs on the store as one read.
        let permit = match self.fill_permit().await {
            Some(p) => p,
            None => {
                let e = LookupError::Overloaded(self.limits.max_in_flight);
                out.extend(rest.iter().map(|(id, _)| (*id, Err(e.clone()))));
                return out;
            }
        };
        self.store_reads.fetch_add(1, Ordering::Relaxed);
        self.metrics.store_reads.increment(1);
        // As in `load`: the query holds the permit until the store has answered.
        let store = self.store.clone();
        let ids: Vec<u64> = rest.iter().map(|(id, _)| *id).collect();
        let read = tokio::spawn(async move {
            let _permit = permit;
            store.members_by_ids(ids).await
        });
        let rows = match read.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Task(format!("member batch read: {e}"))),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.metrics.store_errors.increment(1);
                let e = LookupError::Store(Arc::new(e));
                out.extend(rest.iter().map(|(id, _)| (*id, Err(e.clone()))));
                return out;
            }
        };
        let mut found: HashMap<u64, Member> = HashMap::with_capacity(rows.len());
        for row in rows {
            match row {
                Ok(m) => {
                    found.insert(m.id, m);
                }
                // An unreadable row is an answer of its own for that member, never "no
                // such member", and never the batch's failure.
                Err(bad) => {
                    out.insert(bad.id, Ok(Arc::new(Cached::unreadable(ServedFrom::Store))));
                }
            }
        }
        if let Some(tier) = &self.tier {
            // Fill every zone, versioned (never replacing a newer value); unknown ids
            // are not written, as for a single load.
            let entries: Vec<(u64, TierEntry)> = found
                .values()
                .map(|m| (m.id, TierEntry::Member(m.clone())))
                .collect();
            if !entries.is_empty() {
                let tier = tier.clone();
                tokio::spawn(async move {
                    for zone in 0..tier.zones.len() {
                        let failed = tier.set_many_in(zone, &entries).await;
                        if !failed.is_empty() {
                            tracing::debug!(zone, members = failed.len(), "tier fill failed");
                        }
                    }
                });
            }
        }
        for (id, floor) in rest {
            if out.contains_key(&id) {
                continue;
            }
            let member = found.remove(&id);
            // As in `load`: a member the store lacks is gone as of every deletion heard of.
            let version = member.as_ref().map_or(floor, |m| m.version);
            out.insert(
                id,
                Ok(Arc::new(Cached::new(member, version, ServedFrom::Store))),
            );
        }
        out
    }

    /// An L1 miss: the tier (at or above `floor`), then the store (filling the tier).
    async fn load(&self, id: u64, floor: i64) -> LoadResult {
        if let Some(tier) = &self.tier {
            if let Some(entry) = tier
                .get(id, floor)
                .instrument(tracing::debug_span!("redis.get"))
                .await
            {
                let version = entry.version();
                let member = match entry {
                    TierEntry::Member(m) => Some(m),
                    TierEntry::Gone { .. } => None,
                };
                return Ok(Arc::new(Cached::new(member, version, ServedFrom::L2)));
            }
        }
        let Some(permit) = self.fill_permit().await else {
            return Err(LookupError::Overloaded(self.limits.max_in_flight));
        };
        self.store_reads.fetch_add(1, Ordering::Relaxed);
        self.metrics.store_reads.increment(1);
        // The read runs as a task of its own that holds the permit until the store
        // has answered: a lookup that times out stops waiting, but its query still
        // runs in the store (until `store_statement_timeout`), and still counts
        // against `l2.max_store_fills`.
        let store = self.store.clone();
        let read = tokio::spawn(
            async move {
                let _permit = permit;
                store.get_member(id).await
            }
            .instrument(tracing::debug_span!("store.read_member")),
        );
        let read = match read.await {
            Ok(r) => r,
            // The read task panicked: report it as a store failure, not a crash.
            Err(e) => Err(StoreError::Task(format!("member read: {e}"))),
        };
        let member = match read {
            Ok(m) => m,
            // The row is there and cannot be read: an answer of its own (quarantined
            // by the store), not a failure a retry could cure.
            Err(StoreError::BadRow(_)) => {
                return Ok(Arc::new(Cached::unreadable(ServedFrom::Store)))
            }
            Err(e) => {
                self.metrics.store_errors.increment(1);
                return Err(LookupError::Store(Arc::new(e)));
            }
        };
        if let (Some(tier), Some(m)) = (&self.tier, &member) {
            // Fill every zone; versioned, so this never replaces a newer value. A
            // member the store does not have is not written at all: unknown ids cost
            // the tier nothing (a deletion's tombstone is the relay's to write).
            let entry = TierEntry::Member(m.clone());
            let tier = tier.clone();
            tokio::spawn(
                async move {
                    for (zone, e) in tier.set_all(id, &entry).await {
                        tracing::debug!(zone, error = %e, "tier fill failed");
                    }
                }
                .instrument(tracing::debug_span!("redis.fill")),
            );
        }
        // The store is the truth: a member it does not have is gone at least as of
        // every deletion this node has heard of.
        let version = member.as_ref().map_or(floor, |m| m.version);
        Ok(Arc::new(Cached::new(member, version, ServedFrom::Store)))
    }

    /// Puts a record into L1 as if it had just been read from the store (benchmarks).
    /// Nothing checks it against the store.
    pub fn preload(&self, member: Member) {
        let (id, version) = (member.id, member.version);
        self.l1.insert(
            id,
            Slot {
                entry: Some(Arc::new(Cached::new(
                    Some(member),
                    version,
                    ServedFrom::Store,
                ))),
                floor: version,
                expires: Instant::now() + self.ttl,
                generation: self.generation.load(Ordering::Acquire),
            },
        );
    }

    /// A change event: the member is at `version` now. Drops an older entry (an entry
    /// as new or newer stays: the event is a duplicate or old) and raises the floor,
    /// so a load in flight that read something older is not kept.
    pub fn invalidate(&self, id: u64, version: i64) {
        let loading = self.stripe(id);
        // A change to an id answered "no such member" (an insert): drop that answer.
        if self
            .negative
            .peek(&id)
            .is_some_and(|n| n.entry.version < version)
        {
            self.negative.remove(&id);
            self.metrics.l1_invalidations.increment(1);
        }
        let current = self.l1.peek(&id);
        let in_flight = loading.contains_key(&id);
        let generation = self.generation.load(Ordering::Acquire);
        match current {
            Some(slot)
                if slot.generation == generation
                    && slot.entry.as_ref().is_some_and(|e| e.version >= version) => {}
            Some(slot) => {
                self.l1.insert(
                    id,
                    Slot {
                        entry: None,
                        floor: slot.floor.max(version),
                        expires: slot.expires,
                        generation,
                    },
                );
                self.metrics.l1_invalidations.increment(1);
            }
            // Not held: nothing to drop, and nothing answered to stay above; a load
            // in flight must not keep what it read, though.
            None if in_flight => {
                self.l1.insert(
                    id,
                    Slot {
                        entry: None,
                        floor: version,
                        expires: Instant::now() + self.ttl,
                        generation,
                    },
                );
                self.metrics.l1_invalidations.increment(1);
            }
            None => {}
        }
        drop(loading);
    }

    /// What L1 holds for a member, read without counting a hit or touching its
    /// eviction state (the admin endpoint `inspect`).
    pub fn l1_view(&self, id: u64) -> L1View {
        let now = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let slot = self.l1.peek(&id);
        let negative = self.negative.peek(&id);
        let floor = slot.as_ref().map(|s| s.floor);
        if let Some(slot) = slot {
            if let Some(entry) = slot.entry {
                return L1View {
                    served: slot.expires > now && slot.generation == generation,
                    expires_in: slot.expires.saturating_duration_since(now),
                    entry: Some(entry),
                    floor,
                };
            }
        }
        match negative {
            Some(n) => L1View {
                served: n.expires > now && n.generation == generation,
                expires_in: n.expires.saturating_duration_since(now),
                entry: Some(n.entry),
                floor,
            },
            None => L1View {
                entry: None,
                floor,
                served: false,
                expires_in: Duration::ZERO,
            },
        }
    }

    /// Drops a member's entry (record or "no such member") and sets its floor to
    /// `floor`, the store's version just read (the admin endpoint `flush`). The floor
    /// is *set*, not raised: the operator names the store as the truth, even below a
    /// version this node answered (a corrupt value). A load in flight that read
    /// anything older than `floor` is answered but not kept. Returns whether an
    /// entry was held.
    pub fn flush(&self, id: u64, floor: i64) -> bool {
        let _loading = self.stripe(id);
        let negative = self.negative.remove(&id).is_some();
        let held = self.l1.peek(&id).is_some_and(|s| s.entry.is_some());
        self.l1.insert(
            id,
            Slot {
                entry: None,
                floor,
                expires: Instant::now() + self.ttl,
                generation: self.generation.load(Ordering::Acquire),
            },
        );
        self.metrics.l1_invalidations.increment(1);
        held || negative
    }

    /// Drops every entry (the node cannot prove it saw every change): a new
    /// generation, so every entry is a miss; floors stay, and loads in flight are
    /// answered but not kept.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.l1_flushes.increment(1);
    }

    /// How many store reads this instance has made.
    /// The store members are read from (the admin endpoints read it directly).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The L2 tier, if Redis is configured (the admin endpoints read every zone).
    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref()
    }

    pub fn store_reads(&self) -> u64 {
        self.store_reads.load(Ordering::Relaxed)
    }

    /// Records and floors currently held (expired, dropped and old-generation ones included until
    /// they are evicted or replaced).
    pub fn len(&self) -> u64 {
        self.l1.len() as u64
    }

    /// "No such member" answers held (in their own cache).
    pub fn negative_len(&self) -> u64 {
        self.negative.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
