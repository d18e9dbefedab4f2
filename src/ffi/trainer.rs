//! `agentlm_trainer`: the incremental LoRA trainer over [`crate::train::Trainer`].

use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::time::Duration;

use super::adapter::agentlm_adapter;
use super::agent::agentlm_agent;
use super::agentlm_status::*;
use super::handles::{handle, lock};
use super::log::{with_sink, LogSink};
use super::model::agentlm_model;
use super::registry::{self, pin_opt, Users};
use super::types::agentlm_data_kind;
use super::util::{boundary, catch_or, opt_out, read_params, str_arg, write_opt, write_out, Fail};
use super::{agentlm_error, agentlm_status};
use crate::formats::peft::{LoraConfig, TARGETS};
use crate::generate::CancelToken;
use crate::train::{AdamWConfig, DataKind, RunStop, StepReport, TrainConfig, Trainer};

/// [`agentlm_trainer_params::target_modules`] bits: the Llama linears LoRA adapts.
pub const AGENTLM_LORA_Q_PROJ: u32 = 1;
/// `k_proj`.
pub const AGENTLM_LORA_K_PROJ: u32 = 2;
/// `v_proj`.
pub const AGENTLM_LORA_V_PROJ: u32 = 4;
/// `o_proj`.
pub const AGENTLM_LORA_O_PROJ: u32 = 8;
/// `gate_proj`.
pub const AGENTLM_LORA_GATE_PROJ: u32 = 16;
/// `up_proj`.
pub const AGENTLM_LORA_UP_PROJ: u32 = 32;
/// `down_proj`.
pub const AGENTLM_LORA_DOWN_PROJ: u32 = 64;
/// Every Llama linear (the default).
pub const AGENTLM_LORA_ALL: u32 = 127;

/// Parameters of [`agentlm_trainer_new`]. Initialise with [`agentlm_trainer_params_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_trainer_params {
    /// `sizeof(agentlm_trainer_params)`.
    pub struct_size: u32,
    /// LoRA rank (default 8). Ignored when starting from an adapter.
    pub lora_rank: u32,
    /// LoRA alpha (default 16): updates are scaled by alpha / rank.
    pub lora_alpha: f32,
    /// Dropout on the adapters' input while training (default 0).
    pub lora_dropout: f32,
    /// `AGENTLM_LORA_*` bits (default `AGENTLM_LORA_ALL`).
    pub target_modules: u32,
    /// Peak learning rate (default 2e-4).
    pub learning_rate: f32,
    /// Linear warm-up steps (default 0).
    pub warmup_steps: u32,
    /// Step where the cosine decay ends (0: constant rate after warm-up).
    pub total_steps: u32,
    /// Floor of the decay relative to the peak (default 0.1).
    pub min_lr_ratio: f32,
    /// AdamW decoupled weight decay (default 0).
    pub weight_decay: f32,
    /// Global gradient-norm clip (default 1; 0 disables).
    pub max_grad_norm: f32,
    /// Examples per optimizer step (default 1).
    pub grad_accum: u32,
    /// Longest sequence trained on (default 1024); longer ones keep their beginning.
    pub max_tokens: u32,
    /// η: probability of drawing agent data when general data is present too (default 0.2).
    pub agent_ratio: f32,
    /// Records and episodes below this reward are not trained on (default 1).
    pub reward_threshold: f64,
    /// Seed for initialisation, data order and dropout.
    pub seed: u64,
    /// Trade compute for memory in the backward pass.
    pub gradient_checkpointing: bool,
}

/// One optimizer step, as reported to [`agentlm_train_progress_fn`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct agentlm_train_progress {
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean masked loss of the step's examples (before the update).
    pub loss: f64,
    /// Learning rate applied.
    pub learning_rate: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed.
    pub tokens: u32,
    /// Tokens trained on.
    pub loss_tokens: u32,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Tokens per second over this [`agentlm_trainer_run`] call so far.
    pub mean_tokens_per_s: f64,
    /// Seconds since this [`agentlm_trainer_run`] call began.
    pub elapsed_s: f64,
    /// Estimated seconds until the call ends (remaining steps at the call's mean step time, bounded
    /// by what is left of `max_seconds`).
    pub eta_s: f64,
    /// Peak resident memory of the process so far, in bytes (0 where the system does not say).
    pub peak_rss_bytes: u64,
}

