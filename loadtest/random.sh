#!/usr/bin/env bash
# The first benchmark a user runs: wrk, 64 connections, GET entitlement over member ids
# uniformly random in 1..1,000,000, against the default node (`readtier` with no
# settings: embedded store, 1,000,000 members, started fresh each round so L1 is cold)
# and against a bare hyper server answering one entitlement's bytes, in the same run.
#
#   loadtest/random.sh [rounds=3] [seconds=10] [connections=64]
#
# Servers on core 0, wrk on core 1, alternating. Prints, per run: requests/s, non-2xx
# answers, p50/p99, and for readtier its shed count and L1 hit ratio from /metrics
# (hits ÷ hits + misses, sheds counted as misses).
# BIN=dir runs prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
command -v wrk >/dev/null || { echo "random.sh needs wrk (apt-get install -y wrk)" >&2; exit 1; }
. loadtest/lib.sh
RT=$(port); ADMIN=$(port); BE=$(port); GRPC=$(port)
data=$tmp/data
mkdir -p "$data"

start_readtier() {
  READTIER_DATA_DIR=$data READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN READTIER_GRPC_LISTEN=127.0.0.1:$GRPC RUST_LOG=warn \
    taskset -c 0 "$BIN/readtier" >"$tmp/readtier.out" 2>&1 &
  RTPID=$!
  pids+=($RTPID)
  for _ in $(seq 1 240); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
  grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }
}
stop_readtier() { kill "$RTPID"; wait "$RTPID" 2>/dev/null || true; }

# The bare server copies the answer for member 42 (it answers those bytes to any path).
start_readtier
taskset -c 0 "$BIN/baseline" --listen 127.0.0.1:$BE --copy "http://127.0.0.1:$RT/v1/members/42/entitlement" >/dev/null &
pids+=($!)
wait_port "$BE"
stop_readtier

wrk_run() { # url -> "rps non2xx p50 p99"
  local out
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s loadtest/random.lua "$1")
  echo "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
def lat(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, t, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{rps:.0f} {bad.group(1) if bad else 0} {lat(50):.3f} {lat(99):.3f}")'
}
metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'; }

echo "server     req/s   non-2xx  p50_ms  p99_ms  shed  l1_hit_ratio"
for r in $(seq 1 "$ROUNDS"); do
  read -r rps bad p50 p99 <<<"$(wrk_run "http://127.0.0.1:$BE")"
  printf "bare     %8s %9s %7s %7s\n" "$rps" "$bad" "$p50" "$p99"
  start_readtier
  read -r rps bad p50 p99 <<<"$(wrk_run "http://127.0.0.1:$RT")"
  # (readtier_http_shed_total: builds before the admission module counted sheds there.)
  shed=$(( $(metric readtier_shed_total) + $(metric readtier_http_shed_total) )); hits=$(metric readtier_l1_hits_total); misses=$(metric readtier_l1_misses_total)
  ratio=$(python3 -c "print(round($hits / max($hits + $misses, 1), 4))")
  printf "readtier %8s %9s %7s %7s %5s  %s\n" "$rps" "$bad" "$p50" "$p99" "$shed" "$ratio"
  stop_readtier
done
