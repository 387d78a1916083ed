#!/usr/bin/env bash
# The L2-hit path: a node whose L1 always misses reads every member from its local
# zone (one Redis), against a plain Redis round trip measured in the same run.
#
#   loadtest/l2hit.sh [seconds=20] [rate=5000] [members=20000]
#
# Starts a private redis-server (zone a) and one node (embedded SQLite store,
# `members` seeded, l1.capacity 16 and l1.ttl 1ms, so a read is answered from L1 only
# when the same id came less than 1 ms before), both pinned to $SERVER_CORE (default
# 0); fills the zone from the store (`readtier reconcile --fill-missing`); then, from $CLIENT_CORE
# (default 1), runs loadtest open loop at `rate` over the members (entitlement only,
# uniform ids) and, during the same window, `redis-benchmark -c 1` (one request at a
# time: the round trip, no queueing) on the command the node sends for a member
# (HGET of its bucket). Prints the node's p50/p99, Redis's p50/p99, their ratios,
# where answers came from, and the node's CPU µs per request (user + system, from
# /proc, over the measured window and its warm-up); writes them as JSON to $OUT if
# set. BIN=dir picks the binaries (default: target/release, built first). The machine
# is shared: only same-run ratios mean much.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
RATE=${2:-5000}
MEMBERS=${3:-20000}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
for t in redis-server redis-benchmark redis-cli curl python3 taskset; do
  command -v "$t" >/dev/null || { echo "l2hit.sh needs $t" >&2; exit 1; }
done
. loadtest/lib.sh

R=$(port); RT=$(port); ADMIN=$(port)
taskset -c "$SERVER_CORE" redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$R" ping >/dev/null 2>&1 && break; sleep 0.1; done

export READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN
export READTIER_REDIS_URLS="a=redis://127.0.0.1:$R" READTIER_ZONE=a RUST_LOG=warn
export READTIER_L1_CAPACITY=16 READTIER_L1_TTL=1ms
"$BIN/readtier" migrate >/dev/null
"$BIN/readtier" seed --members "$MEMBERS" >/dev/null
# A generous Redis timeout for the bulk fill only (the node keeps the default).
READTIER_L2_TIMEOUT=5s "$BIN/readtier" reconcile --fill-missing >"$tmp/reconcile.log"
taskset -c "$SERVER_CORE" "$BIN/readtier" serve >"$tmp/node.log" 2>&1 &
node=$!
pids+=($node)
wait_port "$RT"

# A member's bucket (a hash, src/tier/encoding.rs) and one of its fields: the node's
# read of a member is one HGET of these.
key=$(redis-cli -p "$R" --scan --pattern 'readtier:h:*' | head -n 1)
field=$(redis-cli -p "$R" hkeys "$key" | head -n 1)
[ -n "$key" ] && [ -n "$field" ] || { echo "the zone holds no member after reconcile" >&2; cat "$tmp/reconcile.log" >&2; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
before=$(ticks "$node")
# redis-benchmark starts after loadtest's 3 s warm-up and runs about half the window.
( sleep 4; taskset -c "$CLIENT_CORE" redis-benchmark -p "$R" -c 1 -n $((SECS * 1000)) --csv \
    hget "$key" "$field" >"$tmp/redis-bench.csv" ) &
bench=$!
taskset -c "$CLIENT_CORE" "$BIN/loadtest" --target "http://127.0.0.1:$RT" --connections 32 \
  --rate "$RATE" --duration "${SECS}s" --warmup 3s --mix entitlement=1 --zipf 0 \
  --members "$MEMBERS" --progress 0 --json "$tmp/l2hit.json" >/dev/null
after=$(ticks "$node")
wait "$bench"

python3 - "$tmp/l2hit.json" "$tmp/redis-bench.csv" "$before" "$after" "$HZ" "$RATE" "$SECS" <<'EOF'
import csv, json, os, sys
report, bench, before, after, hz, rate, secs = sys.argv[1:]
r = json.load(open(report))
rows = list(csv.DictReader(open(bench)))
b = rows[-1]
lat = r["latency_ms"]
served = r["served_from"]
total = sum(served.values())
# Requests the node answered while its CPU was counted: the window and the warm-up.
requests = r["sends"]["sent"] + round(float(rate) * r["warmup_seconds"])
cpu_us = (int(after) - int(before)) * 1e6 / int(hz) / requests
out = {
    "offered_rps": r["offered_rps"], "achieved_rps": r["achieved_rps"], "errors": r["errors"],
    "served_from": served,
    "l2_share": round(served.get("l2", 0) / total, 4) if total else 0,
    "node_ms": {k: lat[k] for k in ("p50", "p90", "p99", "p999", "max")},
    "redis_ms": {"p50": float(b["p50_latency_ms"]), "p99": float(b["p99_latency_ms"]),
                 "max": float(b["max_latency_ms"]), "rps": float(b["rps"])},
    "node_cpu_us_per_request": round(cpu_us, 2),
}
out["p50_ratio"] = round(lat["p50"] / out["redis_ms"]["p50"], 2)
out["p99_ratio"] = round(lat["p99"] / out["redis_ms"]["p99"], 2)
print(f"node (L2 hits): p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  p99.9 {lat['p999']:.3f} ms"
      f"  ({r['achieved_rps']:.0f} req/s, {r['errors']} errors, from {served})")
print(f"redis HGET, one at a time: p50 {out['redis_ms']['p50']:.3f} ms  p99 {out['redis_ms']['p99']:.3f} ms")
print(f"ratio node / redis: p50 {out['p50_ratio']}  p99 {out['p99_ratio']} (target p99 <= 2)")
print(f"node CPU: {out['node_cpu_us_per_request']} us/request (user + system, warm-up included)")
if os.environ.get("OUT"):
    json.dump(out, open(os.environ["OUT"], "w"), indent=1)
EOF
