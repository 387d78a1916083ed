#!/usr/bin/env bash
# A cold node under load, second by second: does it warm, and does it shed?
#
#   loadtest/cold.sh [seconds=40]
#
# The default node (embedded store, 1,000,000 members) on core 0, loadtest on core 1,
# the default mix (plans 50%, entitlement 30%, authorize 20%; members by Zipf's law):
#   1. a bare hyper server (one plans answer's bytes to any path): its closed-loop rate
#      on the same mix and connections, 10 s (the generator's ceiling on this machine);
#   2. closed loop, 64 connections, SECONDS from a cold start (the issue's measurement);
#   3. warm capacity W: the same node, closed loop 10 s after 2;
#   4. open loop at 0.8 W, 10 s, on the warm node: its hit ratio; the node is then
#      stopped (SIGTERM: it writes the ids its L1 holds, l1.warm_start);
#   5. open loop at 0.8 W, SECONDS, from a restart (L1 loaded back from that file);
#   6. open loop at 0.8 W, SECONDS, from a start with no such file (cold L1).
# For 2, 5 and 6 it prints each second: answers served and shed (loadtest), and the L1 hit
# ratio over that second from /metrics (hits ÷ hits + misses; sheds count as misses).
# Reports go to $OUT (default docs/figures/cold/). BIN=dir runs prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-40}
OUT=${OUT:-docs/figures/cold}
. loadtest/lib.sh
mkdir -p "$OUT"
RT=$(port); ADMIN=$(port); BP=$(port); GRPC=$(port)
data=$tmp/data
mkdir -p "$data"
start_node() {
  READTIER_DATA_DIR=$data READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN READTIER_GRPC_LISTEN=127.0.0.1:$GRPC RUST_LOG=warn \
    taskset -c 0 "$BIN/readtier" >"$tmp/readtier.out" 2>&1 &
  NODE=$!
  pids+=($NODE)
  for _ in $(seq 1 240); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
  grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }
}
stop_node() { kill "$NODE"; wait "$NODE" 2>/dev/null || true; }
lt() { taskset -c 1 "$BIN/loadtest" --progress 0 --warmup 0s "$@"; }
# The node's L1 counters every second, in the background, into $1.
sample() {
  ( while kill -0 "$NODE" 2>/dev/null; do
      curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^readtier_l1_hits_total / {h=$2} /^readtier_l1_misses_total / {m=$2} END {print h+0, m+0}'
      sleep 1
    done ) >"$1" &
  SAMPLER=$!
  pids+=($SAMPLER)
}
rate() { python3 -c "import json; print(round(json.load(open('$1'))['served_rps']))"; }

start_node
taskset -c 0 "$BIN/baseline" --listen 127.0.0.1:$BP --copy "http://127.0.0.1:$RT/v1/plans?country=US" >/dev/null &
pids+=($!)
sleep 1
lt --target "http://127.0.0.1:$BP" --connections 64 --duration 10s --json "$OUT/bare.json" >/dev/null
stop_node
rm -f "$data/l1-members.bin"

start_node
sample "$tmp/closed.l1"
lt --target "http://127.0.0.1:$RT" --connections 64 --duration "${SECS}s" --json "$OUT/closed-cold.json" >/dev/null
lt --target "http://127.0.0.1:$RT" --connections 64 --duration 10s --json "$OUT/warm-capacity.json" >/dev/null
W=$(rate "$OUT/warm-capacity.json")
R=$((W * 8 / 10))
sample "$tmp/warm.l1"
lt --target "http://127.0.0.1:$RT" --connections 256 --rate "$R" --duration 10s --json "$OUT/open-warm.json" >/dev/null
kill "$SAMPLER" 2>/dev/null || true
stop_node

start_node
sample "$tmp/restart.l1"
lt --target "http://127.0.0.1:$RT" --connections 256 --rate "$R" --duration "${SECS}s" --json "$OUT/open-restart.json" >/dev/null
stop_node
rm -f "$data/l1-members.bin"
start_node
sample "$tmp/open.l1"
lt --target "http://127.0.0.1:$RT" --connections 256 --rate "$R" --duration "${SECS}s" --json "$OUT/open-cold.json" >/dev/null
stop_node
python3 - "$OUT" "$tmp" "$W" "$R" <<'PY'
import json, sys
out, tmp, w, r = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def ratios(path):
    rows = [tuple(map(float, l.split())) for l in open(path) if l.strip()]
    res = []
    for a, b in zip(rows, rows[1:]):
        dh, dm = b[0] - a[0], b[1] - a[1]
        res.append(round(dh / (dh + dm), 3) if dh + dm > 0 else None)
    return res
bare = json.load(open(f"{out}/bare.json"))
summary = {"bare_closed_loop_rps": round(bare["achieved_rps"]), "warm_capacity_rps": w, "open_loop_rps": r}
for name, l1 in (("closed-cold", "closed.l1"), ("open-warm", "warm.l1"), ("open-restart", "restart.l1"), ("open-cold", "open.l1")):
    rep = json.load(open(f"{out}/{name}.json"))
    hr = ratios(f"{tmp}/{l1}")
    summary[name] = {
        "served_rps": round(rep["served_rps"]), "shed": rep["answers"]["shed"],
        "p99_ms": rep["latency_ms"]["p99"],
        "per_second": [{"t": t["t"], "ok": t["ok"], "shed": t["shed"], "hit_ratio": hr[i] if i < len(hr) else None}
                       for i, t in enumerate(rep["timeline"])],
    }
json.dump(summary, open(f"{out}/cold-summary.json", "w"), indent=1)
print(f"bare server, closed loop 64: {summary['bare_closed_loop_rps']}/s; warm capacity W {w}/s; open loop at 0.8 W = {r}/s")
for name in ("closed-cold", "open-warm", "open-restart", "open-cold"):
    s = summary[name]
    print(f"{name}: served {s['served_rps']}/s, shed {s['shed']}, p99 {s['p99_ms']} ms")
    print("  t    ok   shed  hit")
    for row in s["per_second"]:
        print(f"  {row['t']:2d} {row['ok']:6d} {row['shed']:6d}  {row['hit_ratio']}")
PY
