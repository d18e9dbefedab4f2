//! Incremental LoRA fine-tuning on agent trajectories (AgentTuning's recipe) inside the host.
//!
//! A [`Trainer`] owns LoRA parameters for one [`Model`], a dataset that grows while it trains (JSON
//! records, JSONL files indexed by line, episodes recorded by agents, filtered by reward), an AdamW
//! optimizer with warm-up + cosine schedule and global-norm clipping. Each step samples agent data with
//! probability η and general chat data with 1 − η, renders the conversation with the model's chat
//! template, and computes the mean cross-entropy over the tokens of assistant turns marked for loss
//! (content and end-of-turn token). The base weights stay frozen and untouched (a GGUF base is trained
//! against its dequantized weights; the file is never written). Progress, cancellation, held-out
//! evaluation, PEFT adapters and checkpoint/resume (adapter, optimizer state and data position).
//!
//! Everything is seeded: the same data, configuration and seed give the same parameters, and a run
//! resumed from a checkpoint continues exactly as the uninterrupted run would have.
//!
//! A trainer is `Send` but not `Sync`: drive it from one thread at a time ([`Trainer::cancel_token`]
//! may be used from any thread).

mod checkpoint;
mod data;
mod optim;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agent::trajectory::{TokenizedTrajectory, Trajectory};
use crate::engine::{self, log_softmax, Device, Tensor, TensorData};
use crate::error::{Error, Result};
use crate::formats::peft::{self, tensor_name, LoraConfig, PeftAdapter, TARGETS};
use crate::formats::HostTensor;
use crate::generate::{CancelToken, Rng};
use crate::model::{HostPair, HostTraining, Llama, LoraApply, LoraPair, LoraWeights, TrainPass};
use crate::runtime::adapter::init_lora;
use crate::runtime::{Adapter, Model};
use crate::template::ChatTemplate;

use data::Source;
pub use data::{parse_record, DataKind};
pub use optim::{clip_global_norm, global_norm, lr_at, AdamW, AdamWConfig};

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The adapter's shape (ignored when starting from an existing adapter, whose own is used).
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Step at which the cosine decay reaches `learning_rate · min_lr_ratio`; 0 keeps the peak rate.
    pub total_steps: u64,
    /// Floor of the cosine decay, relative to the peak.
    pub min_lr_ratio: f32,
    /// AdamW's betas, epsilon and decoupled weight decay.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f32,
    /// Examples per optimizer step (their gradients are averaged).
    pub grad_accum: usize,
    /// Longest sequence trained on; longer conversations keep their first `max_tokens` tokens.
    pub max_tokens: usize,
    /// η: probability of drawing agent data when both kinds are present (AgentTuning's best: 0.2).
    pub agent_ratio: f32,
    /// Records and episodes with a reward below this are not trained on (AgentTuning keeps reward 1).
    pub reward_threshold: f64,
    /// Seed for initialisation, data order and dropout.
    pub seed: u64,
    /// Recompute memory-bound activations in the backward pass instead of keeping them.
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            learning_rate: 2e-4,
            warmup_steps: 0,
            total_steps: 0,
            min_lr_ratio: 0.1,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            grad_accum: 1,
            max_tokens: 1024,
            agent_ratio: 0.2,
            reward_threshold: 1.0,
            seed: 0,
            gradient_checkpointing: false,
        }
    }
}

