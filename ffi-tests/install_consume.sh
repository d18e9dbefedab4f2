#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds and runs examples/cmake-consumer against it
# with find_package (shared and static) and with pkg-config.
set -euo pipefail
build="$1" src="$2" model="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() { if "$@"; then passed=$((passed+1)); else echo "FAIL: $*"; failed=$((failed+1)); fi; }

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
lib="$(ls -d "$tmp"/prefix/lib*/ | head -n1)"
check test -f "$tmp/prefix/include/agentlm.h"
check test -f "$tmp/prefix/include/agentlm.hpp"
check test -L "$lib/libagentlm.so"
check test -f "$lib/libagentlm.a"
soname="$(readelf -d "$lib/libagentlm.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')"
check test "$soname" = "libagentlm.so.0"
check test -L "$lib/$soname"

cmake -S "$src/examples/cmake-consumer" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
out="$("$tmp/build/consumer" "$model")"; echo "$out"
check grep -q "Paris" <<<"$out"
out="$("$tmp/build/consumer_static" "$model")"
check grep -q "Paris" <<<"$out"
check bash -c "! ldd '$tmp/build/consumer_static' | grep -q libagentlm"

if command -v pkg-config >/dev/null; then
    export PKG_CONFIG_PATH="$lib/pkgconfig"
    # shellcheck disable=SC2046
    cc -o "$tmp/pc_consumer" "$src/examples/cmake-consumer/main.c" $(pkg-config --cflags --libs agentlm) -Wl,-rpath,"$lib"
    out="$("$tmp/pc_consumer" "$model")"
    check grep -q "Paris" <<<"$out"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
