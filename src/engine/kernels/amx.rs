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
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Isa, QKind, QMatrix, Scale, Scales, SharedOut, QK};

/// Rows (and output columns) per tile.
pub(super) const TR: usize = 16;
/// bf16 values along the inner dimension per tile row (64 bytes).
pub(super) const TK: usize = 32;
/// Weight rows per task: two B tiles side by side.
pub(super) const PANEL: usize = 2 * TR;
/// Panels per task.
const GROUP: usize = 4;
/// u16 elements in one packed tile.
const TILE_U16: usize = TR * TK;

/// The bf16 unit the dense products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// AMX tiles (`tdpbf16ps`, 16×32 by 32×16 per instruction).
    Tiles,
    /// AVX512-BF16 vectors (`vdpbf16ps`, 16 lanes of pairs per instruction): CPUs without the tile
    /// unit, such as AMD Zen 4 and later.
    Vectors,
}

/// The bf16 unit for the dense products, detected once: the tile unit where the CPU has it and the
/// OS grants it (not with `AGENTLM_AMX=0`), else AVX512-BF16 vectors; none with `AGENTLM_BF16=0`,
/// an `AGENTLM_ISA` below AVX-512, or a CPU with neither.
pub(super) fn unit() -> Option<Unit> {
    static UNIT: OnceLock<Option<Unit>> = OnceLock::new();
    *UNIT.get_or_init(|| {
        // Sub-leaf 1 EAX bit 5: AVX512-BF16 (`vcvtne2ps2bf16`, the f32 to bf16 rounding both units
        // use, and `vdpbf16ps`). Leaf 7 is defined on the CPUs that report AVX-512.
        if super::switched_off("AGENTLM_BF16") || Isa::detected() != Isa::Avx512Vnni || std::arch::x86_64::__cpuid_count(7, 1).eax & (1 << 5) == 0 {
            return None;
        }
        if !super::switched_off("AGENTLM_AMX") && detect() {
            return Some(Unit::Tiles);
        }
        tracing::debug!("bf16 products on AVX512-BF16 vectors");
        Some(Unit::Vectors)
    })
}

/// Every bf16 unit this CPU can run the dense products on, whatever the environment asks (for
/// tests that compare them).
#[cfg(test)]
pub(super) fn units() -> Vec<Unit> {
    let mut v = Vec::new();
    if Isa::best() == Isa::Avx512Vnni && std::arch::x86_64::__cpuid_count(7, 1).eax & (1 << 5) != 0 {
        v.push(Unit::Vectors);
        if detect() {
            v.push(Unit::Tiles);
        }
    }
    v
}

/// Whether AMX bf16 tile products can run here (detected and granted once; see [`unit`]).
pub(super) fn available() -> bool {
    unit() == Some(Unit::Tiles)
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

/// f32 to bf16, rounding to nearest even (NaN stays NaN), as `vcvtne2ps2bf16` rounds normal values.
#[cfg(test)]
pub(super) fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// 32 f32 values (`lo`: the first 16) rounded to bf16 (nearest even; subnormal values become zero)
/// as 16 words, word `p` holding values `2p` (low half) and `2p + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn bf16_pairs(lo: __m512, hi: __m512) -> __m512i {
    // The intrinsic's lower 16 results come from its second operand.
    // SAFETY: both types are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
}

/// Up to 32 values of `src` (zero past its end) as [`bf16_pairs`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pairs_of(src: &[f32]) -> __m512i {
    let (lo, hi) = halves(src);
    bf16_pairs(lo, hi)
}

/// Up to 32 values of `src` (zero past its end) as two vectors of 16.
#[inline]
#[target_feature(enable = "avx512f")]
fn halves(src: &[f32]) -> (__m512, __m512) {
    let n = src.len().min(TK);
    let lo_mask = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
    let hi_mask = if n >= TK {
        0xFFFF
    } else if n > 16 {
        (1u16 << (n - 16)) - 1
    } else {
        0
    };
    // SAFETY: the masks cover only the first `n <= src.len()` values; masked lanes are not read.
    unsafe { (_mm512_maskz_loadu_ps(lo_mask, src.as_ptr()), _mm512_maskz_loadu_ps(hi_mask, src.as_ptr().wrapping_add(16))) }
}

/// What [`pairs_of`] loses to rounding: up to 32 values of `src` minus their bf16 roundings, as
/// [`bf16_pairs`] (a value is then the sum of its two bf16 parts to within 2^-16 of itself).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn residual_pairs_of(src: &[f32]) -> __m512i {
    let (lo, hi) = halves(src);
    bf16_pairs(residual(lo), residual(hi))
}

/// Each value minus its bf16 rounding (nearest even, as [`bf16_pairs`] rounds).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn residual(v: __m512) -> __m512 {
    // SAFETY: both types are 256 bits of plain data.
    let rounded = unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) };
    _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16)))
}

