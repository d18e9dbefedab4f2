use super::*;
use crate::formats::quant::dequantize;

/// Deterministic xorshift bytes.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// A uniform value in [lo, hi).
    fn float(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn f16(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        half::f16::from_f32(self.float(lo, hi)).to_le_bytes()
    }
}

/// Random but well-formed blocks of `ty` for a `rows × cols` matrix (finite, realistic scales).
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, g: &mut Gen) -> Vec<u8> {
    let n_blocks = rows * cols / ty.block_size();
    let mut out = Vec::with_capacity(n_blocks * ty.block_bytes());
    for _ in 0..n_blocks {
        let mut b: Vec<u8> = (0..ty.block_bytes()).map(|_| g.byte()).collect();
        match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => b[0..2].copy_from_slice(&g.f16(0.001, 0.05)),
            GgmlType::Q4_1 => {
                b[0..2].copy_from_slice(&g.f16(0.001, 0.02));
                b[2..4].copy_from_slice(&g.f16(-0.15, 0.0));
            }
            GgmlType::Q4_K => {
                b[0..2].copy_from_slice(&g.f16(0.0001, 0.001));
                b[2..4].copy_from_slice(&g.f16(0.0001, 0.002));
            }
            GgmlType::Q6_K => b[208..210].copy_from_slice(&g.f16(0.0001, 0.001)),
            GgmlType::F16 => {
                for c in b.chunks_exact_mut(2) {
                    c.copy_from_slice(&g.f16(-0.1, 0.1));
                }
            }
            _ => unreachable!(),
        }
        out.extend(b);
    }
    out
}

const TYPES: [GgmlType; 6] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16];

#[test]
fn repacked_weights_dequantize_bit_for_bit_like_ggml() {
    let mut g = Gen(0x9E3779B97F4A7C15);
    for ty in TYPES {
        let (rows, cols) = (5, 512);
        let bytes = random_blocks(ty, rows, cols, &mut g);
        let m = QMatrix::from_ggml(ty, &bytes, rows, cols).unwrap();
        let mut reference = vec![0f32; rows * cols];
        dequantize(ty, &bytes, rows * cols, &mut reference).unwrap();
        let ours = m.dequantize();
        let same = ours.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{ty:?}: dequantized values differ from ggml's");
        let expected_kind = match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => "q4",
            GgmlType::Q8_0 | GgmlType::Q6_K => "q8",
            _ => "f32",
        };
        let kind = match m.kind() {
            QKind::Q4 { .. } => "q4",
            QKind::Q8 { .. } => "q8",
            QKind::U8 { .. } => "u8",
            QKind::F32 { .. } => "f32",
        };
        assert_eq!(kind, expected_kind, "{ty:?}");
    }
}

/// Reference `W x` in f64 over the dequantized weights, and the bound the 8-bit activations allow:
/// each activation moves by at most half its block's step `max|x| / 127`.
fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, t: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for r in 0..t {
        let xr = &x[r * cols..(r + 1) * cols];
        for o in 0..rows {
            let wr = &w[o * cols..(o + 1) * cols];
            let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let mut bound = 0f64;
            for (wb, xb) in wr.chunks_exact(QK).zip(xr.chunks_exact(QK)) {
                let step = f64::from(xb.iter().fold(0f32, |a, v| a.max(v.abs()))) / 127.0;
                bound += wb.iter().map(|&v| f64::from(v).abs()).sum::<f64>() * step * 0.5;
            }
            out.push((exact, bound * 1.001 + 1e-5));
        }
    }
    out
}

#[test]
fn matmul_matches_the_dequantized_product_on_every_instruction_set() {
    let mut g = Gen(42);
    // 768 columns: every type, an even number of blocks; 800: an odd number (the kernels' tails).
    let odd = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16];
    for (cols, types, t) in [768, 800].into_iter().flat_map(|c| [1usize, 3, 4, 6, 9].map(|t| (c, if c == 768 { &TYPES[..] } else { &odd[..] }, t))) {
        let x: Vec<f32> = (0..t * cols).map(|_| g.float(-2.0, 2.0)).collect();
        let mut acts = QActs::default();
        acts.quantize(&x, t, cols);
        // Every type side by side in one call, as the fused projections run.
        let mats: Vec<QMatrix> = types
            .iter()
            .map(|&ty| {
                let rows = 7 + ty.block_bytes() % 5;
                QMatrix::from_ggml(ty, &random_blocks(ty, rows, cols, &mut g), rows, cols).unwrap()
            })
            .collect();
        let parts: Vec<&QMatrix> = mats.iter().collect();
        let width: usize = mats.iter().map(|m| m.rows()).sum();
        let mut per_isa = Vec::new();
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; t * width];
            matmul_with(isa, &parts, &x, &acts, t, &mut out);
            let mut c0 = 0;
            for m in &mats {
                let refs = reference(&m.dequantize(), &x, m.rows(), cols, t);
                for r in 0..t {
                    for o in 0..m.rows() {
                        let (exact, bound) = refs[r * m.rows() + o];
                        let got = f64::from(out[r * width + c0 + o]);
                        // f32 weights see the unquantized input: only rounding remains.
                        let bound = if matches!(m.kind(), QKind::F32 { .. }) { 1e-4 * (1.0 + exact.abs()) } else { bound };
                        assert!((got - exact).abs() <= bound, "{isa:?} {:?} t={t} row {r} out {o}: {got} vs {exact} (bound {bound})", m.source_type());
                    }
                }
                c0 += m.rows();
            }
            per_isa.push(out);
        }
        // The integer sums are exact on every instruction set: only the f32 accumulation order differs.
        for other in &per_isa[1..] {
            for (a, b) in per_isa[0].iter().zip(other) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "instruction sets disagree: {a} vs {b}");
            }
        }
    }
}

