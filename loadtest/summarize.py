"""Summarises compare.sh rounds: one line per round on stdin, eight numbers:
plans baseline (req/s, cpu us/req), plans readtier (...), entitlement baseline, entitlement readtier."""
import statistics
import sys

rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]


def show(name, b_i, r_i):
    b = [r[b_i] for r in rows]
    x = [r[r_i] for r in rows]
    bc = statistics.median(r[b_i + 1] for r in rows)
    xc = statistics.median(r[r_i + 1] for r in rows)
    ratios = [y / a for a, y in zip(b, x)]
    by_round = " ".join(f"{v:.3f}" for v in ratios)
    print(
        f"{name:12s} req/s baseline {statistics.median(b):8.0f} readtier {statistics.median(x):8.0f}"
        f"  ratio by round {by_round}  median {statistics.median(ratios):.3f}"
        f"  | CPU us/req baseline {bc:.2f} readtier {xc:.2f}  baseline/readtier {bc / xc:.3f}"
    )


show("plans", 0, 2)
show("entitlement", 4, 6)