impl TrainConfig {
    fn validate(&mut self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        self.lora.validate().map_err(Error::InvalidArgument)?;
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return bad(format!("learning_rate {} must be finite and non-negative", self.learning_rate));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!("min_lr_ratio {} is outside [0, 1]", self.min_lr_ratio));
        }
        let a = self.adamw;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0 && a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
            return bad(format!("invalid AdamW settings {a:?}"));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!("max_grad_norm {} must be finite and non-negative", self.max_grad_norm));
        }
        if self.grad_accum == 0 || self.max_tokens < 2 {
            return bad("grad_accum must be positive and max_tokens at least 2".into());
        }
        if !(0.0..=1.0).contains(&self.agent_ratio) {
            return bad(format!("agent_ratio {} is outside [0, 1]", self.agent_ratio));
        }
        if self.reward_threshold.is_nan() {
            return bad("reward_threshold is NaN".into());
        }
        Ok(())
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "lora": self.lora.to_json(),
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr_ratio": self.min_lr_ratio,
            "adamw": self.adamw,
            "max_grad_norm": self.max_grad_norm,
            "grad_accum": self.grad_accum,
            "max_tokens": self.max_tokens,
            "agent_ratio": self.agent_ratio,
            "reward_threshold": self.reward_threshold,
            "seed": self.seed,
            "gradient_checkpointing": self.gradient_checkpointing,
        })
    }

    fn from_json(v: &serde_json::Value, path: &Path) -> Result<TrainConfig> {
        let bad = |m: &str| Error::State(format!("{}: {m}", path.display()));
        let lora = LoraConfig::from_json(&v["lora"].to_string(), path)?;
        let f = |k: &str| v[k].as_f64().ok_or_else(|| bad(&format!("\"{k}\" is missing")));
        let u = |k: &str| v[k].as_u64().ok_or_else(|| bad(&format!("\"{k}\" is missing")));
        Ok(TrainConfig {
            lora,
            learning_rate: f("learning_rate")? as f32,
            warmup_steps: u("warmup_steps")?,
            total_steps: u("total_steps")?,
            min_lr_ratio: f("min_lr_ratio")? as f32,
            adamw: serde_json::from_value(v["adamw"].clone()).map_err(|e| bad(&e.to_string()))?,
            max_grad_norm: f("max_grad_norm")? as f32,
            grad_accum: u("grad_accum")? as usize,
            max_tokens: u("max_tokens")? as usize,
            agent_ratio: f("agent_ratio")? as f32,
            reward_threshold: f("reward_threshold")?,
            seed: u("seed")?,
            gradient_checkpointing: v["gradient_checkpointing"].as_bool().unwrap_or(false),
        })
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Optimizer steps taken so far (this one included).
    pub step: u64,
    /// Mean masked loss of the step's examples, before the update.
    pub loss: f64,
    /// Learning rate applied.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens run through the model (forward and backward).
    pub tokens: usize,
    /// Tokens trained on (loss tokens).
    pub loss_tokens: usize,
    /// `tokens` per second of this step.
    pub tokens_per_s: f64,
    /// Tokens per second over the steps of this [`Trainer::run`] call so far.
    pub mean_tokens_per_s: f64,
    /// Time since this [`Trainer::run`] call began.
    pub elapsed: Duration,
    /// Estimated time until the call ends: the remaining steps at this call's mean step time, bounded
    /// by what is left of its time budget.
    pub eta: Duration,
    /// Peak resident memory of the process so far, in bytes (0 where the system does not say).
    pub peak_rss: u64,
}

/// Why [`Trainer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStop {
    /// The requested number of steps ran.
    Steps,
    /// The time budget ran out (the step in progress finished first).
    TimeBudget,
    /// [`Trainer::cancel_token`] was triggered; the interrupted step was discarded.
    Cancelled,
    /// The progress callback returned `false`.
    Callback,
}

/// What [`Trainer::run`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Steps completed in this call.
    pub steps: u64,
    /// Why it stopped.
    pub stop: RunStop,
    /// The last step's report.
    pub last: Option<StepReport>,
}

/// A held-out evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    /// Mean cross-entropy over every loss token of every evaluation example.
    pub loss: f64,
    /// Loss tokens counted.
    pub tokens: usize,
    /// Examples evaluated.
    pub examples: usize,
}

/// How many records an addition kept and why others were left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddReport {
    /// Records added.
    pub added: usize,
    /// Records below the reward threshold.
    pub below_reward: usize,
    /// Records with no trained token within the token limit (skipped with a warning).
    pub no_loss: usize,
}

enum Admit {
    Keep,
    BelowReward,
    NoLoss,
}

#[derive(Debug, Clone, Default)]
struct Pool {
    items: Vec<Source>,
    epoch: u64,
    cursor: usize,
    perm: Vec<u32>,
}

/// Where the next draw comes from; saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    draws: u64,
    /// Per pool: epoch, cursor, length of the epoch's permutation.
    pools: [(u64, usize, usize); 2],
}