#[test]
fn activation_quantization_rounds_like_ggml() {
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.5) * 0.25).collect();
    let mut a = QActs::default();
    a.quantize(&x, 2, 32);
    let amax = 20.5 * 0.25;
    assert_eq!(a.d[0], amax / 127.0);
    assert_eq!(a.q[0], -127);
    // A zero block quantizes to zeros with a zero scale (no division by zero).
    a.quantize(&[0.0; 32], 1, 32);
    assert!(a.q.iter().all(|&q| q == 0) && a.d[0] == 0.0 && a.sum[0] == 0.0);
}

#[test]
fn row_permutation_moves_whole_rows() {
    let mut g = Gen(7);
    for ty in [GgmlType::Q4_1, GgmlType::Q6_K, GgmlType::F16] {
        let (rows, cols) = (4, 256);
        let m = QMatrix::from_ggml(ty, &random_blocks(ty, rows, cols, &mut g), rows, cols).unwrap();
        let p = m.permute_rows(&[2, 0, 3, 1]);
        let (a, b) = (m.dequantize(), p.dequantize());
        for (i, &src) in [2, 0, 3, 1].iter().enumerate() {
            assert_eq!(b[i * cols..(i + 1) * cols], a[src * cols..(src + 1) * cols], "{ty:?}");
        }
    }
}

#[test]
fn malformed_inputs_are_errors() {
    assert!(matches!(QMatrix::from_ggml(GgmlType::Q4_1, &[0; 20], 1, 48), Err(KernelError::Columns { .. })));
    assert!(matches!(QMatrix::from_ggml(GgmlType::Q4_1, &[0; 19], 1, 32), Err(KernelError::Length(..))));
    assert!(matches!(QMatrix::from_ggml(GgmlType::Q4_K, &[0; 144], 1, 256).map(|m| m.rows()), Ok(1)));
}

#[test]
fn fast_exp_matches_the_standard_library() {
    let xs: Vec<f32> = (0..200_001).map(|i| -90.0 + i as f32 * (180.0 / 200_000.0)).collect();
    let mut got = xs.clone();
    exp_in_place(&mut got);
    let mut worst = 0f64;
    for (&x, &e) in xs.iter().zip(&got) {
        let want = f64::from(x.clamp(-87.0, 88.0)).exp();
        worst = worst.max((f64::from(e) - want).abs() / want);
    }
    assert!(worst < 4e-7, "worst relative error {worst}");
    // Below the clamp: a tiny positive value, never NaN or infinity.
    let mut v = [-1e4f32, f32::NEG_INFINITY, 0.0];
    exp_in_place(&mut v);
    assert!(v[0] > 0.0 && v[0] < 1e-37 && v[1] > 0.0 && v[1] < 1e-37 && v[2] == 1.0, "{v:?}");
}

