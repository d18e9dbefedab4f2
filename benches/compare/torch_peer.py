"""PyTorch f32 side of the comparison (benches/compare/run.sh --torch), through transformers.

Loads the same GGUF file (transformers dequantizes it to f32), runs the same prompt ids and greedy
tokens with the KV cache, and prints one JSON object with the same fields as the other runners.
"""
import argparse
import json
import os
import resource
import time
import warnings

import torch
from transformers import AutoModelForCausalLM


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help="JSON file with the prompt token ids")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ids = json.load(open(a.ids))
    torch.set_num_threads(a.threads)
    start = rss_mib()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                                 gguf_file=os.path.basename(a.model), torch_dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t
    warnings.filterwarnings("ignore")
    with torch.inference_mode():
        x = torch.tensor([ids])
        model(input_ids=x, use_cache=True)  # warm-up: one-time kernel selection and allocations
        t = time.perf_counter()
        out = model(input_ids=x, use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        prefill_s = time.perf_counter() - t
        past = out.past_key_values
        gen = [nxt]
        t = time.perf_counter()
        for _ in range(1, a.gen_tokens):
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            gen.append(nxt)
        decode_s = time.perf_counter() - t
    print(json.dumps({
        "engine": "PyTorch f32",
        "threads": a.threads,
        "prompt_tokens": len(ids),
        "gen_tokens": a.gen_tokens,
        "load_s": load_s,
        "prefill_tok_s": len(ids) / prefill_s,
        "decode_tok_s": (a.gen_tokens - 1) / decode_s,
        "peak_rss_mib": rss_mib(),
        "start_rss_mib": start,
        "ids": gen,
    }))


if __name__ == "__main__":
    main()
