//! The source of truth: the relational store and the change log its triggers write.
//!
//! The schema is a public contract (other services write it in raw SQL; see README):
//! `plans`, `plan_prices`, `memberships`, plus `change_log` and `catalog_meta`, which
//! the store's own triggers maintain in the writer's transaction. Writers change
//! business columns only; the triggers raise `memberships.version`, bump the catalog
//! version and record every insert, update and delete in `change_log`.
//!
//! [`Store`] is the async face the node uses; each backend does blocking work on
//! tokio's blocking pool so the request path never blocks a runtime thread.

pub mod postgres;
pub mod seed;
pub mod sqlite;

use std::sync::Arc;

use crate::catalog::CatalogData;
use crate::members::Member;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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
    #[error("store row {what}: {reason}")]
    BadRow { what: String, reason: String },
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
    #[error("store URL: {0}")]
    Config(String),
    #[error("{0} is not supported by the {1} store")]
    Unsupported(&'static str, &'static str),
}

/// One committed change, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Position in the change log; strictly rising in commit order.
    pub seq: u64,
    pub kind: ChangeKind,
    /// Commit time in milliseconds since the Unix epoch (store clock).
    pub changed_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A member row was inserted, updated or deleted; `version` is its new version
    /// (for a deletion, the version of the tombstone).
    Member {
        id: u64,
        version: i64,
        deleted: bool,
    },
    /// `plans` or `plan_prices` changed: the catalog version rose.
    Catalog { version: u64 },
    /// Members were bulk-loaded without per-row events (`seed`): forget all of them.
    MembersReseeded,
}

impl ChangeKind {
    /// The kind of one change-log row, as both stores' triggers write them. A row this
    /// build does not understand is treated as "forget every member": safe, if costly.
    pub fn from_log_row(
        table: &str,
        op: &str,
        member: Option<i64>,
        version: Option<i64>,
    ) -> ChangeKind {
        match (table, op, member) {
            ("memberships", "reseed", _) => ChangeKind::MembersReseeded,
            ("memberships", op, Some(id)) => ChangeKind::Member {
                id: id as u64,
                version: version.unwrap_or(0),
                deleted: op == "delete",
            },
            ("plans" | "plan_prices", _, _) => ChangeKind::Catalog {
                version: version.unwrap_or(0) as u64,
            },
            _ => ChangeKind::MembersReseeded,
        }
    }
}

/// What the follower needs to know about the log besides the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogState {
    /// Highest position written so far.
    pub head: u64,
    /// Every position at or below this one has been trimmed away.
    pub trimmed_through: u64,
}

/// The store a node reads from.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl Store {
    /// Opens the store named by the configuration (creating an SQLite file if needed;
    /// a PostgreSQL pool connects on first use).
    pub fn open(url: &crate::config::StoreUrl) -> Result<Store, StoreError> {
        match url {
            crate::config::StoreUrl::Sqlite(path) => {
                Ok(Store::Sqlite(Arc::new(SqliteStore::open(path)?)))
            }
            crate::config::StoreUrl::Postgres(url) => {
                Ok(Store::Postgres(Arc::new(PgStore::open(url)?)))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => format!("sqlite:{}", s.path().display()),
            Store::Postgres(p) => p.describe().to_string(),
        }
    }

    pub async fn get_member(&self, id: u64) -> Result<Option<Member>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking(s, move |s| s.get_member(id)).await,
            Store::Postgres(p) => p.get_member(id).await,
        }
    }

    pub async fn load_catalog(&self) -> Result<CatalogData, StoreError> {
        match self {
            Store::Sqlite(s) => blocking(s, |s| s.load_catalog()).await,
            Store::Postgres(p) => p.load_catalog().await,
        }
    }

    /// Creates the schema (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => blocking(s, |s| s.migrate()).await,
            Store::Postgres(p) => p.migrate().await,
        }
    }

    pub async fn catalog_is_empty(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => blocking(s, |s| s.catalog_is_empty()).await,
            Store::Postgres(p) => p.catalog_is_empty().await,
        }
    }

    pub async fn write_catalog(&self, data: CatalogData) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => blocking(s, move |s| s.write_catalog(&data)).await,
            Store::Postgres(p) => p.write_catalog(&data).await,
        }
    }

    /// Up to `limit` members with ids at or above `from`, in id order.
    pub async fn members_range(&self, from: u64, limit: i64) -> Result<Vec<Member>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking(s, move |s| s.members_range(from, limit)).await,
            Store::Postgres(p) => p.members_range(from, limit).await,
        }
    }

    /// Bulk-loads members (see each backend's `write_members`).
    pub async fn write_members<I>(&self, rows: I) -> Result<u64, StoreError>
    where
        I: IntoIterator<Item = (u64, crate::members::Status, String, String)> + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => blocking(s, move |s| s.write_members(rows)).await,
            Store::Postgres(p) => p.write_members(rows).await,
        }
    }
}

/// Runs SQLite work on the blocking pool so it never stalls a runtime thread.
pub async fn blocking<T, F>(s: &Arc<SqliteStore>, f: F) -> Result<T, StoreError>
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
