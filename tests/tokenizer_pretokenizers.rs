//! Byte-level BPE pre-tokenizers selected by GGUF `tokenizer.ggml.pre`: `smollm` splits digits one by
//! one, `llama-bpe` in groups of up to three, `default` (GPT-2) keeps digit runs whole. A tiny vocabulary
//! whose merges give a different result for each split shows which one ran.

mod common;

use agentlm::tokenizer::{GgufVocab, Tokenizer};
use common::byte_alphabet;

fn tokenizer(pre: &str) -> Tokenizer {
    let mut tokens = byte_alphabet();
    let merges = ["3 4", "1 2", "12 3", "4 5"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.push("<|eot|>".into());
    let mut types = vec![1; tokens.len()];
    *types.last_mut().unwrap() = 3;
    let v = GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: Some(merges.iter().map(|s| s.to_string()).collect()),
        eos_id: Some(260),
        ..GgufVocab::default()
    };
    Tokenizer::from_gguf_vocab(&v).unwrap()
}

fn pieces(t: &Tokenizer, text: &str) -> Vec<String> {
    t.encode(text, false).unwrap().into_iter().map(|id| t.id_to_token(id).unwrap()).collect()
}

#[test]
fn digit_splitting_follows_the_pre_tokenizer() {
    assert_eq!(pieces(&tokenizer("smollm"), "12345"), ["1", "2", "3", "4", "5"]);
    assert_eq!(pieces(&tokenizer("llama-bpe"), "12345"), ["123", "45"]);
    assert_eq!(pieces(&tokenizer("default"), "12345"), ["12", "34", "5"]);
}

#[test]
fn control_tokens_and_decoding() {
    let t = tokenizer("llama-bpe");
    let ids = t.encode("a 12<|eot|>", false).unwrap();
    assert_eq!(*ids.last().unwrap(), 260);
    assert_eq!(t.decode(&ids, true).unwrap(), "a 12");
    assert_eq!(t.decode(&ids, false).unwrap(), "a 12<|eot|>");
    assert_eq!(t.eos_ids(), &[260]);
}
