//! The quantized CPU forward pass: the same decoder as [`super::Llama::block`], run on host memory
//! with GGUF weights kept in block form ([`crate::engine::kernels`]) and activations quantized to 8
//! bits per block of 32 for each matrix product.
//!
//! burn's CPU backend dequantizes quantized weights on every matmul and pays a per-operation
//! dispatch cost that dominates a one-token decode step, so this path runs the layer arithmetic
//! (RMSNorm, RoPE, attention, SwiGLU) directly. It is chosen with [`crate::Precision`]; the exact
//! f32 path on burn stays available for strict parity, training and GPUs. The layer structure is
//! the one of [`super::Llama::block`]; tests compare the two paths on the real model.

use rayon::prelude::*;

use crate::config::{LayerTensor, LlamaConfig};
use crate::engine::kernels::{self, dot_f32, QActs, QMatrix};
use crate::formats::gguf::{hf_to_gguf_name, GgufWeights};
use crate::formats::{FormatError, WeightSource};

use super::ModelError;

/// One layer's weights: Q/K/V and gate/up are run as one product each.
pub(crate) struct HostLayer {
    pub(super) attn_norm: Vec<f32>,
    /// `q_proj`, `k_proj`, `v_proj` (`[out, in]`, Q and K rows in Hugging Face order).
    pub(super) qkv: [QMatrix; 3],
    pub(super) wo: QMatrix,
    pub(super) mlp_norm: Vec<f32>,
    /// `gate_proj`, `up_proj`.
    pub(super) gate_up: [QMatrix; 2],
    pub(super) down: QMatrix,
}

/// The weights in f32, Hugging Face layout: embedding, per layer `[attn_norm, q, k, v, o, mlp_norm,
/// gate, up, down]`, final norm, LM head (untied models).
pub(crate) type DenseWeights = (Vec<f32>, Vec<[Vec<f32>; 9]>, Vec<f32>, Option<Vec<f32>>);

/// Block-quantized weights of a whole model, on the host.
pub(crate) struct HostWeights {
    /// `[vocab, hidden]`.
    pub(super) embed: QMatrix,
    pub(super) layers: Vec<HostLayer>,
    pub(super) norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub(super) lm_head: Option<QMatrix>,
    /// `[positions, head_dim]` rotate-half tables.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
}

/// A LoRA pair on the host: `A` `[r, in]`, `B` `[out, r]`.
#[derive(Clone)]
pub(crate) struct HostPair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub r: usize,
}

/// Adapter matrices per layer (in [`crate::formats::peft::TARGETS`] order) and their factor.
pub(crate) struct HostLora<'a> {
    pub layers: &'a [[Option<HostPair>; 7]],
    pub factor: f32,
}

/// Per-conversation state of the host path: keys and values per layer `[kv_heads, capacity,
/// head_dim]`, and scratch buffers reused by every step (they only grow).
#[derive(Clone)]
pub(crate) struct HostCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    capacity: usize,
    scratch: Scratch,
}

#[derive(Clone, Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    out: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    scores: Vec<f32>,
    lora: Vec<f32>,
    acts: QActs,
}

impl HostCache {
    /// Keys then values of layer `l`, positions `0..len`, as `[kv_heads, len, head_dim]`.
    pub(crate) fn export_layer(&self, l: usize, len: usize, kv_heads: usize, hd: usize, out: &mut Vec<f32>) {
        for buf in [&self.k[l], &self.v[l]] {
            for g in 0..kv_heads {
                let base = g * self.capacity * hd;
                out.extend_from_slice(&buf[base..base + len * hd]);
            }
        }
    }

    /// Inverse of [`HostCache::export_layer`].
    pub(crate) fn import_layer(&mut self, l: usize, len: usize, kv_heads: usize, hd: usize, data: &[f32]) {
        let per = kv_heads * len * hd;
        for (buf, src) in [(&mut self.k[l], &data[..per]), (&mut self.v[l], &data[per..2 * per])] {
            for g in 0..kv_heads {
                let base = g * self.capacity * hd;
                buf[base..base + len * hd].copy_from_slice(&src[g * len * hd..(g + 1) * len * hd]);
            }
        }
    }
}

fn tensor_err(w: &GgufWeights, name: &str, reason: String) -> ModelError {
    ModelError::Format(FormatError::Tensor { path: w.path().to_path_buf(), name: name.to_string(), reason })
}

