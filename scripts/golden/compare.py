#!/usr/bin/env python3
"""Compares two golden files, or two golden folders (recursively, file by file by relative path), by value.

  JSON (.json): parsed and compared key by key, element by element: ints, strings, bools and null exactly; floats
      exactly too, and for the floats that differ the largest absolute and relative difference is reported per
      top-level section (the first key of the path). Key order and formatting do not count (a line notes when
      the bytes are identical as well).
  .safetensors: sha256; on a mismatch, the header (metadata, tensor names, dtypes, shapes) and, with numpy, each
      tensor's max |a-b| (read straight from the file, the safetensors package is not needed).
  anything else: sha256.

Prints one line per file: "equal" (plus "(byte-identical)" when it is), "equal except <paths>" when only
ignored paths differ, or the differences ("DIFFERENT: ..."; -v lists every differing path). Exit status 0 only
if every compared value is equal apart from the --ignore'd paths; 1 otherwise; 2 for usage errors.

Paths look like  versions.torch  prompts[0].last_logits_top10[3].logit . An --ignore KEYPATH (repeatable) drops
that path and everything under it; "*" matches within one key or index ("prompts[*].greedy_steps",
"versions.*"). For non-JSON files the path is the relative file name (e.g. --ignore adapter_model.safetensors);
for tensors it is <file>:<tensor name>.

--float-tol X: floats that differ by at most X (absolute) count as equal; the largest difference is still
reported ("equal within X"). Different CPUs round the same f32 reference computation differently in the
last bits (measured: up to 5e-5 on the logits between an AVX2 and an AVX-512 machine).

Folders: files whose name starts with "." (make.sh's stamps) are skipped; a file A/<stem>_agentinstruct_golden.json
is merged into A/<stem>_golden.json before comparing (make.sh keeps the AgentInstruct-derived sections in a
file of their own because that data is not redistributable; a single-file golden holds both).

Usage: python3 scripts/golden/compare.py A B [--ignore versions.torch --ignore note] [--float-tol 1e-4] [-v]
"""
import argparse
import json
import math
import os
import re
import struct
import sys

from golden_common import sha256_of


def keypath_regex(pattern):
    out = []
    for part in re.split(r"(\*)", pattern):
        out.append(r"[^.\[\]]*" if part == "*" else re.escape(part))
    return re.compile("".join(out) + r"(?:$|[.\[:])")


class Ignores:
    def __init__(self, patterns):
        self.res = [keypath_regex(p) for p in patterns]

    def __call__(self, path):
        return any(r.match(path) for r in self.res)


def join(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def section_of(path):
    return re.split(r"[.\[]", path, maxsplit=1)[0] or "(root)"


class Diff:
    """Differences found in one file."""

    def __init__(self, ignored, float_tol=0.0):
        self.ignored = ignored
        self.float_tol = float_tol
        self.tolerated = [0, 0.0]  # floats within float_tol: count, max abs difference
        self.diffs = []            # (path, description)
        self.ignored_paths = []
        self.float_stats = {}      # section -> [max_abs, max_rel, count]
        self.n_values = 0
        self.float_paths = set()   # diffs counted in float_stats

    def add(self, path, what):
        if self.ignored(path):
            self.ignored_paths.append(path)
        else:
            self.diffs.append((path, what))

    def add_float(self, path, a, b, what=None):
        if self.ignored(path):
            self.ignored_paths.append(path)
            return
        if what is None and math.isfinite(a) and math.isfinite(b) and abs(a - b) <= self.float_tol:
            self.tolerated[0] += 1
            self.tolerated[1] = max(self.tolerated[1], abs(a - b))
            return
        self.diffs.append((path, what or f"{a!r} vs {b!r}"))
        self.float_paths.add(path)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            st = self.float_stats.setdefault(section_of(path), [0.0, 0.0, 0])
            d = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
            rel = d / max(abs(a), abs(b)) if d else 0.0
            st[0], st[1], st[2] = max(st[0], d), max(st[1], rel), st[2] + 1


def kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return type(v).__name__


def compare_values(a, b, path, diff):
    if path and diff.ignored(path):
        probe = Diff(lambda _: False)
        compare_values(a, b, path, probe)
        if probe.diffs:
            diff.ignored_paths.append(path)
        return
    ka, kb = kind(a), kind(b)
    if ka != kb:
        diff.add(path, f"type {ka} vs {kb}: {short(a)} vs {short(b)}")
        return
    if isinstance(a, dict):
        for k in a:
            if k not in b:
                diff.add(join(path, k), "only in A")
        for k in b:
            if k not in a:
                diff.add(join(path, k), "only in B")
        for k in a:
            if k in b:
                compare_values(a[k], b[k], join(path, k), diff)
        return
    if isinstance(a, list):
        if len(a) != len(b):
            diff.add(path + "#len", f"length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_values(x, y, join(path, i), diff)
        return
    diff.n_values += 1
    if ka == "number" and (isinstance(a, float) or isinstance(b, float)):
        if not (a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))):
            diff.add_float(path, float(a), float(b))
        return
    if a != b:
        diff.add(path, f"{short(a)} vs {short(b)}")


