//! Products of 4-bit weights ([`QKind::Q4`]: GGUF `Q4_0` and `Q4_1`) with 8-bit activations on AVX2,
//! the block sums kept in int16: the training passes' products on CPUs whose best instruction set is
//! AVX2 (AMD Zen 3 and earlier; see [`super::dense_products`]), about twice the f32 unit's speed.
//!
//! `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs into int16. The weights' unsigned
//! 4-bit values (0..=15) times activations of at most 127 in magnitude give pairs of at most 3810, so
//! the eight quads of a block of 32 add up in int16 without saturating (16 products, at most 30480):
//! per 4 × 16 products a block costs one `vpmaddubsw` and one `vpaddw` per register, and one
//! `vpmaddwd`, a convert and two FMAs per block. (The int8 kernels widen every quad to int32
//! instead: without `vpdpbusd` that is twice the work.)
//!
//! - Forward, `out = x · Wᵀ`: the activations are quantized per block of 32 like ggml's `Q8_0`
//!   (scale `max|x| / 127`, but rounded to nearest even), each block is `d_w · s_x · Σ u·q + m_w · s_x · Σ q` with `m_w` the
//!   block's offset (`-8·d_w` for `Q4_0`): the product of the dequantized weights with the quantized
//!   activations, up to f32 sums.
//! - Backward, `dX = dY · W` from the weights as stored: the reduction runs over the weights' rows,
//!   whose block scales differ from row to row, so each block of output columns scales `dY` by its
//!   rows' `d_w` first (`z = dY · d_w`) and quantizes that per 32 rows; the offsets add
//!   `Σ_o dY · m_w` in f32. Again the dequantized weights times quantized (scaled) gradients.
//!
//! `AGENTLM_INT16=0` keeps the f32 unit ([`super::fma`]) for these products.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::fma::{group_size, row_tasks, run_tasks};
use super::{Isa, QKind, QMatrix, Scales, SharedOut, QK};

/// Output columns per register block: two 8-lane registers.
const NR: usize = 16;
/// Activation rows per register block (12 int16 accumulators, two weight registers, one broadcast).
const MR: usize = 6;
/// Bytes of one block of a packed panel: 32 values of [`NR`] columns, in quads of 4 values per
/// column (`[quad][column][value]`, 64 bytes per quad).
const PB: usize = QK * NR;
/// Panels of [`NR`] output columns per forward task.
const GROUP: usize = 4;
/// Activation rows quantized together in the backward pass (a multiple of [`MR`]).
const CHUNK: usize = 48;

/// Whether [`matmul`] and [`matmul_t`] take these parts: every part 4-bit ([`QKind::Q4`]), and
/// `AGENTLM_INT16` does not say `0`.
pub(super) fn applies(parts: &[&QMatrix]) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !super::switched_off("AGENTLM_INT16")) && !parts.is_empty() && parts.iter().all(|p| matches!(p.kind(), QKind::Q4 { .. }))
}

/// The 4-bit layout of a part.
struct Q4<'a> {
    qs: &'a [u8],
    d: &'a Scales,
    m: &'a Scales,
    centered: bool,
    /// Blocks per row.
    nb: usize,
    rows: usize,
}

