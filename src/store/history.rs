//! History: the store's second system of record. The triggers that feed the change
//! log also append, in the writer's transaction, every insert, update and delete of
//! `memberships` to `member_history` and of `plans` and `plan_prices` to
//! `catalog_history`: when (`at`, to the microsecond, UTC), what (`op`, the whole row
//! `before` and `after`), who (`actor`) and why (`reason`). README's "History" section
//! is the contract; this module reads it, replays it and checks it.
//!
//! - **Order.** `seq` numbers entries of both tables from one sequence. For one member
//!   it is commit order (the row lock serializes writers of a member). Across members
//!   a transaction may commit after a later-numbered one, so [`Store::history_after`]
//!   (what `history tail` follows) reads in `(txid, seq)` order and only transactions
//!   below the oldest one still running: an entry it returns never has an unseen
//!   predecessor, and resuming after a `seq` never skips one (SQLite has one writer,
//!   so there `seq` order is commit order).
//! - **A member's state at T** ([`state_at`]): the `after` of its newest entry at or
//!   before T; else the `before` of its oldest entry after T (nothing changed it in
//!   between); else, with no entry after T, its current row. A bulk seed writes one
//!   entry for the whole load, not one per member, so a seed between those entries
//!   and T makes the state unknown, and restore leaves such a member alone.
//! - **Restore** writes each selected member back to its state at T as an ordinary
//!   change (actor `readtier-restore`), so it reaches every tier through change capture.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Backend, Store, StoreError};

/// The actor restore's writes are recorded under.
pub const RESTORE_ACTOR: &str = "readtier-restore";

/// Most entries one history page returns.
pub const MAX_PAGE: i64 = 1000;

/// An instant, normalized to UTC with six fractional digits (`2026-11-30T08:00:00.000000Z`),
/// the form history stores and compares (as text in SQLite).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(String);

impl Instant {
    /// Parses an RFC 3339 timestamp (any offset).
    pub fn parse(text: &str) -> Result<Instant, String> {
        let t = OffsetDateTime::parse(text.trim(), &Rfc3339)
            .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp ({e})"))?;
        Ok(Instant::of(t))
    }

    /// Now, on this host's clock.
    pub fn now() -> Instant {
        Instant::of(OffsetDateTime::now_utc())
    }

    fn of(t: OffsetDateTime) -> Instant {
        let t = t.to_offset(time::UtcOffset::UTC);
        Instant(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Instant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One history entry, as the admin API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at: String,
    /// `insert`, `update`, `delete`, or `seed` (one bulk load).
    pub op: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_id: Option<i64>,
    /// For catalog entries: `plans` or `plan_prices`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// A member's business columns: what restore writes back and compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub status: String,
    pub plan_id: String,
    pub country: String,
    /// The price lock (`price_locked_*`, README "Pricing rules"), as the image holds
    /// it (text; PostgreSQL's NUMERIC image is a JSON number, written back as its
    /// text); absent in images from before the columns existed, and then restored as
    /// no lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_locked_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_locked_currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_locked_until: Option<String>,
}

impl Row {
    /// The business columns of a history row image (`before` or `after`).
    pub fn of_image(image: &Value) -> Option<Row> {
        let s = |k: &str| image.get(k)?.as_str().map(str::to_string);
        let text = |k: &str| match image.get(k)? {
            Value::String(t) => Some(t.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Some(Row {
            status: s("status")?,
            plan_id: s("plan_id")?,
            country: s("country")?,
            price_locked_amount: text("price_locked_amount"),
            price_locked_currency: s("price_locked_currency"),
            price_locked_until: s("price_locked_until"),
        })
    }
}

/// A member's state at an instant, as history knows it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// It existed, with this row image (the whole row, version included, when history
    /// holds it; the current row when nothing changed it since).
    Existed(Value),
    /// It did not exist.
    Absent,
    /// History cannot tell (a bulk seed overwrote it without per-member entries).
    Unknown(String),
}

/// What a backend found about one member around an instant T.
#[derive(Debug, Clone, Default)]
pub(crate) struct Evidence {
    /// The newest entry at or before T: (seq, op, after).
    pub last_before: Option<(i64, String, Option<Value>)>,
    /// The oldest entry after T: (seq, op, before).
    pub first_after: Option<(i64, String, Option<Value>)>,
    /// The current row's image, if the member exists.
    pub current: Option<Value>,
}

/// One bulk seed: its entry's seq and time.
#[derive(Debug, Clone)]
pub(crate) struct Seed {
    pub seq: i64,
    pub at: Instant,
}

/// The rule in the module doc. `seeds` are every seed entry (a seed does not say
/// which ids it wrote, so any seed counts for every member: unknown rather than wrong).
pub(crate) fn state_at(e: &Evidence, at: &Instant, seeds: &[Seed]) -> State {
    // A seed numbered between `lo` and `hi`, on the given side of T.
    let seed_in = |lo: i64, hi: Option<i64>, after_t: bool| {
        seeds
            .iter()
            .any(|s| s.seq > lo && hi.is_none_or(|h| s.seq < h) && ((s.at > *at) == after_t))
    };
    let unknown = || {
        State::Unknown(
            "a bulk seed after that instant rewrote members without per-member history".into(),
        )
    };
    // 1. Its newest entry at or before T, unless a seed before T came after it.
    if let Some((seq, op, after)) = &e.last_before {
        if !seed_in(*seq, None, false) {
            return match (op.as_str(), after) {
                ("delete", _) | (_, None) => State::Absent,
                (_, Some(image)) => State::Existed(image.clone()),
            };
        }
    }
    // 2. Its oldest entry after T, unless a seed after T came before it.
    if let Some((seq, op, before)) = &e.first_after {
        if seed_in(0, Some(*seq), true) {
            return unknown();
        }
        return match (op.as_str(), before) {
            ("insert", _) | (_, None) => State::Absent,
            (_, Some(image)) => State::Existed(image.clone()),
        };
    }
    // 3. Nothing changed it after T: its current row, unless a seed after T.
    if seeds.iter().any(|s| s.at > *at) {
        return unknown();
    }
    match &e.current {
        Some(image) => State::Existed(image.clone()),
        None => State::Absent,
    }
}

/// Which members a restore rewrites: those with a history entry after `as_of` that
/// matches every given filter.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    pub as_of: Instant,
    pub members: Vec<i64>,
    pub changed_after: Option<Instant>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// One member's restore.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub member_id: i64,
    /// Its row now (`None`: absent).
    pub now: Option<Row>,
    /// Its row at the instant (`None`: absent).
    pub then: Option<Row>,
}

/// What a restore did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Members selected by the filters.
    pub selected: usize,
    /// Members to rewrite (updated, re-inserted or deleted).
    pub actions: Vec<Action>,
    /// Members already at their state then.
    pub unchanged: usize,
    /// Members whose state then history cannot tell, with why.
    pub unknown: Vec<(i64, String)>,
    pub dry_run: bool,
}

/// A member whose newest history entry does not match its current row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    pub member_id: i64,
    /// The business columns and version history says it has (`None`: deleted or none).
    pub history: Option<Value>,
    /// The current row (`None`: absent).
    pub current: Option<Value>,
}

