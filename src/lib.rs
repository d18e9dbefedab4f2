//! # libagentlm
//!
//! An embeddable runtime that loads, runs and (later) trains Llama-family agent language models
//! (AgentLM, Agent-FLAN, SmolLM2, ...) inside host programs.
//!
//! Layers only look down: `formats` (files) → `config`/`tokenizer` → `engine` (burn) → `model` →
//! `generate` → the public API re-exported here. See `docs/architecture.md`.
// Every unsafe operation sits in an `unsafe` block, and every block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod config;
pub mod engine;
mod error;
pub mod formats;
pub mod generate;
pub mod model;
pub mod runtime;
pub mod template;
pub mod tokenizer;
pub mod train;

pub use config::LlamaConfig;
pub use engine::Backend;
pub use error::{Error, Result};
pub use formats::peft::LoraConfig;
pub use generate::{CancelToken, SamplingParams};
pub use model::Precision;
pub use runtime::{Adapter, FinishReason, GenerateParams, Generation, LoadOptions, Model, ModelFormat, Session, Step};
pub use template::{BuiltinTemplate, ChatTemplate, Message};
pub use tokenizer::{EncodeOptions, Tokenizer};
pub use train::{DataKind, TrainConfig, Trainer};
pub mod convert;
pub mod ffi;
#[cfg(test)]
mod testdata;
