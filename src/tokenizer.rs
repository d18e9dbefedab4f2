//! Tokenizers: Hugging Face `tokenizer.json`, or built from GGUF metadata (`tokenizer.ggml.*`).
//!
//! GGUF vocabularies are turned into the equivalent `tokenizer.json` document (the same one
//! transformers' converters produce) and loaded with the `tokenizers` crate, so both paths share one
//! implementation and a GGUF tokenizer can be saved as a Hugging Face one.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::formats::gguf::{GgufFile, GgufValue};

/// An error building or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer description is invalid or unsupported.
    #[error("tokenizer: {0}")]
    Invalid(String),
    /// Encoding or decoding failed inside the tokenizers library.
    #[error("tokenizer: {0}")]
    Library(String),
}

fn lib(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Library(e.to_string())
}

/// GGUF token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
}

/// A tokenizer description as stored in GGUF metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub model: String,
    /// Pre-tokenizer name for `gpt2` models (`smollm`, `llama-bpe`, `default`, ...).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    /// `"left right"` merge rules (byte-level BPE).
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the `tokenizer.*` metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let get = |k: &str| file.metadata(&format!("tokenizer.ggml.{k}"));
        let arr = |k: &str| get(k).and_then(GgufValue::as_array);
        let bad = |k: &str| TokenizerError::Invalid(format!("{}: tokenizer.ggml.{k} has the wrong type", file.path().display()));
        let strings = |k: &str| -> Result<Option<Vec<String>>, TokenizerError> {
            arr(k).map(|a| a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(k))).collect()).transpose()
        };
        let id = |k: &str| get(k).and_then(GgufValue::as_u64).map(|v| v as u32);
        let flag = |k: &str| get(k).and_then(GgufValue::as_bool);
        Ok(GgufVocab {
            model: get("model").and_then(GgufValue::as_str).ok_or_else(|| bad("model"))?.to_string(),
            pre: get("pre").and_then(GgufValue::as_str).map(str::to_string),
            tokens: strings("tokens")?.ok_or_else(|| bad("tokens"))?,
            scores: arr("scores").map(|a| a.iter().map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| bad("scores"))).collect()).transpose()?,
            token_types: arr("token_type").map(|a| a.iter().map(|v| v.as_i64().map(|i| i as i32).ok_or_else(|| bad("token_type"))).collect()).transpose()?,
            merges: strings("merges")?,
            bos_id: id("bos_token_id"),
            eos_id: id("eos_token_id"),
            unk_id: id("unknown_token_id"),
            pad_id: id("padding_token_id"),
            add_bos: flag("add_bos_token"),
            add_eos: flag("add_eos_token"),
            add_space_prefix: flag("add_space_prefix"),
            chat_template: file.metadata("tokenizer.chat_template").and_then(GgufValue::as_str).map(str::to_string),
        })
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.as_ref().and_then(|t| t.get(id).copied()).unwrap_or(1)
    }

    fn added_tokens(&self) -> Vec<Value> {
        self.tokens
            .iter()
            .enumerate()
            .filter_map(|(id, t)| {
                let ty = self.token_type(id);
                let special = ty == token_type::CONTROL || ty == token_type::UNKNOWN;
                (special || ty == token_type::USER_DEFINED).then(|| {
                    json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": !special, "special": special})
                })
            })
            .collect()
    }

    /// The equivalent Hugging Face `tokenizer.json` document.
    pub fn to_hf_json(&self) -> Result<Value, TokenizerError> {
        if self.tokens.is_empty() {
            return Err(TokenizerError::Invalid("empty vocabulary".into()));
        }
        let mut vocab = serde_json::Map::new();
        for (id, t) in self.tokens.iter().enumerate() {
            // Duplicate pieces keep their first id, as the reference converters do.
            vocab.entry(t.clone()).or_insert(json!(id));
        }
        match self.model.as_str() {
            "gpt2" => self.byte_level_json(vocab),
            "llama" => self.sentencepiece_json(vocab),
            other => Err(TokenizerError::Invalid(format!("tokenizer model {other:?} (gpt2 and llama are supported)"))),
        }
    }

    fn byte_level_json(&self, vocab: serde_json::Map<String, Value>) -> Result<Value, TokenizerError> {
        let merges: Vec<Value> = self
            .merges
            .as_ref()
            .ok_or_else(|| TokenizerError::Invalid("gpt2 tokenizer without tokenizer.ggml.merges".into()))?
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])).ok_or_else(|| TokenizerError::Invalid(format!("merge {m:?} has no space"))))
            .collect::<Result<_, _>>()?;
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre = match self.pre.as_deref().unwrap_or("default") {
            "default" | "gpt2" | "gpt-2" => byte_level.clone(),
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]}),
            "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            other => return Err(TokenizerError::Invalid(format!("byte-level pre-tokenizer {other:?} (smollm, llama-bpe, default are supported)"))),
        };
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        }))
    }

    fn sentencepiece_json(&self, vocab: serde_json::Map<String, Value>) -> Result<Value, TokenizerError> {
        let scores = self.scores.as_ref().ok_or_else(|| TokenizerError::Invalid("llama tokenizer without scores".into()))?;
        if scores.len() != self.tokens.len() {
            return Err(TokenizerError::Invalid(format!("{} scores for {} tokens", scores.len(), self.tokens.len())));
        }
        // Merges as transformers' SentencePieceExtractor derives them: every split of every piece into
        // two pieces of the vocabulary, ranked by the merged piece's score (then ids).
        let ids: HashMap<&str, usize> = self.tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
        let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (id, piece) in self.tokens.iter().enumerate() {
            if ids.get(piece.as_str()) != Some(&id) {
                continue;
            }
            for (split, _) in piece.char_indices().skip(1) {
                if let (Some(&l), Some(&r)) = (ids.get(&piece[..split]), ids.get(&piece[split..])) {
                    merges.push((scores[id], id, l, r));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
        let merges: Vec<Value> = merges.iter().map(|&(_, _, l, r)| json!([self.tokens[l], self.tokens[r]])).collect();
        let unk = self.unk_id.and_then(|i| self.tokens.get(i as usize)).cloned();
        let add_prefix = self.add_space_prefix.unwrap_or(true);
        let mut normalizers = vec![];
        if add_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
        let mut decoders =
            vec![json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}), json!({"type": "ByteFallback"}), json!({"type": "Fuse"})];
        if add_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        }))
    }
}

