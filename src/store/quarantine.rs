//! Rows the store holds that this build cannot read: skipped, counted once, named once,
//! listed for operators, never retried forever and never stopping the rest.
//!
//! The store is a public contract written by other services in raw SQL, and a value
//! the schema once let through (a `NaN` amount, a status from a newer build, text in an
//! SQLite number column) must cost that row alone: its batch, its page, its catalog go
//! on without it. Each such row is kept here by table and key with the reason, counted
//! in `readtier_store_rows_rejected_total{table}` the first time it is seen, logged
//! then (a member's id is never logged: it is on `GET /admin/store/rejected`), and
//! dropped from the list once it reads again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Most rows kept in the list (the counter counts them all).
const KEPT: usize = 1000;

/// One quarantined row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub table: &'static str,
    /// The row's key: a member id, `country/plan`, an experiment id, …
    pub key: String,
    /// Why it cannot be read, in the store's own words where it gave any.
    pub reason: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Times it was met (a member is met at each read of it).
    pub times: u64,
}

/// A store's quarantined rows.
#[derive(Debug, Default)]
pub struct Quarantine {
    rows: Mutex<BTreeMap<(&'static str, String), Rejected>>,
    /// Whether any is kept (so a row that reads cleanly costs one load to check).
    any: AtomicBool,
}

impl Quarantine {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(&'static str, String), Rejected>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that the row `key` of `table` cannot be read, for `reason`.
    pub fn reject(&self, table: &'static str, key: impl ToString, reason: impl ToString) {
        let (key, reason) = (key.to_string(), reason.to_string());
        let now = super::now_ms();
        let mut rows = self.lock();
        if let Some(r) = rows.get_mut(&(table, key.clone())) {
            r.last_seen_ms = now;
            r.times += 1;
            if r.reason == reason {
                return;
            }
            r.reason = reason.clone();
        } else {
            if rows.len() >= KEPT {
                // The oldest seen gives way: the counter has them all.
                if let Some(oldest) = rows
                    .iter()
                    .min_by_key(|(_, r)| r.last_seen_ms)
                    .map(|(k, _)| k.clone())
                {
                    rows.remove(&oldest);
                }
            }
            rows.insert(
                (table, key.clone()),
                Rejected {
                    table,
                    key: key.clone(),
                    reason: reason.clone(),
                    first_seen_ms: now,
                    last_seen_ms: now,
                    times: 1,
                },
            );
            self.any.store(true, Ordering::Relaxed);
        }
        drop(rows);
        metrics::counter!("readtier_store_rows_rejected_total", "table" => table).increment(1);
        if table == "memberships" {
            // Member ids are personal data, kept off the log.
            tracing::warn!(table, %reason, "store row quarantined: skipped until it is fixed (its key on GET /admin/store/rejected)");
        } else {
            tracing::warn!(table, %key, %reason, "store row quarantined: skipped until it is fixed");
        }
    }

    /// Notes that the row `key` of `table` read cleanly: it leaves the list.
    #[inline]
    pub fn readable(&self, table: &'static str, key: impl ToString) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut rows = self.lock();
        if rows.remove(&(table, key.to_string())).is_some() {
            tracing::info!(table, "a quarantined store row reads again");
        }
        self.any.store(!rows.is_empty(), Ordering::Relaxed);
    }

    /// Drops every row of `tables` from the list (a catalog load names its rejects
    /// anew each time).
    pub fn forget(&self, tables: &[&str]) {
        let mut rows = self.lock();
        rows.retain(|(t, _), _| !tables.contains(t));
        self.any.store(!rows.is_empty(), Ordering::Relaxed);
    }

    /// The quarantined rows, by table and key.
    pub fn list(&self) -> Vec<Rejected> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_kept_once_until_it_reads_again() {
        let q = Quarantine::default();
        q.reject(
            "memberships",
            10,
            "price_locked_amount NaN is not a decimal",
        );
        q.reject(
            "memberships",
            10,
            "price_locked_amount NaN is not a decimal",
        );
        q.reject("plan_prices", "US/standard", "amount NaN");
        let l = q.list();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].table, l[0].key.as_str(), l[0].times),
            ("memberships", "10", 2)
        );
        q.readable("memberships", 10);
        assert_eq!(q.list().len(), 1);
        q.forget(&["plan_prices"]);
        assert!(q.list().is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let q = Quarantine::default();
        for i in 0..(KEPT as u64 + 50) {
            q.reject("memberships", i, "bad");
        }
        assert_eq!(q.list().len(), KEPT);
    }
}
