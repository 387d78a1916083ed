//! The embedded store's tables and triggers. Triggers do change capture in the
//! writer's own transaction, so a raw `sqlite3` session writing the file is captured
//! exactly like the node's own writes.

/// Milliseconds since the epoch, as SQLite computes it inside a trigger.
pub(super) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
pub(super) const NOW_ISO: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";
/// History's `at`: UTC with six fractional digits like PostgreSQL's, though SQLite's
/// clock gives milliseconds (the last three digits are zeros).
pub(super) const HISTORY_AT: &str = "(strftime('%Y-%m-%dT%H:%M:%f','now') || '000Z')";
/// Who history records as a change's writer: SQLite has no session settings, so a
/// writer names itself in the one row of `history_context` inside its transaction and
/// clears it before commit (SQLite has one writer at a time, so no other writer can
/// see it set); unnamed writers are recorded as `sqlite`.
const ACTOR: &str = "coalesce((SELECT actor FROM history_context WHERE id = 1), 'sqlite')";
const REASON: &str = "(SELECT reason FROM history_context WHERE id = 1)";
const NEXT_SEQ: &str = "UPDATE history_seq SET last = last + 1 WHERE id = 1";
const SEQ: &str = "(SELECT last FROM history_seq WHERE id = 1)";

/// A `memberships` row image as JSON, from a row alias (`NEW`, `OLD`, or a table).
fn member_json(r: &str) -> String {
    format!(
        "json_object('member_id', {r}.member_id, 'status', {r}.status, 'plan_id', {r}.plan_id, \
         'country', {r}.country, 'version', {r}.version, 'updated_at', {r}.updated_at)"
    )
}

/// Tables and indexes. `IF NOT EXISTS` everywhere: `migrate` is idempotent.
pub(super) fn schema_sql() -> String {
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
CREATE TABLE IF NOT EXISTS member_versions (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO member_versions (id, last) VALUES (1, 0);
UPDATE member_versions SET last = max(last,
    (SELECT coalesce(max(version), 0) FROM memberships),
    (SELECT coalesce(max(version), 0) FROM change_log WHERE table_name = 'memberships'))
 WHERE id = 1;
CREATE INDEX IF NOT EXISTS change_log_changed_at ON change_log (changed_at_ms);
-- History (see store::history and README "History"): never trimmed.
CREATE TABLE IF NOT EXISTS history_seq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO history_seq (id, last) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS history_context (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    actor  TEXT,
    reason TEXT
);
INSERT OR IGNORE INTO history_context (id) VALUES (1);
CREATE TABLE IF NOT EXISTS member_history (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    op        TEXT NOT NULL,
    member_id INTEGER,
    "before"  TEXT,
    "after"   TEXT,
    actor     TEXT NOT NULL,
    reason    TEXT
);
CREATE INDEX IF NOT EXISTS member_history_member ON member_history (member_id, seq);
CREATE TABLE IF NOT EXISTS catalog_history (
    seq             INTEGER PRIMARY KEY,
    at              TEXT NOT NULL,
    table_name      TEXT NOT NULL,
    op              TEXT NOT NULL,
    country         TEXT,
    plan_id         TEXT,
    catalog_version INTEGER,
    "before"        TEXT,
    "after"         TEXT,
    actor           TEXT NOT NULL,
    reason          TEXT
);
CREATE INDEX IF NOT EXISTS catalog_history_country ON catalog_history (country, seq);
-- The consistency inspector's question, "when was the first version above v written?",
-- read per sampled answer (inspector.samples_per_second a node).
CREATE INDEX IF NOT EXISTS change_log_member ON change_log (member_id, version) WHERE member_id IS NOT NULL;
"#
    )
}

