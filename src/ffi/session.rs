//! `agentlm_session`: one conversation and its KV cache: appending, generation (push and pull),
//! state save and restore.

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;
use std::ptr;
use std::sync::Mutex;

use super::agentlm_status::*;
use super::handles::{handle, lock};
use super::log::LogSink;
use super::model::agentlm_model;
use super::registry::{self, Users};
use super::types::{agentlm_finish_reason, finish_code};
use super::util::{self, boundary, messages_arg, opt_out, read_params, slice_arg, str_arg, write_opt, write_out, Fail};
use super::{agentlm_error, agentlm_message, agentlm_status, agentlm_str, AGENTLM_TOKEN_NONE};
use crate::generate::{CancelToken, SamplingParams};
use crate::runtime::session::{FinishReason, GenerateParams, Session, Step};

/// A session (opaque): one conversation and its KV cache. One caller at a time; `agentlm_session_cancel`
/// may be called from any thread.
pub struct agentlm_session {
    pub(crate) cancel: CancelToken,
    pub(crate) capacity: usize,
    state: Mutex<SessionState>,
    users: Users,
}

handle!(agentlm_session: Session, cancel = cancel, state = SessionState, repair = |st: &mut SessionState| {
    st.session.end();
});

/// What a session call works on, behind the session's lock.
pub(crate) struct SessionState {
    pub session: Session,
    /// The text of the last `agentlm_token`, NUL-terminated (borrowed by the caller until the next call).
    pub text: Vec<u8>,
    pub log: Option<LogSink>,
}

impl agentlm_session {
    pub(crate) fn new_raw(session: Session, log: Option<LogSink>) -> *mut agentlm_session {
        let s = agentlm_session {
            cancel: session.cancel_token(),
            capacity: session.capacity(),
            state: Mutex::new(SessionState { session, text: vec![0], log }),
            users: Users::default(),
        };
        registry::register(s)
    }
}

/// Streaming callback of [`agentlm_session_generate`]: one call per generated token with the text it
/// completes (`text_len` bytes of whole UTF-8 characters, NUL-terminated, possibly empty; valid only
/// during the call), and a final call with `token == AGENTLM_TOKEN_NONE` if text was held back until the
/// end. Return `false` to stop generating. Called on the thread that called generate.
pub type agentlm_token_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, token: u32, text: *const c_char, text_len: usize) -> bool>;

/// Parameters of [`agentlm_session_new`]. Initialise with [`agentlm_session_params_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_session_params {
    /// `sizeof(agentlm_session_params)`.
    pub struct_size: u32,
    /// Tokens the session can hold (its KV cache is allocated up front); 0 = the model's context length.
    pub capacity: u32,
}

/// Parameters of a generation. Initialise with [`agentlm_generate_params_default`] (greedy, 256 tokens).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_generate_params {
    /// `sizeof(agentlm_generate_params)`.
    pub struct_size: u32,
    /// Most new tokens.
    pub max_tokens: u32,
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: u32,
    /// Nucleus sampling threshold in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely; 0 disables.
    pub min_p: f32,
    /// transformers' repetition penalty; 1 disables.
    pub repetition_penalty: f32,
    /// Random seed: same seed + same input = same output.
    pub seed: u64,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Stop strings (`n_stop` of them; may be NULL when 0). Copied; need not outlive the call.
    pub stop: *const agentlm_str,
    /// Number of stop strings.
    pub n_stop: usize,
}

/// Statistics of a finished generation.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct agentlm_generation {
    /// Tokens generated (including a final EOS token).
    pub n_tokens: u32,
    /// An `agentlm_finish_reason` value.
    pub finish_reason: i32,
    /// With `AGENTLM_FINISH_STOP`: which stop string; otherwise -1.
    pub stop_index: i32,
    /// Prompt tokens processed before the first new token.
    pub prefill_tokens: u32,
    /// Prefill throughput, tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Decode throughput, tokens per second.
    pub decode_tokens_per_s: f64,
}

/// One step of a pull-style generation ([`agentlm_session_next_token`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_token {
    /// The token generated, or `AGENTLM_TOKEN_NONE` at the end.
    pub id: u32,
    /// An `agentlm_finish_reason`: `AGENTLM_FINISH_NONE` while generating.
    pub finish_reason: i32,
    /// Text this step released: `text_len` bytes of whole UTF-8 characters, NUL-terminated, possibly
    /// empty. Owned by the session; valid until the next call on it.
    pub text: *const c_char,
    /// Length of `text` in bytes (excluding the NUL).
    pub text_len: usize,
}

