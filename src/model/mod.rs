//! The Llama decoder (`LlamaForCausalLM`) on burn.
//!
//! Weights are immutable once loaded and the [`Llama`] value is `Send + Sync`: share it behind an `Arc`.
//! Per-conversation state lives in a [`KvCache`] that the caller owns and passes to [`Llama::forward`].

mod host;
mod host_train;
pub mod lora;
mod rope;

use std::sync::{Arc, OnceLock};

use crate::config::{LayerTensor, LlamaConfig};
use crate::engine::{self, silu, softmax, Device, EngineError, Tensor};
use crate::formats::gguf::GgufWeights;
use crate::formats::{FormatError, WeightSource};

pub(crate) use host::HostPair;
pub(crate) use host_train::{HostTraining, PassResult, TrainPass};
pub use lora::{LoraApply, LoraPair, LoraWeights};

/// An error building or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The hyper-parameters are inconsistent (e.g. heads do not divide the hidden size).
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A weight has a shape other than the configuration implies.
    #[error("{path}: tensor {name} has shape {got:?}, expected {expected:?}")]
    Shape { path: String, name: String, expected: Vec<usize>, got: Vec<usize> },
    /// The tokens do not fit in the cache.
    #[error("context full: {used} positions used, {requested} more requested, capacity {capacity}")]
    ContextFull { used: usize, requested: usize, capacity: usize },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    BadToken { id: u32, vocab: usize },
    /// `forward` was called with no tokens.
    #[error("forward called with no tokens")]
    Empty,
    /// The progress callback asked to stop loading.
    #[error("loading aborted by the progress callback")]
    Aborted,
    /// Cache contents handed to [`Llama::import_cache`] do not fit this model.
    #[error("cache state does not fit this model: {0}")]
    CacheState(String),
}

/// Which positions' logits [`Llama::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: `[vocab]` (generation).
    Last,
    /// Every position: `[tokens * vocab]`, row-major (scoring, training).
    All,
}

#[derive(Clone)]
struct Layer {
    attn_norm: Tensor<1>,
    /// `[hidden, heads * head_dim]` (transposed from HF's `[out, in]`).
    wq: Tensor<2>,
    /// `[hidden, kv_heads * head_dim]`.
    wk: Tensor<2>,
    wv: Tensor<2>,
    /// `[heads * head_dim, hidden]`.
    wo: Tensor<2>,
    mlp_norm: Tensor<1>,
    /// `[hidden, intermediate]`.
    w_gate: Tensor<2>,
    w_up: Tensor<2>,
    /// `[intermediate, hidden]`.
    w_down: Tensor<2>,
}

/// The f32 weights on the device (the exact path, training and GPUs).
#[derive(Clone)]
struct Dense {
    /// `[vocab, hidden]`.
    embed: Tensor<2>,
    layers: Vec<Layer>,
    norm: Tensor<1>,
    /// `[hidden, vocab]`; `None` when tied to `embed` (then `embed` transposed is used).
    lm_head: Option<Tensor<2>>,
}

/// How a model computes: the numerics of its forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// [`Precision::Quantized`] for a quantized GGUF file on the CPU backend, else [`Precision::Exact`].
    #[default]
    Auto,
    /// Weights dequantized to f32 once at load; burn computes in f32 (Hugging Face parity).
    Exact,
    /// CPU only: GGUF weights kept in their block formats, activations quantized to 8 bits per
    /// block of 32 for each product, as llama.cpp computes. Training and adapter merging build the
    /// f32 weights on first use.
    Quantized,
}

impl Precision {
    /// Lower-case name (`auto`, `exact`, `quantized`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Exact => "exact",
            Precision::Quantized => "quantized",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "exact" | "f32" => Ok(Precision::Exact),
            "quantized" | "q" => Ok(Precision::Quantized),
            _ => Err(format!("unknown precision {s:?} (expected auto, exact or quantized)")),
        }
    }
}

/// A loaded Llama model: immutable weights on one device.
#[derive(Clone)]
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    /// Set at load on the exact path; built from `host` on first use on the quantized path.
    dense: OnceLock<Dense>,
    /// Block-quantized host weights (the quantized CPU path).
    host: Option<Arc<host::HostWeights>>,
    /// The transposed frozen weights of host-path training while a trainer holds them.
    backward: Arc<std::sync::Mutex<std::sync::Weak<host_train::HostBackward>>>,
    /// `[positions, head_dim]` rotate-half tables.
    rope_cos: Tensor<2>,
    rope_sin: Tensor<2>,
    rope_positions: usize,
}