/// Called after every optimizer step on the training thread; return false to stop.
pub type agentlm_train_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, progress: *const agentlm_train_progress) -> bool>;

/// The incremental LoRA trainer (opaque). One caller at a time (`AGENTLM_STATUS_BUSY` otherwise);
/// [`agentlm_trainer_cancel`] may be called from any thread.
pub struct agentlm_trainer {
    cancel: CancelToken,
    state: Mutex<TrainerState>,
    users: Users,
}

handle!(agentlm_trainer: Trainer, cancel = cancel, state = TrainerState);

pub(crate) struct TrainerState {
    trainer: Trainer,
    log: Option<LogSink>,
}

/// Default trainer parameters (PEFT's LoRA defaults on every linear, AdamW at 2e-4, clip 1, η 0.2,
/// reward threshold 1, 1024 tokens).
#[no_mangle]
pub extern "C" fn agentlm_trainer_params_default() -> agentlm_trainer_params {
    let c = TrainConfig::default();
    agentlm_trainer_params {
        struct_size: std::mem::size_of::<agentlm_trainer_params>() as u32,
        lora_rank: c.lora.r as u32,
        lora_alpha: c.lora.alpha,
        lora_dropout: c.lora.dropout,
        target_modules: AGENTLM_LORA_ALL,
        learning_rate: c.learning_rate,
        warmup_steps: c.warmup_steps as u32,
        total_steps: c.total_steps as u32,
        min_lr_ratio: c.min_lr_ratio,
        weight_decay: c.adamw.weight_decay,
        max_grad_norm: c.max_grad_norm,
        grad_accum: c.grad_accum as u32,
        max_tokens: c.max_tokens as u32,
        agent_ratio: c.agent_ratio,
        reward_threshold: c.reward_threshold,
        seed: c.seed,
        gradient_checkpointing: c.gradient_checkpointing,
    }
}

fn train_config(p: &agentlm_trainer_params) -> Result<TrainConfig, Fail> {
    if p.target_modules == 0 || p.target_modules & !AGENTLM_LORA_ALL != 0 {
        return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("target_modules {:#x} is not a set of AGENTLM_LORA_* bits", p.target_modules)));
    }
    let targets = TARGETS.iter().enumerate().filter(|(i, _)| p.target_modules & (1 << i) != 0).map(|(_, m)| m.to_string()).collect();
    Ok(TrainConfig {
        lora: LoraConfig { r: p.lora_rank as usize, alpha: p.lora_alpha, dropout: p.lora_dropout, target_modules: targets, ..LoraConfig::default() },
        learning_rate: p.learning_rate,
        warmup_steps: u64::from(p.warmup_steps),
        total_steps: u64::from(p.total_steps),
        min_lr_ratio: p.min_lr_ratio,
        adamw: AdamWConfig { weight_decay: p.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: p.max_grad_norm,
        grad_accum: p.grad_accum as usize,
        max_tokens: p.max_tokens as usize,
        agent_ratio: p.agent_ratio,
        reward_threshold: p.reward_threshold,
        seed: p.seed,
        gradient_checkpointing: p.gradient_checkpointing,
    })
}

fn new_trainer(trainer: Trainer, log: Option<LogSink>) -> *mut agentlm_trainer {
    registry::register(agentlm_trainer { cancel: trainer.cancel_token(), state: Mutex::new(TrainerState { trainer, log }), users: Users::default() })
}

/// Creates a trainer for `model` (which must have a chat template): a fresh adapter, or continuing
/// from `start` (may be NULL; its LoRA shape then overrides the params'). `params` may be NULL.
/// Free with [`agentlm_trainer_free`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_new(
    model: *const agentlm_model,
    params: *const agentlm_trainer_params,
    start: *const agentlm_adapter,
    out: *mut *mut agentlm_trainer,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let p = read_params(params, agentlm_trainer_params_default())?;
        let out = opt_out(out, "out")?;
        let config = train_config(&p)?;
        let start = pin_opt(start, "start")?;
        let trainer = with_sink(m.log.as_ref(), || Trainer::new(&m.model, config, start.as_deref().map(|a| &a.adapter)))?;
        write_out(out, new_trainer(trainer, m.log.clone()));
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Frees a trainer. `NULL` is a no-op, and so is a pointer that is not a live trainer (a second free).
/// Freed from inside its own progress callback, the run is cancelled and the trainer is released when
/// it returns.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_free(trainer: *mut agentlm_trainer) {
    catch_or((), || {
        registry::release(trainer);
    });
}

