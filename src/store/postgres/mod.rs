//! The production store: PostgreSQL (and, for the portable parts, CockroachDB) through
//! a `deadpool-postgres` pool.
//!
//! Change capture is done by triggers (in the writer's transaction) into `change_log`.
//! Each change-log row also records the writing transaction's id (`txid`); see
//! [`crate::store::changes`] for how the reader uses it to never skip a change whose
//! transaction commits after a later-numbered change was read. That column and the
//! snapshot horizon it is compared to are PostgreSQL-only (README lists what is).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres_rustls::MakeRustlsConnect;

mod changes;
mod history;
mod relay;
mod schema;
mod tls;

pub use relay::{ChangeListener, Progress, RelayState, RelayStore, Repair};
use schema::SCHEMA;
pub use tls::TlsSetupError;

use super::{BadRow, MemberRow, Skipped, StoreError, Violation};
use crate::member::{Member, PriceLock, Status};
use crate::plan::{
    CatalogData, Experiment, ExperimentCell, ExperimentPrice, PartnerOffer, Plan, PlanPrice, Price,
    ScheduledPrice,
};

/// Advisory lock key serializing migrations ("readtier" in ASCII, truncated).
const MIGRATE_LOCK: i64 = 0x7265_6164_7469_6572;

/// An error with its causes, for a message that must say what went wrong:
/// tokio-postgres's own text is only its kind ("db error", "error performing TLS
/// handshake"), the server's message or the certificate problem is its source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// A PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// Member reads only (see `open`).
    reads: Pool,
    /// For connections outside the pool (LISTEN).
    pub(super) config: tokio_postgres::Config,
    /// The TLS connector of every connection, pooled or not (see [`tls`]).
    pub(super) tls: MakeRustlsConnect,
    /// The URL without credentials, for messages.
    shown: String,
}

impl PgStore {
    /// Builds the pool; connections are made on first use (`migrate` checks one).
    pub fn open(target: &crate::config::PgTarget) -> Result<PgStore, StoreError> {
        let cfg: tokio_postgres::Config = target
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
        // Host:port and database only: never the user's password (logs, errors).
        let ports = cfg.get_ports();
        let shown = format!(
            "postgres://{}/{}",
            cfg.get_hosts()
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    match h {
                        tokio_postgres::config::Host::Tcp(s) => format!("{s}:{port}"),
                        #[cfg(unix)]
                        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            cfg.get_dbname().unwrap_or("")
        );
        let mut cfg = cfg;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(target.connect_timeout);
        }
        if !target.statement_timeout.is_zero() {
            // Added to whatever options the URL carries (a search path, say).
            let options = format!(
                "{} -c statement_timeout={}",
                cfg.get_options().unwrap_or(""),
                target.statement_timeout.as_millis()
            );
            cfg.options(options.trim());
        }
        let tls = tls::connector(&target.tls).map_err(|source| StoreError::Tls {
            url: shown.clone(),
            source,
        })?;
        let build = |size: usize| {
            let mgr = Manager::from_config(
                cfg.clone(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(mgr)
                .max_size(size)
                .wait_timeout(Some(Duration::from_secs(5)))
                .create_timeout(Some(target.connect_timeout))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Config(e.to_string()))
        };
        // Member reads (request fills) get a pool of their own, as large as
        // `l2.max_store_fills`: however many of them are stuck in a slow store, the
        // change log, the catalog and the relay keep their connections.
        let pool = build(16)?;
        let reads = build(target.member_reads.max(1))?;
        Ok(PgStore {
            pool,
            reads,
            config: cfg,
            tls,
            shown,
        })
    }

    pub fn describe(&self) -> &str {
        &self.shown
    }

    pub(super) fn err(
        &self,
        op: &'static str,
    ) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |error| StoreError::Postgres {
            url: self.shown.clone(),
            op,
            error,
        }
    }

