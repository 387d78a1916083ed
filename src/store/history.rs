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
//! - **Restore reverts changes, not members** ([`decide`]). The selected changes are a
//!   member's history entries after T matching every filter (actor, reason, window,
//!   members). The restore writes the member back to the state before the first of
//!   them (the `before` of that entry), as an ordinary change (actor
//!   `readtier-restore`), so it reaches every tier through change capture. It does not
//!   when:
//!   - the member is already so (nothing to write: a second run writes nothing);
//!     values compare as typed values (amounts as decimals, instants as instants), not
//!     as text: a lock written under another `TimeZone` is the same instant;
//!   - anyone else changed the member after the first selected change: a **conflict**,
//!     reported with that change's actor, reason and instant and what the restore
//!     would have written, and left as it is. A later writer may have acted on the
//!     corrupted state (billing moving a cancelled member's plan), so a change to any
//!     field counts, not only to the fields the selected changes touched. With
//!     `--overwrite-later` the fields the selected changes touched are reverted and the
//!     other fields keep their later values;
//!   - reverting would delete a member the selected changes created, or re-insert one
//!     they deleted: **skipped** unless `--undo-inserts` / `--undo-deletes`; a member
//!     someone else deleted afterwards is a conflict (an erasure is never undone
//!     without both `--overwrite-later` and `--undo-deletes`);
//!   - a bulk seed came after the first selected change: unknown, left alone.

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
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
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

/// Which changes a restore reverts: the history entries after `as_of` that match
/// every given filter.
#[derive(Debug, Clone, Default)]
pub struct RestoreSpec {
    pub as_of: Instant,
    pub members: Vec<i64>,
    pub changed_after: Option<Instant>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub dry_run: bool,
    /// Revert even where someone else changed the member afterwards (the fields the
    /// selected changes touched; the others keep their later values).
    pub overwrite_later: bool,
    /// Delete members the selected changes created.
    pub undo_inserts: bool,
    /// Re-insert members the selected changes deleted.
    pub undo_deletes: bool,
}

impl RestoreSpec {
    /// Whether `c` is one of the changes this restore reverts (it is after `as_of`).
    fn selects(&self, c: &Change) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == c.actor)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| Some(r) == c.reason.as_ref())
            && self
                .changed_after
                .as_ref()
                .is_none_or(|t| Instant::parse(&c.at).is_ok_and(|at| at > *t))
    }
}

/// One member's history entry after T, as a restore weighs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub seq: i64,
    pub at: String,
    pub op: String,
    pub actor: String,
    pub reason: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// One member's history after T, oldest first, and its row now.
#[derive(Debug, Clone, Default)]
pub(crate) struct Changes {
    pub after: Vec<Change>,
    pub current: Option<Value>,
}

/// The change by someone else that makes a member a conflict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Later {
    pub seq: i64,
    pub at: String,
    pub op: String,
    pub actor: String,
    pub reason: Option<String>,
}

/// What a restore did with one member (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written back (or, dry, would be).
    Restored,
    /// Already as the restore would write it.
    Unchanged,
    /// Someone else changed it after the selected changes: left as it is.
    Conflict,
    /// A creation or deletion to undo without its flag: left as it is.
    Skipped,
    /// History cannot tell its state before the selected changes.
    Unknown,
}

/// One member's line of a restore's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberResult {
    pub member_id: i64,
    pub outcome: Outcome,
    /// Its row now (`None`: absent).
    pub now: Option<Row>,
    /// What the restore writes, or would have written (`None`: absent).
    pub then: Option<Row>,
    /// For a conflict: the later change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub later: Option<Later>,
    /// For a skip or an unknown: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What a restore did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Members with a selected change.
    pub selected: usize,
    /// Every member that was not unchanged, in member order.
    pub results: Vec<MemberResult>,
    pub unchanged: usize,
    pub dry_run: bool,
}

impl RestoreReport {
    /// How many members ended so.
    pub fn count(&self, outcome: Outcome) -> usize {
        if outcome == Outcome::Unchanged {
            return self.unchanged;
        }
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }
}

/// The business columns a history image holds (what a restore compares and writes).
const FIELDS: [&str; 6] = [
    "status",
    "plan_id",
    "country",
    "price_locked_amount",
    "price_locked_currency",
    "price_locked_until",
];