#[test]
fn transposes_keep_dense_values_and_quantize_the_rest_per_block() {
    let mut g = Gen(5);
    let (rows, cols) = (64, 96);
    let dense: Vec<f32> = (0..rows * cols).map(|_| g.float(-0.5, 0.5)).collect();
    let a = QMatrix::from_f32(dense[..32 * cols].to_vec(), 32, cols);
    let b = QMatrix::from_f32(dense[32 * cols..].to_vec(), 32, cols);
    let t = QMatrix::transposed(&[&a, &b]);
    assert_eq!((t.rows(), t.cols()), (cols, rows));
    let td = t.dequantize();
    for r in 0..rows {
        for c in 0..cols {
            assert_eq!(td[c * rows + r], dense[r * cols + c]);
        }
    }
    // 96 stacked rows: three blocks per transposed row, so a pair and an odd last block.
    let rows = 96;
    let q = QMatrix::from_ggml(GgmlType::Q4_1, &random_blocks(GgmlType::Q4_1, rows, cols, &mut g), rows, cols).unwrap();
    let qt = QMatrix::transposed(&[&q]);
    let unsigned = Isa::detected() == Isa::Avx512Vnni;
    assert!(if unsigned { matches!(qt.kind(), QKind::U8 { .. }) } else { matches!(qt.kind(), QKind::Q8 { group: 32, .. }) });
    let (w, wt) = (q.dequantize(), qt.dequantize());
    for c in 0..cols {
        for blk in 0..rows / 32 {
            let vals: Vec<f32> = (0..32).map(|k| w[(blk * 32 + k) * cols + c]).collect();
            let (lo, hi) = vals.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
            let step = if unsigned { (hi - lo) / 255.0 } else { lo.abs().max(hi.abs()) / 127.0 };
            for (k, v) in vals.iter().enumerate() {
                assert!((wt[c * rows + blk * 32 + k] - v).abs() <= step * 0.5 + 1e-6, "column {c}, block {blk}, value {k}");
            }
        }
    }
    // The product through the transpose (every instruction set) is the dequantized transpose's.
    let x: Vec<f32> = (0..4 * rows).map(|_| g.float(-1.0, 1.0)).collect();
    let mut acts = QActs::default();
    acts.quantize(&x, 4, rows);
    for isa in Isa::available() {
        let mut out = vec![0f32; 4 * cols];
        matmul_with(isa, &[&qt], &x, &acts, 4, &mut out);
        for t in 0..4 {
            for c in 0..cols {
                let want: f64 = (0..rows).map(|r| f64::from(wt[c * rows + r]) * f64::from(x[t * rows + r])).sum();
                let scale: f64 = (0..rows).map(|r| (f64::from(wt[c * rows + r]) * f64::from(x[t * rows + r])).abs()).sum();
                assert!((f64::from(out[t * cols + c]) - want).abs() <= 0.02 * scale + 1e-5, "{isa:?}: {} vs {want}", out[t * cols + c]);
            }
        }
    }
}

