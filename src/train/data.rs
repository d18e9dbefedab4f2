//! Training records: the three JSONL schemas the papers use, normalised to [`Trajectory`], and the
//! datasets the trainer samples from (files are indexed by line offset and read back on demand, never
//! held whole in memory).
//!
//! - AgentInstruct: `{"conversations": [{"from": "human"|"gpt", "value", "loss": null|false|true}], "id"}`:
//!   loss on `gpt` turns marked `true` only.
//! - ShareGPT-style chat: the same without any `loss` field (or `"messages": [{"role", "content"}]`): every
//!   assistant turn is trained.
//! - Agent-FLAN: `{"conversation": [{"role": "system"|"user"|"assistant", "content", "loss"}], "id"}`:
//!   loss on assistant turns whose `loss` is true (absent: true).
//!
//! An optional top-level `reward` is kept; the trainer drops records below its reward threshold.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::agent::trajectory::{Trajectory, Turn};
use crate::error::{Error, Result};

/// Which side of the AgentTuning mixture a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// Agent trajectories (AgentInstruct, Agent-FLAN, recorded episodes): sampled with probability η.
    Agent,
    /// General chat (ShareGPT): sampled with probability 1 − η.
    General,
}

impl DataKind {
    pub(crate) fn index(self) -> usize {
        match self {
            DataKind::Agent => 0,
            DataKind::General => 1,
        }
    }
}

/// Parses one JSON record in any of the supported schemas into a trajectory whose assistant turns
/// carry an explicit `loss`.
///
/// # Errors
/// A message saying what is wrong (the caller adds the line number).
pub fn parse_record(text: &str) -> std::result::Result<Trajectory, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let id = obj.get("id").and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_u64().map(|n| n.to_string())));
    let reward = match obj.get("reward") {
        None | Some(Value::Null) => None,
        Some(r) => Some(r.as_f64().ok_or("\"reward\" is not a number")?),
    };
    let outcome = obj.get("outcome").and_then(Value::as_str).map(str::to_string);
    let turns = if let Some(conv) = obj.get("conversations") {
        let mut turns: Vec<Turn> = serde_json::from_value(conv.clone()).map_err(|e| format!("\"conversations\": {e}"))?;
        // No loss anywhere: ShareGPT, every assistant turn trained.
        if turns.iter().all(|t| t.loss.is_none()) {
            for t in &mut turns {
                if is_assistant(&t.from) {
                    t.loss = Some(true);
                }
            }
        }
        turns
    } else if let Some(conv) = obj.get("conversation").or_else(|| obj.get("messages")) {
        let items = conv.as_array().ok_or("\"conversation\" is not an array")?;
        items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.get("role").and_then(Value::as_str).ok_or(format!("message {i} has no \"role\""))?;
                let content = m.get("content").and_then(Value::as_str).ok_or(format!("message {i} has no string \"content\""))?;
                let loss = match m.get("loss") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(format!("message {i}: \"loss\" is not a boolean")),
                };
                Ok(Turn::new(role, content, is_assistant(role).then_some(loss)))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?
    } else {
        return Err("no \"conversations\", \"conversation\" or \"messages\" array".into());
    };
    if turns.is_empty() {
        return Err("the conversation is empty".into());
    }
    if let Some(t) = turns.iter().find(|t| !matches!(t.from.as_str(), "human" | "user" | "gpt" | "assistant" | "system")) {
        return Err(format!("unknown speaker {:?}", t.from));
    }
    Ok(Trajectory { id, conversations: turns, reward, outcome })
}

fn is_assistant(from: &str) -> bool {
    matches!(from, "gpt" | "assistant")
}

/// Where a record lives.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Held in memory (added from JSON text or recorded by an agent).
    Memory(Arc<Trajectory>),
    /// One line of a JSONL file, read back when sampled.
    Line { file: Arc<PathBuf>, offset: u64, len: u32, line: usize },
}

impl Source {
    /// The record.
    ///
    /// # Errors
    /// The file changed or vanished since it was indexed.
    pub(crate) fn load(&self) -> Result<Arc<Trajectory>> {
        match self {
            Source::Memory(t) => Ok(t.clone()),
            Source::Line { file, offset, len, line } => {
                let io = |source| Error::Io { path: file.to_path_buf(), source };
                let mut f = std::fs::File::open(file.as_path()).map_err(io)?;
                f.seek(SeekFrom::Start(*offset)).map_err(io)?;
                let mut buf = vec![0u8; *len as usize];
                f.read_exact(&mut buf).map_err(io)?;
                let text = String::from_utf8(buf).map_err(|_| Error::InvalidArgument(format!("{}:{line}: not UTF-8 (the file changed?)", file.display())))?;
                parse_record(&text)
                    .map(Arc::new)
                    .map_err(|e| Error::InvalidArgument(format!("{}:{line}: {e} (the file changed since it was added?)", file.display())))
            }
        }
    }
}

