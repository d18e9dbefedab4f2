//! LoRA training on the quantized host path (QLoRA-style): the frozen base stays in the block form
//! inference holds it in ([`crate::engine::kernels`]), and no f32 copy of a frozen weight is made.
//!
//! - **Forward**: the layer arithmetic of [`super::host`] (the frozen products on the int8 kernels with
//!   activations quantized per block of 32, as inference computes them), without a KV cache, the
//!   LoRA terms in f32.
//! - **Backward through a frozen linear**: `dX = dY · W` runs on the same kernels against `Wᵀ`, kept
//!   once per model as int8 blocks of 32 along `W`'s output dimension with an f32 scale each
//!   ([`HostBackward`], about one byte per weight), the gradient `dY` quantized per block of 32 like
//!   an activation.
//! - **In f32 on host memory**: RMSNorm, RoPE, causal attention (recomputed per block of queries in
//!   the backward pass, so no `[heads, T, T]` probabilities are kept), SwiGLU, the LoRA products and
//!   their gradients (the [`gemm`] crate), the masked loss.
//! - **The head** runs only on the rows that predict a trained token, a few rows at a time.
//! - **Activations**: each layer's outputs needed by its backward pass are kept, or with
//!   checkpointing only each layer's input, the layer being recomputed just before its backward
//!   pass (one more forward pass, a small fraction of the memory).
//!
//! Gradients are checked against finite differences (`tests::gradients_match_finite_differences`) and
//! against the exact burn path on the real model (`tests/train.rs`).

use rayon::prelude::*;

use crate::config::LlamaConfig;
use crate::engine::kernels::{self, QActs, QMatrix};

use super::host::{rms_norm, rope_half, swiglu, HostPair, HostWeights};

/// Queries per block of the attention passes on the tile unit.
const BQ: usize = 64;
/// Query positions per block of the f32 attention passes (each with the group's heads stacked:
/// `BQ_F32 · hpg` rows of probabilities).
const BQ_F32: usize = 32;
/// Parts of the query positions in the f32 attention passes (see [`Attn::parts`]).
const PARTS: usize = 4;
/// Rows per chunk of the masked head.
const HEAD_ROWS: usize = 64;

/// The frozen weights transposed for the backward pass: per layer `[Wq; Wk; Wv]ᵀ`, `Woᵀ`,
/// `[Wgate; Wup]ᵀ`, `Wdownᵀ`, and the head's `Wᵀ`, each as 8-bit blocks of 32 with f32 scales. No
/// layer is transposed where the backward products run from the weights as stored
/// ([`kernels::transposed_products`]); the head's few rows per chunk still use its transpose.
pub(crate) struct HostBackward {
    layers: Vec<[QMatrix; 4]>,
    head: QMatrix,
}

impl HostBackward {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.head.bytes() + self.layers.iter().flat_map(|l| l.iter()).map(QMatrix::bytes).sum::<usize>()
    }
}

/// What one trainer keeps for its backward passes: the model's transposed weights (shared by the
/// trainers of one model while any of them lives) and its own activation and scratch buffers, kept
/// from one pass to the next (fresh buffers of this size would be page-faulted in on every pass).
pub(crate) struct HostTraining {
    backward: std::sync::Arc<HostBackward>,
    spare: std::sync::Mutex<(Vec<LayerActs>, Work)>,
}

impl HostTraining {
    pub(crate) fn new(backward: std::sync::Arc<HostBackward>) -> Self {
        HostTraining { backward, spare: Default::default() }
    }
}

/// Gradients of one layer's adapters (in [`crate::formats::peft::TARGETS`] order): `(dA, dB)`.
pub(crate) type LayerGrads = [Option<(Vec<f32>, Vec<f32>)>; 7];

/// What a training pass needs besides the weights.
pub(crate) struct TrainPass<'a> {
    /// Adapter matrices per layer (targets order).
    pub lora: &'a [[Option<HostPair>; 7]],
    /// `alpha / r` (or the rsLoRA factor).
    pub factor: f32,
    /// Dropout on the adapters' input (PEFT's `lora_dropout`), seeded by `seed`.
    pub dropout: f32,
    pub seed: u64,
    /// Keep only each layer's input and recompute the layer in the backward pass.
    pub checkpoint: bool,
    /// Attention in f32 even where the tile unit would run it in bf16 ([`tile_attn`]): for checks
    /// that need a smooth loss (finite differences), which bf16 roundings of the probabilities
    /// make step-like at their scale.
    pub f32_attention: bool,
}

/// Result of [`HostWeights::train_pass`].
pub(crate) struct PassResult {
    /// Mean cross-entropy over the trained tokens.
    pub loss: f64,
    /// Trained tokens.
    pub tokens: usize,
    /// Per layer, when gradients were asked for.
    pub grads: Option<Vec<LayerGrads>>,
}