/// Every weight layout packed for the tile unit holds, at each tile position, the bf16 rounding of
/// the value `dequantize` gives (bit for bit), and zeros past the panel's rows.
#[test]
fn packed_tiles_hold_the_dequantized_weights_in_bf16() {
    if amx::unit().is_none() {
        eprintln!("no bf16 matrix unit on this CPU (AMX): the packing is not checked here");
        return;
    }
    use amx::{PANEL, TK, TR};
    let mut g = Gen(5);
    let cols = 768;
    let mut mats: Vec<QMatrix> = TYPES.iter().map(|&ty| QMatrix::from_ggml(ty, &random_blocks(ty, 45, cols, &mut g), 45, cols).unwrap()).collect();
    // Unsigned bytes (the backward pass's transposed weights), with an odd last block (96 wide).
    let src = QMatrix::from_ggml(GgmlType::Q4_1, &random_blocks(GgmlType::Q4_1, 96, 64, &mut g), 96, 64).unwrap();
    mats.push(QMatrix::transposed(&[&src]));
    mats.push(QMatrix::from_f32((0..45 * 70).map(|_| g.float(-3.0, 3.0)).collect(), 45, 70));
    for m in &mats {
        let (rows, k) = (m.rows(), m.cols());
        let w = m.dequantize();
        let kp = k.next_multiple_of(TK);
        let mut packed = vec![0u32; kp * TR];
        for r0 in (0..rows).step_by(PANEL) {
            let nr = PANEL.min(rows - r0);
            // SAFETY: `dense_products` implies the AVX-512 F/BW/BF16 the packing uses.
            unsafe { amx::pack_panel(m, r0, nr, &mut packed) };
            for s in 0..kp / TK {
                for j in 0..2 {
                    for p in 0..TR {
                        for c in 0..TR {
                            let n = j * TR + c;
                            let at = |h: usize| {
                                let i = s * TK + 2 * p + h;
                                if n < nr && i < k {
                                    amx::bf16(w[(r0 + n) * k + i])
                                } else {
                                    0
                                }
                            };
                            let word = packed[(2 * s + j) * TR * TR + p * TR + c];
                            assert_eq!(
                                word,
                                u32::from(at(0)) | (u32::from(at(1)) << 16),
                                "{:?} {:?}: rows {r0}+{n}, values {}",
                                m.source_type(),
                                std::mem::discriminant(m.kind()),
                                s * TK + 2 * p
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Products of f32 matrices on the tile unit, each operand packed every way (rows, transposed rows;
/// B from rows of columns or of values), with offsets into A, partial tiles, accumulation and a
/// scale, against f64 sums (each operand rounded to bf16: relative 2^-9 each).
#[test]
fn tile_products_of_f32_matrices_match_the_exact_sums() {
    if !tile_products() {
        eprintln!("no bf16 matrix unit on this CPU (AMX): tile products not checked here");
        return;
    }
    let mut g = Gen(13);
    // Reused from one shape to the next: what a larger packing left must not leak into a smaller.
    let (mut pa, mut pb) = ([TilesA::default(), TilesA::default()], [TilesB::default(), TilesB::default()]);
    for (m, n, k, row0, k0) in [(64usize, 64usize, 64usize, 0usize, 0usize), (100, 200, 45, 64, 0), (37, 50, 70, 32, 64), (5, 3, 1, 0, 32)] {
        // A: (row0 + m) × (k0 + k), stride 3 more than its width; B: k × n.
        let (ar, ac) = (row0 + m, k0 + k);
        let (a_rs, b_rs) = (ac + 3, n + 2);
        let a: Vec<f32> = (0..ar * a_rs).map(|_| g.float(-2.0, 2.0)).collect();
        let b: Vec<f32> = (0..k * b_rs).map(|_| g.float(-2.0, 2.0)).collect();
        let at: Vec<f32> = (0..ac * (ar + 1)).map(|i| a[(i % (ar + 1)).min(ar - 1) * a_rs + i / (ar + 1)]).collect();
        let bt: Vec<f32> = (0..n * (k + 5)).map(|i| if i % (k + 5) < k { b[(i % (k + 5)) * b_rs + i / (k + 5)] } else { 9.0 }).collect();
        pa[0].pack(&a, ar, ac, a_rs);
        // `at` holds Aᵀ (ac rows of ar + 1 values: one extra column).
        pa[1].pack_transposed(&at, ar, ac, ar + 1, &mut Vec::new());
        pb[0].pack(&b, k, n, b_rs);
        pb[1].pack_rows(&bt, n, k, k + 5);
        for (ai, pa) in pa.iter().enumerate() {
            for (bi, pb) in pb.iter().enumerate() {
                for (acc, alpha) in [(false, 1.0f32), (true, 0.125)] {
                    let dst_rs = n + 1;
                    let init: Vec<f32> = (0..m * dst_rs).map(|_| g.float(-1.0, 1.0)).collect();
                    let mut dst = init.clone();
                    tile_product(pa, row0, m, k0, pb, n, k, &mut dst, dst_rs, acc, alpha);
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k).map(|p| f64::from(a[(row0 + i) * a_rs + k0 + p]) * f64::from(b[p * b_rs + j]));
                            let (exact, mag) = terms.fold((0f64, 0f64), |(s, m), v| (s + v, m + v.abs()));
                            let base = if acc { f64::from(init[i * dst_rs + j]) } else { 0.0 };
                            let want = base + f64::from(alpha) * exact;
                            // Each operand rounds to bf16 within half a unit (2^-8 relative), so each
                            // term within 2^-7.
                            let bound = f64::from(alpha) * mag * (2.0f64.powi(-7) + 1e-6) + 1e-5;
                            let got = f64::from(dst[i * dst_rs + j]);
                            assert!((got - want).abs() <= bound, "A {ai} B {bi} {m}x{n}x{k} at ({row0},{k0}) acc {acc}: [{i}][{j}] {got} vs {want}");
                        }
                        // Past `n` in each row, nothing is written.
                        assert_eq!(dst[i * dst_rs + n], init[i * dst_rs + n]);
                    }
                }
            }
        }
        // Split in rounded and residual parts, three products come within 2^-14 of each term
        // (the dropped low-by-low product and the residuals' own rounding, each within 2^-16).
        let (mut a_lo, mut b_lo) = (TilesA::default(), [TilesB::default(), TilesB::default()]);
        a_lo.pack_residual(&a, ar, ac, a_rs);
        b_lo[0].pack_residual(&b, k, n, b_rs);
        b_lo[1].pack_rows_residual(&bt, n, k, k + 5);
        for (bi, b_lo) in b_lo.iter().enumerate() {
            let mut dst = vec![0f32; m * n];
            tile_product(&pa[0], row0, m, k0, &pb[bi], n, k, &mut dst, n, false, 1.0);
            tile_product(&a_lo, row0, m, k0, &pb[bi], n, k, &mut dst, n, true, 1.0);
            tile_product(&pa[0], row0, m, k0, b_lo, n, k, &mut dst, n, true, 1.0);
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| f64::from(a[(row0 + i) * a_rs + k0 + p]) * f64::from(b[p * b_rs + j]));
                    let (exact, mag) = terms.fold((0f64, 0f64), |(s, m), v| (s + v, m + v.abs()));
                    let got = f64::from(dst[i * n + j]);
                    assert!((got - exact).abs() <= mag * 2.0f64.powi(-14) + 1e-5, "split B {bi} {m}x{n}x{k}: [{i}][{j}] {got} vs {exact}");
                }
            }
        }
    }
}

#[test]
fn dense_products_match_the_dequantized_product() {
    if !Isa::Avx2.is_supported() {
        eprintln!("no AVX2 on this CPU: the dense products are not run here");
        return;
    }
    let mut g = Gen(7);
    // 150 rows: a partial tile of activation rows (and of the f32 unit's 6-row blocks); weight parts
    // of 7-11 rows: partial tile columns; 800 columns: an odd number of blocks.
    for (cols, t) in [(768usize, 128usize), (800, 150), (768, 300)] {
        let x: Vec<f32> = (0..t * cols).map(|_| g.float(-2.0, 2.0)).collect();
        let types: &[GgmlType] = if cols == 768 { &TYPES } else { &[GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16] };
        let mut mats: Vec<QMatrix> = types
            .iter()
            .map(|&ty| {
                let rows = 7 + ty.block_bytes() % 5;
                QMatrix::from_ggml(ty, &random_blocks(ty, rows, cols, &mut g), rows, cols).unwrap()
            })
            .collect();
        // The backward pass's transposed weights (unsigned bytes on AVX-512 VNNI CPUs, signed
        // elsewhere), 96 wide; and 40 rows, past two f32 panels.
        let src = QMatrix::from_ggml(GgmlType::Q4_1, &random_blocks(GgmlType::Q4_1, cols, 96, &mut g), cols, 96).unwrap();
        mats.push(QMatrix::transposed(&[&src]));
        mats.push(QMatrix::from_ggml(GgmlType::Q4_1, &random_blocks(GgmlType::Q4_1, 40, cols, &mut g), 40, cols).unwrap());
        let parts: Vec<&QMatrix> = mats.iter().collect();
        let width: usize = mats.iter().map(|m| m.rows()).sum();
        // Through `matmul` where this CPU has a dense unit, then every unit it can run: the f32
        // unit (any AVX2 CPU) and the bf16 units (tiles, vectors).
        let mut outs = Vec::new();
        if dense_products() {
            let mut acts = QActs::default();
            acts.prepare(&x, t, cols);
            assert!(acts.dense, "prepare hands {t} rows to the dense unit");
            let mut out = vec![f32::NAN; t * width];
            matmul(&parts, &x, &acts, t, &mut out);
            outs.push(("matmul".to_string(), out, !fma::available()));
        }
        let mut out = vec![f32::NAN; t * width];
        fma::matmul(&parts, &x, t, &mut out);
        outs.push(("f32".to_string(), out, false));
        for unit in amx::units() {
            let mut out = vec![f32::NAN; t * width];
            amx::matmul_on(unit, &parts, &x, t, &mut out);
            outs.push((format!("{unit:?}"), out, true));
        }
        for (unit, out, bf16) in &outs {
            let mut c0 = 0;
            for m in &mats {
                let w = m.dequantize();
                for r in 0..t {
                    let xr = &x[r * cols..(r + 1) * cols];
                    for o in 0..m.rows() {
                        let wr = &w[o * cols..(o + 1) * cols];
                        let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                        // bf16: each operand rounded to bf16 (relative 2^-9), then f32 sums; f32:
                        // the sums' rounding only.
                        let mag: f64 = wr.iter().zip(xr).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
                        let bound = if *bf16 { mag * (2.0f64.powi(-8) + 1e-6) + 1e-5 } else { mag * 1e-5 + 1e-6 };
                        let got = f64::from(out[r * width + c0 + o]);
                        assert!((got - exact).abs() <= bound, "{unit}: {:?} t={t} row {r} out {o}: {got} vs {exact} (bound {bound})", m.source_type());
                    }
                }
                c0 += m.rows();
            }
        }
    }
}

/// The backward product from the weights as stored, `dY · W` over stacked parts, is the exact product
/// of the dequantized weights up to f32 sums: every weight layout, a stack of parts whose rows cross
/// the reduction's slices, row counts that leave partial register blocks.
#[test]
fn transposed_products_match_the_dequantized_product() {
    if !Isa::Avx2.is_supported() {
        eprintln!("no AVX2 on this CPU: the f32 unit is not run here");
        return;
    }
    let mut g = Gen(11);
    for (cols, t) in [(768usize, 7usize), (96, 150), (768, 131)] {
        // Parts of 45 to 300 rows, 600 in all: two whole reduction slices and part of a third.
        let sizes = [300usize, 45, 255];
        let mats: Vec<QMatrix> = sizes
            .iter()
            .zip(TYPES.iter().filter(|ty| cols.is_multiple_of(ty.block_size())).cycle().skip(t % 4))
            .map(|(&rows, &ty)| QMatrix::from_ggml(ty, &random_blocks(ty, rows, cols, &mut g), rows, cols).unwrap())
            .collect();
        let parts: Vec<&QMatrix> = mats.iter().collect();
        let n: usize = sizes.iter().sum();
        let dy: Vec<f32> = (0..t * n).map(|_| g.float(-1.0, 1.0)).collect();
        let mut out = vec![f32::NAN; t * cols];
        fma::matmul_t(&parts, &dy, t, &mut out);
        let w: Vec<f32> = mats.iter().flat_map(QMatrix::dequantize).collect();
        for r in 0..t {
            for c in 0..cols {
                let terms = (0..n).map(|i| f64::from(dy[r * n + i]) * f64::from(w[i * cols + c]));
                let exact: f64 = terms.clone().sum();
                let mag: f64 = terms.map(f64::abs).sum();
                let got = f64::from(out[r * cols + c]);
                assert!(
                    (got - exact).abs() <= mag * 1e-5 + 1e-6,
                    "{:?} cols {cols} t={t} row {r} col {c}: {got} vs {exact}",
                    mats.iter().map(QMatrix::source_type).collect::<Vec<_>>()
                );
            }
        }
    }
}

#[test]
fn vectorised_exp_is_bit_for_bit_the_portable_one() {
    let mut g = Gen(11);
    for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 100, 1000] {
        let x: Vec<f32> = (0..len).map(|i| if i % 7 == 0 { g.float(-200.0, 200.0) } else { g.float(-30.0, 5.0) }).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        exp_in_place(&mut a);
        exp_portable(&mut b);
        for ((a, b), x) in a.iter().zip(&b).zip(&x) {
            assert_eq!(a.to_bits(), b.to_bits(), "exp({x}) with {:?}: {a} vs {b}", Isa::detected());
        }
    }
}

#[test]
fn softmax_is_the_portable_one_and_close_to_the_exact_one() {
    let mut g = Gen(21);
    for n in [1usize, 5, 8, 9, 15, 16, 17, 24, 31, 33, 100, 1024] {
        let v: Vec<f32> = (0..n).map(|_| g.float(-20.0, 20.0)).collect();
        let mut fast = v.clone();
        softmax_in_place(&mut fast);
        let mut portable = v.clone();
        softmax_portable(&mut portable);
        assert_eq!(fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), portable.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "n {n}");
        let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        let sum: f64 = v.iter().map(|&x| (f64::from(x) - max).exp()).sum();
        for (i, (&x, &got)) in v.iter().zip(&fast).enumerate() {
            let want = (f64::from(x) - max).exp() / sum;
            assert!((f64::from(got) - want).abs() <= 2e-6 * want + 1e-12, "n {n} [{i}]: {got} vs {want}");
        }
    }
    softmax_in_place(&mut []);
}

/// The AVX-512 activation quantization against the scalar one, bit for bit: random rows, halves that
/// must round away from zero, zero blocks, and a block whose maximum is negative.
#[cfg(target_arch = "x86_64")]
#[test]
fn vectorised_quantization_is_bit_for_bit_the_scalar_one() {
    if Isa::detected() != Isa::Avx512Vnni {
        eprintln!("no AVX-512 here: the vectorised quantization is not run");
        return;
    }
    let mut g = Gen(31);
    let mut x: Vec<f32> = (0..32 * 64).map(|_| g.float(-3.0, 3.0)).collect();
    // Block 1: all zero. Block 2: ±(k + 0.5) · d with d = 1 (max 127 exactly), so halves occur.
    x[32..64].fill(0.0);
    for (i, v) in x[64..96].iter_mut().enumerate() {
        *v = if i == 0 { -127.0 } else { (i as f32 - 16.0) + 0.5 };
    }
    // Block 3: the largest magnitude negative; block 4: tiny values.
    x[96] = -50.0;
    x[128..160].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 15.5) * 1e-30);
    let (mut q0, mut d0, mut s0) = (vec![0i8; x.len()], vec![0f32; x.len() / 32], vec![0f32; x.len() / 32]);
    let (mut q1, mut d1, mut s1) = (q0.clone(), d0.clone(), s0.clone());
    quantize_row(&x, &mut q0, &mut d0, &mut s0);
    // SAFETY: AVX-512 F and BW were detected.
    unsafe { x86::quantize_row_avx512(&x, &mut q1, &mut d1, &mut s1) };
    assert_eq!(q0, q1);
    assert_eq!(d0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), d1.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    assert_eq!(s0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    // The halves of block 2 rounded away from zero: 0.5 → 1, −0.5 → −1, 1.5 → 2.
    assert_eq!((q1[64 + 16], q1[64 + 15], q1[64 + 17]), (1, -1, 2));
}

