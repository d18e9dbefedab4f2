//! Dense f32 products on AVX2 + FMA, for the training passes on CPUs with neither bf16 unit (AMD
//! Zen 3 and earlier, Intel before Cooper Lake): each weight panel is dequantized once per product
//! (as [`QMatrix::dequantize_row`], bit for bit) into f32, and a 6 × 16 register block of the
//! output runs over it with `vfmadd231ps`, the activations read in f32 as they are.
//! The 4-bit weights (`Q4_0`, `Q4_1`) take the int16 products instead ([`super::int16`]) unless
//! `AGENTLM_INT16=0`; this unit keeps the other types.
//!
//! Why not the int8 kernels there: without `vpdpbusd` a block of 32 products costs `vpmaddubsw`,
//! `vpmaddwd`, a convert, a scale and an FMA, about the cost of four f32 FMAs over the same 32 values,
//! and the per-block scaling cannot be hoisted out of the loop. A training product has hundreds of
//! activation rows, so dequantizing the weights once per product is cheap against it (one
//! dequantized value serves every row), the products stay exact in f32 and the activations are not
//! quantized at all.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Isa, QMatrix, SharedOut};

/// Output columns per register block: two 8-lane registers.
const NR: usize = 16;
/// Activation rows per register block (12 accumulators, two weight registers, one broadcast).
const MR: usize = 6;
/// Panels of [`NR`] output columns per task, dequantized once and run against every activation row.
const GROUP: usize = 4;
/// Reduction steps per pass (a multiple of 32: whole blocks): a panel's slice (16 KiB) stays in
/// L1 and a task's slices in L2 however long the rows are.
const KC: usize = 256;

/// Whether dense f32 products run here: AVX2 + FMA is this CPU's best instruction set (or
/// `AGENTLM_ISA=avx2` asked for it), unless `AGENTLM_DENSE=0`.
pub(super) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| Isa::detected() == Isa::Avx2 && !super::switched_off("AGENTLM_DENSE"))
}