/// `dst[i·dst_rs + j] (+)= alpha · Σ_p a[i·a_rs + p·a_cs] · b[p·b_rs + j·b_cs]` for an `m × n`
/// result over `k` terms (`acc`: add to `dst`, else overwrite).
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    alpha: f32,
    par: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(last(dst_rs, 1, m, n) < dst.len(), "mm: destination too small");
    if k == 0 {
        if !acc {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(last(a_rs, a_cs, m, k) < a.len() && last(b_rs, b_cs, k, n) < b.len(), "mm: operand too small");
    let threads = rayon::current_num_threads();
    if par && threads > 1 && m * n * k >= 1 << 18 && m >= 2 && n <= dst_rs {
        // One block of result rows per thread, each a serial product: the adapters' products are
        // narrow (`r`, 8 to 64, columns or terms), which the gemm crate's own split divides poorly
        // (a fifth less time for the adapters' passes with two threads).
        let per = m.div_ceil(threads.min(m));
        let mut blocks = Vec::with_capacity(threads);
        let (mut rest, mut r0) = (dst, 0);
        while r0 < m {
            let r1 = (r0 + per).min(m);
            let (head, tail) = if r1 < m { rest.split_at_mut((r1 - r0) * dst_rs) } else { (rest, &mut [][..]) };
            blocks.push((r0, r1, head));
            (rest, r0) = (tail, r1);
        }
        blocks.into_par_iter().for_each(|(r0, r1, d)| mm(r1 - r0, n, k, d, dst_rs, acc, &a[r0 * a_rs..], a_rs, a_cs, b, b_rs, b_cs, alpha, false));
        return;
    }
    let parallelism = if par && threads > 1 && m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: every index the product reads or writes was checked to lie inside its slice above
    // (the largest index of each strided operand); `dst` is borrowed mutably, so nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A deterministic keep mask for dropout: `true` with probability `keep`, from a counter-based hash
/// of `(seed, stream, index)` (so the backward pass sees the forward pass's mask without storing it).
fn kept(seed: u64, stream: u64, index: u64, keep: f64) -> bool {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < keep
}

/// One adapter's input after dropout (a copy) or as is.
fn dropped<'x>(x: &'x [f32], pass: &TrainPass, stream: u64, tmp: &'x mut Vec<f32>) -> &'x [f32] {
    if pass.dropout <= 0.0 {
        return x;
    }
    let keep = 1.0 - f64::from(pass.dropout);
    let scale = (1.0 / keep) as f32;
    tmp.clear();
    tmp.extend(x.iter().enumerate().map(|(i, &v)| if kept(pass.seed, stream, i as u64, keep) { v * scale } else { 0.0 }));
    tmp
}

/// Adapters that read the same input: `(module, pair, first output column)`.
type Group<'a> = Vec<(usize, &'a HostPair, usize)>;

/// The adapters of `lora` among `modules` (with their output columns).
fn group<'a>(lora: &'a [Option<HostPair>; 7], modules: &[(usize, usize)]) -> Group<'a> {
    modules.iter().filter_map(|&(m, c0)| lora[m].as_ref().map(|p| (m, p, c0))).collect()
}

/// `out[:, c0..] += factor · (x Aᵀ) Bᵀ` for every adapter of a group reading `x` (`t` rows of
/// `inp`; `out` rows of `width`): one product `x [A₁; A₂; ...]ᵀ` for the whole group, whose columns
/// are kept in `u` (`[t, Σ r]`) for the backward pass.
#[allow(clippy::too_many_arguments)]
fn lora_forward(x: &[f32], t: usize, inp: usize, g: &Group, factor: f32, out: &mut [f32], width: usize, a_cat: &mut Vec<f32>, u: &mut Vec<f32>) {
    let rt: usize = g.iter().map(|(_, p, _)| p.r).sum();
    a_cat.clear();
    g.iter().for_each(|(_, p, _)| a_cat.extend_from_slice(&p.a));
    u.resize(t * rt, 0.0);
    mm(t, rt, inp, u, rt, false, x, inp, 1, a_cat, 1, inp, 1.0, true);
    let mut off = 0;
    for (_, p, c0) in g {
        let n_out = p.b.len() / p.r;
        mm(t, n_out, p.r, &mut out[*c0..], width, true, &u[off..], rt, 1, &p.b, 1, p.r, factor, true);
        off += p.r;
    }
}