impl<'a> Q4<'a> {
    fn of(w: &'a QMatrix) -> Q4<'a> {
        match w.kind() {
            QKind::Q4 { qs, d, m, centered } => Q4 { qs, d, m, centered: *centered, nb: w.cols() / QK, rows: w.rows() },
            _ => unreachable!("int16 products take 4-bit parts only (see `applies`)"),
        }
    }
    /// Block `b` of row `r`: its 32 unsigned values, scale and offset (`w = d·u + m`).
    fn block(&self, r: usize, b: usize, u: &mut [u8; QK]) -> (f32, f32) {
        let blk = r * self.nb + b;
        for (j, &byte) in self.qs[blk * 16..blk * 16 + 16].iter().enumerate() {
            u[j] = byte & 0xF;
            u[j + 16] = byte >> 4;
        }
        let d = self.d.get(blk);
        (d, if self.centered { -8.0 * d } else { self.m.get(blk) })
    }
}

/// Where value `v` (of 32) of column `c` (of [`NR`]) sits in a packed block.
#[inline(always)]
fn lane(v: usize, c: usize) -> usize {
    (v / 4) * 64 + (c / 8) * 32 + (c % 8) * 4 + v % 4
}

thread_local! {
    /// Per thread: packed weight panels, their column scales and offsets.
    static PACK: RefCell<(Vec<u8>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// Per thread: quantized rows (values, scales, sums), and the backward pass's offset terms.
    static ROWS: RefCell<(Vec<i8>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// Per thread: the backward pass's weight values of one block, row by row.
    static UNITS: RefCell<Vec<[u8; QK]>> = const { RefCell::new(Vec::new()) };
    /// Per thread: a partial register block's output.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t][o] = Σ_i w[o][i] · x[t][i]` for the 4-bit parts side by side (`out` is `[rows, Σ
/// parts.rows]`), the activations quantized per block of 32. Split over groups of weight rows
/// across the current rayon pool.
///
/// # Panics
/// The CPU lacks AVX2 or FMA; parts that are not all 4-bit; shapes that do not match.
pub(super) fn matmul(parts: &[&QMatrix], x: &[f32], rows: usize, out: &mut [f32]) {
    assert!(Isa::Avx2.is_supported(), "int16 products need AVX2 and FMA");
    let width: usize = parts.iter().map(|p| p.rows()).sum();
    let k = parts.first().map_or(0, |p| p.cols());
    assert!(parts.iter().all(|p| p.cols() == k) && x.len() == rows * k && out.len() == rows * width, "int16 product shapes");
    if rows == 0 || width == 0 {
        return;
    }
    let q4: Vec<Q4> = parts.iter().map(|p| Q4::of(p)).collect();
    let nb = k / QK;
    let (group, tasks) = row_tasks(parts, NR, GROUP);
    let dst = SharedOut(out.as_mut_ptr());
    // Taken out of the thread's buffers for the product: while the tasks run, this thread may take
    // up other work that uses them.
    let (mut q, mut s, mut sum) = ROWS.take();
    quantize_rows(x, rows, k, &mut q, &mut s, &mut sum);
    {
        let (q, s, sum) = (&q, &s, &sum);
        run_tasks(&tasks, |&(pi, r0, col)| {
            let w = &q4[pi];
            let n = (group * NR).min(parts[pi].rows() - r0);
            let n_panels = n.div_ceil(NR);
            PACK.with_borrow_mut(|(packed, cd, cm)| {
                packed.resize(n_panels * nb * PB, 0);
                cd.resize(n_panels * nb * NR, 0.0);
                cm.resize(n_panels * nb * NR, 0.0);
                let mut u = [0u8; QK];
                for j in 0..n_panels * NR {
                    let (g, c) = (j / NR, j % NR);
                    for b in 0..nb {
                        let blk = &mut packed[(g * nb + b) * PB..(g * nb + b + 1) * PB];
                        let (d, m) = if j < n {
                            w.block(r0 + j, b, &mut u)
                        } else {
                            u = [0; QK];
                            (0.0, 0.0)
                        };
                        // Column c's quad of values v..v + 4 is four consecutive bytes.
                        for v in (0..QK).step_by(4) {
                            blk[lane(v, c)..lane(v, c) + 4].copy_from_slice(&u[v..v + 4]);
                        }
                        cd[(g * nb + b) * NR + c] = d;
                        cm[(g * nb + b) * NR + c] = m;
                    }
                }
                for m0 in (0..rows).step_by(MR) {
                    let m = MR.min(rows - m0);
                    for g in 0..n_panels {
                        let cols = NR.min(n - g * NR);
                        let a = Rows { q: &q[m0 * k..], lda: k, s: &s[m0 * nb..], sum: Some(&sum[m0 * nb..]), lds: nb };
                        let b = Panel { w: &packed[g * nb * PB..(g + 1) * nb * PB], cd: Some((&cd[g * nb * NR..], &cm[g * nb * NR..])) };
                        // SAFETY: the output cells are rows m0..m0 + m, columns col + g·NR .. + cols
                        // (stride `width`), inside `out` and written by this task only.
                        unsafe { block(m, &a, &b, nb, dst.get().add(m0 * width + col + g * NR), width, cols) };
                    }
                }
            });
        });
    }
    ROWS.set((q, s, sum));
}

/// `out[t][c] = Σ_n dy[t][n] · w[n][c]` with `w` the 4-bit parts stacked by rows (`dy` is `[rows,
/// Σ parts.rows]`, `out` `[rows, cols]`): the backward pass's `dX = dY · W` from the weights as they
/// are stored. Split over groups of output blocks across the current rayon pool.
///
/// # Panics
/// The CPU lacks AVX2 or FMA; parts that are not all 4-bit or of different widths; shapes that do
/// not match.
pub(super) fn matmul_t(parts: &[&QMatrix], dy: &[f32], rows: usize, out: &mut [f32]) {
    assert!(Isa::Avx2.is_supported(), "int16 products need AVX2 and FMA");
    let n_total: usize = parts.iter().map(|p| p.rows()).sum();
    let k = parts.first().map_or(0, |p| p.cols());
    assert!(parts.iter().all(|p| p.cols() == k), "transposed product: parts of one width");
    assert!(dy.len() == rows * n_total && out.len() == rows * k, "transposed product shapes");
    if rows == 0 || k == 0 {
        return;
    }
    let q4: Vec<Q4> = parts.iter().map(|p| Q4::of(p)).collect();
    // The reduction (stacked rows) in groups of 32, the last one padded with zeros.
    let groups = n_total.div_ceil(QK);
    let blocks = k / QK;
    let group = group_size(blocks, rayon::current_num_threads().max(1), GROUP / 2);
    let tasks: Vec<usize> = (0..blocks).step_by(group).collect();
    let dst = SharedOut(out.as_mut_ptr());
    run_tasks(&tasks, |&b0| {
        UNITS.with_borrow_mut(|units| {
            PACK.with_borrow_mut(|(packed, dcol, mcol)| {
                ROWS.with_borrow_mut(|(zq, zs, mterm)| {
                    for b in b0..(b0 + group).min(blocks) {
                        // Two panels (the block's columns 0-15 and 16-31) over every stacked row, and
                        // the rows' scales and offsets for this block.
                        packed.clear();
                        packed.resize(2 * groups * PB, 0);
                        dcol.clear();
                        dcol.resize(groups * QK, 0.0);
                        mcol.clear();
                        mcol.resize(groups * QK, 0.0);
                        // The block's values row by row (zero past the last row), then packed four
                        // rows at a time: column c's quad is those rows' values c.
                        units.clear();
                        units.resize(groups * QK, [0; QK]);
                        let mut o = 0;
                        for w in &q4 {
                            for r in 0..w.rows {
                                (dcol[o], mcol[o]) = w.block(r, b, &mut units[o]);
                                o += 1;
                            }
                        }
                        for (quad, rows4) in units.chunks_exact(4).enumerate() {
                            let (g, v) = (quad * 4 / QK, quad * 4 % QK);
                            let [r0, r1, r2, r3] = rows4 else { unreachable!("chunks of four") };
                            for (c, (((&a, &b1), &c2), &d)) in r0.iter().zip(r1).zip(r2).zip(r3).enumerate() {
                                let at = ((c / NR) * groups + g) * PB + lane(v, c % NR);
                                packed[at..at + 4].copy_from_slice(&[a, b1, c2, d]);
                            }
                        }
                        for t0 in (0..rows).step_by(CHUNK) {
                            let m_rows = CHUNK.min(rows - t0);
                            zq.resize(m_rows * groups * QK, 0);
                            zs.resize(m_rows * groups, 0.0);
                            mterm.resize(m_rows, 0.0);
                            for t in 0..m_rows {
                                let row = &dy[(t0 + t) * n_total..(t0 + t + 1) * n_total];
                                // SAFETY: AVX2 and FMA asserted above.
                                mterm[t] = unsafe {
                                    scale_rows(row, dcol, mcol, &mut zq[t * groups * QK..(t + 1) * groups * QK], &mut zs[t * groups..(t + 1) * groups])
                                };
                            }
                            for m0 in (0..m_rows).step_by(MR) {
                                let m = MR.min(m_rows - m0);
                                let a = Rows { q: &zq[m0 * groups * QK..], lda: groups * QK, s: &zs[m0 * groups..], sum: None, lds: groups };
                                for p in 0..2 {
                                    let panel = Panel { w: &packed[p * groups * PB..(p + 1) * groups * PB], cd: None };
                                    // SAFETY: the output cells are rows t0 + m0 .. + m, columns 32·b +
                                    // 16·p .. + 16 (stride `k`), inside `out` and written by this task only.
                                    unsafe { block(m, &a, &panel, groups, dst.get().add((t0 + m0) * k + b * QK + p * NR), k, NR) };
                                }
                            }
                            for (t, &add) in mterm[..m_rows].iter().enumerate() {
                                // SAFETY: row t0 + t, columns 32·b .. + 32: this task's cells of `out`.
                                let cells = unsafe { std::slice::from_raw_parts_mut(dst.get().add((t0 + t) * k + b * QK), QK) };
                                cells.iter_mut().for_each(|c| *c += add);
                            }
                        }
                    }
                });
            });
        });
    });
}

/// Quantizes `rows` rows of `k` values per block of 32 ([`quantize_row`]), rows in parallel when
/// there are many.
fn quantize_rows(x: &[f32], rows: usize, k: usize, q: &mut Vec<i8>, s: &mut Vec<f32>, sum: &mut Vec<f32>) {
    let nb = k / QK;
    q.resize(rows * k, 0);
    s.resize(rows * nb, 0.0);
    sum.resize(rows * nb, 0.0);
    type Row<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], &'a mut [f32]));
    // SAFETY: AVX2 and FMA were asserted by the caller.
    let per_row = |((xr, qr), (sr, sumr)): Row| unsafe { quantize_row(xr, qr, sr, sumr) };
    let (q, s, sum) = (&mut q[..rows * k], &mut s[..rows * nb], &mut sum[..rows * nb]);
    if rows >= 16 && rayon::current_num_threads() > 1 {
        x.par_chunks_exact(k).zip(q.par_chunks_exact_mut(k)).zip(s.par_chunks_exact_mut(nb).zip(sum.par_chunks_exact_mut(nb))).for_each(per_row);
    } else {
        x.chunks_exact(k).zip(q.chunks_exact_mut(k)).zip(s.chunks_exact_mut(nb).zip(sum.chunks_exact_mut(nb))).for_each(per_row);
    }
}

/// Quantizes 32 values (four registers) to bytes at `q` with scale `max|z| / 127` (rounded to
/// nearest even): returns the scale and the rounded values' sum.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `q` holds 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize32(z: &[__m256; 4], q: *mut i8) -> (f32, i32) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let amax =
        _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(z[0], abs), _mm256_and_ps(z[1], abs)), _mm256_max_ps(_mm256_and_ps(z[2], abs), _mm256_and_ps(z[3], abs)));
    let half = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    let half = _mm_max_ps(half, _mm_movehl_ps(half, half));
    let scale = _mm_cvtss_f32(_mm_max_ss(half, _mm_shuffle_ps(half, half, 1))) / 127.0;
    let inv = _mm256_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
    let r: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(z[i], inv)));
    // The packs interleave 128-bit lanes: the permutation puts the 32 bytes back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    // SAFETY: `q` holds 32 bytes (the caller's contract).
    unsafe { _mm256_storeu_si256(q.cast(), _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))) };
    let t = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
    let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
    (scale, _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01))))
}