    /// A connection for a member read (its own pool).
    async fn read_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.reads.get().await.map_err(|e| StoreError::Pool {
            url: self.shown.clone(),
            reason: with_causes(&e),
        })
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Pool {
            url: self.shown.clone(),
            reason: with_causes(&e),
        })
    }

    /// Creates or brings the schema up to date (idempotent, under an advisory lock), and
    /// reports the rows already there that break a rule added since they were written.
    pub async fn migrate(&self) -> Result<Vec<Violation>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("migrate"))?;
        // Bulk work, run by an operator: not bounded by `store_statement_timeout`.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(self.err("migrate"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
            .await
            .map_err(self.err("migrate lock"))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(self.err("migrate schema"))?;
        tx.batch_execute(schema::CELL_WEIGHTS)
            .await
            .map_err(self.err("migrate cell weights"))?;
        let mut report = Vec::new();
        for (table, name, check, key) in schema::checks() {
            // Added NOT VALID: rows already there are not checked, new writes are.
            tx.batch_execute(&format!(
                "DO $$ BEGIN
                    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = '{name}'
                                    AND conrelid = '{table}'::regclass) THEN
                        ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({check}) NOT VALID;
                    END IF;
                 END $$"
            ))
            .await
            .map_err(self.err("migrate constraint"))?;
            // Then validated, where every row keeps it; else the rows are reported.
            let valid: bool = tx
                .query_one(
                    "SELECT convalidated FROM pg_constraint WHERE conname = $1 AND conrelid = $2::text::regclass",
                    &[&name, &table],
                )
                .await
                .map_err(self.err("migrate constraint"))?
                .get(0);
            if valid {
                continue;
            }
            let breaking = tx
                .query(
                    &format!("SELECT {key} FROM {table} WHERE NOT ({check}) ORDER BY 1 LIMIT 21"),
                    &[],
                )
                .await
                .map_err(self.err("migrate constraint check"))?;
            if breaking.is_empty() {
                tx.batch_execute(&format!("ALTER TABLE {table} VALIDATE CONSTRAINT {name}"))
                    .await
                    .map_err(self.err("migrate constraint validate"))?;
                continue;
            }
            let keys: Vec<String> = breaking.iter().take(20).map(|r| r.get(0)).collect();
            report.push(Violation {
                table,
                constraint: name,
                keys,
                more: breaking.len() > 20,
            });
        }
        tx.commit().await.map_err(self.err("migrate commit"))?;
        Ok(report)
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
        // History names this writer (README, "History").
        tx.batch_execute(
            "SET LOCAL readtier.actor = 'readtier-seed'; SET LOCAL readtier.reason = 'reference catalog'",
        )
        .await
        .map_err(self.err("name the catalog writer"))?;
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
        self.write_rules(&tx, data).await?;
        tx.commit().await.map_err(self.err("write catalog commit"))
    }

    /// Bulk-loads members with binary `COPY` in one transaction, with the member
    /// triggers disabled inside it (the table lock keeps other writers out meanwhile)
    /// and one `reseed` event so every node forgets the members it holds. Versions
    /// come from a block reserved from the store-wide sequence, so every loaded row is
    /// newer than anything the tier holds for its id. Existing ids are overwritten
    /// (through a staging table).
    pub async fn write_members<I>(&self, rows: I) -> Result<u64, StoreError>
    where
        I: IntoIterator<Item = (u64, Status, String, String)>,
    {
        let rows = rows.into_iter();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(self.err("seed members"))?;
        // Bulk work, run by an operator: not bounded by `store_statement_timeout`.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(self.err("seed members"))?;
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
                "CREATE TEMP TABLE seed_members (member_id BIGINT, status TEXT, plan_id TEXT, country TEXT, version BIGINT) ON COMMIT DROP",
            )
            .await
            .map_err(self.err("create staging table"))?;
            "seed_members"
        };
        // Versions: a block taken from the sequence, one per row, starting here; the
        // block is closed (the sequence moved past it) before commit.
        let first: i64 = tx
            .query_one("SELECT nextval('member_versions')", &[])
            .await
            .map_err(self.err("reserve versions"))?
            .get(0);
        let sink = tx
            .copy_in(&format!(
                "COPY {target} (member_id, status, plan_id, country, version) FROM STDIN BINARY"
            ))
            .await
            .map_err(self.err("copy members"))?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8],
        );
        pin_mut!(writer);
        let mut n = 0u64;
        for (id, status, plan, country) in rows {
            let id = id as i64;
            let version = first + n as i64;
            writer
                .as_mut()
                .write(&[&id, &status.as_str(), &plan, &country, &version])
                .await
                .map_err(self.err("copy member row"))?;
            n += 1;
        }
        writer.finish().await.map_err(self.err("finish copy"))?;
        let last = first + n as i64;
        tx.execute(
            "SELECT setval('member_versions', GREATEST($1::bigint, (SELECT last_value FROM member_versions)))",
            &[&last],
        )
        .await
        .map_err(self.err("close the version block"))?;
        if !empty {
            tx.batch_execute(
                "INSERT INTO memberships (member_id, status, plan_id, country, version)
                 SELECT member_id, status, plan_id, country, version FROM seed_members
                 ON CONFLICT (member_id) DO UPDATE SET status = excluded.status, plan_id = excluded.plan_id,
                   country = excluded.country, version = excluded.version, updated_at = now()",
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
        // History records the bulk load as one entry, not one per member (see
        // `history`: a seeded member's state is the `before` of its next entry).
        let (count, last_version) = (n as i64, last - 1);
        tx.execute(
            "INSERT INTO member_history (op, member_id, before, after, actor, reason)
             VALUES ('seed', NULL, NULL,
                     jsonb_build_object('members', $1::bigint, 'first_version', $2::bigint,
                                        'last_version', $3::bigint),
                     coalesce(nullif(current_setting('readtier.actor', true), ''), 'readtier-seed'),
                     'bulk load of ' || $1::bigint || ' members (one history entry for the load)')",
            &[&count, &first, &last_version],
        )
        .await
        .map_err(self.err("record the seed in history"))?;
        tx.commit().await.map_err(self.err("seed members commit"))?;
        Ok(n)
    }

    /// The catalog and its version, read in one repeatable-read transaction, and the
    /// rows left out (an amount no `Price` can hold).
    pub async fn load_catalog(&self) -> Result<(CatalogData, Vec<Skipped>), StoreError> {
        let mut skipped = Vec::new();
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
                Err(e) => skipped.push(Skipped::new(
                    "plan_prices",
                    format!("{country}/{plan_id}"),
                    e,
                )),
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
        self.read_rules(&tx, &mut data, &mut skipped).await?;
        tx.commit().await.map_err(self.err("load catalog commit"))?;
        Ok((data, skipped))
    }

    /// Reads the pricing rules into `data`: instants as ms since the epoch, ±infinity
    /// by their meaning ([`start_ms`], [`end_ms`]); a row whose amount no `Price` can
    /// hold (`NaN`, 1e300) is left out, in `skipped`.
    async fn read_rules(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        data: &mut CatalogData,
        skipped: &mut Vec<Skipped>,
    ) -> Result<(), StoreError> {
        let amount = |a: Option<String>| -> Result<Option<Price>, String> {
            a.map(|a| Price::parse(&a))
                .transpose()
                .map_err(|e| e.to_string())
        };
        let (effective, starts, ends) = (
            start_ms("effective_at"),
            start_ms("starts_at"),
            end_ms("ends_at"),
        );
        for r in tx
            .query(
                &format!("SELECT country, plan_id, currency, amount::text, {effective} FROM scheduled_prices"),
                &[],
            )
            .await
            .map_err(self.err("read scheduled prices"))?
        {
            let at: i64 = r.get(4);
            match amount(r.get(3)) {
                Ok(a) => data.scheduled.push(ScheduledPrice {
                    country: r.get(0),
                    plan_id: r.get(1),
                    currency: r.get(2),
                    amount: a,
                    effective_at_ms: at,
                }),
                Err(e) => skipped.push(Skipped::new(
                    "scheduled_prices",
                    format!("{}/{}/{at}", r.get::<_, String>(0), r.get::<_, String>(1)),
                    e,
                )),
            }
        }
        for r in tx
            .query(
                &format!("SELECT experiment_id, country, {starts}, {ends} FROM experiments"),
                &[],
            )
            .await
            .map_err(self.err("read experiments"))?
        {
            data.experiments.push(Experiment {
                id: r.get(0),
                country: r.get(1),
                starts_at_ms: r.get(2),
                ends_at_ms: r.get(3),
            });
        }
        for r in tx
            .query(
                "SELECT experiment_id, cell, weight_bp FROM experiment_cells",
                &[],
            )
            .await
            .map_err(self.err("read experiment cells"))?
        {
            data.cells.push(ExperimentCell {
                experiment_id: r.get(0),
                cell: r.get(1),
                weight_bp: r.get::<_, i32>(2).max(0) as u32,
            });
        }
        for r in tx
            .query(
                "SELECT experiment_id, cell, plan_id, currency, amount::text FROM experiment_prices",
                &[],
            )
            .await
            .map_err(self.err("read experiment prices"))?
        {
            let (e, cell, plan): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            match amount(r.get(4)) {
                Ok(a) => data.experiment_prices.push(ExperimentPrice {
                    experiment_id: e,
                    cell,
                    plan_id: plan,
                    currency: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    amount: a,
                }),
                Err(why) => skipped.push(Skipped::new(
                    "experiment_prices",
                    format!("{e}/{cell}/{plan}"),
                    why,
                )),
            }
        }
        for r in tx
            .query(
                &format!("SELECT partner, country, plan_id, name, currency, amount::text, {starts}, {ends} FROM partner_offers"),
                &[],
            )
            .await
            .map_err(self.err("read partner offers"))?
        {
            let key = || {
                format!(
                    "{}/{}/{}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2)
                )
            };
            match amount(r.get(5)) {
                Ok(Some(a)) => data.partner_offers.push(PartnerOffer {
                    partner: r.get(0),
                    country: r.get(1),
                    plan_id: r.get(2),
                    name: r.get(3),
                    currency: r.get(4),
                    amount: a,
                    starts_at_ms: r.get(6),
                    ends_at_ms: r.get(7),
                }),
                Ok(None) => skipped.push(Skipped::new("partner_offers", key(), "no amount")),
                Err(why) => skipped.push(Skipped::new("partner_offers", key(), why)),
            }
        }
        Ok(())
    }

    /// Upserts the pricing rules of `data` in the writer's transaction.
    async fn write_rules(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        data: &CatalogData,
    ) -> Result<(), StoreError> {
        const AT: &str = "to_timestamp";
        let st = tx
            .prepare(&format!(
                "INSERT INTO scheduled_prices (country, plan_id, currency, amount, effective_at)
                 VALUES ($1, $2, $3, $4::text::numeric, {AT}($5::bigint / 1000.0))
                 ON CONFLICT (country, plan_id, effective_at) DO UPDATE SET currency = excluded.currency,
                   amount = excluded.amount"
            ))
            .await
            .map_err(self.err("prepare scheduled price upsert"))?;
        for r in &data.scheduled {
            let amount = r.amount.as_ref().map(Price::as_str);
            tx.execute(
                &st,
                &[
                    &r.country,
                    &r.plan_id,
                    &r.currency,
                    &amount,
                    &r.effective_at_ms,
                ],
            )
            .await
            .map_err(self.err("upsert scheduled price"))?;
        }
        let st = tx
            .prepare(&format!(
                "INSERT INTO experiments (experiment_id, country, starts_at, ends_at)
                 VALUES ($1, $2, {AT}($3::bigint / 1000.0), {AT}($4::bigint / 1000.0))
                 ON CONFLICT (experiment_id) DO UPDATE SET country = excluded.country,
                   starts_at = excluded.starts_at, ends_at = excluded.ends_at"
            ))
            .await
            .map_err(self.err("prepare experiment upsert"))?;
        for e in &data.experiments {
            tx.execute(&st, &[&e.id, &e.country, &e.starts_at_ms, &e.ends_at_ms])
                .await
                .map_err(self.err("upsert experiment"))?;
        }
        let st = tx
            .prepare(
                "INSERT INTO experiment_cells (experiment_id, cell, weight_bp) VALUES ($1, $2, $3)
                 ON CONFLICT (experiment_id, cell) DO UPDATE SET weight_bp = excluded.weight_bp",
            )
            .await
            .map_err(self.err("prepare cell upsert"))?;
        for c in &data.cells {
            let w = c.weight_bp as i32;
            tx.execute(&st, &[&c.experiment_id, &c.cell, &w])
                .await
                .map_err(self.err("upsert cell"))?;
        }
        let st = tx
            .prepare(
                "INSERT INTO experiment_prices (experiment_id, cell, plan_id, currency, amount)
                 VALUES ($1, $2, $3, $4, $5::text::numeric)
                 ON CONFLICT (experiment_id, cell, plan_id) DO UPDATE SET currency = excluded.currency,
                   amount = excluded.amount",
            )
            .await
            .map_err(self.err("prepare experiment price upsert"))?;
        for p in &data.experiment_prices {
            let currency = (!p.currency.is_empty()).then_some(p.currency.as_str());
            let amount = p.amount.as_ref().map(Price::as_str);
            tx.execute(
                &st,
                &[&p.experiment_id, &p.cell, &p.plan_id, &currency, &amount],
            )
            .await
            .map_err(self.err("upsert experiment price"))?;
        }
        let st = tx
            .prepare(&format!(
                "INSERT INTO partner_offers (partner, country, plan_id, name, currency, amount, starts_at, ends_at)
                 VALUES ($1, $2, $3, $4, $5, $6::text::numeric, {AT}($7::bigint / 1000.0), {AT}($8::bigint / 1000.0))
                 ON CONFLICT (partner, country, plan_id, starts_at) DO UPDATE SET name = excluded.name,
                   currency = excluded.currency, amount = excluded.amount, ends_at = excluded.ends_at"
            ))
            .await
            .map_err(self.err("prepare partner offer upsert"))?;
        for o in &data.partner_offers {
            tx.execute(
                &st,
                &[
                    &o.partner,
                    &o.country,
                    &o.plan_id,
                    &o.name,
                    &o.currency,
                    &o.amount.as_str(),
                    &o.starts_at_ms,
                    &o.ends_at_ms,
                ],
            )
            .await
            .map_err(self.err("upsert partner offer"))?;
        }
        Ok(())
    }

    pub async fn get_member(&self, id: u64) -> Result<Option<Member>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let c = self.read_client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {MEMBER_COLUMNS} FROM memberships WHERE member_id = $1"
            ))
            .await
            .map_err(self.err("prepare member read"))?;
        let row = c
            .query_opt(&st, &[&id])
            .await
            .map_err(self.err("read member"))?;
        row.map(|r| member_of_row(&r).map_err(StoreError::from))
            .transpose()
    }

    /// See [`crate::store::Store::version_check`]. On the general pool, not the member
    /// reads' one: the inspector must never take a permit a fill is waiting for.
    pub async fn version_check(
        &self,
        id: u64,
        answered: i64,
    ) -> Result<super::VersionCheck, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(Default::default());
        };
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT m.version,
                    CASE WHEN isfinite(m.updated_at) THEN (extract(epoch FROM m.updated_at) * 1000)::bigint END,
                    (SELECT max(version) FROM change_log
                      WHERE member_id = $1 AND table_name = 'memberships'),
                    (SELECT CASE WHEN isfinite(min(changed_at)) THEN (extract(epoch FROM min(changed_at)) * 1000)::bigint END FROM change_log
                      WHERE member_id = $1 AND table_name = 'memberships' AND version > $2)
                 FROM (SELECT 1) one LEFT JOIN memberships m ON m.member_id = $1",
            )
            .await
            .map_err(self.err("prepare version check"))?;
        let r = c
            .query_one(&st, &[&id, &answered])
            .await
            .map_err(self.err("version check"))?;
        Ok(super::VersionCheck {
            row_version: r.get(0),
            row_written_ms: r.get(1),
            logged_version: r.get(2),
            first_newer_ms: r.get(3),
        })
    }

    /// See [`crate::store::Store::first_change_after`] (`change_log_changed_at`). A
    /// node's commit times are rounded to the millisecond, so the change it applied
    /// last may lie up to half a millisecond past it: the millisecond after is asked.
    pub async fn first_change_after(&self, after_ms: i64) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT (extract(epoch FROM min(changed_at)) * 1000)::bigint FROM change_log
                  WHERE changed_at > to_timestamp(($1::bigint + 1) / 1000.0) AND isfinite(changed_at)",
            )
            .await
            .map_err(self.err("prepare change log head"))?;
        let r = c
            .query_one(&st, &[&after_ms])
            .await
            .map_err(self.err("read change log head"))?;
        Ok(r.get(0))
    }

    /// The current rows of these members (missing ids are absent from the answer).
    pub async fn members_by_ids(&self, ids: &[u64]) -> Result<Vec<MemberRow>, StoreError> {
        let ids: Vec<i64> = ids
            .iter()
            .filter_map(|id| i64::try_from(*id).ok())
            .collect();
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {MEMBER_COLUMNS} FROM memberships WHERE member_id = ANY($1)"
            ))
            .await
            .map_err(self.err("prepare member batch read"))?;
        let rows = c
            .query(&st, &[&ids])
            .await
            .map_err(self.err("read member batch"))?;
        Ok(rows.iter().map(member_of_row).collect())
    }

    /// Up to `limit` members with ids at or above `from`, in id order (for walks).
    pub async fn members_range(&self, from: u64, limit: i64) -> Result<Vec<MemberRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query_raw(
                &format!(
                    "SELECT {MEMBER_COLUMNS} FROM memberships
                      WHERE member_id >= $1 ORDER BY member_id LIMIT $2"
                ),
                [
                    &(from.min(i64::MAX as u64) as i64)
                        as &(dyn tokio_postgres::types::ToSql + Sync),
                    &limit,
                ],
            )
            .await
            .map_err(self.err("walk members"))?;
        pin_mut!(rows);
        let mut out = Vec::new();
        while let Some(r) = rows.try_next().await.map_err(self.err("walk members"))? {
            out.push(member_of_row(&r));
        }
        Ok(out)
    }
}

