//! The host training pass against finite differences (every backward kernel: head, RMSNorm, SwiGLU,
//! the frozen products through their transposes, attention over several query blocks, RoPE, the
//! LoRA products, dropout) and the quantized base against its own dequantized weights.

use super::*;
use crate::engine::kernels::QMatrix;
use crate::formats::quant::GgmlType;
use crate::generate::Rng;
use crate::model::host::HostLayer;

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 96,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

fn uniform(rng: &mut Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
}

/// A random `[rows, cols]` matrix: dense f32, or Q4_1 blocks with random scales and offsets.
fn matrix(rng: &mut Rng, rows: usize, cols: usize, q4: bool) -> QMatrix {
    let bound = 1.5 / (cols as f64).sqrt();
    if !q4 {
        return QMatrix::from_f32(uniform(rng, rows * cols, bound), rows, cols);
    }
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 32 {
        let d = half::f16::from_f32((bound * 2.0 / 15.0 * (0.5 + rng.next_f64())) as f32);
        let m = half::f16::from_f32((-bound * (0.5 + rng.next_f64())) as f32);
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend_from_slice(&m.to_le_bytes());
        bytes.extend((0..16).map(|_| (rng.next_u64() & 0xFF) as u8));
    }
    QMatrix::from_ggml(GgmlType::Q4_1, &bytes, rows, cols).unwrap()
}

fn weights(c: &LlamaConfig, seed: u64, q4: bool) -> HostWeights {
    let mut rng = Rng::new(seed);
    let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let norm = |rng: &mut Rng| uniform(rng, h, 0.3).into_iter().map(|v| 1.0 + v).collect::<Vec<f32>>();
    let layers = (0..c.num_hidden_layers)
        .map(|_| HostLayer {
            attn_norm: norm(&mut rng),
            qkv: [matrix(&mut rng, q_out, h, q4), matrix(&mut rng, kv_out, h, q4), matrix(&mut rng, kv_out, h, q4)],
            wo: matrix(&mut rng, h, q_out, q4),
            mlp_norm: norm(&mut rng),
            gate_up: [matrix(&mut rng, inter, h, q4), matrix(&mut rng, inter, h, q4)],
            down: matrix(&mut rng, h, inter, q4),
        })
        .collect();
    let embed = QMatrix::from_f32(uniform(&mut rng, c.vocab_size * h, 1.0), c.vocab_size, h);
    let (cos, sin) = crate::model::rope::tables(c, c.max_position_embeddings);
    HostWeights { embed, layers, norm: norm(&mut rng), lm_head: None, cos, sin }
}

/// The same model with every matrix dequantized to dense f32.
fn dequantized(w: &HostWeights) -> HostWeights {
    let d = |m: &QMatrix| QMatrix::from_f32(m.dequantize(), m.rows(), m.cols());
    HostWeights {
        embed: d(&w.embed),
        layers: w
            .layers
            .iter()
            .map(|l| HostLayer {
                attn_norm: l.attn_norm.clone(),
                qkv: [d(&l.qkv[0]), d(&l.qkv[1]), d(&l.qkv[2])],
                wo: d(&l.wo),
                mlp_norm: l.mlp_norm.clone(),
                gate_up: [d(&l.gate_up[0]), d(&l.gate_up[1])],
                down: d(&l.down),
            })
            .collect(),
        norm: w.norm.clone(),
        lm_head: None,
        cos: w.cos.clone(),
        sin: w.sin.clone(),
    }
}

fn adapters(c: &LlamaConfig, r: usize, seed: u64) -> Vec<[Option<HostPair>; 7]> {
    let mut rng = Rng::new(seed);
    (0..c.num_hidden_layers)
        .map(|_| {
            std::array::from_fn(|m| {
                let (o, i) = crate::model::lora::linear_shape(c, crate::formats::peft::TARGETS[m]);
                Some(HostPair { a: uniform(&mut rng, r * i, 1.0 / (i as f64).sqrt()), b: uniform(&mut rng, o * r, 0.3), r })
            })
        })
        .collect()
}

