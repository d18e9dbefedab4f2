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

mod adapter;
mod agent;
mod handles;
mod log;
mod model;
mod registry;
mod session;
mod trainer;
mod types;
mod util;

use std::ffi::c_char;

use crate::Backend;
pub use adapter::*;
pub use agent::*;
use agentlm_status::*;
use handles::handle;
pub use log::agentlm_log_fn;
pub use model::*;
use registry::Users;
pub use session::*;
pub use trainer::*;
use types::status_string;
pub use types::*;

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

handle!(agentlm_error: Error);

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

#[cfg(test)]
mod tests;
