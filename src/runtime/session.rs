//! [`Session`]: one conversation on a shared [`Model`] — its KV cache, token history, sampling and
//! streaming. Exclusively owned (`Send`, not shared); only its [`CancelToken`] may be used from another
//! thread while it works.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::adapter::Adapter;
use super::model::{ensure_fits, Model};
use crate::error::{Error, Result};
use crate::generate::{CancelToken, Sampler, SamplingParams, StopMatcher};
use crate::model::{KvCache, Logits, LoraApply, ModelError};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::{TextStream, Tokenizer};

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

fn lora_apply(adapter: &Option<(Adapter, f32)>) -> Option<LoraApply<'_>> {
    adapter.as_ref().map(|(a, scale)| LoraApply { weights: a.weights(), scale: *scale, dropout: 0.0 })
}

/// One conversation: the tokens so far and the attention cache for those already processed.
pub struct Session {
    pub(super) model: Model,
    pub(super) cache: KvCache,
    /// Every token of the conversation; `tokens[..cache.len()]` are in the cache.
    pub(super) tokens: Vec<u32>,
    /// Logits after the last cached token, when it is the last token.
    pub(super) logits: Option<Vec<f32>>,
    /// The last logits buffer, kept for the next forward pass to write into (no allocation per token).
    pub(super) spare: Vec<f32>,
    pub(super) cancel: CancelToken,
    /// The generation begun by [`Session::begin`], if any.
    pub(super) active: Option<Active>,
    /// The LoRA adapter applied to this conversation and its scale.
    pub(super) adapter: Option<(Adapter, f32)>,
}

impl Model {
    /// A new conversation with a KV cache for `capacity` positions (default and maximum: the context length).
    ///
    /// # Panics
    /// When the cache does not fit in the memory the system says is available ([`Model::try_session`]
    /// returns that as an error instead).
    pub fn session(&self, capacity: Option<usize>) -> Session {
        self.try_session(capacity).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Model::session`], failing with [`Error::InvalidArgument`] instead of allocating a KV cache
    /// larger than the memory the system says is available (Linux: `MemAvailable`, within the
    /// cgroup's limit; elsewhere only arithmetic overflow is caught).
    ///
    /// # Errors
    /// The cache for `capacity` positions does not fit.
    pub fn try_session(&self, capacity: Option<usize>) -> Result<Session> {
        let context = self.context_length();
        let capacity = capacity.unwrap_or(context).clamp(1, context);
        ensure_fits(self.kv_cache_bytes(capacity), || format!("a KV cache of {capacity} positions"))?;
        Ok(Session::new(self.clone(), capacity))
    }
}

impl Session {
    pub(crate) fn new(model: Model, capacity: usize) -> Session {
        let cache = model.llama().new_cache(capacity);
        Session {
            model,
            cache,
            tokens: Vec::with_capacity(capacity),
            logits: None,
            spare: Vec::new(),
            cancel: CancelToken::default(),
            active: None,
            adapter: None,
        }
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

    /// Forgets the conversation (the cache memory is kept) and ends any generation in progress.
    pub fn reset(&mut self) {
        self.active = None;
        self.tokens.clear();
        self.cache.clear();
        self.drop_logits();
    }

    /// Rewinds the conversation to its first `len` tokens (no-op when it is not longer), e.g. to drop
    /// a stop sequence or retry a step. The cache keeps what it had of those tokens. Ends any
    /// generation in progress.
    pub fn truncate(&mut self, len: usize) {
        self.active = None;
        if len < self.tokens.len() {
            self.tokens.truncate(len);
            self.cache.truncate(len);
            self.drop_logits();
        }
    }

    /// An independent copy of this conversation (cache duplicated), e.g. to explore two continuations.
    ///
    /// # Panics
    /// When the copy does not fit in the memory available ([`Session::try_fork`] returns an error).
    pub fn fork(&self) -> Session {
        self.try_fork().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Session::fork`], failing with [`Error::InvalidArgument`] when a second cache does not fit in
    /// the memory the system says is available.
    ///
    /// # Errors
    /// Not enough memory for the copy.
    pub fn try_fork(&self) -> Result<Session> {
        let capacity = self.capacity();
        ensure_fits(self.model.kv_cache_bytes(capacity), || format!("a copy of a KV cache of {capacity} positions"))?;
        Ok(Session {
            model: self.model.clone(),
            cache: self.cache.clone(),
            tokens: self.tokens.clone(),
            logits: self.logits.clone(),
            spare: Vec::new(),
            cancel: CancelToken::default(),
            active: None,
            adapter: self.adapter.clone(),
        })
    }