/// Reads `name` (a Hugging Face name) as a `[out, in]` block matrix, rows of Q and K unpermuted
/// back to Hugging Face order (`n_head` heads).
fn matrix(w: &GgufWeights, name: &str, out: usize, inp: usize, n_head: Option<usize>) -> Result<QMatrix, ModelError> {
    let g = hf_to_gguf_name(name).ok_or_else(|| tensor_err(w, name, "no GGUF counterpart for this name".into()))?;
    let (info, bytes) = w.file().tensor_bytes(&g)?;
    if info.shape() != [out, inp] {
        return Err(ModelError::Shape { path: w.path().display().to_string(), name: name.to_string(), expected: vec![out, inp], got: info.shape() });
    }
    let m = QMatrix::from_ggml(info.ggml_type, bytes, out, inp).map_err(|e| tensor_err(w, name, e.to_string()))?;
    w.file().release_pages(&g);
    Ok(match n_head {
        None => m,
        Some(n) => {
            let per = out / n;
            if n == 0 || !out.is_multiple_of(n) || !per.is_multiple_of(2) {
                return Err(tensor_err(w, name, format!("{out} rows do not split into {n} heads of rotary pairs")));
            }
            // Hugging Face row h*per + j*per/2 + i is GGUF row h*per + 2i + j.
            let half = per / 2;
            let mut order = vec![0; out];
            for h in 0..n {
                for j in 0..2 {
                    for i in 0..half {
                        order[h * per + j * half + i] = h * per + 2 * i + j;
                    }
                }
            }
            m.permute_rows(&order)
        }
    })
}

fn vector(w: &GgufWeights, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = w.tensor(name)?;
    if t.shape != [n] {
        return Err(ModelError::Shape { path: w.path().display().to_string(), name: name.into(), expected: vec![n], got: t.shape });
    }
    Ok(t.data)
}

/// Whether the host path can run a model of this shape (every product's input a whole number of
/// 32-value blocks).
pub(crate) fn supports(c: &LlamaConfig) -> bool {
    [c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim].iter().all(|n| n % kernels::QK == 0)
}

impl HostWeights {
    /// Repacks the GGUF weights (`progress` gets a fraction after each layer; `false` aborts).
    /// `rope` holds the rotate-half `cos` and `sin` tables (`model::rope::tables`).
    pub(crate) fn load(w: &GgufWeights, c: &LlamaConfig, rope: (Vec<f32>, Vec<f32>), progress: &mut dyn FnMut(f32) -> bool) -> Result<HostWeights, ModelError> {
        if !supports(c) {
            return Err(ModelError::Config("the quantized CPU path needs hidden, intermediate and attention sizes that are multiples of 32".into()));
        }
        let steps = (c.num_hidden_layers + 2) as f32;
        let mut report = |done: usize| if progress(done as f32 / steps) { Ok(()) } else { Err(ModelError::Aborted) };
        let h = c.hidden_size;
        report(0)?;
        let embed = matrix(w, "model.embed_tokens.weight", c.vocab_size, h, None)?;
        report(1)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let name = |t: LayerTensor| format!("model.layers.{i}.{}", t.hf);
            let lin = |t: LayerTensor, heads| {
                let s = t.shape(c);
                matrix(w, &name(t), s[0], s[1], heads)
            };
            let norm = |t: LayerTensor| vector(w, &name(t), t.shape(c)[0]);
            layers.push(HostLayer {
                attn_norm: norm(LayerTensor::ATTN_NORM)?,
                qkv: [lin(LayerTensor::Q, Some(c.num_attention_heads))?, lin(LayerTensor::K, Some(c.num_key_value_heads))?, lin(LayerTensor::V, None)?],
                wo: lin(LayerTensor::O, None)?,
                mlp_norm: norm(LayerTensor::MLP_NORM)?,
                gate_up: [lin(LayerTensor::GATE, None)?, lin(LayerTensor::UP, None)?],
                down: lin(LayerTensor::DOWN, None)?,
            });
            report(i + 2)?;
        }
        let norm = vector(w, "model.norm.weight", h)?;
        let lm_head = if w.contains("lm_head.weight") {
            Some(matrix(w, "lm_head.weight", c.vocab_size, h, None)?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(tensor_err(w, "lm_head.weight", "missing and tie_word_embeddings is false".into()));
        };
        report(c.num_hidden_layers + 2)?;
        let (cos, sin) = rope;
        Ok(HostWeights { embed, layers, norm, lm_head, cos, sin })
    }

    /// Bytes of weights held.
    pub(crate) fn bytes(&self) -> usize {
        let layer = |l: &HostLayer| {
            l.qkv.iter().chain(&l.gate_up).chain([&l.wo, &l.down]).map(QMatrix::bytes).sum::<usize>() + 4 * (l.attn_norm.len() + l.mlp_norm.len())
        };
        self.embed.bytes() + self.lm_head.as_ref().map_or(0, QMatrix::bytes) + self.layers.iter().map(layer).sum::<usize>()
    }

