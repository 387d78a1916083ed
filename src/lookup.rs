//! The member lookup service: L1 in-process cache → L2 hash tier (local zone, then the
//! others) → store, with one load per member however many requests miss at once.
//!
//! Rules:
//! - **hit**: the entry (a record, or "no such member") is answered from memory;
//! - **miss**: one load per member however many requests miss at once (the others
//!   wait for it: coalescing) — from the L2 tier if it holds the member, else from the
//!   store (at most `l2.max_store_fills` store reads in flight), filling L2; a found
//!   record is kept for `l1.ttl`, an unknown id for `l1.negative_ttl`;
//! - **stale**: change events drop the entry ([`Members::invalidate`]); a fill that was
//!   in flight while any invalidation happened is not kept, so a read that raced a
//!   commit cannot pin the old value until the TTL;
//! - **expiry**: each entry carries its deadline, checked on read;
//! - **failure**: a store error is answered as an error and nothing is cached.
//!
//! L1 is a `quick_cache` sync cache (bounded, CLOCK-Pro eviction, placeholder guards
//! for coalescing): on the hit path it measured 31 ns against 154 ns for moka's sync
//! cache and 396 ns for moka's async one driven from a future (`cargo bench --bench
//! hot_paths`, "l1 candidates"; docs/PERFORMANCE.md); TTLs are kept in the entry,
//! which quick_cache lacks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use tokio::sync::Semaphore;

use crate::config::L1Config;
use crate::member::Member;
use crate::store::{Store, StoreError};
use crate::telemetry::MemberMetrics;
use crate::tier::{Tier, TierEntry};

/// Where a member answer came from (`x-served-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFrom {
    L1,
    L2,
    Store,
}

impl ServedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedFrom::L1 => "l1",
            ServedFrom::L2 => "l2",
            ServedFrom::Store => "store",
        }
    }
}

/// An L1 entry: a record, or the knowledge that there is none, and where it was
/// loaded from (what a coalesced miss reports).
#[derive(Debug)]
pub struct Cached {
    pub member: Option<Member>,
    pub origin: ServedFrom,
    /// The entitlement answer for this record and the catalog version it was rendered
    /// under, kept with the entry so a hit copies bytes instead of rendering; replaced
    /// when a request finds the catalog has moved on (see `http::render`).
    pub rendered: arc_swap::ArcSwapOption<(u64, bytes::Bytes)>,
}

impl Cached {
    pub fn new(member: Option<Member>, origin: ServedFrom) -> Cached {
        Cached {
            member,
            origin,
            rendered: arc_swap::ArcSwapOption::empty(),
        }
    }
}

pub type Entry = Arc<Cached>;

/// What L1 holds per member: the entry and when it stops being served.
#[derive(Clone)]
struct Slot {
    entry: Entry,
    expires: Instant,
}

/// Why a member could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many store reads in flight ({0}); the tier may be down")]
    Overloaded(usize),
}

/// How many store reads may be in flight, and how long a miss waits for one.
#[derive(Debug, Clone, Copy)]
pub struct FillLimits {
    /// Most store reads in flight (`l2.max_store_fills`): a tier outage cannot
    /// flatten the store.
    pub max_in_flight: usize,
    /// Longest wait for a permit (`http.request_timeout`).
    pub wait: Duration,
}

impl FillLimits {
    /// The limits a configuration sets.
    pub fn of(cfg: &crate::config::Config) -> FillLimits {
        FillLimits {
            max_in_flight: cfg.l2.max_store_fills,
            wait: cfg.http.request_timeout,
        }
    }
}

