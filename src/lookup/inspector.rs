//! The continuous consistency inspector: each node samples a few of its own member
//! answers a second (`inspector.samples_per_second`) and, off the request path, asks
//! the store whether each was already out of date when it was served.
//!
//! **The rule.** An answer of member `m` at version `v`, served at time `t` (this
//! node's clock), is *stale* when the store had a newer version of `m` before `t`:
//! the earliest version above `v` the change log holds was written at `w` with
//! `w + grace <= t`; its age is `t - w`. The store's current version alone cannot
//! decide it: a change committed *after* the answer also makes the store newer, and an
//! answer is not stale for a change it could not have known. So the check reads, in
//! one indexed query ([`crate::store::Store::version_check`]), the member's current
//! version and when the first version above `v` was written:
//! - current version `<= v` (or no member and no logged tombstone): fresh;
//! - newer, and the first newer version written at `w`: stale iff `w + grace <= t`,
//!   age `t - w` (exact while the change log still holds that version, i.e. within
//!   `changes.retention`; past it, the oldest newer version the log still holds gives
//!   a lower bound);
//! - newer, but the log holds no newer version (trimmed, or a bulk `seed`): the row's
//!   own write time (`updated_at`) stands in for `w`, again a lower bound of the age.
//!
//! Why `grace` (`inspector.grace`, 1 s by default): the change log stamps a change when
//! its row is *written*, inside the writer's transaction, not when it commits; the
//! node's clock and the store's may differ; and a change takes some milliseconds to
//! reach every tier by design. `grace` must cover all three, so an answer counted
//! stale is one that was behind the store by more than the tier promises. Its limit:
//! a writing transaction that stays open longer than `grace` after writing a member
//! (or clocks further apart than `grace`) can make a fresh answer count as stale.
//!
//! **Cost on the hot path.** [`Inspector::sample`] is a relaxed load of a budget and a
//! compare with zero while there is nothing to sample; only a sampled answer goes
//! further (claims one unit of the budget, reads the clock and hands `(id, version,
//! time)` to a bounded queue with `try_send`, dropping the sample when it is full). The
//! budget is refilled every [`TICK`] by the inspector's own task, so samples spread
//! over the second instead of being the first answers of each second.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::InspectorConfig;
use crate::store::{now_ms, Store, VersionCheck};
use crate::telemetry::InspectorMetrics;

/// How often the sampling budget is refilled.
const TICK: Duration = Duration::from_millis(100);

/// Sampled answers waiting to be checked; more are dropped (and counted).
const QUEUE: usize = 1024;

/// Longest one check may wait on the store before it counts as an error.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One sampled answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub id: u64,
    /// The version answered (a tombstone's, or 0 for an id the store never had).
    pub version: i64,
    /// When it was answered, in milliseconds since the Unix epoch (this node's clock).
    pub at_ms: i64,
}

/// What a check concluded about one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The answer was the store's version at the moment it was served, or behind it
    /// by less than `grace`.
    Fresh,
    /// The store had a newer version `age_ms` before the answer.
    Stale { age_ms: i64 },
}

/// Decides one answer by the rule in the module comment.
pub fn judge(sample: &Sample, found: &VersionCheck, grace: Duration) -> Verdict {
    if found
        .current()
        .is_none_or(|current| current <= sample.version)
    {
        return Verdict::Fresh;
    }
    let newer_written = found.first_newer_ms.or_else(|| {
        found
            .row_version
            .filter(|v| *v > sample.version)
            .and(found.row_written_ms)
    });
    match newer_written {
        Some(w) if w + grace.as_millis() as i64 <= sample.at_ms => Verdict::Stale {
            age_ms: sample.at_ms - w,
        },
        _ => Verdict::Fresh,
    }
}

/// The counts of one inspector (the metrics are the process's; a process may run
/// several nodes, the tests do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub checked: u64,
    pub stale: u64,
    pub dropped: u64,
    pub errors: u64,
}

/// The sampling budget, alone on its cache line.
#[repr(align(64))]
struct Budget(AtomicU32);

impl std::ops::Deref for Budget {
    type Target = AtomicU32;
    fn deref(&self) -> &AtomicU32 {
        &self.0
    }
}

