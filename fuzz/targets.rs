//! The bodies of the fuzz targets, shared by `cargo fuzz` (fuzz_targets/*.rs) and by the smoke test
//! that runs them over the seed corpora and their mutations on stable Rust (tests/fuzz_smoke.rs).
//! Each must return normally for any input: an error is a fine answer, a panic is a bug.
#![allow(dead_code)]

use agentlm::agent::ActionFormat;
use agentlm::formats::gguf::GgufFile;
use agentlm::Tokenizer;

/// GGUF reader and the tokenizer built from GGUF metadata.
pub fn gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(data, "fuzz.gguf") else { return };
    let _ = file.llama_config();
    for t in file.tensors() {
        // Keep each execution short: small tensors only.
        if t.n_elements() <= 1 << 16 {
            let _ = file.tensor_f32(&t.name);
        }
    }
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        if let Ok(ids) = tok.encode("Hello <|im_start|> world", false) {
            let _ = tok.decode(&ids, false);
        }
    }
}

/// Every ReAct action format's parser on arbitrary model output.
pub fn action_parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for f in ActionFormat::ALL {
        let _ = f.parse(&text);
    }
}

/// The AgentInstruct / ShareGPT / Agent-FLAN / messages record parser on arbitrary lines.
pub fn jsonl_record(data: &[u8]) {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = agentlm::train::parse_record(line);
    }
}

/// Hugging Face `config.json` parsing.
pub fn hf_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = agentlm::formats::hf::parse_llama_config(text, std::path::Path::new("config.json"));
    }
}

/// Every target by its directory name under fuzz/corpus.
pub const TARGETS: [(&str, fn(&[u8])); 4] =
    [("gguf", gguf), ("action_parsers", action_parsers), ("jsonl_record", jsonl_record), ("hf_config", hf_config)];
