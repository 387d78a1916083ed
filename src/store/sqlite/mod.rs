//! The embedded store: one SQLite file in WAL mode, so readers (this node, or an
//! operator's `sqlite3`) never wait for a writer.
//!
//! SQLite has one writer at a time and assigns `change_log.seq` inside the writing
//! transaction, so sequence order is commit order here: a follower reading
//! `seq > position` can never skip a change that commits late.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

mod changes;
mod history;
mod schema;
use schema::{
    catalog_triggers_sql, member_triggers_sql, rule_trigger_names, rule_triggers_sql, rules,
    schema_sql, CATALOG_TRIGGERS, HISTORY_AT, MEMBER_ADDED_COLUMNS, MEMBER_TRIGGERS, NOW_ISO,
    NOW_MS, RULE_TABLES,
};

use super::{BadRow, MemberRow, Skipped, StoreError, Violation};
use crate::member::{Member, PriceLock, Status};
use crate::plan::{
    format_instant_ms, parse_bound, Bound, CatalogData, Experiment, ExperimentCell,
    ExperimentPrice, PartnerOffer, Plan, PlanPrice, Price, ScheduledPrice,
};

/// Most idle connections kept for reuse.
const POOL_IDLE: usize = 16;

/// An SQLite store with a small pool of connections.
pub struct SqliteStore {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let store = SqliteStore {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        // Open one connection now so a bad path fails at start, not on first request.
        let conn = store.connect()?;
        store.give_back(conn);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            op,
            source,
        }
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(self.err("open"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(self.err("busy_timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(self.err("journal_mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.err("synchronous"))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection. A connection whose work failed is dropped
    /// rather than reused, in case it was left inside a transaction.
    pub(super) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = f(&mut conn);
        if out.is_ok() {
            self.give_back(conn);
        }
        out
    }

    /// Creates the tables, indexes and triggers (idempotent).
    /// Creates the schema or brings it up to date; reports the rows already there that
    /// break a rule added since.
    pub fn migrate(&self) -> Result<Vec<Violation>, StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("migrate"))?;
            tx.execute_batch(&schema_sql())
                .map_err(self.err("migrate tables"))?;
            // Columns newer than the table (before the triggers that read them).
            let have: Vec<String> = {
                let mut st = tx
                    .prepare("SELECT name FROM pragma_table_info('memberships')")
                    .map_err(self.err("read member columns"))?;
                let names = st
                    .query_map([], |r| r.get(0))
                    .map_err(self.err("read member columns"))?;
                names
                    .collect::<Result<_, _>>()
                    .map_err(self.err("read member columns"))?
            };
            for (column, decl) in MEMBER_ADDED_COLUMNS {
                if !have.iter().any(|c| c == column) {
                    tx.execute_batch(&format!(
                        "ALTER TABLE memberships ADD COLUMN {column} {decl}"
                    ))
                    .map_err(self.err("add member column"))?;
                }
            }
            // Replaced, not kept: an older database has older member triggers.
            for t in MEMBER_TRIGGERS {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
                    .map_err(self.err("drop member trigger"))?;
            }
            tx.execute_batch(&member_triggers_sql())
                .map_err(self.err("migrate member triggers"))?;
            for t in CATALOG_TRIGGERS {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
                    .map_err(self.err("drop catalog trigger"))?;
            }
            tx.execute_batch(&catalog_triggers_sql())
                .map_err(self.err("migrate catalog triggers"))?;
            // The rules: replaced (a newer build may have newer ones), then checked
            // against the rows already there, which are reported, not refused.
            let mut report = Vec::new();
            for table in RULE_TABLES {
                for t in rule_trigger_names(table) {
                    tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
                        .map_err(self.err("drop rule trigger"))?;
                }
                tx.execute_batch(&rule_triggers_sql(table))
                    .map_err(self.err("migrate rule triggers"))?;
            }
            for (table, name, cond, key) in rules() {
                let mut st = tx
                    .prepare(&format!(
                        "SELECT CAST({key} AS TEXT) FROM {table} WHERE NOT coalesce({}, 0) ORDER BY 1 LIMIT 21",
                        cond.replace("$.", "")
                    ))
                    .map_err(self.err("check rule"))?;
                let keys: Vec<String> = st
                    .query_map([], |r| r.get::<_, Option<String>>(0))
                    .map_err(self.err("check rule"))?
                    .filter_map(|k| k.ok().flatten())
                    .collect();
                if !keys.is_empty() {
                    report.push(Violation {
                        table,
                        constraint: name,
                        more: keys.len() > 20,
                        keys: keys.into_iter().take(20).collect(),
                    });
                }
            }
            tx.commit().map_err(self.err("migrate commit"))?;
            Ok(report)
        })
    }

    /// Whether the catalog tables hold no plan at all (a fresh store).
    pub fn catalog_is_empty(&self) -> Result<bool, StoreError> {
        self.with_conn(|c| {
            let n: i64 = c
                .query_row("SELECT count(*) FROM plans", [], |r| r.get(0))
                .map_err(self.err("count plans"))?;
            Ok(n == 0)
        })
    }

    /// Writes the catalog rows (upserting), through the triggers like any writer.
    pub fn write_catalog(&self, data: &CatalogData) -> Result<(), StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("write catalog"))?;
            // History names this writer; cleared before commit (README, "History").
            tx.execute(
                "UPDATE history_context SET actor = 'readtier-seed', reason = 'reference catalog' WHERE id = 1",
                [],
            )
            .map_err(self.err("name the catalog writer"))?;
            {
                let mut plan = tx
                    .prepare(
                        "INSERT INTO plans (plan_id, name, max_streams, max_resolution, download_devices, ads, device_classes)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (plan_id) DO UPDATE SET name = excluded.name, max_streams = excluded.max_streams,
                           max_resolution = excluded.max_resolution, download_devices = excluded.download_devices,
                           ads = excluded.ads, device_classes = excluded.device_classes",
                    )
                    .map_err(self.err("prepare plan upsert"))?;
                for p in &data.plans {
                    plan.execute(params![
                        p.id,
                        p.name,
                        p.max_streams,
                        p.max_resolution,
                        p.download_devices,
                        p.ads as i64,
                        p.device_classes.join("|")
                    ])
                    .map_err(self.err("upsert plan"))?;
                }
                let mut price = tx
                    .prepare(
                        "INSERT INTO plan_prices (country, plan_id, currency, amount) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (country, plan_id) DO UPDATE SET currency = excluded.currency, amount = excluded.amount",
                    )
                    .map_err(self.err("prepare price upsert"))?;
                for p in &data.prices {
                    price
                        .execute(params![p.country, p.plan_id, p.currency, p.amount.as_str()])
                        .map_err(self.err("upsert price"))?;
                }
                write_rules(&tx, data).map_err(self.err("write pricing rules"))?;
            }
            tx.execute(
                "UPDATE history_context SET actor = NULL, reason = NULL WHERE id = 1",
                [],
            )
            .map_err(self.err("name the catalog writer"))?;
            tx.commit().map_err(self.err("write catalog commit"))
        })
    }

    /// Bulk-loads members in one transaction. The per-row triggers are dropped for the
    /// load and recreated before commit, and one `reseed` event tells every node to
    /// forget the members it holds. Existing members are overwritten with a raised
    /// version.
    pub fn write_members<I>(&self, rows: I) -> Result<u64, StoreError>
    where
        I: IntoIterator<Item = (u64, Status, String, String)>,
    {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("seed members"))?;
            // The rule triggers too: the seed's rows keep the rules, and a check per row
            // would cost a 10-million-member seed its time.
            for t in MEMBER_TRIGGERS
                .iter()
                .map(|t| t.to_string())
                .chain(rule_trigger_names("memberships"))
            {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
                    .map_err(self.err("drop member trigger"))?;
            }
            let mut n = 0u64;
            let first_version;
            {
                let now: String = tx
                    .query_row(&format!("SELECT {NOW_ISO}"), [], |r| r.get(0))
                    .map_err(self.err("clock"))?;
                // Versions from the store-wide counter, one per row (see `schema`).
                let first: i64 = tx
                    .query_row("SELECT last + 1 FROM member_versions WHERE id = 1", [], |r| {
                        r.get(0)
                    })
                    .map_err(self.err("reserve versions"))?;
                first_version = first;
                let mut ins = tx
                    .prepare(
                        "INSERT INTO memberships (member_id, status, plan_id, country, version, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (member_id) DO UPDATE SET status = excluded.status, plan_id = excluded.plan_id,
                           country = excluded.country, version = excluded.version, updated_at = excluded.updated_at",
                    )
                    .map_err(self.err("prepare member insert"))?;
                for (id, status, plan, country) in rows {
                    let version = first + n as i64;
                    ins.execute(params![id as i64, status.as_str(), plan, country, version, now])
                        .map_err(self.err("insert member"))?;
                    n += 1;
                }
                tx.execute(
                    "UPDATE member_versions SET last = max(last, ?1) WHERE id = 1",
                    [first + n as i64 - 1],
                )
                .map_err(self.err("close the version block"))?;
            }
            tx.execute_batch(&member_triggers_sql())
                .map_err(self.err("recreate member triggers"))?;
            tx.execute_batch(&rule_triggers_sql("memberships"))
                .map_err(self.err("recreate member rules"))?;
            tx.execute(
                &format!("INSERT INTO change_log (table_name, op, changed_at_ms) VALUES ('memberships', 'reseed', {NOW_MS})"),
                [],
            )
            .map_err(self.err("log reseed"))?;
            // History records the bulk load as one entry, not one per member.
            let (first, last) = (first_version, first_version + n as i64 - 1);
            tx.execute("UPDATE history_seq SET last = last + 1 WHERE id = 1", [])
            .map_err(self.err("record the seed in history"))?;
            tx.execute(
                &format!(
                    "INSERT INTO member_history (seq, at, op, member_id, \"after\", actor, reason)
                     VALUES ((SELECT last FROM history_seq WHERE id = 1), {HISTORY_AT}, 'seed', NULL,
                             json_object('members', ?1, 'first_version', ?2, 'last_version', ?3),
                             coalesce((SELECT actor FROM history_context WHERE id = 1), 'readtier-seed'),
                             'bulk load of ' || ?1 || ' members (one history entry for the load)')"
                ),
                params![n as i64, first, last],
            )
            .map_err(self.err("record the seed in history"))?;
            tx.commit().map_err(self.err("seed members commit"))?;
            Ok(n)
        })
    }

    /// Reads the whole catalog and its version in one transaction.
    /// The catalog and its version in one read transaction, and the rows left out:
    /// SQLite enforces no column types, so a raw writer can put text where a number
    /// belongs; such a row is skipped and named, never the whole catalog.
    pub fn load_catalog(&self) -> Result<(CatalogData, Vec<Skipped>), StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("load catalog"))?;
            let version: i64 = tx
                .query_row("SELECT version FROM catalog_meta WHERE id = 1", [], |r| r.get(0))
                .map_err(self.err("read catalog version"))?;
            let mut skipped = Vec::new();
            let mut plans = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT plan_id, name, max_streams, max_resolution, download_devices, ads, device_classes FROM plans")
                    .map_err(self.err("prepare plans"))?;
                let mut rows = st.query([]).map_err(self.err("read plans"))?;
                while let Some(r) = rows.next().map_err(self.err("read plans"))? {
                    let id = opt_text(r, 0).map_err(self.err("read plan id"))?.unwrap_or_default();
                    match plan_of_row(r) {
                        Ok(plan) => plans.push(plan),
                        Err(why) => skipped.push(Skipped::new("plans", id, why)),
                    }
                }
            }
            let mut prices = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT country, plan_id, currency, amount FROM plan_prices")
                    .map_err(self.err("prepare prices"))?;
                let mut rows = st.query([]).map_err(self.err("read prices"))?;
                while let Some(r) = rows.next().map_err(self.err("read prices"))? {
                    let t = |i| opt_text(r, i).map(Option::unwrap_or_default);
                    let (country, plan_id, currency, amount) = (
                        t(0).map_err(self.err("read price"))?,
                        t(1).map_err(self.err("read price"))?,
                        t(2).map_err(self.err("read price"))?,
                        t(3).map_err(self.err("read price"))?,
                    );
                    match Price::parse(&amount) {
                        Ok(amount) => prices.push(PlanPrice {
                            country,
                            plan_id,
                            currency,
                            amount,
                        }),
                        Err(e) => skipped.push(Skipped::new("plan_prices", format!("{country}/{plan_id}"), e)),
                    }
                }
            }
            let mut data = CatalogData {
                version: version as u64,
                plans,
                prices,
                scheduled: Vec::new(),
                experiments: Vec::new(),
                cells: Vec::new(),
                experiment_prices: Vec::new(),
                partner_offers: Vec::new(),
            };
            read_rules(&tx, &mut data, &mut skipped).map_err(self.err("read pricing rules"))?;
            Ok((data, skipped))
        })
    }

    pub fn get_member(&self, id: u64) -> Result<Option<Member>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MEMBER_COLUMNS} FROM memberships WHERE member_id = ?1"
                ))
                .map_err(self.err("prepare member read"))?;
            let row = st
                .query_row([id], member_of_row)
                .optional()
                .map_err(self.err("read member"))?;
            row.map(|r| r.map_err(StoreError::from)).transpose()
        })
    }

    /// See [`crate::store::Store::version_check`].
    pub fn version_check(&self, id: u64, answered: i64) -> Result<super::VersionCheck, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(Default::default());
        };
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT m.version,
                        CAST((julianday(m.updated_at) - 2440587.5) * 86400000 AS INTEGER),
                        (SELECT max(version) FROM change_log
                          WHERE member_id = ?1 AND table_name = 'memberships'),
                        (SELECT min(changed_at_ms) FROM change_log
                          WHERE member_id = ?1 AND table_name = 'memberships' AND version > ?2)
                     FROM (SELECT 1) one LEFT JOIN memberships m ON m.member_id = ?1",
                )
                .map_err(self.err("prepare version check"))?;
            st.query_row(rusqlite::params![id, answered], |r| {
                Ok(super::VersionCheck {
                    row_version: r.get(0)?,
                    row_written_ms: r.get(1)?,
                    logged_version: r.get(2)?,
                    first_newer_ms: r.get(3)?,
                })
            })
            .map_err(self.err("version check"))
        })
    }

    /// See [`crate::store::Store::first_change_after`] (`change_log_changed_at`).
    pub fn first_change_after(&self, after_ms: i64) -> Result<Option<i64>, StoreError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT min(changed_at_ms) FROM change_log WHERE changed_at_ms > ?1")
                .and_then(|mut st| st.query_row([after_ms], |r| r.get(0)))
                .map_err(self.err("read change log head"))
        })
    }

    /// The current rows of these members (ids the store lacks are absent).
    pub fn members_by_ids(&self, ids: &[u64]) -> Result<Vec<MemberRow>, StoreError> {
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MEMBER_COLUMNS} FROM memberships WHERE member_id = ?1"
                ))
                .map_err(self.err("prepare member read"))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Ok(id) = i64::try_from(*id) else { continue };
                if let Some(row) = st
                    .query_row([id], member_of_row)
                    .optional()
                    .map_err(self.err("read member"))?
                {
                    out.push(row);
                }
            }
            Ok(out)
        })
    }

    /// Up to `limit` members with ids at or above `from`, in id order (for walks).
    pub fn members_range(&self, from: u64, limit: i64) -> Result<Vec<MemberRow>, StoreError> {
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MEMBER_COLUMNS} FROM memberships
                      WHERE member_id >= ?1 ORDER BY member_id LIMIT ?2"
                ))
                .map_err(self.err("prepare member walk"))?;
            let rows = st
                .query_map(
                    params![from.min(i64::MAX as u64) as i64, limit],
                    member_of_row,
                )
                .map_err(self.err("walk members"))?;
            rows.map(|r| r.map_err(self.err("walk members"))).collect()
        })
    }
}

