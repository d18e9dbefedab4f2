#!/usr/bin/env bash
# On-device agent learning from C (examples/c/train_agent.c) on the real model, measured by task success
# on held-out household layouts: four rounds of recording (host demonstrations by default; `--mode self`
# for self-improvement from the agent's own successful episodes), keeping the episodes with reward 1,
# LoRA training, and a greedy evaluation with admissible actions set every step. Extra arguments go to
# the example (e.g. `--out DIR` to keep the adapter, `--eval 20`, `--mode self`, `--skip-base`). About 12
# minutes on 2 cores with --skip-base: 5 of them learning, the rest the per-round evaluations.
#
# AGENTLM_ALFWORLD=FILE also mixes real AgentInstruct ALFWorld trajectories into training as general data
# (`--eta`: the share of household episodes, default 0.8). AgentInstruct cannot be redistributed: save the
# "alfworld" split of the Hugging Face dataset THUDM/AgentInstruct as JSON lines (one
# {"conversations": [...], "id": ...} object per line). Without it the demo trains on household episodes
# alone, which is how the figures in docs/agents.md were measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
data="${AGENTLM_ALFWORLD:--}"
if [ "$data" != "-" ] && [ ! -f "$data" ]; then
    echo "error: AGENTLM_ALFWORLD=$data is not a file" >&2
    exit 2
fi
model="$(bash scripts/fetch-model.sh)"
# A release build of its own (the test command's build in build/ is a dev build with the tests).
build_dir="${AGENTLM_DEMO_BUILD_DIR:-build/release}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=release -DAGENTLM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target agentlm_train_agent
"$build_dir/examples/c/train_agent" "$model" "$data" --rounds 4 --episodes 24 --steps 20 --eval 10 "$@"