    /// Applies `adapter` at `scale` (1.0: the adapter as trained, i.e. PEFT's `alpha / r` scaling) to
    /// this conversation from now on, or removes it (`None`). The tokens are kept; the attention cache
    /// is recomputed with the new weights on the next call (the cost of one prefill). Setting the same
    /// adapter and scale again changes nothing. Ends any generation in progress.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an adapter made for another model or a non-finite scale.
    pub fn set_adapter(&mut self, adapter: Option<(Adapter, f32)>) -> Result<()> {
        if let Some((a, scale)) = &adapter {
            a.check_model(&self.model)?;
            super::adapter::check_scale(*scale)?;
        }
        let same = match (&self.adapter, &adapter) {
            (None, None) => true,
            (Some((a, s)), Some((b, t))) => a.ptr_eq(b) && s == t,
            _ => false,
        };
        if !same {
            self.active = None;
            self.cache.clear();
            self.drop_logits();
            self.adapter = adapter;
        }
        Ok(())
    }

    /// The adapter applied to this conversation and its scale.
    pub fn adapter(&self) -> Option<(&Adapter, f32)> {
        self.adapter.as_ref().map(|(a, s)| (a, *s))
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

    /// [`Session::sync_chat`] with the model's own chat template.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the model has no chat template; as [`Session::sync_chat`].
    pub fn sync_model_chat(&mut self, messages: &[Message], add_generation_prompt: bool) -> Result<()> {
        let model = self.model().clone();
        self.sync_chat(model.own_template()?, messages, add_generation_prompt)
    }

    /// Brings the session to the conversation `messages` rendered with `template` (the generation
    /// prompt added when asked): the tokens it already holds that match are kept, the rest replaced.
    /// The template's own text may hold control tokens; every message's content is tokenized as plain
    /// text, so a user message holding `<|im_end|>` or `</s>` cannot end its turn or forge another.
    /// A chat calls it with the whole conversation before each reply.
    ///
    /// # Errors
    /// The template fails to render; the conversation does not fit the session.
    pub fn sync_chat(&mut self, template: &ChatTemplate, messages: &[Message], add_generation_prompt: bool) -> Result<()> {
        let ids = chat_tokens(template, self.model().tokenizer(), messages, add_generation_prompt)?;
        let common = self.tokens().iter().zip(&ids).take_while(|(a, b)| a == b).count();
        self.truncate(common);
        self.append_tokens(&ids[common..])
    }

    /// Appends token ids (validated against the vocabulary). They are processed lazily, by the next
    /// [`Session::generate`] or [`Session::prefill`]. Appending ends any generation in progress.
    pub fn append_tokens(&mut self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::InvalidArgument(format!("token id {id} is outside the vocabulary (size {vocab})")));
        }
        if self.tokens.len() + ids.len() > self.cache.capacity() {
            return Err(ModelError::ContextFull { used: self.tokens.len(), requested: ids.len(), capacity: self.cache.capacity() }.into());
        }
        if !ids.is_empty() {
            self.drop_logits();
            self.active = None;
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
            let (model, tokens, cache) = (&self.model, &self.tokens[from..to], &mut self.cache);
            let lora = lora_apply(&self.adapter);
            let mut buf = std::mem::take(&mut self.spare);
            model.compute(|| model.llama().forward_into(tokens, cache, Logits::Last, lora, &mut buf))?;
            self.logits = Some(buf);
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

    /// Forgets the current logits, keeping their buffer for the next forward pass.
    fn drop_logits(&mut self) {
        if let Some(v) = self.logits.take() {
            self.spare = v;
        }
    }

    /// After `process_pending`, every token is cached; if the last one was cached by an earlier call
    /// whose logits were since dropped, run it again to get them.
    fn recompute_last_logits(&mut self) -> Result<()> {
        if self.logits.is_none() && !self.tokens.is_empty() {
            let last = self.tokens.len() - 1;
            self.cache.truncate(last);
            let (model, tokens, cache) = (&self.model, &self.tokens[last..], &mut self.cache);
            let lora = lora_apply(&self.adapter);
            let mut buf = std::mem::take(&mut self.spare);
            model.compute(|| model.llama().forward_into(tokens, cache, Logits::Last, lora, &mut buf))?;
            self.logits = Some(buf);
        }
        Ok(())
    }

    /// Generates a continuation. `on_text` receives the text as it is produced, in whole UTF-8
    /// characters and never containing (part of) a stop string; returning `ControlFlow::Break(())` stops.
    ///
    /// Generated tokens stay in the conversation (the last one is processed by the next call).
    /// This is [`Session::generate_tokens`] with the tokens that release no text left out.
    ///
    /// # Errors
    /// Invalid sampling parameters, an empty conversation, model and tokenizer errors. Cancellation is
    /// not an error here: it ends generation with [`FinishReason::Cancelled`].
    pub fn generate(&mut self, params: &GenerateParams, mut on_text: impl FnMut(&str) -> ControlFlow<()>) -> Result<Generation> {
        self.generate_tokens(params, |_, text| if text.is_empty() { ControlFlow::Continue(()) } else { on_text(text) })
    }

    /// Generates a continuation, calling `on_token` once per generated token with its id and the text
    /// it releases (whole UTF-8 characters, possibly empty while a character or a possible stop string
    /// is incomplete), then once with `None` and the text held back to the end, if any (its return
    /// value is then ignored). Returning `ControlFlow::Break(())` stops: the generation finishes with
    /// [`FinishReason::Callback`]. A loop over [`Session::begin`] / [`Session::next_token`] /
    /// [`Session::end`].
    ///
    /// # Errors
    /// As [`Session::generate`]; after an error no generation is in progress.
    pub fn generate_tokens(&mut self, params: &GenerateParams, mut on_token: impl FnMut(Option<u32>, &str) -> ControlFlow<()>) -> Result<Generation> {
        self.begin(params)?;
        loop {
            match self.next_token() {
                Ok(Step::Token { id, text }) => {
                    if on_token(Some(id), &text).is_break() {
                        if let Some(a) = self.active.as_mut() {
                            a.finish_without_flush(FinishReason::Callback);
                        }
                        break;
                    }
                }
                Ok(Step::Finished { text, .. }) => {
                    if !text.is_empty() {
                        let _ = on_token(None, &text);
                    }
                    break;
                }
                Err(e) => {
                    self.active = None;
                    return Err(e);
                }
            }
        }
        self.end().ok_or_else(|| Error::InvalidArgument("generation state lost".into()))
    }

    /// Starts a pull-style generation: call [`Session::next_token`] until it returns
    /// [`Step::Finished`], then [`Session::end`] for the statistics. Replaces any generation in progress.
    ///
    /// # Errors
    /// Invalid sampling parameters or an empty conversation (nothing is changed then).
    pub fn begin(&mut self, params: &GenerateParams) -> Result<()> {
        let sampler = Sampler::new(params.sampling.clone())?;
        if self.tokens.is_empty() {
            return Err(Error::InvalidArgument("nothing to continue: the session is empty".into()));
        }
        self.active = Some(Active {
            stops: StopMatcher::new(&params.stop),
            params: params.clone(),
            sampler,
            decoder: TextStream::default(),
            out: Generation {
                ids: vec![],
                text: String::new(),
                finish: FinishReason::Length,
                prefill_tokens: 0,
                prefill_time: Duration::ZERO,
                decode_tokens: 0,
                decode_time: Duration::ZERO,
            },
            prefilled: false,
            decode_start: None,
            finished: None,
        });
        Ok(())
    }

    /// Whether a generation started by [`Session::begin`] is in progress (not yet ended).
    pub fn is_generating(&self) -> bool {
        self.active.is_some()
    }

    /// Generates one token of the generation started by [`Session::begin`] (the first call also
    /// processes the pending prompt). After [`Step::Finished`], further calls return it again with no
    /// text.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no generation was begun; model and tokenizer errors (the
    /// generation stays begun, the conversation consistent).
    pub fn next_token(&mut self) -> Result<Step> {
        self.next_token_masked(|_| {})
    }

    /// [`Session::next_token`] with `mask` applied to the next-token logits before sampling (set a
    /// logit to `f32::NEG_INFINITY` to forbid its token): constrained decoding. `mask` is not called
    /// when the generation ends without sampling (length, cancellation, full context).
    ///
    /// # Errors
    /// As [`Session::next_token`]; [`Error::InvalidArgument`] when the mask forbids every token.
    pub fn next_token_masked(&mut self, mask: impl FnOnce(&mut [f32])) -> Result<Step> {
        let mut a = self.active.take().ok_or_else(|| Error::InvalidArgument("no generation in progress: call begin first".into()))?;
        let r = self.step(&mut a, mask);
        self.active = Some(a);
        r
    }

    /// Ends the generation started by [`Session::begin`] and returns what it produced; `None` when none
    /// was begun. A generation ended before [`Step::Finished`] reports [`FinishReason::Callback`].
    pub fn end(&mut self) -> Option<Generation> {
        let mut a = self.active.take()?;
        if a.finished.is_none() {
            a.finish_without_flush(FinishReason::Callback);
        }
        Some(a.out)
    }

    fn step(&mut self, a: &mut Active, mask: impl FnOnce(&mut [f32])) -> Result<Step> {
        if let Some(reason) = a.finished {
            return Ok(Step::Finished { reason, text: String::new() });
        }
        if !a.prefilled {
            let t0 = Instant::now();
            match self.process_pending() {
                Ok(n) => a.out.prefill_tokens = n,
                Err(Error::Cancelled) => return Ok(self.finish(a, FinishReason::Cancelled)),
                Err(e) => return Err(e),
            }
            self.recompute_last_logits()?;
            a.out.prefill_time = t0.elapsed();
            a.prefilled = true;
            a.decode_start = Some(Instant::now());
        }
        if a.out.ids.len() >= a.params.max_tokens {
            return Ok(self.finish(a, FinishReason::Length));
        }
        if self.cancel.is_cancelled() {
            self.cancel.reset();
            return Ok(self.finish(a, FinishReason::Cancelled));
        }
        if !a.out.ids.is_empty() {
            if self.tokens.len() >= self.cache.capacity() {
                return Ok(self.finish(a, FinishReason::ContextFull));
            }
            match self.process_pending() {
                Ok(_) => a.out.decode_tokens += 1,
                Err(Error::Cancelled) => return Ok(self.finish(a, FinishReason::Cancelled)),
                Err(e) => return Err(e),
            }
        }
        let Some(logits) = self.logits.as_mut() else {
            return Err(Error::InvalidArgument("no logits available".into()));
        };
        mask(logits);
        if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
            return Err(Error::InvalidArgument("the logit mask forbids every token".into()));
        }
        let id = a.sampler.sample(logits, &self.tokens);
        if self.tokens.len() >= self.cache.capacity() {
            return Ok(self.finish(a, FinishReason::ContextFull));
        }
        self.tokens.push(id);
        self.drop_logits();
        a.out.ids.push(id);
        if !a.params.ignore_eos && self.model.tokenizer().eos_ids().contains(&id) {
            // The EOS token itself has no text; what the stop matcher held back is released with it.
            let text = match self.finish(a, FinishReason::Eos) {
                Step::Finished { text, .. } | Step::Token { text, .. } => text,
            };
            return Ok(Step::Token { id, text });
        }
        let mut text = String::new();
        if let Some(piece) = a.decoder.step(self.model.tokenizer(), id)? {
            let r = a.stops.push(&piece);
            text = r.emit;
            a.out.text.push_str(&text);
            if let Some(i) = r.stopped {
                a.finish_without_flush(FinishReason::Stop(i));
            }
        }
        Ok(Step::Token { id, text })
    }