/// The 4-bit weights and their unsigned values, scales and offsets per block (`w = d·u + m`).
fn q4_blocks(w: &QMatrix) -> (Vec<[u8; QK]>, Vec<f32>, Vec<f32>) {
    let QKind::Q4 { qs, d, m, centered } = w.kind() else { panic!("a 4-bit matrix") };
    let n = qs.len() / 16;
    let mut u = vec![[0u8; QK]; n];
    for (b, bytes) in qs.chunks_exact(16).enumerate() {
        for (j, &byte) in bytes.iter().enumerate() {
            u[b][j] = byte & 0xF;
            u[b][j + 16] = byte >> 4;
        }
    }
    let ds: Vec<f32> = (0..n).map(|b| d.get(b)).collect();
    let ms: Vec<f32> = (0..n).map(|b| if *centered { -8.0 * ds[b] } else { m.get(b) }).collect();
    (u, ds, ms)
}

/// 4-bit parts for the int16 products: both layouts, row counts that leave partial panels, and one
/// matrix of all-15 values whose block sums reach the int16 limit (16 products of 15 · 127).
fn q4_parts(cols: usize, sizes: &[usize], g: &mut Gen) -> Vec<QMatrix> {
    let mut mats: Vec<QMatrix> = sizes
        .iter()
        .enumerate()
        .map(|(i, &rows)| {
            let ty = if i % 2 == 0 { GgmlType::Q4_1 } else { GgmlType::Q4_0 };
            QMatrix::from_ggml(ty, &random_blocks(ty, rows, cols, g), rows, cols).unwrap()
        })
        .collect();
    let mut full = random_blocks(GgmlType::Q4_1, 3, cols, g);
    for b in full.chunks_exact_mut(GgmlType::Q4_1.block_bytes()) {
        b[4..].fill(0xFF);
    }
    mats.push(QMatrix::from_ggml(GgmlType::Q4_1, &full, 3, cols).unwrap());
    mats
}

