//! Tokenizers (owned by the tokenizer work).
