#!/usr/bin/env bash
# The training demo in miniature (2 steps, 1 episode, 1 measurement task): it runs end to end, prints
# its summary, and saves an adapter PEFT can read.
set -euo pipefail
# DATA: AgentInstruct ALFWorld JSONL, or "-" (the default) for host-recorded episodes alone.
exe="$1" model="$2" data="${3:--}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
log="$("$exe" "$model" "$data" --steps 2 --episodes 1 --held-out 4 --measure-tasks 1 --out "$out/adapter")"
echo "$log"
fail=0
for want in "== summary ==" "held-out loss" "valid actions before:" "recorded episodes kept:" "peak memory"; do
  grep -q "$want" <<<"$log" || { echo "missing: $want"; fail=$((fail + 1)); }
done
for f in adapter_config.json adapter_model.safetensors; do
  [ -s "$out/adapter/$f" ] || { echo "missing: adapter/$f"; fail=$((fail + 1)); }
done
echo "$((5 + 2 - fail)) passed, $fail failed"
[ "$fail" -eq 0 ]
