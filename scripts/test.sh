#!/usr/bin/env bash
# Runs every test: fetches the real test model if needed, then the Rust unit, integration and example
# tests on the CPU backend. Set AGENTLM_TEST_WGPU=1 to also check the wgpu backend (needs Vulkan, e.g.
# Debian's mesa-vulkan-drivers; the wgpu build adds ~25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
# One persistent target dir outside the clone, so warm runs only rebuild this crate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
export AGENTLM_MODEL="${AGENTLM_MODEL:-$(bash scripts/fetch-model.sh)}"

# The CLI tests run the generate example as a program: build it first.
cargo build --locked --examples
cargo test --locked --all-targets
cargo test --locked --doc
# The cxx bridge crate: its test is C++ driving the Rust API.
cargo test --locked -p agentlm-cxx

# The Go binding, linked against the library cargo just built (go vet, go test on the real model, the
# Go example). CGO_LDFLAGS is how a Go program finds the library; see bindings/go/README.md.
lib_dir="$CARGO_TARGET_DIR/debug"
export CGO_LDFLAGS="-L$lib_dir -Wl,-rpath,$lib_dir ${CGO_LDFLAGS:-}"
(cd bindings/go && go vet ./... && go test -count=1 ./...)
(cd examples/go && go vet ./... && go run . -steps 2 "$AGENTLM_MODEL")

# The Swift binding's C module through its module map (no Swift toolchain here: see bindings/swift).
bash scripts/check-swift-module.sh

# The C ABI: C and C++ tests (plain, AddressSanitizer+UBSan, valgrind), header checks, examples,
# install-and-consume. The dev profile is optimised and shares the dependencies built above.
build_dir="${AGENTLM_CMAKE_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=dev -DAGENTLM_TEST_MODEL="$AGENTLM_MODEL" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
# Two at a time: the valgrind runs are single-threaded (fixtures order the setup steps).
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)"

# A short libFuzzer run of every fuzz target (skipped with a notice where there is no nightly toolchain).
bash scripts/fuzz-smoke.sh 15

if [ "${AGENTLM_TEST_WGPU:-0}" = "1" ]; then
    bash scripts/check-wgpu.sh
fi
