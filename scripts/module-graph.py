#!/usr/bin/env python3
"""The crate's module import graph, checked against the floors of docs/architecture.md.

Reads every `src/**/*.rs` (test modules left out: `tests.rs`, `testdata.rs` and what follows a
`#[cfg(test)] mod ...` line), collects the paths each file names (`use crate::...`, `crate::...`,
`super::...`, `self::...`, braces expanded) and maps them to the files that define those modules.

Prints the rooms (top-level modules) with their floor and the rooms each imports, then every import
that looks up (a room importing a room on a higher floor), then every cycle of files (strongly
connected components with more than one file). Exit status 1 when there is an upward import or a
cycle, so the test command can hold the layering.

    python3 scripts/module-graph.py            # the summary and the problems
    python3 scripts/module-graph.py --edges    # also every file-to-file import
"""
import os
import re
import sys

# Lowest first. A room may import its own files and rooms on lower floors (same-floor rooms: neither
# imports the other). Keep in step with docs/architecture.md.
FLOORS = [
    ["config"],
    ["formats"],
    ["template", "tokenizer"],
    ["engine"],
    ["generate"],
    ["model"],
    ["error"],
    ["runtime", "convert"],
    ["agent"],
    ["train"],
    ["ffi"],
    ["lib"],
]

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(rel):
    """src-relative file path -> module path tuple (lib.rs -> ())."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+", text)
    return text[: m.start()] if m else text


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (as lists of names)."""
    tree = tree.strip()
    depth, i = 0, 0
    # Split at the first top-level brace.
    b = tree.find("{")
    if b < 0:
        return [[p.strip() for p in tree.split("::") if p.strip()]]
    head = [p.strip() for p in tree[:b].split("::") if p.strip()]
    inner = tree[b + 1 : tree.rindex("}")]
    items, cur = [], ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it.strip():
            for tail in expand(it):
                out.append(head + tail)
    return out


def main():
    files = {}
    for d, _, names in os.walk(ROOT):
        for n in names:
            if not n.endswith(".rs") or n in ("tests.rs", "testdata.rs"):
                continue
            rel = os.path.relpath(os.path.join(d, n), ROOT)
            files[module_of(rel)] = rel
    mods = set(files)

    def resolve(path):
        """Longest module prefix of `path` that is a file of ours."""
        for k in range(len(path), 0, -1):
            if tuple(path[:k]) in mods:
                return tuple(path[:k])
        return None

    edges = {}
    for mod, rel in files.items():
        text = strip(open(os.path.join(ROOT, rel), encoding="utf-8").read())
        targets = set()
        paths = []
        for m in re.finditer(r"\buse\s+((?:crate|super|self)\s*::[^;]*);", text):
            paths += expand(m.group(1))
        for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:\s*::\s*\w+)+)", text):
            paths.append([p.strip() for p in m.group(1).split("::")])
        for p in paths:
            if not p:
                continue
            if p[0] == "crate":
                full = p[1:]
            elif p[0] == "self":
                full = list(mod) + p[1:]
            else:
                full = list(mod)
                while p and p[0] == "super":
                    p, full = p[1:], full[:-1]
                full += p
            t = resolve(full)
            if t is not None and t != mod:
                targets.add(t)
        edges[mod] = targets

    def room(mod):
        return mod[0] if mod else "lib"

    floor = {r: i for i, rooms in enumerate(FLOORS) for r in rooms}
    rooms = sorted({room(m) for m in files}, key=lambda r: (floor.get(r, -1), r))
    problems = 0
    unknown = [r for r in rooms if r not in floor]
    for r in unknown:
        print(f"room {r} has no floor in scripts/module-graph.py")
        problems += 1
    print("rooms (floor: room -> rooms it imports):")
    for r in rooms:
        outs = sorted({room(t) for m, ts in edges.items() if room(m) == r for t in ts} - {r}, key=lambda x: (floor.get(x, -1), x))
        print(f"  {floor.get(r, '?')}: {r} -> {', '.join(outs) if outs else '-'}")
    up = []
    for m, ts in sorted(edges.items()):
        for t in sorted(ts):
            a, b = room(m), room(t)
            if a != b and a in floor and b in floor and floor[b] >= floor[a]:
                up.append((files[m], files[t]))
    print(f"imports that look up or sideways: {len(up)}")
    for a, b in up:
        print(f"  src/{a} -> src/{b}")
    problems += len(up)

    # Tarjan's strongly connected components over files.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        # A module naming its own submodules (declaring, re-exporting, calling into them) is
        # containment, not an import between rooms: only the other direction counts for cycles.
        for w in (w for w in edges.get(v, ()) if w[: len(v)] != v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(files):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sccs:
        cycles.append(sorted("src/" + files[m] for m in comp))
    print(f"cycles of files: {len(cycles)}")
    for c in cycles:
        print("  " + " <-> ".join(c))
    problems += len(cycles)
    if "--edges" in sys.argv:
        print("file imports:")
        for m, ts in sorted(edges.items()):
            print(f"  src/{files[m]} -> {', '.join('src/' + files[t] for t in sorted(ts)) or '-'}")
    print(f"{len(files)} files, {sum(len(t) for t in edges.values())} imports")
    # Three checks (every room has a floor, nothing looks up, no cycle), in the test summary's form.
    failed = sum(1 for bad in (unknown, up, cycles) if bad)
    print(f"module graph: {3 - failed} passed, {failed} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