/// The columns [`member_of_row`] reads, in order.
const MEMBER_COLUMNS: &str = "member_id, status, plan_id, country, version, \
     price_locked_amount, price_locked_currency, price_locked_until";

/// Upserts the pricing rules of `data` (scheduled prices, experiments, their cells and
/// prices, partner offers), through the triggers like any writer.
fn write_rules(tx: &rusqlite::Transaction<'_>, data: &CatalogData) -> rusqlite::Result<()> {
    let mut st = tx.prepare(
        "INSERT INTO scheduled_prices (country, plan_id, currency, amount, effective_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (country, plan_id, effective_at) DO UPDATE SET currency = excluded.currency,
           amount = excluded.amount",
    )?;
    for r in &data.scheduled {
        st.execute(params![
            r.country,
            r.plan_id,
            r.currency,
            r.amount.as_ref().map(Price::as_str),
            format_instant_ms(r.effective_at_ms)
        ])?;
    }
    let mut st = tx.prepare(
        "INSERT INTO experiments (experiment_id, country, starts_at, ends_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (experiment_id) DO UPDATE SET country = excluded.country,
           starts_at = excluded.starts_at, ends_at = excluded.ends_at",
    )?;
    for e in &data.experiments {
        st.execute(params![
            e.id,
            e.country,
            format_instant_ms(e.starts_at_ms),
            e.ends_at_ms.map(format_instant_ms)
        ])?;
    }
    let mut st = tx.prepare(
        "INSERT INTO experiment_cells (experiment_id, cell, weight_bp) VALUES (?1, ?2, ?3)
         ON CONFLICT (experiment_id, cell) DO UPDATE SET weight_bp = excluded.weight_bp",
    )?;
    for c in &data.cells {
        st.execute(params![c.experiment_id, c.cell, c.weight_bp])?;
    }
    let mut st = tx.prepare(
        "INSERT INTO experiment_prices (experiment_id, cell, plan_id, currency, amount)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (experiment_id, cell, plan_id) DO UPDATE SET currency = excluded.currency,
           amount = excluded.amount",
    )?;
    for p in &data.experiment_prices {
        st.execute(params![
            p.experiment_id,
            p.cell,
            p.plan_id,
            (!p.currency.is_empty()).then_some(p.currency.as_str()),
            p.amount.as_ref().map(Price::as_str)
        ])?;
    }
    let mut st = tx.prepare(
        "INSERT INTO partner_offers (partner, country, plan_id, name, currency, amount, starts_at, ends_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (partner, country, plan_id, starts_at) DO UPDATE SET name = excluded.name,
           currency = excluded.currency, amount = excluded.amount, ends_at = excluded.ends_at",
    )?;
    for o in &data.partner_offers {
        st.execute(params![
            o.partner,
            o.country,
            o.plan_id,
            o.name,
            o.currency,
            o.amount.as_str(),
            format_instant_ms(o.starts_at_ms),
            o.ends_at_ms.map(format_instant_ms)
        ])?;
    }
    Ok(())
}

