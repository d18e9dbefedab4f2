#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/quant_reference.json: random ggml blocks and their dequantization by the
reference implementation (gguf-py, `pip install gguf numpy`), for the Rust dequantization tests.
Scales are kept finite and small so the comparison is about the bit layout, not f16 overflow."""
import json, sys
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from gguf.constants import GGML_QUANT_SIZES

rng = np.random.default_rng(1234)

def f16_bytes(vals):
    return np.asarray(vals, dtype=np.float16).tobytes()

def block(ty):
    bs, nbytes = GGML_QUANT_SIZES[ty]
    raw = bytearray(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    # Replace the f16 scale fields with sane values (random bytes could be NaN/inf).
    scale_pos = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
                 T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}.get(ty, [])
    for p in scale_pos:
        raw[p:p + 2] = f16_bytes([rng.uniform(-0.05, 0.05)])
    return bytes(raw)

cases = []
for ty in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]:
    raw = b"".join(block(ty) for _ in range(2))
    vals = dequantize(np.frombuffer(raw, dtype=np.uint8), ty).astype(np.float32).ravel()
    cases.append({"type": ty.name, "type_id": int(ty), "bytes": list(raw), "values": [float(v) for v in vals]})
for ty, dt in [(T.F16, np.float16), (T.F32, np.float32)]:
    arr = rng.standard_normal(16).astype(dt)
    raw = arr.tobytes()
    vals = dequantize(np.frombuffer(raw, dtype=np.uint8), ty).astype(np.float32).ravel()
    cases.append({"type": ty.name, "type_id": int(ty), "bytes": list(raw), "values": [float(v) for v in vals]})
# BF16: the upper halves of f32 values.
f = rng.standard_normal(16).astype(np.float32)
raw = (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
vals = dequantize(np.frombuffer(raw, dtype=np.uint8), T.BF16).astype(np.float32).ravel()
cases.append({"type": "BF16", "type_id": int(T.BF16), "bytes": list(raw), "values": [float(v) for v in vals]})

json.dump({"generator": "scripts/make_quant_fixtures.py (gguf-py dequantize)", "cases": cases},
          open(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/gguf/quant_reference.json", "w"))