def short(v, n=60):
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + "..."


def read_safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
             "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


def safetensors_tensor(np, path, base, info):
    start, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(base + start)
        raw = f.read(end - start)
    dt = info["dtype"]
    if dt == "BF16":
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=ST_DTYPES[dt])
    return arr.reshape(info["shape"])


def compare_safetensors(pa, pb, rel, diff):
    ha, base_a = read_safetensors_header(pa)
    hb, base_b = read_safetensors_header(pb)
    compare_values(ha.get("__metadata__"), hb.get("__metadata__"), f"{rel}:__metadata__", diff)
    names_a = {k for k in ha if k != "__metadata__"}
    names_b = {k for k in hb if k != "__metadata__"}
    for k in sorted(names_a - names_b):
        diff.add(f"{rel}:{k}", "tensor only in A")
    for k in sorted(names_b - names_a):
        diff.add(f"{rel}:{k}", "tensor only in B")
    try:
        import numpy as np
    except ImportError:
        np = None
    for k in sorted(names_a & names_b):
        ia, ib = ha[k], hb[k]
        p = f"{rel}:{k}"
        if ia["dtype"] != ib["dtype"] or ia["shape"] != ib["shape"]:
            diff.add(p, f"dtype/shape {ia['dtype']}{ia['shape']} vs {ib['dtype']}{ib['shape']}")
            continue
        if np is None:
            continue
        ta = safetensors_tensor(np, pa, base_a, ia)
        tb = safetensors_tensor(np, pb, base_b, ib)
        if ta.tobytes() == tb.tobytes():
            continue
        fa, fb = ta.astype(np.float64), tb.astype(np.float64)
        d = float(np.max(np.abs(fa - fb))) if fa.size else 0.0
        scale = float(max(np.max(np.abs(fa)), np.max(np.abs(fb)))) if fa.size else 0.0
        n = int(np.count_nonzero(ta != tb))
        if diff.ignored(p):
            diff.ignored_paths.append(p)
            continue
        diff.diffs.append((p, f"{n} of {ta.size} elements differ, max |a-b| {d:.3g}"))
        diff.float_paths.add(p)
        st = diff.float_stats.setdefault(rel, [0.0, 0.0, 0])
        st[0], st[1], st[2] = max(st[0], d), max(st[1], d / scale if scale else 0.0), st[2] + n
    if not np:
        diff.diffs.append((rel, "sha256 differs (numpy not importable: tensor values not compared)"))


def load_json(path):
    with open(path, encoding="utf-8") as f:
        a = json.load(f)
    stem = path[: -len("_golden.json")] if path.endswith("_golden.json") else None
    extra = f"{stem}_agentinstruct_golden.json" if stem else None
    if extra and os.path.isfile(extra) and isinstance(a, dict):
        with open(extra, encoding="utf-8") as f:
            a.update(json.load(f))
    return a


