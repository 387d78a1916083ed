//! Reading and trimming the PostgreSQL change log (see [`crate::store::changes`] for
//! the order the reader guarantees and why it needs the transaction horizon).

use super::PgStore;
use crate::store::{ChangeEvent, ChangeKind, StoreError};

impl PgStore {
    /// The oldest transaction id still running: every transaction below it has ended,
    /// so its change-log rows (if it committed) are all visible now.
    pub async fn horizon(&self) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )
            .await
            .map_err(self.err("read snapshot horizon"))?;
        Ok(row.get(0))
    }

    /// Change-log rows at or after `(txid, seq)` in `(txid, seq)` order, and the
    /// trim point (every row of a transaction below it may be gone).
    pub async fn changes_from(
        &self,
        txid: i64,
        seq: i64,
        limit: i64,
    ) -> Result<(Vec<(i64, ChangeEvent)>, i64), StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT txid, seq, table_name, op, member_id, version,
                        (extract(epoch FROM changed_at) * 1000)::bigint
                   FROM change_log WHERE (txid, seq) >= ($1, $2) ORDER BY txid, seq LIMIT $3",
            )
            .await
            .map_err(self.err("prepare changes"))?;
        let rows = c
            .query(&st, &[&txid, &seq, &limit])
            .await
            .map_err(self.err("read changes"))?;
        let trimmed: i64 = c
            .query_one("SELECT trimmed_through FROM relay_state WHERE id = 1", &[])
            .await
            .map_err(self.err("read trim point"))?
            .get(0);
        let events = rows
            .into_iter()
            .map(|r| {
                let table: String = r.get(2);
                let op: String = r.get(3);
                let member: Option<i64> = r.get(4);
                let version: Option<i64> = r.get(5);
                let kind = ChangeKind::from_log_row(&table, &op, member, version);
                (
                    r.get::<_, i64>(0),
                    ChangeEvent {
                        seq: r.get::<_, i64>(1) as u64,
                        kind,
                        changed_at_ms: r.get(6),
                    },
                )
            })
            .collect();
        Ok((events, trimmed))
    }

    /// Deletes delivered change-log rows older than `older_than_ms`, recording the trim
    /// point so a reader behind it knows it missed changes.
    pub async fn trim_changes(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("trim changes"))?;
        let upto: Option<i64> = tx
            .query_one(
                "SELECT max(txid) FROM change_log
                  WHERE txid < (SELECT cursor_txid FROM relay_state WHERE id = 1)
                    AND changed_at < to_timestamp($1::double precision / 1000)",
                &[&(older_than_ms as f64)],
            )
            .await
            .map_err(self.err("find trim point"))?
            .get(0);
        let Some(upto) = upto else { return Ok(0) };
        let n = tx
            .execute("DELETE FROM change_log WHERE txid <= $1", &[&upto])
            .await
            .map_err(self.err("trim changes"))?;
        tx.execute(
            "UPDATE relay_state SET trimmed_through = GREATEST(trimmed_through, $1) WHERE id = 1",
            &[&upto],
        )
        .await
        .map_err(self.err("record trim"))?;
        tx.commit().await.map_err(self.err("trim commit"))?;
        Ok(n)
    }
}