/// Member lookups: L1, then the L2 hash tier (when configured), then the store.
pub struct Members {
    /// The in-process cache.
    l1: Cache<u64, Slot>,
    /// How long a record is served from L1.
    ttl: Duration,
    /// How long "no such member" is served from L1.
    negative_ttl: Duration,
    /// The source of truth, read on a miss in every tier.
    store: Store,
    /// The L2 hash tier, if Redis is configured.
    tier: Option<Arc<Tier>>,
    /// Bounds concurrent store reads, so an outage of the tier cannot flatten the store.
    fills: Semaphore,
    limits: FillLimits,
    /// Raised by every invalidation; a fill that sees it move drops what it read.
    generation: AtomicU64,
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
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
            store,
            tier,
            fills: Semaphore::new(limits.max_in_flight),
            limits,
            generation: AtomicU64::new(0),
            store_reads: AtomicU64::new(0),
            metrics: MemberMetrics::register(),
        }
    }

    /// An L1 hit, or `None` (the caller then uses [`Members::get`]). Cheaper than
    /// `get` on the hit path: no future, no timer.
    #[inline]
    pub fn get_l1(&self, id: u64) -> Option<Entry> {
        let slot = self.l1.get(&id)?;
        if slot.expires > Instant::now() {
            self.metrics.l1_hits.increment(1);
            Some(slot.entry)
        } else {
            None
        }
    }

    /// Looks a member up through L1, L2 and the store.
    pub async fn get(&self, id: u64) -> Result<(Entry, ServedFrom), LookupError> {
        let now = Instant::now();
        match self.l1.get(&id) {
            Some(slot) if slot.expires > now => {
                self.metrics.l1_hits.increment(1);
                return Ok((slot.entry, ServedFrom::L1));
            }
            Some(_) => {
                // Expired: drop it (unless a fresher one replaced it meanwhile).
                self.l1.remove_if(&id, |s| s.expires <= now);
            }
            None => {}
        }
        self.metrics.l1_misses.increment(1);
        let started_at = self.generation.load(Ordering::Acquire);
        match self.l1.get_value_or_guard_async(&id).await {
            // Another request loaded it while this one waited: coalesced.
            Ok(slot) => {
                self.metrics.l1_coalesced.increment(1);
                let origin = slot.entry.origin;
                Ok((slot.entry, origin))
            }
            Err(guard) => {
                let entry = self.load(id).await?;
                // An invalidation that ran while this load was reading may be for a
                // change the load predates: answer what was read (it was current when
                // read) but do not keep it. Waiters then load again themselves.
                if self.generation.load(Ordering::Acquire) == started_at {
                    let ttl = if entry.member.is_some() {
                        self.ttl
                    } else {
                        self.negative_ttl
                    };
                    let _ = guard.insert(Slot {
                        entry: entry.clone(),
                        expires: Instant::now() + ttl,
                    });
                }
                let origin = entry.origin;
                Ok((entry, origin))
            }
        }
    }

    /// An L1 miss: the tier, then the store (filling the tier).
    async fn load(&self, id: u64) -> Result<Entry, LookupError> {
        if let Some(tier) = &self.tier {
            if let Some(entry) = tier.get(id).await {
                let member = match entry {
                    TierEntry::Member(m) => Some(m),
                    TierEntry::Gone { .. } => None,
                };
                return Ok(Arc::new(Cached::new(member, ServedFrom::L2)));
            }
        }
        let _permit = match tokio::time::timeout(self.limits.wait, self.fills.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return Err(LookupError::Overloaded(self.limits.max_in_flight)),
        };
        self.store_reads.fetch_add(1, Ordering::Relaxed);
        self.metrics.store_reads.increment(1);
        let member = match self.store.get_member(id).await {
            Ok(m) => m,
            Err(e) => {
                self.metrics.store_errors.increment(1);
                return Err(e.into());
            }
        };
        if let Some(tier) = &self.tier {
            // Fill every zone; versioned, so this never replaces a newer value. An
            // unknown member is a tombstone at version 0: any insert outranks it.
            let entry = match &member {
                Some(m) => TierEntry::Member(m.clone()),
                None => TierEntry::Gone { version: 0 },
            };
            let tier = tier.clone();
            tokio::spawn(async move {
                for (zone, e) in tier.set_all(id, &entry).await {
                    tracing::debug!(zone, error = %e, "tier fill failed");
                }
            });
        }
        Ok(Arc::new(Cached::new(member, ServedFrom::Store)))
    }

    /// Puts a record into L1 as if it had just been read from the store (warm starts,
    /// benchmarks). Versioned like a read: nothing checks it against the store.
    pub fn preload(&self, member: Member) {
        let id = member.id;
        self.l1.insert(
            id,
            Slot {
                entry: Arc::new(Cached::new(Some(member), ServedFrom::Store)),
                expires: Instant::now() + self.ttl,
            },
        );
    }

    /// Drops one member's entry (a change event for it arrived).
    pub fn invalidate(&self, id: u64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.l1.remove(&id);
        self.metrics.l1_invalidations.increment(1);
    }

    /// Drops every entry: the node cannot prove it saw every change.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.l1.clear();
        self.metrics.l1_flushes.increment(1);
    }

    /// How many store reads this instance has made.
    pub fn store_reads(&self) -> u64 {
        self.store_reads.load(Ordering::Relaxed)
    }

    /// Entries currently held (expired ones included until they are read or evicted).
    pub fn len(&self) -> u64 {
        self.l1.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
