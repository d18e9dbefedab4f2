//! Shared helpers for integration tests: where the real model and the shared reference data are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The SmolLM2-135M-Instruct Q4_1 GGUF: `$AGENTLM_MODEL`, else `$AGENTLM_CACHE/<name>`, else
/// `$HOME/.cache/agentlm/<name>`. Panics with a hint when absent (CI fetches it first).
pub fn model_path() -> PathBuf {
    const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let p = if let Some(p) = std::env::var_os("AGENTLM_MODEL") {
        PathBuf::from(p)
    } else if let Some(c) = std::env::var_os("AGENTLM_CACHE") {
        PathBuf::from(c).join(NAME)
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentlm").join(NAME)
    };
    assert!(p.is_file(), "test model not found at {}: run scripts/fetch-model.sh", p.display());
    p
}

/// A file under the shared reference data directory (`../shared` beside the repository).
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")).join(rel)
}

/// Parses a JSON file.
pub fn json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
