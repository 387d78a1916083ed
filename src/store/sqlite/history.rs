//! History on SQLite: reads of `member_history` and `catalog_history`, and the writes
//! of a restore (see [`crate::store::history`] for the rules). One writer at a time, so
//! `seq` order is commit order and no horizon is needed.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::SqliteStore;
use crate::store::history::{
    Action, Change, Changes, Entry, Evidence, Instant, Mismatch, RestoreSpec, Seed, RESTORE_ACTOR,
};
use crate::store::StoreError;

const MEMBER_COLUMNS: &str =
    "seq, at, op, member_id, NULL, NULL, NULL, actor, reason, \"before\", \"after\"";
const CATALOG_COLUMNS: &str =
    "seq, at, op, NULL, table_name, country, plan_id, actor, reason, \"before\", \"after\"";

fn json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get(0)?,
        at: r.get(1)?,
        op: r.get(2)?,
        member_id: r.get(3)?,
        table: r.get(4)?,
        country: r.get(5)?,
        plan_id: r.get(6)?,
        actor: r.get(7)?,
        reason: r.get(8)?,
        before: json(r.get(9)?),
        after: json(r.get(10)?),
    })
}

/// Every bulk seed's entry (`member_history_seed`, a partial index).
fn seeds(c: &rusqlite::Connection) -> rusqlite::Result<Vec<Seed>> {
    let mut st =
        c.prepare_cached("SELECT seq, at FROM member_history WHERE op = 'seed' ORDER BY seq")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(seq, at)| Seed {
            seq,
            at: Instant::parse(&at).unwrap_or_else(|_| Instant::now()),
        })
        .collect())
}

/// A current `memberships` row as the JSON image history stores.
const CURRENT: &str = "SELECT json_object('member_id', member_id, 'status', status, \
     'plan_id', plan_id, 'country', country, 'version', version, 'updated_at', updated_at, \
     'price_locked_amount', price_locked_amount, 'price_locked_currency', price_locked_currency, \
     'price_locked_until', price_locked_until) \
     FROM memberships WHERE member_id = ?1";

impl SqliteStore {
    pub fn member_history(
        &self,
        id: i64,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM member_history WHERE member_id = ?1");
        self.newest_first(&sql, &id, limit, before, "read member history")
    }

