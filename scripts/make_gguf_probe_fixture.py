#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/smollm2_probe.json: a few dequantized rows and per-tensor sums of the real test
model (SmolLM2-135M-Instruct.Q4_1.gguf, see scripts/fetch-model.sh), computed by the reference reader
gguf-py (`pip install gguf numpy`: GGUFReader + gguf.quants.dequantize). The Rust test
(src/formats/gguf/tests.rs) checks the crate's reader end to end against it: offsets, types, shapes and
dequantization. Rows are stored as f32 bit patterns (compared exactly); sums in f64 (compared loosely, the
summation order differs).

Run once from the repository root: python3 scripts/make_gguf_probe_fixture.py MODEL.gguf [OUT.json]
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

model = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/gguf/smollm2_probe.json"
reader = GGUFReader(model)

# (tensor name, row indices in PyTorch order) for every tensor type in the file.
PROBES = {
    "token_embd.weight": [0, 1, 1000, 49151],      # Q8_0
    "blk.0.attn_q.weight": [0, 5, 575],            # Q4_1
    "blk.29.ffn_down.weight": [0, 300],            # Q4_1
    "blk.0.attn_norm.weight": None,                # F32, 1-D: whole tensor
    "output_norm.weight": None,                    # F32
}

tensors = {t.name: t for t in reader.tensors}
probes = []
for name, rows in PROBES.items():
    t = tensors[name]
    shape = [int(d) for d in reversed(t.shape.tolist())]
    values = dequantize(t.data.reshape(-1), t.tensor_type).astype(np.float32).reshape(shape)
    entry = {"name": name, "type": t.tensor_type.name, "shape": shape,
             "sum": float(values.astype(np.float64).sum()),
             "sum_sq": float((values.astype(np.float64) ** 2).sum())}
    if rows is None:
        entry["rows"] = [{"index": None, "f32_bits": [int(v) for v in values.view(np.uint32)]}]
    else:
        entry["rows"] = [{"index": r, "f32_bits": [int(v) for v in values[r].view(np.uint32)]} for r in rows]
    probes.append(entry)

with open(out, "w") as f:
    json.dump({"generator": "scripts/make_gguf_probe_fixture.py (gguf-py GGUFReader + dequantize)",
               "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "probes": probes}, f)
    f.write("\n")
