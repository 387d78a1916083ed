#!/usr/bin/env bash
# Re-measures every figure docs/PERFORMANCE.md and README publish, on a machine like
# the one they were taken on (2 cores: servers pinned to core 0, clients to core 1),
# and writes the raw outputs to docs/figures/:
#
#   loadtest/reproduce.sh            # everything (about 15 minutes)
#   loadtest/reproduce.sh callgrind  # one part: callgrind compare freshness seeding memory idle shed random cold grpc
#
# Needs wrk, valgrind, redis-server and a PostgreSQL at $PG (default
# postgres://postgres@127.0.0.1:5432, trust auth). Timing figures want a quiet machine;
# instruction counts (callgrind) do not.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUTDIR:-docs/figures}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
mkdir -p "$OUTDIR"
cargo build --release -q -p readtier -p loadtest --examples
export BIN=${BIN:-target/release}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(callgrind compare freshness seeding memory idle shed random cold grpc)
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

for part in "${parts[@]}"; do
  echo "== $part ($(stamp))"
  case $part in
    callgrind) OUT=$OUTDIR/callgrind.json loadtest/callgrind.sh 4 16 ;;
    compare) OUT=$OUTDIR/compare.json loadtest/compare.sh 5 6 64 ;;
    shed)
      OUT=$OUTDIR/shed loadtest/shed.sh 20
      ADAPTIVE=false OUT=$OUTDIR/shed-static loadtest/shed.sh 20
      python3 loadtest/draw_shed.py "$OUTDIR/shed/shed-summary.json" \
        "$OUTDIR/shed-static/shed-summary.json" "$OUTDIR/shed.svg" ;;
    random) loadtest/random.sh 3 10 64 | tee "$OUTDIR/random.txt" ;;
    cold) OUT=$OUTDIR/cold loadtest/cold.sh 40 | tee "$OUTDIR/cold.txt" ;;
    grpc) loadtest/grpc.sh 3 8 64 4 | tee "$OUTDIR/grpc.txt" ;;
    freshness) OUT=$OUTDIR/freshness-pg.json PG=$PG loadtest/freshness.sh 20 8000 20 ;;
    seeding)
      tmp=$(mktemp -d); db=rt_seed_$$
      s0=$(date +%s.%N)
      READTIER_DATA_DIR=$tmp RUST_LOG=warn "$BIN/readtier" seed --members 1000000 >/dev/null
      s1=$(date +%s.%N)
      psql "$PG/postgres" -qc "CREATE DATABASE $db" >/dev/null
      READTIER_STORE_URL=$PG/$db RUST_LOG=warn "$BIN/readtier" migrate >/dev/null
      p0=$(date +%s.%N)
      READTIER_STORE_URL=$PG/$db RUST_LOG=warn "$BIN/readtier" seed --members 10000000 >/dev/null
      p1=$(date +%s.%N)
      psql "$PG/postgres" -qc "DROP DATABASE $db" >/dev/null
      rm -rf "$tmp"
      python3 - "$s0" "$s1" "$p0" "$p1" >"$OUTDIR/seeding.json" <<'PY'
import json, sys
s0, s1, p0, p1 = map(float, sys.argv[1:])
print(json.dumps({"sqlite_1m_members_s": round(s1 - s0, 2),
                  "postgres_10m_members_empty_table_s": round(p1 - p0, 2)}, indent=1))
PY
      cat "$OUTDIR/seeding.json" ;;
    memory)
      "$BIN/examples/l1_memory" | tee "$OUTDIR/l1_memory.txt"
      "$BIN/examples/l2_memory" | tee "$OUTDIR/l2_memory.txt" ;;
    idle)
      # CPU an idle node spends polling its change log (embedded default, 10 ms poll).
      tmp=$(mktemp -d)
      port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
      READTIER_DATA_DIR=$tmp READTIER_SEED_MEMBERS=1000 READTIER_LISTEN=127.0.0.1:$(port) \
        READTIER_ADMIN_LISTEN=127.0.0.1:$(port) READTIER_GRPC_LISTEN= RUST_LOG=warn taskset -c 0 "$BIN/readtier" >/dev/null 2>&1 &
      pid=$!
      sleep 3
      t0=$(awk '{print $14 + $15}' /proc/$pid/stat); sleep 20; t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
      kill $pid; wait $pid 2>/dev/null || true; rm -rf "$tmp"
      python3 -c "import json; print(json.dumps({'idle_cpu_ms_per_s': round(($t1 - $t0) * 1000 / $(getconf CLK_TCK) / 20, 1), 'poll_interval': '10ms'}, indent=1))" \
        | tee "$OUTDIR/idle.json" ;;
    *) echo "unknown part $part" >&2; exit 64 ;;
  esac
done
echo "figures in $OUTDIR ($(stamp))"