impl Store {
    /// A member's history, newest first, `limit` entries older than `before` (a seq).
    pub async fn member_history(
        &self,
        id: i64,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        match &self.backend {
            Backend::Sqlite(s) => {
                super::blocking(s, move |s| s.member_history(id, limit, before)).await
            }
            Backend::Postgres(p) => p.member_history(id, limit, before).await,
        }
    }

    /// Catalog history (of `country`'s prices, or everything), newest first.
    pub async fn catalog_history(
        &self,
        country: Option<String>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        match &self.backend {
            Backend::Sqlite(s) => {
                super::blocking(s, move |s| s.catalog_history(country, limit, before)).await
            }
            Backend::Postgres(p) => p.catalog_history(country.as_deref(), limit, before).await,
        }
    }

    /// Up to `limit` entries of both tables after the entry `after` (a seq; `None`:
    /// from the start), in commit-safe order (see the module doc).
    pub async fn history_after(
        &self,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        match &self.backend {
            Backend::Sqlite(s) => super::blocking(s, move |s| s.history_after(after, limit)).await,
            Backend::Postgres(p) => p.history_after(after, limit).await,
        }
    }

    /// A member's state at `at`.
    pub async fn member_as_of(&self, id: i64, at: &Instant) -> Result<State, StoreError> {
        let (evidence, seeds) = self.evidence(vec![id], at.clone()).await?;
        let e = evidence.get(&id).cloned().unwrap_or_default();
        Ok(state_at(&e, at, &seeds))
    }

