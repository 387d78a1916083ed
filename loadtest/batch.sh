#!/usr/bin/env bash
# Member lookups per second: batches of 100 L1-hit ids against single entitlement calls.
#
#   loadtest/batch.sh [rounds=3] [seconds=8] [connections=64]
#
# readtier runs on its embedded default (SQLite, 1,000,000 members, no Redis) pinned to
# core 0, members 1..1000 warm in L1; wrk runs pinned to core 1. Rounds alternate
#   single: GET /v1/members/{1..1000}/entitlement   (loadtest/entitlement.lua)
#   batch:  POST /v1/entitlements:batch, 100 ids    (loadtest/batch.lua)
# and print requests/s, member lookups/s (batch: 100 per request) and server CPU µs per
# member lookup; then the median ratio of lookups/s (the issue's target: ≥ 20).
# Any non-2xx answer or socket error fails the run. BIN=dir uses prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-8}
CONNS=${3:-64}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
command -v wrk >/dev/null || { echo "batch.sh needs wrk (apt-get install -y wrk)" >&2; exit 1; }

. loadtest/lib.sh
bin=$BIN
RT=$(port); ADMIN=$(port)
READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN RUST_LOG=warn \
  taskset -c "$SERVER_CORE" $bin/readtier >"$tmp/readtier.out" 2>&1 &
RTPID=$!
pids+=($RTPID)
for _ in $(seq 1 120); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }

# Warm members 1..1000 into L1 (one batch of 1,000), and check one batch answers 100.
ids=$(seq -s, 1 1000)
curl -sf -H 'content-type: application/json' -d "{\"member_ids\":[$ids]}" \
  "http://127.0.0.1:$RT/v1/entitlements:batch" >/dev/null
n=$(curl -sf -H 'content-type: application/json' -d "{\"member_ids\":[$(seq -s, 1 100)]}" \
  "http://127.0.0.1:$RT/v1/entitlements:batch" | python3 -c 'import json,sys; r=json.load(sys.stdin)["results"]; assert all(x["served_from"]=="l1" for x in r); print(len(r))')
[ "$n" = 100 ] || { echo "a warm batch of 100 answered $n results" >&2; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
run() { # script lookups-per-request -> "req/s lookups/s cpu-µs-per-lookup"
  local out before after total rps
  before=$(ticks $RTPID)
  out=$(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$1" "http://127.0.0.1:$RT/")
  after=$(ticks $RTPID)
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "$out" >&2; exit 1; fi
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  python3 -c "print($rps, round($rps * $2), round(($after - $before) * 1e6 / $HZ / ($total * $2), 3))"
}

rows=()
for r in $(seq 1 "$ROUNDS"); do
  s=$(run loadtest/entitlement.lua 1)
  b=$(run loadtest/batch.lua 100)
  rows+=("$s $b")
  echo "round $r (req/s, lookups/s, server CPU µs/lookup): single $s | batch of 100 $b"
done
printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
ratios = [r[4] / r[1] for r in rows]
print("single lookups/s median %.0f, batch lookups/s median %.0f, ratio by round %s, median ratio %.1f"
      % (statistics.median(r[1] for r in rows), statistics.median(r[4] for r in rows),
         " ".join("%.1f" % x for x in ratios), statistics.median(ratios)))'
