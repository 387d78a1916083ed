#!/usr/bin/env bash
# Overload: a node driven at 3x its measured capacity sheds instead of queueing.
#
#   loadtest/shed.sh [seconds=20]
#
# One node on core 0 (embedded default, 1,000,000 members, L1 of 20,000 entries, so
# uniform member reads are store reads: the expensive path, and the one shed first),
# loadtest on core 1, entitlement reads of uniform random members:
#   1. closed loop, 8 s, CONNS connections (default 256): the node's capacity C
#      (answers per second);
#   2. open loop at 0.8 C, 10 s: the admitted p99 at 80% load;
#   3. open loop, stages: SECONDS at MULT C (default 3), then 5 s at 0.8 C (recovery), while /healthz
#      on the admin listener is timed every 100 ms and the node's RSS sampled each
#      second;
#   4. a cold start: a fresh node driven at MULT C (or COLD_RATE a second) from its
#      first request for 10 s (no calm load before it to learn from).
# The generator's own send and read lags and CPU use in phase 3 are printed beside: at
# 3 C its core is nearly full (the latencies leave both lags out).
# Prints the figures and writes the reports to $OUT (default docs/figures/shed/).
# ADAPTIVE=false runs phases 2 to 4 with only the static caps shedding (for comparison).
# BIN=dir picks the binaries (default target/release, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
# One client population for all three phases: a node's capacity depends on how many
# connections carry it (the kernel's cost per request grows with them).
CONNS=${CONNS:-256}
# The overload, in multiples of C.
MULT=${MULT:-3}
echo "shed.sh: $CONNS connections, ${MULT}x; adaptive waiting ${ADAPTIVE:-true}" >&2
OUT=${OUT:-docs/figures/shed}
. loadtest/lib.sh
. loadtest/shed_lib.sh
mkdir -p "$OUT"
# Capacity is what the node serves, not what it sheds: measured with only the static caps
# (a closed loop of 256 keeps a queue past the target, which the adaptive part sheds).
start_node false
lt --connections $CONNS --duration 8s --warmup 2s --json "$OUT/shed-capacity.json" >/dev/null
kill $NODE; wait $NODE 2>/dev/null || true
start_node "${ADAPTIVE:-true}"
C=$(python3 -c "import json; r=json.load(open('$OUT/shed-capacity.json')); print(int(r['answers']['ok'] / r['window_seconds']))")
lt --connections $CONNS --rate $((C * 8 / 10)) --duration 10s --warmup 2s --json "$OUT/shed-80.json" >/dev/null
# Health probe and memory sampler during the overload.
( while kill -0 $NODE 2>/dev/null; do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$A/healthz" || echo fail
    sleep 0.1
  done ) >"$tmp/health.txt" &
samplers=($!)
( while kill -0 $NODE 2>/dev/null; do awk '/VmRSS/ {print $2}' /proc/$NODE/status; sleep 1; done ) >"$tmp/rss.txt" &
samplers+=($!)
# The shed level and the queue delay the node judged, every 250 ms.
( while kill -0 $NODE 2>/dev/null; do
    curl -s "http://127.0.0.1:$A/metrics" | awk '/^readtier_shed_level / {l=$2} /^readtier_queue_delay_seconds / {d=$2} END {if (l != "") print l, d + 0}'
    sleep 0.25
  done ) >"$tmp/limit.txt" &
samplers+=($!)
# How busy each of the two cores was (node on 0, load on 1), every 250 ms: /proc/stat's
# busy jiffies (all but idle and iowait) over all, per core, so a generator whose core
# is full, or anything else on the node's core, shows.
( while kill -0 $NODE 2>/dev/null; do
    awk '/^cpu[01] / {printf "%s %d %d ", $1, $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9} END {print ""}' /proc/stat
    sleep 0.25
  done ) >"$tmp/cores.txt" &
samplers+=($!)
pids+=("${samplers[@]}")
lt --connections $CONNS --stages "${SECS}s@$((C * MULT)),5s@$((C * 8 / 10))" --warmup 1s \
  --json "$OUT/shed-3x.json" --svg "$OUT/shed-3x.svg" >/dev/null || true
