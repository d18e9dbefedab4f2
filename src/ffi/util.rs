//! The ABI plumbing: the panic boundary, error objects, argument checks and out-parameters.
//!
//! # Pointer arguments
//! The helpers below are the only code in the C layer that reads or writes through a pointer the host
//! passed: a `(ptr, len)` string or array, a parameter struct, an out-parameter or an output buffer.
//! Each checks what can be checked (NULL, sizes, UTF-8) and then relies on the exported function's C
//! contract (the header: `len` readable elements at `ptr`, a writable out-pointer, `capacity` writable
//! elements in a buffer) for the rest, in its one `SAFETY` comment. They are safe functions for that
//! reason, and are only ever called with pointers received from C, never with pointers made in Rust.

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{agentlm_error, agentlm_message, agentlm_status, agentlm_status::*, agentlm_str};
use crate::engine::EngineError;
use crate::formats::FormatError;
use crate::model::ModelError;
use crate::template::Message;
use crate::Error;

/// A failed call: the status to return and the message for the error object.
#[derive(Debug)]
pub(crate) struct Fail {
    pub status: agentlm_status,
    pub message: String,
}

impl Fail {
    pub fn new(status: agentlm_status, message: impl Into<String>) -> Fail {
        Fail { status, message: message.into() }
    }
    /// Prefixes the message with where the problem was.
    pub fn context(self, what: String) -> Fail {
        Fail { message: format!("{what}: {}", self.message), ..self }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Format(f) | Error::Model(ModelError::Format(f)) => format_status(f),
            Error::Tokenizer(_) => AGENTLM_STATUS_TOKENIZER,
            Error::Template(_) => AGENTLM_STATUS_TEMPLATE,
            Error::Engine(EngineError::NotCompiled(..) | EngineError::UnknownBackend(_)) => AGENTLM_STATUS_UNSUPPORTED,
            Error::Engine(_) | Error::Model(ModelError::Engine(_)) => AGENTLM_STATUS_BACKEND,
            Error::Model(ModelError::Aborted) => AGENTLM_STATUS_ABORTED,
            Error::Model(ModelError::ContextFull { .. }) => AGENTLM_STATUS_CONTEXT_FULL,
            Error::Model(ModelError::CacheState(_)) | Error::State(_) => AGENTLM_STATUS_STATE,
            Error::Model(ModelError::BadToken { .. } | ModelError::Empty) => AGENTLM_STATUS_INVALID_ARGUMENT,
            Error::Model(_) => AGENTLM_STATUS_MODEL,
            Error::Sampling(_) | Error::InvalidArgument(_) => AGENTLM_STATUS_INVALID_ARGUMENT,
            Error::Io { .. } => AGENTLM_STATUS_IO,
            Error::Cancelled => AGENTLM_STATUS_CANCELLED,
        };
        Fail { status, message: e.to_string() }
    }
}

impl From<crate::tokenizer::TokenizerError> for Fail {
    fn from(e: crate::tokenizer::TokenizerError) -> Fail {
        Error::from(e).into()
    }
}

fn format_status(f: &FormatError) -> agentlm_status {
    match f {
        FormatError::Io { .. } => AGENTLM_STATUS_IO,
        FormatError::Unsupported { .. } => AGENTLM_STATUS_UNSUPPORTED,
        FormatError::Invalid { .. } | FormatError::Tensor { .. } => AGENTLM_STATUS_FORMAT,
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

/// Runs an exported function's body: panics become `AGENTLM_STATUS_PANIC`, failures become an error
/// object in `*err` (when `err` is not NULL).
pub(crate) fn boundary(err: *mut *mut agentlm_error, body: impl FnOnce() -> Result<agentlm_status, Fail>) -> agentlm_status {
    let fail = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(f)) => f,
        Err(p) => Fail::new(AGENTLM_STATUS_PANIC, format!("internal panic: {}", panic_text(&*p))),
    };
    if !err.is_null() {
        let message = CString::new(fail.message.replace('\0', " ")).unwrap_or_default();
        let e = agentlm_error::new_raw(fail.status, message);
        // SAFETY: the caller passes either NULL or a writable `agentlm_error *` slot.
        unsafe { err.write(e) };
    }
    fail.status
}

