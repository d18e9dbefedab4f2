//! The session byte format: [`Session::save_state`] and [`Session::load_state`] (and their file
//! forms), tied to the model's shape.

use std::io::Write;
use std::path::Path;

use super::session::Session;
use crate::error::{Error, Result};

const STATE_MAGIC: &[u8; 8] = b"AGLMSES\0";
const STATE_VERSION: u32 = 1;
/// Magic, version, 5 shape words, token count, cached count, logits flag.
const STATE_HEADER: usize = 8 + 4 + 5 * 4 + 8 + 8 + 1;

impl Session {
    /// The conversation as bytes: tokens, the attention cache and the pending logits, tied to this
    /// model's shape. [`Session::load_state`] restores it exactly (same next-token logits), on this
    /// or any session of an identical model. Any generation in progress is not saved. The attached
    /// adapter is not part of the state: restore into a session with the same adapter and scale.
    ///
    /// Layout (little-endian): magic `AGLMSES\0`, version `u32`, then `u32` vocab, layers, kv heads,
    /// head dim, hidden size; `u64` token count, `u64` cached positions, `u8` logits flag; the tokens
    /// (`u32`), the logits (`f32 × vocab`, if flagged), the cache (`f32`, see [`crate::model::Llama::export_cache`]).
    ///
    /// # Errors
    /// A device readback failure.
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let cache = self.model.llama().export_cache(&self.cache)?;
        let logits = self.logits.as_deref();
        let mut out = Vec::with_capacity(STATE_HEADER + 4 * (self.tokens.len() + logits.map_or(0, <[f32]>::len) + cache.len()));
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        for v in self.shape_fingerprint() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.cache.len() as u64).to_le_bytes());
        out.push(u8::from(logits.is_some()));
        out.extend(self.tokens.iter().flat_map(|t| t.to_le_bytes()));
        out.extend(logits.unwrap_or_default().iter().flat_map(|x| x.to_le_bytes()));
        out.extend(cache.iter().flat_map(|x| x.to_le_bytes()));
        Ok(out)
    }

    /// Replaces the conversation with one saved by [`Session::save_state`]. On error the session is
    /// unchanged.
    ///
    /// # Errors
    /// [`Error::State`] when the bytes are truncated, malformed, from another model shape, or hold
    /// more tokens than this session's capacity.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = |m: String| Error::State(m);
        if bytes.len() < STATE_HEADER || &bytes[..8] != STATE_MAGIC {
            return Err(bad("not a libagentlm session state (bad magic or too short)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(std::array::from_fn(|i| bytes[o + i]));
        let version = u32_at(8);
        if version != STATE_VERSION {
            return Err(bad(format!("state version {version}, this library reads {STATE_VERSION}")));
        }
        let saved: Vec<u32> = (0..5).map(|i| u32_at(12 + 4 * i)).collect();
        let ours = self.shape_fingerprint();
        if saved != ours {
            return Err(bad(format!("saved for a model of shape {saved:?} (vocab, layers, kv heads, head dim, hidden), this one is {ours:?}")));
        }
        let (n_tokens, cached, has_logits) = (u64_at(32), u64_at(40), bytes[48]);
        let c = self.model.config();
        if n_tokens > self.cache.capacity() as u64 || cached > n_tokens || has_logits > 1 {
            return Err(bad(format!("{n_tokens} tokens ({cached} cached) do not fit this session's capacity {}", self.cache.capacity())));
        }
        let (n_tokens, cached) = (n_tokens as usize, cached as usize);
        let n_logits = if has_logits == 1 { c.vocab_size } else { 0 };
        let n_cache = 2 * c.num_hidden_layers * c.num_key_value_heads * cached * c.head_dim;
        let expected = STATE_HEADER + 4 * (n_tokens + n_logits + n_cache);
        if bytes.len() != expected {
            return Err(bad(format!("{} bytes, expected {expected}", bytes.len())));
        }
        let words = |from: usize, n: usize| bytes[from..from + 4 * n].chunks_exact(4).map(|w| [w[0], w[1], w[2], w[3]]);
        let tokens: Vec<u32> = words(STATE_HEADER, n_tokens).map(u32::from_le_bytes).collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(bad(format!("token id {t} is outside the vocabulary")));
        }
        let at = STATE_HEADER + 4 * n_tokens;
        let logits: Vec<f32> = words(at, n_logits).map(f32::from_le_bytes).collect();
        let cache: Vec<f32> = words(at + 4 * n_logits, n_cache).map(f32::from_le_bytes).collect();
        let cache = self.model.llama().import_cache(&cache, cached, self.cache.capacity())?;
        self.cache = cache;
        self.tokens = tokens;
        self.logits = (has_logits == 1).then_some(logits);
        self.active = None;
        Ok(())
    }

    /// [`Session::save_state`] to a file, written atomically (a temporary file renamed into place).
    ///
    /// # Errors
    /// [`Error::Io`]; see [`Session::save_state`].
    pub fn save_state_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let bytes = self.save_state()?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// [`Session::load_state`] from a file.
    ///
    /// # Errors
    /// [`Error::Io`]; see [`Session::load_state`].
    pub fn load_state_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        self.load_state(&bytes)
    }

    fn shape_fingerprint(&self) -> Vec<u32> {
        let c = self.model.config();
        [c.vocab_size, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.hidden_size].iter().map(|&v| v as u32).collect()
    }
}
