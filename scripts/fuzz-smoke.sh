#!/usr/bin/env bash
# Short libFuzzer run of every fuzz target (cargo fuzz; needs a nightly toolchain). Where there is no
# nightly toolchain it says so and exits 0: the stable smoke test (tests/fuzz_smoke.rs, run by
# `cargo test`) still runs every target's body on its seeds and their mutations.
#   bash scripts/fuzz-smoke.sh [SECONDS per target, default 15]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-15}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz smoke: no nightly toolchain; skipped (tests/fuzz_smoke.rs covers the targets on stable)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
# The fuzz build has its own flags (sanitizers, coverage): keep it beside the main target dir.
target="${CARGO_TARGET_DIR:-target}/../fuzz-target"
cargo +nightly fuzz build -O --target-dir "$target"
passed=0
failed=0
for t in $(cargo +nightly fuzz list); do
    work="$(mktemp -d)"
    if cargo +nightly fuzz run -O --target-dir "$target" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 >"$work.log" 2>&1; then
        runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' || echo '?')"
        echo "fuzz $t: ok ($runs runs in ${secs} s)"
        passed=$((passed + 1))
    else
        echo "fuzz $t: FAILED"
        tail -n 40 "$work.log"
        failed=$((failed + 1))
    fi
    rm -rf "$work" "$work.log"
done
echo "fuzz smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
