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
         'country', {r}.country, 'version', {r}.version, 'updated_at', {r}.updated_at, \
         'price_locked_amount', {r}.price_locked_amount, \
         'price_locked_currency', {r}.price_locked_currency, \
         'price_locked_until', {r}.price_locked_until)"
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
    -- and MEMBER_ADDED_COLUMNS (the price lock), added by migrate
);
-- Pricing rules (README, "Pricing rules"). Instants are RFC 3339 text in UTC
-- ('2027-02-01T00:00:00Z'); amounts decimal text; a NULL amount withdraws the plan.
CREATE TABLE IF NOT EXISTS scheduled_prices (
    country      TEXT NOT NULL CHECK (length(country) = 2 AND country = upper(country)),
    plan_id      TEXT NOT NULL,
    currency     TEXT NOT NULL,
    amount       TEXT CHECK (amount IS NULL OR (amount GLOB '[0-9]*' AND amount NOT GLOB '*[^0-9.]*')),
    effective_at TEXT NOT NULL,
    PRIMARY KEY (country, plan_id, effective_at)
);
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    country       TEXT NOT NULL CHECK (length(country) = 2 AND country = upper(country)),
    starts_at     TEXT NOT NULL,
    ends_at       TEXT
);
CREATE TABLE IF NOT EXISTS experiment_cells (
    experiment_id TEXT NOT NULL,
    cell          TEXT NOT NULL,
    weight_bp     INTEGER NOT NULL CHECK (weight_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (experiment_id, cell)
);
CREATE TABLE IF NOT EXISTS experiment_prices (
    experiment_id TEXT NOT NULL,
    cell          TEXT NOT NULL,
    plan_id       TEXT NOT NULL,
    currency      TEXT,
    amount        TEXT CHECK (amount IS NULL OR (amount GLOB '[0-9]*' AND amount NOT GLOB '*[^0-9.]*')),
    PRIMARY KEY (experiment_id, cell, plan_id)
);
CREATE TABLE IF NOT EXISTS partner_offers (
    partner   TEXT NOT NULL,
    country   TEXT NOT NULL CHECK (length(country) = 2 AND country = upper(country)),
    plan_id   TEXT NOT NULL,
    name      TEXT NOT NULL,
    currency  TEXT NOT NULL,
    amount    TEXT NOT NULL CHECK (amount GLOB '[0-9]*' AND amount NOT GLOB '*[^0-9.]*'),
    starts_at TEXT NOT NULL,
    ends_at   TEXT,
    PRIMARY KEY (partner, country, plan_id, starts_at)
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
-- A restore's selection (entries after T) and the seeds every member's state at T reads.
CREATE INDEX IF NOT EXISTS member_history_at ON member_history (at);
CREATE INDEX IF NOT EXISTS member_history_seed ON member_history (seq) WHERE op = 'seed';
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
pub(super) const CATALOG_TRIGGERS: [&str; 21] = [
    "plans_ai",
    "plans_au",
    "plans_ad",
    "plan_prices_ai",
    "plan_prices_au",
    "plan_prices_ad",
    "scheduled_prices_ai",
    "scheduled_prices_au",
    "scheduled_prices_ad",
    "experiments_ai",
    "experiments_au",
    "experiments_ad",
    "experiment_cells_ai",
    "experiment_cells_au",
    "experiment_cells_ad",
    "experiment_prices_ai",
    "experiment_prices_au",
    "experiment_prices_ad",
    "partner_offers_ai",
    "partner_offers_au",
    "partner_offers_ad",
];

/// The catalog tables, each with its columns (for history's row images) and whether
/// it has a `country` and a `plan_id` (history's columns of the same names).
pub(super) const CATALOG_TABLES: [(&str, &[&str], bool, bool); 7] = [
    (
        "plans",
        &[
            "plan_id",
            "name",
            "max_streams",
            "max_resolution",
            "download_devices",
            "ads",
            "device_classes",
        ],
        false,
        true,
    ),
    (
        "plan_prices",
        &["country", "plan_id", "currency", "amount"],
        true,
        true,
    ),
    (
        "scheduled_prices",
        &["country", "plan_id", "currency", "amount", "effective_at"],
        true,
        true,
    ),
    (
        "experiments",
        &["experiment_id", "country", "starts_at", "ends_at"],
        true,
        false,
    ),
    (
        "experiment_cells",
        &["experiment_id", "cell", "weight_bp"],
        false,
        false,
    ),
    (
        "experiment_prices",
        &["experiment_id", "cell", "plan_id", "currency", "amount"],
        false,
        true,
    ),
    (
        "partner_offers",
        &[
            "partner",
            "country",
            "plan_id",
            "name",
            "currency",
            "amount",
            "starts_at",
            "ends_at",
        ],
        true,
        true,
    ),
];

/// Columns added to `memberships` after its first release, added by `migrate` to an
/// older database (SQLite has no `ADD COLUMN IF NOT EXISTS`). The price lock
/// (grandfathering, README "Pricing rules"): the member pays `price_locked_amount` in
/// `price_locked_currency` until `price_locked_until` (RFC 3339; NULL: no end date),
/// then the catalog price.
pub(super) const MEMBER_ADDED_COLUMNS: [(&str, &str); 3] = [
    ("price_locked_amount", "TEXT CHECK (price_locked_amount IS NULL OR (price_locked_amount GLOB '[0-9]*' AND price_locked_amount NOT GLOB '*[^0-9.]*'))"),
    ("price_locked_currency", "TEXT"),
    ("price_locked_until", "TEXT"),
];

pub(super) fn catalog_triggers_sql() -> String {
    let image = |columns: &[&str], r: &str| {
        let pairs: Vec<String> = columns.iter().map(|c| format!("'{c}', {r}.{c}")).collect();
        format!("json_object({})", pairs.join(", "))
    };
    let mut sql = String::new();
    for (table, columns, has_country, has_plan) in CATALOG_TABLES {
        for (suffix, op) in [("ai", "INSERT"), ("au", "UPDATE"), ("ad", "DELETE")] {
            let row = if op == "DELETE" { "OLD" } else { "NEW" };
            let before = if op == "INSERT" {
                "NULL".into()
            } else {
                image(columns, "OLD")
            };
            let after = if op == "DELETE" {
                "NULL".into()
            } else {
                image(columns, "NEW")
            };
            let country = if has_country {
                format!("{row}.country")
            } else if table.starts_with("experiment_") {
                // An experiment's cells and prices are found by their experiment's country.
                format!(
                    "(SELECT e.country FROM experiments e WHERE e.experiment_id = {row}.experiment_id)"
                )
            } else {
                "NULL".into()
            };
            let plan = if has_plan {
                format!("{row}.plan_id")
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
    VALUES ({SEQ}, {HISTORY_AT}, '{table}', '{op_lower}', {country}, {plan},
            (SELECT version FROM catalog_meta WHERE id = 1), {before}, {after}, {ACTOR}, {REASON});
END;
"#,
                op_lower = op.to_ascii_lowercase()
            ));
        }
    }
    sql
}

/// The rules of the embedded store's public tables (the PostgreSQL store's
/// `checks()`, in SQLite's terms): enforced on every write by `BEFORE` triggers (SQLite
/// cannot add a constraint to an existing table, nor type its columns), and checked
/// against the rows already there by `migrate`, which reports those that break one.
/// Each: table, rule name, condition over `$.column` (`NEW.` in a trigger), row key.
pub(super) fn rules() -> Vec<(&'static str, &'static str, String, &'static str)> {
    fn amount(col: &str, nullable: bool) -> String {
        let c = format!("$.{col}");
        let sane = format!(
            "(typeof({c}) = 'text' AND {c} GLOB '[0-9]*' AND {c} NOT GLOB '*[^0-9.]*' \
             AND {c} NOT GLOB '*.*.*' AND {c} NOT GLOB '*.' AND {c} NOT GLOB '*.?????*' \
             AND instr({c} || '.', '.') <= 13)"
        );
        if nullable {
            format!("({c} IS NULL OR {sane})")
        } else {
            sane
        }
    }
    fn label(col: &str, max: usize) -> String {
        let c = format!("$.{col}");
        format!(
            "(typeof({c}) = 'text' AND length({c}) BETWEEN 1 AND {max} \
             AND {c} NOT GLOB '*[' || char(1) || '-' || char(31) || char(127) || ']*')"
        )
    }
    fn instant(col: &str, nullable: bool) -> String {
        let c = format!("$.{col}");
        let ok = format!(
            "({c} IN ('infinity', '-infinity') OR (typeof({c}) = 'text' \
             AND {c} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]*' \
             AND julianday({c}) IS NOT NULL))"
        );
        if nullable {
            format!("({c} IS NULL OR {ok})")
        } else {
            ok
        }
    }
    fn span(starts: &str, ends: &str) -> String {
        let (s, e) = (format!("$.{starts}"), format!("$.{ends}"));
        format!(
            "({e} IS NULL OR {e} = 'infinity' OR {s} = '-infinity' \
             OR ({e} <> '-infinity' AND {s} <> 'infinity' AND julianday({e}) > julianday({s})))"
        )
    }
    fn count(col: &str) -> String {
        format!("(typeof($.{col}) = 'integer' AND $.{col} BETWEEN 0 AND 1000)")
    }
    let currency = |col: &str, nullable: bool| {
        let ok = format!("$.{col} GLOB '[A-Z][A-Z][A-Z]'");
        if nullable {
            format!("($.{col} IS NULL OR {ok})")
        } else {
            ok
        }
    };
    let member = "member_id";
    let price = "country || '/' || plan_id";
    let offer = "partner || '/' || country || '/' || plan_id";
    let eprice = "experiment_id || '/' || cell || '/' || plan_id";
    vec![
        ("memberships", "memberships_lock_amount", amount("price_locked_amount", true), member),
        ("memberships", "memberships_lock_currency",
            format!("($.price_locked_amount IS NULL OR {})", currency("price_locked_currency", false)), member),
        ("memberships", "memberships_lock_until", instant("price_locked_until", true), member),
        // Not the member's plan or country: any text has a meaning there (see the
        // PostgreSQL store's checks).
        ("memberships", "memberships_plan_id", "typeof($.plan_id) = 'text'".into(), member),
        ("plans", "plans_plan_id", label("plan_id", 64), "plan_id"),
        ("plans", "plans_name", label("name", 200), "plan_id"),
        ("plans", "plans_max_resolution", label("max_resolution", 32), "plan_id"),
        ("plans", "plans_limits", format!("({} AND {})", count("max_streams"), count("download_devices")), "plan_id"),
        ("plans", "plans_ads", "($.ads IN (0, 1) AND typeof($.ads) = 'integer')".into(), "plan_id"),
        ("plans", "plans_device_classes",
            "(typeof($.device_classes) = 'text' AND length($.device_classes) <= 1000 AND $.device_classes NOT GLOB '*[^a-z0-9_|-]*')".into(),
            "plan_id"),
        ("plan_prices", "plan_prices_amount", amount("amount", false), price),
        ("plan_prices", "plan_prices_currency", currency("currency", false), price),
        ("scheduled_prices", "scheduled_prices_amount", amount("amount", true), price),
        ("scheduled_prices", "scheduled_prices_currency", currency("currency", false), price),
        ("scheduled_prices", "scheduled_prices_effective_at", instant("effective_at", false), price),
        ("experiments", "experiments_id", label("experiment_id", 64), "experiment_id"),
        ("experiments", "experiments_starts_at", instant("starts_at", false), "experiment_id"),
        ("experiments", "experiments_ends_at", instant("ends_at", true), "experiment_id"),
        ("experiments", "experiments_span", span("starts_at", "ends_at"), "experiment_id"),
        ("experiment_cells", "experiment_cells_cell", label("cell", 64), "experiment_id || '/' || cell"),
        ("experiment_cells", "experiment_cells_weight",
            "(typeof($.weight_bp) = 'integer' AND $.weight_bp BETWEEN 0 AND 10000)".into(),
            "experiment_id || '/' || cell"),
        ("experiment_prices", "experiment_prices_amount", amount("amount", true), eprice),
        ("experiment_prices", "experiment_prices_currency", currency("currency", true), eprice),
        ("partner_offers", "partner_offers_partner", label("partner", 64), offer),
        ("partner_offers", "partner_offers_name", label("name", 200), offer),
        ("partner_offers", "partner_offers_amount", amount("amount", false), offer),
        ("partner_offers", "partner_offers_currency", currency("currency", false), offer),
        ("partner_offers", "partner_offers_starts_at", instant("starts_at", false), offer),
        ("partner_offers", "partner_offers_ends_at", instant("ends_at", true), offer),
        ("partner_offers", "partner_offers_span", span("starts_at", "ends_at"), offer),
    ]
}

/// The tables [`rules`] covers, each with its two rule triggers (`{table}_rules_bi`,
/// `{table}_rules_bu`).
pub(super) const RULE_TABLES: [&str; 8] = [
    "memberships",
    "plans",
    "plan_prices",
    "scheduled_prices",
    "experiments",
    "experiment_cells",
    "experiment_prices",
    "partner_offers",
];

/// The `BEFORE INSERT` and `BEFORE UPDATE` triggers of `table` that refuse a row
/// breaking one of [`rules`] (naming it), and for `experiment_cells` the rule across
/// rows: an experiment's cells give at most 10,000 basis points in all.
pub(super) fn rule_triggers_sql(table: &str) -> String {
    let checks: Vec<String> = rules()
        .into_iter()
        .filter(|(t, ..)| *t == table)
        .map(|(t, name, cond, _)| {
            format!(
                "    SELECT RAISE(ABORT, '{t}: the row breaks {name}') WHERE NOT coalesce({}, 0);",
                cond.replace("$.", "NEW.")
            )
        })
        .collect();
    let body = checks.join("\n");
    let mut sql = String::new();
    for (suffix, op) in [("bi", "INSERT"), ("bu", "UPDATE")] {
        sql.push_str(&format!(
            "CREATE TRIGGER IF NOT EXISTS {table}_rules_{suffix} BEFORE {op} ON {table} BEGIN\n{body}\nEND;\n"
        ));
    }
    if table == "experiment_cells" {
        for (suffix, op) in [("ai", "INSERT"), ("au", "UPDATE")] {
            sql.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS experiment_cells_weights_{suffix} AFTER {op} ON experiment_cells BEGIN
    SELECT RAISE(ABORT, 'experiment_cells: the cells of an experiment give over 10000 basis points in all (experiment_cells_weights)')
     WHERE (SELECT sum(weight_bp) FROM experiment_cells WHERE experiment_id = NEW.experiment_id) > 10000;
END;\n"
            ));
        }
    }
    sql
}

/// Every rule trigger's name (so `migrate` can replace them).
pub(super) fn rule_trigger_names(table: &str) -> Vec<String> {
    let mut names = vec![format!("{table}_rules_bi"), format!("{table}_rules_bu")];
    if table == "experiment_cells" {
        names.push("experiment_cells_weights_ai".into());
        names.push("experiment_cells_weights_au".into());
    }
    names
}
