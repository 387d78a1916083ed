//! The store's change log: what a committed change looks like ([`ChangeEvent`]), where
//! a reader stands in the log ([`Position`]), and the reader that never skips a
//! committed change ([`ChangeReader`]).
//!
//! **SQLite** has one writer at a time and assigns `change_log.seq` inside the
//! writing transaction, so sequence order is commit order: the reader keeps the last
//! `seq` it applied and asks for rows after it.
//!
//! **PostgreSQL** hands out `seq` values when rows are inserted, not when their
//! transactions commit, so sequence order is *not* commit order: a transaction that
//! took `seq = 5` and commits three seconds later becomes visible after `seq = 6` was
//! already read. A reader that kept "the highest seq seen" would skip 5 forever. So
//! every change-log row also records its transaction id (`txid`), and the reader
//! keeps a position in transaction ids, from PostgreSQL's own snapshots
//! ([`PgPosition`]):
//!
//! - `xmax`: every transaction below it that is not `pending` has ended, and its rows
//!   have all been read;
//! - `pending`: transactions below `xmax` that were still running at the last look
//!   (`pg_snapshot_xip`); a transaction's rows all become visible when it commits.
//!
//! A read takes a snapshot `S` (`xmax_S`, running set `R`) and delivers the rows of
//! every transaction that has ended since the last look: those in `pending` but not
//! in `R`, and those in `[xmax, xmax_S)` not in `R`. That set is fixed (ended
//! transactions write no more rows), so it can be read in pages of at most [`PAGE`]
//! rows over several calls, each page resuming after the last `(txid, seq)` delivered
//! (the position's `scan`). When the last page is read the position becomes
//! `(xmax_S, R)`. Every row is read once; a transaction that stays open only stays in
//! `pending` (it costs an indexed lookup per read, not a re-scan of what committed
//! since), and a session that is idle in a transaction without having written holds
//! nothing back at all. The position is serialized (the relay saves it with a fenced
//! write); resuming from it re-delivers at most the page in flight.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{blocking, StoreError};

/// One committed change, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The change-log row's `seq` (unique; commit order only on SQLite).
    pub seq: u64,
    pub kind: ChangeKind,
    /// Commit time in milliseconds since the Unix epoch (store clock).
    pub changed_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A member row was inserted, updated or deleted; `version` is its new version
    /// (for a deletion, the version of the tombstone).
    Member {
        id: u64,
        version: i64,
        deleted: bool,
    },
    /// A catalog table changed (`plans`, `plan_prices` or a pricing rule's table):
    /// the catalog version rose.
    Catalog { version: u64 },
    /// Members were bulk-loaded without per-row events (`seed`): forget all of them.
    MembersReseeded,
}

impl ChangeKind {
    /// The kind of one change-log row, as both stores' triggers write them. A row this
    /// build does not understand is treated as "forget every member": safe, if costly.
    pub fn from_log_row(
        table: &str,
        op: &str,
        member: Option<i64>,
        version: Option<i64>,
    ) -> ChangeKind {
        match (table, op, member) {
            ("memberships", "reseed", _) => ChangeKind::MembersReseeded,
            ("memberships", op, Some(id)) => ChangeKind::Member {
                id: id as u64,
                version: version.unwrap_or(0),
                deleted: op == "delete",
            },
            (
                "plans" | "plan_prices" | "scheduled_prices" | "experiments" | "experiment_cells"
                | "experiment_prices" | "partner_offers",
                _,
                _,
            ) => ChangeKind::Catalog {
                version: version.unwrap_or(0) as u64,
            },
            _ => ChangeKind::MembersReseeded,
        }
    }
}

/// One read from a change source (the log here, or the change stream).
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub events: Vec<ChangeEvent>,
    /// The source cannot prove that nothing was missed before these events.
    pub gap: bool,
    /// Another read would return more at once.
    pub more: bool,
    /// How many changes are known to be waiting beyond this batch, if the source knows.
    pub behind: Option<u64>,
}

