#!/usr/bin/env python3
"""Draws the commit-to-visible distribution of a loadtest report (its
`freshness.samples_ms`) as an SVG: the cumulative share of writes visible on every
node against milliseconds since commit, with p50/p99 marked.

    python3 loadtest/draw_freshness.py REPORT.json OUT.svg [title]
"""
import json
import sys

report = json.load(open(sys.argv[1]))
out = sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else "Commit to visible on every node"
f = report["freshness"]
xs = sorted(f["samples_ms"])
if not xs:
    sys.exit("no freshness samples in the report")
n = len(xs)
W, H, L, R, T, B = 720, 420, 60, 20, 40, 50
xmax = max(xs) * 1.05
px = lambda v: L + (W - L - R) * v / xmax
py = lambda q: T + (H - T - B) * (1 - q)
pct = lambda p: xs[min(n - 1, int(p * n))]
parts = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
    f'<text x="{L}" y="24" font-size="15">{title}: {n} writes, '
    f'p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {xs[-1]:.1f} ms, unseen {f["unseen"]}</text>',
    f'<line x1="{L}" y1="{py(0)}" x2="{W - R}" y2="{py(0)}" stroke="black"/>',
    f'<line x1="{L}" y1="{py(0)}" x2="{L}" y2="{py(1)}" stroke="black"/>',
]
step = 1 if xmax <= 12 else 2 if xmax <= 25 else 5 if xmax <= 60 else 10 if xmax <= 120 else 50
v = 0
while v <= xmax:
    parts.append(f'<line x1="{px(v)}" y1="{py(0)}" x2="{px(v)}" y2="{py(0) + 5}" stroke="black"/>')
    parts.append(f'<text x="{px(v)}" y="{py(0) + 18}" text-anchor="middle">{v:g}</text>')
    v += step
for q in (0, 0.25, 0.5, 0.75, 0.9, 0.99, 1):
    parts.append(f'<line x1="{L - 5}" y1="{py(q)}" x2="{W - R}" y2="{py(q)}" stroke="#ddd"/>')
    parts.append(f'<text x="{L - 8}" y="{py(q) + 4}" text-anchor="end">{q:g}</text>')
parts.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">ms from commit until every node answers the new version</text>')
points = " ".join(f"{px(x):.1f},{py((i + 1) / n):.1f}" for i, x in enumerate(xs))
parts.append(f'<polyline points="{px(0)},{py(0)} {points}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
for p, label in ((0.5, "p50"), (0.99, "p99")):
    x = px(pct(p))
    parts.append(f'<line x1="{x}" y1="{py(0)}" x2="{x}" y2="{py(1)}" stroke="#d62728" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{x + 4}" y="{py(p) - 6}" fill="#d62728">{label}</text>')
parts.append("</svg>")
open(out, "w").write("\n".join(parts) + "\n")
print(f"drew {n} writes into {out}")
