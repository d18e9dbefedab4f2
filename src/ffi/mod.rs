//! The C ABI (`include/agentlm.h`, generated from this module by cbindgen): a thin layer over the
//! safe Rust API. Nothing else in the crate says `extern "C"`.
//!
//! Conventions (see `docs/c-api.md`):
//! - every fallible function returns an [`agentlm_status`] (0 ok, > 0 flow control, < 0 error; numbers are
//!   never reused) and, when `err` is not NULL and the call fails, stores a new [`agentlm_error`] in `*err`
//!   that the caller frees with [`agentlm_error_free`];
//! - every body runs inside [`boundary`]: a Rust panic becomes `AGENTLM_STATUS_PANIC`, never an unwind
//!   into C;
//! - strings are `(pointer, length)` pairs of UTF-8, validated; enums arrive as integers and are range
//!   checked; parameter structs start with `struct_size` and come from `agentlm_*_params_default()`;
//! - out-parameters are written only on success (and, for buffers, the needed size on
//!   `AGENTLM_STATUS_BUFFER_TOO_SMALL`).

#![allow(non_camel_case_types)]
// The safety contract of every function is in its C documentation.
#![allow(clippy::missing_safety_doc)]

mod agent;
mod handles;
mod log;
mod registry;
mod train;
mod types;
mod util;

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;
use std::ptr;

use crate::generate::SamplingParams;
use crate::runtime::session::{FinishReason, GenerateParams, Step};
use crate::runtime::{LoadOptions, Model};
use crate::template::Message;
use crate::Backend;

pub use agent::*;
use agentlm_status::*;
pub use handles::{agentlm_model, agentlm_session};
use handles::{lock, SessionState};
pub use log::agentlm_log_fn;
use log::LogSink;
use registry::{Kind, Tracked, Users};
pub use train::*;
pub use types::*;
use types::{finish_code, status_string};
use util::{boundary, opt_out, read_params, slice_arg, str_arg, write_opt, write_out, Fail};

/// Major version of this library (semantic versioning; before 1.0 minor versions may break the ABI).
pub const AGENTLM_VERSION_MAJOR: u32 = 0;
/// Minor version of this library.
pub const AGENTLM_VERSION_MINOR: u32 = 1;
/// Patch version of this library.
pub const AGENTLM_VERSION_PATCH: u32 = 0;
/// Version of the C ABI described by this header; bumped on every incompatible change.
pub const AGENTLM_ABI_VERSION: u32 = 3;
/// The `id` of an [`agentlm_token`] that carries no token (the end of a generation).
pub const AGENTLM_TOKEN_NONE: u32 = 0xFFFF_FFFF;
/// [`agentlm_model_tokenize`] flag: prepend the BOS token when the model's tokenizer asks for it.
pub const AGENTLM_TOKENIZE_ADD_BOS: u32 = 1;
/// [`agentlm_model_tokenize`] flag: special-token strings in the text (`</s>`, `<|im_end|>`) become their
/// ids. Without it they are tokenized as plain text (safe for untrusted text).
pub const AGENTLM_TOKENIZE_PARSE_SPECIAL: u32 = 2;

/// An error: a status and a message. Created by the library, freed by the caller with
/// [`agentlm_error_free`] (a second free is detected and ignored). Safe to read from any thread.
pub struct agentlm_error {
    status: agentlm_status,
    message: std::ffi::CString,
    users: Users,
}

impl agentlm_error {
    pub(crate) fn new_raw(status: agentlm_status, message: std::ffi::CString) -> *mut agentlm_error {
        registry::register(agentlm_error { status, message, users: Users::default() })
    }
}

impl Tracked for agentlm_error {
    const KIND: Kind = Kind::Error;
    fn users(&self) -> &Users {
        &self.users
    }
}

/// A borrowed UTF-8 string: `len` bytes at `ptr` (no terminating NUL needed). `ptr` may be NULL when
/// `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_str {
    /// First byte.
    pub ptr: *const c_char,
    /// Length in bytes.
    pub len: usize,
}

/// One chat message for [`agentlm_model_apply_chat_template`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_message {
    /// `system`, `user`, `assistant`, or any role the template knows.
    pub role: agentlm_str,
    /// The text.
    pub content: agentlm_str,
}

/// Load progress: `fraction` goes from 0 to 1. Return `false` to abort loading
/// (`AGENTLM_STATUS_ABORTED`). Called on the thread that called [`agentlm_model_load`].
pub type agentlm_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, fraction: f32) -> bool>;

