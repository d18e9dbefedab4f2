//! The C enums, each declared once: the numbers in `include/agentlm.h`, the conversions from what a
//! host passes (`TryFrom<i32>`, failing with `AGENTLM_STATUS_INVALID_ARGUMENT`), to and from the Rust
//! API's enums, and the status strings.

use std::ffi::CStr;
use std::sync::OnceLock;

use strum::{EnumIter, EnumMessage, FromRepr, IntoEnumIterator};

use crate::agent::ActionFormat;
use crate::runtime::FinishReason;
use crate::template::BuiltinTemplate;
use crate::train::DataKind;
use crate::{Backend, Error, Precision};

/// Result of every fallible call: `0` success, `> 0` flow control, `< 0` error. Numbers are never reused.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr, EnumIter, EnumMessage)]
pub enum agentlm_status {
    /// Success.
    #[strum(message = "ok")]
    AGENTLM_STATUS_OK = 0,
    /// A generation has ended ([`agentlm_session_next_token`]); see the finish reason.
    #[strum(message = "done")]
    AGENTLM_STATUS_DONE = 1,
    /// The token callback asked to stop.
    #[strum(message = "stopped by the callback")]
    AGENTLM_STATUS_STOPPED = 2,
    /// The session was cancelled with [`agentlm_session_cancel`]; its state is consistent.
    #[strum(message = "cancelled")]
    AGENTLM_STATUS_CANCELLED = 3,
    /// The caller's buffer is too small; the needed size was stored in the size out-parameter.
    #[strum(message = "buffer too small")]
    AGENTLM_STATUS_BUFFER_TOO_SMALL = 4,
    /// An argument is out of range or the call is not allowed in the handle's current state.
    #[strum(message = "invalid argument")]
    AGENTLM_STATUS_INVALID_ARGUMENT = -1,
    /// A required pointer was NULL.
    #[strum(message = "null pointer")]
    AGENTLM_STATUS_NULL_POINTER = -2,
    /// A string argument is not valid UTF-8.
    #[strum(message = "invalid UTF-8")]
    AGENTLM_STATUS_INVALID_UTF8 = -3,
    /// A parameter struct's `struct_size` is not one this library knows.
    #[strum(message = "unknown struct_size")]
    AGENTLM_STATUS_STRUCT_SIZE = -4,
    /// A file could not be read or written.
    #[strum(message = "I/O error")]
    AGENTLM_STATUS_IO = -5,
    /// A model file is malformed (truncated, bad magic, lying offsets, bad header, ...).
    #[strum(message = "malformed model file")]
    AGENTLM_STATUS_FORMAT = -6,
    /// Valid input this build does not support (architecture, tensor type, backend not compiled in).
    #[strum(message = "unsupported")]
    AGENTLM_STATUS_UNSUPPORTED = -7,
    /// The compute backend failed (no device, readback failure).
    #[strum(message = "backend error")]
    AGENTLM_STATUS_BACKEND = -8,
    /// The tokenizer could not be built or failed.
    #[strum(message = "tokenizer error")]
    AGENTLM_STATUS_TOKENIZER = -9,
    /// The chat template could not be compiled or rendered.
    #[strum(message = "chat template error")]
    AGENTLM_STATUS_TEMPLATE = -10,
    /// The model's weights or configuration are inconsistent.
    #[strum(message = "model error")]
    AGENTLM_STATUS_MODEL = -11,
    /// Saved session state is malformed or belongs to another model.
    #[strum(message = "invalid session state")]
    AGENTLM_STATUS_STATE = -12,
    /// The progress callback aborted loading.
    #[strum(message = "aborted by the progress callback")]
    AGENTLM_STATUS_ABORTED = -13,
    /// Another call is running on this session (only `agentlm_session_cancel` may overlap).
    #[strum(message = "session busy")]
    AGENTLM_STATUS_BUSY = -14,
    /// The session's context is full.
    #[strum(message = "context full")]
    AGENTLM_STATUS_CONTEXT_FULL = -15,
    /// A handle argument is not a live handle of its type: already freed, never returned by this
    /// library, or a handle of another type. Detected before the pointer is read (see `docs/c-api.md`
    /// for the one case that cannot be told apart: an address reused by a new handle of the same type).
    #[strum(message = "invalid handle")]
    AGENTLM_STATUS_INVALID_HANDLE = -16,
    /// A bug: the library panicked. The handle involved stays usable but its state may be reset.
    #[strum(message = "internal panic")]
    AGENTLM_STATUS_PANIC = -99,
}

