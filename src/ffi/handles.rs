//! The opaque handles behind `agentlm_model *` and `agentlm_session *`.

use std::sync::Mutex;

use super::log::{with_state, LogSink};
use super::registry::{self, Kind, Tracked, Users};
use super::util::Fail;
use crate::generate::CancelToken;
use crate::runtime::session::Session;
use crate::runtime::Model;

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

impl Tracked for agentlm_model {
    const KIND: Kind = Kind::Model;
    fn users(&self) -> &Users {
        &self.users
    }
}

/// A session (opaque): one conversation and its KV cache. One caller at a time; `agentlm_session_cancel`
/// may be called from any thread.
pub struct agentlm_session {
    pub(crate) cancel: CancelToken,
    pub(crate) capacity: usize,
    state: Mutex<SessionState>,
    users: Users,
}

impl Tracked for agentlm_session {
    const KIND: Kind = Kind::Session;
    fn users(&self) -> &Users {
        &self.users
    }
    /// A session freed while a call runs on it (from its own callback): that call stops early.
    fn on_free(&self) {
        self.cancel.cancel();
    }
}

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

/// Runs `f` on the session's state; a concurrent call gets `AGENTLM_STATUS_BUSY` instead of waiting.
pub(crate) fn lock<T>(session: *const agentlm_session, f: impl FnOnce(&mut SessionState) -> Result<T, Fail>) -> Result<T, Fail> {
    let s = registry::pin(session, "session")?;
    // A panic inside an earlier call: end any half-finished generation.
    let repair = |st: &mut SessionState| {
        st.session.end();
    };
    with_state(&s.state, "session", repair, |st| st.log.clone(), f)
}