/// Streaming callback of [`agentlm_session_generate`]: one call per generated token with the text it
/// completes (`text_len` bytes of whole UTF-8 characters, NUL-terminated, possibly empty; valid only
/// during the call), and a final call with `token == AGENTLM_TOKEN_NONE` if text was held back until the
/// end. Return `false` to stop generating. Called on the thread that called generate.
pub type agentlm_token_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, token: u32, text: *const c_char, text_len: usize) -> bool>;

/// Parameters of [`agentlm_model_load`]. Initialise with [`agentlm_model_params_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_model_params {
    /// `sizeof(agentlm_model_params)`; set by the default initializer.
    pub struct_size: u32,
    /// An `agentlm_backend` value (default CPU).
    pub backend: i32,
    /// CPU threads for this model's computations; 0 uses the process-wide pool (one thread per core,
    /// or `RAYON_NUM_THREADS`).
    pub n_threads: u32,
    /// Cap on the context length (tokens per session); 0 uses the model's trained context.
    pub max_context: u32,
    /// Progress callback, or NULL.
    pub progress: agentlm_progress_fn,
    /// Passed to `progress`.
    pub progress_user_data: *mut c_void,
    /// Log callback for messages about this model and its sessions, or NULL.
    pub log: agentlm_log_fn,
    /// Passed to `log`.
    pub log_user_data: *mut c_void,
    /// Most verbose `agentlm_log_level` forwarded to `log` (default `AGENTLM_LOG_WARN`).
    pub log_level: i32,
    /// An `agentlm_precision` value (default `AGENTLM_PRECISION_AUTO`).
    pub precision: i32,
    /// Non-zero: read the model files into private memory instead of mapping them while loading, so
    /// a file changed or truncated on disk meanwhile cannot fault the process (default 0).
    pub copy_file: u32,
}

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

// ---------------------------------------------------------------------------------------------------
// Versions, statuses, errors
// ---------------------------------------------------------------------------------------------------

/// The library version, e.g. `"0.1.0"` (static string). Thread-safe.
#[no_mangle]
pub extern "C" fn agentlm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The C ABI version the library was built with (`AGENTLM_ABI_VERSION` of its header). Compare with the
/// macro to detect a header/library mismatch. Thread-safe.
#[no_mangle]
pub extern "C" fn agentlm_abi_version() -> u32 {
    AGENTLM_ABI_VERSION
}

/// A static, NUL-terminated description of a status code (`"unknown status"` for unknown values).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn agentlm_status_string(status: i32) -> *const c_char {
    status_string(status).as_ptr()
}

/// The error's message: NUL-terminated UTF-8, owned by the error, valid until [`agentlm_error_free`].
/// Returns `""` for NULL, and a static message saying so for a pointer that is not a live error
/// (already freed, or never returned by this library).
#[no_mangle]
pub unsafe extern "C" fn agentlm_error_message(error: *const agentlm_error) -> *const c_char {
    if error.is_null() {
        return c"".as_ptr();
    }
    util::catch_or(c"".as_ptr(), || match registry::pin(error, "error") {
        Ok(e) => e.message.as_ptr(),
        Err(_) => c"invalid agentlm_error handle: already freed, or never returned by this library".as_ptr(),
    })
}

/// The error's status code (`AGENTLM_STATUS_OK` for NULL, `AGENTLM_STATUS_INVALID_HANDLE` for a pointer
/// that is not a live error).
#[no_mangle]
pub unsafe extern "C" fn agentlm_error_status(error: *const agentlm_error) -> agentlm_status {
    if error.is_null() {
        return AGENTLM_STATUS_OK;
    }
    util::catch_or(AGENTLM_STATUS_PANIC, || registry::pin(error, "error").map_or_else(|f| f.status, |e| e.status))
}

/// Frees an error. `NULL` is a no-op, and so is a pointer that is not a live error (a second free).
#[no_mangle]
pub unsafe extern "C" fn agentlm_error_free(error: *mut agentlm_error) {
    util::catch_or((), || {
        registry::release(error);
    });
}

/// Whether `backend` (an `agentlm_backend` value) is compiled into this library. Thread-safe.
#[no_mangle]
pub extern "C" fn agentlm_backend_is_compiled(backend: i32) -> bool {
    agentlm_backend::try_from(backend).is_ok_and(|b| Backend::from(b).is_compiled())
}

// ---------------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------------