    pub fn catalog_history(
        &self,
        country: Option<String>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let sql = format!(
            "SELECT {CATALOG_COLUMNS} FROM catalog_history WHERE (?1 IS NULL OR country = ?1
                OR (country IS NULL AND table_name IN ('experiment_cells', 'experiment_prices')
                    AND coalesce(json_extract(\"after\", '$.experiment_id'),
                                 json_extract(\"before\", '$.experiment_id')) IN
                        (SELECT experiment_id FROM experiments WHERE country = ?1)))"
        );
        self.newest_first(&sql, &country, limit, before, "read catalog history")
    }

    /// One page of `select` (filtered by `?1` = `key`), newest first, older than `before`.
    fn newest_first(
        &self,
        select: &str,
        key: &dyn rusqlite::ToSql,
        limit: i64,
        before: Option<i64>,
        op: &'static str,
    ) -> Result<Vec<Entry>, StoreError> {
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "{select} AND (?2 IS NULL OR seq < ?2) ORDER BY seq DESC LIMIT ?3"
                ))
                .map_err(self.err(op))?;
            let rows = st
                .query_map(params![key, before, limit], entry)
                .map_err(self.err(op))?;
            rows.collect::<Result<_, _>>().map_err(self.err(op))
        })
    }

    pub fn history_after(&self, after: Option<i64>, limit: i64) -> Result<Vec<Entry>, StoreError> {
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT * FROM (
                         SELECT {MEMBER_COLUMNS} FROM member_history WHERE seq > ?1
                         UNION ALL
                         SELECT {CATALOG_COLUMNS} FROM catalog_history WHERE seq > ?1)
                     ORDER BY seq LIMIT ?2"
                ))
                .map_err(self.err("prepare history tail"))?;
            let rows = st
                .query_map(params![after.unwrap_or(0), limit], entry)
                .map_err(self.err("tail history"))?;
            rows.collect::<Result<_, _>>()
                .map_err(self.err("tail history"))
        })
    }

    pub(crate) fn history_evidence(
        &self,
        ids: &[i64],
        at: &Instant,
    ) -> Result<(HashMap<i64, Evidence>, Vec<Seed>), StoreError> {
        self.with_conn(|c| {
            let read = self.err("read history evidence");
            let mut out = HashMap::with_capacity(ids.len());
            let mut before = c
                .prepare_cached(
                    "SELECT seq, op, \"after\" FROM member_history
                      WHERE member_id = ?1 AND at <= ?2 ORDER BY seq DESC LIMIT 1",
                )
                .map_err(&read)?;
            let mut after = c
                .prepare_cached(
                    "SELECT seq, op, \"before\" FROM member_history
                      WHERE member_id = ?1 AND at > ?2 ORDER BY seq ASC LIMIT 1",
                )
                .map_err(&read)?;
            let mut current = c.prepare_cached(CURRENT).map_err(&read)?;
            for id in ids {
                let near =
                    |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, String, Option<Value>)> {
                        Ok((r.get(0)?, r.get(1)?, json(r.get(2)?)))
                    };
                let e = Evidence {
                    last_before: before
                        .query_row(params![id, at.as_str()], near)
                        .optional()
                        .map_err(&read)?,
                    first_after: after
                        .query_row(params![id, at.as_str()], near)
                        .optional()
                        .map_err(&read)?,
                    current: current
                        .query_row(params![id], |r| r.get::<_, String>(0))
                        .optional()
                        .map_err(&read)?
                        .and_then(|t| serde_json::from_str(&t).ok()),
                };
                out.insert(*id, e);
            }
            Ok((out, seeds(c).map_err(&read)?))
        })
    }

    /// These members' history entries after `at`, oldest first, and their rows now.
    pub(crate) fn history_after_instant(
        &self,
        ids: &[i64],
        at: &Instant,
    ) -> Result<(HashMap<i64, Changes>, Vec<Seed>), StoreError> {
        self.with_conn(|c| {
            let read = self.err("read history after");
            let mut out: HashMap<i64, Changes> = HashMap::with_capacity(ids.len());
            let mut after = c
                .prepare_cached(
                    "SELECT seq, at, op, actor, reason, \"before\", \"after\" FROM member_history
                      WHERE member_id = ?1 AND at > ?2 ORDER BY seq",
                )
                .map_err(&read)?;
            let mut current = c.prepare_cached(CURRENT).map_err(&read)?;
            for id in ids {
                let changes = after
                    .query_map(params![id, at.as_str()], |r| {
                        Ok(Change {
                            seq: r.get(0)?,
                            at: r.get(1)?,
                            op: r.get(2)?,
                            actor: r.get(3)?,
                            reason: r.get(4)?,
                            before: json(r.get(5)?),
                            after: json(r.get(6)?),
                        })
                    })
                    .map_err(&read)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(&read)?;
                let now = current
                    .query_row(params![id], |r| r.get::<_, String>(0))
                    .optional()
                    .map_err(&read)?
                    .and_then(|t| serde_json::from_str(&t).ok());
                out.insert(
                    *id,
                    Changes {
                        after: changes,
                        current: now,
                    },
                );
            }
            Ok((out, seeds(c).map_err(&read)?))
        })
    }

    pub(crate) fn restore_targets(&self, spec: &RestoreSpec) -> Result<Vec<i64>, StoreError> {
        self.with_conn(|c| {
            let members = (!spec.members.is_empty())
                .then(|| serde_json::to_string(&spec.members).unwrap_or_default());
            let mut st = c
                .prepare(
                    "SELECT DISTINCT member_id FROM member_history
                      WHERE member_id IS NOT NULL AND at > ?1
                        AND (?2 IS NULL OR member_id IN (SELECT value FROM json_each(?2)))
                        AND (?3 IS NULL OR at > ?3)
                        AND (?4 IS NULL OR actor = ?4)
                        AND (?5 IS NULL OR reason = ?5)
                      ORDER BY member_id",
                )
                .map_err(self.err("select members to restore"))?;
            let ids = st
                .query_map(
                    params![
                        spec.as_of.as_str(),
                        members,
                        spec.changed_after.as_ref().map(|t| t.as_str().to_string()),
                        spec.actor,
                        spec.reason
                    ],
                    |r| r.get(0),
                )
                .map_err(self.err("select members to restore"))?
                .collect::<Result<Vec<i64>, _>>()
                .map_err(self.err("select members to restore"))?;
            Ok(ids)
        })
    }

    /// One transaction, named in `history_context` for its triggers and cleared
    /// before commit.
    pub(crate) fn apply_restore(&self, actions: &[Action], reason: &str) -> Result<(), StoreError> {
        self.with_conn(|c| {
            let write = self.err("restore members");
            let tx = c.transaction().map_err(&write)?;
            tx.execute(
                "UPDATE history_context SET actor = ?1, reason = ?2 WHERE id = 1",
                params![RESTORE_ACTOR, reason],
            )
            .map_err(&write)?;
            {
                let mut upsert = tx
                    .prepare(
                        "INSERT INTO memberships (member_id, status, plan_id, country,
                           price_locked_amount, price_locked_currency, price_locked_until)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (member_id) DO UPDATE SET status = excluded.status,
                           plan_id = excluded.plan_id, country = excluded.country,
                           price_locked_amount = excluded.price_locked_amount,
                           price_locked_currency = excluded.price_locked_currency,
                           price_locked_until = excluded.price_locked_until",
                    )
                    .map_err(&write)?;
                let mut delete = tx
                    .prepare("DELETE FROM memberships WHERE member_id = ?1")
                    .map_err(&write)?;
                for a in actions {
                    match &a.then {
                        Some(row) => upsert
                            .execute(params![
                                a.member_id,
                                row.status,
                                row.plan_id,
                                row.country,
                                row.price_locked_amount,
                                row.price_locked_currency,
                                row.price_locked_until
                            ])
                            .map_err(&write)?,
                        None => delete.execute(params![a.member_id]).map_err(&write)?,
                    };
                }
            }
            tx.execute(
                "UPDATE history_context SET actor = NULL, reason = NULL WHERE id = 1",
                [],
            )
            .map_err(&write)?;
            tx.commit().map_err(&write)
        })
    }

    pub(crate) fn reconcile_history(&self) -> Result<(u64, Vec<Mismatch>), StoreError> {
        self.with_conn(|c| {
            let read = self.err("reconcile history");
            let checked: i64 = c
                .query_row("SELECT count(*) FROM memberships", [], |r| r.get(0))
                .map_err(&read)?;
            let image = |p: &str| {
                format!(
                    "CASE WHEN {p} IS NULL THEN NULL ELSE json_object('status', json_extract({p}, '$.status'),
                      'plan_id', json_extract({p}, '$.plan_id'), 'country', json_extract({p}, '$.country'),
                      'version', json_extract({p}, '$.version')) END"
                )
            };
            let sql = format!(
                "WITH latest AS (
                     SELECT member_id, seq, op, \"after\" FROM member_history h
                      WHERE member_id IS NOT NULL AND seq = (
                          SELECT max(seq) FROM member_history WHERE member_id = h.member_id)),
                 seeds AS (
                     SELECT seq, json_extract(\"after\", '$.first_version') AS lo,
                            json_extract(\"after\", '$.last_version') AS hi
                       FROM member_history WHERE op = 'seed'),
                 pairs AS (
                     SELECT m.member_id AS member_id, l.seq AS latest_seq, l.member_id IS NOT NULL AS has_entry,
                            CASE WHEN l.op = 'delete' THEN NULL ELSE l.\"after\" END AS said,
                            json_object('status', m.status, 'plan_id', m.plan_id, 'country', m.country,
                                        'version', m.version) AS now, m.version AS version
                       FROM memberships m LEFT JOIN latest l ON l.member_id = m.member_id
                     UNION ALL
                     SELECT l.member_id, l.seq, 1, CASE WHEN l.op = 'delete' THEN NULL ELSE l.\"after\" END,
                            NULL, NULL
                       FROM latest l WHERE NOT EXISTS (
                           SELECT 1 FROM memberships m WHERE m.member_id = l.member_id))
                 SELECT member_id, {said}, now FROM pairs
                  WHERE NOT EXISTS (
                      SELECT 1 FROM seeds s WHERE pairs.version BETWEEN s.lo AND s.hi
                         AND s.seq > coalesce(pairs.latest_seq, 0))
                    AND CASE
                      WHEN NOT has_entry THEN 1
                      WHEN said IS NULL THEN now IS NOT NULL
                      ELSE now IS NULL OR {said} IS NOT now
                    END
                  ORDER BY member_id LIMIT 10000",
                said = image("said")
            );
            let mut st = c.prepare(&sql).map_err(&read)?;
            let rows = st
                .query_map([], |r| {
                    Ok(Mismatch {
                        member_id: r.get(0)?,
                        history: json(r.get(1)?),
                        current: json(r.get(2)?),
                    })
                })
                .map_err(&read)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&read)?;
            Ok((checked as u64, rows))
        })
    }
}
