"""Writes the synthetic GGUF seeds of fuzz/corpus/gguf (the other seed there is the first 4 KiB of
the real test model). Needs the `gguf` and `numpy` packages (the comparison venv has both):

    python3 fuzz/make_gguf_seeds.py fuzz/corpus/gguf
"""
import os
import sys

import numpy as np
import gguf


def tiny(path, with_tokenizer, types):
    w = gguf.GGUFWriter(path, "llama")
    h, ff, layers, heads, kv, vocab = 64, 128, 1, 4, 2, 16
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if with_tokenizer:
        tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "ab", "bc", "abc", "Ġ", "Ġa",
                  "h", "e", "l", "o", "he"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
        w.add_token_merges(["a b", "b c", "ab c", "Ġ a", "h e"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    rng = np.random.default_rng(7)
    shapes = {"token_embd.weight": (vocab, h), "output_norm.weight": (h,),
              "blk.0.attn_norm.weight": (h,), "blk.0.attn_q.weight": (h, h),
              "blk.0.attn_k.weight": (kv * h // heads, h), "blk.0.attn_v.weight": (kv * h // heads, h),
              "blk.0.attn_output.weight": (h, h), "blk.0.ffn_norm.weight": (h,),
              "blk.0.ffn_gate.weight": (ff, h), "blk.0.ffn_up.weight": (ff, h), "blk.0.ffn_down.weight": (h, ff)}
    for i, (name, shape) in enumerate(shapes.items()):
        data = rng.standard_normal(shape).astype(np.float32) * 0.05
        qtype = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else types[i % len(types)]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    q = gguf.GGMLQuantizationType
    tiny(os.path.join(out, "tiny_llama_q4_q8_tokenizer"), True, [q.Q4_0, q.Q4_1, q.Q8_0, q.F16])
    tiny(os.path.join(out, "tiny_llama_f32"), False, [q.F32])


if __name__ == "__main__":
    main()
