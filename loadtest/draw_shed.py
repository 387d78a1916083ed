#!/usr/bin/env python3
"""Draws two `loadtest/shed.sh` runs side by side as an SVG: per second, the answers
served and shed against the load offered (top), and the p99 of served answers counted
from when each send was due (bottom, log scale), for a node with the adaptive waiting
limit and one with the static cap only (or any two runs, named by NAME_A and NAME_B).

    python3 loadtest/draw_shed.py ADAPTIVE/shed-summary.json STATIC/shed-summary.json OUT.svg [NAME_A NAME_B]
"""
import json
import math
import sys

names = sys.argv[4:6] if len(sys.argv) >= 6 else ["adaptive", "static cap"]
runs = [(names[0], json.load(open(sys.argv[1])), "#1f77b4"),
        (names[1], json.load(open(sys.argv[2])), "#d62728")]
out = sys.argv[3]
W, H, L, R, T = 760, 560, 70, 20, 50
top = (T, 270)      # answers per second
bot = (320, 510)    # p99, log
n = max(len(r["timeline"]) for _, r, _ in runs)
ymax = max(max(t["offered"] or 0 for t in r["timeline"]) for _, r, _ in runs) * 1.1
px = lambda i: L + (W - L - R) * (i + 0.5) / n
pya = lambda v: top[1] - (top[1] - top[0]) * v / ymax
lo, hi = 0.1, 100000.0
pyl = lambda ms: bot[1] - (bot[1] - bot[0]) * (math.log10(max(lo, min(hi, ms))) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
p = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
     f'<rect width="{W}" height="{H}" fill="white"/>']
a = runs[0][1]
p.append(f'<text x="{L}" y="22" font-size="15">One node (one core) offered {a["overload"]["offered_rps"] / a["capacity_rps"]:.0f}× its capacity '
         f'({a["capacity_rps"]}/s of store reads) for {sum(1 for t in a["timeline"] if t["offered"] == a["timeline"][0]["offered"])} s, then 0.8×</text>')
p.append(f'<text x="{L}" y="40" fill="#555">{names[0]}: admitted p99 {a["overload"]["admitted_p99_ms"]:.1f} ms, shed p99 {a["overload"]["shed_p99_ms"]:.1f} ms; '
         f'{names[1]}: admitted p99 {runs[1][1]["overload"]["admitted_p99_ms"] / 1000:.1f} s, {runs[1][1]["overload"]["never_sent"]} sends never made</text>')
for y0, y1 in (top, bot):
    p.append(f'<line x1="{L}" y1="{y1}" x2="{W - R}" y2="{y1}" stroke="black"/>')
    p.append(f'<line x1="{L}" y1="{y0}" x2="{L}" y2="{y1}" stroke="black"/>')
for k in range(0, 5):
    v = ymax / 1.1 * k / 4
    p.append(f'<text x="{L - 6}" y="{pya(v) + 4}" text-anchor="end">{v / 1000:.0f}k</text>')
for ms in (0.1, 1, 10, 100, 1000, 10000, 100000):
    p.append(f'<line x1="{L}" y1="{pyl(ms)}" x2="{W - R}" y2="{pyl(ms)}" stroke="#eee"/>')
    p.append(f'<text x="{L - 6}" y="{pyl(ms) + 4}" text-anchor="end">{ms:g}</text>')
p.append(f'<text x="16" y="{(top[0] + top[1]) / 2}" transform="rotate(-90 16 {(top[0] + top[1]) / 2})" text-anchor="middle">answers per second</text>')
p.append(f'<text x="16" y="{(bot[0] + bot[1]) / 2}" transform="rotate(-90 16 {(bot[0] + bot[1]) / 2})" text-anchor="middle">served p99, ms</text>')
for i in range(0, n, 5):
    p.append(f'<text x="{px(i)}" y="{bot[1] + 16}" text-anchor="middle">{i} s</text>')
def line(pts, color, style='stroke-width="2"'):
    xy = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    return f'<polyline fill="none" stroke="{color}" {style} points="{xy}"/>'
for name, r, color in runs:
    tl = r["timeline"]
    p.append(line([(px(i), pya(t["offered"] or 0)) for i, t in enumerate(tl)], color, 'stroke-width="1" stroke-dasharray="6 4" opacity="0.6"'))
    # Served per second: answers completed that second where nothing is shed (the
    # static cap, whose answers come seconds after they were due); otherwise 2xx
    # answers to the sends due that second (completions would mix in the sheds).
    shed_any = any(t["shed"] for t in tl)
    p.append(line([(px(i), pya(t["ok"] if shed_any else t["completed"])) for i, t in enumerate(tl)], color))
    if any(t["shed"] for t in tl):
        p.append(line([(px(i), pya(t["shed"])) for i, t in enumerate(tl)], color, 'stroke-width="2" stroke-dasharray="2 2"'))
    p.append(line([(px(i), pyl(t["p99_ms"])) for i, t in enumerate(tl) if t["ok"]], color))
legend = [("offered", "#777", "6 4"), (f"served, {names[0]}", runs[0][2], ""), (f"shed, {names[0]}", runs[0][2], "2 2"),
          (f"served, {names[1]}", runs[1][2], "")]
for k, (label, color, dash) in enumerate(legend):
    x = L + 10 + k * 170
    p.append(f'<line x1="{x}" y1="{top[0] + 10}" x2="{x + 24}" y2="{top[0] + 10}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
    p.append(f'<text x="{x + 30}" y="{top[0] + 14}">{label}</text>')
p.append('</svg>')
open(out, "w").write("\n".join(p))
