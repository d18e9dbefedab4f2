//! Which handles are live: the process-wide registry that turns use-after-free, double free and
//! foreign pointers into `AGENTLM_STATUS_INVALID_HANDLE` instead of undefined behaviour.
//!
//! Every handle the library gives out (`agentlm_model`, `_session`, `_agent`, `_adapter`, `_trainer`,
//! `_error`) is a `Box` whose address is recorded here with its kind when it is created. A call first
//! looks the pointer up — before reading any of its memory — and *pins* the handle: the handle's
//! count of calls in flight goes up while the registry's read lock is held, so it cannot be freed
//! under the call. Freeing takes the address out of the registry (so no new call can pin it) and sets
//! the handle's `FREED` bit; whoever brings the count to zero with that bit set drops the box: the
//! free itself when nothing is running, otherwise the last call in flight when it returns. So a
//! handle freed from inside one of its own callbacks, or (against the rules) from another thread while
//! a call runs, is freed safely after that call.
//!
//! What this cannot tell apart: a freed handle whose address the allocator has since given to a new
//! handle *of the same kind* — the stale pointer then reaches the new handle. See `docs/c-api.md`.
//!
//! Cost: one uncontended read lock and one hash lookup per call, and two atomic operations on the
//! handle.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::agentlm_status::*;
use super::util::Fail;

/// The kinds of handle the ABI has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Model,
    Session,
    Agent,
    Adapter,
    Trainer,
    Error,
    /// `agentlm_tool_result`: not allocated by the host's request, but live only during a tool callback.
    ToolResult,
    /// Unit tests' own handle type.
    #[cfg(test)]
    Test,
}

impl Kind {
    pub(crate) fn c_name(self) -> &'static str {
        match self {
            Kind::Model => "agentlm_model",
            Kind::Session => "agentlm_session",
            Kind::Agent => "agentlm_agent",
            Kind::Adapter => "agentlm_adapter",
            Kind::Trainer => "agentlm_trainer",
            Kind::Error => "agentlm_error",
            Kind::ToolResult => "agentlm_tool_result",
            #[cfg(test)]
            Kind::Test => "test handle",
        }
    }

    /// The C name without its prefix, for messages (`"session"`).
    pub(crate) fn noun(self) -> &'static str {
        let name = self.c_name();
        name.strip_prefix("agentlm_").unwrap_or(name)
    }
}

/// The `FREED` bit of [`Users`]; the other bits count the calls in flight.
const FREED: u32 = 1 << 31;

/// A handle's calls in flight, and whether it has been freed.
#[derive(Default)]
pub(crate) struct Users(AtomicU32);

/// A heap-allocated handle type the registry tracks.
pub(crate) trait Tracked: Sized {
    const KIND: Kind;
    fn users(&self) -> &Users;
    /// Called once when the handle is freed, before the box is dropped (which may be later, when the
    /// calls running on it return): sessions, agents and trainers cancel their running work here.
    fn on_free(&self) {}
}

/// Hashes an address: a folded 64×64→128-bit multiply, so that the always-zero low bits of aligned
/// addresses still spread over the table.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        let m = u128::from(n ^ self.0) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Table = HashMap<usize, Kind, BuildHasherDefault<AddrHasher>>;

static LIVE: RwLock<Table> = RwLock::new(HashMap::with_hasher(BuildHasherDefault::new()));

// Nothing panics while holding the lock, but a poisoned registry must not take the ABI down.
fn read() -> RwLockReadGuard<'static, Table> {
    LIVE.read().unwrap_or_else(PoisonError::into_inner)
}

fn write() -> RwLockWriteGuard<'static, Table> {
    LIVE.write().unwrap_or_else(PoisonError::into_inner)
}

/// Boxes `value` and records it as a live handle.
pub(crate) fn register<T: Tracked>(value: T) -> *mut T {
    let p = Box::into_raw(Box::new(value));
    write().insert(p as usize, T::KIND);
    p
}