/// What a follower needs to know about the SQLite log besides the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogState {
    /// Highest position written so far.
    pub head: u64,
    /// Every position at or below this one has been trimmed away.
    pub trimmed_through: u64,
}

/// Where a reader stands in the SQLite log: every row up to `seq` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlitePosition {
    pub seq: u64,
}

/// Where a reader stands in the PostgreSQL log (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgPosition {
    /// Every transaction below it, except the `pending` ones, has been read.
    pub xmax: i64,
    /// Transactions below `xmax` still running at the last look.
    #[serde(default)]
    pub pending: Vec<i64>,
    /// A read towards a newer snapshot, delivered up to a row.
    #[serde(default)]
    pub scan: Option<PgScan>,
}

/// A read in progress, towards snapshot `(xmax, running)`: rows up to `after`
/// (`(txid, seq)`) have been delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgScan {
    pub xmax: i64,
    pub running: Vec<i64>,
    pub after: (i64, i64),
}

impl PgPosition {
    /// The lowest transaction whose rows may still be unread: everything below it has
    /// been read, so the log may be trimmed below it.
    pub fn low_water(&self) -> i64 {
        self.pending.iter().copied().fold(self.xmax, i64::min)
    }

    /// A position at a snapshot: nothing before it is wanted.
    pub fn at(xmax: i64, running: Vec<i64>) -> PgPosition {
        PgPosition {
            xmax,
            pending: running,
            scan: None,
        }
    }
}

/// A durable position in the change log: a reader resumed from it loses nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Sqlite(SqlitePosition),
    Postgres(PgPosition),
}

impl Position {
    /// One ever-rising number for gauges and for tests that wait for a reader.
    pub fn progress(&self) -> u64 {
        match self {
            Position::Sqlite(p) => p.seq,
            Position::Postgres(p) => p.low_water().max(0) as u64,
        }
    }
}

/// Most rows one read returns: bounds the work (and the relay's step) per batch.
pub const PAGE: usize = 1000;

/// Reads the change log in an order that never skips a committed change.
pub struct ChangeReader {
    inner: Reader,
}

enum Reader {
    Sqlite {
        store: Arc<SqliteStore>,
        /// `None` until learned: the first read then reports a gap.
        position: Option<SqlitePosition>,
    },
    Postgres {
        store: Arc<PgStore>,
        /// `None` until learned: the first read then reports a gap.
        position: Option<PgPosition>,
    },
}

impl ChangeReader {
    pub(super) fn sqlite(
        store: Arc<SqliteStore>,
        position: Option<SqlitePosition>,
    ) -> ChangeReader {
        ChangeReader {
            inner: Reader::Sqlite { store, position },
        }
    }

    pub(super) fn postgres(store: Arc<PgStore>, position: Option<PgPosition>) -> ChangeReader {
        ChangeReader {
            inner: Reader::Postgres { store, position },
        }
    }

    /// The durable position reached; `None` before the first read of a reader whose
    /// start was unknown.
    pub fn position(&self) -> Option<Position> {
        match &self.inner {
            Reader::Sqlite { position, .. } => position.map(Position::Sqlite),
            Reader::Postgres { position, .. } => position.clone().map(Position::Postgres),
        }
    }

