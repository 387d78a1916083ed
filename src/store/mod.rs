//! The source of truth: the relational store and the change log its triggers write.
//!
//! The schema is a public contract (other services write it in raw SQL; see README):
//! `plans`, `plan_prices`, `memberships`, plus `change_log` and `catalog_meta`, which
//! the store's own triggers maintain in the writer's transaction. Writers change
//! business columns only; the triggers raise `memberships.version`, bump the catalog
//! version and record every insert, update and delete in `change_log`.
//!
//! [`Store`] is the one face the rest of the program sees; the backends behind it
//! (embedded SQLite, PostgreSQL) are sealed in their modules. Blocking SQLite work runs
//! on tokio's blocking pool so the request path never blocks a runtime thread. The
//! store also owns its change log: [`Store::change_reader`] reads it from a typed
//! [`Position`], [`Store::trim_changes`] trims it, and [`Store::relay_store`] gives
//! the relay the PostgreSQL-only parts it needs (lease, fenced position, LISTEN).

pub mod changes;
pub mod history;
mod postgres;
pub mod quarantine;
pub mod seed;
mod sqlite;

use std::sync::Arc;

pub use changes::{
    ChangeBatch, ChangeEvent, ChangeKind, ChangeReader, LogState, PgPosition, PgScan, Position,
    SqlitePosition,
};
pub use postgres::{ChangeListener, Progress, RelayState, RelayStore, Repair, TlsSetupError};

use crate::config::StoreUrl;
use crate::member::{Member, Status};
use crate::plan::CatalogData;
use postgres::PgStore;
use sqlite::SqliteStore;

/// Store failures, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite store {path}: {op}: {source}")]
    Sqlite {
        path: String,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    BadRow(#[from] BadRow),
    #[error("store row {what}: {reason}")]
    BadCatalogRow { what: String, reason: String },
    #[error("could not create data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store task failed: {0}")]
    Task(String),
    /// The server's own words are in the message ([`pg_words`]), so the driver's
    /// error is not also given as a source (a chain would repeat them).
    #[error("postgres store {url}: {op}: {}", pg_words(error))]
    Postgres {
        url: String,
        op: &'static str,
        error: tokio_postgres::Error,
    },
    #[error("postgres store {url}: no connection: {reason}")]
    Pool { url: String, reason: String },
    #[error("postgres store {url}: TLS: {source}")]
    Tls {
        url: String,
        #[source]
        source: TlsSetupError,
    },
    #[error("store URL: {0}")]
    Config(String),
    #[error("{0} is not supported by the {1} store")]
    Unsupported(&'static str, &'static str),
}

/// A PostgreSQL error in the server's own words: its message, detail, hint and where
/// (tokio-postgres's `Display` says only "db error"), else the driver's account with
/// its causes.
fn pg_words(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        return text;
    };
    let mut text = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    for (what, part) in [
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("where", db.where_()),
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(p) = part {
            text.push_str(&format!("; {what}: {p}"));
        }
    }
    text
}

/// A `memberships` row that cannot be read as a [`Member`] (written in raw SQL with a
/// value this build does not know). Never silently dropped: counted, logged, and
/// reported to the caller, who must not mistake it for a missing member. Its message
/// names no member (it reaches the log): the reason says which value to look for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a memberships row cannot be read: {reason}")]
pub struct BadRow {
    pub id: u64,
    pub reason: String,
}

/// A member row as read: the record, or why it cannot be read.
pub type MemberRow = Result<Member, BadRow>;

/// A member's versions as the store holds them now, against a version answered
/// earlier ([`Store::version_check`]). Times are milliseconds since the Unix epoch on
/// the store's clock, stamped when the row was *written* (inside the writer's
/// transaction), which is at or before its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionCheck {
    /// `memberships.version`, if the row exists.
    pub row_version: Option<i64>,
    /// When the row was last written (`memberships.updated_at`), if it exists.
    pub row_written_ms: Option<i64>,
    /// The highest version the change log still holds for the member (a deletion's
    /// tombstone when the row is gone).
    pub logged_version: Option<i64>,
    /// When the earliest logged version above the answered one was written; `None`
    /// when the log holds none (there is none, or it was trimmed).
    pub first_newer_ms: Option<i64>,
}