/// Transposes 16 rows of 16 words in place.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512i; 16]) {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // Row 4i + c: column c of rows 4i..4i + 4 in each 128-bit lane l (as words 4l + c).
    for i in 0..4 {
        for h in 0..2 {
            r[4 * i + 2 * h] = _mm512_unpacklo_epi64(t[4 * i + h], t[4 * i + 2 + h]);
            r[4 * i + 2 * h + 1] = _mm512_unpackhi_epi64(t[4 * i + h], t[4 * i + 2 + h]);
        }
    }
    // Output row 4l + c is lane l of rows c, 4 + c, 8 + c, 12 + c: gather the lanes in two steps
    // (even and odd lanes of row pairs, then of their results).
    for i in 0..2 {
        for c in 0..4 {
            let (a, b) = (r[8 * i + c], r[8 * i + 4 + c]);
            t[8 * i + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b);
            t[8 * i + 4 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b);
        }
    }
    for c in 0..4 {
        for h in 0..2 {
            let (a, b) = (t[4 * h + c], t[8 + 4 * h + c]);
            r[4 * h + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b);
            r[8 + 4 * h + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b);
        }
    }
}

/// `rows` rows of `k` f32 values (`x`) as the A operand: tile `(i, s)` (rows `16i..16i + 16`,
/// values `32s..32s + 32`) at `((i / 2 · ks + s) · 2 + i % 2) · TILE_U16` (the two tiles of a pair of
/// tile rows side by side), row-major inside the tile, so each step of [`block`] reads 2 KiB in a
/// row. Zero past `k` values; `out` holds whole tiles for these rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn convert_rows(x: &[f32], k: usize, kp: usize, out: &mut [u16]) {
    let ks = kp / TK;
    for (r, src) in x.chunks_exact(k).enumerate() {
        let (i, row) = (r / TR, r % TR);
        for s in 0..ks {
            let tile = ((i / 2) * ks + s) * 2 + i % 2;
            let at = tile * TILE_U16 + row * TK;
            let dst = &mut out[at..at + TK];
            let v = pairs_of(&src[(s * TK).min(k)..]);
            // SAFETY: `dst` is 32 u16 values (64 bytes), the store's width.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
        }
    }
}

/// Packs weight rows `r0..r0 + nr` (`nr <= PANEL`) of `w` as the B operand of two tile columns,
/// dequantizing as [`QMatrix::dequantize_row`] does: tile `(j, s)` (the j-th 16 rows, the s-th 32
/// values) at `(2s + j) · 256` words (the two tiles of a step side by side), its row `p` holding for
/// each of the 16 weight rows `n` the bf16 pair of values `32s + 2p`, `32s + 2p + 1` in one 32-bit
/// word. Zero past `nr` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) fn pack_panel(w: &QMatrix, r0: usize, nr: usize, out: &mut [u32]) {
    let k = w.cols();
    let nb = k / QK;
    for j in 0..2 {
        let (rows, out) = (TR.min(nr.saturating_sub(j * TR)), &mut *out);
        let at = |s: usize| (2 * s + j) * TR * TR;
        let row = |c: usize| r0 + j * TR + c;
        match w.kind() {
            QKind::Q4 { qs, d: Scales::F16(d), m: Scales::F16(m), centered } => tiles(rows, k, out, at, |c, b| q4_block(qs, d, m, *centered, row(c) * nb + b)),
            QKind::Q4 { qs, d: Scales::F32(d), m: Scales::F32(m), centered } => tiles(rows, k, out, at, |c, b| q4_block(qs, d, m, *centered, row(c) * nb + b)),
            QKind::Q4 { .. } => unreachable!("Q4 scale and offset share one width"),
            QKind::Q8 { qs, s: Scales::F16(sc), group } => tiles(rows, k, out, at, |c, b| q8_block(qs, sc, *group, row(c) * k + b * QK)),
            QKind::Q8 { qs, s: Scales::F32(sc), group } => tiles(rows, k, out, at, |c, b| q8_block(qs, sc, *group, row(c) * k + b * QK)),
            QKind::U8 { qs, d, m } => tiles(rows, k, out, at, |c, b| u8_block(qs, d, m, k, row(c), b)),
            QKind::F32 { w } => tiles(rows, k, out, at, |c, b| pairs_of(&w[row(c) * k + b * QK..(row(c) + 1) * k])),
        }
    }
}

/// 16 bytes at `at` widened to 16 i32 lanes (`signed`: as i8).
#[inline]
#[target_feature(enable = "avx512f")]
fn widen(bytes: &[u8], at: usize, signed: bool) -> __m512i {
    let b: &[u8; 16] = bytes[at..at + 16].try_into().expect("16 bytes");
    // SAFETY: `b` is 16 readable bytes.
    let v = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    if signed {
        _mm512_cvtepi8_epi32(v)
    } else {
        _mm512_cvtepu8_epi32(v)
    }
}

