#!/usr/bin/env bash
# The main job, end to end on a fresh machine: fetch the real model, build the library and its C
# examples with CMake, and run a ReAct agent driven from C (examples/c/react_agent.c). The C host is a
# household (examples/c/household.h): 6-7 places, some closed, an object hidden in one of them, the task
# "put a <object> in/on <place>". Its verbs are tools whose callbacks act on it and say whether each
# action was accepted; before every reply the host sets the admissible actions. The agent steps on
# SmolLM2-135M on the CPU and prints each Thought / Action / Observation and an honest last line:
# "task completed in N steps" or "task not completed".
#
# The base model takes only admissible (hence accepted) actions but does not solve the task: it loops.
# So the first run trains first, with the recipe of scripts/train-demo.sh: four rounds of on-device
# learning from host demonstrations on training layouts (examples/c/train_agent.c --mode demos; about
# 5 minutes on 2 cores). It saves the LoRA adapter in the cache, and later runs reuse it
# (AGENTLM_DEMO_RETRAIN=1 trains again). The layout the agent is shown
# (--layout, default 1) is one training never sees. Extra arguments go to react_agent (e.g.
# `--layout 7`, `--frame-tokens 4`); AGENTLM_DEMO_BASE=1 also runs the base model on the same layout.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
model="$(bash scripts/fetch-model.sh)"
# A release build of its own (the test command's build in build/ is a dev build with the tests).
build_dir="${AGENTLM_DEMO_BUILD_DIR:-build/release}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=release -DAGENTLM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target agentlm_react_agent agentlm_train_agent agentlm_chat
# The adapter depends on the household and the training recipe: a change to either trains again.
rounds=4
stamp="$( (cat examples/c/household.h examples/c/train_agent.c; echo "rounds $rounds") | sha256sum | cut -c1-12)"
adapter="$AGENTLM_CACHE/demo-adapter-$stamp"
if [ ! -f "$adapter/adapter_model.safetensors" ] || [ "${AGENTLM_DEMO_RETRAIN:-0}" = "1" ]; then
    echo "== training the agent on host demonstrations (first run only; saved to $adapter) =="
    rm -rf "$adapter.tmp"
    "$build_dir/examples/c/train_agent" "$model" - --rounds "$rounds" --episodes 24 --steps 20 --eval 0 --skip-base \
        --out "$adapter.tmp"
    rm -rf "$adapter" && mv "$adapter.tmp" "$adapter"
else
    echo "== using the adapter trained on host demonstrations by an earlier run ($adapter) =="
fi
if [ "${AGENTLM_DEMO_BASE:-0}" = "1" ]; then
    echo "== the base model =="
    "$build_dir/examples/c/react_agent" "$model" "$@"
fi
echo "== the trained agent =="
"$build_dir/examples/c/react_agent" "$model" --adapter "$adapter" "$@"