/// Llama 3's pre-tokenizer split regex (llama.cpp `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token ids and each one's byte range in the text ([`Tokenizer::encode_with_offsets`]).
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// How [`Tokenizer::encode_with`] reads a text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Prepend the BOS token where the model's tokenizer adds one by default (`add_bos_token`).
    pub add_bos: bool,
    /// Special-token strings in the text (`</s>`, `<|im_end|>`) become their ids. Off, they are
    /// tokenized as plain text: the safe choice for untrusted text.
    pub parse_special: bool,
}

/// A tokenizer plus the model's special-token conventions. `Send + Sync`, cheap to share by reference.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token strings treated as plain text.
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("bos", &self.bos).field("eos", &self.eos).finish()
    }
}

impl Tokenizer {
    fn from_json_value(doc: &Value, bos: Option<u32>, eos: Vec<u32>, add_bos: bool, chat_template: Option<String>) -> Result<Self, TokenizerError> {
        let text = serde_json::to_string(doc).map_err(lib)?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(lib)?;
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Ok(Tokenizer { inner, plain, bos, eos, add_bos, chat_template })
    }

    /// Builds the tokenizer a GGUF vocabulary describes.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Self, TokenizerError> {
        let doc = v.to_hf_json()?;
        let n = v.tokens.len() as u32;
        let check = |id: Option<u32>| id.filter(|&i| i < n);
        Tokenizer::from_json_value(
            &doc,
            check(v.bos_id),
            check(v.eos_id).into_iter().collect(),
            v.add_bos.unwrap_or(v.model == "llama"),
            v.chat_template.clone(),
        )
    }

    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_vocab(&GgufVocab::from_gguf(file)?)
    }

    /// Loads `tokenizer.json`, with `tokenizer_config.json` (if given) for `add_bos_token`, the BOS/EOS
    /// tokens and the chat template. Without a config, BOS is added when the tokenizer's post-processor
    /// adds it (as transformers does).
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self, TokenizerError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| TokenizerError::Io { path: p.display().to_string(), source });
        let doc: Value = serde_json::from_str(&read(tokenizer_json)?).map_err(|e| TokenizerError::Invalid(format!("{}: {e}", tokenizer_json.display())))?;
        let config: Value = match tokenizer_config_json {
            Some(p) => serde_json::from_str(&read(p)?).map_err(|e| TokenizerError::Invalid(format!("{}: {e}", p.display())))?,
            None => Value::Null,
        };
        // The post-processor's BOS handling becomes our explicit add_bos flag.
        let post_bos = doc["post_processor"]["special_tokens"].as_object().and_then(|m| m.values().next().cloned());
        let mut doc = doc;
        doc["post_processor"] = Value::Null;
        let tmp = Tokenizer::from_json_value(&doc, None, vec![], false, None)?;
        let token_of = |v: &Value| -> Option<u32> {
            let s = v.as_str().or_else(|| v["content"].as_str())?;
            tmp.inner.token_to_id(s)
        };
        let bos = token_of(&config["bos_token"]).or_else(|| post_bos.as_ref().and_then(|p| p["ids"][0].as_u64()).map(|i| i as u32));
        let eos: Vec<u32> = token_of(&config["eos_token"]).into_iter().collect();
        let add_bos = config["add_bos_token"].as_bool().unwrap_or(post_bos.is_some());
        let chat_template = match &config["chat_template"] {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string),
            _ => None,
        };
        Ok(Tokenizer { bos, eos, add_bos, chat_template, ..tmp })
    }

    /// Tokenizes `text` as `options` say: with the BOS token in front when asked for and the model's
    /// tokenizer adds one by default (`add_bos_token`), special-token strings as their ids or as
    /// plain text.
    pub fn encode_with(&self, text: &str, options: EncodeOptions) -> Result<Vec<u32>, TokenizerError> {
        let tok = if options.parse_special { &self.inner } else { &self.plain };
        let enc = tok.encode_fast(text, false).map_err(lib)?;
        Ok(self.with_bos(enc.get_ids(), options.add_bos && self.add_bos))
    }

    /// Tokenizes `text`; special-token strings in it (`<|im_start|>`, `</s>`, ...) become their ids.
    /// Prepends BOS when `add_bos` and the model has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(lib)?;
        Ok(self.with_bos(enc.get_ids(), add_bos))
    }

    /// [`Tokenizer::encode`] plus each token's byte range in `text` (`(0, 0)` for an added BOS).
    pub fn encode_with_offsets(&self, text: &str, add_bos: bool) -> Result<Encoded, TokenizerError> {
        // `encode` (not `encode_fast`) computes offsets; they are byte offsets into `text`.
        let enc = self.inner.encode(text, false).map_err(lib)?;
        let mut offsets = enc.get_offsets().to_vec();
        let ids = self.with_bos(enc.get_ids(), add_bos);
        if ids.len() > offsets.len() {
            offsets.insert(0, (0, 0));
        }
        Ok((ids, offsets))
    }

    /// Tokenizes `text` with special-token strings treated as plain text: for untrusted input (tool
    /// output, user text) that must never produce control tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.plain.encode_fast(text, false).map_err(lib)?;
        Ok(enc.get_ids().to_vec())
    }

    fn with_bos(&self, ids: &[u32], add_bos: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len() + 1);
        if let (true, Some(b)) = (add_bos, self.bos) {
            out.push(b);
        }
        out.extend_from_slice(ids);
        out
    }

    /// Text of `ids`; special tokens omitted when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(lib)
    }

    /// Whether the model expects BOS at the start of a sequence.
    pub fn add_bos_by_default(&self) -> bool {
        self.add_bos
    }
    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }
    /// Id of a token string (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// Ids of the special (control) tokens.
    pub fn special_token_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        v.sort_unstable();
        v
    }
    /// The chat template carried with the tokenizer (GGUF metadata or `tokenizer_config.json`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// This tokenizer as a Hugging Face `tokenizer.json` document.
    pub fn to_hf_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(lib)
    }
    /// The bytes of every token id (`0..vocab_size`, empty past the tokenizer's own vocabulary), special
    /// tokens marked with a leading `0xFF` as llguidance's token trie expects: the alphabet of
    /// grammar-constrained decoding.
    ///
    /// # Errors
    /// A vocabulary that is neither byte-level BPE nor SentencePiece with byte fallback.
    pub fn token_bytes(&self, vocab_size: usize) -> Result<Vec<Vec<u8>>, TokenizerError> {
        let json: Value = serde_json::from_str(&self.to_hf_json()?).map_err(lib)?;
        let mut bytes = llguidance::token_bytes_from_tokenizer_json(&json).map_err(lib)?;
        bytes.resize(vocab_size.max(bytes.len()), Vec::new());
        bytes.truncate(vocab_size);
        Ok(bytes)
    }

    /// An incremental detokenizer that only ever yields whole UTF-8 characters (special tokens skipped).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, state: TextStream::default() }
    }
}