    /// The next changes (at most [`PAGE`]), in an order that never skips one; `more`
    /// says another read would return more at once. A failed read changes nothing.
    pub async fn next_batch(&mut self) -> Result<ChangeBatch, StoreError> {
        match &mut self.inner {
            Reader::Sqlite { store, position } => {
                let from = position.map(|p| p.seq).unwrap_or(0);
                let (events, state) = blocking(store, move |s| s.changes_after(from, PAGE)).await?;
                // An unknown start re-reads the retained log and reports a gap.
                let mut gap = position.is_none();
                let mut reached = from;
                if state.trimmed_through > reached {
                    gap = true;
                    reached = state.trimmed_through;
                }
                if let Some(last) = events.last() {
                    reached = reached.max(last.seq);
                }
                *position = Some(SqlitePosition { seq: reached });
                Ok(ChangeBatch {
                    more: events.len() == PAGE,
                    gap,
                    behind: Some(state.head.saturating_sub(reached)),
                    events,
                })
            }
            Reader::Postgres { store, position } => {
                let Some(pos) = position.as_ref() else {
                    let (xmax, running) = store.snapshot().await?;
                    *position = Some(PgPosition::at(xmax, running));
                    return Ok(ChangeBatch {
                        gap: true,
                        ..ChangeBatch::default()
                    });
                };
                let mut next = pos.clone();
                let mut gap = false;
                let scan = match next.scan.take() {
                    Some(scan) => scan,
                    None => {
                        let (xmax, running) = store.snapshot().await?;
                        // Rows this reader still needs may have been trimmed away.
                        if store.trim_point().await?.missed_by(&next) {
                            gap = true;
                        }
                        PgScan {
                            xmax,
                            running,
                            after: (i64::MIN, i64::MIN),
                        }
                    }
                };
                let ended: Vec<i64> = next
                    .pending
                    .iter()
                    .copied()
                    .filter(|t| !scan.running.contains(t))
                    .collect();
                let rows = store.changes_between(&next, &ended, &scan, PAGE).await?;
                let full = rows.len() == PAGE;
                let mut events = Vec::with_capacity(rows.len());
                let mut after = scan.after;
                for (txid, ev) in rows {
                    after = (txid, ev.seq as i64);
                    events.push(ev);
                }
                if full {
                    next.scan = Some(PgScan { after, ..scan });
                } else {
                    next = PgPosition::at(scan.xmax.max(next.xmax), scan.running);
                }
                *position = Some(next);
                Ok(ChangeBatch {
                    more: full,
                    gap,
                    behind: None,
                    events,
                })
            }
        }
    }
}

/// Trims the change log of rows older than the retention, at most once a minute:
/// the one schedule the embedded node and the relay both follow.
pub struct TrimSchedule {
    retention: std::time::Duration,
    last: std::time::Instant,
}

impl TrimSchedule {
    /// How often a trim runs.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// A schedule for `changes.retention` (zero: never trim).
    pub fn new(retention: std::time::Duration) -> TrimSchedule {
        TrimSchedule {
            retention,
            last: std::time::Instant::now(),
        }
    }

    /// Trims if a minute has passed since the last trim, never past `reached` (the
    /// position everything below which has been read); failures are logged.
    pub async fn tick(&mut self, store: &super::Store, reached: Option<&Position>) {
        if self.retention.is_zero() || self.last.elapsed() < Self::EVERY {
            return;
        }
        self.last = std::time::Instant::now();
        let cutoff = super::now_ms() - self.retention.as_millis() as i64;
        match store.trim_changes(cutoff, reached).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "trimmed the change log"),
            Err(e) => tracing::warn!(error = %e, "trimming the change log failed"),
        }
    }
}

/// Longest wait between two failed reads of the change source (the follower's and
/// the relay's: the one backoff both follow, so a fleet does not retry in step).
const RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// The wait after the `failures`-th failed read in a row: 10 ms doubling to
/// [`RETRY_MAX`], each between half and all of that (jitter).
pub fn retry_delay(failures: u32) -> std::time::Duration {
    let full = std::time::Duration::from_millis(10)
        .saturating_mul(1 << failures.min(10))
        .min(RETRY_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    full / 2 + full.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_back_off_with_jitter_up_to_the_cap() {
        assert!(retry_delay(1) <= Duration::from_millis(20));
        assert!(retry_delay(1) >= Duration::from_millis(10));
        for f in 7..40 {
            let d = retry_delay(f);
            assert!(d >= RETRY_MAX / 2 && d <= RETRY_MAX, "{f}: {d:?}");
        }
    }
}
