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
//! every change-log row also records its transaction id (`txid`), and the reader keeps
//! a *horizon* instead of a seq:
//!
//! - `pg_snapshot_xmin(pg_current_snapshot())` is the oldest transaction still running;
//!   every transaction below it has ended, so all of its rows that will ever exist are
//!   visible now. Call it `h`.
//! - Each read takes `h` first, then reads every row with `txid >= cursor` in
//!   `(txid, seq)` order, delivering those not yet delivered (a set of seqs, kept only
//!   for rows at or above the cursor). Rows of transactions that committed early are
//!   delivered at once, even while an older transaction is still open.
//! - Afterwards `cursor = h`: every row below `h` has now been read, so the set can
//!   forget them. The cursor is the durable position (the relay saves it); restarting
//!   from it re-delivers at most the rows at or above it, which is harmless because
//!   every consumer applies events idempotently.
//!
//! A long-open writing transaction therefore holds the cursor back (and makes each
//! read re-scan the rows committed since), but never loses a change.

use std::collections::HashMap;
use std::sync::Arc;

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
    /// `plans` or `plan_prices` changed: the catalog version rose.
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
            ("plans" | "plan_prices", _, _) => ChangeKind::Catalog {
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

/// Where a reader stands in the PostgreSQL log: every row of a transaction below
/// `horizon` is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgPosition {
    pub horizon: i64,
}

/// A durable position in the change log: a reader resumed from it loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Sqlite(SqlitePosition),
    Postgres(PgPosition),
}

impl Position {
    /// One ever-rising number for gauges and for tests that wait for a reader.
    pub fn progress(&self) -> u64 {
        match self {
            Position::Sqlite(p) => p.seq,
            Position::Postgres(p) => p.horizon.max(0) as u64,
        }
    }
}

/// Rows read per query.
const PAGE: usize = 5000;

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
        position: Option<PgPosition>,
        /// seq → txid of rows at or above the horizon already delivered.
        delivered: HashMap<i64, i64>,
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
            inner: Reader::Postgres {
                store,
                position,
                delivered: HashMap::new(),
            },
        }
    }

    /// The durable position reached; `None` before the first read of a reader whose
    /// start was unknown.
    pub fn position(&self) -> Option<Position> {
        match &self.inner {
            Reader::Sqlite { position, .. } => position.map(Position::Sqlite),
            Reader::Postgres { position, .. } => position.map(Position::Postgres),
        }
    }

    /// The next changes, in an order that never skips one; `more` says another read
    /// would return more at once.
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
            Reader::Postgres {
                store,
                position,
                delivered,
            } => {
                let horizon = store.horizon().await?;
                let Some(PgPosition { horizon: cursor }) = *position else {
                    *position = Some(PgPosition { horizon });
                    return Ok(ChangeBatch {
                        gap: true,
                        ..ChangeBatch::default()
                    });
                };
                let mut events = Vec::new();
                let mut trimmed_through = 0;
                let (mut from_txid, mut from_seq) = (cursor, i64::MIN);
                loop {
                    let (rows, trimmed) =
                        store.changes_from(from_txid, from_seq, PAGE as i64).await?;
                    trimmed_through = trimmed_through.max(trimmed);
                    let full = rows.len() == PAGE;
                    for (txid, ev) in rows {
                        from_txid = txid;
                        from_seq = ev.seq as i64 + 1;
                        if delivered.insert(ev.seq as i64, txid).is_none() {
                            events.push(ev);
                        }
                    }
                    if !full {
                        break;
                    }
                }
                // Rows this reader still needed (txid >= cursor) may have been deleted.
                let gap = trimmed_through > 0 && trimmed_through >= cursor;
                let next = cursor
                    .max(horizon)
                    .max(if gap { trimmed_through + 1 } else { 0 });
                *position = Some(PgPosition { horizon: next });
                delivered.retain(|_, txid| *txid >= next);
                Ok(ChangeBatch {
                    more: false,
                    gap,
                    behind: None,
                    events,
                })
            }
        }
    }

    /// Rows delivered but still held in memory (rows of transactions at or above the
    /// horizon); grows only while an old writing transaction stays open.
    pub fn pending(&self) -> usize {
        match &self.inner {
            Reader::Sqlite { .. } => 0,
            Reader::Postgres { delivered, .. } => delivered.len(),
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

    /// Trims if a minute has passed since the last trim; failures are logged.
    pub async fn tick(&mut self, store: &super::Store) {
        if self.retention.is_zero() || self.last.elapsed() < Self::EVERY {
            return;
        }
        self.last = std::time::Instant::now();
        let cutoff = super::now_ms() - self.retention.as_millis() as i64;
        match store.trim_changes(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "trimmed the change log"),
            Err(e) => tracing::warn!(error = %e, "trimming the change log failed"),
        }
    }
}