/// Quantizes one activation row per block of 32 ([`quantize32`]): values, scales, scaled sums.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row(x: &[f32], q: &mut [i8], s: &mut [f32], sum: &mut [f32]) {
    assert!(x.len() == q.len() && x.len() == s.len() * QK && s.len() == sum.len());
    for (((xb, qb), sb), tb) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(s).zip(sum) {
        // SAFETY: 32 values in `xb`, 32 bytes in `qb`.
        let (scale, total) = unsafe { quantize32(&std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i))), qb.as_mut_ptr()) };
        *sb = scale;
        *tb = scale * total as f32;
    }
}

/// One gradient row for one block of output columns: `z = dy · dcol` quantized per 32 rows of the
/// weights into `q` (groups of 32, the padding zero; scale `max|z| / 127`, rounded to nearest even)
/// with scales `s`; returns `Σ dy · mcol`.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_rows(dy: &[f32], dcol: &[f32], mcol: &[f32], q: &mut [i8], s: &mut [f32]) -> f32 {
    let n = dy.len();
    assert!(dcol.len() >= n && mcol.len() >= n && q.len() == n.div_ceil(QK) * QK && s.len() == n.div_ceil(QK));
    let mut offsets = _mm256_setzero_ps();
    let (mut tail_dy, mut tail_d, mut tail_m) = ([0f32; QK], [0f32; QK], [0f32; QK]);
    for (g, (qg, sg)) in q.chunks_exact_mut(QK).zip(s.iter_mut()).enumerate() {
        let lo = g * QK;
        let (y, d, m) = if lo + QK <= n {
            (&dy[lo..lo + QK], &dcol[lo..lo + QK], &mcol[lo..lo + QK])
        } else {
            let len = n - lo;
            tail_dy[..len].copy_from_slice(&dy[lo..]);
            tail_d[..len].copy_from_slice(&dcol[lo..n]);
            tail_m[..len].copy_from_slice(&mcol[lo..n]);
            (&tail_dy[..], &tail_d[..], &tail_m[..])
        };
        // SAFETY: `y`, `d`, `m` hold 32 values each and `qg` 32 bytes.
        unsafe {
            let z: [__m256; 4] = std::array::from_fn(|i| {
                let yv = _mm256_loadu_ps(y.as_ptr().add(8 * i));
                offsets = _mm256_fmadd_ps(yv, _mm256_loadu_ps(m.as_ptr().add(8 * i)), offsets);
                _mm256_mul_ps(yv, _mm256_loadu_ps(d.as_ptr().add(8 * i)))
            });
            *sg = quantize32(&z, qg.as_mut_ptr()).0;
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: eight lanes into eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), offsets) };
    lanes.iter().sum()
}