/// [`QKind::Q4`] block `blk` as bf16 pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn q4_block<S: Scale>(qs: &[u8], d: &[S], m: &[S], centered: bool, blk: usize) -> __m512i {
    let x = widen(qs, blk * 16, false);
    let db = d[blk].get();
    let mb = if centered { -8.0 * db } else { m[blk].get() };
    let (dv, mv) = (_mm512_set1_ps(db), _mm512_set1_ps(mb));
    let lo = _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xF)));
    let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(x));
    // Multiply, then add (not fused): the values of `dequantize_row`, bit for bit.
    bf16_pairs(_mm512_add_ps(_mm512_mul_ps(dv, lo), mv), _mm512_add_ps(_mm512_mul_ps(dv, hi), mv))
}

/// [`QKind::Q8`] block at value `at` (a multiple of 32) as bf16 pairs, `group` 16 or 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn q8_block<S: Scale>(qs: &[i8], sc: &[S], group: usize, at: usize) -> __m512i {
    debug_assert!(matches!(group, 16 | 32), "Q8 scales cover 16 or 32 values");
    // SAFETY: i8 and u8 have one layout.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(qs.as_ptr().cast(), qs.len()) };
    let (s0, s1) = (sc[at / group].get(), sc[(at + 16) / group].get());
    let lo = _mm512_mul_ps(_mm512_set1_ps(s0), _mm512_cvtepi32_ps(widen(bytes, at, true)));
    let hi = _mm512_mul_ps(_mm512_set1_ps(s1), _mm512_cvtepi32_ps(widen(bytes, at + 16, true)));
    bf16_pairs(lo, hi)
}

/// [`QKind::U8`] block `b` of row `r` as bf16 pairs (see [`super::pair_lane`] for the order).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn u8_block(qs: &[u8], d: &[f32], m: &[f32], k: usize, r: usize, b: usize) -> __m512i {
    let nb = k / QK;
    let row = r * k;
    // Byte offsets of values 0-15 and 16-31: [b0 0-15, b1 0-15, b0 16-31, b1 16-31] per pair.
    let (lo_at, hi_at) = if b % 2 == 1 {
        ((b - 1) * QK + 16, (b - 1) * QK + 48)
    } else if b + 1 < nb {
        (b * QK, b * QK + 32)
    } else {
        (b * QK, b * QK + 16)
    };
    let (dv, mv) = (_mm512_set1_ps(d[r * nb + b]), _mm512_set1_ps(m[r * nb + b]));
    let lo = _mm512_add_ps(_mm512_mul_ps(dv, _mm512_cvtepi32_ps(widen(qs, row + lo_at, false))), mv);
    let hi = _mm512_add_ps(_mm512_mul_ps(dv, _mm512_cvtepi32_ps(widen(qs, row + hi_at, false))), mv);
    bf16_pairs(lo, hi)
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
    // SAFETY: tile loads read 16 rows of 64 bytes inside `a` and `panel` (checked above); stores
    // write the 1 KiB tiles of `c`; the tile registers are this thread's.
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

/// Activation rows per pass of [`block_vectors`] (eight rows by the panel's 32 columns: sixteen
/// accumulators).
const VEC_ROWS: usize = 8;

/// [`block`] on AVX512-BF16 vectors: the same operands, the same result. For each group of
/// [`VEC_ROWS`] rows, every step broadcasts a row's bf16 pair of values `2p`, `2p + 1` and
/// multiplies it with the panel's tile rows `p` (each column's pair of weights, 16 columns per
/// register) into that row's two accumulators.
///
/// # Safety
/// The CPU supports AVX-512 F and AVX512-BF16; `a` and `panel` as for [`block`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block_vectors(a: &[u16], m0: usize, kp: usize, panel: &[u32], c: &mut Acc) {
    debug_assert!(a.len() >= (m0 + 2 * TR) * kp && panel.len() >= kp * TR);
    let ks = kp / TK;
    for r0 in (0..2 * TR).step_by(VEC_ROWS) {
        let mut acc = [[_mm512_setzero_ps(); 2]; VEC_ROWS];
        for s in 0..ks {
            // Tile (i, s) of A for the tile row i holding rows m0 + r0.. (see `convert_rows`); its
            // row r holds 16 words (pairs of values), row after row.
            let tile = ((m0 / (2 * TR)) * ks + s) * 2 + r0 / TR;
            // SAFETY: tile `tile` lies inside `a` (rows m0..m0 + 32 of `kp` values), and the
            // panel's step s inside `panel` (the caller's contract); every load below reads inside
            // them: rows `r0 % TR + r < TR` of the A tile, rows `p < TR` of the two B tiles.
            unsafe {
                let arow = a.as_ptr().add(tile * TILE_U16 + (r0 % TR) * TK).cast::<i32>();
                let b = panel.as_ptr().add(2 * s * TR * TR);
                for p in 0..TR {
                    let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * TR).cast()));
                    let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(TR * TR + p * TR).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*arow.add(r * TR + p)));
                        acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = r0 + r;
            for (j, v) in acc.iter().enumerate() {
                let tile = &mut c.0[(row / TR) * 2 + j][(row % TR) * TR..(row % TR + 1) * TR];
                // SAFETY: `tile` is 16 f32 values.
                unsafe { _mm512_storeu_ps(tile.as_mut_ptr(), *v) };
            }
        }
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

