//! ABI-level checks that need no model: versions, status strings, argument validation.

use std::ffi::CStr;
use std::ptr;

use super::*;

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
    let codes = [0, 1, 2, 3, 4, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15, -99];
    let mut seen = std::collections::HashSet::new();
    for c in codes {
        let s = unsafe { CStr::from_ptr(agentlm_status_string(c)) }.to_str().unwrap();
        assert_ne!(s, "unknown status", "{c}");
        assert!(seen.insert(s), "{c} shares its description");
    }
    assert_eq!(unsafe { CStr::from_ptr(agentlm_status_string(12345)) }.to_str().unwrap(), "unknown status");
}

#[test]
fn load_rejects_bad_arguments_with_errors() {
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