/// A text column as a string (`None` for NULL or a non-text value).
fn opt_text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    })
}

/// A `plans` row, or why it cannot be read.
fn plan_of_row(r: &rusqlite::Row<'_>) -> Result<Plan, String> {
    let text = |i: usize, what: &str| -> Result<String, String> {
        match opt_text(r, i) {
            Ok(Some(t)) => Ok(t),
            _ => Err(format!("{what} is not text")),
        }
    };
    let count = |i: usize, what: &str| -> Result<u32, String> {
        match r.get_ref(i) {
            Ok(rusqlite::types::ValueRef::Integer(v)) => {
                u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
            }
            _ => Err(format!("{what} is not a whole number")),
        }
    };
    let ads = match r.get_ref(5) {
        Ok(rusqlite::types::ValueRef::Integer(v)) => v != 0,
        _ => return Err("ads is not 0 or 1".into()),
    };
    Ok(Plan {
        id: text(0, "plan_id")?,
        name: text(1, "name")?,
        max_streams: count(2, "max_streams")?,
        max_resolution: text(3, "max_resolution")?,
        download_devices: count(4, "download_devices")?,
        ads,
        device_classes: text(6, "device_classes")?
            .split('|')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Reads the pricing rules into `data`. A row that cannot be served (an unparseable
/// instant or amount: SQLite enforces no types) is left out, in `skipped`. Instants are
/// RFC 3339 text or `infinity` / `-infinity`, as in PostgreSQL ([`parse_bound`]).
fn read_rules(
    tx: &rusqlite::Transaction<'_>,
    data: &mut CatalogData,
    skipped: &mut Vec<Skipped>,
) -> rusqlite::Result<()> {
    let t = |r: &rusqlite::Row<'_>, i| opt_text(r, i).map(Option::unwrap_or_default);
    let start = |text: Option<String>| -> Result<i64, String> {
        parse_bound(text.as_deref().unwrap_or(""), Bound::Start)?
            .ok_or_else(|| "no instant".to_string())
    };
    let end = |text: Option<String>| -> Result<Option<i64>, String> {
        text.map_or(Ok(None), |x| parse_bound(&x, Bound::End))
    };
    let amount = |text: Option<String>| -> Result<Option<Price>, String> {
        text.map(|x| Price::parse(&x).map_err(|e| e.to_string()))
            .transpose()
    };
    let mut st = tx
        .prepare("SELECT country, plan_id, currency, amount, effective_at FROM scheduled_prices")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let key = format!("{}/{}/{}", t(r, 0)?, t(r, 1)?, t(r, 4)?);
        match (amount(opt_text(r, 3)?), start(opt_text(r, 4)?)) {
            (Ok(a), Ok(at)) => data.scheduled.push(ScheduledPrice {
                country: t(r, 0)?,
                plan_id: t(r, 1)?,
                currency: t(r, 2)?,
                amount: a,
                effective_at_ms: at,
            }),
            (Err(why), _) | (_, Err(why)) => {
                skipped.push(Skipped::new("scheduled_prices", key, why))
            }
        }
    }
    let mut st =
        tx.prepare("SELECT experiment_id, country, starts_at, ends_at FROM experiments")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        match (start(opt_text(r, 2)?), end(opt_text(r, 3)?)) {
            (Ok(starts), Ok(ends)) => data.experiments.push(Experiment {
                id: t(r, 0)?,
                country: t(r, 1)?,
                starts_at_ms: starts,
                ends_at_ms: ends,
            }),
            (Err(why), _) | (_, Err(why)) => {
                skipped.push(Skipped::new("experiments", t(r, 0)?, why))
            }
        }
    }
    let mut st = tx.prepare("SELECT experiment_id, cell, weight_bp FROM experiment_cells")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let weight = match r.get_ref(2)? {
            rusqlite::types::ValueRef::Integer(w) => u32::try_from(w).ok().filter(|w| *w <= 10_000),
            _ => None,
        };
        match weight {
            Some(weight_bp) => data.cells.push(ExperimentCell {
                experiment_id: t(r, 0)?,
                cell: t(r, 1)?,
                weight_bp,
            }),
            None => skipped.push(Skipped::new(
                "experiment_cells",
                format!("{}/{}", t(r, 0)?, t(r, 1)?),
                "weight_bp is not a whole number from 0 to 10000",
            )),
        }
    }
    let mut st =
        tx.prepare("SELECT experiment_id, cell, plan_id, currency, amount FROM experiment_prices")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        match amount(opt_text(r, 4)?) {
            Ok(a) => data.experiment_prices.push(ExperimentPrice {
                experiment_id: t(r, 0)?,
                cell: t(r, 1)?,
                plan_id: t(r, 2)?,
                currency: t(r, 3)?,
                amount: a,
            }),
            Err(why) => skipped.push(Skipped::new(
                "experiment_prices",
                format!("{}/{}/{}", t(r, 0)?, t(r, 1)?, t(r, 2)?),
                why,
            )),
        }
    }
    let mut st = tx.prepare(
        "SELECT partner, country, plan_id, name, currency, amount, starts_at, ends_at FROM partner_offers",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let key = format!("{}/{}/{}", t(r, 0)?, t(r, 1)?, t(r, 2)?);
        match (
            amount(opt_text(r, 5)?),
            start(opt_text(r, 6)?),
            end(opt_text(r, 7)?),
        ) {
            (Ok(Some(a)), Ok(starts), Ok(ends)) => data.partner_offers.push(PartnerOffer {
                partner: t(r, 0)?,
                country: t(r, 1)?,
                plan_id: t(r, 2)?,
                name: t(r, 3)?,
                currency: t(r, 4)?,
                amount: a,
                starts_at_ms: starts,
                ends_at_ms: ends,
            }),
            (Ok(None), _, _) => skipped.push(Skipped::new("partner_offers", key, "no amount")),
            (Err(why), _, _) | (_, Err(why), _) | (_, _, Err(why)) => {
                skipped.push(Skipped::new("partner_offers", key, why))
            }
        }
    }
    Ok(())
}