/// The error for a pointer that is not a live handle of the expected kind.
fn not_live(p: *const (), what: &str, want: Kind, found: Option<Kind>) -> Fail {
    let message = match found {
        Some(k) => format!("{what} ({p:p}) is an {}, not an {}", k.c_name(), want.c_name()),
        None if want == Kind::ToolResult => {
            format!("{what} ({p:p}) is not the result of a running tool callback (it is valid only during the callback)")
        }
        None => format!("{what} ({p:p}) is not a live {}: it was already freed, or was never returned by this library", want.c_name()),
    };
    Fail::new(AGENTLM_STATUS_INVALID_HANDLE, message)
}

/// A handle pinned for the duration of one call: it cannot be dropped until this is.
pub(crate) struct Pinned<T: Tracked> {
    ptr: NonNull<T>,
}

impl<T: Tracked> Deref for Pinned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: pinned handles are live boxes until the pin is dropped.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Tracked> Drop for Pinned<T> {
    fn drop(&mut self) {
        let before = self.users().0.fetch_sub(1, Ordering::AcqRel);
        if before == FREED | 1 {
            // SAFETY: freed while this was the last call in flight; unregistered, so nobody can pin it
            // again: this is the last reference.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}

/// Looks `p` up and pins it: `NULL_POINTER` for NULL, `INVALID_HANDLE` for anything that is not a live
/// handle of kind `T` (freed, never allocated, or another kind). `what` names the argument.
pub(crate) fn pin<T: Tracked>(p: *const T, what: &str) -> Result<Pinned<T>, Fail> {
    let ptr = NonNull::new(p.cast_mut()).ok_or_else(|| Fail::new(AGENTLM_STATUS_NULL_POINTER, format!("{what} is NULL")))?;
    let live = read();
    match live.get(&(p as usize)) {
        Some(&k) if k == T::KIND => {
            // SAFETY: registered, so a live box of `T`; `release` cannot unregister it while we hold
            // the read lock, and will not drop it while the count is above zero.
            unsafe { ptr.as_ref() }.users().0.fetch_add(1, Ordering::AcqRel);
            Ok(Pinned { ptr })
        }
        found => Err(not_live(p.cast(), what, T::KIND, found.copied())),
    }
}

/// [`pin`] for an argument that may be NULL.
pub(crate) fn pin_opt<T: Tracked>(p: *const T, what: &str) -> Result<Option<Pinned<T>>, Fail> {
    if p.is_null() {
        Ok(None)
    } else {
        pin(p, what).map(Some)
    }
}

/// Frees a handle: it is unregistered at once and dropped as soon as no call is running on it.
/// Returns false (and does nothing) for NULL or a pointer that is not a live handle of kind `T`, such
/// as one already freed.
pub(crate) fn release<T: Tracked>(p: *mut T) -> bool {
    if p.is_null() {
        return false;
    }
    {
        let mut live = write();
        match live.get(&(p as usize)) {
            Some(&k) if k == T::KIND => live.remove(&(p as usize)),
            _ => return false,
        };
    }
    // SAFETY: it was registered, so it is a live box; only this call could unregister it, and nothing
    // drops it before the FREED bit below is set.
    let h = unsafe { &*p };
    h.on_free();
    let before = h.users().0.fetch_or(FREED, Ordering::AcqRel);
    if before == 0 {
        // SAFETY: unregistered and no call in flight: the last reference.
        drop(unsafe { Box::from_raw(p) });
    }
    true
}

/// Records a non-boxed object (a tool result on the library's stack) as live of `kind` until the
/// returned guard is dropped.
pub(crate) fn scoped(p: *const (), kind: Kind) -> Scoped {
    write().insert(p as usize, kind);
    Scoped(p as usize)
}

/// Unregisters a [`scoped`] object when dropped.
pub(crate) struct Scoped(usize);

impl Drop for Scoped {
    fn drop(&mut self) {
        write().remove(&self.0);
    }
}

/// Whether `p` is live as `kind` right now (for [`scoped`] objects), as a `Fail` naming `what` if not.
pub(crate) fn check_scoped(p: *const (), kind: Kind, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        return Err(Fail::new(AGENTLM_STATUS_NULL_POINTER, format!("{what} is NULL")));
    }
    match read().get(&(p as usize)) {
        Some(&k) if k == kind => Ok(()),
        found => Err(not_live(p, what, kind, found.copied())),
    }
}

/// Number of live handles of `kind` (tests).
#[cfg(test)]
pub(crate) fn count(kind: Kind) -> usize {
    read().values().filter(|&&k| k == kind).count()
}