/// The member triggers, kept apart because a bulk seed drops and recreates them in
/// its own transaction (so no other writer ever sees the table without them), and
/// `migrate` replaces them (older databases have older ones).
///
/// Versions come from one store-wide counter (`member_versions`), so a member's
/// version only rises, also across a delete and a re-insert of the same id. SQLite has
/// one writer at a time, so drawing from the counter needs no further care. A trigger
/// does not fire from its own body (`recursive_triggers` is off by default), and the
/// update trigger skips the updates these triggers make themselves: those set the
/// version to the counter's current value, which no writer does.
pub(super) fn member_triggers_sql() -> String {
    let next = "UPDATE member_versions SET last = last + 1 WHERE id = 1";
    let current = "(SELECT last FROM member_versions WHERE id = 1)";
    let (old, now) = (member_json("OLD"), member_json("m"));
    let history = |op: &str, id: &str, before: &str, after: &str| {
        format!(
            "{NEXT_SEQ};
    INSERT INTO member_history (seq, at, op, member_id, \"before\", \"after\", actor, reason)
    VALUES ({SEQ}, {HISTORY_AT}, {op}, {id}, {before}, {after}, {ACTOR}, {REASON});"
        )
    };
    let after_row = format!("(SELECT {now} FROM memberships m WHERE m.member_id = NEW.member_id)");
    let h_insert = history("'insert'", "NEW.member_id", "NULL", &after_row);
    let h_update = history(
        "CASE WHEN OLD.member_id <> NEW.member_id THEN 'insert' ELSE 'update' END",
        "NEW.member_id",
        &format!("CASE WHEN OLD.member_id <> NEW.member_id THEN NULL ELSE {old} END"),
        &after_row,
    );
    let h_delete = history("'delete'", "OLD.member_id", &old, "NULL");
    format!(
        r#"
CREATE TRIGGER memberships_ai AFTER INSERT ON memberships BEGIN
    {next};
    UPDATE memberships SET version = {current}, updated_at = {NOW_ISO}
     WHERE member_id = NEW.member_id;
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'insert', NEW.member_id, {current}, {NOW_MS});
    {h_insert}
END;
CREATE TRIGGER memberships_au AFTER UPDATE ON memberships
WHEN NOT (NEW.version = {current} AND NEW.version > OLD.version) BEGIN
    {next};
    UPDATE memberships SET version = {current}, updated_at = {NOW_ISO}
     WHERE member_id = NEW.member_id;
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'update', NEW.member_id, {current}, {NOW_MS});
    {h_update}
END;
CREATE TRIGGER memberships_au_key AFTER UPDATE OF member_id ON memberships
WHEN OLD.member_id <> NEW.member_id BEGIN
    {next};
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'delete', OLD.member_id, {current}, {NOW_MS});
    {h_delete}
END;
CREATE TRIGGER memberships_ad AFTER DELETE ON memberships BEGIN
    {next};
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'delete', OLD.member_id, {current}, {NOW_MS});
    {h_delete}
END;
"#
    )
}

pub(super) const MEMBER_TRIGGERS: [&str; 4] = [
    "memberships_ai",
    "memberships_au",
    "memberships_au_key",
    "memberships_ad",
];

/// The catalog triggers' names, replaced by `migrate` (older databases have older ones).
pub(super) const CATALOG_TRIGGERS: [&str; 6] = [
    "plans_ai",
    "plans_au",
    "plans_ad",
    "plan_prices_ai",
    "plan_prices_au",
    "plan_prices_ad",
];

pub(super) fn catalog_triggers_sql() -> String {
    let image = |table: &str, r: &str| match table {
        "plans" => format!(
            "json_object('plan_id', {r}.plan_id, 'name', {r}.name, 'max_streams', {r}.max_streams, \
             'max_resolution', {r}.max_resolution, 'download_devices', {r}.download_devices, \
             'ads', {r}.ads, 'device_classes', {r}.device_classes)"
        ),
        _ => format!(
            "json_object('country', {r}.country, 'plan_id', {r}.plan_id, 'currency', {r}.currency, \
             'amount', {r}.amount)"
        ),
    };
    let mut sql = String::new();
    for table in ["plans", "plan_prices"] {
        for (suffix, op) in [("ai", "INSERT"), ("au", "UPDATE"), ("ad", "DELETE")] {
            let row = if op == "DELETE" { "OLD" } else { "NEW" };
            let before = if op == "INSERT" {
                "NULL".into()
            } else {
                image(table, "OLD")
            };
            let after = if op == "DELETE" {
                "NULL".into()
            } else {
                image(table, "NEW")
            };
            let country = if table == "plan_prices" {
                format!("{row}.country")
            } else {
                "NULL".into()
            };
            sql.push_str(&format!(
                r#"
CREATE TRIGGER IF NOT EXISTS {table}_{suffix} AFTER {op} ON {table} BEGIN
    UPDATE catalog_meta SET version = version + 1 WHERE id = 1;
    INSERT INTO change_log (table_name, op, version, changed_at_ms)
    VALUES ('{table}', '{op_lower}', (SELECT version FROM catalog_meta WHERE id = 1), {NOW_MS});
    {NEXT_SEQ};
    INSERT INTO catalog_history (seq, at, table_name, op, country, plan_id, catalog_version,
                                 "before", "after", actor, reason)
    VALUES ({SEQ}, {HISTORY_AT}, '{table}', '{op_lower}', {country}, {row}.plan_id,
            (SELECT version FROM catalog_meta WHERE id = 1), {before}, {after}, {ACTOR}, {REASON});
END;
"#,
                op_lower = op.to_ascii_lowercase()
            ));
        }
    }
    sql
}
