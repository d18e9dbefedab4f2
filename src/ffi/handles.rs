//! What every opaque handle shares: its registry bookkeeping ([`Tracked`], declared by [`handle!`])
//! and, for the handles one caller uses at a time, the locked state behind them ([`Stateful`]) that
//! [`lock`] opens.

use std::sync::Mutex;

use super::log::{with_state, LogSink};
use super::registry::{self, Tracked};
use super::util::Fail;

/// A handle whose work happens on a mutable state, one caller at a time.
pub(crate) trait Stateful: Tracked {
    type State;
    fn state(&self) -> &Mutex<Self::State>;
    /// Where the state's calls log to.
    fn log(state: &Self::State) -> Option<LogSink>;
    /// Restores the state's invariants after a panic in an earlier call (e.g. ends a half-done
    /// generation).
    fn repair(_state: &mut Self::State) {}
}

/// Pins the handle `p` and runs `f` on its state with the handle's log sink installed; a concurrent
/// call gets `AGENTLM_STATUS_BUSY` instead of waiting.
pub(crate) fn lock<H: Stateful, T>(p: *const H, f: impl FnOnce(&mut H::State) -> Result<T, Fail>) -> Result<T, Fail> {
    let what = H::KIND.noun();
    let h = registry::pin(p, what)?;
    with_state(h.state(), what, H::repair, H::log, f)
}

/// Declares a handle struct's bookkeeping. The struct has a `users: Users` field; `cancel = field`
/// names a `CancelToken` cancelled when the handle is freed (so a call running on it stops early);
/// `state = Type` says its `state: Mutex<Type>` field is opened by [`lock`], with the log sink in the
/// state's `log` field and an optional `repair` function.
macro_rules! handle {
    ($t:ident: $kind:ident $(, cancel = $cancel:ident)? $(, state = $state:ty $(, repair = $repair:expr)?)?) => {
        impl $crate::ffi::registry::Tracked for $t {
            const KIND: $crate::ffi::registry::Kind = $crate::ffi::registry::Kind::$kind;
            fn users(&self) -> &$crate::ffi::registry::Users {
                &self.users
            }
            $(
                fn on_free(&self) {
                    self.$cancel.cancel();
                }
            )?
        }
        $(
            impl $crate::ffi::handles::Stateful for $t {
                type State = $state;
                fn state(&self) -> &::std::sync::Mutex<$state> {
                    &self.state
                }
                fn log(state: &$state) -> Option<$crate::ffi::log::LogSink> {
                    state.log.clone()
                }
                $(
                    fn repair(state: &mut $state) {
                        ($repair)(state)
                    }
                )?
            }
        )?
    };
}
pub(crate) use handle;