fn example(c: &LlamaConfig, t: usize, seed: u64) -> (Vec<u32>, Vec<bool>) {
    let mut rng = Rng::new(seed);
    let ids = (0..t).map(|_| (rng.next_u64() % c.vocab_size as u64) as u32).collect();
    let mask = (0..t).map(|i| i > 0 && rng.next_f64() < 0.6).collect();
    (ids, mask)
}

fn pass<'a>(lora: &'a [[Option<HostPair>; 7]], dropout: f32, checkpoint: bool) -> TrainPass<'a> {
    TrainPass { lora, factor: 2.0, dropout, seed: 11, checkpoint, f32_attention: false }
}

/// [`pass`] with attention in f32 where the tile unit would run it (its bf16 roundings make the loss
/// step-like at the finite differences' scale; the tile passes are checked against the f32 ones in
/// `tile_attention_matches_f32_attention`).
fn smooth_pass<'a>(lora: &'a [[Option<HostPair>; 7]], dropout: f32) -> TrainPass<'a> {
    TrainPass { f32_attention: true, ..pass(lora, dropout, false) }
}

/// Each module's gradient (A and B, all layers) as one vector.
fn module_grads(grads: &[LayerGrads], m: usize, a: bool) -> Vec<f32> {
    grads
        .iter()
        .flat_map(|l| {
            let (da, db) = l[m].as_ref().unwrap();
            if a {
                da.clone()
            } else {
                db.clone()
            }
        })
        .collect()
}

fn shifted(lora: &[[Option<HostPair>; 7]], m: usize, a: bool, dir: &[f32], eps: f32) -> Vec<[Option<HostPair>; 7]> {
    let mut out = lora.to_vec();
    let mut at = 0;
    for layer in &mut out {
        let p = layer[m].as_mut().unwrap();
        let v = if a { &mut p.a } else { &mut p.b };
        for x in v.iter_mut() {
            *x += eps * dir[at];
            at += 1;
        }
    }
    out
}