/// The backward pass of [`lora_forward`] for a group: adds `x`'s gradient to `dx` (through the
/// dropout mask `mask` when there is one) and returns each adapter's `(dA, dB)`. `dy` holds the
/// output gradient in rows of `width`; `u` is what the forward pass kept.
#[allow(clippy::too_many_arguments)]
fn lora_backward(
    x: &[f32],
    t: usize,
    inp: usize,
    g: &Group,
    factor: f32,
    dy: &[f32],
    width: usize,
    u: &[f32],
    dx: &mut [f32],
    mask: Option<(&TrainPass, u64)>,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let rt: usize = g.iter().map(|(_, p, _)| p.r).sum();
    let a_cat: Vec<f32> = g.iter().flat_map(|(_, p, _)| p.a.iter().copied()).collect();
    // Per adapter: dB = factor · dYᵀ u ([n_out, r]); its columns of du = factor · dY B ([t, Σ r]).
    let mut du = vec![0f32; t * rt];
    let mut dbs = Vec::with_capacity(g.len());
    let mut off = 0;
    for (_, p, c0) in g {
        let (r, n_out) = (p.r, p.b.len() / p.r);
        let mut db = vec![0f32; n_out * r];
        mm(n_out, r, t, &mut db, r, false, &dy[*c0..], 1, width, &u[off..], rt, 1, factor, true);
        mm(t, r, n_out, &mut du[off..], rt, false, &dy[*c0..], width, 1, &p.b, r, 1, factor, true);
        dbs.push(db);
        off += r;
    }
    // dA = duᵀ x ([Σ r, inp], split by adapter); dx += du [A₁; A₂; ...].
    let mut da = vec![0f32; rt * inp];
    mm(rt, inp, t, &mut da, inp, false, &du, 1, rt, x, inp, 1, 1.0, true);
    match mask {
        None => mm(t, inp, rt, dx, inp, true, &du, rt, 1, &a_cat, inp, 1, 1.0, true),
        Some((pass, stream)) => {
            let mut gx = vec![0f32; t * inp];
            mm(t, inp, rt, &mut gx, inp, false, &du, rt, 1, &a_cat, inp, 1, 1.0, true);
            let keep = 1.0 - f64::from(pass.dropout);
            let scale = (1.0 / keep) as f32;
            for (i, (d, gv)) in dx.iter_mut().zip(&gx).enumerate() {
                if kept(pass.seed, stream, i as u64, keep) {
                    *d += gv * scale;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(g.len());
    let mut row = 0;
    for ((_, p, _), db) in g.iter().zip(dbs) {
        out.push((da[row * inp..(row + p.r) * inp].to_vec(), db));
        row += p.r;
    }
    out
}

/// Backward of `y = x · rsqrt(mean(x²) + eps) · w` per row: `dx += ...` given `dy`.
fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, n: usize, dy: &[f32], dx: &mut [f32]) {
    let one = |((xr, dyr), dxr): ((&[f32], &[f32]), &mut [f32])| {
        let ms = kernels::dot_f32(xr, xr) / n as f32;
        let r = 1.0 / (ms + eps).sqrt();
        let mut dot = 0f32;
        for ((&x, &d), &w) in xr.iter().zip(dyr).zip(w) {
            dot += x * d * w;
        }
        let c = r * r * r * dot / n as f32;
        for (((o, &x), &d), &w) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
            *o += r * w * d - c * x;
        }
    };
    x.par_chunks_exact(n).zip(dy.par_chunks_exact(n)).zip(dx.par_chunks_exact_mut(n)).for_each(one);
}

/// Backward of [`rope_half`] on one head: the gradient before rotation from the one after.
fn rope_half_backward(d: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = d.len() / 2;
    for i in 0..half {
        let (da, db) = (d[i], d[i + half]);
        d[i] = da * cos[i] + db * sin[i + half];
        d[i + half] = db * cos[i + half] - da * sin[i];
    }
}

/// Softmax of one causal row of scores in place (entries after `n` are zeroed), vectorised
/// ([`kernels::softmax_in_place`]: a tenth of a step's time with one `expf` per value). The inference
/// path computes attention with the standard library's `exp`; on the int8 path the training loss is
/// sensitive to such last bits (the vectorised `exp`, within 1e-7, moved the golden losses by up to
/// 0.7 % either way, inside the spread int8 activations give: see `docs/training.md`), and on both
/// paths this one is 8–10 % of a step faster.
fn softmax_row(s: &mut [f32], n: usize) {
    kernels::softmax_in_place(&mut s[..n]);
    s[n..].fill(0.0);
}

/// `σ(g)` into `s`: with the vectorised `exp` where the products run on a dense unit
/// ([`kernels::dense_products`]), else the standard library's, as inference computes it (on the int8
/// path the vectorised one here gained no measurable speed and moved the golden gradient norms from
/// 0.4 % to 1.1 % of the reference's).
fn sigmoid(g: &[f32], s: &mut [f32]) {
    if kernels::dense_products() {
        s.iter_mut().zip(g).for_each(|(s, &g)| *s = -g);
        kernels::exp_in_place(s);
        s.iter_mut().for_each(|v| *v = 1.0 / (1.0 + *v));
    } else {
        s.iter_mut().zip(g).for_each(|(s, &g)| *s = 1.0 / (1.0 + (-g).exp()));
    }
}

/// SwiGLU as inference computes it ([`swiglu`]), or with the vectorised `exp` where the products
/// run on a dense unit (see [`sigmoid`]).
fn swiglu_train(gu: &[f32], inter: usize, act: &mut Vec<f32>) {
    if !kernels::dense_products() {
        return swiglu(gu, inter, act);
    }
    act.resize(gu.len() / 2, 0.0);
    act.par_chunks_exact_mut(inter).zip(gu.par_chunks_exact(2 * inter)).for_each(|(a, gu)| {
        let (g, u) = gu.split_at(inter);
        sigmoid(g, a);
        a.iter_mut().zip(g).zip(u).for_each(|((a, &g), &u)| *a *= g * u);
    });
}

/// Geometry of one attention pass over `qkv` (`[t, qkv_w]`: queries, then keys, then values).
#[derive(Clone, Copy)]
struct Attn {
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    qkv_w: usize,
    /// Run on the tile unit ([`tile_attn`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    tiles: bool,
}

impl Attn {
    /// The attention of one layer of `c` over `t` positions: on the tile unit where this CPU has
    /// one ([`kernels::tile_products`]), unless `pass` asks for f32.
    fn new(c: &LlamaConfig, t: usize, pass: &TrainPass) -> Attn {
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        Attn { t, nh, nkv, hd, qkv_w: (nh + 2 * nkv) * hd, tiles: kernels::tile_products() && !pass.f32_attention }
    }

    fn q_w(&self) -> usize {
        self.nh * self.hd
    }
    fn k0(&self, g: usize) -> usize {
        self.q_w() + g * self.hd
    }
    fn v0(&self, g: usize) -> usize {
        self.q_w() + self.nkv * self.hd + g * self.hd
    }

    /// Query heads per key/value head.
    fn hpg(&self) -> usize {
        self.nh / self.nkv
    }

    /// Causal attention output `[t, q_w]`: on the tile unit where the frozen products run there
    /// ([`tile_attn`]), else in f32.
    fn forward(&self, qkv: &[f32], out: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if self.tiles {
            let heads = self.tile_forward(qkv);
            return self.gather(&heads, out);
        }
        let groups = self.f32_forward(qkv);
        self.gather(&groups, out);
    }

    /// Per-head (`[t, hd]`) or per-group (`[t, hpg · hd]`) outputs into `out` (`[t, q_w]`): the
    /// blocks' widths follow from their count.
    fn gather(&self, blocks: &[Vec<f32>], out: &mut Vec<f32>) {
        let (t, q_w) = (self.t, self.q_w());
        let bw = q_w / blocks.len();
        out.resize(t * q_w, 0.0);
        for (b, o) in blocks.iter().enumerate() {
            for i in 0..t {
                out[i * q_w + b * bw..i * q_w + (b + 1) * bw].copy_from_slice(&o[i * bw..(i + 1) * bw]);
            }
        }
    }

    /// The query positions in [`PARTS`] parts of about equal causal work (block `i0` of `bq`
    /// queries costs about `bq · (i0 + bq)`; each cut at the block boundary nearest its share),
    /// whole blocks of [`BQ_F32`]: the f32 passes run (group, part) pairs in parallel, enough of
    /// them that the threads end close together. The parts do not depend on the thread count, so
    /// neither do the results (the parts' key and value gradients add up in a fixed order).
    fn parts(&self) -> Vec<std::ops::Range<usize>> {
        let t = self.t;
        let starts: Vec<usize> = (0..t).step_by(BQ_F32).collect();
        // cum[b]: the work of the blocks before block b.
        let mut cum = vec![0usize];
        for &i0 in &starts {
            let bq = BQ_F32.min(t - i0);
            cum.push(cum[cum.len() - 1] + (i0 + bq) * bq);
        }
        let nb = starts.len();
        let mut cuts = vec![0usize];
        for p in 1..PARTS {
            let target = cum[nb] * p / PARTS;
            match (cuts[cuts.len() - 1] + 1..nb).min_by_key(|&b| cum[b].abs_diff(target)) {
                Some(b) => cuts.push(b),
                None => break,
            }
        }
        cuts.push(nb);
        cuts.windows(2).map(|c| starts[c[0]]..starts.get(c[1]).copied().unwrap_or(t)).collect()
    }

    /// The (group, part) pairs of the f32 passes.
    fn items(&self, parts: &[std::ops::Range<usize>]) -> Vec<(usize, std::ops::Range<usize>)> {
        (0..self.nkv).flat_map(|g| parts.iter().map(move |r| (g, r.clone()))).collect()
    }

    /// Probabilities of group `g`'s stacked queries `qb` (see [`stack_rows`]) at positions
    /// `i0..i0 + bq` over keys `0..i0 + bq` into `p` (`[bq · hpg, n]`, row `ii · hpg + h` for head
    /// `h` of the group at position `i0 + ii`).
    fn group_probs(&self, qkv: &[f32], g: usize, qb: &[f32], i0: usize, bq: usize, p: &mut Vec<f32>) -> usize {
        let (hd, hpg) = (self.hd, self.hpg());
        let n = i0 + bq;
        p.resize(bq * hpg * n, 0.0);
        let scale = 1.0 / (hd as f32).sqrt();
        mm(bq * hpg, n, hd, p, n, false, qb, hd, 1, &qkv[self.k0(g)..], 1, self.qkv_w, scale, false);
        for (r, row) in p.chunks_exact_mut(n).enumerate() {
            softmax_row(row, i0 + r / hpg + 1);
        }
        n
    }

    /// [`Attn::forward`] in f32: per group of heads sharing keys and values, `[t, hpg · hd]`. The
    /// group's heads are stacked into one product per block of queries (their rows side by side in
    /// `qkv` are `[bq · hpg, hd]` once copied out), so the keys and values are packed once for the
    /// group's heads.
    fn f32_forward(&self, qkv: &[f32]) -> Vec<Vec<f32>> {
        let (hd, gw) = (self.hd, self.hpg() * self.hd);
        let parts = self.parts();
        let outs: Vec<Vec<f32>> = self
            .items(&parts)
            .par_iter()
            .map(|(g, range)| {
                let g = *g;
                let mut o = vec![0f32; range.len() * gw];
                let (mut qb, mut p) = (Vec::new(), Vec::new());
                for i0 in range.clone().step_by(BQ_F32) {
                    let bq = BQ_F32.min(range.end - i0);
                    stack_rows(qkv, self.qkv_w, g * gw, i0..i0 + bq, gw, &mut qb);
                    let n = self.group_probs(qkv, g, &qb, i0, bq, &mut p);
                    mm(bq * self.hpg(), hd, n, &mut o[(i0 - range.start) * gw..], hd, false, &p, n, 1, &qkv[self.v0(g)..], self.qkv_w, 1, 1.0, false);
                }
                o
            })
            .collect();
        outs.chunks(parts.len()).map(|per_group| per_group.concat()).collect()
    }

    /// Gradients of queries, keys and values (`[t, qkv_w]`, overwritten) from the output gradient
    /// `d_out` (`[t, q_w]`) and the output `out`, on the tile unit or in f32 as [`Attn::forward`].
    fn backward(&self, qkv: &[f32], out: &[f32], d_out: &[f32], d_qkv: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if self.tiles {
            let per_head = self.tile_backward(qkv, out, d_out);
            return self.scatter(&per_head, d_qkv);
        }
        let per_group = self.f32_backward(qkv, out, d_out);
        self.scatter(&per_group, d_qkv);
    }

    /// Per-head (`[t, hd]` each) or per-group (`[t, hpg · hd]`, `[t, hd]`, `[t, hd]`) `[dq, dk, dv]`
    /// into `d_qkv` (`[t, qkv_w]`, overwritten; the key and value gradients of a group's heads add
    /// up).
    fn scatter(&self, blocks: &[[Vec<f32>; 3]], d_qkv: &mut Vec<f32>) {
        let (t, hd, w) = (self.t, self.hd, self.qkv_w);
        let per_group = self.nh / blocks.len();
        let bw = per_group * hd;
        d_qkv.clear();
        d_qkv.resize(t * w, 0.0);
        for (b, [dq, dk, dv]) in blocks.iter().enumerate() {
            let g = b * per_group / self.hpg();
            for i in 0..t {
                let row = &mut d_qkv[i * w..(i + 1) * w];
                row[b * bw..(b + 1) * bw].copy_from_slice(&dq[i * bw..(i + 1) * bw]);
                for (d, s) in row[self.k0(g)..self.k0(g) + hd].iter_mut().zip(&dk[i * hd..(i + 1) * hd]) {
                    *d += s;
                }
                for (d, s) in row[self.v0(g)..self.v0(g) + hd].iter_mut().zip(&dv[i * hd..(i + 1) * hd]) {
                    *d += s;
                }
            }
        }
    }

    /// [`Attn::backward`] in f32, each group's heads stacked as in [`Attn::f32_forward`]: per group
    /// `[dq, dk, dv]` (`[t, hpg · hd]`, `[t, hd]`, `[t, hd]`; the group's parts in parallel, see
    /// [`Attn::parts`]: the parts' key and value gradients add up).
    fn f32_backward(&self, qkv: &[f32], out: &[f32], d_out: &[f32]) -> Vec<[Vec<f32>; 3]> {
        let (t, hd, q_w, w, hpg) = (self.t, self.hd, self.q_w(), self.qkv_w, self.hpg());
        let gw = hpg * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let parts = self.parts();
        let grads: Vec<[Vec<f32>; 3]> = self
            .items(&parts)
            .par_iter()
            .map(|(g, range)| {
                let g = *g;
                // dQ for this part's queries; dK and dV over the keys they see (0..range.end).
                let (mut dq, mut dk, mut dv) = (vec![0f32; range.len() * gw], vec![0f32; range.end * hd], vec![0f32; range.end * hd]);
                // D = dO · O per stacked row (position, head).
                let dd: Vec<f32> = range
                    .clone()
                    .flat_map(|i| (0..hpg).map(move |h| i * q_w + g * gw + h * hd))
                    .map(|c| kernels::dot_f32(&d_out[c..c + hd], &out[c..c + hd]))
                    .collect();
                let (mut qb, mut dob, mut p, mut dp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for i0 in range.clone().step_by(BQ_F32) {
                    let bq = BQ_F32.min(range.end - i0);
                    let rows = bq * hpg;
                    stack_rows(qkv, w, g * gw, i0..i0 + bq, gw, &mut qb);
                    stack_rows(d_out, q_w, g * gw, i0..i0 + bq, gw, &mut dob);
                    let n = self.group_probs(qkv, g, &qb, i0, bq, &mut p);
                    // dV[0..n] += Pᵀ dO.
                    mm(n, hd, rows, &mut dv, hd, true, &p, 1, n, &dob, hd, 1, 1.0, false);
                    // dP = dO Vᵀ; dS = P ⊙ (dP − D).
                    dp.resize(rows * n, 0.0);
                    mm(rows, n, hd, &mut dp, n, false, &dob, hd, 1, &qkv[self.v0(g)..], 1, w, 1.0, false);
                    let d0 = (i0 - range.start) * hpg;
                    for ((dr, pr), &di) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)).zip(&dd[d0..d0 + rows]) {
                        dr.iter_mut().zip(pr).for_each(|(d, &p)| *d = p * (*d - di));
                    }
                    // dQ = scale · dS K; dK[0..n] += scale · dSᵀ Q.
                    mm(rows, hd, n, &mut dq[(i0 - range.start) * gw..], hd, false, &dp, n, 1, &qkv[self.k0(g)..], w, 1, scale, false);
                    mm(n, hd, rows, &mut dk, hd, true, &dp, 1, n, &qb, hd, 1, scale, false);
                }
                [dq, dk, dv]
            })
            .collect();
        grads
            .chunks(parts.len())
            .map(|per_group| {
                let dq = per_group.iter().flat_map(|[dq, _, _]| dq.iter().copied()).collect();
                let (mut dk, mut dv) = (vec![0f32; t * hd], vec![0f32; t * hd]);
                for [_, k, v] in per_group {
                    dk[..k.len()].iter_mut().zip(k).for_each(|(a, b)| *a += b);
                    dv[..v.len()].iter_mut().zip(v).for_each(|(a, b)| *a += b);
                }
                [dq, dk, dv]
            })
            .collect()
    }
}

/// Columns `c0..c0 + width` of rows `rows` of `src` (rows `rs` apart), one after the other into
/// `dst`: a group's queries (or output gradients) at those positions, which as `[rows · hpg, hd]`
/// are its heads stacked (row `ii · hpg + h`).
fn stack_rows(src: &[f32], rs: usize, c0: usize, rows: std::ops::Range<usize>, width: usize, dst: &mut Vec<f32>) {
    dst.clear();
    for i in rows {
        dst.extend_from_slice(&src[i * rs + c0..i * rs + c0 + width]);
    }
}

/// What one layer's backward pass needs from its forward pass (what is not kept in f32 is rounded to
/// 16 bits: its inputs and the residual stream stay f32, as RMSNorm's backward pass needs them).
#[derive(Default)]
struct LayerActs {
    /// The layer's input `[t, h]`.
    x: Vec<f32>,
    /// Queries, keys (after RoPE) and values `[t, qkv_w]`, in f16.
    qkv: Vec<half::f16>,
    /// Attention output `[t, q_w]`, in f16.
    attn: Vec<half::f16>,
    /// The residual stream after attention `[t, h]`.
    x2: Vec<f32>,
    /// Gate and up projections `[t, 2·inter]`, in bf16: the largest of these, and SwiGLU's backward
    /// pass needs no more precision (the layer's output was computed from the f32 values).
    gu: Vec<half::bf16>,
    /// `x Aᵀ` of each adapter group (see [`groups`]), `[t, Σ r]`.
    u: [Vec<f32>; 4],
}

impl LayerActs {
    fn bytes(&self) -> usize {
        4 * (self.x.capacity() + self.x2.capacity() + self.u.iter().map(Vec::capacity).sum::<usize>())
            + 2 * (self.qkv.capacity() + self.attn.capacity() + self.gu.capacity())
    }
}

/// Scratch reused across layers.
#[derive(Default)]
struct Work {
    /// Gate and up projections, queries/keys/values and attention output in f32 (computed in the
    /// forward pass, unpacked from [`LayerActs`] in the backward pass).
    gu: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    d_act: Vec<f32>,
    d_gu: Vec<f32>,
    d_h: Vec<f32>,
    d_attn: Vec<f32>,
    d_qkv: Vec<f32>,
    h: Vec<f32>,
    act: Vec<f32>,
    out: Vec<f32>,
    u: Vec<f32>,
    drop: Vec<f32>,
    a_cat: Vec<f32>,
    logits: Vec<f32>,
    acts: QActs,
}

/// The adapter groups of a layer, each reading one input: Q/K/V (the normed input), O (the attention
/// output), gate/up (the normed residual), down (SwiGLU's output); each with its modules' output
/// columns. With dropout every adapter has its own mask, so each is a group of its own.
fn groups(lora: &[Option<HostPair>; 7], q_w: usize, kv_w: usize, inter: usize, dropout: bool) -> [Vec<Group<'_>>; 4] {
    let split = |mods: &[(usize, usize)]| -> Vec<Group<'_>> {
        if dropout {
            mods.iter().map(|&m| group(lora, &[m])).filter(|g| !g.is_empty()).collect()
        } else {
            let g = group(lora, mods);
            if g.is_empty() {
                Vec::new()
            } else {
                vec![g]
            }
        }
    };
    [split(&[(0, 0), (1, q_w), (2, q_w + kv_w)]), split(&[(3, 0)]), split(&[(4, 0), (5, inter)]), split(&[(6, 0)])]
}

