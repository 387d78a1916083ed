//! History on PostgreSQL: reads of `member_history` and `catalog_history`, and the
//! writes of a restore (see [`crate::store::history`] for the rules).

use std::collections::HashMap;

use serde_json::Value;

use super::PgStore;
use crate::store::history::{
    Action, Change, Changes, Entry, Evidence, Instant, Mismatch, RestoreSpec, Seed,
};
use crate::store::StoreError;

/// `at` as history shows it: UTC, microseconds.
const AT: &str = r#"to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

fn json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// An entry from a row of the columns [`member_columns`] or [`catalog_columns`] list.
fn entry(r: &tokio_postgres::Row) -> Entry {
    Entry {
        seq: r.get(0),
        at: r.get(1),
        op: r.get(2),
        member_id: r.get(3),
        table: r.get(4),
        country: r.get(5),
        plan_id: r.get(6),
        actor: r.get(7),
        reason: r.get(8),
        before: json(r.get(9)),
        after: json(r.get(10)),
    }
}

fn member_columns() -> String {
    format!(
        "seq, {AT} AS at, op, member_id, NULL::text AS table_name, NULL::text AS country,
         NULL::text AS plan_id, actor, reason, before::text AS before, after::text AS after, txid"
    )
}

fn catalog_columns() -> String {
    format!(
        "seq, {AT} AS at, op, NULL::bigint AS member_id, table_name, country, plan_id, actor,
         reason, before::text AS before, after::text AS after, txid"
    )
}

impl PgStore {
    pub async fn member_history(
        &self,
        id: i64,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let sql = format!(
            "SELECT {} FROM member_history WHERE member_id = $1",
            member_columns()
        );
        self.newest_first(&sql, &id, limit, before, "read member history")
            .await
    }

    pub async fn catalog_history(
        &self,
        country: Option<&str>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Entry>, StoreError> {
        // By country: its rows, and the experiment cells and prices written before
        // their history carried their experiment's country.
        let sql = format!(
            "SELECT {} FROM catalog_history WHERE ($1::text IS NULL OR country = $1
                OR (country IS NULL AND table_name IN ('experiment_cells', 'experiment_prices')
                    AND coalesce(after->>'experiment_id', before->>'experiment_id') IN
                        (SELECT experiment_id FROM experiments WHERE country = $1)))",
            catalog_columns()
        );
        self.newest_first(&sql, &country, limit, before, "read catalog history")
            .await
    }

