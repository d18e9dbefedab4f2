#!/usr/bin/env python3
"""The Hugging Face reference model for the golden files: SmolLM2-135M-Instruct.Q4_1.gguf dequantized to f32
and loaded as a transformers LlamaForCausalLM on CPU, with the model's own tokenizer from the GGUF metadata.

transformers' GGUF loader (from_pretrained(dir, gguf_file=name)) does the work: it dequantizes every tensor
with gguf-py (Q4_1 blocks, Q8_0 embeddings -> f32), undoes llama.cpp's q/k row permutation, builds the
LlamaConfig from the GGUF hyperparameters (tied embeddings, rope theta 100000, rms eps 1e-5) and builds the
fast tokenizer (GPT-2 byte-level BPE, no BOS added, chat template from tokenizer.chat_template).

    from hf_from_gguf import load_model, load_tokenizer
    model = load_model(path, attn_implementation="eager")   # f32, CPU, model.eval()
    tok = load_tokenizer(path)
"""
import os

# transformers' GGUF converter shows a plain tqdm bar; tqdm reads TQDM_* overrides when it is imported
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402


def _split(gguf_path):
    gguf_path = os.path.abspath(os.path.expanduser(gguf_path))
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(gguf_path)
    return os.path.dirname(gguf_path), os.path.basename(gguf_path)


def _quiet():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_model(gguf_path, attn_implementation="eager"):
    """LlamaForCausalLM with every weight dequantized to f32, on CPU, in eval mode."""
    from transformers import AutoModelForCausalLM
    _quiet()
    d, name = _split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    model.eval()
    return model


def _gguf_string(gguf_path, key):
    from gguf import GGUFReader
    field = GGUFReader(gguf_path).fields.get(key)
    return None if field is None else field.contents()


def load_tokenizer(gguf_path):
    """The model's own tokenizer (and chat template) from the GGUF metadata.

    transformers' converter gives every GGUF "gpt2" tokenizer the plain GPT-2 byte-level pre-tokenizer and
    ignores tokenizer.ggml.pre. For "smollm" (SmolLM/SmolLM2) that is wrong: their tokenizer.json, and llama.cpp's
    SMOLLM pre-tokenizer, first split off every digit (Digits(individual_digits=True)) and only then apply the
    byte-level regex. Without it " \n1" becomes 'Ġ','Ċ','1' instead of 'ĠĊ','1', and " 2" becomes 'Ġ2' instead
    of 'Ġ','2'. So for "smollm" the pre-tokenizer is set to what SmolLM2's own tokenizer.json has.
    """
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    _quiet()
    d, name = _split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    pre = _gguf_string(os.path.join(d, name), "tokenizer.ggml.pre")
    if pre == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    elif pre not in (None, "default", "gpt2"):
        raise NotImplementedError(f"tokenizer.ggml.pre = {pre!r}: its pre-tokenizer is not set up here")
    return tok