thread_local! {
    /// Per thread: a task's dequantized panels (reused between calls).
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per thread: dequantized weight values.
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The largest number of units (at most `max`) per task with which `total` units over `threads`
/// threads leave no thread more than its fair share (rounded up); 1 if none does.
pub(super) fn group_size(total: usize, threads: usize, max: usize) -> usize {
    let fair = total.div_ceil(threads);
    (1..=max).rev().find(|&g| total.div_ceil(g).div_ceil(threads) * g <= fair).unwrap_or(1)
}

/// Runs `task` over `tasks`, in parallel on the current rayon pool when there are several.
pub(super) fn run_tasks<T: Sync>(tasks: &[T], task: impl Fn(&T) + Sync + Send) {
    if tasks.len() > 1 && rayon::current_num_threads() > 1 {
        tasks.par_iter().for_each(task);
    } else {
        tasks.iter().for_each(task);
    }
}

/// Tasks over the weight rows of `parts` side by side: groups of up to `max` panels of `nr` rows
/// each ([`group_size`] of them per task over the current rayon pool), each task as (part, first
/// row, first output column). Returns the panels per task and the tasks.
pub(super) fn row_tasks(parts: &[&QMatrix], nr: usize, max: usize) -> (usize, Vec<(usize, usize, usize)>) {
    let total: usize = parts.iter().map(|p| p.rows().div_ceil(nr)).sum();
    let group = group_size(total, rayon::current_num_threads().max(1), max);
    let mut tasks = Vec::new();
    let mut c0 = 0;
    for (pi, p) in parts.iter().enumerate() {
        for r0 in (0..p.rows()).step_by(group * nr) {
            tasks.push((pi, r0, c0 + r0));
        }
        c0 += p.rows();
    }
    (group, tasks)
}

/// `out[t][o] = Σ_i w[o][i] · x[t][i]` for the parts side by side (`out` is `[rows, Σ parts.rows]`),
/// in f32 with FMA. Work is split over groups of weight rows across the current rayon pool.
///
/// # Panics
/// The CPU lacks AVX2 or FMA; shapes that do not match.
pub(super) fn matmul(parts: &[&QMatrix], x: &[f32], rows: usize, out: &mut [f32]) {
    assert!(Isa::Avx2.is_supported(), "dense f32 products need AVX2 and FMA");
    let width: usize = parts.iter().map(|p| p.rows()).sum();
    let k = parts.first().map_or(0, |p| p.cols());
    assert!(parts.iter().all(|p| p.cols() == k) && x.len() == rows * k && out.len() == rows * width, "dense product shapes");
    if rows == 0 || width == 0 {
        return;
    }
    let (group, tasks) = row_tasks(parts, NR, GROUP);
    let dst = SharedOut(out.as_mut_ptr());
    run_tasks(&tasks, |&(pi, r0, col)| {
        let w = parts[pi];
        let n = (group * NR).min(w.rows() - r0);
        let n_panels = n.div_ceil(NR);
        PANELS.with_borrow_mut(|panels| {
            ROW.with_borrow_mut(|vals| {
                // Reduction over the weights' columns, KC at a time: panel g holds, for each column
                // i of the slice, the values of weight rows r0 + g·NR + j.
                let full = k.is_multiple_of(super::QK);
                for k0 in (0..k).step_by(if full { KC } else { k }) {
                    let kc = if full { KC.min(k - k0) } else { k };
                    panels.resize(n_panels * kc * NR, 0.0);
                    vals.resize(kc, 0.0);
                    for j in 0..n_panels * NR {
                        let panel = &mut panels[(j / NR) * kc * NR..(j / NR + 1) * kc * NR];
                        let lane = j % NR;
                        if j < n {
                            if full {
                                w.dequantize_blocks(r0 + j, k0 / super::QK..(k0 + kc) / super::QK, vals);
                            } else {
                                w.dequantize_row(r0 + j, vals);
                            }
                            for (i, &v) in vals.iter().enumerate() {
                                panel[i * NR + lane] = v;
                            }
                        } else {
                            (0..kc).for_each(|i| panel[i * NR + lane] = 0.0);
                        }
                    }
                    // SAFETY: `x` holds `rows` rows of `k` values, from which columns k0..k0 + kc
                    // are read; the output cells are columns col..col + n of every row (stride
                    // `width`), inside `out` and written by this task only; AVX2 and FMA asserted.
                    unsafe { run_panels(panels, kc, n, x.as_ptr().add(k0), k, rows, dst.get().add(col), width, k0 > 0) };
                }
            })
        });
    });
}

/// `out[t][c] = Σ_n dy[t][n] · w[n][c]` with `w` the parts stacked by rows (`dy` is `[rows, Σ
/// parts.rows]`, `out` `[rows, cols]`): the backward pass's `dX = dY · W` from the weights as they
/// are stored, with no transposed copy. In f32 with FMA, split over groups of output columns.
///
/// # Panics
/// The CPU lacks AVX2 or FMA; shapes that do not match; columns that are not whole blocks of 32.
pub(super) fn matmul_t(parts: &[&QMatrix], dy: &[f32], rows: usize, out: &mut [f32]) {
    use super::QK;
    assert!(Isa::Avx2.is_supported(), "dense f32 products need AVX2 and FMA");
    let n_total: usize = parts.iter().map(|p| p.rows()).sum();
    let k = parts.first().map_or(0, |p| p.cols());
    assert!(parts.iter().all(|p| p.cols() == k) && k.is_multiple_of(QK), "transposed product: parts of whole blocks and one width");
    assert!(dy.len() == rows * n_total && out.len() == rows * k, "transposed product shapes");
    if rows == 0 || k == 0 {
        return;
    }
    // Tasks of whole blocks of output columns (two panels each).
    let blocks = k / QK;
    let group = group_size(blocks, rayon::current_num_threads().max(1), GROUP / 2);
    let tasks: Vec<usize> = (0..blocks).step_by(group).collect();
    // Stacked row `g` as (part, row).
    let locate = |mut g: usize| {
        for p in parts {
            if g < p.rows() {
                return (*p, g);
            }
            g -= p.rows();
        }
        unreachable!("row inside the stack")
    };
    let dst = SharedOut(out.as_mut_ptr());
    run_tasks(&tasks, |&b0| {
        let nb = group.min(blocks - b0);
        let (n_panels, width) = (nb * QK / NR, nb * QK);
        PANELS.with_borrow_mut(|panels| {
            ROW.with_borrow_mut(|vals| {
                vals.resize(width, 0.0);
                for n0 in (0..n_total).step_by(KC) {
                    let kc = KC.min(n_total - n0);
                    panels.resize(n_panels * kc * NR, 0.0);
                    for p in 0..kc {
                        let (w, r) = locate(n0 + p);
                        w.dequantize_blocks(r, b0..b0 + nb, vals);
                        for (g, v) in vals.chunks_exact(NR).enumerate() {
                            panels[g * kc * NR + p * NR..g * kc * NR + (p + 1) * NR].copy_from_slice(v);
                        }
                    }
                    // SAFETY: `dy` holds `rows` rows of `n_total` values, from which columns
                    // n0..n0 + kc are read; the output cells are columns b0·32.. + width of every row
                    // (stride `k`), inside `out` and written by this task only; AVX2 and FMA asserted.
                    unsafe { run_panels(panels, kc, width, dy.as_ptr().add(n0), n_total, rows, dst.get().add(b0 * QK), k, n0 > 0) };
                }
            })
        });
    });
}

/// Every activation row block against every panel: `c[t][g·NR + j] (+)= Σ_p a[t·lda + p] ·
/// panels[g][p][j]` for `t < rows`, columns below `n` (`panels` holds `n.div_ceil(NR)` panels of
/// `kc` steps).
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` holds `rows` rows of `kc` values at stride `lda`; the
/// `rows × n` cells at `c` (stride `ldc`) are writable (and readable with `acc`), touched by no
/// other thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_panels(panels: &[f32], kc: usize, n: usize, a: *const f32, lda: usize, rows: usize, c: *mut f32, ldc: usize, acc: bool) {
    for m0 in (0..rows).step_by(MR) {
        let m = MR.min(rows - m0);
        for (g, panel) in panels.chunks_exact(kc * NR).take(n.div_ceil(NR)).enumerate() {
            let cols = NR.min(n - g * NR);
            // SAFETY: the caller's contract, for rows m0..m0 + m and this panel's columns.
            unsafe { block(m, a.add(m0 * lda), lda, panel, c.add(m0 * ldc + g * NR), ldc, cols, acc) };
        }
    }
}

/// `c[i][j] (+)= Σ_p a[i·lda + p] · b[p·NR + j]` for `i < m`, `j < n` (`m <= MR`, `n <= NR`), `c`
/// with row stride `ldc`, added to what is there with `acc`.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` holds `m` rows of `k` values at stride `lda`, `b` `k · NR`
/// values; the `m × n` cells at `c` are writable (and readable with `acc`).
#[allow(clippy::too_many_arguments)]
unsafe fn block(m: usize, a: *const f32, lda: usize, b: &[f32], c: *mut f32, ldc: usize, n: usize, acc: bool) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match m {
            6 => kernel::<6>(a, lda, b, c, ldc, n, acc),
            5 => kernel::<5>(a, lda, b, c, ldc, n, acc),
            4 => kernel::<4>(a, lda, b, c, ldc, n, acc),
            3 => kernel::<3>(a, lda, b, c, ldc, n, acc),
            2 => kernel::<2>(a, lda, b, c, ldc, n, acc),
            _ => kernel::<1>(a, lda, b, c, ldc, n, acc),
        }
    }
}

