"""PEFT side of the training comparison (benches/compare/train.sh): LoRA with Hugging Face PEFT on
transformers + torch (f32; transformers dequantizes the same GGUF file), on the rows train-runner
wrote (the same token ids and loss masks), batch 1, each training row once, the same LoRA and AdamW
settings; then the mean masked loss on the evaluation rows. Prints one JSON object with the fields of
train-runner's.
"""
import argparse
import json
import os
import sys
import time
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from peer_report import rss_mib

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def masked_loss(model, ids, mask):
    x = torch.tensor([ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
    return model(input_ids=x, labels=labels).loss, sum(mask[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rows", required=True, help="JSONL written by train-runner --rows-out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = [json.loads(l) for l in open(a.rows)]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                                 gguf_file=os.path.basename(a.model), torch_dtype=torch.float32)
    load_s = time.perf_counter() - t
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    if a.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    def held_out():
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for r in evals:
                loss, k = masked_loss(model, r["ids"], r["mask"])
                total += float(loss) * k
                n += k
        model.train()
        return total / n

    eval_before = held_out()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    rss_before = rss_mib()
    tokens, secs, losses = 0, 0.0, []
    for step, r in enumerate(train):
        t = time.perf_counter()
        loss, _ = masked_loss(model, r["ids"], r["mask"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        if step > 0:
            tokens += len(r["ids"])
            secs += dt
        losses.append(float(loss))
        print(f"step {step + 1}: loss {float(loss):.4f}, {len(r['ids'])} tokens, {len(r['ids']) / dt:.0f} tokens/s, "
              f"peak {rss_mib():.0f} MiB", file=sys.stderr)
    eval_after = held_out()
    print(json.dumps({
        "engine": f"PEFT (torch {torch.__version__.split('+')[0]} f32)",
        "threads": a.threads,
        "seq": max(len(r["ids"]) for r in train),
        "rows": len(train),
        "load_s": load_s,
        "train_tok_s": tokens / secs,
        "peak_rss_mib": rss_mib(),
        "peak_rss_before_training_mib": rss_before,
        "losses": losses,
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
    }))


if __name__ == "__main__":
    main()
