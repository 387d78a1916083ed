//! Reading and trimming the PostgreSQL change log (see [`crate::store::changes`] for
//! the order the reader guarantees and why it works in transaction ids).

use super::PgStore;
use crate::store::changes::{PgPosition, PgScan};
use crate::store::{ChangeEvent, ChangeKind, StoreError};

const ROW_COLUMNS: &str = "txid, seq, table_name, op, member_id, version,
    (extract(epoch FROM changed_at) * 1000)::bigint";

impl PgStore {
    /// The current snapshot: its `xmax` and the transactions running in it.
    pub(crate) async fn snapshot(&self) -> Result<(i64, Vec<i64>), StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT pg_snapshot_xmax(s)::text::bigint,
                        ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) x)
                   FROM pg_current_snapshot() s",
            )
            .await
            .map_err(self.err("prepare snapshot"))?;
        let row = c
            .query_one(&st, &[])
            .await
            .map_err(self.err("read snapshot"))?;
        Ok((row.get(0), row.get(1)))
    }

    /// Every change-log row of a transaction at or below this is gone (trimmed).
    pub(crate) async fn trimmed_through(&self) -> Result<i64, StoreError> {
        let c = self.client().await?;
        Ok(
            c.query_one("SELECT trimmed_through FROM relay_state WHERE id = 1", &[])
                .await
                .map_err(self.err("read trim point"))?
                .get(0),
        )
    }

    /// Up to `limit` rows, in `(txid, seq)` order after `scan.after`, of the
    /// transactions that ended between `from` and the scan's snapshot: those of
    /// `ended` (pending in `from`, not running in the scan), then those in
    /// `[from.xmax, scan.xmax)` not running in the scan.
    pub(crate) async fn changes_between(
        &self,
        from: &PgPosition,
        ended: &[i64],
        scan: &PgScan,
        limit: usize,
    ) -> Result<Vec<(i64, ChangeEvent)>, StoreError> {
        let c = self.client().await?;
        let (after_txid, after_seq) = scan.after;
        let mut rows = Vec::new();
        // Ended pending transactions are all below `from.xmax`: they come first.
        if !ended.is_empty() {
            let st = c
                .prepare_cached(&format!(
                    "SELECT {ROW_COLUMNS} FROM change_log
                      WHERE txid = ANY($1) AND (txid, seq) > ($2, $3)
                      ORDER BY txid, seq LIMIT $4"
                ))
                .await
                .map_err(self.err("prepare changes of ended transactions"))?;
            rows = c
                .query(&st, &[&ended, &after_txid, &after_seq, &(limit as i64)])
                .await
                .map_err(self.err("read changes of ended transactions"))?;
        }
        if rows.len() < limit && scan.xmax > from.xmax {
            let st = c
                .prepare_cached(&format!(
                    "SELECT {ROW_COLUMNS} FROM change_log
                      WHERE (txid, seq) > ($1, $2) AND txid >= $3 AND txid < $4
                        AND NOT (txid = ANY($5))
                      ORDER BY txid, seq LIMIT $6"
                ))
                .await
                .map_err(self.err("prepare changes"))?;
            let (start_txid, start_seq) = if (after_txid, after_seq) > (from.xmax, i64::MIN) {
                (after_txid, after_seq)
            } else {
                (from.xmax, i64::MIN)
            };
            let more = c
                .query(
                    &st,
                    &[
                        &start_txid,
                        &start_seq,
                        &from.xmax,
                        &scan.xmax,
                        &scan.running,
                        &((limit - rows.len()) as i64),
                    ],
                )
                .await
                .map_err(self.err("read changes"))?;
            rows.extend(more);
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let table: String = r.get(2);
                let op: String = r.get(3);
                let kind = ChangeKind::from_log_row(&table, &op, r.get(4), r.get(5));
                (
                    r.get::<_, i64>(0),
                    ChangeEvent {
                        seq: r.get::<_, i64>(1) as u64,
                        kind,
                        changed_at_ms: r.get(6),
                    },
                )
            })
            .collect())
    }

    /// Deletes change-log rows older than `older_than_ms` of transactions below
    /// `below` (a reader's low water: everything below it has been read), recording
    /// the trim point so a reader behind it knows it missed changes.
    pub(crate) async fn trim_changes(
        &self,
        older_than_ms: i64,
        below: i64,
    ) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("trim changes"))?;
        let upto: Option<i64> = tx
            .query_one(
                "SELECT max(txid) FROM change_log
                  WHERE txid < $1 AND changed_at < to_timestamp($2::double precision / 1000)",
                &[&below, &(older_than_ms as f64)],
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