/// Default session parameters: capacity = the model's context length.
#[no_mangle]
pub extern "C" fn agentlm_session_params_default() -> agentlm_session_params {
    agentlm_session_params { struct_size: std::mem::size_of::<agentlm_session_params>() as u32, capacity: 0 }
}

/// Default generation parameters: greedy, 256 tokens, no stop strings, stop at EOS.
#[no_mangle]
pub extern "C" fn agentlm_generate_params_default() -> agentlm_generate_params {
    let s = SamplingParams::greedy();
    agentlm_generate_params {
        struct_size: std::mem::size_of::<agentlm_generate_params>() as u32,
        max_tokens: 256,
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        ignore_eos: false,
        stop: ptr::null(),
        n_stop: 0,
    }
}

/// Creates a session (one conversation with its own KV cache) on `model`; `params` may be NULL. The
/// session holds a reference to the model. Free with [`agentlm_session_free`].
///
/// A session is used by one thread at a time (a second concurrent call gets `AGENTLM_STATUS_BUSY`);
/// only [`agentlm_session_cancel`] may be called from another thread while it works. Different
/// sessions, even on one model, run in parallel.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_new(
    model: *const agentlm_model,
    params: *const agentlm_session_params,
    out: *mut *mut agentlm_session,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let p = read_params(params, agentlm_session_params_default())?;
        let out = opt_out(out, "out")?;
        let session = m.model.try_session((p.capacity > 0).then_some(p.capacity as usize))?;
        write_out(out, agentlm_session::new_raw(session, m.log.clone()));
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Frees a session. `NULL` is a no-op, and so is a pointer that is not a live session (a second free).
/// Freed from inside one of the session's own callbacks, the running call is cancelled and the session
/// is released when it returns; any other call on the freed handle gets `AGENTLM_STATUS_INVALID_HANDLE`.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_free(session: *mut agentlm_session) {
    util::catch_or((), || {
        registry::release(session);
    });
}

/// Tokens the session can hold. 0 for NULL or a pointer that is not a live session. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_capacity(session: *const agentlm_session) -> u32 {
    util::catch_or(0, || registry::pin(session, "session").map_or(0, |s| s.capacity as u32))
}

