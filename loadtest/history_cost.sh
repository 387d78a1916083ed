#!/usr/bin/env bash
# What history costs a writer: raw-SQL UPDATE throughput of memberships with the
# member trigger as it is (change log + history) against the same trigger without the
# history inserts (as it was before history, git e1e8573), in alternating rounds on one
# schema; then bytes per history entry (table and indexes).
#
#   [SYNC=off] loadtest/history_cost.sh [ROUNDS=3] [SECONDS=15] [CLIENTS=4]
#
# Needs PostgreSQL (PGURL, default the local test database), pgbench and psql; run
# from the repository root (it builds the release binary for `migrate` and `seed`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-15}
CLIENTS=${3:-4}
PGHOST=${PGHOST:-127.0.0.1}
PGUSER=${PGUSER:-postgres}
PGDB=${PGDB:-test}
MEMBERS=${MEMBERS:-100000}
export PGHOST PGUSER
schema="history_cost_$$"
psql -qX "$PGDB" -c "CREATE SCHEMA $schema"
trap 'psql -qX "$PGDB" -c "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
work=$(mktemp -d)
cargo build --release -q -p readtier
export READTIER_STORE_URL="postgres://$PGUSER@$PGHOST:5432/$PGDB?options=-csearch_path%3D$schema"
target/release/readtier seed --members "$MEMBERS" >/dev/null

# The two member triggers, as SQL: the current one and the one without history.
python3 - "$work" <<'PY'
import re, subprocess, sys
work = sys.argv[1]
def function(src):
    a = src.index("CREATE OR REPLACE FUNCTION readtier_member_log()")
    b = src.index("END $$;", a) + len("END $$;")
    return src[a:b]
now = open("src/store/postgres/schema.rs").read()
old = subprocess.check_output(["git", "show", "e1e8573:src/store/postgres/schema.rs"], text=True)
open(f"{work}/with.sql", "w").write(function(now))
open(f"{work}/without.sql", "w").write(function(old))
PY
cat > "$work/update.sql" <<SQL
\set id random(1, $MEMBERS)
UPDATE memberships SET status = CASE status WHEN 'active' THEN 'grace' ELSE 'active' END WHERE member_id = :id;
SQL
# SYNC=off measures the writers' CPU (no wait for the WAL flush), where the triggers'
# cost shows most; the default measures what a committing writer sees.
export PGOPTIONS="-c search_path=$schema -c synchronous_commit=${SYNC:-on}"
tps() { pgbench -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$work/update.sql" "$PGDB" 2>/dev/null \
  | awk '/^tps/ {print $3; exit}'; }
declare -a with without
for r in $(seq 1 "$ROUNDS"); do
  psql -qX "$PGDB" -f "$work/without.sql" >/dev/null
  without+=("$(tps)")
  psql -qX "$PGDB" -f "$work/with.sql" >/dev/null
  with+=("$(tps)")
  echo "round $r: without history ${without[-1]} UPDATE/s, with history ${with[-1]} UPDATE/s"
done
python3 - "${without[*]}" "${with[*]}" <<'PY'
import statistics, sys
wo = [float(x) for x in sys.argv[1].split()]
wi = [float(x) for x in sys.argv[2].split()]
m_wo, m_wi = statistics.median(wo), statistics.median(wi)
print(f"median UPDATE/s: without history {m_wo:.0f}, with history {m_wi:.0f}; "
      f"cost per write with/without = {m_wo / m_wi:.3f}x")
PY
psql -qX "$PGDB" -c "VACUUM ANALYZE member_history" >/dev/null
psql -qX "$PGDB" -At -c "
  WITH n AS (SELECT count(*) AS c FROM member_history WHERE op <> 'seed'),
       parts AS (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'member_history'::regclass)
  SELECT 'history entries: ' || n.c
      || ', bytes per entry: ' || round((SELECT sum(pg_relation_size(inhrelid)) FROM parts) / n.c)
      || ' (table), ' || round((SELECT sum(pg_total_relation_size(inhrelid)) FROM parts) / n.c)
      || ' (table and indexes)'
    FROM n"