    async fn evidence(
        &self,
        ids: Vec<i64>,
        at: Instant,
    ) -> Result<(HashMap<i64, Evidence>, Vec<Seed>), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => super::blocking(s, move |s| s.history_evidence(&ids, &at)).await,
            Backend::Postgres(p) => p.history_evidence(&ids, &at).await,
        }
    }

    /// Writes the selected members back to their state at `spec.as_of` (see the module
    /// doc), in batches, each an ordinary transaction recorded with actor
    /// [`RESTORE_ACTOR`]; with `dry_run`, only reports.
    pub async fn restore(&self, spec: &RestoreSpec) -> Result<RestoreReport, StoreError> {
        let targets = match &self.backend {
            Backend::Sqlite(s) => {
                let spec = spec.clone();
                super::blocking(s, move |s| s.restore_targets(&spec)).await?
            }
            Backend::Postgres(p) => p.restore_targets(spec).await?,
        };
        let mut report = RestoreReport {
            selected: targets.len(),
            dry_run: spec.dry_run,
            ..RestoreReport::default()
        };
        for chunk in targets.chunks(RESTORE_BATCH) {
            let (evidence, seeds) = self.evidence(chunk.to_vec(), spec.as_of.clone()).await?;
            let mut actions = Vec::new();
            for id in chunk {
                let e = evidence.get(id).cloned().unwrap_or_default();
                let now = e.current.as_ref().and_then(Row::of_image);
                let then = match state_at(&e, &spec.as_of, &seeds) {
                    State::Existed(image) => match Row::of_image(&image) {
                        Some(row) => Some(row),
                        None => {
                            report
                                .unknown
                                .push((*id, "its row image lacks business columns".into()));
                            continue;
                        }
                    },
                    State::Absent => None,
                    State::Unknown(why) => {
                        report.unknown.push((*id, why));
                        continue;
                    }
                };
                if now == then {
                    report.unchanged += 1;
                } else {
                    actions.push(Action {
                        member_id: *id,
                        now,
                        then,
                    });
                }
            }
            if !spec.dry_run && !actions.is_empty() {
                let reason = format!("restore as of {}", spec.as_of);
                match &self.backend {
                    Backend::Sqlite(s) => {
                        let batch = actions.clone();
                        super::blocking(s, move |s| s.apply_restore(&batch, &reason)).await?
                    }
                    Backend::Postgres(p) => p.apply_restore(&actions, &reason).await?,
                }
            }
            report.actions.extend(actions);
        }
        Ok(report)
    }

    /// Members whose newest history entry differs from their current row (e.g. rows
    /// written with the triggers disabled); members only a seed wrote are not counted.
    pub async fn reconcile_history(&self) -> Result<(u64, Vec<Mismatch>), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => super::blocking(s, |s| s.reconcile_history()).await,
            Backend::Postgres(p) => p.reconcile_history().await,
        }
    }
}

/// Members restored per transaction: large enough to be quick, small enough that a
/// restore of millions does not hold one transaction open for minutes.
const RESTORE_BATCH: usize = 5000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Instant {
        Instant::parse(s).expect("test instant")
    }

    #[test]
    fn instants_normalize_to_utc_microseconds() {
        assert_eq!(
            at("2026-11-30T09:00:00.5+01:00").as_str(),
            "2026-11-30T08:00:00.500000Z"
        );
        assert!(Instant::parse("yesterday").is_err());
        assert!(at("2026-11-30T08:00:00Z") < at("2026-11-30T08:00:00.000001Z"));
    }

    #[test]
    fn state_at_follows_the_rules() {
        let t = at("2026-11-30T08:00:00Z");
        let a = json!({"status": "active", "plan_id": "basic", "country": "US", "version": 3});
        let b = json!({"status": "on_hold", "plan_id": "basic", "country": "US", "version": 9});
        // Newest entry before T wins.
        let e = Evidence {
            last_before: Some((5, "update".into(), Some(a.clone()))),
            first_after: Some((9, "update".into(), Some(a.clone()))),
            current: Some(b.clone()),
        };
        assert_eq!(state_at(&e, &t, &[]), State::Existed(a.clone()));
        // Deleted before T: absent.
        let e = Evidence {
            last_before: Some((5, "delete".into(), None)),
            ..Evidence::default()
        };
        assert_eq!(state_at(&e, &t, &[]), State::Absent);
        // Nothing before T: the oldest entry after T says what it was.
        let e = Evidence {
            first_after: Some((9, "update".into(), Some(a.clone()))),
            current: Some(b.clone()),
            ..Evidence::default()
        };
        assert_eq!(state_at(&e, &t, &[]), State::Existed(a.clone()));
        let e = Evidence {
            first_after: Some((9, "insert".into(), None)),
            current: Some(b.clone()),
            ..Evidence::default()
        };
        assert_eq!(state_at(&e, &t, &[]), State::Absent);
        // Nothing at all: the current row.
        let e = Evidence {
            current: Some(b.clone()),
            ..Evidence::default()
        };
        assert_eq!(state_at(&e, &t, &[]), State::Existed(b.clone()));
        // A seed after T and before the first entry after T: unknown.
        let seed = Seed {
            seq: 7,
            at: at("2026-11-30T08:00:01Z"),
        };
        let e = Evidence {
            first_after: Some((9, "update".into(), Some(a.clone()))),
            ..Evidence::default()
        };
        assert!(matches!(
            state_at(&e, &t, std::slice::from_ref(&seed)),
            State::Unknown(_)
        ));
        // A seed before T, then the member's first own entry after T: its `before` is
        // the seeded state, which held at T.
        let early = Seed {
            seq: 2,
            at: at("2026-11-30T07:00:00Z"),
        };
        assert_eq!(
            state_at(&e, &t, std::slice::from_ref(&early)),
            State::Existed(a.clone())
        );
        // A seed between the member's last entry and T overwrote that entry's state.
        let e = Evidence {
            last_before: Some((1, "update".into(), Some(b.clone()))),
            first_after: Some((9, "update".into(), Some(a.clone()))),
            current: None,
        };
        assert_eq!(state_at(&e, &t, &[early]), State::Existed(a));
    }
}
