//! `agentlm_model`: loading, queries, tokenization and chat templates.

use std::ffi::{c_char, c_void};
use std::ptr;

use super::agentlm_status::*;
use super::handles::handle;
use super::log::{self, LogSink};
use super::registry::{self, Users};
use super::types::{agentlm_backend, agentlm_log_level, agentlm_precision};
use super::util::{self, boundary, messages_arg, opt_out, read_params, slice_arg, str_arg, write_out, Fail};
use super::{agentlm_error, agentlm_log_fn, agentlm_message, agentlm_status, AGENTLM_TOKENIZE_ADD_BOS, AGENTLM_TOKENIZE_PARSE_SPECIAL};
use crate::runtime::{LoadOptions, Model};
use crate::tokenizer::EncodeOptions;
use crate::Backend;

/// A loaded model (opaque). Immutable and thread-safe; each handle is one reference.
pub struct agentlm_model {
    pub(crate) model: Model,
    pub(crate) log: Option<LogSink>,
    users: Users,
}

impl agentlm_model {
    /// A new registered handle.
    pub(crate) fn new_raw(model: Model, log: Option<LogSink>) -> *mut agentlm_model {
        registry::register(agentlm_model { model, log, users: Users::default() })
    }
}

handle!(agentlm_model: Model);

/// Load progress: `fraction` goes from 0 to 1. Return `false` to abort loading
/// (`AGENTLM_STATUS_ABORTED`). Called on the thread that called [`agentlm_model_load`].
pub type agentlm_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, fraction: f32) -> bool>;

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
            let user = util::UserData(p.progress_user_data);
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
        let options = EncodeOptions { add_bos: flags & AGENTLM_TOKENIZE_ADD_BOS != 0, parse_special: flags & AGENTLM_TOKENIZE_PARSE_SPECIAL != 0 };
        let v = m.model.tokenizer().encode_with(text, options)?;
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
        let s = m.model.render_chat(&list, add_generation_prompt)?;
        util::copy_str_out(&s, buf, capacity, text_len)
    })
}