/// The int16 forward product is the product of the dequantized weights with the activations
/// quantized per block of 32, to nearest even (checked against that sum computed here in f64, to f32 rounding), and
/// within the activations' rounding of the exact product.
#[test]
fn int16_products_are_the_quantized_product() {
    if !Isa::Avx2.is_supported() {
        eprintln!("no AVX2 on this CPU: the int16 products are not run here");
        return;
    }
    let mut g = Gen(13);
    for (cols, t) in [(800usize, 150usize), (96, 7), (768, 1)] {
        let mut x: Vec<f32> = (0..t * cols).map(|_| g.float(-2.0, 2.0)).collect();
        // A row of one value: every activation quantizes to 127.
        x[..cols].fill(1.5);
        let mats = q4_parts(cols, &[9, 40, 16], &mut g);
        let parts: Vec<&QMatrix> = mats.iter().collect();
        assert!(int16::applies(&parts) || switched_off("AGENTLM_INT16"));
        let width: usize = mats.iter().map(QMatrix::rows).sum();
        let mut out = vec![f32::NAN; t * width];
        int16::matmul(&parts, &x, t, &mut out);
        // The activations quantized per block of 32: scale max|x| / 127, to nearest even.
        let nb = cols / QK;
        let (mut aq, mut ad, mut asum) = (vec![0i32; t * cols], vec![0f32; t * nb], vec![0f32; t * nb]);
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let scale = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (v, &xv) in xb.iter().enumerate() {
                aq[b * QK + v] = (xv * inv).round_ties_even() as i32;
            }
            ad[b] = scale;
            asum[b] = scale * aq[b * QK..(b + 1) * QK].iter().sum::<i32>() as f32;
        }
        let mut c0 = 0;
        for m in &mats {
            let (u, d, mo) = q4_blocks(m);
            let w = m.dequantize();
            for r in 0..t {
                for o in 0..m.rows() {
                    let (mut want, mut mag, mut exact, mut rounding) = (0f64, 0f64, 0f64, 0f64);
                    for b in 0..nb {
                        let (blk, s) = (o * nb + b, f64::from(ad[r * nb + b]));
                        let dot: i64 = (0..QK).map(|v| i64::from(u[blk][v]) * i64::from(aq[r * cols + b * QK + v])).sum();
                        let (scaled, offset) = (f64::from(d[blk]) * s * dot as f64, f64::from(mo[blk]) * f64::from(asum[r * nb + b]));
                        want += scaled + offset;
                        mag += scaled.abs() + offset.abs();
                        for v in 0..QK {
                            let wv = f64::from(w[o * cols + b * QK + v]);
                            exact += wv * f64::from(x[r * cols + b * QK + v]);
                            rounding += wv.abs() * s / 2.0;
                        }
                    }
                    let got = f64::from(out[r * width + c0 + o]);
                    assert!((got - want).abs() <= mag * 1e-5 + 1e-6, "cols {cols} t={t} row {r} out {}: {got} vs {want}", c0 + o);
                    assert!((got - exact).abs() <= rounding * (1.0 + 1e-4) + mag * 1e-5 + 1e-6, "row {r} out {}: {got} vs exact {exact}", c0 + o);
                }
            }
            c0 += m.rows();
        }
    }
}