/// [`super::matmul`] in bf16 on this CPU's [`unit`]: `out[t][o] = Σ_i w[o][i] · x[t][i]` for the
/// parts side by side. Work is split over panels of 32 weight rows across the current rayon pool.
///
/// # Panics
/// There is no bf16 unit ([`unit`] is `None`).
pub(super) fn matmul(parts: &[&QMatrix], x: &[f32], rows: usize, out: &mut [f32]) {
    matmul_on(unit().expect("no bf16 product unit on this CPU"), parts, x, rows, out)
}

/// [`matmul`] on a chosen unit (one of [`units`]: the tiles only once [`detect`] granted them).
pub(super) fn matmul_on(unit: Unit, parts: &[&QMatrix], x: &[f32], rows: usize, out: &mut [f32]) {
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
        products(unit, parts, x, rows, k, kp, mp, width, a, out);
    });
}

/// [`matmul`] with its bf16 activation buffer `a`.
#[allow(clippy::too_many_arguments)]
fn products(unit: Unit, parts: &[&QMatrix], x: &[f32], rows: usize, k: usize, kp: usize, mp: usize, width: usize, a: &mut Vec<u16>, out: &mut [f32]) {
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
    // Tasks: up to GROUP panels of one part each; a task packs its panels once, then runs every
    // pair of activation tile rows against all of them, so those rows are read from L1 that many
    // times. The group shrinks so that the threads get equal shares (576 rows are 18 panels: five
    // tasks of four would leave one of two threads 10 panels and the other 8; six of three, 9 each).
    let threads = rayon::current_num_threads().max(1);
    let total: usize = parts.iter().map(|p| p.rows().div_ceil(PANEL)).sum();
    let group = total.div_ceil(threads * total.div_ceil(threads * GROUP)).clamp(1, GROUP);
    let panels: Vec<(usize, usize, usize)> = {
        let mut v = Vec::new();
        let mut c0 = 0;
        for (pi, p) in parts.iter().enumerate() {
            for r0 in (0..p.rows()).step_by(group * PANEL) {
                v.push((pi, r0, c0));
            }
            c0 += p.rows();
        }
        v
    };
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run = |&(pi, r0, c0): &(usize, usize, usize)| {
        let w = parts[pi];
        let n_rows = (group * PANEL).min(w.rows() - r0);
        let n_panels = n_rows.div_ceil(PANEL);
        let per_panel = kp * TR;
        SCRATCH.with_borrow_mut(|packed| {
            let packed = aligned(packed, n_panels * per_panel);
            for (g, dst) in packed.chunks_exact_mut(per_panel).enumerate() {
                let p0 = r0 + g * PANEL;
                // SAFETY: `available` implies AVX-512 F/BW/BF16.
                unsafe { pack_panel(w, p0, PANEL.min(w.rows() - p0), dst) };
            }
            let mut c = Acc([[0f32; TR * TR]; 4]);
            if unit == Unit::Tiles {
                // SAFETY: the tile unit is available (`unit`); loading the configuration sets
                // this thread's tiles to the shapes `block` uses.
                // SAFETY: the tile unit is available and granted (checked at the start).
                unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
            }
            for m0 in (0..rows).step_by(2 * TR) {
                for (g, panel) in packed.chunks_exact(per_panel).enumerate() {
                    let (p0, nr) = (r0 + g * PANEL, PANEL.min(w.rows() - r0 - g * PANEL));
                    // SAFETY: `a` holds `mp >= m0 + 32` rows of `kp` values and `panel` the
                    // panel's two tile columns; for the tiles the configuration is loaded, for the
                    // vectors the CPU has AVX512-BF16 (`unit`).
                    match unit {
                        // SAFETY: as above.
                        Unit::Tiles => unsafe { block(a, m0, kp, panel, &mut c) },
                        // SAFETY: as above.
                        Unit::Vectors => unsafe { block_vectors(a, m0, kp, panel, &mut c) },
                    }
                    // SAFETY: rows `m0..rows`, this panel's columns `c0 + p0..c0 + p0 + nr` of
                    // `out` (row stride `width`); each task writes only its own columns;
                    // `available` implies AVX-512 F.
                    unsafe { write_block(&c, out_ptr.get().add(m0 * width + c0 + p0), width, rows - m0, nr, false, 1.0) };
                }
            }
            if unit == Unit::Tiles {
                // SAFETY: releases this thread's tile state (no operands).
                // SAFETY: releases this thread's tile state.
                unsafe { asm!("tilerelease", options(nostack, nomem)) };
            }
        });
    };
    if panels.len() > 1 && rayon::current_num_threads() > 1 {
        panels.par_iter().for_each(run);
    } else {
        panels.iter().for_each(run);
    }
}

