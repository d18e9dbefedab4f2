//! ABI-level checks that need no model: versions, status strings, argument validation, the registry
//! of live handles (plus one check on real handles when the test model is present).

// These tests call the exported functions as a C host would, many with deliberately bad pointers (NULL,
// freed, foreign, of another kind) that the functions must reject: the point of each call is in its test.
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::registry::{self, Kind, Tracked, Users};
use super::*;

/// Tests that create or free handles run one at a time: the registry is process-wide, and a handle
/// freed by one test could otherwise be reallocated at the same address by another before the first
/// checks that its pointer is dead (the one case the registry cannot tell apart).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn message(err: *const agentlm_error) -> String {
    unsafe { CStr::from_ptr(agentlm_error_message(err)) }.to_str().unwrap().to_string()
}

#[test]
fn version_constants_match_cargo_toml() {
    assert_eq!(AGENTLM_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
    assert_eq!(AGENTLM_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
    assert_eq!(AGENTLM_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
    let v = unsafe { CStr::from_ptr(agentlm_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(agentlm_abi_version(), AGENTLM_ABI_VERSION);
}

#[test]
fn every_status_has_its_own_description() {
    let codes = [0, 1, 2, 3, 4, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15, -16, -99];
    let mut seen = std::collections::HashSet::new();
    for c in codes {
        let s = unsafe { CStr::from_ptr(agentlm_status_string(c)) }.to_str().unwrap();
        assert_ne!(s, "unknown status", "{c}");
        assert!(seen.insert(s), "{c} shares its description");
    }
    assert_eq!(unsafe { CStr::from_ptr(agentlm_status_string(12345)) }.to_str().unwrap(), "unknown status");
}

/// Each C enum takes exactly its declared numbers from a host, and refuses others naming the enum.
#[test]
fn c_enums_take_their_numbers_and_refuse_others() {
    fn check<T: TryFrom<i32, Error = crate::Error> + std::fmt::Debug>(valid: std::ops::RangeInclusive<i32>, what: &str) {
        for v in valid.clone() {
            assert!(T::try_from(v).is_ok(), "{what} {v}");
        }
        for v in [*valid.start() - 1, *valid.end() + 1, i32::MAX] {
            let e = T::try_from(v).unwrap_err();
            assert!(matches!(&e, crate::Error::InvalidArgument(m) if m == &format!("unknown {what} {v}")), "{what} {v}: {e}");
        }
    }
    check::<agentlm_backend>(0..=2, "backend");
    check::<agentlm_precision>(0..=2, "precision");
    check::<agentlm_action_format>(0..=7, "format");
    check::<agentlm_chat_template>(0..=4, "chat_template");
    check::<agentlm_data_kind>(0..=2, "data kind");
    assert_eq!(crate::Backend::from(agentlm_backend::try_from(2).unwrap()), crate::Backend::Cuda);
    assert_eq!(agentlm_backend::from(crate::Backend::Wgpu) as i32, 1);
    assert_eq!(crate::Precision::from(agentlm_precision::try_from(2).unwrap()), crate::Precision::Quantized);
}

#[test]
fn load_rejects_bad_arguments_with_errors() {
    let _serial = serial();
    let mut model: *mut agentlm_model = ptr::null_mut();
    let mut err: *mut agentlm_error = ptr::null_mut();
    // NULL path with a length.
    let st = unsafe { agentlm_model_load(ptr::null(), 3, ptr::null(), &mut model, &mut err) };
    assert_eq!(st, agentlm_status::AGENTLM_STATUS_NULL_POINTER);
    assert_eq!(unsafe { agentlm_error_status(err) }, st);
    unsafe { agentlm_error_free(err) };
    // Invalid UTF-8.
    let bad = [0xffu8, 0xfe];
    err = ptr::null_mut();
    let st = unsafe { agentlm_model_load(bad.as_ptr().cast(), 2, ptr::null(), &mut model, &mut err) };
    assert_eq!(st, agentlm_status::AGENTLM_STATUS_INVALID_UTF8);
    unsafe { agentlm_error_free(err) };
    // Wrong struct_size.
    let mut p = agentlm_model_params_default();
    p.struct_size -= 4;
    let path = "nowhere.gguf";
    err = ptr::null_mut();
    let st = unsafe { agentlm_model_load(path.as_ptr().cast(), path.len(), &p, &mut model, &mut err) };
    assert_eq!(st, agentlm_status::AGENTLM_STATUS_STRUCT_SIZE);
    let msg = unsafe { CStr::from_ptr(agentlm_error_message(err)) }.to_str().unwrap().to_string();
    assert!(msg.contains("struct_size"), "{msg}");
    unsafe { agentlm_error_free(err) };
    // Out-of-range backend.
    let mut p = agentlm_model_params_default();
    p.backend = 7;
    let st = unsafe { agentlm_model_load(path.as_ptr().cast(), path.len(), &p, &mut model, ptr::null_mut()) };
    assert_eq!(st, agentlm_status::AGENTLM_STATUS_INVALID_ARGUMENT);
    // Missing file: an I/O error naming it; the out-parameter is untouched.
    err = ptr::null_mut();
    let st = unsafe { agentlm_model_load(path.as_ptr().cast(), path.len(), ptr::null(), &mut model, &mut err) };
    assert_eq!(st, agentlm_status::AGENTLM_STATUS_IO);
    assert!(model.is_null());
    let msg = unsafe { CStr::from_ptr(agentlm_error_message(err)) }.to_str().unwrap().to_string();
    assert!(msg.contains("nowhere.gguf"), "{msg}");
    unsafe { agentlm_error_free(err) };
}

#[test]
fn null_handles_are_harmless() {
    let _serial = serial();
    unsafe {
        agentlm_model_free(ptr::null_mut());
        agentlm_session_free(ptr::null_mut());
        agentlm_error_free(ptr::null_mut());
        assert_eq!(agentlm_model_vocab_size(ptr::null()), 0);
        assert!(agentlm_model_retain(ptr::null()).is_null());
        assert_eq!(agentlm_session_cancel(ptr::null()), agentlm_status::AGENTLM_STATUS_NULL_POINTER);
        let mut n = 0usize;
        let st = agentlm_session_tokens(ptr::null(), ptr::null_mut(), 0, &mut n, ptr::null_mut());
        assert_eq!(st, agentlm_status::AGENTLM_STATUS_NULL_POINTER);
        assert_eq!(CStr::from_ptr(agentlm_error_message(ptr::null())).to_bytes(), b"");
    }
    assert!(agentlm_backend_is_compiled(0));
    assert!(!agentlm_backend_is_compiled(-1));
}

/// A handle type of the tests' own, counting its frees and drops.
struct Probe {
    users: Users,
    freed: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Tracked for Probe {
    const KIND: Kind = Kind::Test;
    fn users(&self) -> &Users {
        &self.users
    }
    fn on_free(&self) {
        self.freed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn probe() -> (*mut Probe, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (freed, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let p = registry::register(Probe { users: Users::default(), freed: freed.clone(), dropped: dropped.clone() });
    (p, freed, dropped)
}

#[test]
fn registry_rejects_a_freed_handle_and_ignores_a_double_free() {
    let _serial = serial();
    let before = registry::count(Kind::Test);
    let (p, freed, dropped) = probe();
    assert_eq!(registry::count(Kind::Test), before + 1);
    drop(registry::pin(p, "probe").expect("live"));
    assert!(registry::release(p));
    assert_eq!((freed.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(registry::count(Kind::Test), before);
    let f = registry::pin(p, "probe").err().expect("freed handle accepted");
    assert_eq!(f.status, agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
    assert!(f.message.contains("probe (0x") && f.message.contains("already freed"), "{}", f.message);
    // A second free is a no-op: nothing dropped twice.
    assert!(!registry::release(p));
    assert_eq!((freed.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (1, 1));
    // NULL and never-allocated pointers: never read.
    assert_eq!(registry::pin(ptr::null::<Probe>(), "probe").err().unwrap().status, agentlm_status::AGENTLM_STATUS_NULL_POINTER);
    assert!(!registry::release(ptr::null_mut::<Probe>()));
    let wild = 0x1000 as *mut Probe;
    assert_eq!(registry::pin(wild, "probe").err().unwrap().status, agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
    assert!(!registry::release(wild));
}

#[test]
fn registry_defers_the_free_of_a_handle_in_use() {
    let _serial = serial();
    let (p, freed, dropped) = probe();
    let a = registry::pin(p, "probe").unwrap();
    let b = registry::pin(p, "probe").unwrap();
    // Freed while two calls run on it (as from inside its own callback): unregistered at once, so new
    // calls are refused, cancelled (on_free), dropped by the last call to return.
    assert!(registry::release(p));
    assert_eq!((freed.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (1, 0));
    assert!(registry::pin(p, "probe").is_err());
    assert!(!registry::release(p));
    drop(a);
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(b);
    assert_eq!((freed.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (1, 1));
}

#[test]
fn registry_frees_exactly_once_under_racing_calls_and_frees() {
    let _serial = serial();
    for _ in 0..50 {
        let (p, _freed, dropped) = probe();
        let addr = p as usize;
        let go = Arc::new(std::sync::Barrier::new(5));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let go = go.clone();
                std::thread::spawn(move || {
                    let p = addr as *mut Probe;
                    go.wait();
                    let mut freed = 0;
                    for _ in 0..200 {
                        if let Ok(h) = registry::pin(p, "probe") {
                            // Read through the pin: the box must still be there.
                            assert_eq!(h.dropped.load(Ordering::SeqCst), 0);
                        }
                        if i % 2 == 0 && registry::release(p) {
                            freed += 1;
                        }
                    }
                    freed
                })
            })
            .collect();
        go.wait();
        let frees: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(frees, 1);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn freed_errors_and_wrong_kinds_are_detected_through_the_abi() {
    let _serial = serial();
    let path = "nowhere.gguf";
    let mut model: *mut agentlm_model = ptr::null_mut();
    let mut err: *mut agentlm_error = ptr::null_mut();
    let st = unsafe { agentlm_model_load(path.as_ptr().cast(), path.len(), ptr::null(), &mut model, &mut err) };
    assert_eq!(st, agentlm_status::AGENTLM_STATUS_IO);
    unsafe {
        assert_eq!(agentlm_error_status(err), agentlm_status::AGENTLM_STATUS_IO);
        // An error passed where a session or a model belongs: refused by kind, never read as one.
        let as_session = err.cast::<agentlm_session>();
        let mut e2: *mut agentlm_error = ptr::null_mut();
        assert_eq!(agentlm_session_reset(as_session, &mut e2), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        let m = message(e2);
        assert!(m.contains("is an agentlm_error, not an agentlm_session"), "{m}");
        agentlm_error_free(e2);
        assert_eq!(agentlm_session_capacity(as_session), 0);
        assert_eq!(agentlm_session_cancel(as_session), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        agentlm_session_free(as_session);
        agentlm_model_free(err.cast());
        assert_eq!(agentlm_model_vocab_size(err.cast()), 0);
        assert!(agentlm_model_retain(err.cast()).is_null());
        // ... and the error is untouched by those frees.
        assert_eq!(agentlm_error_status(err), agentlm_status::AGENTLM_STATUS_IO);
        assert!(message(err).contains("nowhere.gguf"));
        // Freed: its status and message say so; a second free is a no-op.
        agentlm_error_free(err);
        assert_eq!(agentlm_error_status(err), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        assert!(message(err).starts_with("invalid agentlm_error handle"));
        agentlm_error_free(err);
    }
}

#[test]
fn pointers_that_were_never_handles_are_refused_unread() {
    let _serial = serial();
    // Addresses with nothing behind them: any read would fault.
    let wild = 0x10usize;
    unsafe {
        let mut err: *mut agentlm_error = ptr::null_mut();
        let mut out: *mut agentlm_session = ptr::null_mut();
        let st = agentlm_session_new(wild as *const agentlm_model, ptr::null(), &mut out, &mut err);
        assert_eq!(st, agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        assert!(out.is_null());
        let m = message(err);
        assert!(m.contains("model (0x10) is not a live agentlm_model"), "{m}");
        agentlm_error_free(err);
        agentlm_model_free(wild as *mut agentlm_model);
        agentlm_session_free(wild as *mut agentlm_session);
        agentlm_agent_free(wild as *mut agentlm_agent);
        agentlm_adapter_free(wild as *mut agentlm_adapter);
        agentlm_trainer_free(wild as *mut agentlm_trainer);
        agentlm_error_free(wild as *mut agentlm_error);
        assert_eq!(agentlm_model_context_length(wild as *const agentlm_model), 0);
        assert_eq!(agentlm_model_backend(wild as *const agentlm_model), -1);
        assert_eq!(CStr::from_ptr(agentlm_model_architecture(wild as *const agentlm_model)).to_bytes(), b"");
        assert_eq!(agentlm_session_cancel(wild as *const agentlm_session), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        assert_eq!(agentlm_agent_cancel(wild as *const agentlm_agent), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        assert!(!agentlm_agent_is_finished(wild as *const agentlm_agent));
        assert_eq!(agentlm_trainer_cancel(wild as *const agentlm_trainer), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        assert_eq!(agentlm_trainer_step(wild as *const agentlm_trainer), 0);
        assert_eq!(agentlm_adapter_rank(wild as *const agentlm_adapter), 0);
        assert_eq!(agentlm_tool_result_set(wild as *mut agentlm_tool_result, c"x".as_ptr(), 1), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        assert_eq!(agentlm_error_status(wild as *const agentlm_error), agentlm_status::AGENTLM_STATUS_INVALID_HANDLE);
        let mut n = 0usize;
        assert_eq!(
            agentlm_session_tokens(wild as *const agentlm_session, ptr::null_mut(), 0, &mut n, ptr::null_mut()),
            agentlm_status::AGENTLM_STATUS_INVALID_HANDLE
        );
        // An adapter argument that may be NULL is still checked when it is not.
        assert_eq!(
            agentlm_session_set_adapter(wild as *const agentlm_session, wild as *const agentlm_adapter, 1.0, ptr::null_mut()),
            agentlm_status::AGENTLM_STATUS_INVALID_HANDLE
        );
    }
}

/// The test model, when present (`$AGENTLM_MODEL`, else the cache); the test using it is skipped
/// without it.
fn test_model() -> Option<String> {
    let p = crate::testdata::model_location();
    p.is_file().then(|| p.to_string_lossy().into_owned())
}

#[test]
fn freed_model_and_session_handles_are_refused() {
    let Some(path) = test_model() else {
        eprintln!("skipped: test model not found (scripts/fetch-model.sh)");
        return;
    };
    let _serial = serial();
    use agentlm_status::*;
    unsafe {
        let (mut m, mut s, mut err) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut::<agentlm_error>());
        assert_eq!(agentlm_model_load(path.as_ptr().cast(), path.len(), ptr::null(), &mut m, &mut err), AGENTLM_STATUS_OK);
        assert_eq!(agentlm_session_new(m, ptr::null(), &mut s, ptr::null_mut()), AGENTLM_STATUS_OK);
        assert_eq!(agentlm_session_append_text(s, c"Hi".as_ptr(), 2, ptr::null_mut()), AGENTLM_STATUS_OK);
        agentlm_session_free(s);
        // Checked before anything of the same kind is allocated again (that address could be reused).
        assert_eq!(agentlm_session_append_text(s, c"Hi".as_ptr(), 2, &mut err), AGENTLM_STATUS_INVALID_HANDLE);
        assert!(message(err).contains("session (0x"), "{}", message(err));
        agentlm_error_free(err);
        assert_eq!(agentlm_session_capacity(s), 0);
        agentlm_session_free(s);

        let again = agentlm_model_retain(m);
        assert!(!again.is_null());
        agentlm_model_free(m);
        assert_eq!(agentlm_model_vocab_size(m), 0);
        assert_eq!(agentlm_session_new(m, ptr::null(), &mut s, ptr::null_mut()), AGENTLM_STATUS_INVALID_HANDLE);
        agentlm_model_free(m);
        // The other reference is unaffected.
        assert_eq!(agentlm_model_vocab_size(again), 49152);
        agentlm_model_free(again);
    }
}
