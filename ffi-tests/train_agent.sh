#!/usr/bin/env bash
# The learning loop in miniature: one round of host demonstrations (2 episodes, at least one solved in
# its 4 replies, 2 training steps) and a held-out evaluation, then one round of self-improvement; both
# print their per-round figures and summary, and the first saves an adapter PEFT can read.
set -euo pipefail
# DATA: AgentInstruct ALFWorld JSONL, or "-" (the default) for the household episodes alone.
exe="$1" model="$2" data="${3:--}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
log="$("$exe" "$model" "$data" --rounds 1 --episodes 2 --steps 2 --eval 1 --max-steps 4 --max-tokens 768 --skip-base --out "$out/adapter")"
echo "$log"
fail=0 pass=0
want() { if grep -Eq "$1" <<<"$log"; then pass=$((pass + 1)); else echo "missing: $1"; fail=$((fail + 1)); fi; }
want "^round 1: recorded 2 episodes on training layouts, [12] successful kept"
want "^round 1: trained 2 steps, [0-9]+ tokens/s"
want "^round 1, held-out .*: success [01]/1 \([0-9]+%\), accepted actions [0-9]+/[0-9]+"
want "^== summary =="
want "^peak memory"
for f in adapter_config.json adapter_model.safetensors; do
  if [ -s "$out/adapter/$f" ]; then pass=$((pass + 1)); else echo "missing: adapter/$f"; fail=$((fail + 1)); fi
done
log="$("$exe" "$model" - --mode self --rounds 1 --episodes 1 --steps 1 --eval 1 --max-steps 3 --skip-base)"
echo "$log"
want "^learning from its own successful episodes"
want "^round 1: recorded 1 episodes on training layouts, [01] successful kept"
want "^after 1 rounds \(self\): held-out success"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
