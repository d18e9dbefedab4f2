//! Hugging Face model directories (owned by the HF work).
