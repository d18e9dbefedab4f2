#!/usr/bin/env bash
# The main job, end to end on a fresh machine: fetch the real model, build the library and its C
# examples with CMake, and run a ReAct agent driven from C (examples/c/react_agent.c): the C host
# implements a small household and a calculator as tools, and steps the agent on SmolLM2 with
# constrained actions (every action names a registered tool). Extra arguments go to the example
# (e.g. `--steps 12`, `--frame-tokens 4`); AGENTLM_DEMO_FREE=1 runs it unconstrained as well.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
model="$(bash scripts/fetch-model.sh)"
build_dir="${AGENTLM_CMAKE_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=release -DAGENTLM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target agentlm_react_agent agentlm_chat
"$build_dir/examples/c/react_agent" "$model" --constrained "$@"
if [ "${AGENTLM_DEMO_FREE:-0}" = "1" ]; then
    "$build_dir/examples/c/react_agent" "$model" "$@"
fi
