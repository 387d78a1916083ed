#!/usr/bin/env bash
# User-space instructions per request on readtier's hot paths and on the bare baseline
# server answering the same bytes, counted by callgrind: deterministic for a given
# binary and request stream, whatever else the machine is doing.
#
#   loadtest/callgrind.sh [seconds=4] [connections=16]
#
# BIN=dir picks the binaries (default: target/release, built first). Each server runs
# under valgrind pinned to core 0; wrk drives it from core 1 for the given seconds
# between `callgrind_control -z` (zero) and `-d` (dump); instructions ÷ requests wrk
# completed in that window. The node polls its change log once an hour here
# (POLL=…): the default 10 ms poll is a fixed cost per second (26 ms of CPU a second,
# docs/PERFORMANCE.md), not per request, and under valgrind it would be spread over
# however few requests the window held. The consistency inspector's checks are off
# the same way (INSPECT=…, samples a second, default 0): each is a store read, 10 a
# second by default, a cost per second too (about 28,000 Ir a check here, 144 Ir a
# request when spread over a valgrind window's ~9,400 requests); its cost per request,
# a relaxed load and a compare on every member answer, is still counted. The queue
# probe is off too (ADAPTIVE=…, default false): a datagram through the runtime every
# 5 ms, a cost per second as well (docs/PERFORMANCE.md, "Shedding on queueing"); an
# L1 hit never reaches admission, and a miss's admission is off these paths. Prints one
# line per path and server, then the ratios, and writes them as JSON to $OUT if set.
# With MAX_PLANS_RATIO and/or MAX_ENTITLEMENT_RATIO set it is a guard: it exits 1 when
# a ratio is above its bound (.ci/run sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-4}
CONNS=${2:-16}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
for t in wrk valgrind callgrind_control curl python3; do
  command -v "$t" >/dev/null || { echo "callgrind.sh needs $t" >&2; exit 1; }
done
. loadtest/lib.sh

# Seed the store natively first (valgrind would take minutes), then serve it under valgrind.
RT=$(port); ADMIN=$(port)
export READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN RUST_LOG=warn
export READTIER_CHANGES_POLL_INTERVAL=${POLL:-1h}
export READTIER_INSPECTOR_SAMPLES_PER_SECOND=${INSPECT:-0}
export READTIER_HTTP_ADAPTIVE_WAITING=${ADAPTIVE:-false}
$BIN/readtier migrate >/dev/null
$BIN/readtier seed --members "${MEMBERS:-100000}" >/dev/null
unset READTIER_SEED_MEMBERS
(cd "$tmp" && exec taskset -c "$SERVER_CORE" valgrind --tool=callgrind --callgrind-out-file="$tmp/rt.%p" \
  "$BIN/readtier" >"$tmp/rt.log" 2>&1) &
pids+=($!)
wait_port "$RT"
for id in $(seq 1 1000); do echo "url = \"http://127.0.0.1:$RT/v1/members/$id/entitlement\""; echo "output = /dev/null"; done >"$tmp/warm.curl"
curl -s -K "$tmp/warm.curl"

start_baseline() { # port copy-url
  (cd "$tmp" && exec taskset -c "$SERVER_CORE" valgrind --tool=callgrind --callgrind-out-file="$tmp/bl$1.%p" \
    "$BIN/baseline" --listen "127.0.0.1:$1" --copy "$2" ${BASELINE_ARGS:-} >/dev/null 2>&1) &
  pids+=($!)
  wait_port "$1"
}
BP=$(port); BE=$(port)
start_baseline "$BP" "http://127.0.0.1:$RT/v1/plans?country=US"
start_baseline "$BE" "http://127.0.0.1:$RT/v1/members/42/entitlement"

# pid-of(valgrind wrapper) is the traced process itself (valgrind execs in place).
ir_per_request() { # name pid url [script]
  local name=$1 pid=$2 url=$3 script=${4:-} out total before after
  # Warm the path, then count one window.
  taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d1s ${script:+-s "$script"} "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  out=$(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${SECS}s" ${script:+-s "$script"} "$url")
  callgrind_control -d "$pid" >/dev/null
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "$out" >&2; exit 1; fi
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  local dump
  dump=$(ls -t "$tmp"/*."$pid".* 2>/dev/null | head -n 1)
  local ir
  ir=$(awk '/^summary:/ {print $2}' "$dump")
  rm -f "$dump"
  python3 -c "print('$name', round($ir / $total), $total)"
}
pid_of_port() { ss -ltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2; }
rt_pid=$(pid_of_port "$RT"); bp_pid=$(pid_of_port "$BP"); be_pid=$(pid_of_port "$BE")
script=loadtest/entitlement.lua
lines=()
lines+=("$(ir_per_request plans_baseline "$bp_pid" "http://127.0.0.1:$BP/v1/plans?country=US")")
lines+=("$(ir_per_request plans_readtier "$rt_pid" "http://127.0.0.1:$RT/v1/plans?country=US")")
lines+=("$(ir_per_request entitlement_baseline "$be_pid" "http://127.0.0.1:$BE/" "$script")")
lines+=("$(ir_per_request entitlement_readtier "$rt_pid" "http://127.0.0.1:$RT/" "$script")")
printf '%s\n' "${lines[@]}" | python3 -c '
import json, os, sys
rows = {}
for line in sys.stdin:
    name, ir, n = line.split()
    rows[name] = {"ir_per_request": int(ir), "requests": int(n)}
    print(f"{name:24} {int(ir):>8} Ir/req over {int(n):>7} requests")
out = {"rows": rows}
for path in ("plans", "entitlement"):
    r = rows[path + "_readtier"]["ir_per_request"] / rows[path + "_baseline"]["ir_per_request"]
    out[path + "_ratio"] = round(r, 4)
    print(f"{path}: readtier / baseline = {r:.3f}")
if os.environ.get("OUT"):
    json.dump(out, open(os.environ["OUT"], "w"), indent=1)
over = []
for path in ("plans", "entitlement"):
    bound = os.environ.get(f"MAX_{path.upper()}_RATIO")
    ratio = out[path + "_ratio"]
    if bound and ratio > float(bound):
        over.append(f"{path}: {ratio} > {bound}")
if over:
    sys.exit("callgrind guard: instructions per request rose past the bound: " + "; ".join(over))
'
