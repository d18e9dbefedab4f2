"""PyTorch f32 side of the comparison (benches/compare/run.sh --torch), through transformers.

Loads the same GGUF file (transformers dequantizes it to f32), runs the same prompt ids and greedy
tokens with the KV cache, and prints one JSON object with the same fields as the other runners.
"""
import os
import time
import warnings

import torch
from transformers import AutoModelForCausalLM

from peer_report import parse_args, report, rss_mib


def main():
    a = parse_args()
    ids = a.prompt_ids
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
    report("PyTorch f32", a.threads, ids, gen, load_s, prefill_s, decode_s, start)


if __name__ == "__main__":
    main()
