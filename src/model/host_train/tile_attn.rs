//! Causal attention on the AMX tile unit ([`kernels::tile_product`]), used where the frozen products
//! run on bf16 tiles ([`kernels::dense_products`]): the same blockwise passes as [`Attn::forward`]
//! and [`Attn::backward`] (queries in blocks of [`BQ`], probabilities recomputed in the backward
//! pass), each product summed in f32 on the tiles.
//!
//! - **The forward products** (`Q Kᵀ` and `P V`, also the scores recomputed in the backward pass)
//!   are "bf16x3": each operand split in its bf16 rounding and what that rounding lost
//!   ([`TilesA::pack_residual`]), three products summed (`hi·hi + lo·hi + hi·lo`), within about
//!   2^-14 of the f32 product. Softmax turns score errors into relative errors of the
//!   probabilities, and the loss is what training reports: on the golden conversations the losses
//!   sit 2.7–8.8e-4 from PEFT's (2.5–4.5e-3 with single bf16 products, 1.0–1.5e-3 with only the
//!   scores split), for under 5 % of a step at 1024 tokens.
//! - **The backward products** (`dV`, `dP`, `dQ`, `dK`) are single bf16 products: gradients
//!   within a few 1e-3 of the exact path's (see `tests/lora.rs`).
//! - Softmax, `D = dO · O` and `dS = P ⊙ (dP − D)` stay in f32.
//!
//! Per head, each operand is packed once (queries, keys, values, the output gradient, and the
//! transposes the backward products need); per block of queries, the probabilities and `dS` are
//! packed as the products use them. Keys and values gradients are summed transposed (`[hd, t]`, the
//! shape the tile product writes) and transposed once at the end. The packed operands live in a
//! per-thread scratch reused from head to head and pass to pass (fresh buffers of this size would
//! be page-faulted in and cleared every time).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::engine::kernels::{self, tile_product, TilesA, TilesB};

use super::{softmax_row, Attn, BQ};

