#!/usr/bin/env python3
"""Writes a Llama-architecture GGUF with random weights at a real model's shape, for speed and
memory figures at scale (never for quality: the weights are noise).

  python3 scripts/make-random-llama.py OUT.gguf [--shape tinyllama|llama2-7b] [--type Q4_0|Q8_0|F16]
                                        [--seed 0]

tinyllama: TinyLlama-1.1B's shapes (22 layers, hidden 2048, FFN 5632, 32 heads, 4 KV heads, RoPE
theta 10000, 2048 positions, untied head); llama2-7b: Llama-2-7B's (32 layers, hidden 4096, FFN
11008, 32 heads, 32 KV heads, 4096 positions). Both with a SentencePiece-style 32000-token
vocabulary (`<unk>`, `<s>`, `</s>`, the 256 byte tokens, then word pieces marked with U+2581, scored
by rank), BOS added, and Llama-2's chat template. Matrices are N(0, 0.02²) quantized with gguf-py
(`--type`), norms are ones. Needs `pip install gguf numpy`.
"""
import argparse

import numpy as np
import gguf

SHAPES = {
    "tinyllama": dict(layers=22, hidden=2048, ffn=5632, heads=32, kv_heads=4, ctx=2048),
    "llama2-7b": dict(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, ctx=4096),
}
VOCAB = 32000
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


# Frequent English words and the household vocabulary of agent tasks: with every prefix in the
# vocabulary, SentencePiece-style merges reach whole words, so text takes a realistic number of tokens
# (about four characters each) instead of one token per byte.
WORDS = """the of and to a in is you that it he was for on are as with his they i at be this have from or
one had by word but not what all were we when your can said there use an each which she do how their if
will up other about out many then them these so some her would make like him into time has look two more
write go see number no way could people my than first water been call who oil its now find long down day
did get come made may part over new sound take only little work know place year live me back give most very
after thing our just name good sentence man think say great where help through much before line right too
mean old any same tell boy follow came want show also around form three small set put end does another well
large must big even such because turn here why ask went men read need land different home us move try kind
hand picture again change off play spell air away animal house point page letter mother answer found study
still learn should task interact household solve action actions available thought observation nothing
happens cabinet drawer countertop shelf table desk bed sofa armchair fridge microwave sinkbasin stoveburner
toaster coffeemachine garbagecan dresser safe laundryhamper toilet bathtubbasin towelholder handtowel knife
mug cup plate bowl pan pot apple bread egg lettuce tomato potato spoon fork spatula kettle book laptop
pencil pen cellphone creditcard keychain remotecontrol pillow cloth soapbar candle vase statue watch
box alarmclock desklamp floorlamp newspaper tissuebox sponge spraybottle glassbottle winebottle cd
clean heat cool examine inventory toggle open close you see arrive closed now hold find put two some
in/on from with first then next should will need check""".split()


def vocabulary():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    seen = set(tokens)
    pieces = ["\u2581"]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"()[]{}-_/*+=<>#%&@|~`$^\n"
    pieces += list(chars) + ["\u2581" + c for c in chars]
    for w in WORDS:
        for cap in (w, w.capitalize()):
            for n in range(2, len(cap) + 1):
                pieces += ["\u2581" + cap[:n], cap[:n]]
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    n = 2
    while len(set(pieces)) + len(tokens) < VOCAB:
        # Filler pieces of growing length from frequent letters, with and without a word start.
        for a in letters[: 8 + 2 * n]:
            for b in letters[:12]:
                for start in ("\u2581", ""):
                    pieces.append(start + a * (n // 2) + b + a[: n % 2])
        n += 1
    for p in pieces:
        if p not in seen and len(tokens) < VOCAB:
            seen.add(p)
            tokens.append(p)
            types.append(gguf.TokenType.NORMAL)
    # Longer pieces score higher, so merges prefer whole words.
    scores = [0.0] * 259 + [float(len(t)) - i * 1e-6 for i, t in enumerate(tokens[259:])]
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    ap.add_argument("--type", choices=["Q4_0", "Q8_0", "F16"], default="Q4_0")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    qtype = getattr(gguf.GGMLQuantizationType, a.type)
    rng = np.random.default_rng(a.seed)
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"random-{a.shape}")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    w.add_file_type(int(getattr(gguf.LlamaFileType, "MOSTLY_" + a.type)))
    tokens, scores, types = vocabulary()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(LLAMA2_TEMPLATE)

    def matrix(name, rows, cols):
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
        if qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    def ones(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    h, hd = s["hidden"], s["hidden"] // s["heads"]
    matrix("token_embd.weight", VOCAB, h)
    for i in range(s["layers"]):
        p = f"blk.{i}"
        ones(f"{p}.attn_norm.weight", h)
        matrix(f"{p}.attn_q.weight", s["heads"] * hd, h)
        matrix(f"{p}.attn_k.weight", s["kv_heads"] * hd, h)
        matrix(f"{p}.attn_v.weight", s["kv_heads"] * hd, h)
        matrix(f"{p}.attn_output.weight", h, s["heads"] * hd)
        ones(f"{p}.ffn_norm.weight", h)
        matrix(f"{p}.ffn_gate.weight", s["ffn"], h)
        matrix(f"{p}.ffn_up.weight", s["ffn"], h)
        matrix(f"{p}.ffn_down.weight", h, s["ffn"])
        print(f"layer {i + 1}/{s['layers']}", flush=True)
    ones("output_norm.weight", h)
    matrix("output.weight", VOCAB, h)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