/// Writes the 32 × 32 block in `c` to `dst` (row stride `rs`): rows below `m`, columns below `n`,
/// `alpha` times the block, added to what is there when `acc`.
///
/// # Safety
/// Rows `0..m.min(32)` and columns `0..n.min(32)` at `dst` (stride `rs`) are writable (and
/// readable when `acc`), and no other thread touches them meanwhile.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn write_block(c: &Acc, dst: *mut f32, rs: usize, m: usize, n: usize, acc: bool, alpha: f32) {
    let va = _mm512_set1_ps(alpha);
    for (ti, tile) in c.0.iter().enumerate() {
        let (dm, dn) = ((ti / 2) * TR, (ti % 2) * TR);
        let cols = TR.min(n.saturating_sub(dn));
        if cols == 0 {
            continue;
        }
        let mask = if cols == TR { 0xFFFF } else { (1u16 << cols) - 1 };
        for r in 0..TR.min(m.saturating_sub(dm)) {
            // SAFETY: row `dm + r < m`, columns `dn..dn + cols` (masked): inside the caller's
            // region; the tile row is 64-byte aligned (`Acc`).
            unsafe {
                let p = dst.add((dm + r) * rs + dn);
                let mut v = _mm512_load_ps(tile[r * TR..].as_ptr());
                if alpha != 1.0 {
                    v = _mm512_mul_ps(va, v);
                }
                if acc {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p));
                }
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

/// Aligned storage: a vector and the offset of its first 64-byte boundary.
#[derive(Debug, Default)]
struct AlignedBuf<T> {
    v: Vec<T>,
    off: usize,
}

impl<T: Copy + Default> AlignedBuf<T> {
    /// `len` elements starting at a 64-byte boundary, holding whatever an earlier use left (the
    /// packers write every element, padding included): storage grows, never shrinks or clears.
    fn storage(&mut self, len: usize) -> &mut [T] {
        let want = len + 64 / std::mem::size_of::<T>();
        if self.v.len() < want {
            self.v.resize(want, T::default());
        }
        self.off = self.v.as_ptr().align_offset(64);
        &mut self.v[self.off..self.off + len]
    }
    fn get(&self) -> &[T] {
        &self.v[self.off.min(self.v.len())..]
    }
}

/// An f32 matrix rounded to bf16 as the left operand (A) of [`tile_product`]: rows padded to a
/// multiple of 32 and the inner dimension to a multiple of 32 with zeros; tile `(i, s)` (rows
/// `16i..16i + 16`, values `32s..32s + 32`) at `(i · ks + s) · 512` values, row-major. Reusable.
#[derive(Debug, Default)]
pub struct TilesA {
    buf: AlignedBuf<u16>,
    rows: usize,
    ks: usize,
}

/// An f32 matrix rounded to bf16 as the right operand (B) of [`tile_product`]: `k` (padded to 32)
/// by `n` (padded to 32); tile `(s, j)` (values `32s..32s + 32` of columns `16j..16j + 16`) at
/// `(j · ks + s) · 256` words, its row `p` holding for each column the bf16 pair of values
/// `32s + 2p`, `32s + 2p + 1` in one word. Reusable.
#[derive(Debug, Default)]
pub struct TilesB {
    buf: AlignedBuf<u32>,
    cols: usize,
    ks: usize,
}

impl TilesA {
    /// Rows `0..rows` of `k` values, row `i` at `src[i · stride..]`.
    ///
    /// # Panics
    /// The tile unit is not [`available`], or `src` is too short.
    pub fn pack(&mut self, src: &[f32], rows: usize, k: usize, stride: usize) {
        self.pack_part(src, rows, k, stride, false);
    }

    /// As [`TilesA::pack`], each value minus its bf16 rounding: a product with this operand added
    /// to one with the rounded operand gives the product of the f32 values to within 2^-16 of each
    /// term's size, where the rounded one alone is within 2^-8 (the second operand may be split
    /// the same way: the "bf16x3" product sums three).
    ///
    /// # Panics
    /// As [`TilesA::pack`].
    pub fn pack_residual(&mut self, src: &[f32], rows: usize, k: usize, stride: usize) {
        self.pack_part(src, rows, k, stride, true);
    }

    fn pack_part(&mut self, src: &[f32], rows: usize, k: usize, stride: usize, residual: bool) {
        assert!(available(), "AMX tile products are not available");
        assert!(rows == 0 || (rows - 1) * stride + k <= src.len(), "TilesA::pack: source too short");
        let (rp, ks) = (rows.next_multiple_of(2 * TR), k.div_ceil(TK));
        (self.rows, self.ks) = (rp, ks);
        let out = self.buf.storage(rp / TR * ks * TILE_U16);
        // SAFETY: `available` implies AVX-512 F/BW/BF16.
        unsafe { pack_a(src, rows, k, stride, ks, residual, out) };
    }

    /// The transpose of `src`'s `k` rows of `rows` values (row `j` at `src[j · stride..]`): row `i`
    /// of this operand is column `i` of `src`.
    ///
    /// # Panics
    /// As [`TilesA::pack`].
    pub fn pack_transposed(&mut self, src: &[f32], rows: usize, k: usize, stride: usize, scratch: &mut Vec<f32>) {
        assert!(k == 0 || (k - 1) * stride + rows <= src.len(), "TilesA::pack_transposed: source too short");
        // Every value is written below.
        scratch.resize(rows * k, 0.0);
        for j in 0..k {
            for (i, &v) in src[j * stride..j * stride + rows].iter().enumerate() {
                scratch[i * k + j] = v;
            }
        }
        let t = std::mem::take(scratch);
        self.pack(&t, rows, k, k);
        *scratch = t;
    }
}

impl TilesB {
    /// The `k × n` matrix whose column `j` is row `j` of `src` (`n` rows of `k` values, row `j` at
    /// `src[j · stride..]`): `B = srcᵀ`, as weights are used.
    ///
    /// # Panics
    /// The tile unit is not [`available`], or `src` is too short.
    pub fn pack_rows(&mut self, src: &[f32], n: usize, k: usize, stride: usize) {
        self.pack_rows_part(src, n, k, stride, false);
    }

    /// As [`TilesB::pack_rows`], each value minus its bf16 rounding (see
    /// [`TilesA::pack_residual`]).
    ///
    /// # Panics
    /// As [`TilesB::pack_rows`].
    pub fn pack_rows_residual(&mut self, src: &[f32], n: usize, k: usize, stride: usize) {
        self.pack_rows_part(src, n, k, stride, true);
    }

    fn pack_rows_part(&mut self, src: &[f32], n: usize, k: usize, stride: usize, residual: bool) {
        assert!(n == 0 || (n - 1) * stride + k <= src.len(), "TilesB::pack_rows: source too short");
        let (out, ks) = self.layout(k, n);
        // SAFETY: `layout` asserted `available`, which implies AVX-512 F/BW/BF16.
        unsafe { pack_b_rows(src, n, k, stride, ks, residual, out) };
    }

    /// Storage for a `k × n` operand (both padded to 32) and its steps of 32 values.
    ///
    /// # Panics
    /// The tile unit is not [`available`].
    fn layout(&mut self, k: usize, n: usize) -> (&mut [u32], usize) {
        assert!(available(), "AMX tile products are not available");
        let (np, ks) = (n.next_multiple_of(2 * TR), k.div_ceil(TK));
        (self.cols, self.ks) = (np, ks);
        (self.buf.storage(np / TR * ks * TR * TR), ks)
    }

    /// The `k × n` matrix `src` (`k` rows of `n` values, row `p` at `src[p · stride..]`).
    ///
    /// # Panics
    /// As [`TilesB::pack_rows`].
    pub fn pack(&mut self, src: &[f32], k: usize, n: usize, stride: usize) {
        self.pack_part(src, k, n, stride, false);
    }

    /// As [`TilesB::pack`], each value minus its bf16 rounding (see [`TilesA::pack_residual`]).
    ///
    /// # Panics
    /// As [`TilesB::pack`].
    pub fn pack_residual(&mut self, src: &[f32], k: usize, n: usize, stride: usize) {
        self.pack_part(src, k, n, stride, true);
    }

    fn pack_part(&mut self, src: &[f32], k: usize, n: usize, stride: usize, residual: bool) {
        assert!(k == 0 || (k - 1) * stride + n <= src.len(), "TilesB::pack: source too short");
        let (out, ks) = self.layout(k, n);
        // SAFETY: `layout` asserted `available`, which implies AVX-512 F/BW/BF16.
        unsafe { pack_b(src, k, n, stride, ks, residual, out) };
    }
}

/// [`TilesA::pack`]'s conversion.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_a(src: &[f32], rows: usize, k: usize, stride: usize, ks: usize, residual: bool, out: &mut [u16]) {
    // Padding rows: zero.
    for i in rows..rows.next_multiple_of(2 * TR) {
        for s in 0..ks {
            let at = ((i / TR) * ks + s) * TILE_U16 + (i % TR) * TK;
            out[at..at + TK].fill(0);
        }
    }
    for i in 0..rows {
        let row = &src[i * stride..i * stride + k];
        for s in 0..ks {
            let at = ((i / TR) * ks + s) * TILE_U16 + (i % TR) * TK;
            let v = if residual { residual_pairs_of(&row[s * TK..]) } else { pairs_of(&row[s * TK..]) };
            // SAFETY: 32 u16 values (64 bytes) at `at` lie inside `out` (whole tiles).
            unsafe { _mm512_storeu_si512(out[at..at + TK].as_mut_ptr().cast(), v) };
        }
    }
}

