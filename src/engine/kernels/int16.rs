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
/// Output blocks of 32 columns per backward task, at most.
const BLOCKS: usize = 4;
/// Stacked weight rows the backward pass reduces over at once, at most (a multiple of 32; more
/// make slabs whose products add up).
const SLAB: usize = 1536;

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
        let qs = &self.qs[blk * 16..blk * 16 + 16];
        // SAFETY: SSE2 is part of x86-64; `qs` holds 16 bytes and `u` 32.
        unsafe {
            let v = _mm_loadu_si128(qs.as_ptr().cast());
            let low = _mm_set1_epi8(0x0F);
            _mm_storeu_si128(u.as_mut_ptr().cast(), _mm_and_si128(v, low));
            _mm_storeu_si128(u.as_mut_ptr().add(16).cast(), _mm_and_si128(_mm_srli_epi16::<4>(v), low));
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
    /// Per thread: the forward pass's quantized rows (values, scales, sums).
    static ROWS: RefCell<(Vec<i8>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// Per thread: the backward pass's buffers.
    static BACK: RefCell<Back> = RefCell::new(Back::default());
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
                // Eight columns (weight rows) at a time: per block, their values (eight quads each)
                // transposed into the panel's rows of quads.
                let mut u = [[0u8; QK]; 8];
                for j0 in (0..n_panels * NR).step_by(8) {
                    let (g, c0) = (j0 / NR, j0 % NR);
                    for b in 0..nb {
                        for (i, ui) in u.iter_mut().enumerate() {
                            let c = c0 + i;
                            let (d, m) = if j0 + i < n {
                                w.block(r0 + j0 + i, b, ui)
                            } else {
                                *ui = [0; QK];
                                (0.0, 0.0)
                            };
                            cd[(g * nb + b) * NR + c] = d;
                            cm[(g * nb + b) * NR + c] = m;
                        }
                        let blk = &mut packed[(g * nb + b) * PB..(g * nb + b + 1) * PB];
                        // SAFETY: AVX2 asserted above; 32 bytes read per column, and quad row q's
                        // 32 bytes for these columns written at `lane(4q, c0)` inside the block.
                        unsafe {
                            let rows = transpose8(std::array::from_fn(|i| _mm256_loadu_si256(u[i].as_ptr().cast())));
                            for (q, row) in rows.iter().enumerate() {
                                _mm256_storeu_si256(blk[lane(4 * q, c0)..lane(4 * q, c0) + 32].as_mut_ptr().cast(), *row);
                            }
                        }
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
                        unsafe { block(m, &a, &b, nb, Cells { c: dst.get().add(m0 * width + col + g * NR), ldc: width, n: cols, add: false }) };
                    }
                }
            });
        });
    }
    ROWS.set((q, s, sum));
}

