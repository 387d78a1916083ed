//! Reading and trimming the PostgreSQL change log (see [`crate::store::changes`] for
//! the order the reader guarantees and why it works in transaction ids).

use super::{with_causes, PgStore};
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

    /// What trimming has removed from the log so far.
    pub(crate) async fn trim_point(&self) -> Result<TrimPoint, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT trimmed_through, trim_kept FROM relay_state WHERE id = 1",
                &[],
            )
            .await
            .map_err(self.err("read trim point"))?;
        Ok(TrimPoint {
            through: row.get(0),
            kept: row.get(1),
        })
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

    /// Deletes change-log rows older than `older_than_ms` that the reader at `at` has
    /// read (transactions below its `xmax`, except its pending ones: a transaction
    /// still open does not hold back the rows committed after it), recording what was
    /// trimmed so that a reader that had not read a deleted row knows it missed it.
    ///
    /// The record is a trim point `m` and the transactions at or below it whose rows
    /// were kept: every other row of a transaction at or below `m` may be gone.
    pub(crate) async fn trim_changes(
        &self,
        older_than_ms: i64,
        at: &PgPosition,
    ) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        // History is never trimmed; its monthly partitions are kept ahead of the clock
        // here, where the relay already does its periodic upkeep (a month the relay
        // missed lands in the DEFAULT partition: nothing is lost).
        if let Err(e) = c
            .batch_execute("SELECT readtier_history_partitions(3)")
            .await
        {
            tracing::warn!(error = %with_causes(&e), "could not add history partitions");
        }
        let tx = c.transaction().await.map_err(self.err("trim changes"))?;
        // A first trim after a long outage may delete a big backlog at once.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(self.err("trim changes"))?;
        let upto: Option<i64> = tx
            .query_one(
                "SELECT max(txid) FROM change_log
                  WHERE txid < $1 AND NOT (txid = ANY($2))
                    AND changed_at < to_timestamp($3::double precision / 1000)",
                &[&at.xmax, &at.pending, &(older_than_ms as f64)],
            )
            .await
            .map_err(self.err("find trim point"))?
            .get(0);
        let Some(upto) = upto else { return Ok(0) };
        let before = tx
            .query_one(
                "SELECT trimmed_through, trim_kept FROM relay_state WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(self.err("read trim point"))?;
        let old = TrimPoint {
            through: before.get(0),
            kept: before.get(1),
        };
        let kept: Vec<i64> = at.pending.iter().copied().filter(|t| *t <= upto).collect();
        let n = tx
            .execute(
                "DELETE FROM change_log WHERE txid <= $1 AND NOT (txid = ANY($2))",
                &[&upto, &kept],
            )
            .await
            .map_err(self.err("trim changes"))?;
        let merged = old.merge(&TrimPoint {
            through: upto,
            kept,
        });
        tx.execute(
            "UPDATE relay_state SET trimmed_through = $1, trim_kept = $2 WHERE id = 1",
            &[&merged.through, &merged.kept],
        )
        .await
        .map_err(self.err("record trim"))?;
        tx.commit().await.map_err(self.err("trim commit"))?;
        Ok(n)
    }
}

/// What trimming has removed: every row of a transaction at or below `through`, except
/// the transactions in `kept` (still running when they were trimmed around).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrimPoint {
    pub through: i64,
    pub kept: Vec<i64>,
}

impl TrimPoint {
    /// Whether a reader at `at` may have missed a trimmed row: it has not read every
    /// transaction up to the trim point, or one it still waits for was trimmed.
    pub fn missed_by(&self, at: &PgPosition) -> bool {
        self.through > 0
            && (at.xmax <= self.through
                || at
                    .pending
                    .iter()
                    .any(|t| *t <= self.through && !self.kept.contains(t)))
    }

    /// Two trims one after the other: a transaction is kept only if neither removed it.
    pub fn merge(&self, next: &TrimPoint) -> TrimPoint {
        let kept_by = |p: &TrimPoint, t: i64| t > p.through || p.kept.contains(&t);
        let mut kept: Vec<i64> = self
            .kept
            .iter()
            .chain(&next.kept)
            .copied()
            .filter(|&t| kept_by(self, t) && kept_by(next, t))
            .collect();
        kept.sort_unstable();
        kept.dedup();
        TrimPoint {
            through: self.through.max(next.through),
            kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(xmax: i64, pending: &[i64]) -> PgPosition {
        PgPosition::at(xmax, pending.to_vec())
    }

    #[test]
    fn a_trim_around_an_open_transaction_is_a_gap_only_for_readers_that_miss_rows() {
        // Trimmed through 100 around transaction 40, still open then.
        let t = TrimPoint {
            through: 100,
            kept: vec![40],
        };
        assert!(
            !t.missed_by(&at(101, &[40])),
            "waits for 40, which was kept"
        );
        assert!(!t.missed_by(&at(150, &[])), "read everything");
        assert!(t.missed_by(&at(100, &[])), "had not read 100");
        assert!(
            t.missed_by(&at(120, &[60])),
            "waits for 60, which was trimmed"
        );
        assert!(
            !TrimPoint::default().missed_by(&at(1, &[])),
            "nothing trimmed"
        );
    }

    #[test]
    fn merged_trims_keep_only_what_neither_removed() {
        let a = TrimPoint {
            through: 100,
            kept: vec![40, 90],
        };
        // The second trim removed 40's rows (it had ended), kept 90 and 130.
        let b = TrimPoint {
            through: 200,
            kept: vec![90, 130],
        };
        assert_eq!(
            a.merge(&b),
            TrimPoint {
                through: 200,
                kept: vec![90, 130]
            }
        );
        // An older trim point after a newer one changes nothing it removed.
        let c = TrimPoint {
            through: 50,
            kept: vec![],
        };
        assert_eq!(
            b.merge(&c),
            TrimPoint {
                through: 200,
                kept: vec![90, 130]
            }
        );
        assert_eq!(
            a.merge(&TrimPoint {
                through: 50,
                kept: vec![]
            }),
            TrimPoint {
                through: 100,
                kept: vec![90]
            }
        );
    }
}