    /// Ends `a` with `reason`, releasing text the stop matcher held back (unless it completes a stop
    /// string, which then becomes the reason).
    fn finish(&mut self, a: &mut Active, reason: FinishReason) -> Step {
        let mut tail = a.stops.push("");
        let reason = match tail.stopped {
            Some(i) => FinishReason::Stop(i),
            None => {
                tail.emit.push_str(&a.stops.finish());
                reason
            }
        };
        a.out.text.push_str(&tail.emit);
        a.finish_without_flush(reason);
        Step::Finished { reason, text: tail.emit }
    }
}

/// One step of a pull-style generation ([`Session::next_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A token was generated. `text` is the text it completes: whole characters, possibly empty (an
    /// incomplete character, a special token, or text held back while it might begin a stop string).
    Token {
        /// The token id (now part of the conversation).
        id: u32,
        /// Text released by this token.
        text: String,
    },
    /// Generation has ended; `text` is held-back text released at the end (usually empty).
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Text released at the end.
        text: String,
    },
}

/// A generation in progress.
pub(super) struct Active {
    params: GenerateParams,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: TextStream,
    out: Generation,
    prefilled: bool,
    decode_start: Option<Instant>,
    finished: Option<FinishReason>,
}

impl Active {
    fn finish_without_flush(&mut self, reason: FinishReason) {
        self.out.finish = reason;
        self.out.decode_time = self.decode_start.map(|t| t.elapsed()).unwrap_or_default();
        self.finished = Some(reason);
    }
}

