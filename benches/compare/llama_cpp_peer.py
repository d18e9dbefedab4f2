"""llama.cpp side of the comparison (benches/compare/run.sh), through llama-cpp-python.

Runs the same prompt ids as the Rust runner (read from a JSON file), then greedy tokens, and prints
one JSON object with the same fields: prefill and decode tokens/s, peak resident set, generated ids.
"""
import time

import numpy as np
import llama_cpp

from llama_cpp_plain import load_llama
from peer_report import parse_args, report, rss_mib


def main():
    a = parse_args()
    ids = a.prompt_ids
    start = rss_mib()
    kwargs = dict(model_path=a.model, n_ctx=len(ids) + a.gen_tokens + 8, n_batch=512, n_threads=a.threads,
                  n_threads_batch=a.threads, verbose=False)
    t = time.perf_counter()
    # Plain CPU buffers (the AMX/extra buffer types path crashes on some CPUs): see llama_cpp_plain.py.
    llm = load_llama(**kwargs)
    load_s = time.perf_counter() - t

    n_vocab = llm.n_vocab()

    def last_logits():
        # The logits of the batch's last token, straight from the context (eval() requests them).
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))

    llm.eval(ids)  # warm-up (as the other runners): first-call allocations
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    nxt = int(np.argmax(last_logits()))
    prefill_s = time.perf_counter() - t
    out = [nxt]
    t = time.perf_counter()
    for _ in range(1, a.gen_tokens):
        llm.eval([nxt])
        nxt = int(np.argmax(last_logits()))
        out.append(nxt)
    decode_s = time.perf_counter() - t
    report("llama.cpp", a.threads, ids, out, load_s, prefill_s, decode_s, start)


if __name__ == "__main__":
    main()