/// `out[t][c] = Σ_n dy[t][n] · w[n][c]` with `w` the 4-bit parts stacked by rows (`dy` is `[rows,
/// Σ parts.rows]`, `out` `[rows, cols]`): the backward pass's `dX = dY · W` from the weights as they
/// are stored. Split over tiles of output blocks across the current rayon pool.
///
/// Each task packs its tile's blocks (up to [`BLOCKS`]) over a slab of stacked rows (up to [`SLAB`],
/// the slabs adding up), then runs over the gradient rows a chunk at a time: a chunk's `dY` is read
/// once for all the tile's blocks (scaled per block by [`scale_rows`]) while the packed panels stay in
/// cache. (`dY` is the largest operand — 6 MiB for the gate and up projections of 512 rows of
/// SmolLM2 — and was read again from outer cache for every block of 32 output columns.)
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
    // Slabs of the stacked rows, on boundaries of groups of 32 (so the gradients are quantized in
    // the same groups as over all the rows at once).
    let slabs: Vec<std::ops::Range<usize>> = (0..n_total).step_by(SLAB).map(|s0| s0..(s0 + SLAB).min(n_total)).collect();
    let blocks = k / QK;
    let tile = group_size(blocks, rayon::current_num_threads().max(1), BLOCKS);
    let tasks: Vec<usize> = (0..blocks).step_by(tile).collect();
    let dst = SharedOut(out.as_mut_ptr());
    run_tasks(&tasks, |&b0| {
        let tile = tile.min(blocks - b0);
        BACK.with_borrow_mut(|back| {
            for (first, slab) in slabs.iter().enumerate().map(|(i, s)| (i == 0, s)) {
                let n = slab.len();
                // The reduction in groups of 32 rows, the last one padded with zeros.
                let groups = n.div_ceil(QK);
                let width = groups * QK;
                back.pack(&q4, slab.clone(), b0, tile);
                let chunk = chunk_rows(tile, width);
                let Back { packed, dcol, mcol, zq, zs, mterm, .. } = back;
                zq.resize(tile * chunk * width, 0);
                zs.resize(tile * chunk * groups, 0.0);
                mterm.resize(tile * chunk, 0.0);
                for t0 in (0..rows).step_by(chunk) {
                    let m_rows = chunk.min(rows - t0);
                    for t in 0..m_rows {
                        let row = &dy[(t0 + t) * n_total + slab.start..(t0 + t) * n_total + slab.end];
                        let at = Scaled { zq: &mut zq[t * width..], zs: &mut zs[t * groups..], mterm: &mut mterm[t..], stride: chunk };
                        // SAFETY: AVX2 and FMA asserted above.
                        unsafe { scale_rows(row, dcol, mcol, tile, at) };
                    }
                    for j in 0..tile {
                        let b = b0 + j;
                        for m0 in (0..m_rows).step_by(MR) {
                            let m = MR.min(m_rows - m0);
                            let a = Rows { q: &zq[(j * chunk + m0) * width..], lda: width, s: &zs[(j * chunk + m0) * groups..], sum: None, lds: groups };
                            for p in 0..2 {
                                let w = &packed[((2 * j + p) * groups) * PB..((2 * j + p + 1) * groups) * PB];
                                let panel = Panel { w, cd: None };
                                // SAFETY: the output cells are rows t0 + m0 .. + m, columns 32·b +
                                // 16·p .. + 16 (stride `k`), inside `out` and written by this task only.
                                unsafe {
                                    block(m, &a, &panel, groups, Cells { c: dst.get().add((t0 + m0) * k + b * QK + p * NR), ldc: k, n: NR, add: !first })
                                };
                            }
                        }
                        for (t, &add) in mterm[j * chunk..j * chunk + m_rows].iter().enumerate() {
                            // SAFETY: row t0 + t, columns 32·b .. + 32: this task's cells of `out`.
                            let cells = unsafe { std::slice::from_raw_parts_mut(dst.get().add((t0 + t) * k + b * QK), QK) };
                            cells.iter_mut().for_each(|c| *c += add);
                        }
                    }
                }
            }
        });
    });
}

/// Gradient rows per chunk of the backward pass for `tile` blocks over `width` stacked rows: a
/// multiple of [`MR`] (6 to 48) whose scaled rows (`tile · width` bytes each) and `dY` rows (`4 ·
/// width`) take about 192 KiB, beside the packed panels (`tile · 32 · width`).
fn chunk_rows(tile: usize, width: usize) -> usize {
    ((192 << 10) / ((tile + 4) * width.max(1)) / MR * MR).clamp(MR, 48)
}

/// Per thread: the backward pass's buffers.
#[derive(Default)]
struct Back {
    /// The tile's blocks as packed panels: per block two panels (columns 0-15, 16-31) of the
    /// slab's groups of 32 rows.
    packed: Vec<u8>,
    /// Per block, the slab's rows' scales and offsets (`[tile][width]`, zero past the last row).
    dcol: Vec<f32>,
    mcol: Vec<f32>,
    /// One block's values row by row.
    units: Vec<[u8; QK]>,
    /// A chunk's scaled gradients per block: values `[tile][chunk][width]`, scales `[tile][chunk]
    /// [groups]`, offset terms `[tile][chunk]`.
    zq: Vec<i8>,
    zs: Vec<f32>,
    mterm: Vec<f32>,
}