fn kind(k: i32) -> Result<Option<DataKind>, Fail> {
    Ok(Option::<DataKind>::from(
        agentlm_data_kind::try_from(k).map_err(|_| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("data kind {k} is not an agentlm_data_kind")))?,
    ))
}

/// Adds one JSON record (AgentInstruct `conversations`, ShareGPT, or Agent-FLAN `conversation`
/// schema) of `json_len` bytes. `*added` (may be NULL) is false when its `reward` is below the
/// threshold (nothing added). Malformed or untrainable records: `AGENTLM_STATUS_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_add_json(
    trainer: *const agentlm_trainer,
    data_kind: i32,
    json: *const c_char,
    json_len: usize,
    added: *mut bool,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let json = str_arg(json, json_len, "json")?;
        let k = kind(data_kind)?;
        lock(trainer, |st| {
            let kept = match k {
                Some(k) => st.trainer.add_json(json, k)?,
                None => {
                    let t = crate::train::parse_record(json).map_err(|e| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, e))?;
                    st.trainer.add_eval_trajectory(t)?;
                    true
                }
            };
            write_opt(added, kept);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Adds every record of a JSONL file (`path`, UTF-8 of `path_len` bytes), streamed: the file is read
/// line by line and records are read back when sampled, so it must stay unchanged. `*added` (may be
/// NULL) receives the number added. A malformed line fails the whole call, naming the line.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_add_jsonl_file(
    trainer: *const agentlm_trainer,
    data_kind: i32,
    path: *const c_char,
    path_len: usize,
    added: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let path = str_arg(path, path_len, "path")?;
        let k = kind(data_kind)?;
        lock(trainer, |st| {
            let n = match k {
                Some(k) => st.trainer.add_jsonl_file(path, k)?.added,
                None => st.trainer.add_eval_jsonl_file(path)?,
            };
            write_opt(added, n);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Adds the episode `agent` recorded (with the reward given by `agentlm_agent_set_outcome`) to the
/// agent data. `*added` (may be NULL) is false when its reward is below the threshold or missing.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_add_episode(
    trainer: *const agentlm_trainer,
    agent: *const agentlm_agent,
    added: *mut bool,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let episode = lock(agent, |st| Ok(st.agent.trajectory().clone()))?;
        lock(trainer, |st| {
            let kept = episode.reward.is_some() && st.trainer.add_trajectory(episode, DataKind::Agent)?;
            write_opt(added, kept);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

fn progress_out(r: &StepReport) -> agentlm_train_progress {
    agentlm_train_progress {
        step: r.step,
        loss: r.loss,
        learning_rate: r.lr,
        grad_norm: r.grad_norm,
        tokens: r.tokens as u32,
        loss_tokens: r.loss_tokens as u32,
        tokens_per_s: r.tokens_per_s,
        mean_tokens_per_s: r.mean_tokens_per_s,
        elapsed_s: r.elapsed.as_secs_f64(),
        eta_s: r.eta.as_secs_f64(),
        peak_rss_bytes: r.peak_rss,
    }
}

/// Runs up to `steps` optimizer steps, or until `max_seconds` have passed (0 or less: no limit; the
/// step in progress finishes). `on_progress` (may be NULL) is called after each step; `last` (may be
/// NULL) receives the last step's figures. Returns `AGENTLM_STATUS_OK` (steps done or time up),
/// `AGENTLM_STATUS_STOPPED` (the callback returned false), `AGENTLM_STATUS_CANCELLED`
/// ([`agentlm_trainer_cancel`]; the interrupted step is discarded).
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_run(
    trainer: *const agentlm_trainer,
    steps: u32,
    max_seconds: f64,
    on_progress: agentlm_train_progress_fn,
    user_data: *mut c_void,
    last: *mut agentlm_train_progress,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        if max_seconds.is_nan() {
            return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, "max_seconds is NaN"));
        }
        let budget = (max_seconds > 0.0).then(|| Duration::try_from_secs_f64(max_seconds).unwrap_or(Duration::MAX));
        lock(trainer, |st| {
            let summary = st.trainer.run(u64::from(steps), budget, |r| match on_progress {
                // SAFETY: the host's callback, called as documented.
                Some(f) => unsafe { f(user_data, &progress_out(r)) },
                None => true,
            })?;
            write_opt(last, summary.last.as_ref().map(progress_out).unwrap_or_default());
            Ok(match summary.stop {
                RunStop::Steps | RunStop::TimeBudget => AGENTLM_STATUS_OK,
                RunStop::Callback => AGENTLM_STATUS_STOPPED,
                RunStop::Cancelled => AGENTLM_STATUS_CANCELLED,
            })
        })
    })
}

/// Requests that the running (or next) [`agentlm_trainer_run`] or [`agentlm_trainer_evaluate`] stop at
/// the next example. May be called from any thread. `AGENTLM_STATUS_NULL_POINTER` for NULL,
/// `AGENTLM_STATUS_INVALID_HANDLE` for a pointer that is not a live trainer.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_cancel(trainer: *const agentlm_trainer) -> agentlm_status {
    boundary(std::ptr::null_mut(), || {
        registry::pin(trainer, "trainer")?.cancel.cancel();
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Optimizer steps taken (0 for NULL, a busy trainer, or a pointer that is not a live trainer).
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_step(trainer: *const agentlm_trainer) -> u64 {
    lock(trainer, |st| Ok(st.trainer.step())).unwrap_or(0)
}

/// Mean masked loss over the held-out examples (`AGENTLM_DATA_EVAL`), token-weighted; `tokens` (may be
/// NULL) receives the number of loss tokens.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_evaluate(
    trainer: *const agentlm_trainer,
    loss: *mut f64,
    tokens: *mut u32,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let loss = opt_out(loss, "loss")?;
        lock(trainer, |st| {
            let r = st.trainer.evaluate()?;
            write_out(loss, r.loss);
            write_opt(tokens, r.tokens as u32);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// The adapter as trained so far (a snapshot), to attach to sessions and agents. Free with
/// [`agentlm_adapter_free`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_adapter(
    trainer: *const agentlm_trainer,
    out: *mut *mut agentlm_adapter,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let out = opt_out(out, "out")?;
        let adapter = lock(trainer, |st| Ok(st.trainer.adapter()?))?;
        write_out(out, agentlm_adapter::new_raw(adapter));
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Runs `f` on the trainer with the `(dir, dir_len)` path argument.
fn with_dir(
    trainer: *const agentlm_trainer,
    dir: *const c_char,
    dir_len: usize,
    err: *mut *mut agentlm_error,
    f: impl FnOnce(&Trainer, &str) -> crate::Result<()>,
) -> agentlm_status {
    boundary(err, || {
        let dir = str_arg(dir, dir_len, "dir")?;
        lock(trainer, |st| {
            f(&st.trainer, dir)?;
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Writes the trained adapter as a PEFT directory (each file replaced atomically).
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_save_adapter(
    trainer: *const agentlm_trainer,
    dir: *const c_char,
    dir_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    with_dir(trainer, dir, dir_len, err, |t, dir| t.save_adapter(dir))
}

/// Saves a checkpoint directory (adapter, optimizer state, data and position) that
/// [`agentlm_trainer_resume`] continues exactly. The previous checkpoint there survives a crash.
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_checkpoint(
    trainer: *const agentlm_trainer,
    dir: *const c_char,
    dir_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    with_dir(trainer, dir, dir_len, err, |t, dir| t.checkpoint(dir))
}

/// A trainer continuing from a checkpoint directory, on `model` (the model it was trained on).
/// Free with [`agentlm_trainer_free`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_trainer_resume(
    model: *const agentlm_model,
    dir: *const c_char,
    dir_len: usize,
    out: *mut *mut agentlm_trainer,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let dir = str_arg(dir, dir_len, "dir")?;
        let out = opt_out(out, "out")?;
        let trainer = with_sink(m.log.as_ref(), || Trainer::resume(&m.model, dir))?;
        write_out(out, new_trainer(trainer, m.log.clone()));
        Ok(AGENTLM_STATUS_OK)
    })
}
