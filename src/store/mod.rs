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
    #[error("postgres store {url}: {op}: {source}")]
    Postgres {
        url: String,
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
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

/// Counts and logs unreadable rows among `rows`, returning them unchanged.
fn noted(rows: Vec<MemberRow>) -> Vec<MemberRow> {
    for r in &rows {
        if let Err(bad) = r {
            note_bad_row(bad);
        }
    }
    rows
}

fn note_bad_row(bad: &BadRow) {
    crate::telemetry::count_store_bad_row();
    // No member id: the log never names a member (`readtier_store_bad_rows_total`
    // counts them; `SELECT … WHERE status NOT IN (…)` finds them).
    tracing::warn!(reason = %bad.reason, "unreadable member row");
}

/// The store a node reads from.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
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
        Ok(Store { backend })
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
        if let Err(StoreError::BadRow(bad)) = &got {
            note_bad_row(bad);
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

    /// The current rows of these members (ids the store lacks are absent).
    pub async fn members_by_ids(&self, ids: Vec<u64>) -> Result<Vec<MemberRow>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.members_by_ids(&ids)).await?,
            Backend::Postgres(p) => p.members_by_ids(&ids).await?,
        };
        Ok(noted(rows))
    }

    /// Up to `limit` members with ids at or above `from`, in id order.
    pub async fn members_range(&self, from: u64, limit: i64) -> Result<Vec<MemberRow>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.members_range(from, limit)).await?,
            Backend::Postgres(p) => p.members_range(from, limit).await?,
        };
        Ok(noted(rows))
    }

    pub async fn load_catalog(&self) -> Result<CatalogData, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.load_catalog()).await,
            Backend::Postgres(p) => p.load_catalog().await,
        }
    }

    /// Creates the schema (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.migrate()).await,
            Backend::Postgres(p) => p.migrate().await,
        }
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