/// The dropout stream of a group (its first module's).
fn group_stream(l: usize, g: &Group) -> u64 {
    stream(l, g[0].0)
}

/// Dropout stream of (layer, module).
fn stream(l: usize, m: usize) -> u64 {
    (l * 7 + m) as u64 + 1
}

impl HostWeights {
    /// The transposed weights of the backward pass (built once per model; about one byte per weight,
    /// only the head's where [`kernels::transposed_products`]).
    pub(crate) fn backward_weights(&self) -> HostBackward {
        let by_rows = kernels::transposed_products();
        let layers = self
            .layers
            .iter()
            .filter(|_| !by_rows)
            .map(|l| {
                let [q, k, v] = &l.qkv;
                let [g, u] = &l.gate_up;
                [QMatrix::transposed(&[q, k, v]), QMatrix::transposed(&[&l.wo]), QMatrix::transposed(&[g, u]), QMatrix::transposed(&[&l.down])]
            })
            .collect();
        let head = QMatrix::transposed(&[self.lm_head.as_ref().unwrap_or(&self.embed)]);
        HostBackward { layers, head }
    }

    /// One layer's forward pass from `acts.x`, filling the rest of `acts`; the layer's output goes
    /// to `x_out`.
    fn layer_forward(&self, c: &LlamaConfig, l: usize, pass: &TrainPass, acts: &mut LayerActs, w: &mut Work, x_out: &mut Vec<f32>) {
        let (h, nh, nkv, hd, inter) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let t = acts.x.len() / h;
        let (q_w, kv_w) = (nh * hd, nkv * hd);
        let qkv_w = q_w + 2 * kv_w;
        let layer = &self.layers[l];
        let gs = groups(&pass.lora[l], q_w, kv_w, inter, pass.dropout > 0.0);
        let eps = c.rms_norm_eps;
        // The adapters of input slot `$slot` reading `$x` (`$inp` wide), added to `$out`.
        macro_rules! adapters {
            ($slot:expr, $x:expr, $inp:expr, $out:expr, $width:expr) => {
                acts.u[$slot].clear();
                for g in &gs[$slot] {
                    let x = dropped(&$x, pass, group_stream(l, g), &mut w.drop);
                    lora_forward(x, t, $inp, g, pass.factor, &mut $out, $width, &mut w.a_cat, &mut w.u);
                    acts.u[$slot].extend_from_slice(&w.u);
                }
            };
        }
        // Attention.
        rms_norm(&acts.x, &layer.attn_norm, eps, h, &mut w.h);
        w.acts.prepare(&w.h, t, h);
        w.qkv.resize(t * qkv_w, 0.0);
        let [wq, wk, wv] = &layer.qkv;
        kernels::matmul(&[wq, wk, wv], &w.h, &w.acts, t, &mut w.qkv);
        adapters!(0, w.h, h, w.qkv, qkv_w);
        w.qkv.par_chunks_exact_mut(qkv_w).enumerate().for_each(|(pos, row)| {
            let (cos, sin) = (&self.cos[pos * hd..(pos + 1) * hd], &self.sin[pos * hd..(pos + 1) * hd]);
            for head in row[..q_w + kv_w].chunks_exact_mut(hd) {
                rope_half(head, cos, sin);
            }
        });
        Attn::new(c, t, pass).forward(&w.qkv, &mut w.attn);
        pack(&w.qkv, &mut acts.qkv);
        pack(&w.attn, &mut acts.attn);
        w.acts.prepare(&w.attn, t, q_w);
        w.out.resize(t * h, 0.0);
        kernels::matmul(&[&layer.wo], &w.attn, &w.acts, t, &mut w.out);
        adapters!(1, w.attn, q_w, w.out, h);
        acts.x2.clear();
        acts.x2.extend(acts.x.iter().zip(&w.out).map(|(x, o)| x + o));
        // MLP.
        rms_norm(&acts.x2, &layer.mlp_norm, eps, h, &mut w.h);
        w.acts.prepare(&w.h, t, h);
        w.gu.resize(t * 2 * inter, 0.0);
        let [wg, wu] = &layer.gate_up;
        kernels::matmul(&[wg, wu], &w.h, &w.acts, t, &mut w.gu);
        adapters!(2, w.h, h, w.gu, 2 * inter);
        pack(&w.gu, &mut acts.gu);
        swiglu_train(&w.gu, inter, &mut w.act);
        w.acts.prepare(&w.act, t, inter);
        kernels::matmul(&[&layer.down], &w.act, &w.acts, t, &mut w.out);
        adapters!(3, w.act, inter, w.out, h);
        x_out.clear();
        x_out.extend(acts.x2.iter().zip(&w.out).map(|(x, o)| x + o));
    }

