#!/usr/bin/env bash
# Scheduled price changes on two nodes: the spread between each change's instant and
# each node's first answer with the new price (issue 12: p99 ≤ 5 ms, no mixed answer).
#
#   loadtest/switch.sh [changes=50] [gap=2s]
#
# Two `readtier serve` processes on one embedded store (the second reads the first's
# SQLite file), each following the change log; `switch_spread` writes the changes
# (FR standard and premium, `gap` apart, the first 5 s ahead) in one transaction
# before any takes effect, then polls both nodes on 2 keep-alive connections each and
# reports the spread (receive time of the first answer with the new price − instant).
set -euo pipefail
cd "$(dirname "$0")/.."
CHANGES=${1:-50}
GAP=${2:-2s}
. loadtest/lib.sh
bin=$BIN
A=$(port); AA=$(port); B=$(port); BA=$(port)
mkdir -p "$tmp/a" "$tmp/b"
READTIER_DATA_DIR=$tmp/a READTIER_LISTEN=127.0.0.1:$A READTIER_ADMIN_LISTEN=127.0.0.1:$AA \
  READTIER_SEED_MEMBERS=1000 RUST_LOG=warn $bin/readtier >"$tmp/a.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do grep -q listening "$tmp/a.out" && break; sleep 0.5; done
READTIER_DATA_DIR=$tmp/b READTIER_STORE_URL=$tmp/a/readtier.db READTIER_LISTEN=127.0.0.1:$B \
  READTIER_ADMIN_LISTEN=127.0.0.1:$BA RUST_LOG=warn $bin/readtier >"$tmp/b.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do grep -q listening "$tmp/b.out" && break; sleep 0.5; done
$bin/switch_spread --target "http://127.0.0.1:$A" --target "http://127.0.0.1:$B" \
  --store-url "$tmp/a/readtier.db" --changes "$CHANGES" --gap "$GAP" ${JSON:+--json "$JSON"}
