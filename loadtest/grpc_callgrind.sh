#!/usr/bin/env bash
# User-space instructions per member looked up in a gRPC BatchGetEntitlements call
# (callgrind: counts, not seconds, so a busy machine does not move them).
#
#   loadtest/grpc_callgrind.sh [seconds=5] [batch=100]
#
# The node (embedded store, 100,000 members, change-log polling and the inspector off
# as in callgrind.sh) runs under valgrind on $SERVER_CORE with members 1..1000 warm in
# L1; `grpc load --method batch` drives it from $CLIENT_CORE with 16 callers over 2
# HTTP/2 connections. Prints Ir per call and per member; JSON to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
BATCH=${2:-100}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
for t in valgrind callgrind_control curl python3 taskset; do
  command -v "$t" >/dev/null || { echo "grpc_callgrind.sh needs $t" >&2; exit 1; }
done
. loadtest/lib.sh
RT=$(port); ADMIN=$(port); G=$(port)
export READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN
export READTIER_GRPC_LISTEN=127.0.0.1:$G RUST_LOG=warn READTIER_SEED_MEMBERS=100000
export READTIER_CHANGES_POLL_INTERVAL=1h READTIER_INSPECTOR_SAMPLES_PER_SECOND=0
"$BIN/readtier" migrate >/dev/null
"$BIN/readtier" seed --members 100000 >/dev/null
(cd "$tmp" && exec taskset -c "$SERVER_CORE" valgrind --tool=callgrind --callgrind-out-file="$tmp/rt.%p" \
  "$BIN/readtier" >"$tmp/rt.log" 2>&1) &
pid=$!
pids+=($pid)
wait_port "$RT"
curl -sf -H 'content-type: application/json' -d "{\"member_ids\":[$(seq -s, 1 1000)]}" \
  "http://127.0.0.1:$RT/v1/entitlements:batch" >/dev/null
load() { taskset -c "$CLIENT_CORE" "$BIN/grpc" load --target "127.0.0.1:$G" --concurrency 16 \
  --connections 2 --ids 1000 --method batch --batch "$BATCH" --seconds "$1"; }
load 2 >/dev/null
callgrind_control -z "$pid" >/dev/null
out=$(load "$SECS")
callgrind_control -d "$pid" >/dev/null
dump=$(ls -t "$tmp"/rt."$pid".* | head -n 1)
ir=$(awk '/^summary:/ {print $2}' "$dump")
python3 - "$ir" "$out" "$SECS" "$BATCH" <<'PY'
import json, os, sys
ir, out, secs, batch = int(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
if out.get("errors"):
    sys.exit(f"errors under load: {out}")
calls = out["calls_per_s"] * secs
r = {"calls": round(calls), "ir_per_call": round(ir / calls), "ir_per_member": round(ir / calls / batch)}
print(f"batch of {batch}: {r['ir_per_call']} Ir per call, {r['ir_per_member']} Ir per member over {r['calls']} calls")
if os.environ.get("OUT"):
    json.dump(r, open(os.environ["OUT"], "w"), indent=1)
PY