/// The columns [`member_of_row`] reads, in order (`price_locked_until` as [`end_ms`]).
const MEMBER_COLUMNS: &str = "member_id, status, plan_id, country, version, \
     price_locked_amount::text, price_locked_currency, \
     CASE WHEN price_locked_until = 'infinity' THEN NULL \
          WHEN price_locked_until = '-infinity' THEN (-9223372036854775807 - 1) \
          ELSE (extract(epoch FROM price_locked_until) * 1000)::bigint END";

/// `col`, an instant a rule starts at, as milliseconds since the epoch: `-infinity`
/// (since always) is `i64::MIN`, `infinity` (never) `i64::MAX`. No value fails the
/// query: `(extract(epoch FROM 'infinity') * 1000)::bigint` is an error, and one such
/// row once stopped every catalog load and every relay page (issue 27).
pub(super) fn start_ms(col: &str) -> String {
    format!(
        "CASE WHEN {col} = 'infinity' THEN 9223372036854775807 \
              WHEN {col} = '-infinity' THEN (-9223372036854775807 - 1) \
              ELSE (extract(epoch FROM {col}) * 1000)::bigint END"
    )
}

/// `col`, an instant a rule or lock ends at, as milliseconds since the epoch: NULL and
/// `infinity` (no end) are NULL, `-infinity` (ended always) `i64::MIN`.
pub(super) fn end_ms(col: &str) -> String {
    format!(
        "CASE WHEN {col} = 'infinity' THEN NULL \
              WHEN {col} = '-infinity' THEN (-9223372036854775807 - 1) \
              ELSE (extract(epoch FROM {col}) * 1000)::bigint END"
    )
}

/// The one way a `memberships` row becomes a [`Member`]: a status this build does not
/// know makes the row unreadable, named by its id.
fn member_of_row(r: &tokio_postgres::Row) -> MemberRow {
    let id = r.get::<_, i64>(0) as u64;
    let status: &str = r.get(1);
    let status = Status::parse(status).ok_or_else(|| BadRow {
        id,
        reason: format!("unknown status {status:?}"),
    })?;
    let amount: Option<String> = r.get(5);
    let price_lock = match amount {
        None => None,
        Some(a) => Some(Box::new(PriceLock {
            amount: Price::parse(&a).map_err(|_| BadRow {
                id,
                reason: format!(
                    "price_locked_amount {:?} is not an amount (a decimal of at most 40 characters)",
                    a.chars().take(24).collect::<String>()
                ),
            })?,
            currency: r.get::<_, Option<String>>(6).unwrap_or_default(),
            until_ms: r.get(7),
        })),
    };
    Ok(Member {
        id,
        status,
        plan_id: r.get(2),
        country: r.get(3),
        version: r.get(4),
        price_lock,
    })
}
