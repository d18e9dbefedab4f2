#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/quant_reference.json: random ggml blocks and their dequantization by the
reference implementation, for the Rust dequantization test (src/formats/quant.rs).

Reference: gguf-py's `gguf.quants.dequantize` (`pip install gguf numpy`; gguf-py mirrors ggml's
dequantize_row_* formulas), and numpy's own f64 -> f32 rounding for F64, which gguf-py does not handle.
Expected values are stored as f32 bit patterns (`f32_bits`) so the test compares bit for bit and NaN/inf
survive JSON. f16 scale fields of quantized blocks are set to finite values (random bytes could be NaN/inf,
which would make whole blocks NaN and hide layout mistakes); the plain F16/BF16 cases include specials.

Run once from the repository root: python3 scripts/make_quant_fixtures.py [OUT.json]
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

rng = np.random.default_rng(1234)

# Byte offsets of the f16 scale fields inside one block, per ggml-common.h.
SCALE_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}


def block(ty):
    _, nbytes = GGML_QUANT_SIZES[ty]
    raw = bytearray(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    for p in SCALE_FIELDS[ty]:
        raw[p:p + 2] = np.asarray([rng.uniform(-0.05, 0.05)], dtype=np.float16).tobytes()
    return bytes(raw)


def case(name, type_id, raw, values):
    values = np.asarray(values, dtype=np.float32).ravel()
    return {"type": name, "type_id": int(type_id), "bytes": list(raw),
            "f32_bits": [int(v) for v in values.view(np.uint32)]}


cases = []
for ty in SCALE_FIELDS:
    raw = b"".join(block(ty) for _ in range(3))
    cases.append(case(ty.name, ty, raw, dequantize(np.frombuffer(raw, dtype=np.uint8), ty)))

specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 6.0e-8, -6.0e-8, 65504.0, 1.0e-5, 3.14159]
f16 = np.concatenate([rng.standard_normal(22), specials]).astype(np.float16)
cases.append(case("F16", T.F16, f16.tobytes(), dequantize(np.frombuffer(f16.tobytes(), dtype=np.uint8), T.F16)))

f32 = np.concatenate([rng.standard_normal(22), specials, [1e-40, 3.4e38]]).astype(np.float32)
cases.append(case("F32", T.F32, f32.tobytes(), dequantize(np.frombuffer(f32.tobytes(), dtype=np.uint8), T.F32)))

# BF16: the upper halves of f32 values (random and special), plus a subnormal pattern.
bf = np.concatenate([rng.standard_normal(22), specials, [1e-40]]).astype(np.float32)
bf16 = np.concatenate([(bf.view(np.uint32) >> 16).astype(np.uint16), np.asarray([0x0001, 0x7F7F], np.uint16)])
cases.append(case("BF16", T.BF16, bf16.tobytes(), dequantize(np.frombuffer(bf16.tobytes(), dtype=np.uint8), T.BF16)))

f64 = np.concatenate([rng.standard_normal(22), specials, [1e-50, 1e300, 0.1, 1.0 + 2.0**-30]]).astype(np.float64)
cases.append(case("F64", T.F64, f64.tobytes(), f64.astype(np.float32)))

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/gguf/quant_reference.json"
with open(out, "w") as f:
    json.dump({"generator": "scripts/make_quant_fixtures.py (gguf-py dequantize; numpy for F64)", "cases": cases}, f)
    f.write("\n")