/// One tile column of a B operand from rows of values: `pairs(c, s)` gives column `c`'s values
/// `32s..32s + 32` as [`bf16_pairs`] (`c < rows`; zero after), transposed into the tile of step `s`
/// at word `at(s)` of `out`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn tiles(rows: usize, k: usize, out: &mut [u32], at: impl Fn(usize) -> usize, pairs: impl Fn(usize, usize) -> __m512i) {
    let mut r = [_mm512_setzero_si512(); 16];
    for s in 0..k.div_ceil(TK) {
        for (c, reg) in r.iter_mut().enumerate() {
            *reg = if c < rows { pairs(c, s) } else { _mm512_setzero_si512() };
        }
        transpose16(&mut r);
        for (p, reg) in r.iter().enumerate() {
            // SAFETY: row `p` of tile `s` is 16 words (64 bytes) inside `out`.
            unsafe { _mm512_storeu_si512(out[at(s) + p * TR..][..TR].as_mut_ptr().cast(), *reg) };
        }
    }
}

/// [`TilesB::pack_rows`]'s conversion.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_b_rows(src: &[f32], n: usize, k: usize, stride: usize, ks: usize, residual: bool, out: &mut [u32]) {
    for (j, col) in out.chunks_exact_mut(ks * TR * TR).enumerate() {
        let rows = TR.min(n.saturating_sub(j * TR));
        let values = |c: usize, s: usize| &src[(j * TR + c) * stride + s * TK..(j * TR + c) * stride + k];
        if residual {
            tiles(rows, k, col, |s| s * TR * TR, |c, s| residual_pairs_of(values(c, s)));
        } else {
            tiles(rows, k, col, |s| s * TR * TR, |c, s| pairs_of(values(c, s)));
        }
    }
}

