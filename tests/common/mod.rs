//! Shared helpers for integration tests: where the real model, the golden files and the AgentInstruct
//! data are and a deterministic RNG (`src/testdata.rs`, shared with the unit tests), GPT-2's byte alphabet.
#![allow(dead_code)]

#[path = "../../src/testdata.rs"]
mod testdata;
#[allow(unused_imports)]
pub use testdata::*;

/// Parses a JSON file.
pub fn json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GPT-2's byte-to-unicode alphabet (the 256 base tokens of a byte-level BPE vocabulary).
pub fn byte_alphabet() -> Vec<String> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// Shape of a Llama checkpoint tensor from its Hugging Face name (`convert::llama_tensor_names`),
/// in PyTorch order; linears by `model::lora::linear_shape`.
pub fn llama_shape(c: &agentlm::config::LlamaConfig, name: &str) -> Vec<usize> {
    if name.contains("embed_tokens") || name.starts_with("lm_head") {
        return vec![c.vocab_size, c.hidden_size];
    }
    if name.contains("norm") {
        return vec![c.hidden_size];
    }
    let module = name.rsplit('.').nth(1).expect("a Llama weight name");
    let (out, inp) = agentlm::model::lora::linear_shape(c, module);
    vec![out, inp]
}

/// The synthetic GGUF fuzz seed (a 1-layer Llama with a tokenizer) with `llama.context_length`
/// replaced, in a temporary file.
pub fn tiny_gguf_with_context(context: u32) -> tempfile::NamedTempFile {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/gguf/tiny_llama_q4_q8_tokenizer");
    let mut bytes = std::fs::read(path).unwrap();
    let key = b"llama.context_length";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4, "a u32 value");
    bytes[at + 4..at + 8].copy_from_slice(&context.to_le_bytes());
    let f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    std::fs::write(f.path(), &bytes).unwrap();
    f
}
