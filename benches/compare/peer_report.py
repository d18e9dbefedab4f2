"""The JSON line every comparison runner prints (shared by the Python peers)."""
import argparse
import json
import resource


def parse_args():
    """The peers' common command line: MODEL --ids FILE [--gen-tokens N] [--threads N]."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help="JSON file with the prompt token ids")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with open(a.ids) as f:
        a.prompt_ids = json.load(f)
    return a


def rss_mib():
    """Peak resident set of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report(engine, threads, prompt_ids, gen_ids, load_s, prefill_s, decode_s, start_rss):
    """Prints the runner's result: tokens/s (the first generated token comes from the prefill
    logits, so decode covers len(gen_ids) - 1 steps), peak RSS and the generated ids."""
    print(json.dumps({
        "engine": engine,
        "threads": threads,
        "prompt_tokens": len(prompt_ids),
        "gen_tokens": len(gen_ids),
        "load_s": load_s,
        "prefill_tok_s": len(prompt_ids) / prefill_s,
        "decode_tok_s": (len(gen_ids) - 1) / decode_s,
        "peak_rss_mib": rss_mib(),
        "start_rss_mib": start_rss,
        "ids": gen_ids,
    }))