/// One thread's packed operands and block buffers.
#[derive(Default)]
struct Scratch {
    q: TilesA,
    /// What bf16 rounding loses of the queries, keys, values and a block's probabilities (see
    /// [`TilesA::pack_residual`]).
    q_lo: TilesA,
    k_lo: TilesB,
    v_lo: TilesB,
    block_lo: TilesA,
    qt: TilesA,
    k_rows: TilesB,
    k: TilesB,
    v: TilesB,
    v_rows: TilesB,
    d_o: TilesA,
    d_ot: TilesA,
    /// The probabilities or `dS` of a block, as A and as B.
    block_a: TilesA,
    block_b: TilesB,
    p: Vec<f32>,
    dp: Vec<f32>,
    dkt: Vec<f32>,
    dvt: Vec<f32>,
    transposed: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Attn {
    /// The operands of [`Attn::tile_probs`] for `head`: its queries and their keys, rounded and
    /// residual parts.
    fn pack_scores(&self, s: &mut Scratch, qkv: &[f32], head: usize) {
        let (t, hd, w, k0) = (self.t, self.hd, self.qkv_w, self.k0(head / (self.nh / self.nkv)));
        s.q.pack(&qkv[head * hd..], t, hd, w);
        s.q_lo.pack_residual(&qkv[head * hd..], t, hd, w);
        s.k_rows.pack_rows(&qkv[k0..], t, hd, w);
        s.k_lo.pack_rows_residual(&qkv[k0..], t, hd, w);
    }

    /// Scores of queries `i0..i0 + bq` over keys `0..i0 + bq` into `p` (`[bq, n]`), softmaxed (the
    /// head's operands packed by [`Attn::pack_scores`]).
    fn tile_probs(&self, s: &mut Scratch, i0: usize, bq: usize) -> usize {
        let n = i0 + bq;
        let p = &mut s.p;
        p.resize(bq * n, 0.0);
        let scale = 1.0 / (self.hd as f32).sqrt();
        tile_product(&s.q, i0, bq, 0, &s.k_rows, n, self.hd, p, n, false, scale);
        tile_product(&s.q_lo, i0, bq, 0, &s.k_rows, n, self.hd, p, n, true, scale);
        tile_product(&s.q, i0, bq, 0, &s.k_lo, n, self.hd, p, n, true, scale);
        for (ii, row) in p.chunks_exact_mut(n).enumerate() {
            softmax_row(row, i0 + ii + 1);
        }
        n
    }

    /// [`Attn::forward`] on tiles: per head `[t, hd]`.
    pub(super) fn tile_forward(&self, qkv: &[f32]) -> Vec<Vec<f32>> {
        let (t, hd, w) = (self.t, self.hd, self.qkv_w);
        (0..self.nh)
            .into_par_iter()
            .map(|head| {
                SCRATCH.with_borrow_mut(|s| {
                    let g = head / (self.nh / self.nkv);
                    self.pack_scores(s, qkv, head);
                    s.v.pack(&qkv[self.v0(g)..], t, hd, w);
                    s.v_lo.pack_residual(&qkv[self.v0(g)..], t, hd, w);
                    let mut o = vec![0f32; t * hd];
                    for i0 in (0..t).step_by(BQ) {
                        let bq = BQ.min(t - i0);
                        let n = self.tile_probs(s, i0, bq);
                        s.block_a.pack(&s.p, bq, n, n);
                        tile_product(&s.block_a, 0, bq, 0, &s.v, hd, n, &mut o[i0 * hd..], hd, false, 1.0);
                        s.block_lo.pack_residual(&s.p, bq, n, n);
                        tile_product(&s.block_lo, 0, bq, 0, &s.v, hd, n, &mut o[i0 * hd..], hd, true, 1.0);
                        tile_product(&s.block_a, 0, bq, 0, &s.v_lo, hd, n, &mut o[i0 * hd..], hd, true, 1.0);
                    }
                    o
                })
            })
            .collect()
    }

    /// [`Attn::backward`] on tiles: per head `[dq, dk, dv]`, each `[t, hd]`.
    pub(super) fn tile_backward(&self, qkv: &[f32], out: &[f32], d_out: &[f32]) -> Vec<[Vec<f32>; 3]> {
        let (t, hd, q_w, w) = (self.t, self.hd, self.q_w(), self.qkv_w);
        let scale = 1.0 / (hd as f32).sqrt();
        (0..self.nh)
            .into_par_iter()
            .map(|head| {
                SCRATCH.with_borrow_mut(|s| {
                    let g = head / (self.nh / self.nkv);
                    self.pack_scores(s, qkv, head);
                    s.qt.pack_transposed(&qkv[head * hd..], hd, t, w, &mut s.transposed);
                    s.k.pack(&qkv[self.k0(g)..], t, hd, w);
                    s.v_rows.pack_rows(&qkv[self.v0(g)..], t, hd, w);
                    s.d_o.pack(&d_out[head * hd..], t, hd, q_w);
                    s.d_ot.pack_transposed(&d_out[head * hd..], hd, t, q_w, &mut s.transposed);
                    // D_i = dO_i · O_i.
                    let dd: Vec<f32> = (0..t)
                        .map(|i| kernels::dot_f32(&d_out[i * q_w + head * hd..i * q_w + (head + 1) * hd], &out[i * q_w + head * hd..i * q_w + (head + 1) * hd]))
                        .collect();
                    let mut dq = vec![0f32; t * hd];
                    for m in [&mut s.dkt, &mut s.dvt] {
                        m.clear();
                        m.resize(hd * t, 0.0);
                    }
                    for i0 in (0..t).step_by(BQ) {
                        let bq = BQ.min(t - i0);
                        let n = self.tile_probs(s, i0, bq);
                        // dVᵀ[:, 0..n] += dOᵀ[:, i0..i0 + bq] · P.
                        s.block_b.pack(&s.p, bq, n, n);
                        tile_product(&s.d_ot, 0, hd, i0, &s.block_b, n, bq, &mut s.dvt, t, true, 1.0);
                        // dP = dO Vᵀ; dS = P ⊙ (dP − D).
                        s.dp.resize(bq * n, 0.0);
                        tile_product(&s.d_o, i0, bq, 0, &s.v_rows, n, hd, &mut s.dp, n, false, 1.0);
                        for (ii, (dr, pr)) in s.dp.chunks_exact_mut(n).zip(s.p.chunks_exact(n)).enumerate() {
                            let di = dd[i0 + ii];
                            dr.iter_mut().zip(pr).for_each(|(d, &p)| *d = p * (*d - di));
                        }
                        // dQ = scale · dS K; dKᵀ[:, 0..n] += scale · Qᵀ[:, i0..i0 + bq] · dS.
                        s.block_a.pack(&s.dp, bq, n, n);
                        tile_product(&s.block_a, 0, bq, 0, &s.k, hd, n, &mut dq[i0 * hd..], hd, false, scale);
                        s.block_b.pack(&s.dp, bq, n, n);
                        tile_product(&s.qt, 0, hd, i0, &s.block_b, n, bq, &mut s.dkt, t, true, scale);
                    }
                    let untranspose = |m: &[f32]| -> Vec<f32> {
                        let mut r = vec![0f32; t * hd];
                        for (c, col) in m.chunks_exact(t).enumerate() {
                            for (i, &v) in col.iter().enumerate() {
                                r[i * hd + c] = v;
                            }
                        }
                        r
                    };
                    [dq, untranspose(&s.dkt), untranspose(&s.dvt)]
                })
            })
            .collect()
    }
}
