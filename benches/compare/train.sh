#!/usr/bin/env bash
# Side-by-side LoRA training figures: libagentlm (examples train-runner) against Hugging Face PEFT on
# transformers + torch f32 (benches/compare/train_peer.py), on the same model file, the same token
# rows (ids and loss masks written by train-runner), the same LoRA (r 8, alpha 16, every linear) and
# AdamW settings, batch 1, each row once, one fresh process per engine and sequence length. Prints a
# table: training tokens/s over the steps after the first, peak RSS, the masked loss on held-out
# rows before and after training, and the largest step-by-step gap between the engines' training losses.
#
#   bash benches/compare/train.sh [--seq "512 1024"] [--rows 8] [--eval 4] [--threads 2]
#        [--precision auto|exact|quantized] [--model FILE] [--data FILE.jsonl] [--checkpointing]
#
# --data: AgentInstruct-schema JSONL (default $AGENTLM_ALFWORLD, else ../shared/data/agentinstruct/
# alfworld.jsonl beside the repository; the AgentInstruct dataset's alfworld split, from THUDM's
# AgentInstruct release, has this schema). The peer's packages (scripts/golden/requirements.txt:
# torch, transformers, PEFT) are installed into a virtual environment under the model cache once.
#
# Never a timed test: run it by hand on an otherwise idle machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seqs="512 1024" rows=8 n_eval=4 threads=2 precision=auto model="" data="${AGENTLM_ALFWORLD:-}" ckpt=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seq) seqs="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --eval) n_eval="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --precision) precision="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --checkpointing) ckpt="--checkpointing"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$data" ] || data="$root/../shared/data/agentinstruct/alfworld.jsonl"
if [ ! -f "$data" ]; then
    echo "error: no training data at $data: pass --data FILE.jsonl or set AGENTLM_ALFWORLD (AgentInstruct's alfworld split)" >&2
    exit 1
fi

cache="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
[ -n "$model" ] || model="$(bash "$root/scripts/fetch-model.sh")"
venv="$cache/golden/venv"
if ! "$venv/bin/python" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
    echo "installing the reference packages into $venv (once; several GB) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --no-cache-dir -r "$root/scripts/golden/requirements.txt" >&2
fi

(cd "$root" && cargo build --release --quiet --example train-runner)
target="${CARGO_TARGET_DIR:-$root/target}"
runner="$target/release/examples/train-runner"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for seq in $seqs; do
    echo "sequence length $seq: libagentlm ..." >&2
    "$runner" "$model" "$data" --rows "$rows" --eval "$n_eval" --seq "$seq" --threads "$threads" --precision "$precision" \
        $ckpt --rows-out "$work/rows-$seq.jsonl" >> "$work/ours.jsonl"
    echo "sequence length $seq: PEFT ..." >&2
    "$venv/bin/python" "$here/train_peer.py" "$model" --rows "$work/rows-$seq.jsonl" --threads "$threads" $ckpt \
        2>> "$work/peer.log" >> "$work/peer.jsonl" || { cat "$work/peer.log" >&2; exit 1; }
done

python3 - "$work" "$model" "$rows" <<'PY'
import json, os, sys, platform
work, model, rows = sys.argv[1:]
ours = [json.loads(l) for l in open(os.path.join(work, "ours.jsonl"))]
peer = [json.loads(l) for l in open(os.path.join(work, "peer.jsonl"))]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"model {os.path.basename(model)}; LoRA r 8 alpha 16 on every linear, batch 1, {rows} rows each once "
      f"(tokens/s over steps 2..{rows}); {ours[0]['threads']} threads; CPU {cpu}, {os.cpu_count()} cores")
print(f"{'engine':<34} {'seq':>5} {'train tok/s':>12} {'peak RSS MiB':>13} {'held-out loss before -> after':>30}")
for o, p in zip(ours, peer):
    for r in (o, p):
        print(f"{r['engine']:<34} {o['seq']:>5} {r['train_tok_s']:>12.1f} {r['peak_rss_mib']:>13.0f} "
              f"{r['eval_loss_before']:>20.4f} -> {r['eval_loss_after']:.4f}")
    print(f"{'ratio libagentlm / PEFT':<34} {o['seq']:>5} {o['train_tok_s'] / p['train_tok_s']:>11.2f}x "
          f"{o['peak_rss_mib'] / p['peak_rss_mib']:>12.2f}x")
    gap = max(abs(a - b) / b for a, b in zip(o['losses'], p['losses']))
    print(f"{'training losses: largest gap':<34} {o['seq']:>5} {gap:>11.2%} (step by step, relative to PEFT's)")
PY