/// One node's inspector: the sampling handle the request path holds, and the counts.
pub struct Inspector {
    /// Samples still to take before the next refill; the request path does nothing
    /// more than read it while it is zero. On a cache line of its own, so the
    /// counters the checking task writes never evict it from the request path's cores.
    budget: Budget,
    /// Sampled answers to the checking task; bounded, never waited on.
    queue: mpsc::Sender<Sample>,
    /// Budget added per [`TICK`] (fractions carry over to the next).
    per_tick: f64,
    grace: Duration,
    checked: AtomicU64,
    stale: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    metrics: InspectorMetrics,
}

impl Inspector {
    /// An inspector and the queue its checking task reads ([`Inspector::run`]). With
    /// `samples_per_second = 0` nothing is ever sampled.
    pub fn new(cfg: &InspectorConfig) -> (Arc<Inspector>, mpsc::Receiver<Sample>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let inspector = Inspector {
            budget: Budget(AtomicU32::new(0)),
            queue,
            per_tick: cfg.samples_per_second as f64 * TICK.as_secs_f64(),
            grace: cfg.grace,
            checked: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            metrics: InspectorMetrics::register(),
        };
        (Arc::new(inspector), rx)
    }

    /// Whether it samples anything at all.
    pub fn is_on(&self) -> bool {
        self.per_tick > 0.0
    }

    /// Offers an answer for sampling; called for every member answer, so it must stay
    /// a load and a compare when the budget is spent (it almost always is).
    #[inline]
    pub fn sample(&self, id: u64, version: i64) {
        if self.budget.load(Ordering::Relaxed) != 0 {
            self.take(id, version);
        }
    }