/// The int16 backward product `dY · W` over stacked 4-bit parts: per block of output columns, the
/// gradients scaled by the weights' row scales and quantized per 32 rows (to nearest even), times the unsigned
/// values, plus the offsets' term in f32 (checked against that sum in f64, to f32 rounding, and
/// within the quantization's rounding of the exact product). Stacks whose rows end in a partial
/// group of 32, row counts across the quantization chunks and partial register blocks.
#[test]
fn int16_transposed_products_are_the_quantized_product() {
    if !Isa::Avx2.is_supported() {
        eprintln!("no AVX2 on this CPU: the int16 products are not run here");
        return;
    }
    let mut g = Gen(17);
    // The last case reduces over more rows than one slab takes (three slabs, cut inside parts) and
    // over a part larger than a slab.
    for (cols, t, rows) in
        [(768usize, 7usize, &[300usize, 45, 252][..]), (96, 150, &[300, 45, 252]), (160, 131, &[300, 45, 252]), (64, 9, &[1000, 700, 40, 1600])]
    {
        let mats = q4_parts(cols, rows, &mut g);
        let parts: Vec<&QMatrix> = mats.iter().collect();
        let n: usize = mats.iter().map(QMatrix::rows).sum();
        let mut dy: Vec<f32> = (0..t * n).map(|_| g.float(-1.0, 1.0)).collect();
        dy[..n].fill(0.5);
        let mut out = vec![f32::NAN; t * cols];
        int16::matmul_t(&parts, &dy, t, &mut out);
        // Stacked rows' blocks: values, scales, offsets, dequantized weights.
        let (mut u, mut d, mut mo, mut w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for m in &mats {
            let (mu, md, mm) = q4_blocks(m);
            u.extend(mu);
            d.extend(md);
            mo.extend(mm);
            w.extend(m.dequantize());
        }
        let nb = cols / QK;
        for r in 0..t {
            let row = &dy[r * n..(r + 1) * n];
            for b in 0..nb {
                let mut want = [0f64; QK];
                let mut mag = [0f64; QK];
                let mut rounding = [0f64; QK];
                for g0 in (0..n).step_by(QK) {
                    let os = g0..(g0 + QK).min(n);
                    let z: Vec<f32> = os.clone().map(|o| row[o] * d[o * nb + b]).collect();
                    let scale = z.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                    for v in 0..QK {
                        let dot: i64 = os.clone().zip(&z).map(|(o, &zv)| i64::from(u[o * nb + b][v]) * i64::from((zv * inv).round_ties_even() as i8)).sum();
                        want[v] += f64::from(scale) * dot as f64;
                        mag[v] += (f64::from(scale) * dot as f64).abs();
                        rounding[v] += os.clone().map(|o| f64::from(u[o * nb + b][v])).sum::<f64>() * f64::from(scale) / 2.0;
                    }
                }
                for v in 0..QK {
                    let offsets: f64 = (0..n).map(|o| f64::from(row[o]) * f64::from(mo[o * nb + b])).sum();
                    let bound = (mag[v] + (0..n).map(|o| (f64::from(row[o]) * f64::from(mo[o * nb + b])).abs()).sum::<f64>()) * 1e-5 + 1e-6;
                    let c = b * QK + v;
                    let got = f64::from(out[r * cols + c]);
                    assert!((got - (want[v] + offsets)).abs() <= bound, "cols {cols} t={t} row {r} col {c}: {got} vs {}", want[v] + offsets);
                    let exact: f64 = (0..n).map(|o| f64::from(row[o]) * f64::from(w[o * cols + c])).sum();
                    assert!((got - exact).abs() <= rounding[v] * (1.0 + 1e-4) + bound, "row {r} col {c}: {got} vs exact {exact}");
                }
            }
        }
    }
}