impl VersionCheck {
    /// The member's current version: its row's, or the last logged one (a tombstone).
    pub fn current(&self) -> Option<i64> {
        self.row_version.or(self.logged_version)
    }
}

/// Rows that break a rule of the schema added after they were written (the rule is
/// kept for new writes; these rows are quarantined when read): what `migrate` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub table: &'static str,
    /// The rule: a constraint (PostgreSQL) or trigger (the embedded store) name.
    pub constraint: &'static str,
    /// The first rows' keys (never more than 20).
    pub keys: Vec<String>,
    /// Whether more rows than `keys` break it.
    pub more: bool,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Member ids are personal data: counted, not listed.
        let rows = if self.table == "memberships" {
            format!(
                "{}{} rows",
                self.keys.len(),
                if self.more { "+" } else { "" }
            )
        } else {
            format!(
                "{}{}",
                self.keys.join(", "),
                if self.more { ", …" } else { "" }
            )
        };
        write!(
            f,
            "{}: rows written before {} break it ({rows}); they are quarantined when read until fixed",
            self.table, self.constraint
        )
    }
}

/// A catalog row a load left out: its table, its key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub table: &'static str,
    pub key: String,
    pub reason: String,
}

impl Skipped {
    pub fn new(table: &'static str, key: impl ToString, reason: impl ToString) -> Skipped {
        Skipped {
            table,
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The catalog tables, whose rejects a load names anew each time.
const CATALOG_TABLES: &[&str] = &[
    "plans",
    "plan_prices",
    "scheduled_prices",
    "experiments",
    "experiment_cells",
    "experiment_prices",
    "partner_offers",
];

/// What no row of a catalog can mean, whichever store it came from: rules that would
/// make the pre-rendered answers wrong rather than merely odd are left out and named.
/// - an experiment whose cells' weights sum over 10,000 basis points (a visitor would
///   fall in two cells): the experiment, its cells and prices;
/// - a cell, an experiment price or a partner offer naming a plan, an experiment or a
///   cell the catalog does not have (it could never be shown: named, not silently
///   dropped);
/// - a price, scheduled price or offer for a plan the catalog does not have.
///
/// An experiment or offer that ends before it starts never runs, and ±infinity
/// instants have their meaning (README, "Schema"): those are no errors.
pub fn vet_catalog(data: &mut CatalogData, skipped: &mut Vec<Skipped>) {
    use std::collections::{BTreeMap, BTreeSet};
    let plans: BTreeSet<&str> = data.plans.iter().map(|p| p.id.as_str()).collect();
    let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &data.cells {
        *weights.entry(c.experiment_id.as_str()).or_default() += u64::from(c.weight_bp);
    }
    let over: BTreeSet<String> = weights
        .iter()
        .filter(|(_, w)| **w > 10_000)
        .map(|(e, w)| {
            skipped.push(Skipped::new(
                "experiments",
                e,
                format!("its cells' weights sum to {w} basis points, over 10000"),
            ));
            e.to_string()
        })
        .collect();
    let known: BTreeSet<String> = data
        .experiments
        .iter()
        .map(|e| e.id.clone())
        .filter(|e| !over.contains(e))
        .collect();
    data.experiments.retain(|e| known.contains(&e.id));
    let plans_owned: BTreeSet<String> = plans.iter().map(|p| p.to_string()).collect();
    data.cells.retain(|c| {
        let keep = known.contains(&c.experiment_id);
        if !keep && !over.contains(&c.experiment_id) {
            skipped.push(Skipped::new(
                "experiment_cells",
                format!("{}/{}", c.experiment_id, c.cell),
                "no such experiment",
            ));
        }
        keep
    });
    let cells: BTreeSet<(String, String)> = data
        .cells
        .iter()
        .map(|c| (c.experiment_id.clone(), c.cell.clone()))
        .collect();
    data.experiment_prices.retain(|p| {
        let key = || format!("{}/{}/{}", p.experiment_id, p.cell, p.plan_id);
        if over.contains(&p.experiment_id) {
            return false;
        }
        let why = if !cells.contains(&(p.experiment_id.clone(), p.cell.clone())) {
            "no such experiment cell"
        } else if !plans_owned.contains(&p.plan_id) {
            "no such plan"
        } else {
            return true;
        };
        skipped.push(Skipped::new("experiment_prices", key(), why));
        false
    });
    data.prices.retain(|p| {
        let ok = plans_owned.contains(&p.plan_id);
        if !ok {
            skipped.push(Skipped::new(
                "plan_prices",
                format!("{}/{}", p.country, p.plan_id),
                "no such plan",
            ));
        }
        ok
    });
    data.scheduled.retain(|p| {
        let ok = plans_owned.contains(&p.plan_id);
        if !ok {
            skipped.push(Skipped::new(
                "scheduled_prices",
                format!("{}/{}/{}", p.country, p.plan_id, p.effective_at_ms),
                "no such plan",
            ));
        }
        ok
    });
    data.partner_offers.retain(|o| {
        let ok = plans_owned.contains(&o.plan_id);
        if !ok {
            skipped.push(Skipped::new(
                "partner_offers",
                format!("{}/{}/{}", o.partner, o.country, o.plan_id),
                "no such plan",
            ));
        }
        ok
    });
}

/// The store a node reads from.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The rows it could not read ([`quarantine`]).
    quarantine: Arc<quarantine::Quarantine>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl Store {
    /// Opens the store named by the configuration (creating an SQLite file if needed;
    /// a PostgreSQL pool connects on first use).
    pub fn open(url: &StoreUrl) -> Result<Store, StoreError> {
        let backend = match url {
            StoreUrl::Sqlite(path) => Backend::Sqlite(Arc::new(SqliteStore::open(path)?)),
            StoreUrl::Postgres(target) => Backend::Postgres(Arc::new(PgStore::open(target)?)),
        };
        Ok(Store {
            backend,
            quarantine: Arc::default(),
        })
    }

    /// The rows this store could not read, kept aside ([`quarantine`]).
    pub fn quarantine(&self) -> &quarantine::Quarantine {
        &self.quarantine
    }

    /// Quarantines unreadable member rows among `rows` (and releases readable ones that
    /// were), returning them unchanged.
    fn noted(&self, rows: Vec<MemberRow>) -> Vec<MemberRow> {
        for r in &rows {
            match r {
                Ok(m) => self.quarantine.readable("memberships", m.id),
                Err(bad) => self.quarantine.reject("memberships", bad.id, &bad.reason),
            }
        }
        rows
    }

    /// The embedded store: a local file, so failing to prepare it is fatal at start.
    pub fn is_embedded(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// What the store is, without credentials (for messages).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => format!("sqlite:{}", s.path().display()),
            Backend::Postgres(p) => p.describe().to_string(),
        }
    }

    /// One member, or `None` if the store has no such id; an unreadable row is an
    /// error naming it.
    pub async fn get_member(&self, id: u64) -> Result<Option<Member>, StoreError> {
        let got = match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.get_member(id)).await,
            Backend::Postgres(p) => p.get_member(id).await,
        };
        match &got {
            Err(StoreError::BadRow(bad)) => {
                self.quarantine.reject("memberships", bad.id, &bad.reason)
            }
            Ok(Some(m)) => self.quarantine.readable("memberships", m.id),
            _ => {}
        }
        got
    }

