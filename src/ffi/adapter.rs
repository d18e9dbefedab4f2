//! `agentlm_adapter`: a LoRA adapter over [`crate::Adapter`]: load, save, and attach to sessions and
//! agents or merge into a model.

use std::ffi::c_char;

use super::agent::agentlm_agent;
use super::agentlm_status::*;
use super::handles::{handle, lock};
use super::log::with_sink;
use super::model::agentlm_model;
use super::registry::{self, pin_opt, Users};
use super::session::agentlm_session;
use super::util::{boundary, catch_or, opt_out, str_arg, write_out, Fail};
use super::{agentlm_error, agentlm_status};
use crate::runtime::Adapter;

/// A LoRA adapter loaded for a model (opaque). Immutable and thread-safe; attach it to any number of
/// sessions and agents of that model. Sessions keep what they use alive: freeing the handle is safe
/// while it is attached.
pub struct agentlm_adapter {
    pub(crate) adapter: Adapter,
    users: Users,
}

impl agentlm_adapter {
    pub(crate) fn new_raw(adapter: Adapter) -> *mut agentlm_adapter {
        registry::register(agentlm_adapter { adapter, users: Users::default() })
    }
}

handle!(agentlm_adapter: Adapter);

/// Loads a Hugging Face PEFT LoRA adapter directory (`dir`, UTF-8 path of `dir_len` bytes) for `model`.
/// Free with [`agentlm_adapter_free`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_adapter_load(
    model: *const agentlm_model,
    dir: *const c_char,
    dir_len: usize,
    out: *mut *mut agentlm_adapter,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let dir = str_arg(dir, dir_len, "dir")?;
        let out = opt_out(out, "out")?;
        let adapter = with_sink(m.log.as_ref(), || Adapter::load(&m.model, dir))?;
        write_out(out, agentlm_adapter::new_raw(adapter));
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Writes the adapter as a PEFT directory (created if needed; each file replaced atomically).
#[no_mangle]
pub unsafe extern "C" fn agentlm_adapter_save(
    adapter: *const agentlm_adapter,
    dir: *const c_char,
    dir_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let a = registry::pin(adapter, "adapter")?;
        let dir = str_arg(dir, dir_len, "dir")?;
        a.adapter.save(dir)?;
        Ok(AGENTLM_STATUS_OK)
    })
}

/// The adapter's rank (0 for NULL or a pointer that is not a live adapter).
#[no_mangle]
pub unsafe extern "C" fn agentlm_adapter_rank(adapter: *const agentlm_adapter) -> u32 {
    catch_or(0, || registry::pin(adapter, "adapter").map_or(0, |a| a.adapter.config().r as u32))
}

/// Frees an adapter handle. `NULL` is a no-op, and so is a pointer that is not a live adapter (a second
/// free). Sessions it is attached to keep using it.
#[no_mangle]
pub unsafe extern "C" fn agentlm_adapter_free(adapter: *mut agentlm_adapter) {
    catch_or((), || {
        registry::release(adapter);
    });
}

/// The attachment an `(adapter, scale)` argument pair asks for: NULL detaches.
fn attachment(adapter: *const agentlm_adapter, scale: f32) -> Result<Option<(Adapter, f32)>, Fail> {
    Ok(pin_opt(adapter, "adapter")?.map(|a| (a.adapter.clone(), scale)))
}

/// Applies `adapter` at `scale` (1: as trained) to the session from now on; NULL detaches. The
/// conversation is kept and re-processed once with the new weights. Ends any generation in progress.
#[no_mangle]
pub unsafe extern "C" fn agentlm_session_set_adapter(
    session: *const agentlm_session,
    adapter: *const agentlm_adapter,
    scale: f32,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let attach = attachment(adapter, scale)?;
        lock(session, |st| {
            st.session.set_adapter(attach)?;
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Applies `adapter` at `scale` to the agent from its next reply on (NULL detaches): hot swap between
/// steps. `AGENTLM_STATUS_INVALID_ARGUMENT` mid-reply (after `AGENTLM_STEP_PENDING`).
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_set_adapter(
    agent: *const agentlm_agent,
    adapter: *const agentlm_adapter,
    scale: f32,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let attach = attachment(adapter, scale)?;
        lock(agent, |st| {
            st.agent.set_adapter(attach)?;
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// A new model handle whose weights have `adapter` merged in at `scale`: the adapter's outputs at the
/// base model's speed. Shares the tokenizer and template with `model`. Free with `agentlm_model_free`.
#[no_mangle]
pub unsafe extern "C" fn agentlm_model_merge_adapter(
    model: *const agentlm_model,
    adapter: *const agentlm_adapter,
    scale: f32,
    out: *mut *mut agentlm_model,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let a = registry::pin(adapter, "adapter")?;
        let out = opt_out(out, "out")?;
        let merged = with_sink(m.log.as_ref(), || m.model.merged(&a.adapter, scale))?;
        write_out(out, agentlm_model::new_raw(merged, m.log.clone()));
        Ok(AGENTLM_STATUS_OK)
    })
}