/// Default model parameters: CPU, all cores, the model's context, no callbacks, warnings logged.
#[no_mangle]
pub extern "C" fn agentlm_model_params_default() -> agentlm_model_params {
    agentlm_model_params {
        struct_size: std::mem::size_of::<agentlm_model_params>() as u32,
        backend: agentlm_backend::AGENTLM_BACKEND_CPU as i32,
        n_threads: 0,
        max_context: 0,
        progress: None,
        progress_user_data: ptr::null_mut(),
        log: None,
        log_user_data: ptr::null_mut(),
        log_level: agentlm_log_level::AGENTLM_LOG_WARN as i32,
        precision: agentlm_precision::AGENTLM_PRECISION_AUTO as i32,
        copy_file: 0,
    }
}

/// Loads a model: a GGUF file or a Hugging Face directory (`config.json`, safetensors,
/// `tokenizer.json`), detected from the path. `path` is `path_len` bytes of UTF-8. `params` may be NULL
/// (defaults). On success stores a new handle in `*out` (free with [`agentlm_model_free`]).
///
/// The model is immutable and thread-safe: any number of threads may use it and its sessions at once.
///
/// Errors: `NULL_POINTER`, `INVALID_UTF8`, `STRUCT_SIZE`, `INVALID_ARGUMENT` (bad backend or sizes),
/// `IO`, `FORMAT`, `UNSUPPORTED`, `TOKENIZER`, `TEMPLATE`, `MODEL`, `BACKEND`, `ABORTED`.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_load(
    path: *const c_char,
    path_len: usize,
    params: *const agentlm_model_params,
    out: *mut *mut agentlm_model,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let path = str_arg(path, path_len, "path")?;
        let p = read_params(params, agentlm_model_params_default())?;
        let out = opt_out(out, "out")?;
        let backend = Backend::from(agentlm_backend::try_from(p.backend)?);
        let precision = crate::Precision::from(agentlm_precision::try_from(p.precision)?);
        let log = LogSink::new(p.log, p.log_user_data, p.log_level)?;
        let progress = p.progress.map(|f| {
            let user = util::SendPtr(p.progress_user_data);
            std::sync::Arc::new(move |fraction: f32| {
                let user = &user;
                // SAFETY: the host's callback, called as its typedef documents, on the loading thread.
                unsafe { f(user.0, fraction) }
            }) as crate::runtime::ProgressFn
        });
        let options = LoadOptions {
            backend,
            max_context: (p.max_context > 0).then_some(p.max_context as usize),
            threads: (p.n_threads > 0).then_some(p.n_threads as usize),
            progress,
            precision,
            copy_file: p.copy_file != 0,
        };
        let model = log::with_sink(log.as_ref(), || Model::load(path, &options))?;
        write_out(out, agentlm_model::new_raw(model, log));
        Ok(AGENTLM_STATUS_OK)
    })
}

/// A new reference to the same model (reference counted; free each with [`agentlm_model_free`]).
/// Returns NULL for NULL or a pointer that is not a live model. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_retain(model: *const agentlm_model) -> *mut agentlm_model {
    util::catch_or(ptr::null_mut(), || match registry::pin(model, "model") {
        Ok(m) => agentlm_model::new_raw(m.model.clone(), m.log.clone()),
        Err(_) => ptr::null_mut(),
    })
}

/// Releases a model reference. Sessions keep their model alive, so a model may be freed while its
/// sessions are still in use. `NULL` is a no-op, and so is a pointer that is not a live model (a second
/// free).
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_free(model: *mut agentlm_model) {
    util::catch_or((), || {
        registry::release(model);
    });
}

/// Runs a query that cannot report errors on a live model; `fallback` for NULL or a dead handle.
fn model_query<T>(model: *const agentlm_model, fallback: T, f: impl FnOnce(&agentlm_model) -> T) -> T {
    util::catch_or(None, || registry::pin(model, "model").ok().map(|m| f(&m))).unwrap_or(fallback)
}

/// The architecture name (`"llama"`), a static string; `""` for NULL or a pointer that is not a live
/// model.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_architecture(model: *const agentlm_model) -> *const c_char {
    model_query(model, c"".as_ptr(), |_| c"llama".as_ptr())
}

/// Vocabulary size (number of token ids); 0 for NULL or a pointer that is not a live model.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_vocab_size(model: *const agentlm_model) -> u32 {
    model_query(model, 0, |m| m.model.config().vocab_size as u32)
}

/// Longest context a session can hold (after `max_context`); 0 for NULL or a pointer that is not a
/// live model.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_context_length(model: *const agentlm_model) -> u32 {
    model_query(model, 0, |m| m.model.context_length() as u32)
}

/// Whether the model ships a chat template; false for NULL or a pointer that is not a live model.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_has_chat_template(model: *const agentlm_model) -> bool {
    model_query(model, false, |m| m.model.chat_template().is_some())
}

