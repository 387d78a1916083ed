#!/usr/bin/env bash
# The over-capacity run of issue 16, checked against the node's own count of answers.
#
#   loadtest/overload.sh [rate=300000] [connections=1024] [seconds=5]
#
# Starts readtier (embedded default: SQLite, 1,000,000 members) pinned to core 0, runs
#   loadtest --connections C --rate R --duration Ss --warmup 0s
# pinned to core 1, and samples the node's readtier_http_requests_total every 100 ms
# meanwhile (each sample stamped at the middle of its scrape, which waits behind the
# load). Prints the command's wall time, what the report says, and the node's own rate
# while loaded: from the samples inside the report's window (window_start_unix_s) but
# 0.3 s clear of its edges, where the rate steps; an older report has no window, so the
# samples inside the command's run are used.
#
# LOADTEST=path runs another loadtest binary (an older build kept for comparison);
# BIN=dir takes readtier from there instead of building this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-300000}
CONNS=${2:-1024}
SECS=${3:-5}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
. loadtest/lib.sh
bin=$BIN
LOADTEST=${LOADTEST:-$bin/loadtest}
RT=$(port); ADMIN=$(port)
READTIER_DATA_DIR=${DATA_DIR:-$tmp} READTIER_LISTEN=127.0.0.1:$RT READTIER_ADMIN_LISTEN=127.0.0.1:$ADMIN RUST_LOG=warn \
  taskset -c "$SERVER_CORE" $bin/readtier >"$tmp/readtier.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do grep -q listening "$tmp/readtier.out" && break; sleep 0.5; done
grep -q listening "$tmp/readtier.out" || { cat "$tmp/readtier.out"; exit 1; }

answered() {
  curl -s "http://127.0.0.1:$ADMIN/metrics" |
    awk '/^readtier_http_requests_total/ && $0 !~ /route="metrics"/ {s += $2} END {printf "%d", s}'
}
(while :; do a=$(date +%s.%N); n=$(answered); echo "$a $(date +%s.%N) $n"; sleep 0.1; done) >"$tmp/samples" &
pids+=($!)
sleep 1
t0=$(date +%s.%N)
status=0
taskset -c "$CLIENT_CORE" "$LOADTEST" --target "http://127.0.0.1:$RT" --connections "$CONNS" \
  --rate "$RATE" --duration "${SECS}s" --warmup 0s --progress 0 --json "$tmp/report.json" \
  >/dev/null 2>"$tmp/stderr" || status=$?
t1=$(date +%s.%N)
sleep 1
echo "loadtest exit status $status; its stderr:"
sed 's/^/  /' "$tmp/stderr"
python3 - "$tmp" "$t0" "$t1" "$SECS" "$RATE" "$CONNS" <<'EOF'
import json, sys
tmp, t0, t1, secs, rate, conns = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
samples = []
for line in open(f"{tmp}/samples"):
    p = line.split()
    if len(p) == 3 and p[2].isdigit():
        samples.append(((float(p[0]) + float(p[1])) / 2, int(p[2])))

def at(t):
    """The node's answer count at time t, interpolated between samples."""
    for (ta, na), (tb, nb) in zip(samples, samples[1:]):
        if ta <= t <= tb:
            return na + (nb - na) * (t - ta) / (tb - ta)
    raise SystemExit(f"no samples around {t}")

def steady(a, b):
    """The node's answers per second from the samples between a + 0.3 s and b - 0.3 s."""
    inside = [(t, n) for t, n in samples if a + 0.3 <= t <= b - 0.3]
    (ta, na), (tb, nb) = inside[0], inside[-1]
    return (nb - na) / (tb - ta)

r = json.load(open(f"{tmp}/report.json"))
wall = t1 - t0
run = at(t1) - at(t0)
print(f"offered {rate}/s over {conns} connections for {secs:g} s (warm-up 0 s)")
print(f"wall time of the command: {wall:.2f} s" + (f" (opening the connections: {r['connect_seconds']:.2f} s)" if "connect_seconds" in r else ""))
print(f"node answered during the command: {run:.0f} ({run / wall:.0f}/s of wall time)")
if "achieved_rps" in r:
    ws = r["window_start_unix_s"]
    node = steady(ws, ws + secs)
    s = r["sends"]
    print(f"report: offered_rps {r['offered_rps']:.0f}, achieved_rps {r['achieved_rps']:.0f} "
          f"(ratio {r['achieved_ratio']:.4f}), sends offered {s['offered']}, sent {s['sent']}, "
          f"dropped {s['dropped']}, late {s['late']} (generator {s['late_generator']}), "
          f"in grace {r['answers']['after_window_in_grace']}, unanswered {r['answers']['unanswered']}")
    print(f"report: latency p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms; "
          f"send lag p99 {r['generator']['send_lag_ms']['p99']:.3f} ms; generator CPU {r['generator']['cpu_utilisation']}")
    print(f"node's own rate inside the window: {node:.0f}/s; report achieved / node = {r['achieved_rps'] / node:.4f}")
else:
    print(f"report (old): throughput_rps {r['throughput_rps']:.0f} over measured_seconds "
          f"{r['measured_seconds']:g}, requests {r['requests']}, latency p50 {r['latency_ms']['p50']:.1f} ms")
    node = steady(t0, t1)
    print(f"node's own rate while loaded: {node:.0f}/s; report throughput / node = {r['throughput_rps'] / node:.2f}")
EOF
