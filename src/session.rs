//! [`Session`]: one conversation on a shared [`Model`] — its KV cache, token history, sampling and
//! streaming. Exclusively owned (`Send`, not shared); only its [`CancelToken`] may be used from another
//! thread while it works.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::generate::{CancelToken, Sampler, SamplingParams, StopMatcher};
use crate::model::{KvCache, Logits};
use crate::runtime::Model;

/// Prompt tokens processed per forward pass during prefill; cancellation is checked between chunks.
pub const PREFILL_CHUNK: usize = 256;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Sampling (default: greedy).
    pub sampling: SamplingParams,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Stop strings: generation ends when one appears; it is not part of the returned text.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { sampling: SamplingParams::default(), max_tokens: 256, stop: Vec::new(), ignore_eos: false }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared (index into [`GenerateParams::stop`]).
    Stop(usize),
    /// `max_tokens` were generated.
    Length,
    /// The text callback asked to stop.
    Callback,
    /// The session's [`CancelToken`] was triggered.
    Cancelled,
    /// The KV cache is full.
    ContextFull,
}

/// The result of [`Session::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated token ids (including a final EOS token if one was produced).
    pub ids: Vec<u32>,
    /// Generated text, stop string and special tokens excluded.
    pub text: String,
    pub finish: FinishReason,
    /// Tokens processed before the first new token (prompt not yet in the cache).
    pub prefill_tokens: usize,
    pub prefill_time: Duration,
    /// Forward passes for generated tokens (excludes the prefill pass that yields the first token).
    pub decode_tokens: usize,
    pub decode_time: Duration,
}

impl Generation {
    /// Prefill throughput in tokens per second (0 when nothing was prefilled).
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_time)
    }
    /// Decode throughput in tokens per second (0 when fewer than two tokens were generated).
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_time)
    }
}

