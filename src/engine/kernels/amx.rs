//! Intel AMX tile products in bf16, for products with many activation rows (the training passes).
//!
//! The int8 kernels beside this file rescale every 32-value block in f32, which caps them near the
//! CPU's f32 FMA rate on Intel cores; AMX's `tdpbf16ps` multiplies a 16×32 by a 32×16 bf16 tile
//! into f32 in one instruction. A call converts the activations to bf16 once, and each task
//! dequantizes a panel of 32 weight rows to f32 (as [`QMatrix::dequantize_row`] does), rounds them
//! to bf16 and packs them into tiles: the weights stay in their quantized form between calls, and
//! the unpacking is shared by every activation row.
//!
//! Numerics: both operands rounded to bf16 (8 significant bits, round to nearest even), products
//! summed in f32 by the tile unit. That is about as close to the f32 product as the int8 path's
//! per-block activation quantization, and the training goldens hold with it (`host_train` tests).
//!
//! Linux only: the tile data state must be granted to the process (`arch_prctl`), which
//! [`available`] asks for once. `AGENTLM_AMX=0` (or an `AGENTLM_ISA` below AVX-512) turns it off.

use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Isa, QKind, QMatrix, Scale, Scales, SendPtr, QK};

/// Rows (and output columns) per tile.
const TR: usize = 16;
/// bf16 values along the inner dimension per tile row (64 bytes).
const TK: usize = 32;
/// Weight rows per task: two B tiles side by side.
const PANEL: usize = 2 * TR;
/// Panels per task.
const GROUP: usize = 4;
/// u16 elements in one packed tile.
const TILE_U16: usize = TR * TK;

/// Whether AMX bf16 tile products can run here (detected and granted once).
pub(super) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = matches!(std::env::var("AGENTLM_AMX").as_deref(), Ok("0" | "off" | "false"));
        !off && Isa::detected() == Isa::Avx512Vnni && detect()
    })
}

