#!/usr/bin/env bash
# Side-by-side CPU figures: libagentlm vs llama.cpp (llama-cpp-python, built from source) on the same
# GGUF file, prompt ids and token counts. Runs alternate between the engines, each run in a fresh
# process; medians of N runs after one warm-up run each. Prints a table and the ratios.
#
#   bash benches/compare/run.sh [--runs 5] [--prompt-tokens 128] [--gen-tokens 128] [--threads 2]
#                               [--precision auto|exact|quantized] [--model FILE] [--torch]
#
# --torch also runs PyTorch f32 (transformers, the GGUF dequantized to f32); it installs torch,
# transformers, gguf and accelerate into the same virtual environment (several GB) on first use.
# Each runner does one discarded prefill of the prompt before timing (PyTorch selects its kernels then).
#
# Never a timed test: run it by hand or in a benchmark job, on an otherwise idle machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs=5 prompt=128 gen=128 threads=2 precision=auto model="" with_torch=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --prompt-tokens) prompt="$2"; shift 2 ;;
        --gen-tokens) gen="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --precision) precision="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --torch) with_torch=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cache="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
[ -n "$model" ] || model="$(bash "$root/scripts/fetch-model.sh")"
venv="$cache/compare-venv"
if ! "$venv/bin/python" -c "import llama_cpp; assert llama_cpp.__version__ == '0.3.36'" 2>/dev/null; then
    echo "building llama-cpp-python 0.3.36 from source into $venv (once; takes a while) ..." >&2
    python3 -m venv "$venv"
    CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install --quiet --no-binary llama-cpp-python llama-cpp-python==0.3.36 numpy >&2
fi

if [ $with_torch = 1 ] && ! "$venv/bin/python" -c "import torch, transformers, gguf, accelerate" 2>/dev/null; then
    echo "installing torch, transformers, gguf and accelerate into $venv (once) ..." >&2
    "$venv/bin/pip" install --quiet torch transformers gguf accelerate >&2
fi

(cd "$root" && cargo build --release --quiet --example compare-runner)
target="${CARGO_TARGET_DIR:-$root/target}"
runner="$target/release/examples/compare-runner"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ours() { "$runner" "$model" --prompt-tokens "$prompt" --gen-tokens "$gen" --threads "$threads" --precision "$precision" --ids-out "$work/ids.json"; }
peer() { "$venv/bin/python" "$here/llama_cpp_peer.py" "$model" --ids "$work/ids.json" --gen-tokens "$gen" --threads "$threads"; }
torch_peer() { "$venv/bin/python" "$here/torch_peer.py" "$model" --ids "$work/ids.json" --gen-tokens "$gen" --threads "$threads" 2>/dev/null; }

echo "warm-up ..." >&2
ours > /dev/null
peer > /dev/null
[ $with_torch = 0 ] || torch_peer > /dev/null
for i in $(seq 1 "$runs"); do
    echo "run $i of $runs ..." >&2
    ours >> "$work/ours.jsonl"
    peer >> "$work/peer.jsonl"
    [ $with_torch = 0 ] || torch_peer >> "$work/torch.jsonl"
done

python3 - "$work" "$model" <<'PY'
import json, os, statistics, sys, platform
work, model = sys.argv[1:]
def load(name):
    p = os.path.join(work, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
engines = [("libagentlm", load("ours.jsonl")), ("llama.cpp", load("peer.jsonl")), ("PyTorch f32", load("torch.jsonl"))]
engines = [(n, r) for n, r in engines if r]
med = lambda rs, k: statistics.median(r[k] for r in rs)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
o = engines[0][1][0]
print(f"model {os.path.basename(model)}; prompt {o['prompt_tokens']} tokens, {o['gen_tokens']} greedy tokens; "
      f"{o['threads']} threads; {len(engines[0][1])} runs each (medians); CPU {cpu}, {os.cpu_count()} cores")
print(f"{'engine':<14} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MiB':>13} {'RSS - start':>12}")
for name, rs in engines:
    extra = f" ({rs[0]['precision']})" if 'precision' in rs[0] else ""
    print(f"{name:<14} {med(rs,'prefill_tok_s'):>14.1f} {med(rs,'decode_tok_s'):>13.1f} {med(rs,'peak_rss_mib'):>13.1f} "
          f"{med(rs,'peak_rss_mib') - med(rs,'start_rss_mib'):>12.1f}{extra}")
ours = engines[0][1]
for name, rs in engines[1:]:
    print(f"ratio libagentlm / {name}: prefill {med(ours,'prefill_tok_s')/med(rs,'prefill_tok_s'):.2f}x, "
          f"decode {med(ours,'decode_tok_s')/med(rs,'decode_tok_s'):.2f}x, "
          f"peak RSS {med(ours,'peak_rss_mib')/med(rs,'peak_rss_mib'):.2f}x")
    a, b = ours[0]["ids"], rs[0]["ids"]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"greedy tokens identical to {name}: first {same} of {len(a)}")
PY