/// Runs a body that cannot report errors (free, retain); a panic yields `fallback`.
pub(crate) fn catch_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// A `(ptr, len)` UTF-8 argument. NULL is allowed only with `len == 0`.
pub(crate) fn str_arg<'a>(ptr: *const c_char, len: usize, what: &str) -> Result<&'a str, Fail> {
    let bytes = slice_arg(ptr.cast::<u8>(), len, what)?;
    std::str::from_utf8(bytes).map_err(|e| Fail::new(AGENTLM_STATUS_INVALID_UTF8, format!("{what} is not valid UTF-8: {e}")))
}

/// A `(ptr, count)` array argument. NULL is allowed only with `count == 0`.
pub(crate) fn slice_arg<'a, T>(ptr: *const T, count: usize, what: &str) -> Result<&'a [T], Fail> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Fail::new(AGENTLM_STATUS_NULL_POINTER, format!("{what} is NULL but its length is {count}")));
    }
    if count.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("{what}: length {count} is too large")));
    }
    // SAFETY: non-null, at most isize::MAX bytes, and the C contract promises `count` readable,
    // initialised elements that the host does not change during the call.
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// A `(ptr, count)` array of `agentlm_str` (stop strings, admissible actions), each checked as UTF-8
/// (and, with `non_empty`, refused when empty) in order and copied; a failing element is named
/// `{item} {i}`.
pub(crate) fn strs_arg(ptr: *const agentlm_str, count: usize, list: &str, item: &str, non_empty: bool) -> Result<Vec<String>, Fail> {
    let strs = slice_arg(ptr, count, list)?;
    let mut out = Vec::with_capacity(strs.len());
    for (i, s) in strs.iter().enumerate() {
        let s = str_arg(s.ptr, s.len, item).map_err(|f| f.context(format!("{item} {i}")))?;
        if non_empty && s.is_empty() {
            return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("{item} {i} is empty")));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

/// An out-parameter checked non-NULL: the only way to [`write_out`].
pub(crate) struct Out<T>(std::ptr::NonNull<T>);

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}

/// A required out-parameter: `NULL_POINTER` naming `what` for NULL.
pub(crate) fn opt_out<T>(p: *mut T, what: &str) -> Result<Out<T>, Fail> {
    std::ptr::NonNull::new(p).map(Out).ok_or_else(|| Fail::new(AGENTLM_STATUS_NULL_POINTER, format!("{what} is NULL")))
}

/// Writes a checked out-parameter.
pub(crate) fn write_out<T>(p: Out<T>, v: T) {
    // SAFETY: non-NULL (an `Out`), and the C contract promises it writable and aligned.
    unsafe { p.0.as_ptr().write(v) }
}

/// Writes an optional out-parameter (a statistics struct the caller may not want): nothing for NULL.
pub(crate) fn write_opt<T>(p: *mut T, v: T) {
    if let Some(p) = std::ptr::NonNull::new(p) {
        write_out(Out(p), v);
    }
}

/// Reads a parameter struct that starts with `uint32_t struct_size`: NULL means `default`; a size
/// smaller than the first version or larger than this library's struct is rejected.
pub(crate) fn read_params<T: Copy>(p: *const T, default: T) -> Result<T, Fail> {
    if p.is_null() {
        return Ok(default);
    }
    // SAFETY: non-NULL, and every parameter struct of the C contract begins with a readable u32 size.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    let ours = std::mem::size_of::<T>();
    if size != ours {
        return Err(Fail::new(
            AGENTLM_STATUS_STRUCT_SIZE,
            format!("struct_size is {size}, this library expects {ours} (initialise parameters with the _default() function of the same header)"),
        ));
    }
    // SAFETY: the caller's struct is `size == size_of::<T>()` readable bytes (its first field says so),
    // and `T` is a `#[repr(C)]` struct of plain fields, valid for any bytes the C side can write.
    Ok(unsafe { p.read_unaligned() })
}

