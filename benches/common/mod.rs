//! Shared by the benches: where the real test model is.

use std::path::PathBuf;

/// The SmolLM2-135M-Instruct Q4_1 GGUF: `$AGENTLM_MODEL`, else `$AGENTLM_CACHE/<name>`, else
/// `$HOME/.cache/agentlm/<name>` (where scripts/fetch-model.sh puts it).
pub fn model_path() -> PathBuf {
    const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    if let Some(p) = std::env::var_os("AGENTLM_MODEL") {
        return p.into();
    }
    let cache = std::env::var_os("AGENTLM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentlm"));
    cache.join(NAME)
}
