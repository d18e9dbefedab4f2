//! Forwarding the library's `tracing` events to a host log callback, for the duration of each call on
//! a model or session that has one (a scoped dispatcher on the calling thread; no global state).

use std::ffi::{c_char, c_void};
use std::fmt::Write as _;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use super::agentlm_status::*;
use super::util::{try_lock, Fail, UserData};

/// Log callback: `level` is an `agentlm_log_level`, `message` is `message_len` bytes of UTF-8,
/// NUL-terminated, valid only during the call. Called on the thread that made the library call.
pub type agentlm_log_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char, message_len: usize)>;

/// A host log callback and its verbosity.
#[derive(Clone)]
pub(crate) struct LogSink(Arc<Forwarder>);

struct Forwarder {
    f: unsafe extern "C" fn(*mut c_void, i32, *const c_char, usize),
    user: UserData,
    max: i32,
}

impl LogSink {
    pub fn new(f: agentlm_log_fn, user: *mut c_void, level: i32) -> Result<Option<LogSink>, Fail> {
        let Some(f) = f else { return Ok(None) };
        if !(1..=5).contains(&level) {
            return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("log_level {level} is not 1 (error) to 5 (trace)")));
        }
        Ok(Some(LogSink(Arc::new(Forwarder { f, user: UserData(user), max: level }))))
    }
}

fn level_code(l: &Level) -> i32 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Runs `f` with events on this thread forwarded to `sink` (when there is one).
pub(crate) fn with_sink<T>(sink: Option<&LogSink>, f: impl FnOnce() -> T) -> T {
    match sink {
        Some(s) => tracing::dispatcher::with_default(&tracing::Dispatch::new(s.clone()), f),
        None => f(),
    }
}

/// Runs `f` on a handle's state behind [`try_lock`](super::util::try_lock), with the handle's log sink (`log_of` the state)
/// receiving the library's messages meanwhile.
pub(crate) fn with_state<S, T>(
    m: &std::sync::Mutex<S>,
    what: &str,
    repair: impl FnOnce(&mut S),
    log_of: impl FnOnce(&S) -> Option<LogSink>,
    f: impl FnOnce(&mut S) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let mut guard = try_lock(m, what, repair)?;
    let st = &mut *guard;
    let sink = log_of(st);
    with_sink(sink.as_ref(), || f(st))
}

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for LogSink {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_code(metadata.level()) <= self.0.max
    }
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut v = MessageVisitor(String::new());
        event.record(&mut v);
        let mut text = v.0.replace('\0', " ");
        let len = text.len();
        text.push('\0');
        // SAFETY: the host's callback, called as its documentation allows.
        unsafe { (self.0.f)(self.0.user.0, level_code(event.metadata().level()), text.as_ptr().cast(), len) };
    }
    fn enter(&self, _span: &Id) {}
    fn exit(&self, _span: &Id) {}
}