fn detect() -> bool {
    // Leaf 7 sub-leaf 0 is defined on the CPUs that report AVX-512 (checked by the caller).
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    // EDX bit 22: AMX-BF16; bit 24: AMX-TILE.
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` only asks the kernel to
        // enable the tile state for this process; it reads and writes no memory of ours. A kernel
        // or hypervisor that does not offer it returns an error, and AMX stays unused.
        let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0;
        if granted {
            tracing::debug!("AMX bf16 tile products enabled");
        }
        granted
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// `rows` rows of `k` f32 values (`x`) as the A operand: tile `(i, s)` (rows `16i..16i + 16`,
/// values `32s..32s + 32`) at `((i / 2 · ks + s) · 2 + i % 2) · TILE_U16` (the two tiles of a pair of
/// tile rows side by side), row-major inside the tile, so each step of [`block`] reads 2 KiB in a row. Zero past `k` values; `out` holds whole tiles for these rows.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn convert_rows(x: &[f32], k: usize, kp: usize, out: &mut [u16]) {
    let ks = kp / TK;
    for (r, src) in x.chunks_exact(k).enumerate() {
        let (i, row) = (r / TR, r % TR);
        for s in 0..ks {
            let tile = ((i / 2) * ks + s) * 2 + i % 2;
            let dst = &mut out[tile * TILE_U16 + row * TK..tile * TILE_U16 + (row + 1) * TK];
            let part = &src[(s * TK).min(k)..((s + 1) * TK).min(k)];
            for (d, &v) in dst.iter_mut().zip(part) {
                *d = bf16(v);
            }
            dst[part.len()..].fill(0);
        }
    }
}

/// Packs weight rows `r0..r0 + nr` (`nr <= PANEL`) of `w` as the B operand of two tile columns,
/// dequantizing as [`QMatrix::dequantize_row`] does: tile `(j, s)` (the j-th 16 rows, the s-th 32
/// values) at `(2s + j) · 256` words (the two tiles of a step side by side), its row `p` holding for each of the 16 weight rows `n` the
/// bf16 pair of values `32s + 2p`, `32s + 2p + 1` in one 32-bit word. Zero past `nr` rows.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_panel(w: &QMatrix, r0: usize, nr: usize, out: &mut [u32]) {
    let k = w.cols();
    let nb = k / QK;
    out.fill(0);
    // Writes block `b` (32 values) of panel row `n`.
    let mut put = |n: usize, b: usize, v: &[f32; QK]| {
        let (j, col) = (n / TR, n % TR);
        let tile = &mut out[(b * 2 + j) * TR * TR..(b * 2 + j + 1) * TR * TR];
        for p in 0..TR {
            tile[p * TR + col] = u32::from(bf16(v[2 * p])) | (u32::from(bf16(v[2 * p + 1])) << 16);
        }
    };
    let mut v = [0f32; QK];
    match w.kind() {
        QKind::Q4 { qs, d: Scales::F16(d), m: Scales::F16(m), centered } => q4_blocks(qs, d, m, *centered, r0, nr, nb, &mut v, &mut put),
        QKind::Q4 { qs, d: Scales::F32(d), m: Scales::F32(m), centered } => q4_blocks(qs, d, m, *centered, r0, nr, nb, &mut v, &mut put),
        QKind::Q4 { .. } => unreachable!("Q4 scale and offset share one width"),
        QKind::Q8 { qs, s: Scales::F16(sc), group } => q8_blocks(qs, sc, *group, k, r0, nr, nb, &mut v, &mut put),
        QKind::Q8 { qs, s: Scales::F32(sc), group } => q8_blocks(qs, sc, *group, k, r0, nr, nb, &mut v, &mut put),
        QKind::U8 { qs, d, m } => {
            // Offsets of a block's values from its pair's start: the first block of a pair, the
            // second, an odd last block (natural order); see `QKind::U8`.
            let first: [usize; QK] = std::array::from_fn(super::pair_lane);
            let second: [usize; QK] = std::array::from_fn(|i| super::pair_lane(QK + i));
            let last: [usize; QK] = std::array::from_fn(|i| i);
            for n in 0..nr {
                let r = r0 + n;
                let row = &qs[r * k..(r + 1) * k];
                for b in 0..nb {
                    let (start, len, lanes) = if b % 2 == 1 {
                        ((b - 1) * QK, 2 * QK, &second)
                    } else if b + 1 < nb {
                        (b * QK, 2 * QK, &first)
                    } else {
                        (b * QK, QK, &last)
                    };
                    let (db, mb) = (d[r * nb + b], m[r * nb + b]);
                    let src = &row[start..start + len];
                    for (y, &l) in v.iter_mut().zip(lanes) {
                        *y = db * f32::from(src[l]) + mb;
                    }
                    put(n, b, &v);
                }
            }
        }
        QKind::F32 { w } => {
            for n in 0..nr {
                let row = &w[(r0 + n) * k..(r0 + n + 1) * k];
                for (b, chunk) in row.chunks(QK).enumerate() {
                    v[..chunk.len()].copy_from_slice(chunk);
                    v[chunk.len()..].fill(0.0);
                    put(n, b, &v);
                }
            }
        }
    }
}

/// [`QKind::Q4`] rows `r0..r0 + nr` block by block into `put`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn q4_blocks<S: Scale>(qs: &[u8], d: &[S], m: &[S], centered: bool, r0: usize, nr: usize, nb: usize, v: &mut [f32; QK], put: &mut impl FnMut(usize, usize, &[f32; QK])) {
    for n in 0..nr {
        for b in 0..nb {
            let blk = (r0 + n) * nb + b;
            let bytes: &[u8; 16] = qs[blk * 16..blk * 16 + 16].try_into().expect("16 bytes");
            let (db, mb) = if centered { (d[blk].get(), -8.0 * d[blk].get()) } else { (d[blk].get(), m[blk].get()) };
            for j in 0..16 {
                v[j] = db * f32::from(bytes[j] & 0xF) + mb;
                v[j + 16] = db * f32::from(bytes[j] >> 4) + mb;
            }
            put(n, b, v);
        }
    }
}

/// [`QKind::Q8`] rows `r0..r0 + nr` block by block into `put`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn q8_blocks<S: Scale>(qs: &[i8], sc: &[S], group: usize, k: usize, r0: usize, nr: usize, nb: usize, v: &mut [f32; QK], put: &mut impl FnMut(usize, usize, &[f32; QK])) {
    for n in 0..nr {
        let r = r0 + n;
        let row = &qs[r * k..(r + 1) * k];
        let scales = &sc[r * (k / group)..(r + 1) * (k / group)];
        for b in 0..nb {
            for (g, (y, q)) in v.chunks_exact_mut(group).zip(row[b * QK..(b + 1) * QK].chunks_exact(group)).enumerate() {
                let s = scales[b * (QK / group) + g].get();
                for (y, &q) in y.iter_mut().zip(q) {
                    *y = s * f32::from(q);
                }
            }
            put(n, b, v);
        }
    }
}

#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Eight 16×64-byte tiles: tmm0-3 accumulate a 32×32 block of C, tmm4-5 hold A, tmm6-7 B.
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// `c[i][n] = Σ_k a[i][k] · b[k][n]` for the 32 × 32 block at activation rows `m0..m0 + 32` and the
/// panel's 32 columns, into `c` (four 16×16 f32 tiles: rows 0-15 × cols 0-15, 0-15 × 16-31,
/// 16-31 × 0-15, 16-31 × 16-31).
///
/// # Safety
/// [`available`] returned true and this thread loaded [`CONFIG`]; `a` holds rows `m0..m0 + 32` of
/// `kp` bf16 values, `panel` the two packed tile columns of `kp / 32` tiles each.
unsafe fn block(a: &[u16], m0: usize, kp: usize, panel: &[u32], c: &mut Acc) {
    debug_assert!(a.len() >= (m0 + 2 * TR) * kp && panel.len() >= kp * TR);
    let ks = kp / TK;
    // SAFETY (all blocks below): tile loads read 16 rows of 64 bytes inside `a` and `panel`
    // (checked above); stores write the 1 KiB tiles of `c`; the tile registers are this thread's.
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        // Packed A: the tile pair of rows m0..m0 + 32 starts at m0 · kp; step s at 2s, 2s + 1.
        let a0 = a.as_ptr().add(m0 * kp);
        let a1 = a0.add(TILE_U16);
        let b = panel.as_ptr();
        for s in 0..ks {
            asm!(
                "tileloadd tmm4, [{a0} + {sa} * 1]",
                "tileloadd tmm5, [{a1} + {sa} * 1]",
                "tileloadd tmm6, [{b0} + {sb} * 1]",
                "tileloadd tmm7, [{b1} + {sb} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(2 * s * TILE_U16),
                a1 = in(reg) a1.add(2 * s * TILE_U16),
                b0 = in(reg) b.add(2 * s * TR * TR),
                b1 = in(reg) b.add((2 * s + 1) * TR * TR),
                sa = in(reg) TK * 2,
                sb = in(reg) TK * 2,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c0} + {s} * 1], tmm0",
            "tilestored [{c1} + {s} * 1], tmm1",
            "tilestored [{c2} + {s} * 1], tmm2",
            "tilestored [{c3} + {s} * 1], tmm3",
            c0 = in(reg) c.0[0].as_mut_ptr(),
            c1 = in(reg) c.0[1].as_mut_ptr(),
            c2 = in(reg) c.0[2].as_mut_ptr(),
            c3 = in(reg) c.0[3].as_mut_ptr(),
            s = in(reg) TR * 4,
            options(nostack),
        );
    }
}

/// `len` elements of `v` starting at a 64-byte boundary (tile loads and stores of unaligned rows
/// split every cache line and run several times slower), growing `v` as needed.
fn aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    v.resize(len + 64 / std::mem::size_of::<T>(), T::default());
    let off = v.as_ptr().align_offset(64);
    &mut v[off..off + len]
}

/// Four accumulator tiles, aligned for `tilestored`.
#[repr(C, align(64))]
struct Acc([[f32; TR * TR]; 4]);

thread_local! {
    /// Per thread: one panel of dequantized rows and its packed tiles (reused between calls).
    static SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Per calling thread: the activations in bf16 (reused between calls).
    static ACTS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// [`super::matmul`] on the tile unit: `out[t][o] = Σ_i w[o][i] · x[t][i]` for the parts side by
/// side. Work is split over panels of 32 weight rows across the current rayon pool.
///
/// # Panics
/// [`available`] is false.
pub(super) fn matmul(parts: &[&QMatrix], x: &[f32], rows: usize, out: &mut [f32]) {
    assert!(available(), "AMX tile products are not available");
    let width: usize = parts.iter().map(|p| p.rows()).sum();
    let k = parts.first().map_or(0, |p| p.cols());
    if rows == 0 || width == 0 {
        return;
    }
    let kp = k.next_multiple_of(TK);
    let mp = rows.next_multiple_of(2 * TR);
    ACTS.with(|cell| {
        // A call nested in another on this thread (a task of a parallel loop) uses its own buffer.
        let mut own = Vec::new();
        let mut kept = cell.try_borrow_mut().ok();
        let a: &mut Vec<u16> = match kept.as_deref_mut() {
            Some(v) => v,
            None => &mut own,
        };
        products(parts, x, rows, k, kp, mp, width, a, out);
    });
}

/// [`matmul`] with its bf16 activation buffer `a`.
#[allow(clippy::too_many_arguments)]
fn products(parts: &[&QMatrix], x: &[f32], rows: usize, k: usize, kp: usize, mp: usize, width: usize, a: &mut Vec<u16>, out: &mut [f32]) {
    let a = aligned(a, mp * kp);
    // The rows past `rows` (in the last pair of tile rows and after it) stay zero.
    a[(rows / (2 * TR)) * 2 * TR * kp..].fill(0);
    // Whole tiles of rows per task (64 rows: four tile rows).
    let per = 64usize;
    a[..mp * kp].par_chunks_mut(per * kp).zip(x.par_chunks(per * k)).for_each(|(dst, src)| {
        // SAFETY: `available` implies AVX-512 F/BW (`Isa::Avx512Vnni`).
        unsafe { convert_rows(src, k, kp, dst) }
    });
    let a: &[u16] = a;
    // Tasks: GROUP panels of one part each; a task packs its panels once, then runs every pair of
    // activation tile rows against all of them, so those rows are read from L1 GROUP times.
    let panels: Vec<(usize, usize, usize)> = {
        let mut v = Vec::new();
        let mut c0 = 0;
        for (pi, p) in parts.iter().enumerate() {
            for r0 in (0..p.rows()).step_by(GROUP * PANEL) {
                v.push((pi, r0, c0));
            }
            c0 += p.rows();
        }
        v
    };
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |&(pi, r0, c0): &(usize, usize, usize)| {
        let w = parts[pi];
        let n_rows = (GROUP * PANEL).min(w.rows() - r0);
        let n_panels = n_rows.div_ceil(PANEL);
        let per_panel = kp * TR;
        SCRATCH.with_borrow_mut(|packed| {
            let packed = aligned(packed, n_panels * per_panel);
            for (g, dst) in packed.chunks_exact_mut(per_panel).enumerate() {
                let p0 = r0 + g * PANEL;
                // SAFETY: `available` implies AVX-512 F/BW.
                unsafe { pack_panel(w, p0, PANEL.min(w.rows() - p0), dst) };
            }
            let mut c = Acc([[0f32; TR * TR]; 4]);
            // SAFETY: `available()` (asserted above) enables the tile state; loading the
            // configuration sets this thread's tiles to the shapes `block` uses.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
            for m0 in (0..rows).step_by(2 * TR) {
                for (g, panel) in packed.chunks_exact(per_panel).enumerate() {
                    let (p0, nr) = (r0 + g * PANEL, PANEL.min(w.rows() - r0 - g * PANEL));
                    // SAFETY: the configuration is loaded; `a` holds `mp >= m0 + 32` rows of `kp`
                    // values and `panel` the panel's two tile columns.
                    unsafe { block(a, m0, kp, panel, &mut c) };
                    for (ti, tile) in c.0.iter().enumerate() {
                        let (dm, dn) = ((ti / 2) * TR, (ti % 2) * TR);
                        let cols = TR.min(nr.saturating_sub(dn));
                        for i in 0..TR.min(rows.saturating_sub(m0 + dm)) {
                            let row = (m0 + dm + i) * width + c0 + p0 + dn;
                            for n in 0..cols {
                                // SAFETY: row `m0 + dm + i < rows`, column `c0 + p0 + dn + n`
                                // inside this part's columns; each task writes only its own.
                                unsafe { *out_ptr.get().add(row + n) = tile[i * TR + n] };
                            }
                        }
                    }
                }
            }
            // SAFETY: releases this thread's tile state (no operands).
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        });
    };
    if panels.len() > 1 && rayon::current_num_threads() > 1 {
        panels.par_iter().for_each(run);
    } else {
        panels.iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timing probe run by hand on an AMX machine (`cargo test --release --lib speed_probe --
    /// --ignored --nocapture`): the product and its parts at training shapes. Asserts nothing.
    #[test]
    #[ignore]
    fn speed_probe() {
        if !available() {
            return;
        }
        for (m, k, n) in [(512usize, 576usize, 1536usize), (512, 1536, 576), (64, 576, 49152)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let wq = QMatrix::q8_from_f32(&w, n, k);
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
            let mut out = vec![0f32; m * n];
            matmul(&[&wq], &x, m, &mut out);
            let t0 = std::time::Instant::now();
            let reps = 5;
            for _ in 0..reps {
                matmul(&[&wq], &x, m, &mut out);
            }
            let dt = t0.elapsed().as_secs_f64() / reps as f64;
            eprintln!("{m}x{k}x{n}: {:.2} ms, {:.0} GMAC/s", dt * 1e3, (m * k * n) as f64 / dt / 1e9);
            // One thread: the parts.
            let kp = k.next_multiple_of(TK);
            let mut av = Vec::new();
            let a = aligned(&mut av, m.next_multiple_of(32) * kp);
            let t0 = std::time::Instant::now();
            unsafe { convert_rows(&x, k, kp, a) };
            let t_conv = t0.elapsed().as_secs_f64();
            let mut pv = Vec::new();
            let packed = aligned(&mut pv, kp * TR);
            let t0 = std::time::Instant::now();
            for r0 in (0..n).step_by(PANEL) {
                unsafe { pack_panel(&wq, r0, PANEL.min(n - r0), packed) };
            }
            let t_pack = t0.elapsed().as_secs_f64();
            let mut c = Acc([[0f32; TR * TR]; 4]);
            let t0 = std::time::Instant::now();
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
            for _ in (0..n).step_by(PANEL) {
                for m0 in (0..m).step_by(32) {
                    unsafe { block(a, m0, kp, packed, &mut c) };
                }
            }
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
            let t_mm = t0.elapsed().as_secs_f64();
            eprintln!("  one thread: convert {:.2} ms, dequantize and pack {:.2} ms, tiles {:.2} ms ({:.0} GMAC/s)", t_conv * 1e3, t_pack * 1e3, t_mm * 1e3, (m * k * n) as f64 / t_mm / 1e9);
        }
    }
}
