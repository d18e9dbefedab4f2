#!/usr/bin/env bash
# The C and C++ chat examples answer exactly like `examples/generate --chat --greedy` on the same prompt.
set -euo pipefail
generate="$1" chat_c="$2" chat_cpp="$3" model="$4"
prompt="What is the capital of France?"
want="$("$generate" --model "$model" --prompt "$prompt" --chat --greedy 2>/dev/null)"
passed=0 failed=0
for bin in "$chat_c" "$chat_cpp"; do
    got="$("$bin" "$model" "$prompt" 2>/dev/null)"
    if [ "$got" = "$want" ]; then
        echo "ok   $(basename "$bin"): $got"; passed=$((passed+1))
    else
        echo "FAIL $(basename "$bin"): got [$got], generate printed [$want]"; failed=$((failed+1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
