//! GGUF reader (owned by the GGUF work).