/// Per-conversation attention cache: keys and values of every past position, for every layer.
///
/// Preallocated to `capacity` positions and written in place. Owned by one session; not shared.
pub struct KvCache {
    store: CacheStore,
    len: usize,
    capacity: usize,
}

enum CacheStore {
    /// Per layer `[kv_heads, capacity, head_dim]` on the device.
    Device { k: Vec<Tensor<3>>, v: Vec<Tensor<3>> },
    /// The quantized path's host cache.
    Host(Box<host::HostCache>),
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Maximum positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets every position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Forgets positions from `len` on (rewind after a speculative continuation).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Clone for KvCache {
    /// A deep copy (the buffers are duplicated, not shared), for forking a conversation.
    fn clone(&self) -> Self {
        let deep = |t: &Tensor<3>| t.clone().add_scalar(0.0);
        let store = match &self.store {
            CacheStore::Device { k, v } => CacheStore::Device { k: k.iter().map(deep).collect(), v: v.iter().map(deep).collect() },
            CacheStore::Host(h) => CacheStore::Host(h.clone()),
        };
        KvCache { store, len: self.len, capacity: self.capacity }
    }
}

fn check_config(c: &LlamaConfig) -> Result<(), ModelError> {
    c.validate().map_err(ModelError::Config)
}

struct Loader<'a> {
    source: &'a dyn WeightSource,
    device: &'a Device,
}

