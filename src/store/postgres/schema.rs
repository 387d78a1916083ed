//! The PostgreSQL store's tables, functions and triggers (a public contract: other
//! services write these tables in raw SQL).

/// Tables, functions and triggers; idempotent. Run under an advisory lock so that
/// nodes migrating at once do not race each other's DDL. The trigger functions pin the
/// `search_path` they were created with, so a writer whose own path differs (a psql
/// session writing `schema.memberships`) still reaches this schema's change log.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS plans (
    plan_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    max_streams      INT NOT NULL CHECK (max_streams >= 0),
    max_resolution   TEXT NOT NULL,
    download_devices INT NOT NULL CHECK (download_devices >= 0),
    ads              BOOLEAN NOT NULL DEFAULT false,
    device_classes   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plan_prices (
    country  TEXT NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    plan_id  TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount   NUMERIC NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (country, plan_id)
);
CREATE TABLE IF NOT EXISTS memberships (
    member_id  BIGINT PRIMARY KEY CHECK (member_id > 0),
    status     TEXT NOT NULL CHECK (status IN ('active', 'grace', 'on_hold', 'paused', 'cancelled')),
    plan_id    TEXT NOT NULL,
    country    TEXT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The price lock (grandfathering, README "Pricing rules"): the member pays
-- price_locked_amount in price_locked_currency until price_locked_until (NULL: no end
-- date), then the catalog price. NULL amount: no lock.
ALTER TABLE memberships ADD COLUMN IF NOT EXISTS price_locked_amount NUMERIC
    CHECK (price_locked_amount >= 0);
ALTER TABLE memberships ADD COLUMN IF NOT EXISTS price_locked_currency TEXT;
ALTER TABLE memberships ADD COLUMN IF NOT EXISTS price_locked_until TIMESTAMPTZ;
-- Pricing rules (README, "Pricing rules"); a NULL amount withdraws the plan.
CREATE TABLE IF NOT EXISTS scheduled_prices (
    country      TEXT NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    plan_id      TEXT NOT NULL,
    currency     TEXT NOT NULL,
    amount       NUMERIC CHECK (amount >= 0),
    effective_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (country, plan_id, effective_at)
);
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    country       TEXT NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    starts_at     TIMESTAMPTZ NOT NULL,
    ends_at       TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS experiment_cells (
    experiment_id TEXT NOT NULL,
    cell          TEXT NOT NULL,
    weight_bp     INT NOT NULL CHECK (weight_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (experiment_id, cell)
);
CREATE TABLE IF NOT EXISTS experiment_prices (
    experiment_id TEXT NOT NULL,
    cell          TEXT NOT NULL,
    plan_id       TEXT NOT NULL,
    currency      TEXT,
    amount        NUMERIC CHECK (amount >= 0),
    PRIMARY KEY (experiment_id, cell, plan_id)
);
CREATE TABLE IF NOT EXISTS partner_offers (
    partner   TEXT NOT NULL,
    country   TEXT NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    plan_id   TEXT NOT NULL,
    name      TEXT NOT NULL,
    currency  TEXT NOT NULL,
    amount    NUMERIC NOT NULL CHECK (amount >= 0),
    starts_at TIMESTAMPTZ NOT NULL,
    ends_at   TIMESTAMPTZ,
    PRIMARY KEY (partner, country, plan_id, starts_at)
);
CREATE TABLE IF NOT EXISTS change_log (
    seq        BIGSERIAL PRIMARY KEY,
    txid       BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    table_name TEXT NOT NULL,
    op         TEXT NOT NULL,
    member_id  BIGINT,
    version    BIGINT,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS change_log_txid ON change_log (txid, seq);
-- What a node has not applied yet, asked every second (follower::watch_lag).
CREATE INDEX IF NOT EXISTS change_log_changed_at ON change_log (changed_at);
-- The consistency inspector's question, "when was the first version above v written?",
-- read per sampled answer (inspector.samples_per_second a node).
CREATE INDEX IF NOT EXISTS change_log_member ON change_log (member_id, version) WHERE member_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS catalog_meta (
    id      INT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO catalog_meta (id, version) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS relay_state (
    id              INT PRIMARY KEY CHECK (id = 1),
    cursor_txid     BIGINT NOT NULL,
    trimmed_through BIGINT NOT NULL DEFAULT 0,
    holder          TEXT,
    lease_until     TIMESTAMPTZ
);
INSERT INTO relay_state (id, cursor_txid) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
-- The relay's durable state beside its lease: where it is in the change log (JSON, see
-- store::changes::PgPosition), the last change-stream batch whose position is saved,
-- and the highest batch id it ever reserved (no id is used twice across failovers).
ALTER TABLE relay_state ADD COLUMN IF NOT EXISTS position TEXT;
-- Transactions at or below trimmed_through whose rows trimming kept (they were still
-- running): see store::postgres::changes::TrimPoint.
ALTER TABLE relay_state ADD COLUMN IF NOT EXISTS trim_kept BIGINT[] NOT NULL DEFAULT '{}';
ALTER TABLE relay_state ADD COLUMN IF NOT EXISTS stream_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE relay_state ADD COLUMN IF NOT EXISTS stream_reserved BIGINT NOT NULL DEFAULT 0;
-- Tier writes that failed in a zone, kept until a pass writes them (member_id 0: the
-- zone's member buckets must be flushed after a reseed).
CREATE TABLE IF NOT EXISTS relay_repairs (
    zone      TEXT NOT NULL,
    member_id BIGINT NOT NULL,
    version   BIGINT NOT NULL,
    since     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (zone, member_id)
);

-- History: the second system of record (README, "History"). Every insert, update and
-- delete of memberships, plans and plan_prices, appended by the triggers below in the
-- writer's transaction, with the whole row before and after, and who wrote it and why.
-- Never trimmed by changes.retention; partitioned by month on `at` so an operator can
-- detach old months (readtier_history_partitions keeps months ahead; anything past
-- them lands in the DEFAULT partition). One sequence numbers both tables.
CREATE SEQUENCE IF NOT EXISTS history_seq;
CREATE TABLE IF NOT EXISTS member_history (
    seq       BIGINT NOT NULL DEFAULT nextval('history_seq'),
    at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    txid      BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    op        TEXT NOT NULL,
    member_id BIGINT,
    before    JSONB,
    after     JSONB,
    actor     TEXT NOT NULL,
    reason    TEXT
) PARTITION BY RANGE (at);
CREATE INDEX IF NOT EXISTS member_history_member ON member_history (member_id, seq);
CREATE INDEX IF NOT EXISTS member_history_txid ON member_history (txid, seq);
CREATE INDEX IF NOT EXISTS member_history_seq ON member_history USING brin (seq);
-- A restore's selection (entries after T) and every member's state at T (the seeds):
-- without these each scanned the whole history (0.41-0.64 s at 3 M entries).
CREATE INDEX IF NOT EXISTS member_history_at ON member_history USING brin (at);
CREATE INDEX IF NOT EXISTS member_history_seed ON member_history (seq) WHERE op = 'seed';
CREATE TABLE IF NOT EXISTS member_history_default PARTITION OF member_history DEFAULT;
CREATE TABLE IF NOT EXISTS catalog_history (
    seq             BIGINT NOT NULL DEFAULT nextval('history_seq'),
    at              TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    txid            BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    table_name      TEXT NOT NULL,
    op              TEXT NOT NULL,
    country         TEXT,
    plan_id         TEXT,
    catalog_version BIGINT,
    before          JSONB,
    after           JSONB,
    actor           TEXT NOT NULL,
    reason          TEXT
) PARTITION BY RANGE (at);
CREATE INDEX IF NOT EXISTS catalog_history_country ON catalog_history (country, seq);
CREATE INDEX IF NOT EXISTS catalog_history_txid ON catalog_history (txid, seq);
CREATE INDEX IF NOT EXISTS catalog_history_seq ON catalog_history USING brin (seq);
CREATE TABLE IF NOT EXISTS catalog_history_default PARTITION OF catalog_history DEFAULT;
-- Monthly partitions of both history tables from this month to `months_ahead` months
-- on (idempotent; migrate and the relay call it).
CREATE OR REPLACE FUNCTION readtier_history_partitions(months_ahead INT) RETURNS void
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE m DATE; t TEXT; part TEXT;
BEGIN
    FOR i IN 0..months_ahead LOOP
        m := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date;
        FOREACH t IN ARRAY ARRAY['member_history', 'catalog_history'] LOOP
            part := t || '_' || to_char(m, 'YYYY_MM');
            -- A month already in the DEFAULT partition stays there (a partition cannot
            -- be created over rows the default holds).
            IF to_regclass(part) IS NULL AND NOT EXISTS (
                SELECT 1 FROM member_history_default
                 WHERE at >= m AND at < m + interval '1 month'
                UNION ALL
                SELECT 1 FROM catalog_history_default
                 WHERE at >= m AND at < m + interval '1 month') THEN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, t, m::text || ' 00:00:00+00',
                    (m + interval '1 month')::date::text || ' 00:00:00+00');
            END IF;
        END LOOP;
    END LOOP;
END $$;
SELECT readtier_history_partitions(3);

-- Member versions come from one store-wide sequence, so a member's version only
-- rises, also across a delete and a re-insert of the same id. The sequence starts
-- above every version already handed out (idempotent on a re-run).
CREATE SEQUENCE IF NOT EXISTS member_versions;
SELECT setval('member_versions', GREATEST(
    (SELECT last_value FROM member_versions),
    (SELECT coalesce(max(version), 1) FROM memberships),
    (SELECT coalesce(max(version), 1) FROM change_log WHERE table_name = 'memberships')));

-- An update takes its version before the row changes, holding the row's lock, so
-- updates and deletes of one row draw versions in commit order.
CREATE OR REPLACE FUNCTION readtier_member_version() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF current_setting('readtier.versioning', true) = NEW.member_id::text THEN
        RETURN NEW;  -- readtier_member_log versioning a new row: keep its version
    END IF;
    NEW.version := nextval('member_versions');
    NEW.updated_at := now();
    RETURN NEW;
END $$;
-- Logs every change in the writer's transaction. A new id (insert, or an update of
-- member_id) takes its version here, after the row exists: any concurrent delete of
-- the same id has committed by then, so the new version is above its tombstone.
CREATE OR REPLACE FUNCTION readtier_member_log() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE v BIGINT; who TEXT; why TEXT;
BEGIN
    IF TG_OP <> 'DELETE'
        AND current_setting('readtier.versioning', true) = NEW.member_id::text THEN
        RETURN NULL;
    END IF;
    -- History names its writer: SET LOCAL readtier.actor / readtier.reason, else the
    -- session's application_name, else its user.
    who := coalesce(nullif(current_setting('readtier.actor', true), ''),
                    nullif(current_setting('application_name', true), ''), session_user::text);
    why := nullif(current_setting('readtier.reason', true), '');
    IF TG_OP = 'DELETE' THEN
        INSERT INTO change_log (table_name, op, member_id, version)
        VALUES ('memberships', 'delete', OLD.member_id, nextval('member_versions'));
        INSERT INTO member_history (op, member_id, before, after, actor, reason)
        VALUES ('delete', OLD.member_id, to_jsonb(OLD), NULL, who, why);
    ELSIF TG_OP = 'INSERT' OR OLD.member_id <> NEW.member_id THEN
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO change_log (table_name, op, member_id, version)
            VALUES ('memberships', 'delete', OLD.member_id, nextval('member_versions'));
            INSERT INTO member_history (op, member_id, before, after, actor, reason)
            VALUES ('delete', OLD.member_id, to_jsonb(OLD), NULL, who, why);
        END IF;
        v := nextval('member_versions');
        PERFORM set_config('readtier.versioning', NEW.member_id::text, true);
        UPDATE memberships SET version = v, updated_at = now() WHERE member_id = NEW.member_id;
        PERFORM set_config('readtier.versioning', '', true);
        INSERT INTO change_log (table_name, op, member_id, version)
        VALUES ('memberships', lower(TG_OP), NEW.member_id, v);
        INSERT INTO member_history (op, member_id, before, after, actor, reason)
        VALUES ('insert', NEW.member_id, NULL,
                to_jsonb(NEW) || jsonb_build_object('version', v, 'updated_at', now()), who, why);
    ELSE
        INSERT INTO change_log (table_name, op, member_id, version)
        VALUES ('memberships', 'update', NEW.member_id, NEW.version);
        INSERT INTO member_history (op, member_id, before, after, actor, reason)
        VALUES ('update', NEW.member_id, to_jsonb(OLD), to_jsonb(NEW), who, why);
    END IF;
    PERFORM pg_notify('readtier_changes', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION readtier_catalog_log() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE v BIGINT; old_row JSONB; new_row JSONB;
BEGIN
    UPDATE catalog_meta SET version = version + 1 WHERE id = 1 RETURNING version INTO v;
    INSERT INTO change_log (table_name, op, version) VALUES (TG_TABLE_NAME, lower(TG_OP), v);
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    INSERT INTO catalog_history (table_name, op, country, plan_id, catalog_version,
                                 before, after, actor, reason)
    VALUES (TG_TABLE_NAME, lower(TG_OP),
            -- An experiment's cells and prices are found by their experiment's country.
            coalesce(new_row->>'country', old_row->>'country',
                     (SELECT e.country FROM experiments e WHERE e.experiment_id =
                         coalesce(new_row->>'experiment_id', old_row->>'experiment_id'))),
            coalesce(new_row->>'plan_id', old_row->>'plan_id'), v, old_row, new_row,
            coalesce(nullif(current_setting('readtier.actor', true), ''),
                     nullif(current_setting('application_name', true), ''), session_user::text),
            nullif(current_setting('readtier.reason', true), ''));
    PERFORM pg_notify('readtier_changes', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER memberships_version BEFORE UPDATE ON memberships
    FOR EACH ROW EXECUTE FUNCTION readtier_member_version();
CREATE OR REPLACE TRIGGER memberships_log AFTER INSERT OR UPDATE OR DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION readtier_member_log();
CREATE OR REPLACE TRIGGER plans_log AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER plan_prices_log AFTER INSERT OR UPDATE OR DELETE ON plan_prices
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER scheduled_prices_log AFTER INSERT OR UPDATE OR DELETE ON scheduled_prices
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER experiments_log AFTER INSERT OR UPDATE OR DELETE ON experiments
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER experiment_cells_log AFTER INSERT OR UPDATE OR DELETE ON experiment_cells
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER experiment_prices_log AFTER INSERT OR UPDATE OR DELETE ON experiment_prices
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
CREATE OR REPLACE TRIGGER partner_offers_log AFTER INSERT OR UPDATE OR DELETE ON partner_offers
    FOR EACH ROW EXECUTE FUNCTION readtier_catalog_log();
"#;

/// An amount any currency uses: a number (not `NaN`), from 0 to under 10^12, with at
/// most four decimals (what `Price` holds; `1e300` and `NaN` passed `CHECK (>= 0)`).
fn amount(col: &str, nullable: bool) -> String {
    let sane =
        format!("{col} <> 'NaN' AND {col} >= 0 AND {col} < 1000000000000 AND scale({col}) <= 4");
    if nullable {
        format!("{col} IS NULL OR ({sane})")
    } else {
        sane
    }
}

/// A name or identifier shown in answers: 1 to `max` characters, no control character.
fn label(col: &str, max: usize) -> String {
    format!("length({col}) BETWEEN 1 AND {max} AND {col} !~ '[[:cntrl:]]'")
}

/// The rules every value of the public tables must keep, added to an existing install
/// `NOT VALID` (rows already there are not checked, so `migrate` never fails on them)
/// and then validated: rows that break one are reported by `migrate` and quarantined
/// when read. Each: table, constraint name, condition, the row key for the report.
pub(super) fn checks() -> Vec<(&'static str, &'static str, String, &'static str)> {
    const CURRENCY: &str = "~ '^[A-Z]{3}$'";
    let member = "member_id::text";
    let price = "country || '/' || plan_id";
    vec![
        (
            "memberships",
            "memberships_lock_amount",
            amount("price_locked_amount", true),
            member,
        ),
        (
            "memberships",
            "memberships_lock_currency",
            format!("price_locked_amount IS NULL OR price_locked_currency {CURRENCY}"),
            member,
        ),
        // Not the member's plan or country: any text has a meaning there (a plan or
        // country the catalog lacks is answered as such), and a check per row cost the
        // 10-million-member seed a third more time (2 M: 2.35 s → 3.3 s).
        ("plans", "plans_plan_id", label("plan_id", 64), "plan_id"),
        ("plans", "plans_name", label("name", 200), "plan_id"),
        (
            "plans",
            "plans_max_resolution",
            label("max_resolution", 32),
            "plan_id",
        ),
        (
            "plans",
            "plans_limits",
            "max_streams <= 1000 AND download_devices <= 1000".into(),
            "plan_id",
        ),
        (
            "plans",
            "plans_device_classes",
            "device_classes ~ '^[a-z0-9_|-]*$' AND length(device_classes) <= 1000".into(),
            "plan_id",
        ),
        (
            "plan_prices",
            "plan_prices_amount",
            amount("amount", false),
            price,
        ),
        (
            "plan_prices",
            "plan_prices_currency",
            format!("currency {CURRENCY}"),
            price,
        ),
        (
            "scheduled_prices",
            "scheduled_prices_amount",
            amount("amount", true),
            price,
        ),
        (
            "scheduled_prices",
            "scheduled_prices_currency",
            format!("currency {CURRENCY}"),
            price,
        ),
        (
            "experiments",
            "experiments_id",
            label("experiment_id", 64),
            "experiment_id",
        ),
        (
            "experiments",
            "experiments_span",
            "ends_at IS NULL OR ends_at > starts_at".into(),
            "experiment_id",
        ),
        (
            "experiment_cells",
            "experiment_cells_cell",
            label("cell", 64),
            "experiment_id || '/' || cell",
        ),
        (
            "experiment_prices",
            "experiment_prices_amount",
            amount("amount", true),
            "experiment_id || '/' || cell || '/' || plan_id",
        ),
        (
            "experiment_prices",
            "experiment_prices_currency",
            format!("currency IS NULL OR currency {CURRENCY}"),
            "experiment_id || '/' || cell || '/' || plan_id",
        ),
        (
            "partner_offers",
            "partner_offers_partner",
            label("partner", 64),
            "partner || '/' || country || '/' || plan_id",
        ),
        (
            "partner_offers",
            "partner_offers_name",
            label("name", 200),
            "partner || '/' || country || '/' || plan_id",
        ),
        (
            "partner_offers",
            "partner_offers_amount",
            amount("amount", false),
            "partner || '/' || country || '/' || plan_id",
        ),
        (
            "partner_offers",
            "partner_offers_currency",
            format!("currency {CURRENCY}"),
            "partner || '/' || country || '/' || plan_id",
        ),
        (
            "partner_offers",
            "partner_offers_span",
            "ends_at IS NULL OR ends_at > starts_at".into(),
            "partner || '/' || country || '/' || plan_id",
        ),
    ]
}

/// A rule across rows: an experiment's cells may give at most 10,000 basis points in
/// all (a visitor falls in one cell at most). Checked at commit (deferred), so a writer
/// may move weight between cells in one transaction.
pub(super) const CELL_WEIGHTS: &str = r#"
CREATE OR REPLACE FUNCTION readtier_cell_weights() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE total BIGINT;
BEGIN
    SELECT coalesce(sum(weight_bp), 0) INTO total FROM experiment_cells
     WHERE experiment_id = NEW.experiment_id;
    IF total > 10000 THEN
        RAISE EXCEPTION 'the cells of experiment % give % basis points in all, over 10000',
            NEW.experiment_id, total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'experiment_cells_weights',
                  HINT = 'lower the other cells'' weight_bp in the same transaction';
    END IF;
    RETURN NULL;
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'experiment_cells_weights'
                    AND tgrelid = 'experiment_cells'::regclass) THEN
        CREATE CONSTRAINT TRIGGER experiment_cells_weights
            AFTER INSERT OR UPDATE ON experiment_cells DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION readtier_cell_weights();
    END IF;
END $$;
"#;