/// Tokens of `messages` rendered with `template`: the template's own text (role markers, turn ends)
/// is tokenized with its control tokens; every message's content as plain text.
///
/// # Errors
/// The template fails to render or drops a message's content.
pub fn chat_tokens(template: &ChatTemplate, tok: &Tokenizer, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
    let marked = marked_messages(messages);
    let text = template.render(&marked, add_generation_prompt)?;
    let mut ids = Vec::new();
    if tok.add_bos_by_default() {
        ids.extend(tok.bos_id());
    }
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    ids.extend(encode_marked(tok, &text, &contents)?);
    Ok(ids)
}

const CONTENT_OPEN: char = '\u{E000}';
const CONTENT_CLOSE: char = '\u{E001}';

/// `messages` with each content replaced by a marker naming its index, for [`encode_marked`].
pub(crate) fn marked_messages(messages: &[Message]) -> Vec<Message> {
    messages.iter().enumerate().map(|(i, m)| Message::new(m.role.as_str(), format!("{CONTENT_OPEN}{i}{CONTENT_CLOSE}"))).collect()
}

/// A piece of a chat rendered from [`marked_messages`], with where it starts in the rendered text.
enum Marked<'a> {
    /// A run of the template's own text.
    Template(&'a str, usize),
    /// A message's content (at its marker).
    Content(&'a str, usize),
}

/// Walks `text` rendered from [`marked_messages`], in order, calling `each` with every piece.
///
/// # Errors
/// A marker the template mangled; `each`'s errors.
fn walk_marked<'a>(text: &'a str, contents: &[&'a str], mut each: impl FnMut(Marked<'a>) -> Result<()>) -> Result<()> {
    let mangled = || Error::InvalidArgument("the chat template mangled a message".into());
    let mut at = 0;
    while let Some(open) = text[at..].find(CONTENT_OPEN).map(|o| at + o) {
        each(Marked::Template(&text[at..open], at))?;
        let after = open + CONTENT_OPEN.len_utf8();
        let close = text[after..].find(CONTENT_CLOSE).map(|c| after + c).ok_or_else(mangled)?;
        let i: usize = text[after..close].parse().map_err(|_| mangled())?;
        each(Marked::Content(contents.get(i).ok_or_else(mangled)?, open))?;
        at = close + CONTENT_CLOSE.len_utf8();
    }
    if text[at..].contains(CONTENT_CLOSE) {
        return Err(mangled());
    }
    each(Marked::Template(&text[at..], at))
}