def compare_file(pa, pb, rel, ignored, verbose, float_tol=0.0):
    """Returns (ok, line)."""
    diff = Diff(ignored, float_tol)
    same_bytes = sha256_of(pa) == sha256_of(pb)
    if rel.endswith(".json"):
        a = load_json(pa)
        with open(pb, encoding="utf-8") as f:
            b = json.load(f)
        compare_values(a, b, "", diff)
    elif same_bytes:
        pass
    elif ignored(rel):
        diff.ignored_paths.append(rel)
    elif rel.endswith(".safetensors"):
        compare_safetensors(pa, pb, rel, diff)
        if not diff.diffs and not diff.ignored_paths:
            diff.diffs.append((rel, "sha256 differs (tensor values and header equal: header layout differs)"))
    else:
        diff.diffs.append((rel, "sha256 differs"))

    if not diff.diffs:
        if diff.ignored_paths:
            line = f"{rel}: equal except {', '.join(dedupe(diff.ignored_paths))}"
        elif diff.tolerated[0]:
            line = f"{rel}: equal within {float_tol:g} ({diff.tolerated[0]} float(s) differ, max abs {diff.tolerated[1]:.3g})"
        else:
            line = f"{rel}: equal" + (" (byte-identical)" if same_bytes else "")
        return True, line
    parts = [f"{len(diff.diffs)} value(s) differ"]
    for sec, (mabs, mrel, n) in diff.float_stats.items():
        parts.append(f"{sec}: {n} float(s), max abs {mabs:.3g}, max rel {mrel:.3g}")
    non_float = [(p, w) for p, w in diff.diffs if p not in diff.float_paths]
    floats = [(p, w) for p, w in diff.diffs if p in diff.float_paths]
    shown = non_float[:8] + floats[:max(0, 3 - len(non_float))]
    parts.append("e.g. " + "; ".join(f"{p} ({w})" for p, w in shown))
    if diff.ignored_paths:
        parts.append(f"ignored: {', '.join(dedupe(diff.ignored_paths))}")
    line = f"{rel}: DIFFERENT: " + " | ".join(parts)
    if verbose:
        line += "".join(f"\n    {p}: {w}" for p, w in diff.diffs)
    return False, line


def dedupe(paths, limit=12):
    out = list(dict.fromkeys(paths))
    return out if len(out) <= limit else out[:limit] + [f"... ({len(out) - limit} more)"]


def walk(root):
    files = set()
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith(".") and not n.endswith("_agentinstruct_golden.json"):
                files.add(os.path.relpath(os.path.join(dirpath, n), root))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("a", help="file or folder")
    ap.add_argument("b", help="file or folder (same kind as A)")
    ap.add_argument("--ignore", action="append", default=[], metavar="KEYPATH",
                    help="a path whose difference does not count (repeatable), e.g. versions.torch")
    ap.add_argument("--float-tol", type=float, default=0.0, metavar="X",
                    help="floats differing by at most X (absolute) count as equal")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every differing path")
    args = ap.parse_args()
    ignored = Ignores(args.ignore)

    if os.path.isdir(args.a) != os.path.isdir(args.b):
        print("error: A and B must both be files or both be folders", file=sys.stderr)
        return 2
    if os.path.isdir(args.a):
        fa, fb = walk(args.a), walk(args.b)
        pairs = [(os.path.join(args.a, r), os.path.join(args.b, r), r) for r in sorted(fa & fb)]
        missing = [(r, "only in A") for r in sorted(fa - fb)] + [(r, "only in B") for r in sorted(fb - fa)]
    else:
        pairs = [(args.a, args.b, os.path.basename(args.b))]
        missing = []

    passed = failed = 0
    for r, where in missing:
        if ignored(r):
            print(f"{r}: {where} (ignored)")
        else:
            print(f"{r}: {where}")
            failed += 1
    for pa, pb, rel in pairs:
        good, line = compare_file(pa, pb, rel, ignored, args.verbose, args.float_tol)
        print(line)
        passed, failed = passed + good, failed + (not good)
    print(f"golden compare: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
