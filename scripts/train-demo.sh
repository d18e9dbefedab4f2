#!/usr/bin/env bash
# On-device agent tuning from C (examples/c/train_agent.c) on the real model: held-out loss on real
# AgentInstruct ALFWorld trajectories and the agent's valid-action rate, before and after training a
# LoRA on recorded successful episodes plus the AgentInstruct training split. Extra arguments go to the
# example (e.g. `--steps 60`, `--episodes 24`, `--out DIR` to keep the adapter). Takes ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
# AgentInstruct cannot be redistributed, so it is not in the repository: download the "alfworld" split of
# the Hugging Face dataset THUDM/AgentInstruct (336 trajectories; save it as JSON lines, one
# {"conversations": [...], "id": ...} object per line) and point AGENTLM_ALFWORLD at it. A team checkout
# with ../shared beside it uses the copy there. Without it the demo trains on host-recorded episodes alone.
data="${AGENTLM_ALFWORLD:-../shared/data/agentinstruct/alfworld.jsonl}"
if [ ! -f "$data" ]; then
    echo "note: AgentInstruct ALFWorld data not found at $data; training on host-recorded episodes alone." >&2
    echo "      To add it: save the alfworld split of THUDM/AgentInstruct as JSON lines and set AGENTLM_ALFWORLD." >&2
    data="-"
fi
model="$(bash scripts/fetch-model.sh)"
build_dir="${AGENTLM_CMAKE_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=release -DAGENTLM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target agentlm_train_agent
"$build_dir/examples/c/train_agent" "$model" "$data" "$@"