/// Compute backends (values of `agentlm_model_params.backend`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_backend {
    /// The CPU (always compiled in by default builds).
    AGENTLM_BACKEND_CPU = 0,
    /// wgpu: Vulkan, Metal, DX12 (cargo feature `wgpu`).
    AGENTLM_BACKEND_WGPU = 1,
    /// NVIDIA CUDA (cargo feature `cuda`).
    AGENTLM_BACKEND_CUDA = 2,
}

/// Forward-pass numerics (values of `agentlm_model_params.precision`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_precision {
    /// Block-quantized kernels for a quantized GGUF file on the CPU, exact f32 otherwise.
    AGENTLM_PRECISION_AUTO = 0,
    /// Weights dequantized to f32 at load (Hugging Face parity).
    AGENTLM_PRECISION_EXACT = 1,
    /// CPU and GGUF only: weights kept in block form, 8-bit activations (llama.cpp's numerics).
    AGENTLM_PRECISION_QUANTIZED = 2,
}

/// Why a generation ended (`agentlm_generation.finish_reason`, `agentlm_token.finish_reason`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_finish_reason {
    /// Not finished.
    AGENTLM_FINISH_NONE = 0,
    /// The model produced an end-of-sequence token.
    AGENTLM_FINISH_EOS = 1,
    /// A stop string appeared (`stop_index` says which); it is not part of the output.
    AGENTLM_FINISH_STOP = 2,
    /// `max_tokens` were generated.
    AGENTLM_FINISH_LENGTH = 3,
    /// The token callback returned false, or the generation was ended early.
    AGENTLM_FINISH_CALLBACK = 4,
    /// [`agentlm_session_cancel`] was called.
    AGENTLM_FINISH_CANCELLED = 5,
    /// The session's context is full.
    AGENTLM_FINISH_CONTEXT_FULL = 6,
}

/// Log levels (values passed to an [`agentlm_log_fn`] and of `agentlm_model_params.log_level`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_log_level {
    /// Errors only.
    AGENTLM_LOG_ERROR = 1,
    /// Warnings and errors.
    AGENTLM_LOG_WARN = 2,
    /// Informational messages (model loaded, ...).
    AGENTLM_LOG_INFO = 3,
    /// Debugging detail.
    AGENTLM_LOG_DEBUG = 4,
    /// Everything.
    AGENTLM_LOG_TRACE = 5,
}

/// Action formats (`agentlm_agent_params.format`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_action_format {
    /// ALFWorld: `THOUGHT: ...` / `ACTION: go to countertop 1`.
    AGENTLM_FORMAT_ALFWORLD = 0,
    /// AgentBench OS: `Act: bash` + fenced code, `Act: finish`, `Act: answer(...)`.
    AGENTLM_FORMAT_OS = 1,
    /// AgentBench DB: `Action: Operation` + fenced SQL, `Action: Answer` + `Final Answer:`.
    AGENTLM_FORMAT_DB = 2,
    /// WebShop: `Action: search[...]` / `click[...]`.
    AGENTLM_FORMAT_WEBSHOP = 3,
    /// Knowledge graph: `Action: get_relations(...)`, `Final Answer: #id`.
    AGENTLM_FORMAT_KG = 4,
    /// Mind2Web: `Answer:` / `Action:` / `Value:`.
    AGENTLM_FORMAT_MIND2WEB = 5,
    /// Classic ReAct: `Thought:` / `Action: tool[input]` / `Final Answer:`.
    AGENTLM_FORMAT_REACT = 6,
    /// JSON tool calls.
    AGENTLM_FORMAT_JSON = 7,
}