/// Tokens of `text` rendered from [`marked_messages`]: the text between markers with its control
/// tokens, each marker replaced by `contents[i]` tokenized as plain text. No BOS is added.
///
/// # Errors
/// A marker the template mangled; tokenizer errors.
pub(crate) fn encode_marked(tok: &Tokenizer, text: &str, contents: &[&str]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    walk_marked(text, contents, |piece| {
        ids.extend(match piece {
            Marked::Template(t, _) => tok.encode(t, false)?,
            Marked::Content(c, _) => tok.encode_plain(c)?,
        });
        Ok(())
    })?;
    Ok(ids)
}

/// [`encode_marked`] plus where each token starts in `text` (a content's tokens all start at its
/// marker). Slower (the tokenizer computes offsets): for training data, not for prompts.
///
/// # Errors
/// As [`encode_marked`].
pub(crate) fn encode_marked_with_offsets(tok: &Tokenizer, text: &str, contents: &[&str]) -> Result<(Vec<u32>, Vec<usize>)> {
    let (mut ids, mut starts) = (Vec::new(), Vec::new());
    walk_marked(text, contents, |piece| {
        match piece {
            Marked::Template(t, at) => {
                let (p, offsets) = tok.encode_with_offsets(t, false)?;
                starts.extend(offsets.iter().map(|&(a, _)| at + a));
                ids.extend(p);
            }
            Marked::Content(c, at) => {
                let plain = tok.encode_plain(c)?;
                starts.extend(std::iter::repeat_n(at, plain.len()));
                ids.extend(plain);
            }
        }
        Ok(())
    })?;
    Ok((ids, starts))
}
