//! A [`cxx`] bridge over the libagentlm Rust API, for C++ hosts that build libagentlm from source with
//! the same Rust toolchain and want Rust types (`rust::String`, `rust::Vec`, `rust::Box`) without a C
//! layer in between.
//!
//! This is a source-level convenience and is version-locked to the `agentlm` crate it is built with:
//! it is **not** the stable ABI. Hosts that link a prebuilt library use `include/agentlm.h` or
//! `include/agentlm.hpp` instead.
//!
//! Errors cross as C++ exceptions (`rust::Error`, whose `what()` is the library's message).

#[cxx::bridge(namespace = "agentlm::bridge")]
mod ffi {
    /// One chat message.
    struct ChatMessage {
        role: String,
        content: String,
    }

    /// Generation settings (greedy when `temperature` is 0).
    struct GenerateOptions {
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        ignore_eos: bool,
        stop: Vec<String>,
    }

    /// What a generation produced.
    struct GenerateResult {
        ids: Vec<u32>,
        text: String,
        /// `eos`, `stop`, `length`, `callback`, `cancelled` or `context_full`.
        finish: String,
    }

    extern "Rust" {
        /// A loaded model (shareable across threads).
        type Model;
        /// One conversation.
        type Session;

        /// Loads a GGUF file or Hugging Face directory on the CPU.
        fn load_model(path: &str) -> Result<Box<Model>>;
        fn vocab_size(self: &Model) -> usize;
        fn context_length(self: &Model) -> usize;
        fn tokenize(self: &Model, text: &str, parse_special: bool) -> Result<Vec<u32>>;
        fn detokenize(self: &Model, ids: &[u32]) -> Result<String>;
        fn apply_chat_template(self: &Model, messages: &Vec<ChatMessage>) -> Result<String>;
        fn new_session(self: &Model, capacity: usize) -> Box<Session>;

        fn append_text(self: &mut Session, text: &str) -> Result<()>;
        fn append_untrusted_text(self: &mut Session, text: &str) -> Result<()>;
        /// Brings the session to the whole conversation rendered with the model's template, message
        /// contents as plain text (never control tokens), the matching history kept.
        fn sync_chat(self: &mut Session, messages: &Vec<ChatMessage>) -> Result<()>;
        fn tokens(self: &Session) -> Vec<u32>;
        fn reset(self: &mut Session);
        fn fork(self: &Session) -> Box<Session>;
        fn generate(self: &mut Session, options: &GenerateOptions) -> Result<GenerateResult>;
        fn default_generate_options() -> GenerateOptions;
    }
}

use std::ops::ControlFlow;

use agentlm::{FinishReason, GenerateParams, LoadOptions, Message, SamplingParams};

/// See the bridge declaration.
pub struct Model(agentlm::Model);
/// See the bridge declaration.
pub struct Session(agentlm::Session);

fn load_model(path: &str) -> agentlm::Result<Box<Model>> {
    Ok(Box::new(Model(agentlm::Model::load(path, &LoadOptions::default())?)))
}

impl Model {
    fn vocab_size(&self) -> usize {
        self.0.config().vocab_size
    }
    fn context_length(&self) -> usize {
        self.0.context_length()
    }
    fn tokenize(&self, text: &str, parse_special: bool) -> agentlm::Result<Vec<u32>> {
        let t = self.0.tokenizer();
        Ok(if parse_special { t.encode(text, false)? } else { t.encode_plain(text)? })
    }
    fn detokenize(&self, ids: &[u32]) -> agentlm::Result<String> {
        Ok(self.0.tokenizer().decode(ids, true)?)
    }
    // `&Vec`: the bridge's signature for a `rust::Vec` argument (cxx has no slice of shared structs).
    #[allow(clippy::ptr_arg)]
    fn apply_chat_template(&self, messages: &Vec<ffi::ChatMessage>) -> agentlm::Result<String> {
        let m: Vec<Message> = messages.iter().map(|m| Message::new(m.role.as_str(), m.content.as_str())).collect();
        self.0.apply_chat_template(&m)
    }
    fn new_session(&self, capacity: usize) -> Box<Session> {
        Box::new(Session(self.0.session((capacity > 0).then_some(capacity))))
    }
}

impl Session {
    fn append_text(&mut self, text: &str) -> agentlm::Result<()> {
        self.0.append_text(text)
    }
    fn append_untrusted_text(&mut self, text: &str) -> agentlm::Result<()> {
        self.0.append_untrusted_text(text)
    }
    // `&Vec`: as in `apply_chat_template`.
    #[allow(clippy::ptr_arg)]
    fn sync_chat(&mut self, messages: &Vec<ffi::ChatMessage>) -> agentlm::Result<()> {
        let m: Vec<Message> = messages.iter().map(|m| Message::new(m.role.as_str(), m.content.as_str())).collect();
        let model = self.0.model().clone();
        let t = model.chat_template().ok_or_else(|| agentlm::Error::InvalidArgument("the model has no chat template".into()))?;
        self.0.sync_chat(t, &m, true)
    }
    fn tokens(&self) -> Vec<u32> {
        self.0.tokens().to_vec()
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn fork(&self) -> Box<Session> {
        Box::new(Session(self.0.fork()))
    }
    fn generate(&mut self, o: &ffi::GenerateOptions) -> agentlm::Result<ffi::GenerateResult> {
        let params = GenerateParams {
            sampling: SamplingParams { temperature: o.temperature, top_k: o.top_k, top_p: o.top_p, seed: o.seed, ..SamplingParams::greedy() },
            max_tokens: o.max_tokens,
            stop: o.stop.clone(),
            ignore_eos: o.ignore_eos,
        };
        let g = self.0.generate(&params, |_| ControlFlow::Continue(()))?;
        let finish = match g.finish {
            FinishReason::Eos => "eos",
            FinishReason::Stop(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::Callback => "callback",
            FinishReason::Cancelled => "cancelled",
            FinishReason::ContextFull => "context_full",
        };
        Ok(ffi::GenerateResult { ids: g.ids, text: g.text, finish: finish.into() })
    }
}

fn default_generate_options() -> ffi::GenerateOptions {
    let s = SamplingParams::greedy();
    ffi::GenerateOptions { max_tokens: 256, temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, seed: s.seed, ignore_eos: false, stop: Vec::new() }
}

#[cfg(test)]
mod tests {
    //! Runs the C++ test in `tests/bridge_test.cc` (compiled by build.rs) against the real model.

    #[cxx::bridge(namespace = "agentlm::bridge_test")]
    mod cpp {
        unsafe extern "C++" {
            include!("agentlm-cxx/tests/bridge_test.h");
            /// Returns the number of failed checks (and prints "N passed, N failed").
            fn run_bridge_test(model_path: &str) -> i32;
        }
    }

    #[test]
    fn cpp_drives_the_rust_api_through_the_bridge() {
        let model = std::env::var("AGENTLM_MODEL").expect("AGENTLM_MODEL (scripts/fetch-model.sh prints it)");
        assert_eq!(cpp::run_bridge_test(&model), 0, "C++ bridge test failed (see stderr)");
    }
}
