#!/usr/bin/env bash
# The C ReAct example end to end on the real model: with the household's admissible actions set every
# step, every action is one the household accepts (also with a 4-token frame budget, which changes
# nothing but the number of calls); free, it runs to its end; each run ends with its honest outcome.
set -euo pipefail
bin="$1" model="$2"
passed=0 failed=0
check() { if "$@"; then passed=$((passed+1)); else echo "FAIL: $*"; failed=$((failed+1)); fi; }
outcome() { tail -n 1 <<<"$1" | grep -Eq "^task (completed in [0-9]+ steps|not completed \([0-9]+ steps\)); ([0-9]+) of [0-9]+ actions accepted"; }
all_accepted() { tail -n 1 <<<"$1" | grep -Eq "; ([0-9]+) of \1 actions accepted"; }

out="$("$bin" "$model" --steps 6)"; echo "$out"
check outcome "$out"
check all_accepted "$out"
check grep -q "^Action: " <<<"$out"
check test "$(grep -c '^Invalid reply' <<<"$out")" = 0
framed="$("$bin" "$model" --steps 6 --frame-tokens 4)"
check outcome "$framed"
check test "$(sed '$d' <<<"$out")" = "$(sed '$d' <<<"$framed")"
free="$("$bin" "$model" --steps 4 --free)"; echo "$free"
check outcome "$free"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
