//! Reading and trimming the embedded store's change log. SQLite assigns `seq` inside
//! the one writing transaction, so `seq` order is commit order here.

use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::store::{ChangeEvent, ChangeKind, LogState, StoreError};

impl SqliteStore {
    fn log_state_in(&self, c: &Connection) -> Result<LogState, StoreError> {
        c.query_row(
            "SELECT (SELECT coalesce(max(seq), 0) FROM change_log),
                    (SELECT trimmed_through FROM change_log_meta WHERE id = 1)",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .map(|(head, trimmed)| LogState {
            head: (head.max(trimmed)) as u64,
            trimmed_through: trimmed as u64,
        })
        .map_err(self.err("read change log state"))
    }

    pub fn log_state(&self) -> Result<LogState, StoreError> {
        self.with_conn(|c| self.log_state_in(c))
    }

    /// Up to `limit` changes after position `seq`, in commit order, and the log state
    /// read in the same transaction.
    pub fn changes_after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<(Vec<ChangeEvent>, LogState), StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("read changes"))?;
            let state = self.log_state_in(&tx)?;
            let mut out = Vec::new();
            {
                let mut st = tx
                    .prepare_cached(
                        "SELECT seq, table_name, op, member_id, version, changed_at_ms
                           FROM change_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )
                    .map_err(self.err("prepare changes"))?;
                let mut rows = st
                    .query(params![seq as i64, limit as i64])
                    .map_err(self.err("read changes"))?;
                while let Some(r) = rows.next().map_err(self.err("read changes"))? {
                    let seq: i64 = r.get(0).map_err(self.err("read change"))?;
                    let table: String = r.get(1).map_err(self.err("read change"))?;
                    let op: String = r.get(2).map_err(self.err("read change"))?;
                    let member: Option<i64> = r.get(3).map_err(self.err("read change"))?;
                    let version: Option<i64> = r.get(4).map_err(self.err("read change"))?;
                    let at: i64 = r.get(5).map_err(self.err("read change"))?;
                    let kind = ChangeKind::from_log_row(&table, &op, member, version);
                    out.push(ChangeEvent {
                        seq: seq as u64,
                        kind,
                        changed_at_ms: at,
                    });
                }
            }
            tx.commit().map_err(self.err("read changes"))?;
            Ok((out, state))
        })
    }

    /// Deletes change-log rows written before `older_than_ms`, recording how far the
    /// log has been trimmed so a follower behind that point knows it missed changes.
    pub fn trim_changes(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("trim changes"))?;
            let upto: Option<i64> = tx
                .query_row(
                    "SELECT max(seq) FROM change_log WHERE changed_at_ms < ?1",
                    [older_than_ms],
                    |r| r.get(0),
                )
                .map_err(self.err("find trim point"))?;
            let Some(upto) = upto else { return Ok(0) };
            let n = tx
                .execute("DELETE FROM change_log WHERE seq <= ?1", [upto])
                .map_err(self.err("trim changes"))?;
            tx.execute(
                "UPDATE change_log_meta SET trimmed_through = max(trimmed_through, ?1) WHERE id = 1",
                [upto],
            )
            .map_err(self.err("record trim"))?;
            tx.commit().map_err(self.err("trim commit"))?;
            Ok(n as u64)
        })
    }
}
