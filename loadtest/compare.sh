#!/usr/bin/env bash
# Compares readtier's hot paths with a bare hyper server answering the same bytes.
#
#   loadtest/compare.sh [rounds=3] [seconds=10] [connections=64]
#
# Both servers run pinned to core 0 (taskset), one at a time under load; wrk runs pinned
# to core 1 with the same connections and request lines. Rounds alternate baseline and
# readtier; the script prints every run and the median ratio per path:
#   plans:       GET /v1/plans?country=US
#   entitlement: GET /v1/members/{1..1000}/entitlement (1,000 members warm in L1)
# readtier runs on its embedded default (SQLite, 1,000,000 members, no Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
command -v wrk >/dev/null || { echo "compare.sh needs wrk (apt-get install -y wrk)" >&2; exit 1; }

# BIN=dir runs prebuilt binaries (say, an older build) instead of building this checkout.
. loadtest/lib.sh
bin=$BIN
RT=$(port); ADMIN=$(port); BP=$(port); BE=$(port)

READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN RUST_LOG=warn \
  taskset -c "$SERVER_CORE" $bin/readtier >"$tmp/readtier.out" 2>&1 &
RTPID=$!
pids+=($RTPID)
for _ in $(seq 1 120); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }

# Warm the 1,000 members into L1, then copy one answer of each path into a baseline.
for id in $(seq 1 1000); do echo "url = \"http://127.0.0.1:$RT/v1/members/$id/entitlement\""; echo "output = /dev/null"; done >"$tmp/warm.curl"
curl -s -K "$tmp/warm.curl"
taskset -c "$SERVER_CORE" $bin/baseline --listen 127.0.0.1:$BP --copy "http://127.0.0.1:$RT/v1/plans?country=US" >/dev/null &
BPPID=$!
pids+=($BPPID)
taskset -c "$SERVER_CORE" $bin/baseline --listen 127.0.0.1:$BE --copy "http://127.0.0.1:$RT/v1/members/42/entitlement" >/dev/null &
BEPID=$!
pids+=($BEPID)
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
run() { # pid url [script] -> "requests/sec cpu-µs-per-request"; fails on any error
  local out before after
  before=$(ticks "$1")
  if [ -n "${3:-}" ]; then out=$(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$3" "$2")
  else out=$(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${SECS}s" "$2"); fi
  after=$(ticks "$1")
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "$out" >&2; echo "errors in run against $2" >&2; exit 1; fi
  local total rps
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  python3 -c "print($rps, round(($after - $before) * 1e6 / $HZ / $total, 2))"
}

script=loadtest/entitlement.lua
results=()
for r in $(seq 1 "$ROUNDS"); do
  a=$(run $BPPID "http://127.0.0.1:$BP/v1/plans?country=US")
  b=$(run $RTPID "http://127.0.0.1:$RT/v1/plans?country=US")
  c=$(run $BEPID "http://127.0.0.1:$BE/" "$script")
  d=$(run $RTPID "http://127.0.0.1:$RT/" "$script")
  results+=("$a $b $c $d")
  echo "round $r (req/s, server CPU µs/req): plans baseline $a, readtier $b | entitlement baseline $c, readtier $d"
done
printf '%s\n' "${results[@]}" | python3 loadtest/summarize.py
