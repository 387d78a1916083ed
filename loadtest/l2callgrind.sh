#!/usr/bin/env bash
# The L2-hit path in user-space instructions per request (callgrind: counts, not
# seconds, so a busy machine does not move them), readtier against a bare hyper server
# that makes the same one Redis call per request.
#
#   loadtest/l2callgrind.sh [seconds=5] [connections=16] [members=20000]
#
# One private redis-server (zone a). readtier (embedded store, `members` seeded, the
# zone filled by `readtier reconcile --fill-missing`, `l1.capacity` 16 and `l1.ttl`
# 1ms so every read misses L1 and is answered from the zone) and `baseline --redis
# --hget` (one HGET of a member's bucket per request over one pipelined connection,
# then the copied entitlement bytes) each run under valgrind pinned to $SERVER_CORE;
# wrk from $CLIENT_CORE reads members round robin over all ids. Change-log polling
# and the inspector are off, as in callgrind.sh, so only per-request work is counted.
# Prints Ir/request for both and the ratio; JSON to $OUT if set. READTIER_HTTP_RUNTIME
# and other READTIER_* variables in the environment pass through to the node.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-16}
MEMBERS=${3:-20000}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
for t in wrk valgrind callgrind_control redis-server redis-cli curl python3 taskset; do
  command -v "$t" >/dev/null || { echo "l2callgrind.sh needs $t" >&2; exit 1; }
done
. loadtest/lib.sh

R=$(port); RT=$(port); ADMIN=$(port); BP=$(port)
taskset -c "$SERVER_CORE" redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$R" ping >/dev/null 2>&1 && break; sleep 0.1; done

export READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN
export READTIER_REDIS_URLS="a=redis://127.0.0.1:$R" READTIER_ZONE=a RUST_LOG=warn
export READTIER_L1_CAPACITY=16 READTIER_L1_TTL=1ms
export READTIER_CHANGES_POLL_INTERVAL=1h READTIER_INSPECTOR_SAMPLES_PER_SECOND=0
"$BIN/readtier" migrate >/dev/null
"$BIN/readtier" seed --members "$MEMBERS" >/dev/null
READTIER_L2_TIMEOUT=5s "$BIN/readtier" reconcile --fill-missing >/dev/null
(cd "$tmp" && exec taskset -c "$SERVER_CORE" valgrind --tool=callgrind --callgrind-out-file="$tmp/rt.%p" \
  "$BIN/readtier" >"$tmp/rt.log" 2>&1) &
pids+=($!)
wait_port "$RT"

key=$(redis-cli -p "$R" --scan --pattern 'readtier:h:*' | head -n 1)
field=$(redis-cli -p "$R" hkeys "$key" | head -n 1)
[ -n "$key" ] && [ -n "$field" ] || { echo "the zone holds no member after reconcile" >&2; exit 1; }
(cd "$tmp" && exec taskset -c "$SERVER_CORE" valgrind --tool=callgrind --callgrind-out-file="$tmp/bl.%p" \
  "$BIN/baseline" --listen "127.0.0.1:$BP" --copy "http://127.0.0.1:$RT/v1/members/42/entitlement" \
  --redis "redis://127.0.0.1:$R" --hget "$key" "$field" >/dev/null 2>&1) &
pids+=($!)
wait_port "$BP"

cat >"$tmp/ids.lua" <<LUA
local id = 0
request = function()
  id = id % $MEMBERS + 1
  return wrk.format("GET", "/v1/members/" .. id .. "/entitlement")
end
LUA
pid_of_port() { ss -ltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2; }
ir_per_request() { # name pid port
  local name=$1 pid=$2 p=$3 out total dump ir
  taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d2s -s "$tmp/ids.lua" "http://127.0.0.1:$p/" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  out=$(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$tmp/ids.lua" "http://127.0.0.1:$p/")
  callgrind_control -d "$pid" >/dev/null
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "$out" >&2; exit 1; fi
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  dump=$(ls -t "$tmp"/*."$pid".* 2>/dev/null | head -n 1)
  ir=$(awk '/^summary:/ {print $2}' "$dump")
  rm -f "$dump"
  python3 -c "print('$name', round($ir / $total), $total)"
}
bl=$(ir_per_request l2_baseline "$(pid_of_port "$BP")" "$BP")
rt=$(ir_per_request l2_readtier "$(pid_of_port "$RT")" "$RT")
served=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^readtier_(l1_hits|l1_misses|l2_hits|store_reads)_total' | tr '\n' ' ')
printf '%s\n%s\n' "$bl" "$rt" | python3 -c '
import json, os, sys
rows = {}
for line in sys.stdin:
    name, ir, n = line.split()
    rows[name] = {"ir_per_request": int(ir), "requests": int(n)}
    print(f"{name:14} {int(ir):>8} Ir/req over {int(n):>7} requests")
ratio = rows["l2_readtier"]["ir_per_request"] / rows["l2_baseline"]["ir_per_request"]
print(f"L2 hit: readtier / baseline = {ratio:.3f}")
if os.environ.get("OUT"):
    json.dump({"rows": rows, "l2_ratio": round(ratio, 4)}, open(os.environ["OUT"], "w"), indent=1)
'
echo "node counters: $served"