    /// One page of `select` (filtered by `$1` = `key`), newest first, older than `before`.
    async fn newest_first(
        &self,
        select: &str,
        key: &(dyn tokio_postgres::types::ToSql + Sync),
        limit: i64,
        before: Option<i64>,
        op: &'static str,
    ) -> Result<Vec<Entry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "{select} AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3"
                ),
                &[key, &before, &limit],
            )
            .await
            .map_err(self.err(op))?;
        Ok(rows.iter().map(entry).collect())
    }

    /// Entries after `after` in `(txid, seq)` order, of transactions below the
    /// snapshot's oldest running one (so none can still appear before them).
    pub async fn history_after(
        &self,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let c = self.client().await?;
        let from: (i64, i64) = match after {
            None => (-1, -1),
            Some(seq) => {
                let row = c
                    .query_opt(
                        "SELECT txid FROM member_history WHERE seq = $1
                         UNION ALL SELECT txid FROM catalog_history WHERE seq = $1 LIMIT 1",
                        &[&seq],
                    )
                    .await
                    .map_err(self.err("find history position"))?;
                match row {
                    Some(r) => (r.get(0), seq),
                    None => {
                        return Err(StoreError::Config(format!(
                            "history has no entry with seq {seq} (detached, or never written)"
                        )))
                    }
                }
            }
        };
        let rows = c
            .query(
                &format!(
                    "WITH horizon AS (
                         SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin)
                     SELECT * FROM (
                         SELECT {m} FROM member_history, horizon
                          WHERE (txid, seq) > ($1, $2) AND txid < horizon.xmin
                         UNION ALL
                         SELECT {c} FROM catalog_history, horizon
                          WHERE (txid, seq) > ($1, $2) AND txid < horizon.xmin) h
                     ORDER BY txid, seq LIMIT $3",
                    m = member_columns(),
                    c = catalog_columns()
                ),
                &[&from.0, &from.1, &limit],
            )
            .await
            .map_err(self.err("tail history"))?;
        Ok(rows.iter().map(entry).collect())
    }

    pub(crate) async fn history_evidence(
        &self,
        ids: &[i64],
        at: &Instant,
    ) -> Result<(HashMap<i64, Evidence>, Vec<Seed>), StoreError> {
        let c = self.client().await?;
        let t = at.as_str();
        let mut out: HashMap<i64, Evidence> = HashMap::with_capacity(ids.len());
        let before = c
            .query(
                "SELECT DISTINCT ON (member_id) member_id, seq, op, after::text FROM member_history
                  WHERE member_id = ANY($1) AND at <= $2::text::timestamptz
                  ORDER BY member_id, seq DESC",
                &[&ids, &t],
            )
            .await
            .map_err(self.err("read history before"))?;
        for r in before {
            out.entry(r.get(0)).or_default().last_before =
                Some((r.get(1), r.get(2), json(r.get(3))));
        }
        let after = c
            .query(
                "SELECT DISTINCT ON (member_id) member_id, seq, op, before::text FROM member_history
                  WHERE member_id = ANY($1) AND at > $2::text::timestamptz
                  ORDER BY member_id, seq ASC",
                &[&ids, &t],
            )
            .await
            .map_err(self.err("read history after"))?;
        for r in after {
            out.entry(r.get(0)).or_default().first_after =
                Some((r.get(1), r.get(2), json(r.get(3))));
        }
        let current = c
            .query(
                "SELECT member_id, to_jsonb(m)::text FROM memberships m WHERE member_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(self.err("read current rows"))?;
        for r in current {
            out.entry(r.get(0)).or_default().current = json(r.get(1));
        }
        let seeds = self.seeds(&c).await?;
        Ok((out, seeds))
    }

    /// Every bulk seed's entry (`member_history_seed`, a partial index: reading them
    /// had scanned the whole history, 0.41-0.64 s a lookup at 3 M entries).
    async fn seeds(&self, c: &tokio_postgres::Client) -> Result<Vec<Seed>, StoreError> {
        Ok(c.query(
            &format!("SELECT seq, {AT} FROM member_history WHERE op = 'seed' ORDER BY seq"),
            &[],
        )
        .await
        .map_err(self.err("read seeds"))?
        .iter()
        .map(|r| Seed {
            seq: r.get(0),
            at: Instant::parse(r.get(1)).unwrap_or_else(|_| Instant::now()),
        })
        .collect())
    }

    /// These members' history entries after `at`, oldest first, and their rows now.
    pub(crate) async fn history_after_instant(
        &self,
        ids: &[i64],
        at: &Instant,
    ) -> Result<(HashMap<i64, Changes>, Vec<Seed>), StoreError> {
        let c = self.client().await?;
        let mut out: HashMap<i64, Changes> = HashMap::with_capacity(ids.len());
        let rows = c
            .query(
                &format!(
                    "SELECT member_id, seq, {AT}, op, actor, reason, before::text, after::text
                       FROM member_history
                      WHERE member_id = ANY($1) AND at > $2::text::timestamptz
                      ORDER BY member_id, seq"
                ),
                &[&ids, &at.as_str()],
            )
            .await
            .map_err(self.err("read history after"))?;
        for r in rows {
            out.entry(r.get(0)).or_default().after.push(Change {
                seq: r.get(1),
                at: r.get(2),
                op: r.get(3),
                actor: r.get(4),
                reason: r.get(5),
                before: json(r.get(6)),
                after: json(r.get(7)),
            });
        }
        let current = c
            .query(
                "SELECT member_id, to_jsonb(m)::text FROM memberships m WHERE member_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(self.err("read current rows"))?;
        for r in current {
            out.entry(r.get(0)).or_default().current = json(r.get(1));
        }
        let seeds = self.seeds(&c).await?;
        Ok((out, seeds))
    }

    pub(crate) async fn restore_targets(&self, spec: &RestoreSpec) -> Result<Vec<i64>, StoreError> {
        let c = self.client().await?;
        let members: Option<Vec<i64>> = (!spec.members.is_empty()).then(|| spec.members.clone());
        let changed_after = spec.changed_after.as_ref().map(|t| t.as_str().to_string());
        let rows = c
            .query(
                "SELECT DISTINCT member_id FROM member_history
                  WHERE member_id IS NOT NULL AND at > $1::text::timestamptz
                    AND ($2::bigint[] IS NULL OR member_id = ANY($2))
                    AND ($3::text IS NULL OR at > $3::text::timestamptz)
                    AND ($4::text IS NULL OR actor = $4)
                    AND ($5::text IS NULL OR reason = $5)
                  ORDER BY member_id",
                &[
                    &spec.as_of.as_str(),
                    &members,
                    &changed_after,
                    &spec.actor,
                    &spec.reason,
                ],
            )
            .await
            .map_err(self.err("select members to restore"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// One transaction: updates, re-inserts and deletes, as actor `readtier-restore`.
    pub(crate) async fn apply_restore(
        &self,
        actions: &[Action],
        reason: &str,
    ) -> Result<(), StoreError> {
        let (mut ids, mut status, mut plan, mut country, mut gone) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut amount, mut currency, mut until) = (vec![], vec![], vec![]);
        for a in actions {
            match &a.then {
                Some(row) => {
                    ids.push(a.member_id);
                    status.push(row.status.clone());
                    plan.push(row.plan_id.clone());
                    country.push(row.country.clone());
                    amount.push(row.price_locked_amount.clone());
                    currency.push(row.price_locked_currency.clone());
                    until.push(row.price_locked_until.clone());
                }
                None => gone.push(a.member_id),
            }
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("restore"))?;
        tx.execute(
            "SELECT set_config('readtier.actor', $1, true), set_config('readtier.reason', $2, true)",
            &[&crate::store::history::RESTORE_ACTOR, &reason],
        )
        .await
        .map_err(self.err("name the restore"))?;
        tx.execute(
            "INSERT INTO memberships (member_id, status, plan_id, country,
                 price_locked_amount, price_locked_currency, price_locked_until)
             SELECT i, s, p, c, a::numeric, cur, u::timestamptz
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                           $5::text[], $6::text[], $7::text[]) AS t(i, s, p, c, a, cur, u)
             ON CONFLICT (member_id) DO UPDATE
               SET status = excluded.status, plan_id = excluded.plan_id, country = excluded.country,
                   price_locked_amount = excluded.price_locked_amount,
                   price_locked_currency = excluded.price_locked_currency,
                   price_locked_until = excluded.price_locked_until",
            &[&ids, &status, &plan, &country, &amount, &currency, &until],
        )
        .await
        .map_err(self.err("restore members"))?;
        tx.execute(
            "DELETE FROM memberships WHERE member_id = ANY($1)",
            &[&gone],
        )
        .await
        .map_err(self.err("restore deletions"))?;
        tx.commit().await.map_err(self.err("restore commit"))
    }

    pub(crate) async fn reconcile_history(&self) -> Result<(u64, Vec<Mismatch>), StoreError> {
        let c = self.client().await?;
        let checked: i64 = c
            .query_one("SELECT count(*) FROM memberships", &[])
            .await
            .map_err(self.err("count members"))?
            .get(0);
        // A member's newest entry against its row: business columns and version. A
        // member a seed wrote after its newest entry (its version is in the seed's
        // block) has no entry to compare: it is not counted.
        let rows = c
            .query(
                "WITH latest AS (
                     SELECT DISTINCT ON (member_id) member_id, seq, op, after
                       FROM member_history WHERE member_id IS NOT NULL
                      ORDER BY member_id, seq DESC),
                 seeds AS (
                     SELECT seq, (after->>'first_version')::bigint AS lo,
                            (after->>'last_version')::bigint AS hi
                       FROM member_history WHERE op = 'seed'),
                 pairs AS (
                     SELECT coalesce(m.member_id, l.member_id) AS member_id,
                            CASE WHEN l.op = 'delete' THEN NULL ELSE l.after END AS said,
                            l.member_id IS NOT NULL AS has_entry, l.seq AS latest_seq,
                            to_jsonb(m) AS now, m.version
                       FROM memberships m FULL JOIN latest l ON l.member_id = m.member_id)
                 SELECT member_id,
                        CASE WHEN said IS NULL THEN NULL ELSE jsonb_build_object(
                            'status', said->'status', 'plan_id', said->'plan_id',
                            'country', said->'country', 'version', said->'version')::text END,
                        CASE WHEN now IS NULL THEN NULL ELSE jsonb_build_object(
                            'status', now->'status', 'plan_id', now->'plan_id',
                            'country', now->'country', 'version', now->'version')::text END
                   FROM pairs
                  WHERE NOT EXISTS (
                      SELECT 1 FROM seeds s WHERE pairs.version BETWEEN s.lo AND s.hi
                         AND s.seq > coalesce(pairs.latest_seq, 0))
                    AND CASE
                      WHEN NOT has_entry THEN true
                      WHEN said IS NULL THEN now IS NOT NULL
                      ELSE now IS NULL
                        OR (said->>'status', said->>'plan_id', said->>'country', said->>'version')
                           IS DISTINCT FROM
                           (now->>'status', now->>'plan_id', now->>'country', now->>'version')
                  END
                  ORDER BY member_id LIMIT 10000",
                &[],
            )
            .await
            .map_err(self.err("reconcile history"))?;
        let mismatches = rows
            .iter()
            .map(|r| Mismatch {
                member_id: r.get(0),
                history: json(r.get(1)),
                current: json(r.get(2)),
            })
            .collect();
        Ok((checked as u64, mismatches))
    }
}