/// Owned state of an incremental detokenizer (no borrow of the tokenizer, so it can live inside a
/// session between calls). Feed it ids with [`TextStream::step`].
///
/// It keeps a short window of recent ids and their decoded prefix: the text a new id adds is
/// `decode(window + id) - decode(window)`, released only when it does not end in an incomplete
/// character (U+FFFD from a partial byte sequence).
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: String,
    /// Ids of `ids` that make up `prefix`, the context kept for the next step.
    prefix_len: usize,
}

impl TextStream {
    /// Adds one token; returns the text it completes, if any.
    ///
    /// # Errors
    /// Decoding errors, or a decoder whose output for a longer window does not extend the shorter one.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, true)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(TokenizerError::Invalid(format!("stream decoding: {text:?} does not extend {:?}", self.prefix)));
        };
        let new = new.to_string();
        // Keep the ids after the old context as the next context.
        let keep_from = self.prefix_len;
        self.ids.drain(..keep_from);
        self.prefix = tokenizer.decode(&self.ids, true)?;
        self.prefix_len = self.ids.len();
        Ok(Some(new))
    }

    /// Forgets everything fed so far.
    pub fn clear(&mut self) {
        *self = TextStream::default();
    }
}

/// Incremental detokenizer: feed ids one at a time, get text as soon as it forms whole characters.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    state: TextStream,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.state.step(self.tokenizer, id)
    }
    /// Ends the stream. Incomplete trailing bytes are never emitted, so this returns nothing more;
    /// it exists so callers have one place to end a stream.
    pub fn flush(&mut self) -> String {
        String::new()
    }
}

#[cfg(test)]
mod tests;