    /// The weights in f32 as Hugging Face lays them out (`[out, in]`), for building the exact path:
    /// (embed, per layer [attn_norm, q, k, v, o, mlp_norm, gate, up, down], norm, lm_head).
    pub(crate) fn dequantized(&self) -> DenseWeights {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                [
                    l.attn_norm.clone(),
                    l.qkv[0].dequantize(),
                    l.qkv[1].dequantize(),
                    l.qkv[2].dequantize(),
                    l.wo.dequantize(),
                    l.mlp_norm.clone(),
                    l.gate_up[0].dequantize(),
                    l.gate_up[1].dequantize(),
                    l.down.dequantize(),
                ]
            })
            .collect();
        (self.embed.dequantize(), layers, self.norm.clone(), self.lm_head.as_ref().map(QMatrix::dequantize))
    }

    pub(crate) fn new_cache(&self, c: &LlamaConfig, capacity: usize) -> HostCache {
        let per = c.num_key_value_heads * capacity * c.head_dim;
        HostCache {
            k: (0..c.num_hidden_layers).map(|_| vec![0f32; per]).collect(),
            v: (0..c.num_hidden_layers).map(|_| vec![0f32; per]).collect(),
            capacity,
            scratch: Scratch::default(),
        }
    }

    /// Runs `tokens` after `start` cached positions, writing their keys and values into `cache`;
    /// writes the logits of the last position (`all`: of every position, row-major) into `logits`
    /// (resized; no allocation once it has the room). Callers have checked the token ids and the
    /// capacity.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        c: &LlamaConfig,
        tokens: &[u32],
        start: usize,
        cache: &mut HostCache,
        all: bool,
        lora: Option<&HostLora>,
        logits: &mut Vec<f32>,
    ) {
        let (h, nh, nkv, hd, inter) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let t = tokens.len();
        let (q_w, kv_w) = (nh * hd, nkv * hd);
        let qkv_w = q_w + 2 * kv_w;
        let eps = c.rms_norm_eps;
        let HostCache { k: kc, v: vc, capacity, scratch: s } = cache;
        let cap = *capacity;
        s.x.resize(t * h, 0.0);
        for (row, &id) in s.x.chunks_exact_mut(h).zip(tokens) {
            self.embed.dequantize_row(id as usize, row);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let ad = |m: usize| lora.and_then(|a| a.layers[l][m].as_ref().map(|p| (p, a.factor)));
            // Attention.
            rms_norm(&s.x, &layer.attn_norm, eps, h, &mut s.h);
            s.acts.quantize(&s.h, t, h);
            s.qkv.resize(t * qkv_w, 0.0);
            let [wq, wk, wv] = &layer.qkv;
            kernels::matmul(&[wq, wk, wv], &s.h, &s.acts, t, &mut s.qkv);
            for (m, c0) in [(0, 0), (1, q_w), (2, q_w + kv_w)] {
                if let Some((p, f)) = ad(m) {
                    add_lora(&s.h, t, h, p, f, &mut s.qkv, qkv_w, c0, &mut s.lora);
                }
            }
            for (i, row) in s.qkv.chunks_exact_mut(qkv_w).enumerate() {
                let pos = start + i;
                let (cos, sin) = (&self.cos[pos * hd..(pos + 1) * hd], &self.sin[pos * hd..(pos + 1) * hd]);
                for head in row[..q_w + kv_w].chunks_exact_mut(hd) {
                    rope_half(head, cos, sin);
                }
                for g in 0..nkv {
                    let at = (g * cap + pos) * hd;
                    kc[l][at..at + hd].copy_from_slice(&row[q_w + g * hd..q_w + (g + 1) * hd]);
                    vc[l][at..at + hd].copy_from_slice(&row[q_w + kv_w + g * hd..q_w + kv_w + (g + 1) * hd]);
                }
            }
            attention(&s.qkv, qkv_w, t, start, nh, nkv, hd, cap, &kc[l], &vc[l], &mut s.scores, &mut s.attn);
            s.acts.quantize(&s.attn, t, q_w);
            s.out.resize(t * h, 0.0);
            kernels::matmul(&[&layer.wo], &s.attn, &s.acts, t, &mut s.out);
            if let Some((p, f)) = ad(3) {
                add_lora(&s.attn, t, q_w, p, f, &mut s.out, h, 0, &mut s.lora);
            }
            s.x.iter_mut().zip(&s.out).for_each(|(x, o)| *x += o);
            // MLP.
            rms_norm(&s.x, &layer.mlp_norm, eps, h, &mut s.h);
            s.acts.quantize(&s.h, t, h);
            s.gu.resize(t * 2 * inter, 0.0);
            let [wg, wu] = &layer.gate_up;
            kernels::matmul(&[wg, wu], &s.h, &s.acts, t, &mut s.gu);
            for (m, c0) in [(4, 0), (5, inter)] {
                if let Some((p, f)) = ad(m) {
                    add_lora(&s.h, t, h, p, f, &mut s.gu, 2 * inter, c0, &mut s.lora);
                }
            }
            swiglu(&s.gu, inter, &mut s.act);
            s.acts.quantize(&s.act, t, inter);
            kernels::matmul(&[&layer.down], &s.act, &s.acts, t, &mut s.out);
            if let Some((p, f)) = ad(6) {
                add_lora(&s.act, t, inter, p, f, &mut s.out, h, 0, &mut s.lora);
            }
            s.x.iter_mut().zip(&s.out).for_each(|(x, o)| *x += o);
        }
        let rows = if all { t } else { 1 };
        let last = &s.x[(t - rows) * h..];
        rms_norm(last, &self.norm, eps, h, &mut s.h);
        s.acts.quantize(&s.h, rows, h);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        logits.resize(rows * head.rows(), 0.0);
        kernels::matmul(&[head], &s.h, &s.acts, rows, logits);
    }
}

