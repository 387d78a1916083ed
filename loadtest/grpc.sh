#!/usr/bin/env bash
# The gRPC figures (docs/PERFORMANCE.md, "gRPC (issue 13)"):
#
#   loadtest/grpc.sh [rounds=3] [seconds=8] [concurrency=64] [connections=4]
#
# readtier runs on its embedded default (SQLite, 1,000,000 members, no Redis) pinned to
# core 0 with members 1..1000 warm in L1, beside a bare tonic server (loadtest's `grpc
# bare`: tonic::transport::Server answering every GetEntitlement with the message
# readtier answered for member 42) pinned to the same core, run one at a time. The load
# (`grpc load`, tonic clients, closed loop) runs pinned to core 1. Each round runs
#   bare:        GetEntitlement on the bare server
#   entitlement: GetEntitlement, ids 1..1000 (L1 hits)
#   batch:       BatchGetEntitlements, 100 consecutive L1-hit ids a call, by a client
#                that sends requests encoded beforehand and walks each answer's
#                top-level fields, counting its 100 results (`--method batch-raw`: a
#                tonic client decoding every Entitlement was the bottleneck, not the
#                node; BATCH_METHOD=batch measures with it again)
#   http-single: GET /v1/members/{id}/entitlement over HTTP/1.1 keep-alive (same client)
# and prints calls/s, lookups/s and server CPU µs per call (from /proc). Then the
# medians: readtier's GetEntitlement calls/s over the bare server's (target ≥ 0.90), the
# batch's member lookups/s over single HTTP calls' (target ≥ 20), and last the caching
# client: `grpc watch` makes 200 raw-SQL price changes in the node's SQLite file and
# times each from its commit until CatalogCache::plans answers it (target p99 ≤ 20 ms),
# then times plans() itself (target < 1 µs). BIN=dir uses prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-8}
CONC=${3:-64}
CONNS=${4:-4}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}

. loadtest/lib.sh
bin=$BIN
RT=$(port); ADMIN=$(port); G=$(port); BG=$(port)
READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN \
  READTIER_GRPC_LISTEN=127.0.0.1:$G RUST_LOG=warn \
  taskset -c "$SERVER_CORE" $bin/readtier >"$tmp/readtier.out" 2>&1 &
RTPID=$!
pids+=($RTPID)
for _ in $(seq 1 120); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }

# Members 1..1000 into L1 (one HTTP batch of 1,000).
curl -sf -H 'content-type: application/json' -d "{\"member_ids\":[$(seq -s, 1 1000)]}" \
  "http://127.0.0.1:$RT/v1/entitlements:batch" >/dev/null
taskset -c "$SERVER_CORE" $bin/grpc bare --listen 127.0.0.1:$BG --copy 127.0.0.1:$G --member 42 >"$tmp/bare.out" 2>&1 &
BPID=$!
pids+=($BPID)
for _ in $(seq 1 50); do grep -q "bare tonic server" "$tmp/bare.out" && break; sleep 0.2; done
sleep 0.5

load() { taskset -c "$CLIENT_CORE" $bin/grpc load --seconds "$SECS" --concurrency "$CONC" --connections "$CONNS" --ids 1000 "$@"; }
rows="$tmp/rows.jsonl"
for r in $(seq 1 "$ROUNDS"); do
  a=$(load --target 127.0.0.1:$BG --method entitlement --server-pid $BPID | sed 's/"entitlement"/"bare"/')
  b=$(load --target 127.0.0.1:$G --method entitlement --server-pid $RTPID)
  c=$(load --target 127.0.0.1:$G --method "${BATCH_METHOD:-batch-raw}" --batch 100 --server-pid $RTPID | sed 's/"batch-raw"/"batch"/')
  d=$(load --target 127.0.0.1:$RT --method http-single --server-pid $RTPID)
  echo "round $r:"; printf '  %s\n' "$a" "$b" "$c" "$d"
  printf '%s\n' "$a" "$b" "$c" "$d" >>"$rows"
done
python3 - "$rows" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["method"], []).append(r)
med = lambda m, k: statistics.median(r[k] for r in by[m])
ratios = [e["calls_per_s"] / b["calls_per_s"] for b, e in zip(by["bare"], by["entitlement"])]
cpu = [b["server_cpu_us_per_call"] / e["server_cpu_us_per_call"] for b, e in zip(by["bare"], by["entitlement"])]
batch = [bt["lookups_per_s"] / h["lookups_per_s"] for bt, h in zip(by["batch"], by["http-single"])]
print(f"GetEntitlement L1 hit: readtier {med('entitlement','calls_per_s'):.0f}/s vs bare tonic {med('bare','calls_per_s'):.0f}/s; "
      f"ratio per round {[round(x, 3) for x in ratios]}, median {statistics.median(ratios):.3f} (target >= 0.90)")
print(f"  server CPU us/call: readtier {med('entitlement','server_cpu_us_per_call'):.2f}, bare {med('bare','server_cpu_us_per_call'):.2f}; "
      f"bare/readtier per round {[round(x, 3) for x in cpu]}")
batch_cpu = [h["server_cpu_us_per_lookup"] / bt["server_cpu_us_per_lookup"] for bt, h in zip(by["batch"], by["http-single"])]
print(f"batch of 100: {med('batch','lookups_per_s'):.0f} lookups/s vs single HTTP {med('http-single','lookups_per_s'):.0f}/s; "
      f"ratio per round {[round(x, 1) for x in batch]}, median {statistics.median(batch):.1f} (target >= 20)")
print(f"  server CPU us/lookup: batch {med('batch','server_cpu_us_per_lookup'):.3f}, single HTTP {med('http-single','server_cpu_us_per_lookup'):.2f}; "
      f"single/batch per round {[round(x, 1) for x in batch_cpu]}; node busy (share of its core) batch {[b.get('server_busy') for b in by['batch']]}, "
      f"single HTTP {[h.get('server_busy') for h in by['http-single']]}")
PY

echo "caching client (200 raw-SQL price changes, then plans() timed):"
taskset -c "$CLIENT_CORE" $bin/grpc watch --target 127.0.0.1:$G --db "$tmp/readtier.db" --changes "${CHANGES:-200}"
