#!/usr/bin/env python3
"""Checks that `use crate::…` imports between readtier's top-level modules form no
cycle and only point down the layers README's "Layout" describes. Exit 1 on a
violation, printing it. Run from the repository root (CI runs it)."""
import os, re, sys

LAYERS = [
    ["cli", "node", "relay"],
    ["http", "grpc", "follower"],
    ["admission", "lookup", "catalog"],
    ["tier", "stream", "store"],
    ["member", "plan", "config", "telemetry", "redis_conn", "logging"],
]
level = {m: i for i, ms in enumerate(LAYERS) for m in ms}
edges = set()
for root, _, files in os.walk("src"):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        rel = os.path.relpath(path, "src")
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = open(path).read()
        # `crate::x` anywhere (use lines and paths in code), tests included.
        for m in re.finditer(r"\bcrate::([a-z_]+)", text):
            dep = m.group(1)
            if dep != top:
                edges.add((top, dep, rel))
bad = []
for a, b, where in sorted(edges):
    if a not in level or b not in level:
        bad.append(f"{where}: {a} -> {b}: module not in the layer map")
    elif level[b] < level[a]:
        bad.append(f"{where}: {a} -> {b} points up")
graph = {}
for a, b, _ in edges:
    graph.setdefault(a, set()).add(b)
def cycle_from(n, stack, seen):
    for m in graph.get(n, ()):
        if m in stack:
            return stack[stack.index(m):] + [m]
        if m not in seen:
            seen.add(m)
            c = cycle_from(m, stack + [m], seen)
            if c:
                return c
    return None
for n in graph:
    c = cycle_from(n, [n], {n})
    if c:
        bad.append("cycle: " + " -> ".join(c))
        break
for line in bad:
    print(line)
if bad:
    sys.exit(1)
print(f"layers ok: {len({(a, b) for a, b, _ in edges})} module edges, all pointing down")