/// `out[row] = x[row] · rsqrt(mean(x[row]²) + eps) · weight` for every row of width `n`.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, n: usize, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let var = dot_f32(xr, xr) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// `act = silu(g) · u` per row of `gu` (`[g | u]`, each `inter` wide; rows in parallel from 8 on).
pub(super) fn swiglu(gu: &[f32], inter: usize, act: &mut Vec<f32>) {
    act.resize(gu.len() / 2, 0.0);
    let one = |(a, gu): (&mut [f32], &[f32])| {
        let (g, u) = gu.split_at(inter);
        for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
            *a = g / (1.0 + (-g).exp()) * u;
        }
    };
    if act.len() >= 8 * inter {
        act.par_chunks_exact_mut(inter).zip(gu.par_chunks_exact(2 * inter)).for_each(one);
    } else {
        act.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)).for_each(one);
    }
}

/// Rotate-half RoPE on one head: `x·cos + rotate_half(x)·sin`.
pub(super) fn rope_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/// Causal attention of the `t` query rows (inside `qkv`, row stride `qkv_w`) over the cached
/// positions `0..start + i + 1`; writes `[t, heads * head_dim]` into `out`.
#[allow(clippy::too_many_arguments)]
fn attention(
    qkv: &[f32],
    qkv_w: usize,
    t: usize,
    start: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    cap: usize,
    kc: &[f32],
    vc: &[f32],
    scores: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    let end = start + t;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    out.resize(t * nh * hd, 0.0);
    scores.resize(t * nh * end, 0.0);
    let one = |idx: usize, o: &mut [f32], sc: &mut [f32]| {
        let (i, head) = (idx / nh, idx % nh);
        let g = head / group;
        let q = &qkv[i * qkv_w + head * hd..i * qkv_w + (head + 1) * hd];
        let n = start + i + 1;
        let keys = &kc[g * cap * hd..];
        let vals = &vc[g * cap * hd..];
        let sc = &mut sc[..n];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in sc.iter_mut().enumerate() {
            *s = dot_f32(q, &keys[j * hd..(j + 1) * hd]) * scale;
            max = max.max(*s);
        }
        let mut sum = 0f32;
        for s in sc.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (j, &p) in sc.iter().enumerate() {
            kernels::axpy(p * inv, &vals[j * hd..(j + 1) * hd], o);
        }
    };
    let work = t * nh * end * hd;
    if work < 1 << 16 {
        out.chunks_exact_mut(hd).zip(scores.chunks_exact_mut(end)).enumerate().for_each(|(idx, (o, sc))| one(idx, o, sc));
    } else {
        out.par_chunks_exact_mut(hd).zip(scores.par_chunks_exact_mut(end)).enumerate().for_each(|(idx, (o, sc))| one(idx, o, sc));
    }
}

/// `out[row][c0..c0 + out_features] += factor · B (A x[row])` for the `t` rows of `x` (width `inp`).
#[allow(clippy::too_many_arguments)]
fn add_lora(x: &[f32], t: usize, inp: usize, p: &HostPair, factor: f32, out: &mut [f32], width: usize, c0: usize, tmp: &mut Vec<f32>) {
    let n_out = p.b.len() / p.r;
    tmp.resize(p.r, 0.0);
    for i in 0..t {
        let xr = &x[i * inp..(i + 1) * inp];
        for (j, a) in p.a.chunks_exact(inp).enumerate() {
            tmp[j] = dot_f32(a, xr);
        }
        let row = &mut out[i * width + c0..i * width + c0 + n_out];
        for (o, b) in row.iter_mut().zip(p.b.chunks_exact(p.r)) {
            *o += factor * dot_f32(b, tmp);
        }
    }
}