/// The incremental LoRA trainer. See the module documentation.
pub struct Trainer {
    model: Model,
    /// Overrides the model's own chat template.
    template: Option<ChatTemplate>,
    config: TrainConfig,
    names: Vec<String>,
    shapes: Vec<[usize; 2]>,
    params: Vec<Vec<f32>>,
    opt: AdamW,
    pools: [Pool; 2],
    eval: Vec<Source>,
    draws: u64,
    cancel: CancelToken,
    /// Host-path training state (transposed weights, buffers), made at the first backward pass.
    host: std::sync::OnceLock<HostTraining>,
    /// Tokenized in-memory examples, by the address of their (pool-held) record: a draw of one
    /// already seen is not rendered and tokenized again.
    tokenized: std::collections::HashMap<usize, Arc<TokenizedTrajectory>>,
}

/// Adapter parameters as a training path evaluates them.
enum Frozen {
    /// burn device tensors (the autodiff path).
    Device(LoraWeights),
    /// Host matrices (the quantized CPU path).
    Host(Vec<[Option<HostPair>; 7]>),
}

/// Mean cross-entropy of `ids[t]` given `ids[..t]` over the positions `t` with `mask[t]` (the logits
/// of position `t - 1` predict token `t`; position 0 is never counted). Returns the loss as a one-element
/// tensor (with the LoRA graph when `lora` holds autodiff leaves) and the number of tokens counted.
///
/// # Errors
/// No masked token, model errors.
pub fn masked_loss(llama: &Llama, ids: &[u32], mask: &[bool], lora: Option<LoraApply>) -> Result<(Tensor<1>, usize)> {
    if ids.len() != mask.len() {
        return Err(Error::InvalidArgument(format!("{} ids but {} mask entries", ids.len(), mask.len())));
    }
    let (rows, targets): (Vec<u32>, Vec<u32>) = (1..ids.len()).filter(|&t| mask[t]).map(|t| ((t - 1) as u32, ids[t])).unzip();
    if rows.is_empty() {
        return Err(Error::InvalidArgument("no token is marked for loss".into()));
    }
    let n = rows.len();
    // Only the rows that predict a trained token go through the head: [n, vocab], not [len, vocab].
    let hidden = llama.hidden_states(ids, lora)?;
    let device = hidden.device();
    let x = hidden.select(0, engine::upload_ids(&rows, &device));
    let logp = log_softmax(llama.head(x), 1);
    let picked = logp.gather(1, engine::upload_ids(&targets, &device).reshape([n, 1]));
    Ok((picked.sum().neg().div_scalar(n as f64), n))
}

