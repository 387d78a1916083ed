//! Reading the store's change log in an order that never skips a committed change.
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

use super::Batch;
use crate::store::{PgStore, SqliteStore, Store, StoreError};

/// Rows read per query.
const PAGE: usize = 5000;

pub enum LogReader {
    Sqlite {
        store: Arc<SqliteStore>,
        position: u64,
    },
    Postgres {
        store: Arc<PgStore>,
        cursor: i64,
        /// seq → txid of rows at or above `cursor` already delivered.
        delivered: HashMap<i64, i64>,
    },
}

impl LogReader {
    /// A reader that delivers every change committed from now on.
    pub async fn at_head(store: &Store) -> Result<LogReader, StoreError> {
        match store {
            Store::Sqlite(s) => {
                let head = crate::store::blocking(s, |s| s.log_state()).await?.head;
                Ok(LogReader::Sqlite {
                    store: s.clone(),
                    position: head,
                })
            }
            Store::Postgres(p) => Ok(LogReader::Postgres {
                cursor: p.horizon().await?,
                store: p.clone(),
                delivered: HashMap::new(),
            }),
        }
    }

    /// A reader whose starting position could not be learned (the store was down when
    /// the node started): its first successful read reports a gap.
    pub fn unknown_position(store: &Store) -> LogReader {
        LogReader::from_cursor(store, -1)
    }

    /// A reader that resumes from a saved cursor (see [`LogReader::cursor`]).
    pub fn from_cursor(store: &Store, cursor: i64) -> LogReader {
        match store {
            Store::Sqlite(s) => LogReader::Sqlite {
                store: s.clone(),
                position: cursor.max(0) as u64,
            },
            Store::Postgres(p) => LogReader::Postgres {
                store: p.clone(),
                cursor,
                delivered: HashMap::new(),
            },
        }
    }

    /// The durable position: resuming from it loses nothing.
    pub fn cursor(&self) -> i64 {
        match self {
            LogReader::Sqlite { position, .. } => *position as i64,
            LogReader::Postgres { cursor, .. } => *cursor,
        }
    }

    /// The next changes, in an order that never skips one; `more` says another read
    /// would return more at once.
    pub async fn next_batch(&mut self) -> Result<Batch, StoreError> {
        match self {
            LogReader::Sqlite { store, position } => {
                let pos = *position;
                // (an unknown start is stored as 0 and re-reads the retained log: safe)
                let (events, state) =
                    crate::store::blocking(store, move |s| s.changes_after(pos, PAGE)).await?;
                let mut gap = false;
                if state.trimmed_through > *position {
                    gap = true;
                    *position = state.trimmed_through;
                }
                if let Some(last) = events.last() {
                    *position = (*position).max(last.seq);
                }
                Ok(Batch {
                    more: events.len() == PAGE,
                    gap,
                    behind: Some(state.head.saturating_sub(*position)),
                    events,
                })
            }
            LogReader::Postgres {
                store,
                cursor,
                delivered,
            } => {
                let horizon = store.horizon().await?;
                if *cursor < 0 {
                    *cursor = horizon;
                    return Ok(Batch {
                        gap: true,
                        ..Batch::default()
                    });
                }
                let mut events = Vec::new();
                let mut trimmed_through = 0;
                let (mut from_txid, mut from_seq) = (*cursor, i64::MIN);
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
                let gap = trimmed_through > 0 && trimmed_through >= *cursor;
                *cursor = (*cursor)
                    .max(horizon)
                    .max(if gap { trimmed_through + 1 } else { 0 });
                let c = *cursor;
                delivered.retain(|_, txid| *txid >= c);
                Ok(Batch {
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
        match self {
            LogReader::Sqlite { .. } => 0,
            LogReader::Postgres { delivered, .. } => delivered.len(),
        }
    }
}
