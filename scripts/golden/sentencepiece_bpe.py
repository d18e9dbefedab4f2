#!/usr/bin/env python3
"""Regenerates the golden folder sentencepiece_bpe/ (the Llama-2-family SentencePiece BPE tokenizer path) from
the SentencePiece model tokenizer.model.v1 (Mistral-7B v0.1: 32000 pieces, byte fallback, Apache-2.0) shipped
in the PyPI wheel mistral-common==1.13.1. The wheel is fetched with `pip download --no-deps` (only the one file
is read out of the zip; mistral-common is not installed) unless --wheel or --spm-model names a local copy.

Writes three files into --out DIR:
  vocab.json      the arrays a GGUF stores for tokenizer.ggml.model = "llama", as llama.cpp's converter
                  derives them from the model: tokens (id_to_piece), scores (get_score), token_type (gguf codes:
                  1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), bos/eos/unk ids,
                  add_bos_token (true, the Llama convention), add_space_prefix (the model's add_dummy_prefix,
                  observed by encoding one letter). Compact JSON, one line, UTF-8 (not ASCII-escaped).
  tokenizer.json  the Hugging Face fast-tokenizer form, built directly with the `tokenizers` library in the
                  layout of transformers' legacy slow->fast LlamaConverter (transformers 5.x itself would give a
                  Metaspace pre-tokenizer and other merge tie order, so it is not used):
                  BPE with byte_fallback and fuse_unk, vocab = the pieces in id order, merges recovered from the
                  vocabulary and ordered by piece score, ties by (left id, right id) (see spm_bpe_merges),
                  <unk>/<s>/</s> as special added tokens, normalizer Prepend("▁") + Replace(" ", "▁"), no
                  pre-tokenizer, decoder Replace/ByteFallback/Fuse/Strip(1 left), post-processor "<s> $A" /
                  "<s> $A <s> $B" (all type id 0). Saved by tokenizers (pretty, indent 2).
  golden.json     for each probe string: sentencepiece ids and pieces (encode, no BOS), hf_fast_ids (tokenizers
                  on the tokenizer.json above, no special tokens) and sentencepiece's decode of the ids.
                  indent=1, UTF-8, no trailing newline.

Needs: sentencepiece, tokenizers (pinned in scripts/golden/requirements.txt); pip for the download.
Usage: python3 scripts/golden/sentencepiece_bpe.py --out DIR (alias --out-dir)
       [--wheel mistral_common-1.13.1-py3-none-any.whl | --spm-model tokenizer.model.v1]
"""
import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

PACKAGE = "mistral-common==1.13.1"
MEMBER = "mistral_common/data/tokenizer.model.v1"
MODEL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
SOURCE = "PyPI mistral-common==1.13.1, mistral_common/data/tokenizer.model.v1 (Apache-2.0)"
REFERENCE = "sentencepiece 0.2.3 encode (no BOS); hf_fast_ids from the tokenizer.json here (tokenizers library)"
TYPE_NOTE = "gguf type codes: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte"

# Our own probe strings: Llama-2 chat markup, agent-style transcripts, digits, whitespace runs, byte fallback
# (control characters, astral-plane letters), the empty string and a lone space.
PROBES = [
    "Hello world",
    " Hello  world!\n\n",
    "The year 2024 had 366 days; 3.14159 ~ pi.",
    "naïve café — 東京 🙂",
    "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nHi [/INST]",
    "Think: I should list files.\n\nAct: bash\n\n```bash\nls -la /etc\n```",
    "    indented\tcode()\r\n",
    "THOUGHT: find the mug.\n ACTION: go to cabinet 1",
    "ACTION: put mug 1 in/on coffeemachine 1",
    "a" * 40,
    "\u0000\u0001 control chars",
    "ಠ_ಠ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
    " ",
]


def load_model_bytes(args):
    if args.spm_model:
        with open(args.spm_model, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                            PACKAGE], check=True, stdout=sys.stderr)
            wheel = glob.glob(os.path.join(tmp, "mistral_common-*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            return z.read(MEMBER)


def gguf_token_type(sp, i):
    # Same precedence as llama.cpp's convert_hf_to_gguf.py (_create_vocab_sentencepiece).
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_unused(i):
        return 5
    if sp.is_byte(i):
        return 6
    return 1


def spm_bpe_merges(vocab, scores):
    """Merges implied by a SentencePiece BPE vocabulary: every split of a piece into two pieces of the
    vocabulary, ordered by the merged piece's score (highest first), ties by the ids of (left, right). This is
    the order of the original pair scan (for every left piece, for every right piece, in id order; then a stable
    sort by score) of tokenizers' scripts/sentencepiece_extractor.py and transformers <= 4.3x
    SentencePieceExtractor; transformers 4.4x+ and 5.x order ties differently (by merged piece, or by length)."""
    merges = []
    for piece, score in scores:
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: m[:3])
    return [(left, right) for _, _, _, left, right in merges]


def build_hf_tokenizer(sp):
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(n)]
    unk, bos, eos = sp.id_to_piece(sp.unk_id()), sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())
    tok = Tokenizer(BPE(vocab, spm_bpe_merges(vocab, scores), unk_token=unk, fuse_unk=True, byte_fallback=True,
                        dropout=None))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (unk, bos, eos)])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(prepend="▁"),
                                           normalizers.Replace(pattern=" ", content="▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, sp.bos_id())])
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", "--out-dir", dest="out", required=True, help="output directory (created)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--wheel", help="a local mistral_common-1.13.1-py3-none-any.whl (default: pip download)")
    src.add_argument("--spm-model", help="a local copy of tokenizer.model.v1")
    args = ap.parse_args()

    model = load_model_bytes(args)
    digest = hashlib.sha256(model).hexdigest()
    if digest != MODEL_SHA256:
        sys.exit(f"error: tokenizer.model.v1 sha256 {digest}, expected {MODEL_SHA256}")
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    os.makedirs(args.out, exist_ok=True)

    vocab = {
        "model": "llama",
        "tokens": [sp.id_to_piece(i) for i in range(n)],
        "scores": [sp.get_score(i) for i in range(n)],
        "token_type": [gguf_token_type(sp, i) for i in range(n)],
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "unknown_token_id": sp.unk_id(),
        "add_bos_token": True,
        "add_space_prefix": sp.encode("a", out_type=str)[0].startswith("▁"),
        "note": TYPE_NOTE,
    }
    with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)

    tok_path = os.path.join(args.out, "tokenizer.json")
    build_hf_tokenizer(sp).save(tok_path, pretty=True)
    hf = Tokenizer.from_file(tok_path)

    probes = []
    for text in PROBES:
        ids = sp.encode(text)
        probes.append({
            "text": text,
            "ids": ids,
            "pieces": sp.encode(text, out_type=str),
            "hf_fast_ids": hf.encode(text, add_special_tokens=False).ids,
            "decoded": sp.decode(ids),
        })
    golden = {"source": SOURCE, "reference": REFERENCE, "vocab_size": n, "probes": probes}
    with open(os.path.join(args.out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
    mism = [p["text"] for p in probes if p["ids"] != p["hf_fast_ids"]]
    if mism:
        print(f"warning: tokenizers and sentencepiece disagree on {mism!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
