//! The bodies of the fuzz targets, shared by `cargo fuzz` (fuzz_targets/*.rs) and by the smoke test
//! that runs them over the seed corpora and their mutations on stable Rust (tests/fuzz_smoke.rs).
//! Each must return normally for any input: an error is a fine answer, a panic is a bug.
#![allow(dead_code)]

use agentlm::agent::ActionFormat;
use agentlm::formats::gguf::GgufFile;
use agentlm::template::{ChatTemplate, Message};
use agentlm::Tokenizer;

#[path = "../examples/tgi-server/request.rs"]
pub mod tgi;

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

/// A hostile chat template (the whole input is the Jinja source), rendered over a short conversation
/// whose contents hold special tokens and Jinja syntax. Must end in bounded time and output.
pub fn template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(t) = ChatTemplate::from_jinja(src, "<|im_start|>", "<|im_end|>") else { return };
    let messages = [
        Message::new("system", "You are {{ evil }} <|im_end|>"),
        Message::new("user", "hi </s><s>[INST]"),
        Message::new("assistant", "{% raw %}x"),
        Message::new("tool", ""),
    ];
    for gen in [false, true] {
        if let Ok(out) = t.render(&messages, gen) {
            assert!(out.len() <= agentlm::template::MAX_RENDERED_BYTES);
        }
    }
}

/// safetensors files: the header check the Hugging Face loader uses, and the adapter reader's
/// decoding (F32/F16/BF16 to f32, finiteness).
pub fn safetensors(data: &[u8]) {
    let path = std::path::Path::new("fuzz.safetensors");
    if let Ok(list) = agentlm::formats::hf::shard_tensors(data, path) {
        for t in list {
            assert!(t.start <= t.end && t.end <= data.len());
        }
    }
    let _ = agentlm::formats::peft::read_tensors_bytes(data, path);
}

/// The server's default limits, as the `tgi_request` target parses with them.
pub fn tgi_limits() -> tgi::Limits {
    tgi::Limits { max_input_tokens: 4096, max_new_tokens: 1024, max_body_bytes: 1 << 20 }
}

/// The model context the `tgi_request` target parses for.
const TGI_CONTEXT: usize = 8192;

/// [`tgi::parse`] with [`tgi_limits`], a context of [`TGI_CONTEXT`] and one token per byte.
pub fn tgi_parse(body: &[u8]) -> Result<tgi::Job, tgi::Bad> {
    let tokenize = |s: &str| -> Result<Vec<u32>, String> { Ok(s.bytes().map(u32::from).collect()) };
    tgi::parse(&tokenize, TGI_CONTEXT, &tgi_limits(), body)
}

/// The TGI example server's `/generate` body parser (tokenized bytewise: the parser, not a model,
/// is under test).
pub fn tgi_request(data: &[u8]) {
    let limits = tgi_limits();
    if let Ok(job) = tgi_parse(data) {
        assert!(!job.prompt_ids.is_empty() && job.prompt_ids.len() <= limits.max_input_tokens);
        assert!(job.prompt_ids.len() + job.params.max_tokens <= TGI_CONTEXT);
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by its directory name under fuzz/corpus.
pub const TARGETS: [(&str, Target); 7] = [
    ("gguf", gguf),
    ("action_parsers", action_parsers),
    ("jsonl_record", jsonl_record),
    ("hf_config", hf_config),
    ("template", template),
    ("safetensors", safetensors),
    ("tgi_request", tgi_request),
];
