#!/usr/bin/env bash
# The C ReAct example end to end on the real model: constrained (every reply a registered tool's
# action, also with a 4-token frame budget) and free (runs to the step limit).
set -euo pipefail
bin="$1" model="$2"
passed=0 failed=0
check() { if "$@"; then passed=$((passed+1)); else echo "FAIL: $*"; failed=$((failed+1)); fi; }
valid_all() { grep -Eq "^valid actions: ([0-9]+) of \1 replies" <<<"$1"; }

out="$("$bin" "$model" --constrained --steps 6)"; echo "$out"
check valid_all "$out"
check grep -q "^Action: " <<<"$out"
framed="$("$bin" "$model" --constrained --steps 6 --frame-tokens 4)"
check valid_all "$framed"
# Frame budgets change nothing but the number of calls.
check test "$(grep -v '^valid actions' <<<"$out")" = "$(grep -v '^valid actions' <<<"$framed")"
free="$("$bin" "$model" --steps 4)"; echo "$free"
check grep -Eq "^valid actions: [0-9]+ of 4 replies" <<<"$free"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
