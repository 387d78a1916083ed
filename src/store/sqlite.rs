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

use super::{ChangeEvent, ChangeKind, LogState, StoreError};
use crate::catalog::{CatalogData, Plan, PlanPrice, Price};
use crate::members::{Member, Status};

/// Milliseconds since the epoch, as SQLite computes it inside a trigger.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
const NOW_ISO: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// Tables and indexes. `IF NOT EXISTS` everywhere: `migrate` is idempotent.
fn schema_sql() -> String {
    format!(
        r#"
CREATE TABLE IF NOT EXISTS plans (
    plan_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    max_streams      INTEGER NOT NULL CHECK (max_streams >= 0),
    max_resolution   TEXT NOT NULL,
    download_devices INTEGER NOT NULL CHECK (download_devices >= 0),
    ads              INTEGER NOT NULL DEFAULT 0 CHECK (ads IN (0, 1)),
    device_classes   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plan_prices (
    country  TEXT NOT NULL CHECK (length(country) = 2 AND country = upper(country)),
    plan_id  TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount   TEXT NOT NULL CHECK (amount GLOB '[0-9]*' AND amount NOT GLOB '*[^0-9.]*'),
    PRIMARY KEY (country, plan_id)
);
CREATE TABLE IF NOT EXISTS memberships (
    member_id  INTEGER PRIMARY KEY CHECK (member_id > 0),
    status     TEXT NOT NULL CHECK (status IN ('active', 'grace', 'on_hold', 'paused', 'cancelled')),
    plan_id    TEXT NOT NULL,
    country    TEXT NOT NULL,
    version    INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT ({NOW_ISO})
);
CREATE TABLE IF NOT EXISTS change_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name   TEXT NOT NULL,
    op           TEXT NOT NULL,
    member_id    INTEGER,
    version      INTEGER,
    changed_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO catalog_meta (id, version) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS change_log_meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    trimmed_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO change_log_meta (id, trimmed_through) VALUES (1, 0);
CREATE INDEX IF NOT EXISTS change_log_changed_at ON change_log (changed_at_ms);
"#
    )
}

/// The member triggers, kept apart because a bulk seed drops and recreates them in
/// its own transaction (so no other writer ever sees the table without them).
fn member_triggers_sql() -> String {
    format!(
        r#"
CREATE TRIGGER IF NOT EXISTS memberships_ai AFTER INSERT ON memberships BEGIN
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'insert', NEW.member_id, NEW.version, {NOW_MS});
END;
-- Raises the version of every updated row. SQLite does not fire a trigger from its own
-- body (recursive_triggers is off by default), so the inner UPDATE does not loop.
CREATE TRIGGER IF NOT EXISTS memberships_au AFTER UPDATE ON memberships BEGIN
    UPDATE memberships
       SET version = max(OLD.version, NEW.version) + 1, updated_at = {NOW_ISO}
     WHERE member_id = NEW.member_id;
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'update', NEW.member_id, max(OLD.version, NEW.version) + 1, {NOW_MS});
END;
CREATE TRIGGER IF NOT EXISTS memberships_au_key AFTER UPDATE OF member_id ON memberships
WHEN OLD.member_id <> NEW.member_id BEGIN
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'delete', OLD.member_id, OLD.version + 1, {NOW_MS});
END;
CREATE TRIGGER IF NOT EXISTS memberships_ad AFTER DELETE ON memberships BEGIN
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'delete', OLD.member_id, OLD.version + 1, {NOW_MS});
END;
"#
    )
}

const MEMBER_TRIGGERS: [&str; 4] = [
    "memberships_ai",
    "memberships_au",
    "memberships_au_key",
    "memberships_ad",
];