fn rate(n: usize, t: Duration) -> f64 {
    if n == 0 || t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

/// One conversation: the tokens so far and the attention cache for those already processed.
pub struct Session {
    model: Model,
    cache: KvCache,
    /// Every token of the conversation; `tokens[..cache.len()]` are in the cache.
    tokens: Vec<u32>,
    /// Logits after the last cached token, when it is the last token.
    logits: Option<Vec<f32>>,
    cancel: CancelToken,
}

impl Session {
    pub(crate) fn new(model: Model, capacity: usize) -> Session {
        let cache = model.llama().new_cache(capacity);
        Session { model, cache, tokens: Vec::new(), logits: None, cancel: CancelToken::default() }
    }

    /// The model this session runs on.
    pub fn model(&self) -> &Model {
        &self.model
    }
    /// Every token of the conversation so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// Maximum tokens this session can hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    /// A handle that cancels this session's prefill or generation from any thread.
    ///
    /// The call running when it is triggered — or the next one, if none is running — stops at the next
    /// token or prefill chunk with the state consistent, and clears the flag.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Forgets the conversation (the cache memory is kept).
    pub fn reset(&mut self) {
        self.tokens.clear();
        self.cache.clear();
        self.logits = None;
    }

    /// Rewinds the conversation to its first `len` tokens (no-op when it is not longer), e.g. to drop
    /// a stop sequence or retry a step. The cache keeps what it had of those tokens.
    pub fn truncate(&mut self, len: usize) {
        if len < self.tokens.len() {
            self.tokens.truncate(len);
            self.cache.truncate(len);
            self.logits = None;
        }
    }

    /// An independent copy of this conversation (cache duplicated), e.g. to explore two continuations.
    pub fn fork(&self) -> Session {
        Session {
            model: self.model.clone(),
            cache: self.cache.clone(),
            tokens: self.tokens.clone(),
            logits: self.logits.clone(),
            cancel: CancelToken::default(),
        }
    }

    /// Appends text, tokenized with special tokens recognised (use for trusted prompt text and
    /// rendered chat templates). BOS is prepended when the conversation is empty and the model's
    /// tokenizer asks for it.
    pub fn append_text(&mut self, text: &str) -> Result<()> {
        let tok = self.model.tokenizer();
        let add_bos = self.tokens.is_empty() && tok.add_bos_by_default();
        let ids = tok.encode(text, add_bos)?;
        self.append_tokens(&ids)
    }

    /// Appends text with special-token strings tokenized as plain text: for untrusted input such as
    /// tool observations, which must never inject control tokens.
    pub fn append_untrusted_text(&mut self, text: &str) -> Result<()> {
        let ids = self.model.tokenizer().encode_plain(text)?;
        self.append_tokens(&ids)
    }

    /// Appends token ids (validated against the vocabulary). They are processed lazily, by the next
    /// [`Session::generate`] or [`Session::prefill`].
    pub fn append_tokens(&mut self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::InvalidArgument(format!("token id {id} is outside the vocabulary (size {vocab})")));
        }
        if self.tokens.len() + ids.len() > self.cache.capacity() {
            return Err(Error::InvalidArgument(format!(
                "context full: {} tokens held, {} appended, capacity {}",
                self.tokens.len(),
                ids.len(),
                self.cache.capacity()
            )));
        }
        if !ids.is_empty() {
            self.logits = None;
        }
        self.tokens.extend_from_slice(ids);
        Ok(())
    }

    /// Processes every appended token not yet in the cache, in chunks of [`PREFILL_CHUNK`].
    /// Returns how many tokens were processed.
    ///
    /// # Errors
    /// [`Error::Cancelled`] between chunks (what was processed stays cached), model errors.
    pub fn prefill(&mut self) -> Result<usize> {
        self.process_pending()
    }

    fn process_pending(&mut self) -> Result<usize> {
        let start = self.cache.len();
        while self.cache.len() < self.tokens.len() {
            if self.cancel.is_cancelled() {
                self.cancel.reset();
                return Err(Error::Cancelled);
            }
            let from = self.cache.len();
            let to = (from + PREFILL_CHUNK).min(self.tokens.len());
            let logits = self.model.llama().forward(&self.tokens[from..to], &mut self.cache, Logits::Last)?;
            self.logits = Some(logits);
        }
        Ok(self.cache.len() - start)
    }

    /// The next-token logits (`[vocab]`, unnormalised) after every token so far, processing pending
    /// tokens first.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on an empty session; [`Error::Cancelled`]; model errors.
    pub fn logits(&mut self) -> Result<&[f32]> {
        if self.tokens.is_empty() {
            return Err(Error::InvalidArgument("the session is empty".into()));
        }
        self.process_pending()?;
        self.recompute_last_logits()?;
        self.logits.as_deref().ok_or_else(|| Error::InvalidArgument("no logits available".into()))
    }

    /// After `process_pending`, every token is cached; if the last one was cached by an earlier call
    /// whose logits were since dropped, run it again to get them.
    fn recompute_last_logits(&mut self) -> Result<()> {
        if self.logits.is_none() && !self.tokens.is_empty() {
            let last = self.tokens.len() - 1;
            self.cache.truncate(last);
            self.logits = Some(self.model.llama().forward(&self.tokens[last..], &mut self.cache, Logits::Last)?);
        }
        Ok(())
    }

    /// Generates a continuation. `on_text` receives the text as it is produced, in whole UTF-8
    /// characters and never containing (part of) a stop string; returning `ControlFlow::Break(())` stops.
    ///
    /// Generated tokens stay in the conversation (the last one is processed by the next call).
    ///
    /// # Errors
    /// Invalid sampling parameters, an empty conversation, model and tokenizer errors. Cancellation is
    /// not an error here: it ends generation with [`FinishReason::Cancelled`].
    pub fn generate(&mut self, params: &GenerateParams, mut on_text: impl FnMut(&str) -> ControlFlow<()>) -> Result<Generation> {
        let mut sampler = Sampler::new(params.sampling.clone())?;
        if self.tokens.is_empty() {
            return Err(Error::InvalidArgument("nothing to continue: the session is empty".into()));
        }
        let t0 = Instant::now();
        let prefill_tokens = match self.process_pending() {
            Ok(n) => n,
            Err(Error::Cancelled) => {
                return Ok(Generation {
                    ids: vec![],
                    text: String::new(),
                    finish: FinishReason::Cancelled,
                    prefill_tokens: 0,
                    prefill_time: t0.elapsed(),
                    decode_tokens: 0,
                    decode_time: Duration::ZERO,
                })
            }
            Err(e) => return Err(e),
        };
        self.recompute_last_logits()?;
        let prefill_time = t0.elapsed();
        let t1 = Instant::now();

        let model = self.model.clone();
        let tok = model.tokenizer();
        let eos = tok.eos_ids();
        let mut decoder = tok.stream_decoder();
        let mut stops = StopMatcher::new(&params.stop);
        let mut out = Generation {
            ids: vec![],
            text: String::new(),
            finish: FinishReason::Length,
            prefill_tokens,
            prefill_time,
            decode_tokens: 0,
            decode_time: Duration::ZERO,
        };
        let mut emit = |s: &str, text: &mut String| -> ControlFlow<()> {
            if s.is_empty() {
                return ControlFlow::Continue(());
            }
            text.push_str(s);
            on_text(s)
        };
        let mut stopped_by_text = false;
        while out.ids.len() < params.max_tokens {
            if self.cancel.is_cancelled() {
                self.cancel.reset();
                out.finish = FinishReason::Cancelled;
                break;
            }
            if !out.ids.is_empty() {
                if self.tokens.len() >= self.cache.capacity() {
                    out.finish = FinishReason::ContextFull;
                    break;
                }
                match self.process_pending() {
                    Ok(_) => out.decode_tokens += 1,
                    Err(Error::Cancelled) => {
                        out.finish = FinishReason::Cancelled;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(logits) = self.logits.as_mut() else {
                return Err(Error::InvalidArgument("no logits available".into()));
            };
            let id = sampler.sample(logits, &self.tokens);
            if self.tokens.len() >= self.cache.capacity() {
                out.finish = FinishReason::ContextFull;
                break;
            }
            self.tokens.push(id);
            self.logits = None;
            out.ids.push(id);
            if !params.ignore_eos && eos.contains(&id) {
                out.finish = FinishReason::Eos;
                break;
            }
            if let Some(piece) = decoder.push(id)? {
                let r = stops.push(&piece);
                let flow = emit(&r.emit, &mut out.text);
                if let Some(i) = r.stopped {
                    out.finish = FinishReason::Stop(i);
                    stopped_by_text = true;
                    break;
                }
                if flow.is_break() {
                    out.finish = FinishReason::Callback;
                    stopped_by_text = true;
                    break;
                }
            }
        }
        if !stopped_by_text {
            let rest = decoder.flush();
            let mut tail = stops.push(&rest);
            if tail.stopped.is_some() {
                out.finish = FinishReason::Stop(tail.stopped.unwrap_or(0));
            } else {
                tail.emit.push_str(&stops.finish());
            }
            let _ = emit(&tail.emit, &mut out.text);
        }
        out.decode_time = t1.elapsed();
        Ok(out)
    }
}
