"""Totals the test runners' own summaries into one line: `tests: N passed, N failed, N skipped`.

scripts/test.sh keeps each stage's output as DIR/NN.KIND.NAME.log; KIND says how to read it:
  cargo  libtest's `test result: ... N passed; N failed; N ignored` lines, minus the tests that
         printed `SKIPPED: ...` (they return early and libtest counts them as passed); ignored tests
         count as skipped
  go     `go test -v` lines `--- PASS` / `--- FAIL` / `--- SKIP` (subtests included)
  ctest  `N% tests passed, N tests failed out of N` and the `(Skipped)` / `(Not Run)` entries
  plain  lines `[word:] N passed, N failed[, N skipped]`
  none   not counted (builds)
A run that stopped early (exit status given as the second argument) counts one failure if none was reported.
"""
import pathlib
import re
import sys


def count(kind, text):
    p = f = s = 0
    if kind == "cargo":
        for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
            p, f, s = p + int(m[1]), f + int(m[2]), s + int(m[3])
        skipped = len(re.findall(r"^SKIPPED: ", text, re.M))
        p, s = p - skipped, s + skipped
    elif kind == "go":
        p = len(re.findall(r"^\s*--- PASS", text, re.M))
        f = len(re.findall(r"^\s*--- FAIL", text, re.M))
        s = len(re.findall(r"^\s*--- SKIP", text, re.M))
    elif kind == "ctest":
        m = re.search(r"tests passed, (\d+) tests? failed out of (\d+)", text)
        if m:
            s = len(re.findall(r"\((?:Skipped|Not Run)\)", text))
            f, total = int(m[1]), int(m[2])
            p = total - f - s
    elif kind == "plain":
        for m in re.finditer(r"^(?:[\w -]+: )?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$", text, re.M):
            p, f, s = p + int(m[1]), f + int(m[2]), s + int(m[3] or 0)
        s += len(re.findall(r"; skipped \(", text))
    return p, f, s


def main():
    totals = [0, 0, 0]
    logs = sorted(pathlib.Path(sys.argv[1]).glob("*.log"))
    for log in logs:
        _, kind, name = log.stem.split(".", 2)
        secs = log.with_name(log.name + ".seconds")
        took = f" ({secs.read_text().strip()} s)" if secs.exists() else ""
        if kind == "none":
            print(f"  {name}: built{took}")
            continue
        p, f, s = count(kind, log.read_text(errors="replace"))
        print(f"  {name}: passed {p}, failed {f}, skipped {s}{took}")
        for k, v in enumerate((p, f, s)):
            totals[k] += v
    status = sys.argv[2] if len(sys.argv) > 2 else "0"
    if status != "0" and totals[1] == 0:
        # The run stopped at a stage that reports no count (a build, or a runner that died).
        print(f"  the run stopped early, after {logs[-1].stem.split('.', 2)[2] if logs else 'setup'} (exit status {status})")
        totals[1] = 1
    print(f"tests: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")


if __name__ == "__main__":
    main()
