#!/usr/bin/env bash
# Regenerates every golden file the tests compare against, from the reference implementations
# (transformers, PEFT, sentencepiece, gguf-py, pinned in requirements.txt beside this script), into
# the cache: ${AGENTLM_GOLDEN:-${AGENTLM_CACHE:-~/.cache/agentlm}/golden/v1}. Prints that directory.
#
# Runs once: each file is remade only when its script, the pins, the model or its input data change
# (a stamp beside each output records them). The first run creates a virtual environment under the
# cache (torch from PyPI with its CUDA libraries: about 5.6 GB, 4 minutes to install) and takes
# 2-3 more minutes on 2 cores. Progress lines go to stderr.
#
# Outputs (names as the tests read them):
#   smollm2_gguf_info.json        gguf_info.py         every metadata key and tensor of the model
#   smollm2_hf_golden.json        hf_golden.py         transformers logits, greedy ids, tokenizer probes
#   sentencepiece_bpe/            sentencepiece_bpe.py  the Llama-2-family tokenizer probe vocabulary
#   smollm2_lora_r8/              lora_golden.py       a PEFT LoRA adapter
#   smollm2_lora_golden.json      lora_golden.py       logits and greedy ids with that adapter
#   smollm2_lora_agentinstruct_golden.json   only with AgentInstruct data ($AGENTLM_ALFWORLD, or
#                                 ../shared beside the checkout): masked losses and one AdamW step
#
#   bash scripts/golden/make.sh [--check DIR]   --check: afterwards compare every file with DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
out="${AGENTLM_GOLDEN:-$cache/golden/v1}"
venv="$cache/golden/venv"
check=""
[ "${1:-}" = "--check" ] && check="$2"

model="$(bash "$root/scripts/fetch-model.sh")"
alfworld="${AGENTLM_ALFWORLD:-}"
[ -n "$alfworld" ] || { [ -f "$root/../shared/data/agentinstruct/alfworld.jsonl" ] && alfworld="$root/../shared/data/agentinstruct/alfworld.jsonl"; } || true
if [ -n "$alfworld" ] && [ ! -f "$alfworld" ]; then
    echo "error: AGENTLM_ALFWORLD=$alfworld is not a file" >&2
    exit 1
fi

log() { echo "golden: $*" >&2; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
model_sha="$(sha256sum "$model" | cut -c1-16)"
pins="$(digest "$here/requirements.txt")"

ensure_venv() {
    [ -f "$venv/.pins" ] && [ "$(cat "$venv/.pins")" = "$pins" ] && return 0
    log "creating the reference environment in $venv (torch, transformers, PEFT, sentencepiece, gguf; ~5.6 GB, once) ..."
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --no-cache-dir --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --no-cache-dir -r "$here/requirements.txt" >&2
    echo "$pins" > "$venv/.pins"
}

# run NAME STAMP_INPUTS... -- COMMAND...: when NAME's stamp differs, runs COMMAND with every `@OUT@` in
# its arguments replaced by a fresh temporary directory, then moves what it wrote there into $out
# (whole files and directories, so an interrupted run leaves no half-written golden file).
step=0
run() {
    local name="$1"; shift
    local inputs=()
    while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
    shift
    step=$((step + 1))
    local stamp="$out/.stamp-$name" want
    want="$(digest "${inputs[@]}") $model_sha $pins"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    ensure_venv
    log "[$step] $name ..."
    local t0=$SECONDS tmp args=() a
    tmp="$(mktemp -d "$out/.tmp-$name.XXXXXX")"
    for a in "$@"; do args+=("${a//@OUT@/$tmp}"); done
    "$venv/bin/python" "${args[@]}" >&2
    for a in "$tmp"/*; do
        rm -rf "$out/$(basename "$a")"
        mv "$a" "$out/"
    done
    rm -rf "$tmp"
    echo "$want" > "$stamp"
    log "[$step] $name done in $((SECONDS - t0)) s"
}

mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
run gguf_info "$here/gguf_info.py" "$here/golden_common.py" -- "$here/gguf_info.py" --model "$model" --out-dir @OUT@
run hf_golden "$here/hf_golden.py" "$here/golden_common.py" -- "$here/hf_golden.py" --model "$model" --out-dir @OUT@
run sentencepiece_bpe "$here/sentencepiece_bpe.py" "$here/golden_common.py" -- "$here/sentencepiece_bpe.py" --out @OUT@/sentencepiece_bpe
run lora "$here/lora_golden.py" "$here/hf_from_gguf.py" "$here/golden_common.py" -- "$here/lora_golden.py" --model "$model" --out @OUT@
if [ -n "$alfworld" ]; then
    run lora_agentinstruct "$here/lora_golden.py" "$here/hf_from_gguf.py" "$here/golden_common.py" "$alfworld" \
        "$out/smollm2_lora_r8/adapter_model.safetensors" -- \
        "$here/lora_golden.py" --model "$model" --adapter "$out/smollm2_lora_r8" --alfworld "$alfworld" \
        --agentinstruct-only --out @OUT@
else
    log "no AgentInstruct data (AGENTLM_ALFWORLD unset, no ../shared): its golden file is not made and its tests skip"
fi

if [ -n "$check" ]; then
    # Floats within 1e-4: CPUs round the same f32 computation differently (docs/testing.md).
    "$venv/bin/python" "$here/compare.py" "$out" "$check" --float-tol 1e-4 --ignore README.md >&2
fi
echo "$out"