impl Loader<'_> {
    fn host(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self.source.tensor(name)?;
        if t.shape != expected {
            return Err(ModelError::Shape {
                path: self.source.path().display().to_string(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: t.shape,
            });
        }
        Ok(t.data)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Tensor<1>, ModelError> {
        Ok(engine::upload(self.host(name, &[n])?, [n], self.device))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>, ModelError> {
        Ok(engine::upload(self.host(name, &[rows, cols])?, [rows, cols], self.device))
    }

    /// A linear layer's HF `[out, in]` weight, uploaded transposed as `[in, out]`.
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Tensor<2>, ModelError> {
        let w = self.host(name, &[out, inp])?;
        Ok(engine::upload(transpose(&w, out, inp), [inp, out], self.device))
    }
}

/// `[out, inp]` row-major to `[inp, out]`.
fn transpose(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for (o, row) in w.chunks_exact(inp).enumerate() {
        for (i, &x) in row.iter().enumerate() {
            t[i * out + o] = x;
        }
    }
    t
}

impl Llama {
    /// Loads the weights named by `config` from `source` onto `device`.
    ///
    /// `max_positions` caps the RoPE tables and so the longest cache that can be made (at most
    /// `config.max_position_embeddings` is useful; larger values are allowed for extrapolation).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors ([`ModelError::Shape`], [`FormatError::Tensor`]), inconsistent
    /// configuration ([`ModelError::Config`]).
    pub fn load(source: &dyn WeightSource, config: &LlamaConfig, device: &Device, max_positions: usize) -> Result<Self, ModelError> {
        Self::load_with_progress(source, config, device, max_positions, &mut |_| true)
    }

    /// [`Llama::load`], reporting progress (fraction of weights loaded, 0 to 1) after each layer;
    /// `progress` returning `false` stops loading with [`ModelError::Aborted`].
    pub fn load_with_progress(
        source: &dyn WeightSource,
        config: &LlamaConfig,
        device: &Device,
        max_positions: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Self, ModelError> {
        check_config(config)?;
        let steps = (config.num_hidden_layers + 2) as f32;
        let mut report = |done: usize| if progress(done as f32 / steps) { Ok(()) } else { Err(ModelError::Aborted) };
        report(0)?;
        if max_positions == 0 {
            return Err(ModelError::Config("max_positions is 0".into()));
        }
        let c = config;
        let l = Loader { source, device };
        let h = c.hidden_size;
        let embed = l.matrix("model.embed_tokens.weight", c.vocab_size, h)?;
        report(1)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let name = |t: LayerTensor| format!("model.layers.{i}.{}", t.hf);
            let lin = |t: LayerTensor| {
                let s = t.shape(c);
                l.linear(&name(t), s[0], s[1])
            };
            let norm = |t: LayerTensor| l.vector(&name(t), t.shape(c)[0]);
            layers.push(Layer {
                attn_norm: norm(LayerTensor::ATTN_NORM)?,
                wq: lin(LayerTensor::Q)?,
                wk: lin(LayerTensor::K)?,
                wv: lin(LayerTensor::V)?,
                wo: lin(LayerTensor::O)?,
                mlp_norm: norm(LayerTensor::MLP_NORM)?,
                w_gate: lin(LayerTensor::GATE)?,
                w_up: lin(LayerTensor::UP)?,
                w_down: lin(LayerTensor::DOWN)?,
            });
            report(i + 2)?;
        }
        let norm = l.vector("model.norm.weight", h)?;
        let lm_head = if source.contains("lm_head.weight") {
            Some(l.linear("lm_head.weight", c.vocab_size, h)?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(FormatError::Tensor {
                path: source.path().to_path_buf(),
                name: "lm_head.weight".into(),
                reason: "missing and tie_word_embeddings is false".into(),
            }
            .into());
        };
        report(c.num_hidden_layers + 2)?;
        let rope = rope::tables(c, max_positions);
        Ok(Self::assemble(c, device, max_positions, rope, OnceLock::from(Dense { embed, layers, norm, lm_head }), None))
    }

    /// Loads a GGUF file for the quantized CPU path ([`Precision::Quantized`]): its weights stay in
    /// block form on the host. `device` (the CPU) holds the f32 weights if training or merging later
    /// asks for them.
    ///
    /// # Errors
    /// As [`Llama::load`]; [`ModelError::Config`] for a shape the kernels cannot run.
    pub fn load_quantized(
        weights: &GgufWeights,
        config: &LlamaConfig,
        device: &Device,
        max_positions: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Self, ModelError> {
        check_config(config)?;
        if max_positions == 0 {
            return Err(ModelError::Config("max_positions is 0".into()));
        }
        // One set of RoPE tables: the host path keeps a copy, the device tables serve training.
        let rope = rope::tables(config, max_positions);
        let host = host::HostWeights::load(weights, config, rope.clone(), progress)?;
        Ok(Self::assemble(config, device, max_positions, rope, OnceLock::new(), Some(Arc::new(host))))
    }

    /// Whether a model of this shape can run on the quantized CPU path.
    pub fn quantized_path_supports(config: &LlamaConfig) -> bool {
        host::supports(config)
    }

    fn assemble(
        c: &LlamaConfig,
        device: &Device,
        positions: usize,
        (cos, sin): (Vec<f32>, Vec<f32>),
        dense: OnceLock<Dense>,
        host: Option<Arc<host::HostWeights>>,
    ) -> Llama {
        let hd = c.head_dim;
        Llama {
            config: c.clone(),
            device: device.clone(),
            dense,
            host,
            backward: Arc::default(),
            rope_cos: engine::upload(cos, [positions, hd], device),
            rope_sin: engine::upload(sin, [positions, hd], device),
            rope_positions: positions,
        }
    }

    /// The precision this model computes with ([`Precision::Exact`] or [`Precision::Quantized`]).
    pub fn precision(&self) -> Precision {
        if self.host.is_some() {
            Precision::Quantized
        } else {
            Precision::Exact
        }
    }

    /// Bytes of weights held in block form by the quantized path (0 on the exact path).
    pub fn quantized_bytes(&self) -> usize {
        self.host.as_ref().map_or(0, |h| h.bytes())
    }

    /// The f32 device weights, built from the host weights on first use on the quantized path.
    fn dense(&self) -> &Dense {
        self.dense.get_or_init(|| {
            let host = self.host.as_ref().expect("a model without device weights has host weights");
            let c = &self.config;
            let (embed, layers, norm, lm_head) = host.dequantized();
            let d = &self.device;
            let t = |w: Vec<f32>, out: usize, inp: usize| engine::upload(transpose(&w, out, inp), [inp, out], d);
            let (h, q, kv, i) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
            let layers = layers
                .into_iter()
                .map(|[an, wq, wk, wv, wo, mn, wg, wu, wd]| Layer {
                    attn_norm: engine::upload(an, [h], d),
                    wq: t(wq, q, h),
                    wk: t(wk, kv, h),
                    wv: t(wv, kv, h),
                    wo: t(wo, h, q),
                    mlp_norm: engine::upload(mn, [h], d),
                    w_gate: t(wg, i, h),
                    w_up: t(wu, i, h),
                    w_down: t(wd, h, i),
                })
                .collect();
            Dense {
                embed: engine::upload(embed, [c.vocab_size, h], d),
                layers,
                norm: engine::upload(norm, [h], d),
                lm_head: lm_head.map(|w| t(w, c.vocab_size, h)),
            }
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest cache [`Llama::new_cache`] accepts.
    pub fn max_positions(&self) -> usize {
        self.rope_positions
    }

    /// A zeroed cache for `capacity` positions (clamped to [`Llama::max_positions`]).
    /// Memory: `2 * layers * kv_heads * capacity * head_dim * 4` bytes.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.config;
        let capacity = capacity.clamp(1, self.rope_positions);
        let store = match &self.host {
            Some(host) => CacheStore::Host(Box::new(host.new_cache(c, capacity))),
            None => {
                let shape = [c.num_key_value_heads, capacity, c.head_dim];
                let zeros = || Tensor::<3>::zeros(shape, &self.device);
                CacheStore::Device { k: (0..c.num_hidden_layers).map(|_| zeros()).collect(), v: (0..c.num_hidden_layers).map(|_| zeros()).collect() }
            }
        };
        KvCache { store, len: 0, capacity }
    }

    /// Copies the filled positions of `cache` to host memory: for each layer, keys then values, each
    /// `[kv_heads, len, head_dim]` row-major. Length: `2 * layers * kv_heads * len * head_dim`.
    ///
    /// # Errors
    /// A device readback failure.
    pub fn export_cache(&self, cache: &KvCache) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let len = cache.len;
        let mut out = Vec::with_capacity(2 * c.num_hidden_layers * c.num_key_value_heads * len * c.head_dim);
        if len == 0 {
            return Ok(out);
        }
        match &cache.store {
            CacheStore::Device { k, v } => {
                for (k, v) in k.iter().zip(v) {
                    for t in [k, v] {
                        out.extend(engine::readback(t.clone().slice([0..c.num_key_value_heads, 0..len, 0..c.head_dim]))?);
                    }
                }
            }
            CacheStore::Host(h) => {
                for l in 0..c.num_hidden_layers {
                    h.export_layer(l, len, c.num_key_value_heads, c.head_dim, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// A cache for `capacity` positions holding `len` positions from [`Llama::export_cache`]'s layout.
    ///
    /// # Errors
    /// [`ModelError::CacheState`] when `data` has the wrong length or `len` exceeds the capacity.
    pub fn import_cache(&self, data: &[f32], len: usize, capacity: usize) -> Result<KvCache, ModelError> {
        let c = &self.config;
        let mut cache = self.new_cache(capacity);
        if len > cache.capacity {
            return Err(ModelError::CacheState(format!("{len} positions do not fit a cache of {}", cache.capacity)));
        }
        let per = c.num_key_value_heads * len * c.head_dim;
        if data.len() != 2 * c.num_hidden_layers * per {
            return Err(ModelError::CacheState(format!("{} values for {len} positions, expected {}", data.len(), 2 * c.num_hidden_layers * per)));
        }
        if len > 0 {
            let shape = [c.num_key_value_heads, len, c.head_dim];
            let range = [0..c.num_key_value_heads, 0..len, 0..c.head_dim];
            for (i, chunk) in data.chunks_exact(2 * per).enumerate() {
                match &mut cache.store {
                    CacheStore::Device { k: kc, v: vc } => {
                        let k = engine::upload(chunk[..per].to_vec(), shape, &self.device);
                        let v = engine::upload(chunk[per..].to_vec(), shape, &self.device);
                        kc[i] = kc[i].clone().slice_assign(range.clone(), k);
                        vc[i] = vc[i].clone().slice_assign(range.clone(), v);
                    }
                    CacheStore::Host(h) => h.import_layer(i, len, c.num_key_value_heads, c.head_dim, chunk),
                }
            }
        }
        cache.len = len;
        Ok(cache)
    }

    /// Runs `tokens` (appended after the cache's positions) through the model, extends the cache and
    /// returns logits on the host: `[vocab]` for [`Logits::Last`], `[tokens.len() * vocab]` for [`Logits::All`].
    ///
    /// # Errors
    /// [`ModelError::Empty`], [`ModelError::BadToken`], [`ModelError::ContextFull`] (cache unchanged in
    /// each case), or a device readback failure.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>, ModelError> {
        self.forward_with(tokens, cache, which, None)
    }

    /// [`Llama::forward`] with a LoRA adapter applied (`None`: the base model).
    ///
    /// # Errors
    /// As [`Llama::forward`].
    pub fn forward_with(&self, tokens: &[u32], cache: &mut KvCache, which: Logits, lora: Option<LoraApply>) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        self.forward_into(tokens, cache, which, lora, &mut out)?;
        Ok(out)
    }

    /// [`Llama::forward_with`] writing the logits into `out` (resized). On the quantized path a
    /// buffer reused from step to step means a decode step allocates nothing.
    ///
    /// # Errors
    /// As [`Llama::forward`].
    pub fn forward_into(&self, tokens: &[u32], cache: &mut KvCache, which: Logits, lora: Option<LoraApply>, out: &mut Vec<f32>) -> Result<(), ModelError> {
        self.check_tokens(tokens)?;
        let (start, t) = (cache.len, tokens.len());
        if start + t > cache.capacity {
            return Err(ModelError::ContextFull { used: start, requested: t, capacity: cache.capacity });
        }
        let (kcs, vcs) = match &mut cache.store {
            CacheStore::Device { k, v } => (k, v),
            CacheStore::Host(hc) => {
                let host = self.host.as_ref().ok_or_else(|| ModelError::CacheState("a quantized-path cache used with an exact-path model".into()))?;
                let pairs = match &lora {
                    Some(l) => Some(l.weights.host_pairs()?),
                    None => None,
                };
                let hl = pairs.map(|layers| host::HostLora { layers, factor: lora.as_ref().map_or(0.0, |l| l.factor() as f32) });
                host.forward(&self.config, tokens, start, hc, which == Logits::All, hl.as_ref(), out);
                cache.len = start + t;
                return Ok(());
            }
        };
        if self.host.is_some() {
            return Err(ModelError::CacheState("an exact-path cache used with a quantized-path model".into()));
        }
        let ctx = self.context(start, t);
        let d = self.dense();
        let mut x = d.embed.clone().select(0, engine::upload_ids(tokens, &self.device));
        for (i, (layer, (kc, vc))) in d.layers.iter().zip(kcs.iter_mut().zip(vcs.iter_mut())).enumerate() {
            let lw = lora.as_ref().map(|l| (&l.weights.layers[i], l));
            x = self.block(layer, lw, x, &ctx, Some((kc, vc)));
        }
        cache.len = start + t;
        let x = match which {
            Logits::Last => x.slice([t - 1..t, 0..self.config.hidden_size]),
            Logits::All => x,
        };
        *out = engine::readback(self.head(x))?;
        Ok(())
    }

    /// Final hidden states (before the last norm) of every position of `tokens` run from an empty
    /// context, without a cache: the training forward pass. With autodiff LoRA leaves in `lora`, the
    /// result carries their graph; the base weights are constants.
    ///
    /// # Errors
    /// [`ModelError::Empty`], [`ModelError::BadToken`], or more tokens than the RoPE tables hold.
    pub fn hidden_states(&self, tokens: &[u32], lora: Option<LoraApply>) -> Result<Tensor<2>, ModelError> {
        self.check_tokens(tokens)?;
        if tokens.len() > self.rope_positions {
            return Err(ModelError::ContextFull { used: 0, requested: tokens.len(), capacity: self.rope_positions });
        }
        let ctx = self.context(0, tokens.len());
        let d = self.dense();
        let mut x = d.embed.clone().select(0, engine::upload_ids(tokens, &self.device));
        for (i, layer) in d.layers.iter().enumerate() {
            let lw = lora.as_ref().map(|l| (&l.weights.layers[i], l));
            x = self.block(layer, lw, x, &ctx, None);
        }
        Ok(x)
    }

    /// Whether LoRA training runs on the host path: the quantized CPU path, where the frozen weights
    /// stay in block form ([`Llama::host_train_pass`]); otherwise it runs on burn's autodiff.
    pub fn trains_on_host(&self) -> bool {
        self.host.is_some()
    }

    /// What a trainer on the host path keeps for its backward passes: the transposed frozen weights
    /// (about one byte per weight; built by the first trainer and shared with every other while any
    /// of them lives, then freed) and its own buffers. `None` off the host path.
    pub(crate) fn host_training(&self) -> Option<HostTraining> {
        let host = self.host.as_ref()?;
        let mut slot = self.backward.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bw = slot.upgrade().unwrap_or_else(|| {
            let bw = Arc::new(host.backward_weights());
            *slot = Arc::downgrade(&bw);
            bw
        });
        Some(HostTraining::new(bw))
    }

    /// The masked loss of `ids` (cross-entropy of `ids[t]` at the positions with `mask[t]`) with the
    /// adapters of `pass`, and with `training` their gradients, on the host path.
    ///
    /// # Errors
    /// Not the host path; bad ids; more tokens than the RoPE tables hold; no masked token.
    pub(crate) fn host_train_pass(&self, ids: &[u32], mask: &[bool], pass: &TrainPass, training: Option<&HostTraining>) -> Result<PassResult, ModelError> {
        let host = self.host.as_ref().ok_or_else(|| ModelError::Config("host training needs the quantized CPU path".into()))?;
        self.check_tokens(ids)?;
        if ids.len() > self.rope_positions {
            return Err(ModelError::ContextFull { used: 0, requested: ids.len(), capacity: self.rope_positions });
        }
        if mask.len() != ids.len() || !mask.iter().skip(1).any(|&m| m) {
            return Err(ModelError::Config("the loss mask must match the ids and mark a token after the first".into()));
        }
        Ok(host.train_pass(&self.config, training, ids, mask, pass))
    }

    /// Bytes of the transposed weights host-path training holds (0 while no trainer holds them).
    pub fn training_bytes(&self) -> usize {
        self.backward.lock().unwrap_or_else(std::sync::PoisonError::into_inner).upgrade().map_or(0, |b| b.bytes())
    }

    /// Logits `[rows, vocab]` from final hidden states `[rows, hidden]` (last norm, then the head).
    pub fn head(&self, x: Tensor<2>) -> Tensor<2> {
        let d = self.dense();
        let x = self.rms_norm(x, &d.norm);
        match &d.lm_head {
            Some(w) => x.matmul(w.clone()),
            None => x.matmul(d.embed.clone().transpose()),
        }
    }

    /// A copy of this model with `lora` merged into its weights at `scale` (the same outputs as
    /// applying the adapter, without its per-token cost). Untargeted weights are shared, not copied.
    pub fn merged(&self, lora: &LoraWeights, scale: f32) -> Llama {
        let factor = f64::from(scale) * f64::from(lora.scaling);
        let mut dense = self.dense().clone();
        for (layer, mods) in dense.layers.iter_mut().zip(&lora.layers) {
            let ws = [&mut layer.wq, &mut layer.wk, &mut layer.wv, &mut layer.wo, &mut layer.w_gate, &mut layer.w_up, &mut layer.w_down];
            for (w, pair) in ws.into_iter().zip(mods) {
                if let Some(p) = pair {
                    *w = lora::merge(w, p, factor);
                }
            }
        }
        Llama { dense: OnceLock::from(dense), host: None, backward: Arc::default(), ..self.clone() }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Empty);
        }
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&id| id as usize >= vocab) {
            Some(&id) => Err(ModelError::BadToken { id, vocab }),
            None => Ok(()),
        }
    }

    /// RoPE rows and the causal mask for `t` new positions after `start` cached ones.
    fn context(&self, start: usize, t: usize) -> Ctx {
        let c = &self.config;
        let (hd, end) = (c.head_dim, start + t);
        let group = c.num_attention_heads / c.num_key_value_heads;
        let cos = self.rope_cos.clone().slice([start..end, 0..hd]).reshape([t, 1, hd]);
        let sin = self.rope_sin.clone().slice([start..end, 0..hd]).reshape([t, 1, hd]);
        // Additive causal mask for the query rows (g, i) -> key j: -inf where j > start + i.
        let mask = (t > 1).then(|| {
            let mut m = vec![0f32; group * t * end];
            for g in 0..group {
                for i in 0..t {
                    let row = (g * t + i) * end;
                    m[row + start + i + 1..row + end].fill(f32::NEG_INFINITY);
                }
            }
            engine::upload(m, [1, group * t, end], &self.device)
        });
        Ctx { start, t, cos, sin, mask }
    }

    /// One decoder layer. With `cache`, this chunk's keys and values are written into it (in place)
    /// and attention covers every cached position; without, attention covers the chunk alone.
    fn block(
        &self,
        layer: &Layer,
        lora: Option<(&[Option<LoraPair>; 7], &LoraApply)>,
        x: Tensor<2>,
        ctx: &Ctx,
        cache: Option<(&mut Tensor<3>, &mut Tensor<3>)>,
    ) -> Tensor<2> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (start, t) = (ctx.start, ctx.t);
        let end = start + t;
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let ad = |m: usize| lora.and_then(|(mods, apply)| mods[m].as_ref().map(|p| (p, apply)));

        let h = self.rms_norm(x.clone(), &layer.attn_norm);
        let q = rope(lora::project(&h, &layer.wq, ad(0)).reshape([t, nh, hd]), &ctx.cos, &ctx.sin);
        let k = rope(lora::project(&h, &layer.wk, ad(1)).reshape([t, nkv, hd]), &ctx.cos, &ctx.sin);
        let v = lora::project(&h, &layer.wv, ad(2)).reshape([t, nkv, hd]);
        let (keys, values) = match cache {
            Some((kc, vc)) => {
                // Write this chunk's keys/values into the preallocated cache, in place.
                kc.inplace(|kc| kc.slice_assign([0..nkv, start..end, 0..hd], k.swap_dims(0, 1)));
                vc.inplace(|vc| vc.slice_assign([0..nkv, start..end, 0..hd], v.swap_dims(0, 1)));
                (kc.clone().slice([0..nkv, 0..end, 0..hd]), vc.clone().slice([0..nkv, 0..end, 0..hd]))
            }
            None => (k.swap_dims(0, 1), v.swap_dims(0, 1)),
        };
        // GQA without copying keys: query head h uses kv head h / group, so the queries of one kv
        // head form a contiguous block of `group * t` rows.
        let q = q.swap_dims(0, 1).reshape([nkv, group * t, hd]);
        let mut scores = q.matmul(keys.swap_dims(1, 2)).mul_scalar(scale);
        if let Some(mask) = &ctx.mask {
            scores = scores.add(mask.clone());
        }
        let attn = softmax(scores, 2).matmul(values); // [nkv, group*t, hd]
        let attn = attn.reshape([nh, t, hd]).swap_dims(0, 1).reshape([t, nh * hd]);
        let x = x.add(lora::project(&attn, &layer.wo, ad(3)));

        let h = self.rms_norm(x.clone(), &layer.mlp_norm);
        let gate = silu(lora::project(&h, &layer.w_gate, ad(4)));
        let up = lora::project(&h, &layer.w_up, ad(5));
        x.add(lora::project(&gate.mul(up), &layer.w_down, ad(6)))
    }

    /// `x * rsqrt(mean(x²) + eps) * weight` over the last dimension (f32, as transformers).
    fn rms_norm(&self, x: Tensor<2>, weight: &Tensor<1>) -> Tensor<2> {
        let var = x.clone().square().mean_dim(1);
        let inv = var.add_scalar(f64::from(self.config.rms_norm_eps)).sqrt().recip();
        x.mul(inv).mul(weight.clone().unsqueeze())
    }
}

/// Per-call constants shared by the layers.
struct Ctx {
    start: usize,
    t: usize,
    cos: Tensor<3>,
    sin: Tensor<3>,
    mask: Option<Tensor<3>>,
}

/// Rotate-half RoPE on `[t, heads, head_dim]` with `[t, 1, head_dim]` tables.
fn rope(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let [t, n, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..t, 0..n, 0..half]);
    let x2 = x.clone().slice([0..t, 0..n, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
    x.mul(cos.clone()).add(rotated.mul(sin.clone()))
}

#[cfg(test)]
pub(crate) mod tests;
