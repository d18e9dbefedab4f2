#!/usr/bin/env bash
# The main job, end to end on a fresh machine: fetch the real model, build the library and its C
# examples with CMake, and have a C host (examples/c/chat.c) stream a chat answer through the C API.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
model="$(bash scripts/fetch-model.sh)"
build_dir="${AGENTLM_CMAKE_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=release -DAGENTLM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target agentlm_chat
"$build_dir/examples/c/chat" "$model" \
    "${1:-You are in a kitchen with a fridge and a countertop. How would you find an apple? Answer in two sentences.}" 96