impl Row {
    /// A field's value as text.
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "status" => Some(&self.status),
            "plan_id" => Some(&self.plan_id),
            "country" => Some(&self.country),
            "price_locked_amount" => self.price_locked_amount.as_deref(),
            "price_locked_currency" => self.price_locked_currency.as_deref(),
            "price_locked_until" => self.price_locked_until.as_deref(),
            _ => None,
        }
    }

    fn set(&mut self, name: &str, value: Option<&str>) {
        let v = value.map(str::to_string);
        match name {
            "status" => self.status = v.unwrap_or_default(),
            "plan_id" => self.plan_id = v.unwrap_or_default(),
            "country" => self.country = v.unwrap_or_default(),
            "price_locked_amount" => self.price_locked_amount = v,
            "price_locked_currency" => self.price_locked_currency = v,
            "price_locked_until" => self.price_locked_until = v,
            _ => {}
        }
    }

    /// Whether two rows hold the same values, each compared as what it is: an amount
    /// as a decimal (`19.990` is `19.99`), an instant as an instant (PostgreSQL writes
    /// a row image's `timestamptz` in the writing session's `TimeZone`, so one instant
    /// has many texts), the rest as text.
    pub fn same_as(&self, other: &Row) -> bool {
        FIELDS
            .iter()
            .all(|f| same_value(f, self.field(f), other.field(f)))
    }
}

fn same_value(field: &str, a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match field {
            "price_locked_amount" => {
                match (crate::plan::Price::parse(a), crate::plan::Price::parse(b)) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => false,
                }
            }
            "price_locked_until" => {
                let at = |t: &str| crate::plan::parse_bound(t, crate::plan::Bound::End);
                matches!((at(a), at(b)), (Ok(x), Ok(y)) if x == y)
            }
            _ => false,
        },
        _ => false,
    }
}

fn same(a: &Option<Row>, b: &Option<Row>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    }
}

/// What a restore does with one member (the rules in the module doc): the outcome, and
/// what it writes (or would have).
pub(crate) fn decide(changes: &Changes, spec: &RestoreSpec, seeds: &[Seed]) -> MemberResult {
    let now = changes.current.as_ref().and_then(Row::of_image);
    let result = |outcome, then, later, why: Option<&str>| MemberResult {
        member_id: 0,
        outcome,
        now: now.clone(),
        then,
        later,
        why: why.map(str::to_string),
    };
    let selected: Vec<&Change> = changes.after.iter().filter(|c| spec.selects(c)).collect();
    let Some(first) = selected.first() else {
        return result(Outcome::Unchanged, now.clone(), None, None);
    };
    if seeds.iter().any(|s| s.seq > first.seq) {
        return result(
            Outcome::Unknown,
            None,
            None,
            Some(
                "a bulk seed after the selected changes rewrote members without per-member history",
            ),
        );
    }
    let target = if first.op == "insert" {
        None
    } else {
        match first.before.as_ref().map(Row::of_image) {
            Some(Some(row)) => Some(row),
            _ => {
                return result(
                    Outcome::Unknown,
                    None,
                    None,
                    Some("its row image before the selected changes lacks business columns"),
                )
            }
        }
    };
    if same(&now, &target) {
        return result(Outcome::Unchanged, target, None, None);
    }
    // The newest change after the first selected one that the restore does not revert.
    let later = changes
        .after
        .iter()
        .rfind(|c| c.seq > first.seq && !spec.selects(c))
        .map(|c| Later {
            seq: c.seq,
            at: c.at.clone(),
            op: c.op.clone(),
            actor: c.actor.clone(),
            reason: c.reason.clone(),
        });
    let deleted_by_later = now.is_none()
        && changes
            .after
            .last()
            .is_some_and(|c| c.op == "delete" && !spec.selects(c));
    match (&now, &target) {
        (Some(_), None) if !spec.undo_inserts => {
            return result(
                Outcome::Skipped,
                None,
                None,
                Some("the selected changes created it: --undo-inserts deletes it"),
            )
        }
        (None, Some(_)) if !deleted_by_later && !spec.undo_deletes => {
            return result(
                Outcome::Skipped,
                target,
                None,
                Some("the selected changes deleted it: --undo-deletes re-inserts it"),
            )
        }
        (None, Some(_)) if deleted_by_later && !(spec.overwrite_later && spec.undo_deletes) => {
            return result(Outcome::Conflict, target, later, None)
        }
        _ => {}
    }
    let Some(later) = later else {
        return result(Outcome::Restored, target, None, None);
    };
    if !spec.overwrite_later {
        return result(Outcome::Conflict, target, Some(later), None);
    }
    // Overwriting later changes: revert the fields the selected changes touched, keep
    // the rest as they are now.
    let write = match (&now, &target) {
        (Some(now), Some(target)) => {
            let mut row = now.clone();
            for f in FIELDS {
                let touched = selected.iter().any(|c| {
                    let v = |img: &Option<Value>| img.as_ref().and_then(Row::of_image);
                    match (v(&c.before), v(&c.after)) {
                        (Some(b), Some(a)) => !same_value(f, b.field(f), a.field(f)),
                        _ => true,
                    }
                });
                if touched {
                    row.set(f, target.field(f));
                }
            }
            Some(row)
        }
        _ => target,
    };
    result(Outcome::Restored, write, Some(later), None)
}