impl Back {
    /// Packs blocks `b0..b0 + tile` of the stacked rows `slab` of `q4`.
    fn pack(&mut self, q4: &[Q4], slab: std::ops::Range<usize>, b0: usize, tile: usize) {
        let groups = slab.len().div_ceil(QK);
        let width = groups * QK;
        let Back { packed, dcol, mcol, units, .. } = self;
        packed.clear();
        packed.resize(tile * 2 * groups * PB, 0);
        dcol.clear();
        dcol.resize(tile * width, 0.0);
        mcol.clear();
        mcol.resize(tile * width, 0.0);
        for j in 0..tile {
            // The block's values row by row (zero past the last row), then packed four rows at a
            // time: column c's quad is those rows' values c.
            units.clear();
            units.resize(width, [0; QK]);
            let mut first = 0;
            for w in q4 {
                for r in first.max(slab.start)..(first + w.rows).min(slab.end) {
                    let o = r - slab.start;
                    (dcol[j * width + o], mcol[j * width + o]) = w.block(r - first, b0 + j, &mut units[o]);
                }
                first += w.rows;
            }
            let panels = &mut packed[j * 2 * groups * PB..(j + 1) * 2 * groups * PB];
            for (quad, rows4) in units.chunks_exact(4).enumerate() {
                let (g, v) = (quad * 4 / QK, quad * 4 % QK);
                for p in 0..2 {
                    // Panel p's 16 columns, each the four rows' values: 64 bytes from `lane(v, 0)`,
                    // the rows' bytes interleaved.
                    let at = (p * groups + g) * PB + lane(v, 0);
                    let out = &mut panels[at..at + 64];
                    // SAFETY: SSE2 is part of x86-64; 16 bytes read from each row (at 16·p of
                    // 32), 64 written to `out`.
                    unsafe {
                        let x: [__m128i; 4] = std::array::from_fn(|i| _mm_loadu_si128(rows4[i].as_ptr().add(16 * p).cast()));
                        let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(x[0], x[1]), _mm_unpackhi_epi8(x[0], x[1]));
                        let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(x[2], x[3]), _mm_unpackhi_epi8(x[2], x[3]));
                        let quads = [
                            _mm_unpacklo_epi16(ab_lo, cd_lo),
                            _mm_unpackhi_epi16(ab_lo, cd_lo),
                            _mm_unpacklo_epi16(ab_hi, cd_hi),
                            _mm_unpackhi_epi16(ab_hi, cd_hi),
                        ];
                        for (i, q) in quads.iter().enumerate() {
                            _mm_storeu_si128(out.as_mut_ptr().add(16 * i).cast(), *q);
                        }
                    }
                }
            }
        }
    }
}

