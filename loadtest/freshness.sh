#!/usr/bin/env bash
# Commit-to-visible on two nodes under load, PostgreSQL + Redis + relay, as
# docs/PERFORMANCE.md reports it:
#
#   loadtest/freshness.sh [seconds=20] [rate=8000] [writes_per_second=20]
#
# Starts a private redis-server on a free port, a database of its own in the
# PostgreSQL at $PG (default postgres://postgres@127.0.0.1:5432; the database is
# dropped afterwards), seeds 200,000 members, one relay and two nodes (zones a and b of
# one Redis each, pinned to core 0), and runs loadtest from core 1: open loop at the
# rate, the probe committing status flips and polling both nodes until they answer the
# committed version. BIN=dir picks the binaries (default: target/release, built
# first). Writes the report to $OUT (default docs/figures/freshness-pg.json).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
RATE=${2:-8000}
WRITES=${3:-20}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-docs/figures/freshness-pg.json}
for t in redis-server psql python3 curl; do
  command -v "$t" >/dev/null || { echo "freshness.sh needs $t" >&2; exit 1; }
done
. loadtest/lib.sh
db=rt_fresh_$$
cleanup_extra() { psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; }

RA=$(port); RB=$(port)
for p in $RA $RB; do
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$tmp/redis-$p.log" 2>&1 &
  pids+=($!)
done
psql "$PG/postgres" -qc "CREATE DATABASE $db" >/dev/null
export READTIER_STORE_URL="$PG/$db"
export READTIER_REDIS_URLS="a=redis://127.0.0.1:$RA;b=redis://127.0.0.1:$RB"
export RUST_LOG=warn
"$BIN/readtier" migrate >/dev/null
"$BIN/readtier" seed --members 200000 >/dev/null
taskset -c 0 "$BIN/readtier" relay --id fresh >"$tmp/relay.log" 2>&1 &
pids+=($!)
targets=()
for zone in a b; do
  p=$(port); a=$(port)
  READTIER_ZONE=$zone READTIER_LISTEN=127.0.0.1:$p READTIER_ADMIN_LISTEN=127.0.0.1:$a READTIER_GRPC_LISTEN= \
    READTIER_DATA_DIR="$tmp/$zone" taskset -c 0 "$BIN/readtier" serve >"$tmp/node-$zone.log" 2>&1 &
  pids+=($!)
  wait_port "$p"
  targets+=("http://127.0.0.1:$p")
done
mkdir -p "$(dirname "$OUT")"
taskset -c 1 "$BIN/loadtest" --target "$(IFS=,; echo "${targets[*]}")" --connections 32 \
  --rate "$RATE" --duration "${SECS}s" --members 200000 --write-rate "$WRITES" \
  --store-url "$READTIER_STORE_URL" --progress 0 --json "$OUT"
python3 loadtest/draw_freshness.py "$OUT" "${OUT%.json}.svg" \
  "Commit to visible, two nodes, PostgreSQL + relay, ${RATE} req/s"
echo "report: $OUT, picture: ${OUT%.json}.svg"