/// One member's write by a restore.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Action {
    pub member_id: i64,
    /// Its row now (`None`: absent).
    pub now: Option<Row>,
    /// Its row to write (`None`: delete it).
    pub then: Option<Row>,
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

    /// Reverts the selected changes (see the module doc and [`decide`]), in batches,
    /// each an ordinary transaction recorded with actor [`RESTORE_ACTOR`]; with
    /// `dry_run`, only reports. `progress` is told, after each batch, how many members
    /// were examined of how many.
    pub async fn restore(
        &self,
        spec: &RestoreSpec,
        mut progress: impl FnMut(usize, usize, &RestoreReport),
    ) -> Result<RestoreReport, StoreError> {
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
        let mut examined = 0;
        for chunk in targets.chunks(RESTORE_BATCH) {
            let (changes, seeds) = match &self.backend {
                Backend::Sqlite(s) => {
                    let (ids, at) = (chunk.to_vec(), spec.as_of.clone());
                    super::blocking(s, move |s| s.history_after_instant(&ids, &at)).await?
                }
                Backend::Postgres(p) => p.history_after_instant(chunk, &spec.as_of).await?,
            };
            let mut writes = Vec::new();
            for id in chunk {
                let mut r = decide(&changes.get(id).cloned().unwrap_or_default(), spec, &seeds);
                r.member_id = *id;
                match r.outcome {
                    Outcome::Unchanged => report.unchanged += 1,
                    Outcome::Restored => {
                        writes.push(Action {
                            member_id: *id,
                            now: r.now.clone(),
                            then: r.then.clone(),
                        });
                        report.results.push(r);
                    }
                    _ => report.results.push(r),
                }
            }
            if !spec.dry_run && !writes.is_empty() {
                let reason = format!("restore as of {}", spec.as_of);
                match &self.backend {
                    Backend::Sqlite(s) => {
                        let batch = writes.clone();
                        super::blocking(s, move |s| s.apply_restore(&batch, &reason)).await?
                    }
                    Backend::Postgres(p) => p.apply_restore(&writes, &reason).await?,
                }
            }
            examined += chunk.len();
            progress(examined, targets.len(), &report);
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

    fn change(
        seq: i64,
        op: &str,
        actor: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Change {
        Change {
            seq,
            at: format!("2026-11-30T08:00:{seq:02}.000000Z"),
            op: op.into(),
            actor: actor.into(),
            reason: None,
            before,
            after,
        }
    }

    fn row(status: &str, plan: &str) -> Value {
        json!({"status": status, "plan_id": plan, "country": "US"})
    }

    fn by(actor: &str) -> RestoreSpec {
        RestoreSpec {
            as_of: at("2026-11-30T08:00:00Z"),
            actor: Some(actor.into()),
            ..RestoreSpec::default()
        }
    }

    #[test]
    fn a_restore_reverts_the_selected_changes_and_leaves_later_work_alone() {
        let bad = change(
            1,
            "update",
            "bad",
            Some(row("active", "basic")),
            Some(row("cancelled", "basic")),
        );
        // Nothing after: restored to the state before the bad change.
        let alone = Changes {
            after: vec![bad.clone()],
            current: Some(row("cancelled", "basic")),
        };
        let r = decide(&alone, &by("bad"), &[]);
        assert_eq!(r.outcome, Outcome::Restored);
        assert_eq!(r.then.unwrap().status, "active");
        // Another actor's later change to another field: a conflict, with that change.
        let billing = change(
            2,
            "update",
            "billing",
            Some(row("cancelled", "basic")),
            Some(row("cancelled", "premium")),
        );
        let later = Changes {
            after: vec![bad.clone(), billing.clone()],
            current: Some(row("cancelled", "premium")),
        };
        let r = decide(&later, &by("bad"), &[]);
        assert_eq!(r.outcome, Outcome::Conflict);
        assert_eq!(r.later.unwrap().actor, "billing");
        // Overwriting: the bad change's field reverted, billing's kept.
        let spec = RestoreSpec {
            overwrite_later: true,
            ..by("bad")
        };
        let r = decide(&later, &spec, &[]);
        assert_eq!(r.outcome, Outcome::Restored);
        let then = r.then.unwrap();
        assert_eq!(
            (then.status.as_str(), then.plan_id.as_str()),
            ("active", "premium")
        );
        // Already as it was: nothing to write.
        let done = Changes {
            after: vec![bad.clone(), change(3, "update", RESTORE_ACTOR, None, None)],
            current: Some(row("active", "basic")),
        };
        assert_eq!(decide(&done, &by("bad"), &[]).outcome, Outcome::Unchanged);
        // A seed after the bad change: unknown.
        let seed = Seed {
            seq: 2,
            at: at("2026-11-30T08:00:05Z"),
        };
        assert_eq!(
            decide(&alone, &by("bad"), &[seed]).outcome,
            Outcome::Unknown
        );
    }

    #[test]
    fn creations_and_deletions_are_undone_only_with_their_flags_and_erasures_never_alone() {
        let created = Changes {
            after: vec![change(
                1,
                "insert",
                "bad",
                None,
                Some(row("active", "basic")),
            )],
            current: Some(row("active", "basic")),
        };
        assert_eq!(decide(&created, &by("bad"), &[]).outcome, Outcome::Skipped);
        let undo = RestoreSpec {
            undo_inserts: true,
            ..by("bad")
        };
        let r = decide(&created, &undo, &[]);
        assert_eq!((r.outcome, r.then), (Outcome::Restored, None));
        let deleted = Changes {
            after: vec![change(
                1,
                "delete",
                "bad",
                Some(row("active", "basic")),
                None,
            )],
            current: None,
        };
        assert_eq!(decide(&deleted, &by("bad"), &[]).outcome, Outcome::Skipped);
        let undo = RestoreSpec {
            undo_deletes: true,
            ..by("bad")
        };
        assert_eq!(decide(&deleted, &undo, &[]).outcome, Outcome::Restored);
        // Erased by someone else after the bad change: a conflict, even with
        // --undo-deletes; both flags to overwrite it.
        let erased = Changes {
            after: vec![
                change(
                    1,
                    "update",
                    "bad",
                    Some(row("active", "basic")),
                    Some(row("cancelled", "basic")),
                ),
                change(2, "delete", "gdpr", Some(row("cancelled", "basic")), None),
            ],
            current: None,
        };
        assert_eq!(decide(&erased, &undo, &[]).outcome, Outcome::Conflict);
        let both = RestoreSpec {
            undo_deletes: true,
            overwrite_later: true,
            ..by("bad")
        };
        assert_eq!(decide(&erased, &both, &[]).outcome, Outcome::Restored);
    }

    #[test]
    fn rows_compare_as_typed_values() {
        let a = Row::of_image(&json!({"status": "active", "plan_id": "p", "country": "US",
            "price_locked_amount": 19.990, "price_locked_currency": "USD",
            "price_locked_until": "2027-05-31T20:00:00-04:00"}))
        .unwrap();
        let b = Row::of_image(&json!({"status": "active", "plan_id": "p", "country": "US",
            "price_locked_amount": "19.99", "price_locked_currency": "USD",
            "price_locked_until": "2027-06-01T00:00:00+00:00"}))
        .unwrap();
        assert!(a.same_as(&b));
        let c = Row {
            price_locked_until: Some("2027-06-01T00:00:01Z".into()),
            ..b.clone()
        };
        assert!(!a.same_as(&c));
    }
}
