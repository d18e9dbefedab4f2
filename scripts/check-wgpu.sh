#!/usr/bin/env bash
# Checks the wgpu backend end to end: builds the examples with `--features wgpu`, runs them with
# `--backend wgpu` (on Mesa's lavapipe software Vulkan when no GPU is present) and compares greedy
# output and a LoRA training step with the CPU backend's. Prints "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
# Its own target dir: the wgpu build is large and must not hold the main build directory's lock.
export CARGO_TARGET_DIR="${AGENTLM_WGPU_TARGET_DIR:-$AGENTLM_CACHE/target-wgpu}"
model="${AGENTLM_MODEL:-$(bash scripts/fetch-model.sh)}"

if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi

cargo build --locked --release --features wgpu --example generate --example train_step --example convert
bin="$CARGO_TARGET_DIR/release/examples/generate"
passed=0 failed=0
check() {
    local name="$1"; shift
    local cpu gpu
    cpu="$("$bin" --model "$model" --greedy --max-tokens 32 --ignore-eos --json --backend cpu "$@")"
    gpu="$("$bin" --model "$model" --greedy --max-tokens 32 --ignore-eos --json --backend wgpu "$@")"
    if python3 - "$cpu" "$gpu" <<'PY'
import json, sys
cpu, gpu = (json.loads(s) for s in sys.argv[1:3])
assert gpu["backend"] == "wgpu", gpu["backend"]
assert cpu["prompt_ids"] == gpu["prompt_ids"]
same = sum(1 for a, b in zip(cpu["ids"], gpu["ids"]) if a == b)
print(f"  cpu decode {cpu['decode_tokens_per_s']:.1f} tok/s, wgpu decode {gpu['decode_tokens_per_s']:.1f} tok/s, "
      f"identical tokens {same}/{len(cpu['ids'])}")
sys.exit(0 if cpu["ids"] == gpu["ids"] else 1)
PY
    then echo "ok   wgpu greedy == cpu greedy: $name"; passed=$((passed+1))
    else echo "FAIL wgpu greedy != cpu greedy: $name"; failed=$((failed+1)); fi
}
check story --prompt "Once upon a time, in a small village nestled between two mountains, there lived a"
check chat --chat --prompt "What is the capital of France? Answer in one sentence."
# Training: one LoRA step on a 2-layer cut of the real model (lavapipe is far too slow for all 30),
# loss, gradient norm and loss after the step within 1e-3 relative of the CPU's.
tiny="$(mktemp -d)"
trap 'rm -rf "$tiny"' EXIT
"$CARGO_TARGET_DIR/release/examples/convert" "$model" "$tiny/m" --layers 2 >/dev/null
step="$CARGO_TARGET_DIR/release/examples/train_step"
cpu="$("$step" "$tiny/m" --backend cpu --max-tokens 96)"
gpu="$("$step" "$tiny/m" --backend wgpu --max-tokens 96)"
if python3 - "$cpu" "$gpu" <<'PY'
import json, sys
cpu, gpu = (json.loads(s) for s in sys.argv[1:3])
assert gpu["backend"] == "wgpu", gpu["backend"]
rel = {k: abs(cpu[k] - gpu[k]) / abs(cpu[k]) for k in ("loss", "grad_norm", "loss_after")}
print(f"  cpu {cpu}\n  wgpu {gpu}\n  relative differences {rel}")
sys.exit(0 if max(rel.values()) < 1e-3 and gpu["loss_after"] < gpu["loss"] else 1)
PY
then echo "ok   wgpu LoRA training step == cpu"; passed=$((passed+1))
else echo "FAIL wgpu LoRA training step != cpu"; failed=$((failed+1)); fi
echo "wgpu: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
