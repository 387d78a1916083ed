//! The embedded store's tables and triggers. Triggers do change capture in the
//! writer's own transaction, so a raw `sqlite3` session writing the file is captured
//! exactly like the node's own writes.

/// Milliseconds since the epoch, as SQLite computes it inside a trigger.
pub(super) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
pub(super) const NOW_ISO: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

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
    format!(
        r#"
CREATE TRIGGER memberships_ai AFTER INSERT ON memberships BEGIN
    {next};
    UPDATE memberships SET version = {current}, updated_at = {NOW_ISO}
     WHERE member_id = NEW.member_id;
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'insert', NEW.member_id, {current}, {NOW_MS});
END;
CREATE TRIGGER memberships_au AFTER UPDATE ON memberships
WHEN NOT (NEW.version = {current} AND NEW.version > OLD.version) BEGIN
    {next};
    UPDATE memberships SET version = {current}, updated_at = {NOW_ISO}
     WHERE member_id = NEW.member_id;
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'update', NEW.member_id, {current}, {NOW_MS});
END;
CREATE TRIGGER memberships_au_key AFTER UPDATE OF member_id ON memberships
WHEN OLD.member_id <> NEW.member_id BEGIN
    {next};
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'delete', OLD.member_id, {current}, {NOW_MS});
END;
CREATE TRIGGER memberships_ad AFTER DELETE ON memberships BEGIN
    {next};
    INSERT INTO change_log (table_name, op, member_id, version, changed_at_ms)
    VALUES ('memberships', 'delete', OLD.member_id, {current}, {NOW_MS});
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

pub(super) fn catalog_triggers_sql() -> String {
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