/// The pool (0 agent, 1 general) of draw number `draw`: agent with probability `eta` when both are
/// non-empty. `None` when both are empty.
fn draw_kind(seed: u64, draw: u64, have: [bool; 2], eta: f32) -> Option<usize> {
    let mut rng = Rng::new(seed ^ 0x5EED ^ draw.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match have {
        [true, true] => Some(usize::from(rng.next_f64() >= f64::from(eta))),
        [true, false] => Some(0),
        [false, true] => Some(1),
        [false, false] => None,
    }
}

fn permutation(n: usize, seed: u64, kind: usize, epoch: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed ^ 0xD1B5_4A32_D192_ED03u64.wrapping_mul(kind as u64 + 1) ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

impl Trainer {
    /// A trainer for `model` with a freshly initialised adapter (PEFT's initialisation, seeded by
    /// `config.seed`), or continuing from `start` (whose LoRA configuration then replaces `config.lora`).
    ///
    /// # Errors
    /// Invalid settings; a model without a chat template (set one with [`Trainer::with_template`]);
    /// an adapter made for another model.
    pub fn new(model: &Model, config: TrainConfig, start: Option<&Adapter>) -> Result<Trainer> {
        Self::build(model, config, start, None)
    }

    /// [`Trainer::new`] rendering conversations with `template` instead of the model's own.
    ///
    /// # Errors
    /// As [`Trainer::new`].
    pub fn with_template(model: &Model, config: TrainConfig, start: Option<&Adapter>, template: ChatTemplate) -> Result<Trainer> {
        Self::build(model, config, start, Some(template))
    }

    fn template(&self) -> &ChatTemplate {
        self.template.as_ref().or(self.model.chat_template()).expect("checked when the trainer was made")
    }

    fn build(model: &Model, mut config: TrainConfig, start: Option<&Adapter>, template: Option<ChatTemplate>) -> Result<Trainer> {
        if template.is_none() && model.chat_template().is_none() {
            return Err(Error::InvalidArgument("the model has no chat template; pass one (Trainer::with_template)".into()));
        }
        let tensors = match start {
            Some(a) => {
                a.check_model(model)?;
                let p = a.to_peft()?;
                config.lora = p.config;
                p.tensors
            }
            None => {
                config.validate()?;
                init_lora(model.config(), &config.lora, config.seed)?
            }
        };
        config.validate()?;
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        let mut params = Vec::new();
        for l in 0..model.config().num_hidden_layers {
            for m in TARGETS.iter().filter(|m| config.lora.targets(m)) {
                for a in [true, false] {
                    let name = tensor_name(l, m, a);
                    let t = tensors.get(&name).ok_or_else(|| Error::InvalidArgument(format!("adapter tensor {name} is missing")))?;
                    shapes.push([t.shape[0], t.shape[1]]);
                    params.push(t.data.clone());
                    names.push(name);
                }
            }
        }
        let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
        Ok(Trainer {
            model: model.clone(),
            template,
            opt: AdamW::new(config.adamw, &sizes),
            config,
            names,
            shapes,
            params,
            pools: Default::default(),
            eval: Vec::new(),
            draws: 0,
            cancel: CancelToken::default(),
            host: std::sync::OnceLock::new(),
            tokenized: Default::default(),
        })
    }

    /// The settings (with the LoRA configuration actually trained).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.opt.step
    }
    /// Training examples held, per kind.
    pub fn examples(&self, kind: DataKind) -> usize {
        self.pools[kind.index()].items.len()
    }
    /// Where each of the examples the current epoch of `kind` will still draw was added (0: the
    /// first example of that kind added), in the order they will be drawn; where the epoch is used
    /// up, the whole next epoch's order. An epoch's order is fixed when it begins, so examples added
    /// during one wait for the next. For logs, and for replaying a run's data order elsewhere (the
    /// side-by-side training benchmark feeds its peer this order).
    pub fn upcoming(&self, kind: DataKind) -> Vec<usize> {
        let pool = &self.pools[kind.index()];
        if pool.cursor < pool.perm.len() {
            return pool.perm[pool.cursor..].iter().map(|&i| i as usize).collect();
        }
        let epoch = pool.epoch + u64::from(!pool.perm.is_empty());
        permutation(pool.items.len(), self.config.seed, kind.index(), epoch).into_iter().map(|i| i as usize).collect()
    }
    /// Held-out examples.
    pub fn eval_examples(&self) -> usize {
        self.eval.len()
    }
    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(Vec::len).sum()
    }
    /// A handle that stops [`Trainer::run`] or [`Trainer::evaluate`] from any thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Renders and tokenizes a trajectory with this trainer's template and token limit.
    ///
    /// # Errors
    /// Template or tokenizer errors; a conversation with no trained token (after truncation).
    pub fn tokenize(&self, t: &Trajectory) -> Result<TokenizedTrajectory> {
        let tok = t.tokenize(self.template(), self.model.tokenizer(), Some(self.config.max_tokens))?;
        if !tok.train.iter().skip(1).any(|&b| b) {
            return Err(Error::InvalidArgument(format!(
                "conversation {} has no trained token in its first {} tokens",
                t.id.as_deref().unwrap_or("(no id)"),
                self.config.max_tokens
            )));
        }
        Ok(tok)
    }

    /// Whether `t` is kept: below the reward threshold (when `filter_reward`), nothing to train on
    /// within the token limit, or kept.
    fn admit(&self, t: &Trajectory, filter_reward: bool) -> Result<Admit> {
        if filter_reward && t.reward.is_some_and(|r| r < self.config.reward_threshold) {
            return Ok(Admit::BelowReward);
        }
        match self.tokenize(t) {
            Ok(_) => Ok(Admit::Keep),
            Err(Error::InvalidArgument(m)) if m.contains("no trained token") => {
                tracing::warn!(id = ?t.id, "skipped: {m}");
                Ok(Admit::NoLoss)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds a trajectory (an episode recorded by an agent, or a parsed record) to the training data.
    /// Returns `false`, adding nothing, when its reward is below the threshold.
    ///
    /// # Errors
    /// A conversation that does not render or has nothing to train on.
    pub fn add_trajectory(&mut self, t: Trajectory, kind: DataKind) -> Result<bool> {
        match self.admit(&t, true)? {
            Admit::Keep => {}
            Admit::BelowReward => return Ok(false),
            Admit::NoLoss => {
                self.tokenize(&t)?;
            }
        }
        self.pools[kind.index()].items.push(Source::Memory(Arc::new(t)));
        Ok(true)
    }

    /// Adds one JSON record (AgentInstruct, ShareGPT or Agent-FLAN schema). Returns `false` when its
    /// reward is below the threshold.
    ///
    /// # Errors
    /// Malformed records, as [`Trainer::add_trajectory`].
    pub fn add_json(&mut self, json: &str, kind: DataKind) -> Result<bool> {
        let t = parse_record(json).map_err(Error::InvalidArgument)?;
        self.add_trajectory(t, kind)
    }

    /// Adds every record of a JSONL file, streamed: only line offsets are kept, and records are read
    /// back when sampled. The file must not change while the trainer uses it.
    ///
    /// # Errors
    /// I/O errors; the first malformed line or one that does not render, by number (nothing is added
    /// then). Records with nothing to train on within `max_tokens` are skipped and counted.
    pub fn add_jsonl_file(&mut self, path: impl AsRef<Path>, kind: DataKind) -> Result<AddReport> {
        let (items, report) = self.index(path.as_ref(), true)?;
        self.pools[kind.index()].items.extend(items);
        Ok(report)
    }

    /// Adds a held-out trajectory for [`Trainer::evaluate`] (no reward filter).
    ///
    /// # Errors
    /// As [`Trainer::add_trajectory`].
    pub fn add_eval_trajectory(&mut self, t: Trajectory) -> Result<()> {
        self.tokenize(&t)?;
        self.eval.push(Source::Memory(Arc::new(t)));
        Ok(())
    }

    /// Adds every record of a JSONL file to the held-out set (no reward filter).
    ///
    /// # Errors
    /// As [`Trainer::add_jsonl_file`].
    pub fn add_eval_jsonl_file(&mut self, path: impl AsRef<Path>) -> Result<usize> {
        let (items, report) = self.index(path.as_ref(), false)?;
        self.eval.extend(items);
        Ok(report.added)
    }

    fn index(&self, path: &Path, filter_reward: bool) -> Result<(Vec<Source>, AddReport)> {
        let mut report = AddReport::default();
        let items = data::index_jsonl(path, |t| {
            Ok(match self.admit(t, filter_reward)? {
                Admit::Keep => {
                    report.added += 1;
                    true
                }
                Admit::BelowReward => {
                    report.below_reward += 1;
                    false
                }
                Admit::NoLoss => {
                    report.no_loss += 1;
                    false
                }
            })
        })?;
        if report.no_loss > 0 {
            tracing::warn!(path = %path.display(), skipped = report.no_loss, max_tokens = self.config.max_tokens, "records with no trained token in the token limit were skipped");
        }
        Ok((items, report))
    }

    fn next_source(&mut self) -> Result<Source> {
        let have = [!self.pools[0].items.is_empty(), !self.pools[1].items.is_empty()];
        let kind = draw_kind(self.config.seed, self.draws, have, self.config.agent_ratio)
            .ok_or_else(|| Error::InvalidArgument("the trainer has no training examples".into()))?;
        self.draws += 1;
        let seed = self.config.seed;
        let pool = &mut self.pools[kind];
        if pool.cursor >= pool.perm.len() {
            if !pool.perm.is_empty() {
                pool.epoch += 1;
            }
            pool.perm = permutation(pool.items.len(), seed, kind, pool.epoch);
            pool.cursor = 0;
        }
        let i = pool.perm[pool.cursor] as usize;
        pool.cursor += 1;
        Ok(pool.items[i].clone())
    }

    fn position(&self) -> Position {
        let p = |i: usize| (self.pools[i].epoch, self.pools[i].cursor, self.pools[i].perm.len());
        Position { draws: self.draws, pools: [p(0), p(1)] }
    }

    fn set_position(&mut self, pos: &Position) {
        self.draws = pos.draws;
        for (i, &(epoch, cursor, len)) in pos.pools.iter().enumerate() {
            let pool = &mut self.pools[i];
            pool.epoch = epoch;
            pool.cursor = cursor;
            pool.perm = if len == 0 { Vec::new() } else { permutation(len, self.config.seed, i, epoch) };
        }
    }

    /// LoRA weights built from `tensors` (one per parameter, in `names` order).
    fn weights(&self, tensors: Vec<Tensor<2>>) -> LoraWeights {
        let mut it = tensors.into_iter();
        let layers = (0..self.model.config().num_hidden_layers)
            .map(|_| {
                let mut mods: [Option<LoraPair>; 7] = Default::default();
                for (m, module) in TARGETS.iter().enumerate() {
                    if self.config.lora.targets(module) {
                        let (a, b) = (it.next().expect("one A per target"), it.next().expect("one B per target"));
                        mods[m] = Some(LoraPair { a, b });
                    }
                }
                mods
            })
            .collect();
        LoraWeights { layers, scaling: self.config.lora.scaling(), host: Default::default() }
    }

    fn upload(&self, device: &Device, grad: bool) -> Vec<Tensor<2>> {
        self.params
            .iter()
            .zip(&self.shapes)
            .map(|(p, s)| {
                let t = Tensor::<2>::from_data(TensorData::new(p.clone(), *s), device);
                if grad {
                    t.require_grad()
                } else {
                    t
                }
            })
            .collect()
    }

    /// The adapters as host matrices (targets order per layer), for the host path.
    fn host_pairs(&self) -> Vec<[Option<HostPair>; 7]> {
        let mut it = self.params.iter().zip(&self.shapes);
        (0..self.model.config().num_hidden_layers)
            .map(|_| {
                let mut mods: [Option<HostPair>; 7] = Default::default();
                for (m, module) in TARGETS.iter().enumerate() {
                    if self.config.lora.targets(module) {
                        let ((a, sa), (b, _)) = (it.next().expect("one A per target"), it.next().expect("one B per target"));
                        mods[m] = Some(HostPair { a: a.clone(), b: b.clone(), r: sa[0] });
                    }
                }
                mods
            })
            .collect()
    }

    fn host_pass<'a>(&self, lora: &'a [[Option<HostPair>; 7]], dropout_seed: u64) -> TrainPass<'a> {
        TrainPass {
            lora,
            factor: self.config.lora.scaling(),
            dropout: self.config.lora.dropout,
            seed: dropout_seed,
            checkpoint: self.config.gradient_checkpointing,
            f32_attention: false,
        }
    }

    /// Loss and gradients (one per parameter) of one tokenized example.
    fn loss_and_grads(&self, ex: &TokenizedTrajectory, dropout_seed: u64) -> Result<(f64, usize, Vec<Vec<f32>>)> {
        let llama = self.model.llama();
        if llama.trains_on_host() {
            let pairs = self.host_pairs();
            let training = self.host.get_or_init(|| llama.host_training().expect("the host path"));
            let res = llama.host_train_pass(&ex.ids, &ex.train, &self.host_pass(&pairs, dropout_seed), Some(training))?;
            if !res.loss.is_finite() {
                return Err(Error::InvalidArgument(format!("the loss is {} (diverged?)", res.loss)));
            }
            let mut out = Vec::with_capacity(self.params.len());
            for mut layer in res.grads.expect("gradients were asked for") {
                for (m, module) in TARGETS.iter().enumerate() {
                    if self.config.lora.targets(module) {
                        let (da, db) = layer[m].take().expect("a gradient per targeted module");
                        out.push(da);
                        out.push(db);
                    }
                }
            }
            return Ok((res.loss, res.tokens, out));
        }
        let mut device = llama.device().clone().autodiff();
        if self.config.gradient_checkpointing {
            device = device.gradient_checkpointing();
        }
        if self.config.lora.dropout > 0.0 {
            device.seed(dropout_seed);
        }
        let leaves = self.upload(&device, true);
        let weights = self.weights(leaves.clone());
        let apply = LoraApply { weights: &weights, scale: 1.0, dropout: self.config.lora.dropout };
        let (loss, n) = masked_loss(llama, &ex.ids, &ex.train, Some(apply))?;
        let grads = loss.backward();
        let value = engine::readback(loss.inner())?[0];
        let mut out = Vec::with_capacity(leaves.len());
        for (leaf, p) in leaves.iter().zip(&self.params) {
            out.push(match leaf.grad(&grads) {
                Some(g) => engine::readback(g)?,
                None => vec![0.0; p.len()],
            });
        }
        if !value.is_finite() {
            return Err(Error::InvalidArgument(format!("the loss is {value} (diverged?)")));
        }
        Ok((f64::from(value), n, out))
    }

    /// The masked loss and its gradients for one trajectory at the current parameters, without
    /// changing anything (for inspection and tests). Gradients are by PEFT tensor name.
    ///
    /// # Errors
    /// As [`Trainer::tokenize`]; model errors.
    pub fn gradients(&self, t: &Trajectory) -> Result<(f64, BTreeMap<String, Vec<f32>>)> {
        let ex = self.tokenize(t)?;
        let (loss, _, g) = self.model.compute(|| self.loss_and_grads(&ex, self.config.seed))?;
        Ok((loss, self.names.iter().cloned().zip(g).collect()))
    }

    /// Runs up to `steps` optimizer steps (each over `grad_accum` examples), stopping early when
    /// `budget` has elapsed, on cancellation, or when `progress` returns `false`. `progress` is called
    /// after every step on the calling thread.
    ///
    /// # Errors
    /// No training data; a record that cannot be read back; model errors. Parameters are unchanged by
    /// a step that fails.
    pub fn run(&mut self, steps: u64, budget: Option<Duration>, mut progress: impl FnMut(&StepReport) -> bool) -> Result<RunSummary> {
        let started = Instant::now();
        let mut summary = RunSummary { steps: 0, stop: RunStop::Steps, last: None };
        let mut run_tokens = 0usize;
        while summary.steps < steps {
            if budget.is_some_and(|b| started.elapsed() >= b) {
                summary.stop = RunStop::TimeBudget;
                break;
            }
            let t0 = Instant::now();
            let before = self.position();
            let outcome = self.accumulate();
            let (loss, mut grads, tokens, loss_tokens) = match outcome {
                Ok(Some(x)) => x,
                Ok(None) => {
                    self.set_position(&before);
                    summary.stop = RunStop::Cancelled;
                    break;
                }
                Err(e) => {
                    self.set_position(&before);
                    return Err(e);
                }
            };
            let grad_norm = clip_global_norm(&mut grads, self.config.max_grad_norm);
            let c = &self.config;
            let lr = lr_at(self.opt.step, c.learning_rate, c.warmup_steps, c.total_steps, c.min_lr_ratio);
            self.opt.update(&mut self.params, &grads, lr);
            let secs = t0.elapsed().as_secs_f64();
            run_tokens += tokens;
            let elapsed = started.elapsed();
            let done = summary.steps + 1;
            let mut eta = Duration::try_from_secs_f64(elapsed.as_secs_f64() * (steps - done) as f64 / done as f64).unwrap_or(Duration::MAX);
            if let Some(b) = budget {
                eta = eta.min(b.saturating_sub(elapsed));
            }
            let report = StepReport {
                step: self.opt.step,
                loss,
                lr,
                grad_norm,
                tokens,
                loss_tokens,
                tokens_per_s: if secs > 0.0 { tokens as f64 / secs } else { 0.0 },
                mean_tokens_per_s: run_tokens as f64 / elapsed.as_secs_f64().max(1e-9),
                elapsed,
                eta,
                peak_rss: crate::engine::memory::peak_rss().unwrap_or(0),
            };
            tracing::debug!(step = report.step, loss = report.loss, lr = report.lr, grad_norm = report.grad_norm, "train step");
            summary.steps += 1;
            let go_on = progress(&report);
            summary.last = Some(report);
            if !go_on {
                summary.stop = RunStop::Callback;
                break;
            }
        }
        Ok(summary)
    }

    /// One step's averaged loss and gradients; `None` when cancelled.
    #[allow(clippy::type_complexity)]
    fn accumulate(&mut self) -> Result<Option<(f64, Vec<Vec<f32>>, usize, usize)>> {
        let k = self.config.grad_accum;
        let mut sum: Vec<Vec<f32>> = self.params.iter().map(|p| vec![0.0; p.len()]).collect();
        let (mut loss, mut tokens, mut loss_tokens) = (0.0, 0, 0);
        for _ in 0..k {
            if self.cancel.is_cancelled() {
                self.cancel.reset();
                return Ok(None);
            }
            let src = self.next_source()?;
            let ex = match &src {
                Source::Memory(t) => match self.tokenized.get(&(Arc::as_ptr(t) as usize)) {
                    Some(ex) => ex.clone(),
                    None => {
                        let ex = Arc::new(self.tokenize(t)?);
                        self.tokenized.insert(Arc::as_ptr(t) as usize, ex.clone());
                        ex
                    }
                },
                Source::Line { .. } => Arc::new(self.tokenize(&*src.load()?)?),
            };
            let seed = self.config.seed ^ self.draws.wrapping_mul(0xA24B_AED4_963E_E407);
            let (l, n, g) = self.model.compute(|| self.loss_and_grads(&ex, seed))?;
            loss += l / k as f64;
            tokens += ex.ids.len();
            loss_tokens += n;
            for (s, g) in sum.iter_mut().zip(g) {
                s.iter_mut().zip(g).for_each(|(s, g)| *s += g / k as f32);
            }
        }
        Ok(Some((loss, sum, tokens, loss_tokens)))
    }

    /// The masked loss of one trajectory at the current parameters (no gradients), and its loss tokens.
    ///
    /// # Errors
    /// As [`Trainer::tokenize`]; model errors.
    pub fn loss(&self, t: &Trajectory) -> Result<(f64, usize)> {
        self.loss_with(&self.frozen_weights(), t)
    }

    /// The current parameters in the form the model's training path evaluates with.
    fn frozen_weights(&self) -> Frozen {
        if self.model.llama().trains_on_host() {
            Frozen::Host(self.host_pairs())
        } else {
            Frozen::Device(self.weights(self.upload(self.model.llama().device(), false)))
        }
    }

    /// The masked loss of `t` with `weights` applied, and its loss tokens.
    fn loss_with(&self, weights: &Frozen, t: &Trajectory) -> Result<(f64, usize)> {
        let ex = self.tokenize(t)?;
        let llama = self.model.llama();
        match weights {
            Frozen::Host(pairs) => {
                let pass = TrainPass { dropout: 0.0, ..self.host_pass(pairs, 0) };
                let res = self.model.compute(|| llama.host_train_pass(&ex.ids, &ex.train, &pass, None))?;
                Ok((res.loss, res.tokens))
            }
            Frozen::Device(weights) => {
                let apply = LoraApply { weights, scale: 1.0, dropout: 0.0 };
                let (loss, n) = self.model.compute(|| masked_loss(llama, &ex.ids, &ex.train, Some(apply)))?;
                Ok((f64::from(engine::readback(loss)?[0]), n))
            }
        }
    }

    /// Mean masked loss over the held-out set at the current parameters (token-weighted).
    ///
    /// # Errors
    /// No held-out examples; [`Error::Cancelled`]; model errors.
    pub fn evaluate(&self) -> Result<EvalReport> {
        if self.eval.is_empty() {
            return Err(Error::InvalidArgument("the trainer has no held-out examples".into()));
        }
        let weights = self.frozen_weights();
        let (mut total, mut tokens) = (0.0f64, 0usize);
        for src in &self.eval {
            if self.cancel.is_cancelled() {
                self.cancel.reset();
                return Err(Error::Cancelled);
            }
            let (loss, n) = self.loss_with(&weights, &*src.load()?)?;
            total += loss * n as f64;
            tokens += n;
        }
        Ok(EvalReport { loss: total / tokens as f64, tokens, examples: self.eval.len() })
    }

    /// The adapter as trained so far, ready to attach to sessions (a snapshot: later steps do not change it).
    ///
    /// # Errors
    /// Device errors.
    pub fn adapter(&self) -> Result<Adapter> {
        Adapter::from_peft(&self.model, &self.peft())
    }

    fn peft(&self) -> PeftAdapter {
        let tensors =
            self.names.iter().zip(&self.shapes).zip(&self.params).map(|((n, s), p)| (n.clone(), HostTensor { shape: s.to_vec(), data: p.clone() })).collect();
        PeftAdapter { config: self.config.lora.clone(), tensors }
    }

    /// Writes the adapter as a PEFT directory (atomically per file).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save_adapter(&self, dir: impl AsRef<Path>) -> Result<()> {
        Ok(peft::write_adapter(dir.as_ref(), &self.peft())?)
    }
}

#[cfg(test)]
mod tests;