    /// One layer's backward pass: `dx` holds the output gradient on entry and the input gradient on
    /// return.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(&self, c: &LlamaConfig, bw: &HostBackward, l: usize, pass: &TrainPass, acts: &LayerActs, w: &mut Work, dx: &mut [f32]) -> LayerGrads {
        let (h, nh, nkv, hd, inter) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let t = acts.x.len() / h;
        let (q_w, kv_w) = (nh * hd, nkv * hd);
        let qkv_w = q_w + 2 * kv_w;
        let layer = &self.layers[l];
        let gs = groups(&pass.lora[l], q_w, kv_w, inter, pass.dropout > 0.0);
        let eps = c.rms_norm_eps;
        let mut grads: LayerGrads = Default::default();
        // The adapters of input slot `slot` (reading `x`, `inp` wide), from the output gradient `dy`
        // (rows of `width`), adding to `dxm`.
        let mut back = |slot: usize, x: &[f32], inp: usize, dy: &[f32], width: usize, dxm: &mut [f32], tmp: &mut Vec<f32>| {
            let mut off = 0;
            for g in &gs[slot] {
                let rt: usize = g.iter().map(|(_, p, _)| p.r).sum();
                let xd = dropped(x, pass, group_stream(l, g), tmp);
                let mask = (pass.dropout > 0.0).then_some((pass, group_stream(l, g)));
                let res = lora_backward(xd, t, inp, g, pass.factor, dy, width, &acts.u[slot][off..off + t * rt], dxm, mask);
                for ((m, _, _), gr) in g.iter().zip(res) {
                    grads[*m] = Some(gr);
                }
                off += t * rt;
            }
        };
        // Down projection: d_act = dY · W_down (+ LoRA), from SwiGLU's output recomputed from the
        // stored gate and up projections.
        let Work { gu, qkv, attn, d_act, d_gu, d_h, d_attn, d_qkv, h: hn, act, drop, acts: q, .. } = w;
        unpack(&acts.gu, gu);
        unpack(&acts.qkv, qkv);
        unpack(&acts.attn, attn);
        // With the vectorised `exp`, σ(gate) is computed once, into the up half of `d_gu` (where
        // SwiGLU's backward pass reads it before overwriting it), and SwiGLU's output from it, as
        // `swiglu_train` computes it.
        d_gu.resize(t * 2 * inter, 0.0);
        let sig_ready = kernels::dense_products();
        if sig_ready {
            act.resize(t * inter, 0.0);
            act.par_chunks_exact_mut(inter).zip(d_gu.par_chunks_exact_mut(2 * inter)).zip(gu.par_chunks_exact(2 * inter)).for_each(|((a, dgu), gu)| {
                let (g, u) = gu.split_at(inter);
                let sig = &mut dgu[inter..];
                sigmoid(g, sig);
                a.iter_mut().zip(&*sig).zip(g).zip(u).for_each(|(((a, &s), &g), &u)| *a = s * (g * u));
            });
        } else {
            swiglu_train(gu, inter, act);
        }
        // `dX = dY · W` for layer weight `i` (stacked `parts`): from the weights as stored, or from
        // their transpose.
        let product = |i: usize, parts: &[&QMatrix], dy: &[f32], q: &mut QActs, out: &mut [f32]| match bw.layers.get(l) {
            Some(transposed) => {
                q.prepare(dy, t, dy.len() / t);
                kernels::matmul(&[&transposed[i]], dy, q, t, out);
            }
            None => kernels::matmul_t(parts, dy, t, out),
        };
        let [wq, wk, wv] = &layer.qkv;
        let [wg, wu] = &layer.gate_up;
        d_act.resize(t * inter, 0.0);
        product(3, &[&layer.down], dx, q, d_act);
        back(3, act, inter, dx, h, d_act, drop);
        // SwiGLU.
        d_gu.par_chunks_exact_mut(2 * inter).zip(gu.par_chunks_exact(2 * inter)).zip(d_act.par_chunks_exact(inter)).for_each(|((dgu, gu), da)| {
            let (dg, du) = dgu.split_at_mut(inter);
            let (g, u) = gu.split_at(inter);
            if !sig_ready {
                sigmoid(g, du);
            }
            for i in 0..inter {
                let s = du[i];
                du[i] = da[i] * g[i] * s;
                dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
        // Gate and up projections.
        rms_norm(&acts.x2, &layer.mlp_norm, eps, h, hn);
        d_h.resize(t * h, 0.0);
        product(2, &[wg, wu], d_gu, q, d_h);
        back(2, hn, h, d_gu, 2 * inter, d_h, drop);
        // dx2 = dx + RMSNorm backward.
        rms_norm_backward(&acts.x2, &layer.mlp_norm, eps, h, d_h, dx);
        // Output projection.
        d_attn.resize(t * q_w, 0.0);
        product(1, &[&layer.wo], dx, q, d_attn);
        back(1, attn, q_w, dx, h, d_attn, drop);
        // Attention, then RoPE.
        Attn::new(c, t, pass).backward(qkv, attn, d_attn, d_qkv);
        d_qkv.par_chunks_exact_mut(qkv_w).enumerate().for_each(|(pos, row)| {
            let (cos, sin) = (&self.cos[pos * hd..(pos + 1) * hd], &self.sin[pos * hd..(pos + 1) * hd]);
            for head in row[..q_w + kv_w].chunks_exact_mut(hd) {
                rope_half_backward(head, cos, sin);
            }
        });
        // Q, K, V projections.
        rms_norm(&acts.x, &layer.attn_norm, eps, h, hn);
        product(0, &[wq, wk, wv], d_qkv, q, d_h);
        back(0, hn, h, d_qkv, qkv_w, d_h, drop);
        rms_norm_backward(&acts.x, &layer.attn_norm, eps, h, d_h, dx);
        grads
    }

    /// The masked loss of `ids` (mean cross-entropy of `ids[t]` over the positions with `mask[t]`)
    /// and, with `grads`, its gradients with respect to the adapters. Callers have checked the ids,
    /// the lengths and that some token is masked. Gradients are computed with `training`.
    pub(crate) fn train_pass(&self, c: &LlamaConfig, training: Option<&HostTraining>, ids: &[u32], mask: &[bool], pass: &TrainPass) -> PassResult {
        let bw = training.map(|t| &*t.backward);
        let h = c.hidden_size;
        let t = ids.len();
        let layers = self.layers.len();
        let (mut pool, mut work) = match training {
            Some(tr) => std::mem::take(&mut *tr.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner)),
            None => Default::default(),
        };
        let mut x = vec![0f32; t * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(ids) {
            self.embed.dequantize_row(id as usize, row);
        }
        // Forward, keeping what the backward pass needs (or only each layer's input).
        let keep = bw.is_some();
        let mut saved: Vec<LayerActs> = Vec::with_capacity(if keep { layers } else { 0 });
        for l in 0..layers {
            let mut acts = pool.pop().unwrap_or_default();
            std::mem::swap(&mut acts.x, &mut x);
            self.layer_forward(c, l, pass, &mut acts, &mut work, &mut x);
            match (keep, pass.checkpoint) {
                (true, false) => saved.push(acts),
                (true, true) => {
                    saved.push(LayerActs { x: std::mem::take(&mut acts.x), ..Default::default() });
                    pool.push(acts);
                }
                (false, _) => pool.push(acts),
            }
        }
        tracing::trace!(bytes = saved.iter().map(LayerActs::bytes).sum::<usize>(), "host training activations");
        // The masked head, a few rows at a time; `dx` collects the final hidden states' gradient.
        let rows: Vec<(usize, u32)> = (1..t).filter(|&i| mask[i]).map(|i| (i - 1, ids[i])).collect();
        let n = rows.len();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let vocab = head.rows();
        let mut dx = if keep { vec![0f32; t * h] } else { Vec::new() };
        let mut loss = 0f64;
        let (mut hx, mut hn, mut dh) = (Vec::new(), Vec::new(), Vec::new());
        let mut logits = std::mem::take(&mut work.logits);
        for chunk in rows.chunks(HEAD_ROWS) {
            let k = chunk.len();
            hx.clear();
            for &(r, _) in chunk {
                hx.extend_from_slice(&x[r * h..(r + 1) * h]);
            }
            rms_norm(&hx, &self.norm, c.rms_norm_eps, h, &mut hn);
            work.acts.prepare(&hn, k, h);
            logits.resize(k * vocab, 0.0);
            kernels::matmul(&[head], &hn, &work.acts, k, &mut logits);
            let losses: Vec<f64> = logits
                .par_chunks_exact_mut(vocab)
                .zip(chunk.par_iter())
                .map(|(row, &(_, target))| {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let picked = row[target as usize];
                    row.iter_mut().for_each(|v| *v -= max);
                    kernels::exp_in_place(row);
                    let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
                    let l = sum.ln() - f64::from(picked - max);
                    if keep {
                        // d logits = (softmax − one-hot) / n.
                        let scale = (1.0 / (sum * n as f64)) as f32;
                        row.iter_mut().for_each(|v| *v *= scale);
                        row[target as usize] -= 1.0 / n as f32;
                    }
                    l
                })
                .collect();
            loss += losses.iter().sum::<f64>();
            if let Some(bw) = bw {
                work.acts.prepare(&logits, k, vocab);
                dh.resize(k * h, 0.0);
                kernels::matmul(&[&bw.head], &logits, &work.acts, k, &mut dh);
                let mut dxr = vec![0f32; k * h];
                rms_norm_backward(&hx, &self.norm, c.rms_norm_eps, h, &dh, &mut dxr);
                for (&(r, _), g) in chunk.iter().zip(dxr.chunks_exact(h)) {
                    dx[r * h..(r + 1) * h].iter_mut().zip(g).for_each(|(d, g)| *d += g);
                }
            }
        }
        work.logits = logits;
        let loss = loss / n as f64;
        let Some(bw) = bw else { return PassResult { loss, tokens: n, grads: None } };
        // Backward, last layer first.
        let mut grads: Vec<LayerGrads> = (0..layers).map(|_| Default::default()).collect();
        let mut next = Vec::new();
        for l in (0..layers).rev() {
            let mut s = saved.pop().expect("one saved entry per layer");
            if pass.checkpoint {
                let mut r = pool.pop().unwrap_or_default();
                std::mem::swap(&mut r.x, &mut s.x);
                self.layer_forward(c, l, pass, &mut r, &mut work, &mut next);
                grads[l] = self.layer_backward(c, bw, l, pass, &r, &mut work, &mut dx);
                pool.push(r);
            } else {
                grads[l] = self.layer_backward(c, bw, l, pass, &s, &mut work, &mut dx);
            }
            pool.push(s);
        }
        if let Some(tr) = training {
            *tr.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (pool, work);
        }
        PassResult { loss, tokens: n, grads: Some(grads) }
    }
}

/// Stores activations in 16 bits (`f16` or `bf16`: the backward pass's copy; the forward pass used
/// the f32 values).
fn pack<H: Copy + Default + Send + Sync>(x: &[f32], out: &mut Vec<H>)
where
    [H]: half::slice::HalfFloatSliceExt,
{
    out.clear();
    out.resize(x.len(), H::default());
    out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(o, x)| half::slice::HalfFloatSliceExt::convert_from_f32_slice(o, x));
}

/// The f32 values of [`pack`]'s copy.
fn unpack<H: Copy + Send + Sync>(x: &[H], out: &mut Vec<f32>)
where
    [H]: half::slice::HalfFloatSliceExt,
{
    out.clear();
    out.resize(x.len(), 0.0);
    out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(o, x)| half::slice::HalfFloatSliceExt::convert_to_f32_slice(x, o));
}

#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tile_attn;
