#!/usr/bin/env bash
# The second household (examples/c/cottage.c) end to end on the real model, base model: with its
# admissible actions set every step every action is accepted, and the last line is the honest result.
set -euo pipefail
bin="$1" model="$2"
passed=0 failed=0
check() { if "$@"; then passed=$((passed+1)); else echo "FAIL: $*"; failed=$((failed+1)); fi; }
out="$("$bin" "$model" --episodes 2 --steps 4 --verbose)"; echo "$out"
check grep -Eq "^cottage: success [0-2]/2, accepted actions ([0-9]+)/\1$" <<<"$(tail -n 1 <<<"$out")"
check test "$(grep -c '^episode [12]: ' <<<"$out")" = 2
check test "$(grep -c "^> " <<<"$out")" -ge 2
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
