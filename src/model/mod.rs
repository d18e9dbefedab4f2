//! The Llama model.