    /// The sampled path, kept out of line so the hit path stays small.
    #[cold]
    #[inline(never)]
    fn take(&self, id: u64, version: i64) {
        // Another worker may have taken the last unit since the load above.
        if self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            return;
        }
        let sample = Sample {
            id,
            version,
            at_ms: now_ms(),
        };
        if self.queue.try_send(sample).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.dropped.increment(1);
        }
    }

    /// This inspector's counts so far.
    pub fn counts(&self) -> Counts {
        Counts {
            checked: self.checked.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The checking task: refills the budget every [`TICK`] and checks each sample
    /// against the store, one at a time (a slow store slows sampling down: the budget
    /// is not refilled while a check waits). Ends when `shutdown` is cancelled.
    pub async fn run(
        self: Arc<Self>,
        mut samples: mpsc::Receiver<Sample>,
        store: Store,
        shutdown: CancellationToken,
    ) {
        if !self.is_on() {
            return;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut credit = 0.0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    credit += self.per_tick;
                    let whole = credit.floor();
                    credit -= whole;
                    // Unused budget is not carried over: a quiet node takes no burst.
                    // Stored only when it changes: the line stays shared, unwritten,
                    // on the cores that read it while nothing is sampled.
                    if self.budget.load(Ordering::Relaxed) != whole as u32 {
                        self.budget.store(whole as u32, Ordering::Relaxed);
                    }
                }
                Some(sample) = samples.recv() => self.check(&store, sample).await,
            }
        }
    }

    /// Checks one sample against the store and counts the verdict.
    async fn check(&self, store: &Store, sample: Sample) {
        let read = tokio::time::timeout(
            CHECK_TIMEOUT,
            store.version_check(sample.id, sample.version),
        )
        .await;
        let found = match read {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "inspector check failed");
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.errors.increment(1);
                return;
            }
            Err(_) => {
                tracing::debug!("inspector check timed out");
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.errors.increment(1);
                return;
            }
        };
        self.checked.fetch_add(1, Ordering::Relaxed);
        self.metrics.checked.increment(1);
        if let Verdict::Stale { age_ms } = judge(&sample, &found, self.grace) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            self.metrics.stale.increment(1);
            self.metrics.stale_age.record(age_ms as f64 / 1000.0);
            tracing::debug!(
                member = sample.id,
                answered = sample.version,
                age_ms,
                "inspector: a stale answer"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn sample(version: i64, at_ms: i64) -> Sample {
        Sample {
            id: 7,
            version,
            at_ms,
        }
    }

    fn store(
        row: Option<(i64, i64)>,
        logged: Option<i64>,
        first_newer: Option<i64>,
    ) -> VersionCheck {
        VersionCheck {
            row_version: row.map(|r| r.0),
            row_written_ms: row.map(|r| r.1),
            logged_version: logged,
            first_newer_ms: first_newer,
        }
    }

    #[test]
    fn the_stores_version_or_an_older_one_is_fresh() {
        let s = sample(5, 100_000);
        assert_eq!(
            judge(&s, &store(Some((5, 1_000)), Some(5), None), GRACE),
            Verdict::Fresh
        );
        assert_eq!(
            judge(&s, &store(Some((4, 1_000)), Some(4), None), GRACE),
            Verdict::Fresh
        );
        // An id the store never had, answered "no such member" (version 0).
        assert_eq!(
            judge(&sample(0, 100_000), &store(None, None, None), GRACE),
            Verdict::Fresh
        );
    }

    #[test]
    fn a_newer_version_written_before_the_answer_makes_it_stale_by_its_age() {
        // Versions 6 (written at 40 s) and 7 (at 90 s) above the answered 5, at 100 s.
        let found = store(Some((7, 90_000)), Some(7), Some(40_000));
        assert_eq!(
            judge(&sample(5, 100_000), &found, GRACE),
            Verdict::Stale { age_ms: 60_000 }
        );
        // A deletion: no row, the tombstone logged.
        let gone = store(None, Some(8), Some(50_000));
        assert_eq!(
            judge(&sample(5, 100_000), &gone, GRACE),
            Verdict::Stale { age_ms: 50_000 }
        );
    }

    #[test]
    fn a_change_committed_after_the_answer_or_within_grace_is_not_counted() {
        // Written after the answer was served.
        let later = store(Some((6, 100_500)), Some(6), Some(100_500));
        assert_eq!(judge(&sample(5, 100_000), &later, GRACE), Verdict::Fresh);
        // Written 999 ms before it: still within the grace for commit and propagation.
        let just = store(Some((6, 99_001)), Some(6), Some(99_001));
        assert_eq!(judge(&sample(5, 100_000), &just, GRACE), Verdict::Fresh);
        let past = store(Some((6, 99_000)), Some(6), Some(99_000));
        assert_eq!(
            judge(&sample(5, 100_000), &past, GRACE),
            Verdict::Stale { age_ms: 1_000 }
        );
    }

    #[test]
    fn a_trimmed_log_falls_back_to_the_rows_write_time() {
        let trimmed = store(Some((9, 20_000)), None, None);
        assert_eq!(
            judge(&sample(5, 100_000), &trimmed, GRACE),
            Verdict::Stale { age_ms: 80_000 }
        );
        // A reseed after the answer raised the version: not stale.
        let reseeded = store(Some((9, 200_000)), None, None);
        assert_eq!(judge(&sample(5, 100_000), &reseeded, GRACE), Verdict::Fresh);
    }

    #[tokio::test]
    async fn nothing_is_sampled_without_budget_and_a_full_queue_drops() {
        let (off, _rx) = Inspector::new(&InspectorConfig {
            samples_per_second: 0,
            grace: GRACE,
        });
        assert!(!off.is_on());
        off.sample(1, 1);
        assert_eq!(off.counts(), Counts::default());

        let (on, mut rx) = Inspector::new(&InspectorConfig {
            samples_per_second: 10,
            grace: GRACE,
        });
        on.sample(1, 1);
        assert!(rx.try_recv().is_err(), "no budget before the first tick");
        on.budget.store(QUEUE as u32 + 3, Ordering::Relaxed);
        for id in 1..=(QUEUE as u64 + 3) {
            on.sample(id, 2);
        }
        assert_eq!(on.budget.load(Ordering::Relaxed), 0);
        assert_eq!(on.counts().dropped, 3);
        let first = rx.try_recv().unwrap();
        assert_eq!((first.id, first.version), (1, 2));
        assert!((first.at_ms - now_ms()).abs() < 60_000);
    }
}
