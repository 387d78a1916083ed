#!/usr/bin/env bash
# An overload at a fixed rate and the recovery after it, on a node that has carried a
# calm load first: quicker than shed.sh (one node, ~30 s), for A/B runs of two binaries.
#
#   HIGH=63000 LOW=16800 loadtest/shed_rate.sh
#
# One node on core 0 and loadtest on core 1 as shed.sh has them (shed_lib.sh), 256
# connections: 5 s at LOW a second (the calm load
# the node learns from), then 10 s at HIGH and 5 s back at LOW. Prints one line: the
# overload's served rate and p99, its shed p99, the share of the LOW load served in
# the first and second seconds after the drop and over the 5 s, and the generator's
# read lag p99 (a busy generator core shows there).
# BIN=dir picks the binaries (default target/release, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
HIGH=${HIGH:-63000}
LOW=${LOW:-16800}
. loadtest/lib.sh
. loadtest/shed_lib.sh
start_node
lt --connections 256 --rate "$LOW" --duration 5s --warmup 1s >/dev/null 2>&1 || true
lt --connections 256 --stages "10s@$HIGH,5s@$LOW" --warmup 1s --json "$tmp/r.json" >/dev/null 2>&1 || true
python3 - "$tmp/r.json" "$BIN" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
over, after = r["stages"][0], r["stages"][1]
tl = r["timeline"]
served = lambda t: round(100 * t["ok"] / t["offered"], 1)
print(f"{sys.argv[2]}: over {over['rate_from']:.0f}/s: served {over['answers']['ok'] / over['duration_s']:.0f}/s"
      f" p99 {over['latency_ms']['p99']} ms, shed p99 {over['shed_latency_ms']['p99']} ms"
      f" | back at {after['rate_from']:.0f}/s: served {served(tl[10])}% in the first second, {served(tl[11])}% in the second,"
      f" {100 * after['answers']['ok'] / after['duration_s'] / after['rate_from']:.1f}% over 5 s"
      f" | generator read lag p99 {r['generator']['read_lag_ms']['p99']} ms")
PY