/// Reads a JSONL file line by line, validating each record, and returns the index of those kept by
/// `keep` (blank lines are skipped). Nothing but the current line is held in memory.
///
/// # Errors
/// I/O errors; the first malformed line or error from `keep`, by line number.
pub(crate) fn index_jsonl(path: &Path, mut keep: impl FnMut(&Trajectory) -> Result<bool>) -> Result<Vec<Source>> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let file = Arc::new(path.to_path_buf());
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut out = Vec::new();
    let (mut offset, mut line_no, mut buf) = (0u64, 0usize, Vec::new());
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = std::str::from_utf8(&buf).map_err(|_| Error::InvalidArgument(format!("{}:{line_no}: not UTF-8", path.display())))?;
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if !trimmed.trim().is_empty() {
            let t = parse_record(trimmed).map_err(|e| Error::InvalidArgument(format!("{}:{line_no}: {e}", path.display())))?;
            let len = u32::try_from(trimmed.len()).map_err(|_| Error::InvalidArgument(format!("{}:{line_no}: line longer than 4 GiB", path.display())))?;
            let keep = keep(&t).map_err(|e| Error::InvalidArgument(format!("{}:{line_no}: {e}", path.display())))?;
            if keep {
                out.push(Source::Line { file: file.clone(), offset, len, line: line_no });
            }
        }
        offset += n as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agentinstruct_keeps_its_loss_flags() {
        let t = parse_record(
            r#"{"id":"alfworld_0","conversations":[{"from":"human","value":"task","loss":null},{"from":"gpt","value":"OK","loss":false},{"from":"human","value":"obs"},{"from":"gpt","value":"act","loss":true}]}"#,
        )
        .unwrap();
        let flags: Vec<_> = t.conversations.iter().map(|t| t.loss).collect();
        assert_eq!(flags, [None, Some(false), None, Some(true)]);
        assert_eq!(t.id.as_deref(), Some("alfworld_0"));
    }

    #[test]
    fn sharegpt_trains_every_assistant_turn() {
        let t = parse_record(r#"{"id":7,"conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"hello"},{"from":"human","value":"?"},{"from":"gpt","value":"!"}]}"#).unwrap();
        let flags: Vec<_> = t.conversations.iter().map(|t| t.loss).collect();
        assert_eq!(flags, [None, Some(true), None, Some(true)]);
        assert_eq!(t.id.as_deref(), Some("7"));
        let m = parse_record(r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#).unwrap();
        assert_eq!(m.conversations[1].loss, Some(true));
    }

    #[test]
    fn agent_flan_reads_roles_and_loss() {
        let t = parse_record(
            r#"{"id":"x","reward":1,"conversation":[{"role":"system","content":"s","loss":false},{"role":"user","content":"u","loss":false},{"role":"assistant","content":"a1","loss":false},{"role":"assistant","content":"a2","loss":true}]}"#,
        )
        .unwrap();
        let flags: Vec<_> = t.conversations.iter().map(|t| t.loss).collect();
        assert_eq!(flags, [None, None, Some(false), Some(true)]);
        assert_eq!(t.reward, Some(1.0));
        assert_eq!(t.conversations[0].from, "system");
    }

    #[test]
    fn malformed_records_say_why() {
        for (text, needle) in [
            ("{", "bad JSON"),
            ("[]", "not a JSON object"),
            (r#"{"id":1}"#, "no \"conversations\""),
            (r#"{"conversations":[]}"#, "empty"),
            (r#"{"conversations":[{"from":"robot","value":"x"}]}"#, "unknown speaker"),
            (r#"{"conversation":[{"role":"user"}]}"#, "content"),
            (r#"{"conversation":[{"role":"assistant","content":"a","loss":"yes"}]}"#, "boolean"),
            (r#"{"reward":"high","conversations":[{"from":"gpt","value":"x"}]}"#, "reward"),
        ] {
            let e = parse_record(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn jsonl_index_streams_and_reports_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let good = r#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}],"reward":1}"#;
        let low = r#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"b"}],"reward":0}"#;
        std::fs::write(&p, format!("{good}\n\n{low}\r\n{good}")).unwrap();
        let idx = index_jsonl(&p, |t| Ok(t.reward.unwrap_or(1.0) >= 1.0)).unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(idx[1].load().unwrap().conversations[1].value, "a");
        std::fs::write(&p, format!("{good}\n{{\"conversations\": 3}}\n")).unwrap();
        let e = index_jsonl(&p, |_| Ok(true)).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2:"), "{e}");
    }
}