/// Chat templates (`agentlm_agent_params.chat_template`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_chat_template {
    /// The model's own (Jinja) template.
    AGENTLM_TEMPLATE_MODEL = 0,
    /// Llama-2-chat with AgentLM's system prompt.
    AGENTLM_TEMPLATE_LLAMA2 = 1,
    /// Llama-2-chat without a default system prompt.
    AGENTLM_TEMPLATE_LLAMA2_NO_SYSTEM = 2,
    /// ChatML.
    AGENTLM_TEMPLATE_CHATML = 3,
    /// Agent-FLAN.
    AGENTLM_TEMPLATE_AGENT_FLAN = 4,
}

/// What a step produced (`agentlm_agent_step.kind`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_step_kind {
    /// An action: `tool` and `input` are set. Unless the tool has a callback (which then ran, see
    /// `observation`), submit the observation with `agentlm_agent_submit_observation`.
    AGENTLM_STEP_ACTION = 1,
    /// The final answer (`answer`); the episode is over.
    AGENTLM_STEP_FINAL = 2,
    /// Not a valid action (`answer` holds the reason); the format's feedback was added as the
    /// observation, so step again.
    AGENTLM_STEP_INVALID = 3,
    /// The frame budget ran out mid-reply: call `agentlm_agent_step` again.
    AGENTLM_STEP_PENDING = 4,
    /// `max_steps` replies were generated; the episode is over.
    AGENTLM_STEP_LIMIT = 5,
    /// Cancelled mid-reply; the next step starts the reply over.
    AGENTLM_STEP_CANCELLED = 6,
    /// The same action was asked for `repeat_limit` times in a row; the episode is over and the action
    /// was not run.
    AGENTLM_STEP_REPEAT_LIMIT = 7,
}

/// Which data set a record goes to.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRepr)]
pub enum agentlm_data_kind {
    /// Agent trajectories (drawn with probability `agent_ratio`).
    AGENTLM_DATA_AGENT = 0,
    /// General chat (drawn with probability 1 − `agent_ratio`).
    AGENTLM_DATA_GENERAL = 1,
    /// Held-out examples for [`agentlm_trainer_evaluate`] (no reward filter).
    AGENTLM_DATA_EVAL = 2,
}

/// `TryFrom<i32>` for C enums (a number a host passed): the variant, or
/// [`Error::InvalidArgument`] naming the enum (`AGENTLM_STATUS_INVALID_ARGUMENT` in C).
macro_rules! from_host {
    ($($enum:ident: $what:literal),* $(,)?) => {
        $(impl TryFrom<i32> for $enum {
            type Error = Error;
            fn try_from(v: i32) -> Result<Self, Error> {
                Self::from_repr(v).ok_or_else(|| Error::InvalidArgument(format!("unknown {} {v}", $what)))
            }
        })*
    };
}

from_host!(
    agentlm_backend: "backend",
    agentlm_precision: "precision",
    agentlm_action_format: "format",
    agentlm_chat_template: "chat_template",
    agentlm_data_kind: "data kind",
);

/// The short description of a status code (`"unknown status"` for a number that is none), as
/// `agentlm_status_string` returns it: NUL-terminated, static.
pub(crate) fn status_string(status: i32) -> &'static CStr {
    static STRINGS: OnceLock<Vec<(i32, std::ffi::CString)>> = OnceLock::new();
    let table = STRINGS.get_or_init(|| {
        agentlm_status::iter()
            .map(|s| (s as i32, std::ffi::CString::new(s.get_message().unwrap_or("unknown status")).expect("no NUL in a status message")))
            .collect()
    });
    table.iter().find(|(v, _)| *v == status).map_or(c"unknown status", |(_, s)| s.as_c_str())
}

