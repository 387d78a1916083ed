"""Summarises compare.sh rounds: one line per round on stdin, eight numbers:
plans baseline (req/s, cpu us/req), plans readtier (...), entitlement baseline, entitlement readtier.
With OUT set in the environment, also writes every round and the medians there as JSON."""
import json
import os
import statistics
import sys

rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]


def show(name, b_i, r_i):
    b = [r[b_i] for r in rows]
    x = [r[r_i] for r in rows]
    bc = statistics.median(r[b_i + 1] for r in rows)
    xc = statistics.median(r[r_i + 1] for r in rows)
    ratios = [y / a for a, y in zip(b, x)]
    report[name] = {
        "rounds": [
            {"baseline_rps": r[b_i], "baseline_cpu_us": r[b_i + 1],
             "readtier_rps": r[r_i], "readtier_cpu_us": r[r_i + 1]}
            for r in rows
        ],
        "median_rps_ratio": statistics.median(ratios),
        "median_cpu_us": {"baseline": bc, "readtier": xc},
    }
    by_round = " ".join(f"{v:.3f}" for v in ratios)
    print(
        f"{name:12s} req/s baseline {statistics.median(b):8.0f} readtier {statistics.median(x):8.0f}"
        f"  ratio by round {by_round}  median {statistics.median(ratios):.3f}"
        f"  | CPU us/req baseline {bc:.2f} readtier {xc:.2f}  baseline/readtier {bc / xc:.3f}"
    )


report = {}
show("plans", 0, 2)
show("entitlement", 4, 6)
if os.environ.get("OUT"):
    with open(os.environ["OUT"], "w") as f:
        json.dump(report, f, indent=1)