/// Central differences of the loss along the gradient and along a random direction, for A and B
/// of every module, against the analytic directional derivatives.
fn check_finite_differences(w: &HostWeights, dropout: f32) {
    let c = config();
    let bw = HostTraining::new(std::sync::Arc::new(w.backward_weights()));
    let lora = adapters(&c, 4, 3);
    // 70 tokens: two query blocks of the attention passes.
    let (ids, mask) = example(&c, 70, 5);
    let res = w.train_pass(&c, Some(&bw), &ids, &mask, &smooth_pass(&lora, dropout));
    let grads = res.grads.unwrap();
    let mut rng = Rng::new(9);
    for m in 0..7 {
        for a in [true, false] {
            let g = module_grads(&grads, m, a);
            let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            assert!(norm > 1e-4, "module {m} {a}: gradient norm {norm}");
            let along: Vec<f32> = g.iter().map(|v| (f64::from(*v) / norm) as f32).collect();
            let random: Vec<f32> = {
                let r = uniform(&mut rng, g.len(), 1.0);
                let n = r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                r.iter().map(|v| (f64::from(*v) / n) as f32).collect()
            };
            for (name, dir) in [("gradient", &along), ("random", &random)] {
                let eps = 1e-2;
                let loss = |s: f32| w.train_pass(&c, None, &ids, &mask, &smooth_pass(&shifted(&lora, m, a, dir, s), dropout)).loss;
                let fd = (loss(eps) - loss(-eps)) / (2.0 * f64::from(eps));
                let analytic: f64 = g.iter().zip(dir.iter()).map(|(g, d)| f64::from(*g) * f64::from(*d)).sum();
                let tol = 2e-2 * norm + 1e-4;
                assert!(
                    (fd - analytic).abs() < tol,
                    "module {m} ({}), {name} direction: finite difference {fd} vs analytic {analytic} (|g| {norm})",
                    if a { "A" } else { "B" }
                );
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    check_finite_differences(&weights(&config(), 1, false), 0.0);
}

#[test]
fn gradients_match_finite_differences_with_dropout() {
    check_finite_differences(&weights(&config(), 2, false), 0.25);
}

#[test]
fn checkpointing_gives_the_same_gradients() {
    let c = config();
    let w = weights(&c, 1, true);
    let bw = HostTraining::new(std::sync::Arc::new(w.backward_weights()));
    let lora = adapters(&c, 4, 3);
    let (ids, mask) = example(&c, 40, 6);
    let kept = w.train_pass(&c, Some(&bw), &ids, &mask, &pass(&lora, 0.1, false));
    let recomputed = w.train_pass(&c, Some(&bw), &ids, &mask, &pass(&lora, 0.1, true));
    assert_eq!(kept.loss, recomputed.loss);
    for m in 0..7 {
        assert_eq!(module_grads(kept.grads.as_ref().unwrap(), m, true), module_grads(recomputed.grads.as_ref().unwrap(), m, true));
        assert_eq!(module_grads(kept.grads.as_ref().unwrap(), m, false), module_grads(recomputed.grads.as_ref().unwrap(), m, false));
    }
}

/// The quantized base (Q4_1 weights, int8 activations, int8 transposes) against the exact pass on
/// its own dequantized weights: the loss and every module's gradient stay close.
#[test]
fn quantized_base_stays_close_to_its_dequantized_weights() {
    let c = config();
    let q = weights(&c, 4, true);
    let f = dequantized(&q);
    let lora = adapters(&c, 4, 3);
    let (ids, mask) = example(&c, 70, 7);
    let rq = q.train_pass(&c, Some(&HostTraining::new(std::sync::Arc::new(q.backward_weights()))), &ids, &mask, &smooth_pass(&lora, 0.0));
    let rf = f.train_pass(&c, Some(&HostTraining::new(std::sync::Arc::new(f.backward_weights()))), &ids, &mask, &smooth_pass(&lora, 0.0));
    let rel = (rq.loss - rf.loss).abs() / rf.loss;
    assert!(rel < 5e-3, "loss {} vs {} ({rel})", rq.loss, rf.loss);
    for m in 0..7 {
        for a in [true, false] {
            let (gq, gf) = (module_grads(rq.grads.as_ref().unwrap(), m, a), module_grads(rf.grads.as_ref().unwrap(), m, a));
            let dot: f64 = gq.iter().zip(&gf).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (n(&gq) * n(&gf));
            let ratio = n(&gq) / n(&gf);
            assert!(cos > 0.995 && (ratio - 1.0).abs() < 0.02, "module {m} {a}: cosine {cos}, norm ratio {ratio}");
        }
    }
}

fn rel(x: &[f32], y: &[f32]) -> f64 {
    let d: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let n: f64 = y.iter().map(|b| f64::from(*b).powi(2)).sum();
    (d / n).sqrt()
}

/// Columns `c0..c1` of every row of `m` (rows `w` wide).
fn columns(m: &[f32], w: usize, c0: usize, c1: usize) -> Vec<f32> {
    m.chunks_exact(w).flat_map(|row| row[c0..c1].iter().copied()).collect()
}

/// Attention on the tile unit against the f32 passes, over several query blocks, a partial last
/// tile, and a head dimension below one tile step: outputs (split bf16x3 products) within 5e-5
/// relative (measured about 6e-6), the gradients of every query head and every key/value head
/// (single bf16 products) within 1e-2 (measured 2–4e-3).
#[cfg(target_arch = "x86_64")]
#[test]
fn tile_attention_matches_f32_attention() {
    if !kernels::tile_products() {
        eprintln!("skipped: no tile unit here");
        return;
    }
    for (t, hd) in [(150, 64), (70, 16)] {
        let (nh, nkv) = (4, 2);
        let a = Attn { t, nh, nkv, hd, qkv_w: (nh + 2 * nkv) * hd, tiles: true };
        let f = Attn { tiles: false, ..a };
        let mut rng = Rng::new(t as u64);
        let qkv = uniform(&mut rng, t * a.qkv_w, 2.0);
        let d_out = uniform(&mut rng, t * a.q_w(), 1.0);
        let (mut tout, mut fout) = (Vec::new(), Vec::new());
        a.forward(&qkv, &mut tout);
        f.forward(&qkv, &mut fout);
        for head in 0..nh {
            let e = rel(&columns(&tout, a.q_w(), head * hd, (head + 1) * hd), &columns(&fout, a.q_w(), head * hd, (head + 1) * hd));
            assert!(e < 5e-5, "t {t} hd {hd} head {head}: output differs by {e}");
        }
        let (mut tg, mut fg) = (Vec::new(), Vec::new());
        a.backward(&qkv, &fout, &d_out, &mut tg);
        f.backward(&qkv, &fout, &d_out, &mut fg);
        for (name, c0) in (0..nh).map(|h| ("dq", h * hd)).chain((0..2 * nkv).map(|g| ("dk/dv", a.q_w() + g * hd))) {
            let e = rel(&columns(&tg, a.qkv_w, c0, c0 + hd), &columns(&fg, a.qkv_w, c0, c0 + hd));
            assert!(e < 1e-2, "t {t} hd {hd}: {name} at column {c0} differs by {e}");
        }
    }
}

/// The f32 attention passes (each group's query heads stacked into one product) against a plain
/// per-head computation in f64: three query heads per key/value head, query blocks split into two
/// parts with a partial last block, outputs and gradients within 1e-5 relative.
#[test]
fn f32_attention_matches_a_per_head_reference() {
    let (t, nh, nkv, hd) = (150, 6, 2, 16);
    let a = Attn { t, nh, nkv, hd, qkv_w: (nh + 2 * nkv) * hd, tiles: false };
    let (w, q_w, hpg) = (a.qkv_w, a.q_w(), nh / nkv);
    let mut rng = Rng::new(5);
    let qkv = uniform(&mut rng, t * w, 2.0);
    let d_out = uniform(&mut rng, t * q_w, 1.0);
    let at = |i: usize, c: usize| f64::from(qkv[i * w + c]);
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut want_out, mut want_d) = (vec![0f64; t * q_w], vec![0f64; t * w]);
    for head in 0..nh {
        let (q0, k0, v0) = (head * hd, q_w + head / hpg * hd, q_w + nkv * hd + head / hpg * hd);
        for i in 0..t {
            let s: Vec<f64> = (0..=i).map(|j| (0..hd).map(|c| at(i, q0 + c) * at(j, k0 + c)).sum::<f64>() * scale).collect();
            let max = s.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let p: Vec<f64> = e.iter().map(|x| x / e.iter().sum::<f64>()).collect();
            let d_o: Vec<f64> = (0..hd).map(|c| f64::from(d_out[i * q_w + q0 + c])).collect();
            let o: Vec<f64> = (0..hd).map(|c| (0..=i).map(|j| p[j] * at(j, v0 + c)).sum()).collect();
            want_out[i * q_w + q0..i * q_w + q0 + hd].copy_from_slice(&o);
            let dd: f64 = d_o.iter().zip(&o).map(|(a, b)| a * b).sum();
            for j in 0..=i {
                let dp: f64 = (0..hd).map(|c| d_o[c] * at(j, v0 + c)).sum();
                let ds = p[j] * (dp - dd);
                for c in 0..hd {
                    want_d[j * w + v0 + c] += p[j] * d_o[c];
                    want_d[i * w + q0 + c] += scale * ds * at(j, k0 + c);
                    want_d[j * w + k0 + c] += scale * ds * at(i, q0 + c);
                }
            }
        }
    }
    let (mut out, mut d) = (Vec::new(), Vec::new());
    a.forward(&qkv, &mut out);
    a.backward(&qkv, &out, &d_out, &mut d);
    assert!(a.parts().len() == PARTS && t % BQ_F32 != 0, "the case covers several parts and a partial block");
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let e = rel(&out, &f(&want_out));
    assert!(e < 1e-5, "output differs by {e}");
    for (name, c0) in (0..nh).map(|h| ("dq", h * hd)).chain((0..2 * nkv).map(|g| ("dk/dv", q_w + g * hd))) {
        let e = rel(&columns(&d, w, c0, c0 + hd), &columns(&f(&want_d), w, c0, c0 + hd));
        assert!(e < 1e-5, "{name} at column {c0} differs by {e}");
    }
}

/// `mm` split into blocks of rows over the pool gives the serial product: overwriting and adding,
/// with strided and transposed operands, row counts that do not divide among the threads, and a
/// destination whose rows are wider than the result.
#[test]
fn mm_row_blocks_match_the_serial_product() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
    let mut rng = Rng::new(7);
    for (m, n, k) in [(517usize, 24usize, 576usize), (576, 8, 511), (24, 576, 512), (2, 600, 300)] {
        // `a` is [m, k] read transposed from a [k, m + 3] buffer; `b` is [k, n] in a [k, n + 5] buffer.
        let a = uniform(&mut rng, k * (m + 3), 1.0);
        let b = uniform(&mut rng, k * (n + 5), 1.0);
        let init = uniform(&mut rng, m * (n + 2), 1.0);
        for acc in [false, true] {
            let (mut par, mut serial) = (init.clone(), init.clone());
            pool.install(|| mm(m, n, k, &mut par, n + 2, acc, &a, 1, m + 3, &b, n + 5, 1, 0.5, true));
            mm(m, n, k, &mut serial, n + 2, acc, &a, 1, m + 3, &b, n + 5, 1, 0.5, false);
            assert!(m * n * k >= 1 << 18, "the case takes the parallel branch");
            let worst = par.iter().zip(&serial).map(|(p, s)| (p - s).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-4, "{m}x{n}x{k} acc {acc}: differs by {worst}");
            // The cells between rows (columns n..n + 2) are left alone.
            for i in 0..m {
                assert_eq!(&par[i * (n + 2) + n..(i + 1) * (n + 2)], &init[i * (n + 2) + n..(i + 1) * (n + 2)], "row {i}'s padding");
            }
        }
    }
}

/// The f32 attention's query parts cover the positions in order, on block boundaries, none empty,
/// [`PARTS`] of them where there are enough blocks, each within a block's work of an equal share.
#[test]
fn attention_parts_split_the_causal_work_evenly() {
    for t in [1usize, 31, 70, 150, 512, 1000, 1024, 4096] {
        let a = Attn { t, nh: 9, nkv: 3, hd: 64, qkv_w: 15 * 64, tiles: false };
        let parts = a.parts();
        let blocks = t.div_ceil(BQ_F32);
        assert_eq!(parts.len(), PARTS.min(blocks), "t {t}: {parts:?}");
        assert_eq!((parts[0].start, parts[parts.len() - 1].end), (0, t), "t {t}: {parts:?}");
        assert!(parts.windows(2).all(|p| p[0].end == p[1].start && p[1].start % BQ_F32 == 0), "t {t}: {parts:?}");
        assert!(parts.iter().all(|r| !r.is_empty()), "t {t}: {parts:?}");
        // Causal work of positions i0..i1 (each position attends to i + 1 keys), against the share.
        let work = |r: &std::ops::Range<usize>| (r.start..r.end).map(|i| i + 1).sum::<usize>() as f64;
        let share = work(&(0..t)) / parts.len() as f64;
        let biggest_block = (BQ_F32 * t) as f64;
        for r in &parts {
            assert!((work(r) - share).abs() <= biggest_block, "t {t}: part {r:?} has {} of {share}", work(r));
        }
    }
}