# The samplers stop with phase 3 (a probe in flight as the node is stopped is not a
# failed probe).
kill "${samplers[@]}" 2>/dev/null || true
kill $NODE; wait $NODE 2>/dev/null || true
start_node "${ADAPTIVE:-true}"
lt --connections $CONNS --rate "${COLD_RATE:-$((C * MULT))}" --duration 10s --warmup 0s --json "$OUT/shed-cold.json" >/dev/null || true
python3 - "$OUT" "$C" "$tmp/health.txt" "$tmp/rss.txt" "$tmp/limit.txt" "$tmp/cores.txt" <<'PY'
import json, sys
out, cap, health, rss, limit, cores = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
busy = {"cpu0": [], "cpu1": []}
prev = None
for line in open(cores):
    f = line.split()
    if len(f) < 6:
        continue
    now = {f[0]: (int(f[1]), int(f[2])), f[3]: (int(f[4]), int(f[5]))}
    if prev:
        for c in busy:
            db, dt = now[c][0] - prev[c][0], now[c][1] - prev[c][1]
            busy[c].append(round(db / dt, 2) if dt else None)
    prev = now
rows = [x.split() for x in open(limit) if x.strip()]
level = [float(r[0]) for r in rows]
delay = [round(float(r[1]) * 1000, 2) for r in rows if len(r) > 1]
r80 = json.load(open(f"{out}/shed-80.json"))
r3 = json.load(open(f"{out}/shed-3x.json"))
cold = json.load(open(f"{out}/shed-cold.json"))
h = [l.strip() for l in open(health) if l.strip()]
hs = sorted(float(x) * 1000 for x in h if x != "fail")
m = [int(x) for x in open(rss) if x.strip()]
over, after = r3["stages"][0], r3["stages"][1]
tl = r3["timeline"]
summary = {
    "capacity_rps": cap,
    "p99_ms_at_80pct": r80["latency_ms"]["p99"],
    "overload": {
        "offered_rps": over["rate_from"],
        "answered_rps": over["achieved_rps"],
        "admitted_ok_rps": over["served_rps"],
        "sent": over["sends"]["sent"], "never_sent": over["sends"]["dropped"],
        "admitted_p99_ms": over["latency_ms"]["p99"],
        "shed": over["answers"]["shed"],
        "shed_p99_ms": over["shed_latency_ms"]["p99"],
        "errors": over.get("errors"),
    },
    "after": {"offered_rps": after["rate_from"], "achieved_rps": after["achieved_rps"],
              "ok_rps": round(after["answers"]["ok"] / after["duration_s"], 1),
              "shed": after["answers"]["shed"], "p99_ms": after["latency_ms"]["p99"]},
    "cold_start": {"offered_rps": cold["offered_rps"],
                   "ok_rps": round(cold["answers"]["ok"] / cold["window_seconds"], 1),
                   "shed_rps": round(cold["answers"]["shed"] / cold["window_seconds"], 1),
                   "never_sent": cold["sends"]["dropped"],
                   "p50_ms": cold["latency_ms"]["p50"], "p99_ms": cold["latency_ms"]["p99"],
                   "shed_p99_ms": cold["shed_latency_ms"]["p99"]},
    "generator": {"send_lag_p99_ms": r3["generator"]["send_lag_ms"]["p99"],
                  "read_lag_p99_ms": r3["generator"]["read_lag_ms"]["p99"],
                  "cpu_utilisation": r3["generator"]["cpu_utilisation"]},
    "healthz_ms": {"probes": len(h), "failed": h.count("fail"),
                   "p99": hs[int(len(hs) * 0.99) - 1] if hs else None, "max": hs[-1] if hs else None},
    "rss_kib": {"first": m[0] if m else None, "max": max(m) if m else None, "last": m[-1] if m else None},
    "admission": {"shed_level_max": max(level) if level else None, "shed_level_last": level[-1] if level else None,
                  "queue_delay_ms_max": max(delay) if delay else None,
                  "shed_level_every_250ms": level, "queue_delay_ms_every_250ms": delay},
    "cores_busy_every_250ms": {"node (core 0)": busy["cpu0"], "load (core 1)": busy["cpu1"]},
    "timeline": [{k: t.get(k) for k in ("t", "offered", "sent", "completed", "ok", "shed", "p99_ms")} for t in tl],
}
json.dump(summary, open(f"{out}/shed-summary.json", "w"), indent=1)
s = {k: v for k, v in summary.items() if k not in ("timeline", "cores_busy_every_250ms")}
s["admission"] = {k: v for k, v in summary["admission"].items() if not k.endswith("every_250ms")}
print(json.dumps(s, indent=1))
PY
