#!/usr/bin/env bash
# The plans path with a visitor in two running experiments against the plain plans
# path, in one run of this script (issue 12: "as fast as today", ≥ 0.95×).
#
#   loadtest/variants.sh [rounds=3] [seconds=10] [connections=64]
#
# One node on its embedded default (the bundled pricing examples put every US visitor
# in two running experiments: us-ads-price and us-premium-ladder), pinned to core 0;
# `loadtest` closed loop on core 1, alternating per round:
#   plain:   GET /v1/plans?country=US
#   visitor: GET /v1/plans?country=US&visitor=v<n>, n uniform in 0..100000
# Prints every run (requests/s and node CPU µs per request) and the medians' ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
. loadtest/lib.sh
bin=$BIN
RT=$(port); ADMIN=$(port)
READTIER_DATA_DIR=$tmp READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN RUST_LOG=warn \
  taskset -c "$SERVER_CORE" $bin/readtier >"$tmp/readtier.out" 2>&1 &
RTPID=$!
pids+=($RTPID)
for _ in $(seq 1 120); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }
curl -s "http://127.0.0.1:$RT/v1/plans?country=US&visitor=v1" | python3 -c 'import json,sys; v=json.load(sys.stdin); assert len(v["cells"])==2, v; print("visitor v1 is in", v["cells"])'

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
run() { # extra args -> "requests/sec cpu-µs-per-request"
  local before after
  before=$(ticks "$RTPID")
  taskset -c "$CLIENT_CORE" $bin/loadtest --target "http://127.0.0.1:$RT" --connections "$CONNS" \
    --duration "${SECS}s" --warmup 2s --mix plans=1 --countries US --progress 0 --json "$tmp/r.json" "$@" >/dev/null
  after=$(ticks "$RTPID")
  python3 - "$tmp/r.json" "$before" "$after" "$HZ" "$SECS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
before, after, hz, secs = map(float, sys.argv[2:])
assert r["errors"] == 0, r["errors"]
# CPU over warm-up + window, spread over the answers of both (rate × time).
print(r["achieved_rps"], round((after - before) * 1e6 / hz / (r["achieved_rps"] * (secs + 2)), 2))
PY
}
plain=(); visitor=()
for i in $(seq 1 "$ROUNDS"); do
  p=$(run); v=$(run --visitors 100000)
  echo "round $i: plain $p | visitor $v (req/s, node CPU us/request)"
  plain+=("$p"); visitor+=("$v")
done
python3 - "${plain[@]}" -- "${visitor[@]}" <<'PY'
import sys, statistics as st
a = sys.argv[1:]; i = a.index("--"); p = [x.split() for x in a[:i]]; v = [x.split() for x in a[i+1:]]
med = lambda xs, k: st.median(float(x[k]) for x in xs)
print(f"median plain   {med(p,0):.0f} req/s, {med(p,1):.2f} us/request")
print(f"median visitor {med(v,0):.0f} req/s, {med(v,1):.2f} us/request")
print(f"visitor / plain: rate {med(v,0)/med(p,0):.3f}x, node CPU per request {med(v,1)/med(p,1):.3f}x")
PY