/// [`block`] for `M` rows.
///
/// # Safety
/// As [`block`], with `m = M`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const M: usize>(a: *const f32, lda: usize, b: &[f32], c: *mut f32, ldc: usize, n: usize, acc: bool) {
    let k = b.len() / NR;
    let mut lo = [_mm256_setzero_ps(); M];
    let mut hi = [_mm256_setzero_ps(); M];
    // SAFETY: row `i < M` of `a` is inside it (the caller's contract).
    let rows: [*const f32; M] = std::array::from_fn(|i| unsafe { a.add(i * lda) });
    for p in 0..k {
        // SAFETY: `b` holds `k · NR` values; row `i < M` of `a` holds `k` values (the caller's contract).
        unsafe {
            let b0 = _mm256_loadu_ps(b.as_ptr().add(p * NR));
            let b1 = _mm256_loadu_ps(b.as_ptr().add(p * NR + 8));
            for i in 0..M {
                let av = _mm256_broadcast_ss(&*rows[i].add(p));
                lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
            }
        }
    }
    for i in 0..M {
        // SAFETY: row `i < M` of `c` has `n` writable (with `acc` readable) cells (the caller's
        // contract).
        unsafe {
            let dst = c.add(i * ldc);
            if n == NR {
                if acc {
                    lo[i] = _mm256_add_ps(lo[i], _mm256_loadu_ps(dst));
                    hi[i] = _mm256_add_ps(hi[i], _mm256_loadu_ps(dst.add(8)));
                }
                _mm256_storeu_ps(dst, lo[i]);
                _mm256_storeu_ps(dst.add(8), hi[i]);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi[i]);
                for (j, v) in tmp.iter().take(n).enumerate() {
                    *dst.add(j) = if acc { *dst.add(j) + v } else { *v };
                }
            }
        }
    }
}
