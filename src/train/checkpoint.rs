//! Trainer checkpoints: [`Trainer::checkpoint`] writes everything a run needs to continue exactly
//! (adapter, optimizer moments, settings, data and position) into a directory swapped in atomically;
//! [`Trainer::resume`] reads it back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::data::Source;
use super::{Position, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::formats::peft;
use crate::formats::HostTensor;
use crate::runtime::{Adapter, Model};

impl Trainer {
    /// Saves everything needed to continue exactly: the adapter (PEFT files), the optimizer moments,
    /// the settings, the data (in-memory records inline, file records by path and offset) and the
    /// position in it. The directory is written under a temporary name and swapped in, so a crash
    /// leaves the previous checkpoint (`dir`, or `dir` with `.old` appended mid-swap) intact. A write
    /// that fails (a full disk) removes the temporary directory and leaves `dir` as it was.
    ///
    /// # Errors
    /// I/O errors, naming the file.
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let tmp = sibling(dir, ".tmp");
        let old = sibling(dir, ".old");
        if tmp.exists() {
            // What a crashed checkpoint left.
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        if let Err(e) = self.write_checkpoint_files(&tmp) {
            // A failed write (a full disk) leaves nothing behind; `dir` is untouched.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            if let Err(e) = std::fs::rename(dir, &old) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(io(dir)(e));
            }
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            // Put the previous checkpoint back.
            let _ = std::fs::rename(&old, dir);
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(dir)(e));
        }
        if let Some(parent) = dir.parent() {
            peft::sync_dir(parent);
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }

    /// The files of a checkpoint, written into `tmp` (created).
    fn write_checkpoint_files(&self, tmp: &Path) -> Result<()> {
        std::fs::create_dir_all(tmp).map_err(io(tmp))?;
        peft::write_adapter(tmp, &self.peft())?;
        let moments: Vec<(String, HostTensor)> = self
            .names
            .iter()
            .zip(&self.shapes)
            .zip(self.opt.exp_avg.iter().zip(&self.opt.exp_avg_sq))
            .flat_map(|((n, s), (m, v))| {
                [
                    (format!("{n}.exp_avg"), HostTensor { shape: s.to_vec(), data: m.clone() }),
                    (format!("{n}.exp_avg_sq"), HostTensor { shape: s.to_vec(), data: v.clone() }),
                ]
            })
            .collect();
        peft::write_tensors(&tmp.join("optimizer.safetensors"), &moments)?;
        let mut data = String::new();
        for (split, items) in [("agent", &self.pools[0].items), ("general", &self.pools[1].items), ("eval", &self.eval)] {
            for s in items {
                let line = match s {
                    Source::Memory(t) => json!({"split": split, "record": **t}),
                    Source::Line { file, offset, len, line } => json!({"split": split, "file": file.as_path(), "offset": offset, "len": len, "line": line}),
                };
                data.push_str(&line.to_string());
                data.push('\n');
            }
        }
        crate::formats::hf::write_atomic(&tmp.join("data.jsonl"), |f| std::io::Write::write_all(f, data.as_bytes()))?;
        let state = json!({
            "format": "agentlm-trainer",
            "version": 1,
            "optimizer_step": self.opt.step,
            "position": self.position(),
            "config": self.config.to_json(),
            "parameters": self.parameter_count(),
        });
        let state = serde_json::to_string_pretty(&state).expect("JSON value serializes");
        crate::formats::hf::write_atomic(&tmp.join("trainer_state.json"), |f| std::io::Write::write_all(f, state.as_bytes()))?;
        peft::sync_dir(tmp);
        Ok(())
    }

    /// A trainer continuing from a [`Trainer::checkpoint`] directory (or its `.old` copy when a crash
    /// interrupted the swap). The model must be the one it was trained on (same shape).
    ///
    /// # Errors
    /// Missing or malformed checkpoint files ([`Error::State`], [`Error::Format`]); a model of another shape.
    pub fn resume(model: &Model, dir: impl AsRef<Path>) -> Result<Trainer> {
        let mut dir = dir.as_ref().to_path_buf();
        if !dir.join("trainer_state.json").exists() && sibling(&dir, ".old").join("trainer_state.json").exists() {
            dir = sibling(&dir, ".old");
        }
        let state_path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|source| Error::Io { path: state_path.clone(), source })?;
        let bad = |m: String| Error::State(format!("{}: {m}", state_path.display()));
        let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("bad JSON: {e}")))?;
        if state["format"] != "agentlm-trainer" || state["version"] != 1 {
            return Err(bad("not an agentlm trainer checkpoint of version 1".into()));
        }
        let config = TrainConfig::from_json(&state["config"], &state_path)?;
        let files = peft::read_adapter(&dir)?;
        let start = Adapter::from_peft(model, &files)?;
        // The adapter's own configuration (written by the same checkpoint) sets the LoRA shape.
        let mut t = Trainer::new(model, config, Some(&start))?;
        let moments = peft::read_tensors(&dir.join("optimizer.safetensors"))?;
        for (i, n) in t.names.iter().enumerate() {
            let get = |suffix: &str| {
                moments
                    .get(&format!("{n}.{suffix}"))
                    .filter(|m| m.data.len() == t.params[i].len())
                    .map(|m| m.data.clone())
                    .ok_or_else(|| bad(format!("optimizer state for {n} is missing or mis-shaped")))
            };
            t.opt.exp_avg[i] = get("exp_avg")?;
            t.opt.exp_avg_sq[i] = get("exp_avg_sq")?;
        }
        t.opt.step = state["optimizer_step"].as_u64().ok_or_else(|| bad("\"optimizer_step\" is missing".into()))?;
        let data_path = dir.join("data.jsonl");
        let data = std::fs::read_to_string(&data_path).map_err(|source| Error::Io { path: data_path.clone(), source })?;
        for (i, line) in data.lines().enumerate() {
            let bad_line = |m: String| Error::State(format!("{}:{}: {m}", data_path.display(), i + 1));
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad_line(e.to_string()))?;
            let src = if let Some(r) = v.get("record") {
                Source::Memory(Arc::new(serde_json::from_value(r.clone()).map_err(|e| bad_line(e.to_string()))?))
            } else {
                let field = |k: &str| v[k].as_u64().ok_or_else(|| bad_line(format!("\"{k}\" is missing")));
                let file = v["file"].as_str().ok_or_else(|| bad_line("\"file\" is missing".into()))?;
                Source::Line { file: Arc::new(PathBuf::from(file)), offset: field("offset")?, len: field("len")? as u32, line: field("line")? as usize }
            };
            match v["split"].as_str() {
                Some("agent") => t.pools[0].items.push(src),
                Some("general") => t.pools[1].items.push(src),
                Some("eval") => t.eval.push(src),
                other => return Err(bad_line(format!("unknown split {other:?}"))),
            }
        }
        let pos: Position = serde_json::from_value(state["position"].clone()).map_err(|e| bad(format!("position: {e}")))?;
        if pos.pools.iter().zip(&t.pools).any(|(p, pool)| p.2 > pool.items.len() || p.1 > p.2) {
            return Err(bad("the data position does not fit the saved data".into()));
        }
        t.set_position(&pos);
        Ok(t)
    }
}

/// Maps an I/O error to [`Error::Io`] naming `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}
