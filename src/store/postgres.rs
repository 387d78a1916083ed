//! The production store: PostgreSQL (and, for the portable parts, CockroachDB) through
//! a `deadpool-postgres` pool.
//!
//! Change capture is done by triggers (in the writer's transaction) into `change_log`.
//! Each change-log row also records the writing transaction's id (`txid`); see
//! [`crate::changes::log`] for how the reader uses it to never skip a change whose
//! transaction commits after a later-numbered change was read. That column and the
//! snapshot horizon it is compared to are PostgreSQL-only (README lists what is).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

use super::{ChangeEvent, ChangeKind, StoreError};
use crate::catalog::{CatalogData, Plan, PlanPrice, Price};
use crate::members::{Member, Status};

/// Tables, functions and triggers; idempotent. Run under an advisory lock so that
/// nodes migrating at once do not race each other's DDL. The trigger functions pin the
/// `search_path` they were created with, so a writer whose own path differs (a psql
/// session writing `schema.memberships`) still reaches this schema's change log.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS plans (
    plan_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    max_streams      INT NOT NULL CHECK (max_streams >= 0),
    max_resolution   TEXT NOT NULL,
    download_devices INT NOT NULL CHECK (download_devices >= 0),
    ads              BOOLEAN NOT NULL DEFAULT false,
    device_classes   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plan_prices (
    country  TEXT NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    plan_id  TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount   NUMERIC NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (country, plan_id)
);
CREATE TABLE IF NOT EXISTS memberships (
    member_id  BIGINT PRIMARY KEY CHECK (member_id > 0),
    status     TEXT NOT NULL CHECK (status IN ('active', 'grace', 'on_hold', 'paused', 'cancelled')),
    plan_id    TEXT NOT NULL,
    country    TEXT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS change_log (
    seq        BIGSERIAL PRIMARY KEY,
    txid       BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    table_name TEXT NOT NULL,
    op         TEXT NOT NULL,
    member_id  BIGINT,
    version    BIGINT,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS change_log_txid ON change_log (txid, seq);
CREATE TABLE IF NOT EXISTS catalog_meta (
    id      INT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO catalog_meta (id, version) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS relay_state (
    id              INT PRIMARY KEY CHECK (id = 1),
    cursor_txid     BIGINT NOT NULL,
    trimmed_through BIGINT NOT NULL DEFAULT 0,
    holder          TEXT,
    lease_until     TIMESTAMPTZ
);
INSERT INTO relay_state (id, cursor_txid) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION readtier_member_version() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    NEW.version := GREATEST(OLD.version, NEW.version) + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION readtier_member_log() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO change_log (table_name, op, member_id, version)
        VALUES ('memberships', 'delete', OLD.member_id, OLD.version + 1);
        PERFORM pg_notify('readtier_changes', '');
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.member_id <> NEW.member_id THEN
        INSERT INTO change_log (table_name, op, member_id, version)
        VALUES ('memberships', 'delete', OLD.member_id, OLD.version + 1);
    END IF;
    INSERT INTO change_log (table_name, op, member_id, version)
    VALUES ('memberships', lower(TG_OP), NEW.member_id, NEW.version);
    PERFORM pg_notify('readtier_changes', '');
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION readtier_catalog_log() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE v BIGINT;
BEGIN
    UPDATE catalog_meta SET version = version + 1 WHERE id = 1 RETURNING version INTO v;
    INSERT INTO change_log (table_name, op, version) VALUES (TG_TABLE_NAME, lower(TG_OP), v);
    PERFORM pg_notify('readtier_changes', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER memberships_version BEFORE UPDATE ON memberships
    FOR EACH ROW EXECUTE FUNCTION readtier_member_version();
CREATE OR REPLACE TRIGGER memberships_log AFTER INSERT OR UPDATE OR DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION readtier_member_log();
CREATE OR REPLACE TRIGGER plans_log AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER plan_prices_log AFTER INSERT OR UPDATE OR DELETE ON plan_prices
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
"#;

/// Advisory lock key serializing migrations ("readtier" in ASCII, truncated).
const MIGRATE_LOCK: i64 = 0x7265_6164_7469_6572;

/// Wake-ups for each commit that wrote the change log (see [`PgStore::listen`]).
pub struct ChangeListener {
    pub notify: Arc<tokio::sync::Notify>,
    /// False once the listening connection is gone (poll, and listen again).
    pub alive: Arc<std::sync::atomic::AtomicBool>,
    _client: tokio_postgres::Client,
}

/// A PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// For connections outside the pool (LISTEN).
    config: tokio_postgres::Config,
    /// The URL without credentials, for messages.
    shown: String,
}

impl PgStore {
    /// Builds the pool; connections are made on first use (`migrate` checks one).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
        let shown = format!(
            "postgres://{}/{}",
            cfg.get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(s) => s.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            cfg.get_dbname().unwrap_or("")
        );
        let mut cfg = cfg;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(5));
        }
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(16)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(PgStore {
            pool,
            config: cfg,
            shown,
        })
    }

    pub fn describe(&self) -> &str {
        &self.shown
    }

    fn err(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |source| StoreError::Postgres {
            url: self.shown.clone(),
            op,
            source,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Pool {
            url: self.shown.clone(),
            reason: e.to_string(),
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("migrate"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
            .await
            .map_err(self.err("migrate lock"))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(self.err("migrate schema"))?;
        tx.commit().await.map_err(self.err("migrate commit"))
    }

    pub async fn catalog_is_empty(&self) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT NOT EXISTS (SELECT 1 FROM plans)", &[])
            .await
            .map_err(self.err("count plans"))?;
        Ok(row.get(0))
    }

    pub async fn write_catalog(&self, data: &CatalogData) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("write catalog"))?;
        let plan = tx
            .prepare(
                "INSERT INTO plans (plan_id, name, max_streams, max_resolution, download_devices, ads, device_classes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (plan_id) DO UPDATE SET name = excluded.name, max_streams = excluded.max_streams,
                   max_resolution = excluded.max_resolution, download_devices = excluded.download_devices,
                   ads = excluded.ads, device_classes = excluded.device_classes",
            )
            .await
            .map_err(self.err("prepare plan upsert"))?;
        for p in &data.plans {
            let (ms, dd) = (p.max_streams as i32, p.download_devices as i32);
            tx.execute(
                &plan,
                &[
                    &p.id,
                    &p.name,
                    &ms,
                    &p.max_resolution,
                    &dd,
                    &p.ads,
                    &p.device_classes.join("|"),
                ],
            )
            .await
            .map_err(self.err("upsert plan"))?;
        }
        let price = tx
            .prepare(
                "INSERT INTO plan_prices (country, plan_id, currency, amount) VALUES ($1, $2, $3, $4::text::numeric)
                 ON CONFLICT (country, plan_id) DO UPDATE SET currency = excluded.currency, amount = excluded.amount",
            )
            .await
            .map_err(self.err("prepare price upsert"))?;
        for p in &data.prices {
            tx.execute(
                &price,
                &[&p.country, &p.plan_id, &p.currency, &p.amount.as_str()],
            )
            .await
            .map_err(self.err("upsert price"))?;
        }
        tx.commit().await.map_err(self.err("write catalog commit"))
    }

    /// Bulk-loads members with binary `COPY` in one transaction, with the member
    /// triggers disabled inside it (the table lock keeps other writers out meanwhile)
    /// and one `reseed` event so every node forgets the members it holds. Existing ids
    /// are overwritten with a raised version (through a staging table).
    pub async fn write_members<I>(&self, rows: I) -> Result<u64, StoreError>
    where
        I: IntoIterator<Item = (u64, Status, String, String)>,
    {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("seed members"))?;
        tx.batch_execute("ALTER TABLE memberships DISABLE TRIGGER USER")
            .await
            .map_err(self.err("disable member triggers"))?;
        let empty: bool = tx
            .query_one("SELECT NOT EXISTS (SELECT 1 FROM memberships)", &[])
            .await
            .map_err(self.err("check members"))?
            .get(0);
        let target = if empty {
            "memberships"
        } else {
            tx.batch_execute(
                "CREATE TEMP TABLE seed_members (member_id BIGINT, status TEXT, plan_id TEXT, country TEXT) ON COMMIT DROP",
            )
            .await
            .map_err(self.err("create staging table"))?;
            "seed_members"
        };
        let sink = tx
            .copy_in(&format!(
                "COPY {target} (member_id, status, plan_id, country) FROM STDIN BINARY"
            ))
            .await
            .map_err(self.err("copy members"))?;
        let writer =
            BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT]);
        pin_mut!(writer);
        let mut n = 0u64;
        for (id, status, plan, country) in rows {
            let id = id as i64;
            writer
                .as_mut()
                .write(&[&id, &status.as_str(), &plan, &country])
                .await
                .map_err(self.err("copy member row"))?;
            n += 1;
        }
        writer.finish().await.map_err(self.err("finish copy"))?;
        if !empty {
            tx.batch_execute(
                "INSERT INTO memberships (member_id, status, plan_id, country)
                 SELECT member_id, status, plan_id, country FROM seed_members
                 ON CONFLICT (member_id) DO UPDATE SET status = excluded.status, plan_id = excluded.plan_id,
                   country = excluded.country, version = memberships.version + 1, updated_at = now()",
            )
            .await
            .map_err(self.err("upsert members"))?;
        }
        tx.batch_execute(
            "ALTER TABLE memberships ENABLE TRIGGER USER;
             INSERT INTO change_log (table_name, op) VALUES ('memberships', 'reseed');",
        )
        .await
        .map_err(self.err("enable member triggers"))?;
        tx.commit().await.map_err(self.err("seed members commit"))?;
        Ok(n)
    }

    /// The catalog and its version, read in one repeatable-read transaction.
    pub async fn load_catalog(&self) -> Result<CatalogData, StoreError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.err("load catalog"))?;
        let version: i64 = tx
            .query_one("SELECT version FROM catalog_meta WHERE id = 1", &[])
            .await
            .map_err(self.err("read catalog version"))?
            .get(0);
        let plans = tx
            .query(
                "SELECT plan_id, name, max_streams, max_resolution, download_devices, ads, device_classes FROM plans",
                &[],
            )
            .await
            .map_err(self.err("read plans"))?
            .into_iter()
            .map(|r| Plan {
                id: r.get(0),
                name: r.get(1),
                max_streams: r.get::<_, i32>(2).max(0) as u32,
                max_resolution: r.get(3),
                download_devices: r.get::<_, i32>(4).max(0) as u32,
                ads: r.get(5),
                device_classes: r
                    .get::<_, String>(6)
                    .split('|')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
            .collect();
        let mut prices = Vec::new();
        for r in tx
            .query(
                "SELECT country, plan_id, currency, amount::text FROM plan_prices",
                &[],
            )
            .await
            .map_err(self.err("read prices"))?
        {
            let (country, plan_id, amount): (String, String, String) =
                (r.get(0), r.get(1), r.get(3));
            match Price::parse(&amount) {
                Ok(amount) => prices.push(PlanPrice {
                    country,
                    plan_id,
                    currency: r.get(2),
                    amount,
                }),
                Err(e) => tracing::warn!(%country, %plan_id, error = %e, "skipping price row"),
            }
        }
        tx.commit().await.map_err(self.err("load catalog commit"))?;
        Ok(CatalogData {
            version: version as u64,
            plans,
            prices,
        })
    }

    pub async fn get_member(&self, id: u64) -> Result<Option<Member>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT status, plan_id, country, version FROM memberships WHERE member_id = $1",
            )
            .await
            .map_err(self.err("prepare member read"))?;
        let Some(row) = c
            .query_opt(&st, &[&id])
            .await
            .map_err(self.err("read member"))?
        else {
            return Ok(None);
        };
        let status: String = row.get(0);
        let status = Status::parse(&status).ok_or_else(|| StoreError::BadRow {
            what: format!("memberships.member_id={id}"),
            reason: format!("unknown status {status:?}"),
        })?;
        Ok(Some(Member {
            id: id as u64,
            status,
            plan_id: row.get(1),
            country: row.get(2),
            version: row.get(3),
        }))
    }

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

    /// Listens for the change triggers' `pg_notify` on a connection of its own, so
    /// the relay reads as soon as a change commits instead of at its next poll.
    pub async fn listen(&self) -> Result<ChangeListener, StoreError> {
        let (client, mut conn) = self
            .config
            .connect(NoTls)
            .await
            .map_err(self.err("connect for LISTEN"))?;
        let notify = Arc::new(tokio::sync::Notify::new());
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (n, a) = (notify.clone(), alive.clone());
        // This task drives the connection (so the LISTEN below completes) and turns
        // notifications into wake-ups.
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m {
                    n.notify_one();
                }
            }
            a.store(false, std::sync::atomic::Ordering::Relaxed);
            n.notify_one();
        });
        client
            .batch_execute("LISTEN readtier_changes")
            .await
            .map_err(self.err("LISTEN"))?;
        Ok(ChangeListener {
            notify,
            alive,
            _client: client,
        })
    }

    /// Takes or renews the relay lease for `holder`; returns whether `holder` holds it.
    pub async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let ms = ttl.as_millis() as f64;
        let n = c
            .execute(
                "UPDATE relay_state SET holder = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
                  WHERE id = 1 AND (holder = $1 OR holder IS NULL OR lease_until < clock_timestamp())",
                &[&holder, &ms],
            )
            .await
            .map_err(self.err("acquire relay lease"))?;
        Ok(n == 1)
    }

    /// Gives the lease up at once (clean shutdown), so a standby need not wait it out.
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE relay_state SET holder = NULL, lease_until = NULL WHERE id = 1 AND holder = $1",
            &[&holder],
        )
        .await
        .map_err(self.err("release relay lease"))?;
        Ok(())
    }

    /// The relay's durable position: every change of a transaction below it is delivered.
    pub async fn relay_cursor(&self) -> Result<i64, StoreError> {
        let c = self.client().await?;
        Ok(
            c.query_one("SELECT cursor_txid FROM relay_state WHERE id = 1", &[])
                .await
                .map_err(self.err("read relay cursor"))?
                .get(0),
        )
    }

    /// Saves the cursor only while `holder` holds a live lease (a fenced write), so a
    /// relay that lost its lease cannot move the position under the new holder.
    pub async fn save_relay_cursor(&self, holder: &str, cursor: i64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE relay_state SET cursor_txid = GREATEST(cursor_txid, $2)
                  WHERE id = 1 AND holder = $1 AND lease_until > clock_timestamp()",
                &[&holder, &cursor],
            )
            .await
            .map_err(self.err("save relay cursor"))?;
        Ok(n == 1)
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

    /// The current rows of these members (missing ids are absent from the answer).
    pub async fn members_by_ids(&self, ids: &[i64]) -> Result<Vec<Member>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached("SELECT member_id, status, plan_id, country, version FROM memberships WHERE member_id = ANY($1)")
            .await
            .map_err(self.err("prepare member batch read"))?;
        let rows = c
            .query(&st, &[&ids])
            .await
            .map_err(self.err("read member batch"))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Member {
                    id: r.get::<_, i64>(0) as u64,
                    status: Status::parse(r.get::<_, &str>(1))?,
                    plan_id: r.get(2),
                    country: r.get(3),
                    version: r.get(4),
                })
            })
            .collect())
    }

    /// Up to `limit` members with ids at or above `from`, in id order (for walks).
    pub async fn members_range(&self, from: u64, limit: i64) -> Result<Vec<Member>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query_raw(
                "SELECT member_id, status, plan_id, country, version FROM memberships
                  WHERE member_id >= $1 ORDER BY member_id LIMIT $2",
                [
                    &(from as i64) as &(dyn tokio_postgres::types::ToSql + Sync),
                    &limit,
                ],
            )
            .await
            .map_err(self.err("walk members"))?;
        pin_mut!(rows);
        let mut out = Vec::new();
        while let Some(r) = rows.try_next().await.map_err(self.err("walk members"))? {
            let status: String = r.get(1);
            if let Some(status) = Status::parse(&status) {
                out.push(Member {
                    id: r.get::<_, i64>(0) as u64,
                    status,
                    plan_id: r.get(2),
                    country: r.get(3),
                    version: r.get(4),
                });
            }
        }
        Ok(out)
    }
}