/// Quantized rows of a register block: values at stride `lda`, per 32 values a scale (and with
/// `sum` the block's scaled sum) at stride `lds`.
struct Rows<'a> {
    q: &'a [i8],
    lda: usize,
    s: &'a [f32],
    sum: Option<&'a [f32]>,
    lds: usize,
}

/// A packed panel of [`NR`] columns: [`PB`] bytes per block; with `cd` each block's column scales
/// and offsets ([`NR`] each), without them every column's scale is 1.
struct Panel<'a> {
    w: &'a [u8],
    cd: Option<(&'a [f32], &'a [f32])>,
}

/// `c[i][j] = Σ_b (Σ_v u[b][v][j] · q[i][b·32 + v]) · s[i][b] · cd[b][j] + cm[b][j] · sum[i][b]`
/// over `blocks` blocks, for `i < m` (`m <= MR`), `j < n` (`n <= NR`); `c` has row stride `ldc`.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` holds `m` rows of `blocks` blocks (with scales and sums),
/// `b` `blocks` packed blocks; the `m × n` cells at `c` are writable and touched by no other thread
/// meanwhile.
unsafe fn block(m: usize, a: &Rows, b: &Panel, blocks: usize, c: *mut f32, ldc: usize, n: usize) {
    assert!(m <= MR && n <= NR && b.w.len() >= blocks * PB && a.q.len() >= (m - 1) * a.lda + blocks * QK && a.s.len() >= (m - 1) * a.lds + blocks);
    if let Some((cd, cm)) = b.cd {
        assert!(cd.len() >= blocks * NR && cm.len() >= blocks * NR && a.sum.is_some_and(|s| s.len() >= (m - 1) * a.lds + blocks));
    }
    TILE.with_borrow_mut(|tile| {
        // The kernels accumulate in memory: straight into `c` for whole register blocks, into a
        // scratch tile otherwise.
        let (dst, ld) = if n == NR {
            (c, ldc)
        } else {
            tile.resize(MR * NR, 0.0);
            (tile.as_mut_ptr(), NR)
        };
        // SAFETY: shapes asserted above; `dst` is `c` (the caller's contract) or the tile.
        unsafe {
            match m {
                6 => kernel::<6>(a, b, blocks, dst, ld),
                5 => kernel::<5>(a, b, blocks, dst, ld),
                4 => kernel::<4>(a, b, blocks, dst, ld),
                3 => kernel::<3>(a, b, blocks, dst, ld),
                2 => kernel::<2>(a, b, blocks, dst, ld),
                _ => kernel::<1>(a, b, blocks, dst, ld),
            }
        }
        if n < NR {
            for i in 0..m {
                // SAFETY: row `i` of `c` has `n` writable cells (the caller's contract).
                unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr().add(i * NR), c.add(i * ldc), n) };
            }
        }
    });
}