/// The `agentlm_backend` the model runs on; -1 for NULL or a pointer that is not a live model.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_backend(model: *const agentlm_model) -> i32 {
    model_query(model, -1, |m| agentlm_backend::from(m.model.backend()) as i32)
}

/// Tokenizes `text_len` bytes of UTF-8 at `text` (`AGENTLM_TOKENIZE_*` flags) into `ids` (room for
/// `capacity` ids; may be NULL when 0). Stores the number of ids in `*n_ids`; when they do not fit,
/// returns `AGENTLM_STATUS_BUFFER_TOO_SMALL` with the needed count in `*n_ids` and `ids` untouched.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_tokenize(
    model: *const agentlm_model,
    text: *const c_char,
    text_len: usize,
    flags: u32,
    ids: *mut u32,
    capacity: usize,
    n_ids: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let text = str_arg(text, text_len, "text")?;
        let n_ids = opt_out(n_ids, "n_ids")?;
        if flags & !(AGENTLM_TOKENIZE_ADD_BOS | AGENTLM_TOKENIZE_PARSE_SPECIAL) != 0 {
            return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("unknown tokenize flags {flags:#x}")));
        }
        let tok = m.model.tokenizer();
        let add_bos = flags & AGENTLM_TOKENIZE_ADD_BOS != 0 && tok.add_bos_by_default();
        let mut v = if flags & AGENTLM_TOKENIZE_PARSE_SPECIAL != 0 { tok.encode(text, add_bos)? } else { tok.encode_plain(text)? };
        if add_bos && flags & AGENTLM_TOKENIZE_PARSE_SPECIAL == 0 {
            if let Some(bos) = tok.bos_id() {
                v.insert(0, bos);
            }
        }
        util::copy_out(&v, ids, capacity, n_ids)
    })
}

/// Detokenizes `n_ids` ids into `buf` (`capacity` bytes) as UTF-8 followed by a NUL; `*text_len`
/// receives the length without the NUL. When it does not fit, returns
/// `AGENTLM_STATUS_BUFFER_TOO_SMALL` with the needed size *including* the NUL in `*text_len`.
/// Special tokens are skipped when `skip_special`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_detokenize(
    model: *const agentlm_model,
    ids: *const u32,
    n_ids: usize,
    skip_special: bool,
    buf: *mut c_char,
    capacity: usize,
    text_len: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let ids = slice_arg(ids, n_ids, "ids")?;
        let text_len = opt_out(text_len, "text_len")?;
        let vocab = m.model.config().vocab_size;
        if let Some(id) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("token id {id} is outside the vocabulary (size {vocab})")));
        }
        let s = m.model.tokenizer().decode(ids, skip_special)?;
        util::copy_str_out(&s, buf, capacity, text_len)
    })
}

/// Renders `n_messages` messages with the model's own chat template (`add_generation_prompt` appends
/// the assistant header) into `buf` like [`agentlm_model_detokenize`]. Thread-safe.
///
/// Errors: `INVALID_ARGUMENT` when the model has no template, `TEMPLATE`, `INVALID_UTF8`, ...
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_apply_chat_template(
    model: *const agentlm_model,
    messages: *const agentlm_message,
    n_messages: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    capacity: usize,
    text_len: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let list = messages_arg(messages, n_messages)?;
        let text_len = opt_out(text_len, "text_len")?;
        let t = m.model.chat_template().ok_or_else(|| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, "the model has no chat template"))?;
        let s = t.render(&list, add_generation_prompt).map_err(crate::Error::from)?;
        util::copy_str_out(&s, buf, capacity, text_len)
    })
}

// ---------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------

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
        lock(session, |st| {
            let model = st.session.model().clone();
            let t = model.chat_template().ok_or_else(|| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, "the model has no chat template"))?;
            Ok(st.session.sync_chat(t, &list, add_generation_prompt)?)
        })
        .map(|_| AGENTLM_STATUS_OK)
    })
}

/// The C messages as owned messages (each role and content checked as UTF-8).
fn messages_arg(messages: *const agentlm_message, n_messages: usize) -> Result<Vec<Message>, Fail> {
    let msgs = slice_arg(messages, n_messages, "messages")?;
    let mut list = Vec::with_capacity(msgs.len());
    for (i, msg) in msgs.iter().enumerate() {
        let role = str_arg(msg.role.ptr, msg.role.len, "message role").map_err(|f| f.context(format!("message {i}")))?;
        let content = str_arg(msg.content.ptr, msg.content.len, "message content").map_err(|f| f.context(format!("message {i}")))?;
        list.push(Message::new(role, content));
    }
    Ok(list)
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

#[cfg(test)]
mod tests;