/// The one way a `memberships` row becomes a [`Member`]: a value this build cannot
/// read makes the row unreadable, named by its id (SQLite columns have no enforced
/// type, so a raw writer can put anything in them).
fn member_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MemberRow> {
    let id = r.get::<_, i64>(0)? as u64;
    let bad = |reason: String| Ok(Err(BadRow { id, reason }));
    let status = match r.get_ref(1)? {
        rusqlite::types::ValueRef::Text(t) => Status::parse(&String::from_utf8_lossy(t)),
        _ => None,
    };
    let Some(status) = status else {
        return bad(format!("unreadable status {:?}", r.get_ref(1)?));
    };
    let (Ok(plan_id), Ok(country), Ok(version)) = (
        text_of(r.get_ref(2)?),
        text_of(r.get_ref(3)?),
        r.get::<_, i64>(4),
    ) else {
        return bad("plan_id, country or version is not readable".into());
    };
    let lock = match (opt_text(r, 5)?, opt_text(r, 6)?, opt_text(r, 7)?) {
        (None, _, _) => None,
        (Some(amount), currency, until) => {
            let Ok(amount) = Price::parse(&amount) else {
                return bad(format!(
                    "price_locked_amount {:?} is not an amount (a decimal of at most 40 characters)",
                    amount.chars().take(24).collect::<String>()
                ));
            };
            let until_ms = match until.map_or(Ok(None), |u| parse_bound(&u, Bound::End)) {
                Ok(u) => u,
                Err(_) => {
                    return bad(
                        "price_locked_until is not an RFC 3339 instant, infinity or -infinity"
                            .into(),
                    )
                }
            };
            Some(Box::new(PriceLock {
                amount,
                currency: currency.unwrap_or_default(),
                until_ms,
            }))
        }
    };
    Ok(Ok(Member {
        id,
        status,
        plan_id,
        country,
        version,
        price_lock: lock,
    }))
}

/// Text of a column that should be text; numbers written by raw SQL into a text column
/// of a table without affinity are rendered rather than rejected.
fn text_of(v: rusqlite::types::ValueRef<'_>) -> Result<String, StoreError> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Ok(i.to_string()),
        ValueRef::Real(f) => Ok(f.to_string()),
        ValueRef::Null | ValueRef::Blob(_) => Err(StoreError::BadCatalogRow {
            what: "catalog".into(),
            reason: "expected text".into(),
        }),
    }
}
