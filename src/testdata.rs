//! Where tests find their data: the real model, the golden reference files and the AgentInstruct
//! trajectories. Used by the library's unit tests and, through `#[path]`, by the integration tests
//! (`tests/common`), so both read the same places.
//!
//! - The model: `$AGENTLM_MODEL`, else `$AGENTLM_CACHE/<name>`, else `~/.cache/agentlm/<name>`
//!   (`scripts/fetch-model.sh` puts it there).
//! - Golden files: `$AGENTLM_GOLDEN`, else `<cache>/golden/v1`, regenerated from the reference
//!   implementations (transformers, PEFT, sentencepiece, gguf-py) by `scripts/golden/make.sh`;
//!   `scripts/test.sh` runs it first.
//! - AgentInstruct ALFWorld (not redistributable): `$AGENTLM_ALFWORLD`, else
//!   `../shared/data/agentinstruct/alfworld.jsonl` beside the repository where a team has it. Tests that
//!   need it and find none print `SKIPPED: <reason>` and return; `scripts/test.sh` counts those lines.
//!
//! It also holds [`Rng`], the deterministic generator property tests on both sides share.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// The file name of the real test model.
pub const MODEL_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn cache_dir() -> PathBuf {
    match std::env::var_os("AGENTLM_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentlm"),
    }
}

/// Where the SmolLM2-135M-Instruct Q4_1 GGUF is looked for.
pub fn model_location() -> PathBuf {
    std::env::var_os("AGENTLM_MODEL").map(PathBuf::from).unwrap_or_else(|| cache_dir().join(MODEL_NAME))
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF. Panics with a hint when absent.
pub fn model_path() -> PathBuf {
    let p = model_location();
    assert!(p.is_file(), "test model not found at {}: run scripts/fetch-model.sh", p.display());
    p
}

/// The golden directory (see the module docs).
pub fn golden_dir() -> PathBuf {
    std::env::var_os("AGENTLM_GOLDEN").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("golden/v1"))
}

/// A golden file or directory. Panics with a hint when absent.
pub fn golden(rel: &str) -> PathBuf {
    let p = golden_dir().join(rel);
    assert!(p.exists(), "golden file {} not found: run scripts/golden/make.sh (scripts/test.sh does)", p.display());
    p
}

/// The AgentInstruct ALFWorld JSONL file, when one is available (see the module docs).
pub fn alfworld() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AGENTLM_ALFWORLD") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "AGENTLM_ALFWORLD={} is not a file", p.display());
        return Some(p);
    }
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/agentinstruct/alfworld.jsonl"));
    p.is_file().then_some(p)
}

/// The reason every AgentInstruct test gives when it skips.
pub const NO_ALFWORLD: &str = "AgentInstruct ALFWorld data not available (it cannot be redistributed): set \
    AGENTLM_ALFWORLD to a JSONL file of the THUDM/AgentInstruct alfworld split (docs/testing.md)";

/// Prints `SKIPPED: <what>: <why>` past the test harness's output capture, so the line shows in the
/// run's log and `scripts/test.sh` can count it.
pub fn skip(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}: {why}");
}

/// The AgentInstruct file, or `None` after printing a `SKIPPED` line for `what`.
pub fn alfworld_or_skip(what: &str) -> Option<PathBuf> {
    let p = alfworld();
    if p.is_none() {
        skip(what, NO_ALFWORLD);
    }
    p
}

/// The golden file made from AgentInstruct (`smollm2_lora_agentinstruct_golden.json`), or `None` after
/// printing a `SKIPPED` line when there is no AgentInstruct data. With data but without the file, the
/// golden directory is out of date: that panics with the command to run.
pub fn agentinstruct_golden_or_skip(what: &str) -> Option<PathBuf> {
    alfworld_or_skip(what)?;
    Some(golden("smollm2_lora_agentinstruct_golden.json"))
}

/// A small deterministic xorshift generator for property tests and mutations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-ish in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