    /// What the store knows of a member's versions newer than `answered`: its current
    /// version and when the first newer one was written (the consistency inspector's
    /// question; one indexed read).
    pub async fn version_check(&self, id: u64, answered: i64) -> Result<VersionCheck, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.version_check(id, answered)).await,
            Backend::Postgres(p) => p.version_check(id, answered).await,
        }
    }

    /// The commit time (ms since the epoch, the store's clock) of the oldest change
    /// logged after `after_ms`, if any: what a node that applied everything up to
    /// `after_ms` has not applied yet (one indexed read; the follower asks it every second).
    pub async fn first_change_after(&self, after_ms: i64) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.first_change_after(after_ms)).await,
            Backend::Postgres(p) => p.first_change_after(after_ms).await,
        }
    }

    /// The current rows of these members (ids the store lacks are absent).
    pub async fn members_by_ids(&self, ids: Vec<u64>) -> Result<Vec<MemberRow>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.members_by_ids(&ids)).await?,
            Backend::Postgres(p) => p.members_by_ids(&ids).await?,
        };
        Ok(self.noted(rows))
    }

    /// Up to `limit` members with ids at or above `from`, in id order.
    pub async fn members_range(&self, from: u64, limit: i64) -> Result<Vec<MemberRow>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.members_range(from, limit)).await?,
            Backend::Postgres(p) => p.members_range(from, limit).await?,
        };
        Ok(self.noted(rows))
    }

    /// The catalog and its version. A row that cannot be read, or that no answer could
    /// show ([`vet_catalog`]), is left out and quarantined; the rest loads.
    pub async fn load_catalog(&self) -> Result<CatalogData, StoreError> {
        let (mut data, mut skipped) = match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.load_catalog()).await?,
            Backend::Postgres(p) => p.load_catalog().await?,
        };
        vet_catalog(&mut data, &mut skipped);
        self.quarantine.forget(CATALOG_TABLES);
        for s in skipped {
            self.quarantine.reject(s.table, s.key, s.reason);
        }
        Ok(data)
    }

    /// Creates the schema or brings it up to date (idempotent); reports the rows
    /// already there that break a rule added since (each logged here too).
    pub async fn migrate(&self) -> Result<Vec<Violation>, StoreError> {
        let report = match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.migrate()).await?,
            Backend::Postgres(p) => p.migrate().await?,
        };
        for v in &report {
            tracing::warn!("{v}");
        }
        Ok(report)
    }

    pub async fn catalog_is_empty(&self) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.catalog_is_empty()).await,
            Backend::Postgres(p) => p.catalog_is_empty().await,
        }
    }

    pub async fn write_catalog(&self, data: CatalogData) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.write_catalog(&data)).await,
            Backend::Postgres(p) => p.write_catalog(&data).await,
        }
    }

    /// Bulk-loads members (see each backend's `write_members`).
    pub async fn write_members<I>(&self, rows: I) -> Result<u64, StoreError>
    where
        I: IntoIterator<Item = (u64, Status, String, String)> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.write_members(rows)).await,
            Backend::Postgres(p) => p.write_members(rows).await,
        }
    }

    /// A reader of every change committed from now on.
    pub async fn change_reader_at_head(&self) -> Result<ChangeReader, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let head = blocking(s, |s| s.log_state()).await?.head;
                Ok(ChangeReader::sqlite(
                    s.clone(),
                    Some(SqlitePosition { seq: head }),
                ))
            }
            Backend::Postgres(p) => {
                let (xmax, running) = p.snapshot().await?;
                Ok(ChangeReader::postgres(
                    p.clone(),
                    Some(PgPosition::at(xmax, running)),
                ))
            }
        }
    }

    /// A reader resuming from `from`; with `None` (the position could not be learned)
    /// its first read reports a gap. A position of the other backend counts as `None`.
    pub fn change_reader(&self, from: Option<Position>) -> ChangeReader {
        match &self.backend {
            Backend::Sqlite(s) => ChangeReader::sqlite(
                s.clone(),
                match from {
                    Some(Position::Sqlite(p)) => Some(p),
                    _ => None,
                },
            ),
            Backend::Postgres(p) => ChangeReader::postgres(
                p.clone(),
                match from {
                    Some(Position::Postgres(pos)) => Some(pos),
                    _ => None,
                },
            ),
        }
    }

    /// Deletes change-log rows written before `older_than_ms`, recording the trim
    /// point so a reader behind it knows it missed changes; returns rows deleted. On
    /// PostgreSQL only rows below `reached` (the trimming reader's own position) go,
    /// and nothing without one.
    pub async fn trim_changes(
        &self,
        older_than_ms: i64,
        reached: Option<&Position>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.trim_changes(older_than_ms)).await,
            Backend::Postgres(p) => match reached {
                Some(Position::Postgres(at)) => p.trim_changes(older_than_ms, at).await,
                _ => Ok(0),
            },
        }
    }

    /// What the relay needs of a PostgreSQL store; other stores have no relay.
    pub fn relay_store(&self) -> Result<RelayStore, StoreError> {
        match &self.backend {
            Backend::Postgres(p) => Ok(RelayStore { pg: p.clone() }),
            Backend::Sqlite(_) => Err(StoreError::Unsupported("the relay", "sqlite")),
        }
    }
}

/// Runs SQLite work on the blocking pool so it never stalls a runtime thread.
async fn blocking<T, F>(s: &Arc<SqliteStore>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
{
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Milliseconds since the Unix epoch, on this host's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