fn catalog_triggers_sql() -> String {
    let mut sql = String::new();
    for table in ["plans", "plan_prices"] {
        for (suffix, op) in [("ai", "INSERT"), ("au", "UPDATE"), ("ad", "DELETE")] {
            sql.push_str(&format!(
                r#"
CREATE TRIGGER IF NOT EXISTS {table}_{suffix} AFTER {op} ON {table} BEGIN
    UPDATE catalog_meta SET version = version + 1 WHERE id = 1;
    INSERT INTO change_log (table_name, op, version, changed_at_ms)
    VALUES ('{table}', '{op_lower}', (SELECT version FROM catalog_meta WHERE id = 1), {NOW_MS});
END;
"#,
                op_lower = op.to_ascii_lowercase()
            ));
        }
    }
    sql
}

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

    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
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
    fn with_conn<T>(
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
    pub fn migrate(&self) -> Result<(), StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("migrate"))?;
            tx.execute_batch(&schema_sql())
                .map_err(self.err("migrate tables"))?;
            tx.execute_batch(&member_triggers_sql())
                .map_err(self.err("migrate member triggers"))?;
            tx.execute_batch(&catalog_triggers_sql())
                .map_err(self.err("migrate catalog triggers"))?;
            tx.commit().map_err(self.err("migrate commit"))
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
            }
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
            for t in MEMBER_TRIGGERS {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
                    .map_err(self.err("drop member trigger"))?;
            }
            let mut n = 0u64;
            {
                let now: String = tx
                    .query_row(&format!("SELECT {NOW_ISO}"), [], |r| r.get(0))
                    .map_err(self.err("clock"))?;
                let mut ins = tx
                    .prepare(
                        "INSERT INTO memberships (member_id, status, plan_id, country, version, updated_at)
                         VALUES (?1, ?2, ?3, ?4, 1, ?5)
                         ON CONFLICT (member_id) DO UPDATE SET status = excluded.status, plan_id = excluded.plan_id,
                           country = excluded.country, version = memberships.version + 1, updated_at = excluded.updated_at",
                    )
                    .map_err(self.err("prepare member insert"))?;
                for (id, status, plan, country) in rows {
                    ins.execute(params![id as i64, status.as_str(), plan, country, now])
                        .map_err(self.err("insert member"))?;
                    n += 1;
                }
            }
            tx.execute_batch(&member_triggers_sql())
                .map_err(self.err("recreate member triggers"))?;
            tx.execute(
                &format!("INSERT INTO change_log (table_name, op, changed_at_ms) VALUES ('memberships', 'reseed', {NOW_MS})"),
                [],
            )
            .map_err(self.err("log reseed"))?;
            tx.commit().map_err(self.err("seed members commit"))?;
            Ok(n)
        })
    }

    /// Reads the whole catalog and its version in one transaction.
    pub fn load_catalog(&self) -> Result<CatalogData, StoreError> {
        self.with_conn(|c| {
            let tx = c.transaction().map_err(self.err("load catalog"))?;
            let version: i64 = tx
                .query_row("SELECT version FROM catalog_meta WHERE id = 1", [], |r| r.get(0))
                .map_err(self.err("read catalog version"))?;
            let mut plans = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT plan_id, name, max_streams, max_resolution, download_devices, ads, device_classes FROM plans")
                    .map_err(self.err("prepare plans"))?;
                let mut rows = st.query([]).map_err(self.err("read plans"))?;
                while let Some(r) = rows.next().map_err(self.err("read plans"))? {
                    let get = |i| text_of(r.get_ref(i).map_err(self.err("read plan column"))?);
                    let num = |i| -> Result<u32, StoreError> {
                        let v: i64 = r.get(i).map_err(self.err("read plan column"))?;
                        u32::try_from(v).map_err(|_| StoreError::BadRow {
                            what: "plans".into(),
                            reason: format!("column {i} out of range: {v}"),
                        })
                    };
                    let ads: i64 = r.get(5).map_err(self.err("read plan ads"))?;
                    plans.push(Plan {
                        id: get(0)?,
                        name: get(1)?,
                        max_streams: num(2)?,
                        max_resolution: get(3)?,
                        download_devices: num(4)?,
                        ads: ads != 0,
                        device_classes: get(6)?.split('|').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                    });
                }
            }
            let mut prices = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT country, plan_id, currency, amount FROM plan_prices")
                    .map_err(self.err("prepare prices"))?;
                let mut rows = st.query([]).map_err(self.err("read prices"))?;
                while let Some(r) = rows.next().map_err(self.err("read prices"))? {
                    let get = |i| text_of(r.get_ref(i).map_err(self.err("read price column"))?);
                    let (country, plan_id, amount) = (get(0)?, get(1)?, get(3)?);
                    match Price::parse(&amount) {
                        Ok(amount) => prices.push(PlanPrice {
                            country,
                            plan_id,
                            currency: get(2)?,
                            amount,
                        }),
                        Err(e) => tracing::warn!(%country, %plan_id, error = %e, "skipping price row"),
                    }
                }
            }
            Ok(CatalogData {
                version: version as u64,
                plans,
                prices,
            })
        })
    }

    pub fn get_member(&self, id: u64) -> Result<Option<Member>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached("SELECT status, plan_id, country, version FROM memberships WHERE member_id = ?1")
                .map_err(self.err("prepare member read"))?;
            let row = st
                .query_row([id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()
                .map_err(self.err("read member"))?;
            let Some((status, plan_id, country, version)) = row else { return Ok(None) };
            let status = Status::parse(&status).ok_or_else(|| StoreError::BadRow {
                what: format!("memberships.member_id={id}"),
                reason: format!("unknown status {status:?}"),
            })?;
            Ok(Some(Member {
                id: id as u64,
                status,
                plan_id,
                country,
                version,
            }))
        })
    }

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

    /// Up to `limit` members with ids at or above `from`, in id order (for walks).
    pub fn members_range(&self, from: u64, limit: i64) -> Result<Vec<Member>, StoreError> {
        self.with_conn(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT member_id, status, plan_id, country, version FROM memberships
                      WHERE member_id >= ?1 ORDER BY member_id LIMIT ?2",
                )
                .map_err(self.err("prepare member walk"))?;
            let rows = st
                .query_map(params![from as i64, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })
                .map_err(self.err("walk members"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, status, plan_id, country, version) =
                    row.map_err(self.err("walk members"))?;
                if let Some(status) = Status::parse(&status) {
                    out.push(Member {
                        id: id as u64,
                        status,
                        plan_id,
                        country,
                        version,
                    });
                }
            }
            Ok(out)
        })
    }
}

/// Text of a column that should be text; numbers written by raw SQL into a text column
/// of a table without affinity are rendered rather than rejected.
fn text_of(v: rusqlite::types::ValueRef<'_>) -> Result<String, StoreError> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Ok(i.to_string()),
        ValueRef::Real(f) => Ok(f.to_string()),
        ValueRef::Null | ValueRef::Blob(_) => Err(StoreError::BadRow {
            what: "catalog".into(),
            reason: "expected text".into(),
        }),
    }
}