/// The 8 × 8 transpose of 32-bit lanes: output `q` holds lane `q` of each input in order.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    // Pairs interleaved by 32 bits, then by 64, then the 128-bit halves exchanged.
    let t: [__m256i; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[0..4]: lanes {0,4}, {1,5}, {2,6}, {3,7} of inputs 0-3; u[4..8]: the same of inputs 4-7.
    let u: [__m256i; 8] = std::array::from_fn(|i| {
        let base = (i / 4) * 4;
        let (a, b) = (t[base + (i % 4) / 2], t[base + 2 + (i % 4) / 2]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    std::array::from_fn(|q| if q < 4 { _mm256_permute2x128_si256::<0x20>(u[q], u[q + 4]) } else { _mm256_permute2x128_si256::<0x31>(u[q - 4], u[q]) })
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

/// Where [`scale_rows`] writes one gradient row's results for the tile's blocks: block `j`'s
/// values at `zq[j · stride · width..]`, scales at `zs[j · stride · groups..]`, offset term at
/// `mterm[j · stride]`.
struct Scaled<'a> {
    zq: &'a mut [i8],
    zs: &'a mut [f32],
    mterm: &'a mut [f32],
    stride: usize,
}

/// One gradient row for `tile` blocks of output columns: per block `j`, `z = dy · dcol[j]`
/// quantized per 32 rows of the weights (groups of 32, the padding zero; scale `max|z| / 127`,
/// rounded to nearest even) and `Σ dy · mcol[j]` (`dcol`, `mcol`: `[tile][width]`). Each group of
/// `dy` is loaded once for all the blocks.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_rows(dy: &[f32], dcol: &[f32], mcol: &[f32], tile: usize, at: Scaled) {
    let n = dy.len();
    let groups = n.div_ceil(QK);
    let width = groups * QK;
    assert!((1..=BLOCKS).contains(&tile) && dcol.len() >= tile * width && mcol.len() >= tile * width);
    assert!(at.zq.len() > (tile - 1) * at.stride * width + width - 1 && at.zs.len() > (tile - 1) * at.stride * groups + groups - 1);
    assert!(at.mterm.len() > (tile - 1) * at.stride);
    let mut offsets = [_mm256_setzero_ps(); BLOCKS];
    let mut tail = [0f32; QK];
    for g in 0..groups {
        let lo = g * QK;
        let y = if lo + QK <= n {
            &dy[lo..lo + QK]
        } else {
            tail[..n - lo].copy_from_slice(&dy[lo..]);
            &tail[..]
        };
        // SAFETY: `y` holds 32 values.
        let yv: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(y.as_ptr().add(8 * i)) });
        for (j, off) in offsets.iter_mut().enumerate().take(tile) {
            let (d, m) = (&dcol[j * width + lo..j * width + lo + QK], &mcol[j * width + lo..j * width + lo + QK]);
            // SAFETY: `d`, `m` hold 32 values each; block j's 32 bytes of `zq` at group g (asserted).
            unsafe {
                let z: [__m256; 4] = std::array::from_fn(|i| {
                    *off = _mm256_fmadd_ps(yv[i], _mm256_loadu_ps(m.as_ptr().add(8 * i)), *off);
                    _mm256_mul_ps(yv[i], _mm256_loadu_ps(d.as_ptr().add(8 * i)))
                });
                at.zs[j * at.stride * groups + g] = quantize32(&z, at.zq.as_mut_ptr().add(j * at.stride * width + lo)).0;
            }
        }
    }
    for (j, off) in offsets.iter().enumerate().take(tile) {
        let mut lanes = [0f32; 8];
        // SAFETY: eight lanes into eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *off) };
        at.mterm[j * at.stride] = lanes.iter().sum();
    }
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

/// Where [`block`] writes: `n` cells per row at `c`, rows `ldc` apart; with `add` (whole panels
/// only, `n` = [`NR`]) the products add to the cells' values, else they replace them.
struct Cells {
    c: *mut f32,
    ldc: usize,
    n: usize,
    add: bool,
}

/// `c[i][j] = Σ_b (Σ_v u[b][v][j] · q[i][b·32 + v]) · s[i][b] · cd[b][j] + cm[b][j] · sum[i][b]`
/// over `blocks` blocks, for `i < m` (`m <= MR`), `j < n` (`n <= NR`), into `out` ([`Cells`]).
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` holds `m` rows of `blocks` blocks (with scales and sums),
/// `b` `blocks` packed blocks; the `m × n` cells of `out` are writable and touched by no other
/// thread meanwhile.
unsafe fn block(m: usize, a: &Rows, b: &Panel, blocks: usize, out: Cells) {
    let Cells { c, ldc, n, add } = out;
    // Adding goes straight into `c`: only whole panels add (the backward pass's slabs).
    assert!(!add || n == NR, "int16 block: adding to a partial panel");
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
                6 => kernel::<6>(a, b, blocks, dst, ld, add),
                5 => kernel::<5>(a, b, blocks, dst, ld, add),
                4 => kernel::<4>(a, b, blocks, dst, ld, add),
                3 => kernel::<3>(a, b, blocks, dst, ld, add),
                2 => kernel::<2>(a, b, blocks, dst, ld, add),
                _ => kernel::<1>(a, b, blocks, dst, ld, add),
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
unsafe fn kernel<const M: usize>(a: &Rows, b: &Panel, blocks: usize, c: *mut f32, ldc: usize, add: bool) {
    let ones = _mm256_set1_epi16(1);
    let (w, q, s) = (b.w.as_ptr(), a.q.as_ptr(), a.s.as_ptr());
    for i in (0..M).filter(|_| !add) {
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