/// [`TilesB::pack`]'s conversion: rows `2p`, `2p + 1` of each 32-row step interleaved by column.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_b(src: &[f32], k: usize, n: usize, stride: usize, ks: usize, residual_part: bool, out: &mut [u32]) {
    // Word c: bf16 lane c (row 2p) and lane 16 + c (row 2p + 1).
    let idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    let load = |r: usize, j: usize| -> __m512 {
        if r >= k {
            return _mm512_setzero_ps();
        }
        let cols = TR.min(n.saturating_sub(j * TR));
        let mask = if cols >= TR { 0xFFFF } else { (1u16 << cols) - 1 };
        // SAFETY: the mask covers columns `16j..16j + cols` of row `r`, inside `src` (checked by
        // the caller: `(k - 1) · stride + n <= src.len()`).
        unsafe { _mm512_maskz_loadu_ps(mask, src.as_ptr().add(r * stride + j * TR)) }
    };
    // A padding group of 16 columns: zero.
    out[n.div_ceil(TR) * ks * TR * TR..].fill(0);
    for j in 0..n.div_ceil(TR) {
        for s in 0..ks {
            let tile = &mut out[(j * ks + s) * TR * TR..(j * ks + s + 1) * TR * TR];
            for p in 0..TR {
                let (mut r0, mut r1) = (load(s * TK + 2 * p, j), load(s * TK + 2 * p + 1, j));
                if residual_part {
                    (r0, r1) = (residual(r0), residual(r1));
                }
                let both = bf16_pairs(r0, r1);
                let v = _mm512_permutexvar_epi16(idx, both);
                // SAFETY: row `p` of the tile is 16 words (64 bytes).
                unsafe { _mm512_storeu_si512(tile[p * TR..].as_mut_ptr().cast(), v) };
            }
        }
    }
}

/// `dst[i · dst_rs + j] (+)= alpha · Σ_p A[a_row0 + i][a_k0 + p] · B[p][j]` for `i < m`, `j < n`,
/// `p < k` (`acc`: add to `dst`, else overwrite), on the tile unit. `a_row0` and `a_k0` are
/// multiples of 32; the operands' padding is zero, so `k` may end inside a 32-value step.
///
/// # Panics
/// The tile unit is not [`available`], or an operand or `dst` is too small.
#[allow(clippy::too_many_arguments)]
pub fn tile_product(a: &TilesA, a_row0: usize, m: usize, a_k0: usize, b: &TilesB, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, acc: bool, alpha: f32) {
    assert!(available(), "AMX tile products are not available");
    if m == 0 || n == 0 {
        return;
    }
    let ks = k.div_ceil(TK);
    assert!(a_row0.is_multiple_of(2 * TR) && a_k0.is_multiple_of(TK), "tile_product: A offsets must be multiples of 32");
    assert!(a_row0 + m <= a.rows && a_k0 / TK + ks <= a.ks, "tile_product: A too small");
    assert!(n <= b.cols && ks <= b.ks, "tile_product: B too small");
    assert!((m - 1) * dst_rs + n <= dst.len(), "tile_product: destination too small");
    let (pa, pb) = (a.buf.get(), b.buf.get());
    assert!(pa.len() >= a.rows / TR * a.ks * TILE_U16 && pb.len() >= b.cols / TR * b.ks * TR * TR, "tile_product: operand storage");
    // SAFETY: `available` (asserted) enables the tile state and implies AVX-512 F; the checks
    // above keep every tile load inside the operands and every store inside `dst`.
    unsafe { dense_blocks(pa, a.ks, a_row0 / TR, a_k0 / TK, pb, b.ks, m, n, ks, dst, dst_rs, acc, alpha) };
}

