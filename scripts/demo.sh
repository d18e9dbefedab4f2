#!/usr/bin/env bash
# The main job, end to end on a fresh machine: fetch the real model, build, and generate a chat answer.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
model="$(bash scripts/fetch-model.sh)"
cargo run --locked --release --example generate -- \
    --model "$model" --chat --max-tokens 96 \
    --prompt "${1:-You are in a kitchen with a fridge and a countertop. How would you find an apple? Answer in two sentences.}"