/// Copies `src` into a caller buffer of `capacity` elements; `*n` gets `src.len()`.
pub(crate) fn copy_out<T: Copy>(src: &[T], dst: *mut T, capacity: usize, n: Out<usize>) -> Result<agentlm_status, Fail> {
    write_out(n, src.len());
    if src.len() > capacity {
        return Ok(AGENTLM_STATUS_BUFFER_TOO_SMALL);
    }
    if !src.is_empty() {
        if dst.is_null() {
            return Err(Fail::new(AGENTLM_STATUS_NULL_POINTER, "output buffer is NULL"));
        }
        // SAFETY: non-NULL, and the C contract promises `capacity >= src.len()` writable elements at `dst`,
        // which cannot overlap `src` (library memory).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }
    Ok(AGENTLM_STATUS_OK)
}

/// Copies `s` and a NUL into a caller buffer; `*len` gets `s.len()`, or `s.len() + 1` (the size
/// needed) when it does not fit.
pub(crate) fn copy_str_out(s: &str, dst: *mut c_char, capacity: usize, len: Out<usize>) -> Result<agentlm_status, Fail> {
    if s.len() + 1 > capacity {
        write_out(len, s.len() + 1);
        return Ok(AGENTLM_STATUS_BUFFER_TOO_SMALL);
    }
    if dst.is_null() {
        return Err(Fail::new(AGENTLM_STATUS_NULL_POINTER, "output buffer is NULL"));
    }
    // SAFETY: non-NULL, and the C contract promises `capacity >= s.len() + 1` writable bytes at `dst`,
    // which cannot overlap `s` (library memory).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), dst.cast::<u8>(), s.len());
        dst.add(s.len()).write(0);
    }
    write_out(len, s.len());
    Ok(AGENTLM_STATUS_OK)
}

/// Locks a handle's state without waiting: an overlapping call gets `AGENTLM_STATUS_BUSY`. A lock
/// poisoned by a panic in an earlier call is recovered after `repair` restores the state's invariants.
pub(crate) fn try_lock<'a, S>(m: &'a std::sync::Mutex<S>, what: &str, repair: impl FnOnce(&mut S)) -> Result<std::sync::MutexGuard<'a, S>, Fail> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(std::sync::TryLockError::Poisoned(p)) => {
            let mut g = p.into_inner();
            repair(&mut g);
            m.clear_poison();
            Ok(g)
        }
        Err(std::sync::TryLockError::WouldBlock) => Err(Fail::new(
            AGENTLM_STATUS_BUSY,
            format!(
                "another call is running on this {what} (a call from one of its own callbacks, or from a second thread); \
                 only agentlm_{what}_cancel may overlap a running call"
            ),
        )),
    }
}

/// A host `void *user_data`: the host vouches for using it from the threads it lets us call it on.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub *mut c_void);
// SAFETY: only passed back to the host's own callback, on threads the host's API contract allows.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// The C messages as owned messages (each role and content checked as UTF-8).
pub(crate) fn messages_arg(messages: *const agentlm_message, n_messages: usize) -> Result<Vec<Message>, Fail> {
    let msgs = slice_arg(messages, n_messages, "messages")?;
    let mut list = Vec::with_capacity(msgs.len());
    for (i, msg) in msgs.iter().enumerate() {
        let role = str_arg(msg.role.ptr, msg.role.len, "message role").map_err(|f| f.context(format!("message {i}")))?;
        let content = str_arg(msg.content.ptr, msg.content.len, "message content").map_err(|f| f.context(format!("message {i}")))?;
        list.push(Message::new(role, content));
    }
    Ok(list)
}