/// [`tile_product`]'s loop over 32 × 32 blocks of the result.
///
/// # Safety
/// The tile state is granted; the operands hold the tiles the block indices reach (see
/// [`tile_product`]'s checks).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn dense_blocks(
    pa: &[u16],
    aks: usize,
    ai0: usize,
    as0: usize,
    pb: &[u32],
    bks: usize,
    m: usize,
    n: usize,
    ks: usize,
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    alpha: f32,
) {
    let mut c = Acc([[0f32; TR * TR]; 4]);
    // SAFETY: loading the configuration sets this thread's tiles to the shapes used below.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
    for m0 in (0..m).step_by(2 * TR) {
        let i = ai0 + m0 / TR;
        for n0 in (0..n).step_by(2 * TR) {
            let j = n0 / TR;
            // SAFETY: tiles (i, as0 + s), (i + 1, as0 + s) of A and (s, j), (s, j + 1) of B exist
            // (the caller's checks: rows and columns padded to 32, steps up to ks); the stores
            // write the 1 KiB tiles of `c`.
            unsafe {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
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
                        a0 = in(reg) pa.as_ptr().add((i * aks + as0 + s) * TILE_U16),
                        a1 = in(reg) pa.as_ptr().add(((i + 1) * aks + as0 + s) * TILE_U16),
                        b0 = in(reg) pb.as_ptr().add((j * bks + s) * TR * TR),
                        b1 = in(reg) pb.as_ptr().add(((j + 1) * bks + s) * TR * TR),
                        sa = in(reg) TK * 2,
                        sb = in(reg) TR * 4,
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
            // SAFETY: the block's rows `m0..` and columns `n0..` (bounded by `m`, `n`) lie inside
            // `dst` (the caller checked `(m - 1) · dst_rs + n <= dst.len()`).
            unsafe { write_block(&c, dst.as_mut_ptr().add(m0 * dst_rs + n0), dst_rs, m - m0, n - n0, acc, alpha) };
        }
    }
    // SAFETY: releases this thread's tile state (no operands).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector rounding is the scalar definition's (nearest even, NaN kept), value pairs in
    /// order, zeros past the values given.
    #[test]
    fn vector_rounding_is_the_scalar_one() {
        if !available() {
            eprintln!("no AMX here: packing not checked");
            return;
        }
        let vals: Vec<f32> = (0..40u32)
            .map(|i| match i {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::from_bits(0x3F80_8000), // a tie: rounds to even
                3 => f32::from_bits(0x3F81_8000),
                _ => (i as f32 * 0.377).sin() * 3.0,
            })
            .collect();
        for n in [32usize, 20, 7] {
            let mut got = [0u32; 16];
            // SAFETY: `available` implies AVX-512 F/BW/BF16.
            unsafe { _mm512_storeu_si512(got.as_mut_ptr().cast(), pairs_of(&vals[..n])) };
            for (p, &w) in got.iter().enumerate() {
                for h in 0..2 {
                    let i = 2 * p + h;
                    let want = if i < n { bf16(vals[i]) } else { 0 };
                    let have = (w >> (16 * h)) as u16;
                    if vals[i.min(n - 1)].is_nan() && i < n {
                        assert!(f32::from_bits(u32::from(have) << 16).is_nan());
                    } else {
                        assert_eq!(have, want, "value {i} of {n}");
                    }
                }
            }
        }
    }

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
            // SAFETY: the test returned early unless the tile unit (and so AVX-512 F/BW/BF16) is available.
            unsafe { convert_rows(&x, k, kp, a) };
            let t_conv = t0.elapsed().as_secs_f64();
            let mut pv = Vec::new();
            let packed = aligned(&mut pv, kp * TR);
            let t0 = std::time::Instant::now();
            for r0 in (0..n).step_by(PANEL) {
                // SAFETY: as above; `packed` holds one panel.
                unsafe { pack_panel(&wq, r0, PANEL.min(n - r0), packed) };
            }
            let t_pack = t0.elapsed().as_secs_f64();
            let mut c = Acc([[0f32; TR * TR]; 4]);
            let t0 = std::time::Instant::now();
            // SAFETY: the tile unit is available and granted (checked at the start).
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
            for _ in (0..n).step_by(PANEL) {
                for m0 in (0..m).step_by(32) {
                    // SAFETY: the configuration is loaded; `a` holds the rows rounded up to 32 and `packed` one panel.
                    unsafe { block(a, m0, kp, packed, &mut c) };
                }
            }
            // SAFETY: releases this thread's tile state.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
            let t_mm = t0.elapsed().as_secs_f64();
            eprintln!(
                "  one thread: convert {:.2} ms, dequantize and pack {:.2} ms, tiles {:.2} ms ({:.0} GMAC/s)",
                t_conv * 1e3,
                t_pack * 1e3,
                t_mm * 1e3,
                (m * k * n) as f64 / t_mm / 1e9
            );
        }
    }
}
