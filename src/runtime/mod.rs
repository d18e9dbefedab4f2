//! The runtime: a loaded [`Model`] (immutable, shared), [`Session`]s over it (one conversation each),
//! LoRA [`Adapter`]s, and the session byte format.
//!
//! Files only look down this list: `model.rs` (loading, the shared model), `adapter.rs` (adapters for
//! a model; merging one into it), `session.rs` (conversations; `Model::session` builds one),
//! `state.rs` (a session as bytes).

pub(crate) mod adapter;
mod model;
pub(crate) mod session;
mod state;

pub use adapter::Adapter;
pub use model::{LoadOptions, Model, ModelFormat, ProgressFn};
pub use session::{chat_tokens, FinishReason, GenerateParams, Generation, Session, Step, PREFILL_CHUNK};