impl From<agentlm_backend> for Backend {
    fn from(b: agentlm_backend) -> Backend {
        match b {
            agentlm_backend::AGENTLM_BACKEND_CPU => Backend::Cpu,
            agentlm_backend::AGENTLM_BACKEND_WGPU => Backend::Wgpu,
            agentlm_backend::AGENTLM_BACKEND_CUDA => Backend::Cuda,
        }
    }
}

impl From<Backend> for agentlm_backend {
    fn from(b: Backend) -> agentlm_backend {
        match b {
            Backend::Cpu => agentlm_backend::AGENTLM_BACKEND_CPU,
            Backend::Wgpu => agentlm_backend::AGENTLM_BACKEND_WGPU,
            Backend::Cuda => agentlm_backend::AGENTLM_BACKEND_CUDA,
        }
    }
}

impl From<agentlm_precision> for Precision {
    fn from(p: agentlm_precision) -> Precision {
        match p {
            agentlm_precision::AGENTLM_PRECISION_AUTO => Precision::Auto,
            agentlm_precision::AGENTLM_PRECISION_EXACT => Precision::Exact,
            agentlm_precision::AGENTLM_PRECISION_QUANTIZED => Precision::Quantized,
        }
    }
}

impl From<agentlm_action_format> for ActionFormat {
    fn from(f: agentlm_action_format) -> ActionFormat {
        use agentlm_action_format::*;
        match f {
            AGENTLM_FORMAT_ALFWORLD => ActionFormat::Alfworld,
            AGENTLM_FORMAT_OS => ActionFormat::Os,
            AGENTLM_FORMAT_DB => ActionFormat::Db,
            AGENTLM_FORMAT_WEBSHOP => ActionFormat::WebShop,
            AGENTLM_FORMAT_KG => ActionFormat::Kg,
            AGENTLM_FORMAT_MIND2WEB => ActionFormat::Mind2Web,
            AGENTLM_FORMAT_REACT => ActionFormat::React,
            AGENTLM_FORMAT_JSON => ActionFormat::Json,
        }
    }
}

impl From<agentlm_chat_template> for Option<BuiltinTemplate> {
    fn from(t: agentlm_chat_template) -> Option<BuiltinTemplate> {
        use agentlm_chat_template::*;
        match t {
            AGENTLM_TEMPLATE_MODEL => None,
            AGENTLM_TEMPLATE_LLAMA2 => Some(BuiltinTemplate::Llama2 { default_system: true }),
            AGENTLM_TEMPLATE_LLAMA2_NO_SYSTEM => Some(BuiltinTemplate::Llama2 { default_system: false }),
            AGENTLM_TEMPLATE_CHATML => Some(BuiltinTemplate::ChatMl),
            AGENTLM_TEMPLATE_AGENT_FLAN => Some(BuiltinTemplate::AgentFlan),
        }
    }
}

impl From<agentlm_data_kind> for Option<DataKind> {
    /// The training sets; `None` for the held-out set.
    fn from(k: agentlm_data_kind) -> Option<DataKind> {
        match k {
            agentlm_data_kind::AGENTLM_DATA_AGENT => Some(DataKind::Agent),
            agentlm_data_kind::AGENTLM_DATA_GENERAL => Some(DataKind::General),
            agentlm_data_kind::AGENTLM_DATA_EVAL => None,
        }
    }
}

/// A finish reason as `(agentlm_finish_reason, stop index or -1)`.
pub(crate) fn finish_code(r: FinishReason) -> (i32, i32) {
    use agentlm_finish_reason::*;
    let (code, stop) = match r {
        FinishReason::Eos => (AGENTLM_FINISH_EOS, -1),
        FinishReason::Stop(i) => (AGENTLM_FINISH_STOP, i as i32),
        FinishReason::Length => (AGENTLM_FINISH_LENGTH, -1),
        FinishReason::Callback => (AGENTLM_FINISH_CALLBACK, -1),
        FinishReason::Cancelled => (AGENTLM_FINISH_CANCELLED, -1),
        FinishReason::ContextFull => (AGENTLM_FINISH_CONTEXT_FULL, -1),
    };
    (code as i32, stop)
}