/// Appends trusted text (a prompt, a rendered chat template): special-token strings in it become
/// control tokens; BOS is prepended to an empty conversation when the model asks for it. Tokens are
/// processed lazily by the next generation. Ends any generation in progress.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_append_text(
    session: *const agentlm_session,
    text: *const c_char,
    text_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let text = str_arg(text, text_len, "text")?;
        lock(session, |st| Ok(st.session.append_text(text)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Brings the session to the conversation `messages` (the whole chat so far) rendered with the
/// model's own chat template, `add_generation_prompt` appending the assistant header: the tokens the
/// session already holds that match are kept (a chat re-sends its history and only the new turn is
/// processed), the rest replaced. The template's own text keeps its control tokens; every message's
/// content is tokenized as plain text, so a user message holding `<|im_end|>` cannot end its turn or
/// forge another. Ends any generation in progress.
///
/// Errors: `INVALID_ARGUMENT` when the model has no template, `TEMPLATE`, `INVALID_UTF8`,
/// `CONTEXT_FULL`.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_sync_chat(
    session: *const agentlm_session,
    messages: *const agentlm_message,
    n_messages: usize,
    add_generation_prompt: bool,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let list = messages_arg(messages, n_messages)?;
        lock(session, |st| Ok(st.session.sync_model_chat(&list, add_generation_prompt)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Appends untrusted text (tool output, user input): special-token strings such as `</s>` or
/// `<|im_end|>` are tokenized as plain text and can never become control tokens.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_append_untrusted_text(
    session: *const agentlm_session,
    text: *const c_char,
    text_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let text = str_arg(text, text_len, "text")?;
        lock(session, |st| Ok(st.session.append_untrusted_text(text)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Appends `n_ids` token ids (checked against the vocabulary and the capacity).
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_append_tokens(
    session: *const agentlm_session,
    ids: *const u32,
    n_ids: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let ids = slice_arg(ids, n_ids, "ids")?;
        lock(session, |st| Ok(st.session.append_tokens(ids)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Copies the conversation's tokens into `ids` (room for `capacity`; NULL allowed when 0). `*n_ids`
/// receives the count; `AGENTLM_STATUS_BUFFER_TOO_SMALL` when they do not fit.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_tokens(
    session: *const agentlm_session,
    ids: *mut u32,
    capacity: usize,
    n_ids: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let n_ids = opt_out(n_ids, "n_ids")?;
        lock(session, |st| util::copy_out(st.session.tokens(), ids, capacity, n_ids))
    })
}

/// Forgets the conversation (the cache memory is kept).
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_reset(session: *const agentlm_session, err: *mut *mut agentlm_error) -> agentlm_status {
    boundary(err, || {
        lock(session, |st| {
            st.session.reset();
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Rewinds the conversation to its first `n_tokens` tokens (no-op when not longer).
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_truncate(session: *const agentlm_session, n_tokens: usize, err: *mut *mut agentlm_error) -> agentlm_status {
    boundary(err, || {
        lock(session, |st| {
            st.session.truncate(n_tokens);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// An independent copy of the conversation (tokens and cache), e.g. to explore two continuations.
/// Free with [`agentlm_session_free`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_fork(session: *const agentlm_session, out: *mut *mut agentlm_session, err: *mut *mut agentlm_error) -> agentlm_status {
    boundary(err, || {
        let out = opt_out(out, "out")?;
        let copy = lock(session, |st| Ok(agentlm_session::new_raw(st.session.try_fork()?, st.log.clone())))?;
        write_out(out, copy);
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Requests cancellation of the session's running (or next) prefill or generation; it stops at the next
/// token or prefill chunk with the state consistent. The one call that may be made from another thread
/// while the session is busy. Returns `AGENTLM_STATUS_NULL_POINTER` for NULL,
/// `AGENTLM_STATUS_INVALID_HANDLE` for a pointer that is not a live session.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_cancel(session: *const agentlm_session) -> agentlm_status {
    boundary(ptr::null_mut(), || {
        registry::pin(session, "session")?.cancel.cancel();
        Ok(AGENTLM_STATUS_OK)
    })
}

fn generate_params(p: &agentlm_generate_params) -> Result<GenerateParams, Fail> {
    let stop = util::strs_arg(p.stop, p.n_stop, "stop", "stop string", true)?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        repetition_window: 0,
        seed: p.seed,
    };
    sampling.validate().map_err(crate::Error::from)?;
    Ok(GenerateParams { sampling, max_tokens: p.max_tokens as usize, stop, ignore_eos: p.ignore_eos })
}

fn generation_out(g: &crate::Generation) -> agentlm_generation {
    let (finish_reason, stop_index) = finish_code(g.finish);
    agentlm_generation {
        n_tokens: g.ids.len() as u32,
        finish_reason,
        stop_index,
        prefill_tokens: g.prefill_tokens as u32,
        prefill_tokens_per_s: g.prefill_tokens_per_s(),
        decode_tokens_per_s: g.decode_tokens_per_s(),
    }
}

/// Generates a continuation of the conversation, calling `on_token` (may be NULL) for every token.
/// `params` may be NULL (defaults); `result` (may be NULL) receives the statistics.
///
/// Returns `AGENTLM_STATUS_OK` when the generation ended on its own (EOS, stop string, max tokens,
/// full context: see `result->finish_reason`), `AGENTLM_STATUS_STOPPED` when `on_token` returned false,
/// `AGENTLM_STATUS_CANCELLED` after [`agentlm_session_cancel`]. Generated tokens stay in the conversation.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_generate(
    session: *const agentlm_session,
    params: *const agentlm_generate_params,
    on_token: agentlm_token_fn,
    user_data: *mut c_void,
    result: *mut agentlm_generation,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let p = read_params(params, agentlm_generate_params_default())?;
        let gp = generate_params(&p)?;
        lock(session, |st| {
            let mut piece = Vec::new();
            let g = st.session.generate_tokens(&gp, |id, text| {
                let Some(f) = on_token else { return ControlFlow::Continue(()) };
                piece.clear();
                piece.extend_from_slice(text.as_bytes());
                piece.push(0);
                // SAFETY: the host's callback, called as its typedef documents: `text` is `text_len` bytes
                // and a NUL, valid during the call; `user_data` is the host's own.
                let go_on = unsafe { f(user_data, id.unwrap_or(AGENTLM_TOKEN_NONE), piece.as_ptr().cast(), text.len()) };
                if go_on {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            })?;
            write_opt(result, generation_out(&g));
            Ok(match g.finish {
                FinishReason::Cancelled => AGENTLM_STATUS_CANCELLED,
                FinishReason::Callback => AGENTLM_STATUS_STOPPED,
                _ => AGENTLM_STATUS_OK,
            })
        })
    })
}

/// Starts a pull-style generation: call [`agentlm_session_next_token`] until it returns
/// `AGENTLM_STATUS_DONE` (or `CANCELLED`), then optionally [`agentlm_session_end`]. `params` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_begin(
    session: *const agentlm_session,
    params: *const agentlm_generate_params,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let p = read_params(params, agentlm_generate_params_default())?;
        let gp = generate_params(&p)?;
        lock(session, |st| Ok(st.session.begin(&gp)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Generates one token of the generation started by [`agentlm_session_begin`] into `*token` (its text
/// stays valid until the next call on the session). Returns `AGENTLM_STATUS_OK` for a token,
/// `AGENTLM_STATUS_DONE` at the end (`token->id == AGENTLM_TOKEN_NONE`, `token->finish_reason` set,
/// `token->text` any held-back text), `AGENTLM_STATUS_CANCELLED` when cancelled. Calls after the end
/// return `DONE` again. `INVALID_ARGUMENT` when no generation was begun.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_next_token(
    session: *const agentlm_session,
    token: *mut agentlm_token,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let token = opt_out(token, "token")?;
        lock(session, |st: &mut SessionState| {
            let step = st.session.next_token()?;
            let (id, reason, text, status) = match step {
                Step::Token { id, text } => (id, agentlm_finish_reason::AGENTLM_FINISH_NONE as i32, text, AGENTLM_STATUS_OK),
                Step::Finished { reason, text } => {
                    let status = if reason == FinishReason::Cancelled { AGENTLM_STATUS_CANCELLED } else { AGENTLM_STATUS_DONE };
                    (AGENTLM_TOKEN_NONE, finish_code(reason).0, text, status)
                }
            };
            st.text.clear();
            st.text.extend_from_slice(text.as_bytes());
            st.text.push(0);
            write_out(token, agentlm_token { id, finish_reason: reason, text: st.text.as_ptr().cast(), text_len: text.len() });
            Ok(status)
        })
    })
}

/// Ends the generation begun with [`agentlm_session_begin`] (early, or after `DONE`) and stores its
/// statistics in `*result` (may be NULL). `INVALID_ARGUMENT` when none was begun.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_end(session: *const agentlm_session, result: *mut agentlm_generation, err: *mut *mut agentlm_error) -> agentlm_status {
    boundary(err, || {
        lock(session, |st| {
            let g = st.session.end().ok_or_else(|| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, "no generation in progress"))?;
            write_opt(result, generation_out(&g));
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Serialises the conversation (tokens, attention cache, pending logits) into `buf` (`capacity` bytes;
/// NULL allowed when 0). `*size` receives the size; `AGENTLM_STATUS_BUFFER_TOO_SMALL` when it does not
/// fit. Restore with [`agentlm_session_load_state`] on a session of the same model.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_save_state(
    session: *const agentlm_session,
    buf: *mut u8,
    capacity: usize,
    size: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let size = opt_out(size, "size")?;
        lock(session, |st| {
            let bytes = st.session.save_state()?;
            util::copy_out(&bytes, buf, capacity, size)
        })
    })
}

/// Replaces the conversation with state saved by [`agentlm_session_save_state`] (`len` bytes). On
/// error (`STATE`: malformed, truncated or another model's) the session is unchanged.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_load_state(
    session: *const agentlm_session,
    buf: *const u8,
    len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let bytes = slice_arg(buf, len, "buf")?;
        lock(session, |st| Ok(st.session.load_state(bytes)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// [`agentlm_session_save_state`] to a file (`path_len` bytes of UTF-8), written atomically.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_save_file(
    session: *const agentlm_session,
    path: *const c_char,
    path_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let path = str_arg(path, path_len, "path")?;
        lock(session, |st| Ok(st.session.save_state_file(path)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// [`agentlm_session_load_state`] from a file written by [`agentlm_session_save_file`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_load_file(
    session: *const agentlm_session,
    path: *const c_char,
    path_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let path = str_arg(path, path_len, "path")?;
        lock(session, |st| Ok(st.session.load_state_file(path)?)).map(|_| AGENTLM_STATUS_OK)
    })
}