/// [`block`] for `M` rows and all [`NR`] columns.
///
/// # Safety
/// As [`block`] (shapes checked there), with `c` holding `M` rows of [`NR`] cells at stride `ldc`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const M: usize>(a: &Rows, b: &Panel, blocks: usize, c: *mut f32, ldc: usize) {
    let ones = _mm256_set1_epi16(1);
    let (w, q, s) = (b.w.as_ptr(), a.q.as_ptr(), a.s.as_ptr());
    for i in 0..M {
        // SAFETY: row `i < M` of `c` has NR cells (the caller's contract).
        unsafe {
            _mm256_storeu_ps(c.add(i * ldc), _mm256_setzero_ps());
            _mm256_storeu_ps(c.add(i * ldc + 8), _mm256_setzero_ps());
        }
    }
    for blk in 0..blocks {
        let mut lo = [_mm256_setzero_si256(); M];
        let mut hi = [_mm256_setzero_si256(); M];
        // SAFETY: block `blk` of the panel (PB bytes) and of each row (32 values) are inside the
        // slices (asserted by `block`).
        unsafe {
            let wb = w.add(blk * PB);
            for j in 0..QK / 4 {
                let w0 = _mm256_loadu_si256(wb.add(j * 64).cast());
                let w1 = _mm256_loadu_si256(wb.add(j * 64 + 32).cast());
                for i in 0..M {
                    let x = _mm256_set1_epi32(q.add(i * a.lda + blk * QK + j * 4).cast::<i32>().read_unaligned());
                    lo[i] = _mm256_add_epi16(lo[i], _mm256_maddubs_epi16(w0, x));
                    hi[i] = _mm256_add_epi16(hi[i], _mm256_maddubs_epi16(w1, x));
                }
            }
        }
        for i in 0..M {
            // SAFETY: as above, and row `i` of `c` has NR cells.
            unsafe {
                let dst = c.add(i * ldc);
                let si = _mm256_set1_ps(*s.add(i * a.lds + blk));
                let (mut f0, mut f1) = (_mm256_cvtepi32_ps(_mm256_madd_epi16(lo[i], ones)), _mm256_cvtepi32_ps(_mm256_madd_epi16(hi[i], ones)));
                let (mut c0, mut c1) = (_mm256_loadu_ps(dst), _mm256_loadu_ps(dst.add(8)));
                if let (Some((cd, cm)), Some(sum)) = (b.cd, a.sum) {
                    let (d0, d1) = (_mm256_loadu_ps(cd.as_ptr().add(blk * NR)), _mm256_loadu_ps(cd.as_ptr().add(blk * NR + 8)));
                    let (m0, m1) = (_mm256_loadu_ps(cm.as_ptr().add(blk * NR)), _mm256_loadu_ps(cm.as_ptr().add(blk * NR + 8)));
                    let total = _mm256_set1_ps(*sum.as_ptr().add(i * a.lds + blk));
                    c0 = _mm256_fmadd_ps(m0, total, c0);
                    c1 = _mm256_fmadd_ps(m1, total, c1);
                    f0 = _mm256_mul_ps(f0, d0);
                    f1 = _mm256_mul_ps(f1, d1);
                }
                _mm256_storeu_ps(dst, _mm256_fmadd_ps(f0, si, c0));
                _mm256_storeu_ps(dst.add(8), _mm256_fmadd_ps(f1, si, c1));
            }
        }
    }
}
