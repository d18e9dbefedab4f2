//! Block-quantized CPU kernels: matrices kept in (repacked) ggml block formats, multiplied by
//! activations quantized to 8 bits per block of 32, as llama.cpp does.
//!
//! This is the CPU seam beside burn: burn's Flex backend dequantizes quantized weights on every
//! matmul, so quantized inference on the CPU runs here instead, on host memory. Weights are repacked
//! once at load into three internal layouts:
//! - [`QKind::Q4`]: 4-bit unsigned values, a scale and an offset per 32 (`w = d·u + m`; f16 as in the
//!   file for `Q4_0`/`Q4_1`, f32 for `Q4_K` whose products f16 cannot hold),
//!   from `Q4_0`, `Q4_1` and `Q4_K` (all lossless: the same values ggml dequantizes to);
//! - [`QKind::Q8`]: signed 8-bit values with a scale per 32 (`Q8_0`, f16) or per 16 (`Q6_K`, f32);
//! - [`QKind::F32`]: anything else, dequantized to f32 (`F16`, `Q5_*`, `Q2_K`, ...).
//!
//! The dot products use the best instruction set found at run time: AVX-512 VNNI (`vpdpbusd` on two
//! Q4 blocks per 512-bit register), AVX2 (`vpmaddubsw`; also for Q8 rows on AVX-512 CPUs, where it
//! measured faster), else portable scalar code. Output rows are split across the current rayon pool. [`QMatrix::dequantize`] reproduces ggml's dequantization bit for bit, so the
//! exact f32 path can be rebuilt from the repacked weights.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod fma;
#[cfg(target_arch = "x86_64")]
mod int16;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub use amx::{tile_product, TilesA, TilesB};

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::formats::quant::{f16_at, scale_min_k4, GgmlType, QK_K};

/// Values per quantization block of the activations and of every weight layout.
pub const QK: usize = 32;

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI (`vpdpbusd`, two blocks per 512-bit register).
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU supports (detected once), lowered by the environment
    /// variable `AGENTLM_ISA=scalar|avx2` (for tests and comparisons).
    pub fn detected() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::best();
            match std::env::var("AGENTLM_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") => best.min(Isa::Avx2),
                _ => best,
            }
        })
    }

    /// Every instruction set this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|i| i.is_supported()).collect()
    }

    /// Whether this CPU can run it.
    pub fn is_supported(self) -> bool {
        self <= Self::best()
    }

    /// The best instruction set of this CPU, detected once.
    fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(Self::probe)
    }

    fn probe() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx2 && avx512 {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Lower-case name (`scalar`, `avx2`, `avx512vnni`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}

/// A per-block scale as stored: f16 where the source's scales are f16 (`Q4_0`, `Q4_1`, `Q8_0`: the
/// file's bytes per weight, and the memory traffic of a decode step, stay as small as the file's),
/// f32 where they are products that f16 cannot hold exactly (`Q4_K`, `Q6_K`).
pub trait Scale: Copy + Send + Sync + std::fmt::Debug + PartialEq + 'static {
    /// The value in f32 (exact).
    fn get(self) -> f32;
    /// Two consecutive scales in the low lanes.
    ///
    /// # Safety
    /// `p` points at two readable values; the CPU supports F16C (f16) / SSE2 (f32).
    #[cfg(target_arch = "x86_64")]
    unsafe fn pair(p: *const Self) -> std::arch::x86_64::__m128;
    /// Eight consecutive scales.
    ///
    /// # Safety
    /// `p` points at eight readable values; the CPU supports AVX and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn eight(p: *const Self) -> std::arch::x86_64::__m256;
    /// One scale, read with the same instructions as [`Scale::pair`].
    ///
    /// # Safety
    /// `p` points at a readable value; the CPU supports F16C (f16).
    #[cfg(target_arch = "x86_64")]
    unsafe fn one(p: *const Self) -> f32;
}

impl Scale for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn pair(p: *const f32) -> std::arch::x86_64::__m128 {
        use std::arch::x86_64::*;
        // SAFETY: two f32 values at `p` (the caller's contract).
        unsafe { _mm_castpd_ps(_mm_load_sd(p.cast::<f64>())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eight(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: eight f32 values at `p` (the caller's contract).
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn one(p: *const f32) -> f32 {
        // SAFETY: one f32 value at `p` (the caller's contract).
        unsafe { *p }
    }
}

impl Scale for half::f16 {
    #[inline(always)]
    fn get(self) -> f32 {
        // The portable conversion inlines (the intrinsic version is a call per value).
        self.to_f32_const()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn pair(p: *const half::f16) -> std::arch::x86_64::__m128 {
        use std::arch::x86_64::*;
        // SAFETY: two f16 values at `p` (the caller's contract), read unaligned; F16C is enabled where this inlines.
        unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn eight(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: eight f16 values at `p` (the caller's contract); F16C is enabled where this inlines.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn one(p: *const half::f16) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: one f16 value at `p` (the caller's contract), read unaligned; F16C is enabled where this inlines.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(p.cast::<u16>().read_unaligned())))) }
    }
}

/// Scales of a [`QMatrix`], one per block (or per half block for `Q6_K`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scales {
    F16(Vec<half::f16>),
    F32(Vec<f32>),
}

impl Scales {
    /// Number of scales.
    pub fn len(&self) -> usize {
        match self {
            Scales::F16(v) => v.len(),
            Scales::F32(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Scale `i` in f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Scales::F16(v) => v[i].to_f32(),
            Scales::F32(v) => v[i],
        }
    }
    fn bytes(&self) -> usize {
        match self {
            Scales::F16(v) => 2 * v.len(),
            Scales::F32(v) => 4 * v.len(),
        }
    }
    fn pick(&self, per_row: usize, order: &[usize]) -> Scales {
        fn pick<T: Copy>(v: &[T], per_row: usize, order: &[usize]) -> Vec<T> {
            order.iter().flat_map(|&r| v[r * per_row..(r + 1) * per_row].iter().copied()).collect()
        }
        match self {
            Scales::F16(v) => Scales::F16(pick(v, per_row, order)),
            Scales::F32(v) => Scales::F32(pick(v, per_row, order)),
        }
    }
}

/// How a [`QMatrix`] stores its values.
#[derive(Debug, Clone, PartialEq)]
pub enum QKind {
    /// Per block of 32: 16 bytes, byte `j` holding value `j` (low nibble) and `j + 16` (high);
    /// `w = d·u + m`. `centered`: the source was `Q4_0`, dequantized as `(u - 8)·d`.
    Q4 { qs: Vec<u8>, d: Scales, m: Scales, centered: bool },
    /// Signed bytes, `w = s·q`, one scale per `group` (32 or 16) values.
    Q8 { qs: Vec<i8>, s: Scales, group: usize },
    /// Unsigned bytes with an f32 scale and offset per block of 32, `w = d·u + m` (asymmetric 8-bit):
    /// the transposed weights of the training backward pass on AVX-512 VNNI CPUs, where `vpdpbusd`
    /// multiplies them with int8 activations directly. The 64 bytes of each pair of blocks are
    /// stored in the lane order of [`QActs`]' pair copy (`[b0 0-15, b1 0-15, b0 16-31, b1 16-31]`);
    /// a row's odd last block stays in natural order.
    U8 { qs: Vec<u8>, d: Vec<f32>, m: Vec<f32> },
    /// Dense f32.
    F32 { w: Vec<f32> },
}

/// Where value `v` of block `b` is stored in a [`QKind::U8`] row of `nb` blocks (pairs interleaved,
/// an odd last block in natural order).
fn u8_position(b: usize, nb: usize, v: usize) -> usize {
    if b % 2 == 1 {
        (b - 1) * QK + pair_lane(QK + v)
    } else if b + 1 < nb {
        b * QK + pair_lane(v)
    } else {
        b * QK + v
    }
}

/// Where value `j` of a block pair's 64 values is stored in the pair-interleaved order of
/// [`QKind::U8`] (value `j` of block 0 for `j < 32`, of block 1 for `j >= 32`).
fn pair_lane(j: usize) -> usize {
    let (blk, v) = (j / QK, j % QK);
    // Lanes of 16: [b0 0-15, b1 0-15, b0 16-31, b1 16-31].
    (v / 16) * 32 + blk * 16 + v % 16
}

/// A `[rows, cols]` weight matrix (PyTorch's `[out, in]`), rows stored one after another.
#[derive(Debug, Clone, PartialEq)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    kind: QKind,
    /// The ggml type it was built from (for reports).
    source: GgmlType,
}

/// Why a matrix could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0} bytes do not hold a {1}x{2} {3} matrix")]
    Length(usize, usize, usize, &'static str),
    #[error("{cols} columns are not a multiple of the {ty} block size {block}")]
    Columns { cols: usize, ty: &'static str, block: usize },
    #[error("tensor type {0} cannot be dequantized")]
    Unsupported(&'static str),
}

impl QMatrix {
    /// Repacks `rows × cols` values stored as ggml type `ty` (row-major, `cols` along a row).
    ///
    /// # Errors
    /// Wrong byte length, a row length that is not a whole number of blocks, a type with no
    /// dequantizer.
    pub fn from_ggml(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Result<QMatrix, KernelError> {
        let block = ty.block_size().max(1);
        if !cols.is_multiple_of(block) {
            return Err(KernelError::Columns { cols, ty: ty.name(), block });
        }
        let n = rows.checked_mul(cols);
        let need = n.and_then(|n| (n / block).checked_mul(ty.block_bytes()));
        let Some(n) = n.filter(|_| need == Some(bytes.len())) else {
            return Err(KernelError::Length(bytes.len(), rows, cols, ty.name()));
        };
        let blocks = || bytes.chunks_exact(ty.block_bytes());
        let kind = match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let nb = n / QK;
                let (mut qs, mut d, mut m) = (Vec::with_capacity(n / 2), Vec::with_capacity(nb), Vec::with_capacity(nb));
                for b in blocks() {
                    let scale = half::f16::from_le_bytes([b[0], b[1]]);
                    d.push(scale);
                    if ty == GgmlType::Q4_0 {
                        // -8·d is exact in f16 (a power-of-two multiple), barring overflow at the
                        // very top of the f16 range, which no real weight scale reaches.
                        m.push(half::f16::from_f32(-8.0 * scale.to_f32()));
                        qs.extend_from_slice(&b[2..18]);
                    } else {
                        m.push(half::f16::from_le_bytes([b[2], b[3]]));
                        qs.extend_from_slice(&b[4..20]);
                    }
                }
                QKind::Q4 { qs, d: Scales::F16(d), m: Scales::F16(m), centered: ty == GgmlType::Q4_0 }
            }
            GgmlType::Q4_K => {
                let nb = n / QK;
                let (mut qs, mut d, mut m) = (Vec::with_capacity(n / 2), Vec::with_capacity(nb), Vec::with_capacity(nb));
                for b in blocks() {
                    let (sd, smin) = (f16_at(b, 0), f16_at(b, 2));
                    let scales = &b[4..16];
                    for chunk in 0..4 {
                        let q = &b[16 + 32 * chunk..48 + 32 * chunk];
                        for (sub, shift) in [(2 * chunk, 0u8), (2 * chunk + 1, 4u8)] {
                            let (sc, mn) = scale_min_k4(sub, scales);
                            d.push(sd * sc);
                            m.push(-(smin * mn));
                            // 32 values of this sub-block, repacked into the Q4 byte order.
                            for j in 0..16 {
                                let lo = (q[j] >> shift) & 0xF;
                                let hi = (q[j + 16] >> shift) & 0xF;
                                qs.push(lo | (hi << 4));
                            }
                        }
                    }
                }
                QKind::Q4 { qs, d: Scales::F32(d), m: Scales::F32(m), centered: false }
            }
            GgmlType::Q8_0 => {
                let mut qs = Vec::with_capacity(n);
                let mut s = Vec::with_capacity(n / QK);
                for b in blocks() {
                    s.push(half::f16::from_le_bytes([b[0], b[1]]));
                    qs.extend(b[2..34].iter().map(|&x| x as i8));
                }
                QKind::Q8 { qs, s: Scales::F16(s), group: QK }
            }
            GgmlType::Q6_K => {
                let mut qs = vec![0i8; n];
                let mut s = Vec::with_capacity(n / 16);
                for (bi, b) in blocks().enumerate() {
                    let d = f16_at(b, 208);
                    let out = &mut qs[bi * QK_K..(bi + 1) * QK_K];
                    for half in 0..2 {
                        let ql = &b[64 * half..64 * half + 64];
                        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                        let y = &mut out[128 * half..128 * half + 128];
                        for l in 0..32 {
                            y[l] = (((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8) - 32;
                            y[l + 32] = (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8) - 32;
                            y[l + 64] = (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8) - 32;
                            y[l + 96] = (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8) - 32;
                        }
                    }
                    s.extend(b[192..208].iter().map(|&sc| d * f32::from(sc as i8)));
                }
                QKind::Q8 { qs, s: Scales::F32(s), group: 16 }
            }
            _ => {
                let mut w = vec![0f32; n];
                crate::formats::quant::dequantize(ty, bytes, n, &mut w).map_err(|_| KernelError::Unsupported(ty.name()))?;
                QKind::F32 { w }
            }
        };
        Ok(QMatrix { rows, cols, kind, source: ty })
    }

    /// A dense f32 matrix (`w.len() == rows * cols`).
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize) -> QMatrix {
        assert_eq!(w.len(), rows * cols, "QMatrix::from_f32 shape");
        QMatrix { rows, cols, kind: QKind::F32 { w }, source: GgmlType::F32 }
    }

    /// `rows × cols` f32 values (`cols` a multiple of 32) quantized to int8 with an f32 scale per 32
    /// (ggml's `Q8_0` rounding: scale `max|w| / 127`, round half away from zero; the scale kept in
    /// f32 rather than f16). Used for the transposed weights of the training backward pass.
    ///
    /// # Panics
    /// A length that is not `rows * cols`, or `cols` not a multiple of 32.
    pub fn q8_from_f32(w: &[f32], rows: usize, cols: usize) -> QMatrix {
        assert!(w.len() == rows * cols && cols.is_multiple_of(QK), "QMatrix::q8_from_f32 shape");
        let mut qs = vec![0i8; w.len()];
        let mut s = vec![0f32; w.len() / QK];
        let mut sums = vec![0f32; w.len() / QK];
        qs.par_chunks_mut(cols)
            .zip(w.par_chunks(cols))
            .zip(s.par_chunks_mut(cols / QK).zip(sums.par_chunks_mut(cols / QK)))
            .for_each(|((q, x), (d, sum))| quantize_row(x, q, d, sum));
        QMatrix { rows, cols, kind: QKind::Q8 { qs, s: Scales::F32(s), group: QK }, source: GgmlType::Q8_0 }
    }

    /// The transpose of `parts` stacked by rows (`[Σ rows, cols]` → `[cols, Σ rows]`), for the
    /// backward pass (`dX = dY · W` is `dY` times the rows of `Wᵀ`). Dense f32 parts give a dense f32
    /// transpose (exact); otherwise the values are quantized as [`QMatrix::q8_from_f32`] does (blocks
    /// of 32 along the stacked rows), a few hundred source rows at a time so no f32 copy of the whole
    /// matrix is made.
    ///
    /// # Panics
    /// Parts of different widths, or (quantized) a total row count that is not a multiple of 32.
    pub fn transposed(parts: &[&QMatrix]) -> QMatrix {
        const CHUNK: usize = 256;
        let cols = parts.first().map_or(0, |p| p.cols);
        assert!(parts.iter().all(|p| p.cols == cols), "transposed: parts of different widths");
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        if parts.iter().all(|p| matches!(p.kind, QKind::F32 { .. })) {
            let mut w = vec![0f32; rows * cols];
            let mut r0 = 0;
            for p in parts {
                let QKind::F32 { w: src } = &p.kind else { unreachable!("checked above") };
                for (r, row) in src.chunks_exact(cols).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        w[c * rows + r0 + r] = v;
                    }
                }
                r0 += p.rows;
            }
            return QMatrix::from_f32(w, cols, rows);
        }
        assert!(rows.is_multiple_of(QK), "transposed: {rows} rows are not whole blocks");
        // Asymmetric unsigned bytes where `vpdpbusd` takes them as they are; signed int8 elsewhere.
        let unsigned = Isa::detected() == Isa::Avx512Vnni;
        let mut qs = vec![0u8; rows * cols];
        let mut s = vec![0f32; rows * cols / QK];
        let mut mins = if unsigned { vec![0f32; rows * cols / QK] } else { Vec::new() };
        let mut buf = vec![0f32; CHUNK * cols];
        let mut tb = vec![0f32; cols * CHUNK];
        let locate = |g: usize| {
            let mut g = g;
            for p in parts {
                if g < p.rows {
                    return (*p, g);
                }
                g -= p.rows;
            }
            unreachable!("row inside the stack")
        };
        let mut r0 = 0;
        while r0 < rows {
            let n = CHUNK.min(rows - r0);
            for (k, row) in buf[..n * cols].chunks_exact_mut(cols).enumerate() {
                let (p, r) = locate(r0 + k);
                p.dequantize_row(r, row);
            }
            for (k, row) in buf[..n * cols].chunks_exact(cols).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    tb[c * n + k] = v;
                }
            }
            if unsigned {
                qs.par_chunks_mut(rows)
                    .zip(s.par_chunks_mut(rows / QK).zip(mins.par_chunks_mut(rows / QK)))
                    .zip(tb[..cols * n].par_chunks(n))
                    .for_each(|((q, (d, m)), x)| quantize_u8(x, &mut q[r0..r0 + n], &mut d[r0 / QK..(r0 + n) / QK], &mut m[r0 / QK..(r0 + n) / QK]));
            } else {
                qs.par_chunks_mut(rows).zip(s.par_chunks_mut(rows / QK)).zip(tb[..cols * n].par_chunks(n)).for_each(|((q, d), x)| {
                    let mut sum = vec![0f32; n / QK];
                    let q: &mut [i8] = bytemuck_i8(&mut q[r0..r0 + n]);
                    quantize_row(x, q, &mut d[r0 / QK..(r0 + n) / QK], &mut sum);
                });
            }
            r0 += n;
        }
        let kind = if unsigned {
            // Interleave each row's block pairs into the activations' pair order.
            let nb = rows / QK;
            qs.par_chunks_mut(rows).for_each(|row| {
                let mut b = 0;
                while b + 2 <= nb {
                    let mut pair = [0u8; 2 * QK];
                    for (j, &v) in row[b * QK..(b + 2) * QK].iter().enumerate() {
                        pair[pair_lane(j)] = v;
                    }
                    row[b * QK..(b + 2) * QK].copy_from_slice(&pair);
                    b += 2;
                }
            });
            QKind::U8 { qs, d: s, m: mins }
        } else {
            QKind::Q8 { qs: qs.into_iter().map(|b| b as i8).collect(), s: Scales::F32(s), group: QK }
        };
        QMatrix { rows: cols, cols: rows, kind, source: GgmlType::Q8_0 }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The internal layout.
    pub fn kind(&self) -> &QKind {
        &self.kind
    }
    /// The ggml type the matrix was built from.
    pub fn source_type(&self) -> GgmlType {
        self.source
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.kind {
            QKind::Q4 { qs, d, m, .. } => qs.len() + d.bytes() + m.bytes(),
            QKind::Q8 { qs, s, .. } => qs.len() + s.bytes(),
            QKind::U8 { qs, d, m } => qs.len() + 4 * (d.len() + m.len()),
            QKind::F32 { w } => 4 * w.len(),
        }
    }

    /// A copy with its rows reordered: row `i` of the result is row `order[i]` of `self`.
    pub fn permute_rows(&self, order: &[usize]) -> QMatrix {
        assert_eq!(order.len(), self.rows);
        fn pick<T: Copy>(v: &[T], per_row: usize, order: &[usize]) -> Vec<T> {
            order.iter().flat_map(|&r| v[r * per_row..(r + 1) * per_row].iter().copied()).collect()
        }
        let c = self.cols;
        let kind = match &self.kind {
            QKind::Q4 { qs, d, m, centered } => {
                QKind::Q4 { qs: pick(qs, c / 2, order), d: d.pick(c / QK, order), m: m.pick(c / QK, order), centered: *centered }
            }
            QKind::Q8 { qs, s, group } => QKind::Q8 { qs: pick(qs, c, order), s: s.pick(c / group, order), group: *group },
            QKind::U8 { qs, d, m } => QKind::U8 { qs: pick(qs, c, order), d: pick(d, c / QK, order), m: pick(m, c / QK, order) },
            QKind::F32 { w } => QKind::F32 { w: pick(w, c, order) },
        };
        QMatrix { rows: self.rows, cols: c, kind, source: self.source }
    }

    /// Row `r` in f32, exactly as ggml dequantizes it.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        match &self.kind {
            // A dense row need not be whole blocks.
            QKind::F32 { w } => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
            _ => self.dequantize_blocks(r, 0..self.cols / QK, out),
        }
    }

    /// Values `32·b0 .. 32·b1` of row `r` (its blocks `b0..b1`) in f32, exactly as ggml dequantizes
    /// them, into `out` (`32·(b1 - b0)` values).
    pub fn dequantize_blocks(&self, r: usize, blocks: std::ops::Range<usize>, out: &mut [f32]) {
        let c = self.cols;
        let nb = c / QK;
        assert!(c.is_multiple_of(QK) && blocks.end <= nb && out.len() == blocks.len() * QK, "dequantize_blocks: blocks outside the row");
        let b0 = blocks.start;
        match &self.kind {
            QKind::Q4 { qs, d, m, centered } => {
                for b in blocks {
                    let blk = r * nb + b;
                    let bytes = &qs[blk * 16..blk * 16 + 16];
                    let y = &mut out[(b - b0) * QK..(b - b0 + 1) * QK];
                    let (db, mb) = (d.get(blk), m.get(blk));
                    for j in 0..16 {
                        let (lo, hi) = (bytes[j] & 0xF, bytes[j] >> 4);
                        if *centered {
                            y[j] = (i32::from(lo) - 8) as f32 * db;
                            y[j + 16] = (i32::from(hi) - 8) as f32 * db;
                        } else {
                            y[j] = db * f32::from(lo) + mb;
                            y[j + 16] = db * f32::from(hi) + mb;
                        }
                    }
                }
            }
            QKind::Q8 { qs, s, group } => {
                let (from, to) = (r * c + b0 * QK, r * c + blocks.end * QK);
                for (i, (y, &q)) in out.iter_mut().zip(&qs[from..to]).enumerate() {
                    *y = f32::from(q) * s.get((from + i) / group);
                }
            }
            QKind::U8 { qs, d, m } => {
                let row = &qs[r * c..(r + 1) * c];
                for b in blocks {
                    let (db, mb) = (d[r * nb + b], m[r * nb + b]);
                    for v in 0..QK {
                        out[(b - b0) * QK + v] = db * f32::from(row[u8_position(b, nb, v)]) + mb;
                    }
                }
            }
            QKind::F32 { w } => out.copy_from_slice(&w[r * c + b0 * QK..r * c + blocks.end * QK]),
        }
    }

    /// The whole matrix in f32, `[rows, cols]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }
}

/// Activations quantized for the kernels: per row, signed bytes with an f32 scale per 32 values and
/// the scaled sum of each block (for the `m` term of [`QKind::Q4`]). Reused between calls: it only
/// grows.
#[derive(Debug, Default, Clone)]
pub struct QActs {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<f32>,
    /// Per pair of blocks, the 64 values in the lane order the AVX-512 Q4 kernels unpack weights
    /// to (`[b0 0-15, b1 0-15, b0 16-31, b1 16-31]`), and the pair's scales spread over those lanes
    /// (`[d0 ×4, d1 ×4, d0 ×4, d1 ×4]`). Rows with an odd number of blocks leave the last one out.
    qz: Vec<i8>,
    dz: Vec<f32>,
    /// The last [`QActs::prepare`] left the values unquantized: products with them run on a dense
    /// unit ([`dense_products`]).
    dense: bool,
}

/// Activation rows from which [`QActs::prepare`] hands products to the bf16 unit.
const DENSE_ROWS: usize = 128;

/// Whether products with many activation rows run on a dense unit here instead of the int8 kernels:
/// in bf16 on Intel AMX tiles (granted by the OS; off with `AGENTLM_AMX=0`) or else on AVX512-BF16
/// vectors (AMD Zen 4 and later), neither with `AGENTLM_BF16=0` or an `AGENTLM_ISA` below AVX-512;
/// in f32 with FMA where AVX2 is the best instruction set (AMD Zen 3 and earlier; `AGENTLM_ISA=avx2`
/// elsewhere), where the 4-bit weights' products take int16 block sums instead (`int16`, off with
/// `AGENTLM_INT16=0`). `AGENTLM_DENSE=0` turns both off.
pub fn dense_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::unit().is_some() || fma::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the backward products `dX = dY · W` run from the weights as stored ([`matmul_t`]) rather
/// than from a transposed copy: on the f32 unit of AVX2 CPUs (see [`dense_products`]).
pub fn transposed_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        fma::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[t][c] = Σ_n dy[t][n] · w[n][c]` with `w` the parts stacked by rows: `dy` is `[rows, Σ
/// parts.rows]`, `out` `[rows, cols]`. In f32 from the weights as they are stored, split over groups
/// of output columns across the current rayon pool.
///
/// # Panics
/// [`transposed_products`] is false here; parts of different widths or of columns that are not
/// whole blocks of 32; shapes that do not match.
pub fn matmul_t(parts: &[&QMatrix], dy: &[f32], rows: usize, out: &mut [f32]) {
    assert!(transposed_products(), "matmul_t: no f32 product unit on this CPU");
    #[cfg(target_arch = "x86_64")]
    if int16::applies(parts) {
        int16::matmul_t(parts, dy, rows, out);
    } else {
        fma::matmul_t(parts, dy, rows, out);
    }
}

/// Whether the environment variable `var` says `0`, `off` or `false`.
fn switched_off(var: &str) -> bool {
    matches!(std::env::var(var).as_deref(), Ok("0" | "off" | "false"))
}

/// Whether [`tile_product`] (f32 matrices on AMX tiles) can run here.
pub fn tile_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl QActs {
    /// Prepares `rows` rows of `cols` values for [`matmul`]: with at least 128 rows on a CPU with a
    /// dense unit ([`dense_products`]) the products take the f32 values directly (rounded to bf16
    /// by the bf16 units) and nothing is quantized; otherwise as
    /// [`QActs::quantize`]. For the training passes, whose products have hundreds of rows.
    pub fn prepare(&mut self, x: &[f32], rows: usize, cols: usize) {
        if rows >= DENSE_ROWS && dense_products() {
            assert!(cols.is_multiple_of(QK) && x.len() == rows * cols, "QActs::prepare shape");
            self.rows = rows;
            self.cols = cols;
            self.dense = true;
            return;
        }
        self.quantize(x, rows, cols);
    }

    /// Quantizes `rows` rows of `cols` values (`cols` a multiple of 32), as ggml's `quantize_row_q8_0`
    /// (scale `max|x| / 127`, round half away from zero), also keeping `d · Σq` per block.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert!(cols.is_multiple_of(QK) && x.len() == rows * cols, "QActs::quantize shape");
        self.rows = rows;
        self.cols = cols;
        self.dense = false;
        self.q.resize(rows * cols, 0);
        self.d.resize(rows * cols / QK, 0.0);
        self.sum.resize(rows * cols / QK, 0.0);
        // Rows in parallel for a prefill-sized input; each block as ggml's scalar code computes it
        // (compiled for AVX2 where available, with the same rounding).
        type Row<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], &'a mut [f32]));
        let per_row = |((xr, qr), (dr, sr)): Row| {
            #[cfg(target_arch = "x86_64")]
            if Isa::detected() == Isa::Avx512Vnni {
                // SAFETY: AVX-512 F and BW were detected (part of `Isa::Avx512Vnni`).
                return unsafe { x86::quantize_row_avx512(xr, qr, dr, sr) };
            }
            #[cfg(target_arch = "x86_64")]
            if Isa::detected() >= Isa::Avx2 {
                // SAFETY: AVX2 and FMA were detected.
                return unsafe { quantize_row_avx2(xr, qr, dr, sr) };
            }
            quantize_row(xr, qr, dr, sr)
        };
        let nb = cols / QK;
        if rows >= 16 && rayon::current_num_threads() > 1 {
            x.par_chunks_exact(cols)
                .zip(self.q.par_chunks_exact_mut(cols))
                .zip(self.d.par_chunks_exact_mut(nb).zip(self.sum.par_chunks_exact_mut(nb)))
                .for_each(per_row);
        } else {
            x.chunks_exact(cols).zip(self.q.chunks_exact_mut(cols)).zip(self.d.chunks_exact_mut(nb).zip(self.sum.chunks_exact_mut(nb))).for_each(per_row);
        }
        let pairs = cols / (2 * QK);
        self.qz.resize(rows * pairs * 2 * QK, 0);
        self.dz.resize(rows * pairs * 16, 0.0);
        for r in 0..rows {
            for p in 0..pairs {
                let src = &self.q[r * cols + p * 2 * QK..r * cols + (p + 1) * 2 * QK];
                let dst = &mut self.qz[(r * pairs + p) * 2 * QK..(r * pairs + p + 1) * 2 * QK];
                for (lane, from) in [0, 32, 16, 48].into_iter().enumerate() {
                    dst[lane * 16..lane * 16 + 16].copy_from_slice(&src[from..from + 16]);
                }
                let (d0, d1) = (self.d[r * nb + 2 * p], self.d[r * nb + 2 * p + 1]);
                let dz = &mut self.dz[(r * pairs + p) * 16..(r * pairs + p + 1) * 16];
                for (i, v) in dz.iter_mut().enumerate() {
                    *v = if (i / 4) % 2 == 0 { d0 } else { d1 };
                }
            }
        }
    }

    fn row(&self, r: usize) -> ActRow<'_> {
        let (c, nb, pairs) = (self.cols, self.cols / QK, self.cols / (2 * QK));
        ActRow {
            q: &self.q[r * c..(r + 1) * c],
            d: &self.d[r * nb..(r + 1) * nb],
            sum: &self.sum[r * nb..(r + 1) * nb],
            qz: &self.qz[r * pairs * 2 * QK..(r + 1) * pairs * 2 * QK],
            dz: &self.dz[r * pairs * 16..(r + 1) * pairs * 16],
        }
    }
}

/// Reinterprets bytes as signed.
fn bytemuck_i8(b: &mut [u8]) -> &mut [i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<i8>(), b.len()) }
}

/// Quantizes values to unsigned bytes per block of 32: `w ≈ d·u + m` with `m` the block's minimum
/// and `d` its range over 255 (round to nearest).
fn quantize_u8(x: &[f32], q: &mut [u8], d: &mut [f32], m: &mut [f32]) {
    for (((xb, qb), d), m) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(d).zip(m) {
        let (lo, hi) = xb.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = (hi - lo) / 255.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = ((v - lo) * inv).round().clamp(0.0, 255.0) as u8;
        }
        *d = scale;
        *m = lo;
    }
}

/// Quantizes one row (see [`QActs::quantize`]).
#[inline(always)]
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [f32]) {
    for (((xb, qb), d), s) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(d).zip(sum) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut total = 0i32;
        for (q, &v) in qb.iter_mut().zip(xb) {
            let r = (v * inv).round() as i32;
            *q = r as i8;
            total += r;
        }
        *d = scale;
        *s = scale * total as f32;
    }
}

/// [`quantize_row`] compiled for AVX2 (the same arithmetic, vectorised).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [f32]) {
    quantize_row(x, q, d, sum)
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sum: &'a [f32],
    pub qz: &'a [i8],
    pub dz: &'a [f32],
}

/// Rows of x processed together against one weight row (weights are unpacked once for all of them).
const TILE: usize = 4;

/// `out[t][o] = Σ_i w[o][i] · x[t][i]` for every part of `parts` side by side: `out` is
/// `[rows, Σ parts.rows]` row-major, part `p` filling the columns after those of parts before it.
/// `x` is `[rows, cols]` in f32 and `acts` its quantized form (from [`QActs::quantize`]) for the
/// quantized parts. Work is split over output rows across the current rayon pool.
pub fn matmul(parts: &[&QMatrix], x: &[f32], acts: &QActs, rows: usize, out: &mut [f32]) {
    let isa = Isa::detected();
    matmul_with(isa, parts, x, acts, rows, out);
}

/// [`matmul`] with a chosen instruction set (one this CPU supports: [`Isa::is_supported`]).
pub fn matmul_with(isa: Isa, parts: &[&QMatrix], x: &[f32], acts: &QActs, rows: usize, out: &mut [f32]) {
    assert!(isa.is_supported(), "instruction set {isa:?} is not available");
    let width: usize = parts.iter().map(|p| p.rows).sum();
    assert_eq!(out.len(), rows * width, "matmul output shape");
    let cols = parts.first().map_or(0, |p| p.cols);
    assert!(parts.iter().all(|p| p.cols == cols) && x.len() == rows * cols, "matmul input shape");
    if parts.iter().any(|p| !matches!(p.kind, QKind::F32 { .. })) {
        assert!(acts.rows == rows && acts.cols == cols, "matmul: activations not quantized for this input");
    }
    if acts.dense {
        assert!(acts.rows == rows && acts.cols == cols, "matmul: activations not prepared for this input");
        #[cfg(target_arch = "x86_64")]
        return if amx::unit().is_some() {
            amx::matmul(parts, x, rows, out)
        } else if int16::applies(parts) {
            int16::matmul(parts, x, rows, out)
        } else {
            fma::matmul(parts, x, rows, out)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("dense products exist only on x86-64");
    }
    // Tasks: (part, first row, last row) of about equal work, a few per thread; one task when the
    // product is too small to be worth waking another thread (about 10 µs of work).
    let threads = rayon::current_num_threads().max(1);
    let work = width * cols * rows.max(1);
    let chunk = if threads == 1 || work < 1 << 18 { width.max(1) } else { width.div_ceil(threads * 4).next_multiple_of(4).max(16) };
    // Task i: chunk i of the parts' rows laid end to end (computed, not collected: no allocation).
    let total: usize = parts.iter().map(|p| p.rows.div_ceil(chunk)).sum();
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run = |mut i: usize| {
        let mut c0 = 0;
        let mut pi = 0;
        while i >= parts[pi].rows.div_ceil(chunk) {
            i -= parts[pi].rows.div_ceil(chunk);
            c0 += parts[pi].rows;
            pi += 1;
        }
        let (r0, r1) = (i * chunk, ((i + 1) * chunk).min(parts[pi].rows));
        let mut t = 0;
        while t < rows {
            let n = (rows - t).min(TILE);
            // SAFETY: tasks write disjoint (output row range, column range) cells of `out`, which
            // outlives the parallel loop.
            unsafe { row_range(isa, parts[pi], r0..r1, x, acts, t, n, out_ptr, width, c0) };
            t += n;
        }
    };
    if total <= 1 || threads == 1 {
        (0..total).for_each(run);
    } else {
        (0..total).into_par_iter().for_each(run);
    }
}

/// The output of a product, shared by the parallel tasks that each write their own cells of it (not
/// a host pointer: that is the C layer's `UserData`).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: used only for disjoint writes inside one `matmul` call.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Weight rows `range` against activation rows `t..t + n` (`n <= TILE`), written to
/// `out[(t + k) * width + c0 + o]`.
///
/// # Safety
/// No other thread writes those cells of `out` meanwhile; they are inside it.
#[allow(clippy::too_many_arguments)]
unsafe fn row_range(
    isa: Isa,
    w: &QMatrix,
    range: std::ops::Range<usize>,
    x: &[f32],
    acts: &QActs,
    t: usize,
    n: usize,
    out: SharedOut,
    width: usize,
    c0: usize,
) {
    let c = w.cols;
    let mut res = [0f32; TILE];
    // Writes the values of output row `o` for activation rows t, t + 1, ...
    let put = |o: usize, res: &[f32]| {
        for (k, &v) in res.iter().enumerate() {
            // SAFETY: the caller's contract: these cells are this task's and inside `out`.
            unsafe { *out.get().add((t + k) * width + c0 + o) = v };
        }
    };
    match &w.kind {
        QKind::F32 { w } => {
            for o in range {
                let row = &w[o * c..(o + 1) * c];
                for k in 0..n {
                    res[k] = dot_f32(row, &x[(t + k) * c..(t + k + 1) * c]);
                }
                put(o, &res[..n]);
            }
        }
        QKind::Q4 { qs, d: Scales::F16(d), m: Scales::F16(m), .. } => q4_range(isa, qs, d, m, c, range, acts, t, n, &put),
        QKind::Q4 { qs, d: Scales::F32(d), m: Scales::F32(m), .. } => q4_range(isa, qs, d, m, c, range, acts, t, n, &put),
        QKind::Q4 { .. } => unreachable!("Q4 scale and offset share one width"),
        QKind::Q8 { qs, s: Scales::F16(s), group } => q8_range(isa, qs, s, *group, c, range, acts, t, n, &put),
        QKind::Q8 { qs, s: Scales::F32(s), group } => q8_range(isa, qs, s, *group, c, range, acts, t, n, &put),
        QKind::U8 { qs, d, m } => u8_range(isa, qs, d, m, c, range, acts, t, n, &put),
    }
}

/// [`QKind::U8`] weight rows `range` against activation rows `t..t + n`.
#[allow(clippy::too_many_arguments)]
fn u8_range(isa: Isa, qs: &[u8], d: &[f32], m: &[f32], c: usize, range: std::ops::Range<usize>, acts: &QActs, t: usize, n: usize, put: &dyn Fn(usize, &[f32])) {
    let nb = c / QK;
    let mut res = [0f32; TILE];
    let xs: [ActRow; TILE] = std::array::from_fn(|k| acts.row(t + k.min(n - 1)));
    let xs = &xs[..n];
    for o in range {
        let (qs, d, m) = (&qs[o * c..(o + 1) * c], &d[o * nb..(o + 1) * nb], &m[o * nb..(o + 1) * nb]);
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            // SAFETY: AVX-512 VNNI is available (`isa`, checked by `matmul_with`).
            unsafe { x86::u8_rows(qs, d, m, xs, &mut res) };
            put(o, &res[..n]);
            continue;
        }
        let _ = isa;
        for (k, x) in xs.iter().enumerate() {
            let mut acc = 0f32;
            for b in 0..nb {
                let mut isum = 0i32;
                for v in 0..QK {
                    isum += i32::from(qs[u8_position(b, nb, v)]) * i32::from(x.q[b * QK + v]);
                }
                acc += d[b] * x.d[b] * isum as f32 + m[b] * x.sum[b];
            }
            res[k] = acc;
        }
        put(o, &res[..n]);
    }
}

/// Q4 weight rows `range` against activation rows `t..t + n`; results go to `put(row, values)`.
#[allow(clippy::too_many_arguments)]
fn q4_range<S: Scale>(
    isa: Isa,
    qs: &[u8],
    d: &[S],
    m: &[S],
    c: usize,
    range: std::ops::Range<usize>,
    acts: &QActs,
    t: usize,
    n: usize,
    put: &dyn Fn(usize, &[f32]),
) {
    let nb = c / QK;
    let mut res = [0f32; TILE];
    #[cfg(target_arch = "x86_64")]
    if n == 1 && isa == Isa::Avx512Vnni {
        // Decode: several weight rows per call.
        let x = acts.row(t);
        let mut o = range.start;
        while o < range.end {
            let r = if o + x86::GEMV_ROWS <= range.end { x86::GEMV_ROWS } else { 1 };
            let (b0, b1) = (o * nb, (o + r) * nb);
            // Ask for the rows after the next group now: short per-layer streams otherwise wait
            // for the hardware prefetcher to ramp up.
            let ahead = ((o + 2 * x86::GEMV_ROWS).min(range.end)) * nb;
            prefetch(&qs[(b1 * 16).min(ahead * 16)..ahead * 16]);
            prefetch(&d[b1.min(ahead)..ahead]);
            prefetch(&m[b1.min(ahead)..ahead]);
            // SAFETY: AVX-512 VNNI is available (`isa`); the slices hold rows o..o + r.
            unsafe { x86::q4_gemv_rows(&qs[b0 * 16..b1 * 16], &d[b0..b1], &m[b0..b1], &x, &mut res[..r]) };
            for k in 0..r {
                put(o + k, &res[k..k + 1]);
            }
            o += r;
        }
        return;
    }
    let xs: [ActRow; TILE] = std::array::from_fn(|k| acts.row(t + k.min(n - 1)));
    let xs = &xs[..n];
    for o in range {
        let (qs, d, m) = (&qs[o * c / 2..(o + 1) * c / 2], &d[o * nb..(o + 1) * nb], &m[o * nb..(o + 1) * nb]);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is one this CPU supports (checked by `matmul_with`).
            Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::q4_rows_full(isa, qs, d, m, xs, &mut res) },
            _ => {
                q4_rows_scalar(qs, d, xs, &mut res);
                // The offset term: Σ_b m_b · (d · Σq)_b of each activation row.
                for (r, x) in res.iter_mut().zip(xs) {
                    *r += m.iter().zip(x.sum).map(|(m, s)| m.get() * s).sum::<f32>();
                }
            }
        }
        put(o, &res[..n]);
    }
}

/// Q8 weight rows `range` against activation rows `t..t + n`; results go to `put(row, values)`.
#[allow(clippy::too_many_arguments)]
fn q8_range<S: Scale>(
    isa: Isa,
    qs: &[i8],
    s: &[S],
    group: usize,
    c: usize,
    range: std::ops::Range<usize>,
    acts: &QActs,
    t: usize,
    n: usize,
    put: &dyn Fn(usize, &[f32]),
) {
    let ng = c / group;
    let mut res = [0f32; TILE];
    let xs: [ActRow; TILE] = std::array::from_fn(|k| acts.row(t + k.min(n - 1)));
    let xs = &xs[..n];
    let end = range.end;
    for o in range {
        if n == 1 && o + 4 < end {
            prefetch(&qs[(o + 4) * c..(o + 5) * c]);
            prefetch(&s[(o + 4) * ng..(o + 5) * ng]);
        }
        let (qs, s) = (&qs[o * c..(o + 1) * c], &s[o * ng..(o + 1) * ng]);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::q8_rows(isa, qs, s, group, xs, &mut res) },
            _ => q8_rows_scalar(qs, s, group, xs, &mut res),
        }
        put(o, &res[..n]);
    }
}

/// Hints the CPU to bring `data` into cache (no effect where there is no prefetch instruction).
#[inline]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (p, len) = (data.as_ptr().cast::<u8>(), std::mem::size_of_val(data));
        let mut i = 0;
        while i < len {
            // SAFETY: prefetching is a hint: it never faults and the address is inside `data`.
            unsafe { std::arch::x86_64::_mm_prefetch(p.add(i).cast::<i8>(), std::arch::x86_64::_MM_HINT_T0) };
            i += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Q4 row without its offset term (added by the caller).
fn q4_rows_scalar<S: Scale>(qs: &[u8], d: &[S], xs: &[ActRow], res: &mut [f32; TILE]) {
    for (k, x) in xs.iter().enumerate() {
        let mut acc = 0f32;
        for b in 0..d.len() {
            let bytes = &qs[b * 16..b * 16 + 16];
            let xq = &x.q[b * QK..(b + 1) * QK];
            let mut isum = 0i32;
            for j in 0..16 {
                isum += i32::from(bytes[j] & 0xF) * i32::from(xq[j]) + i32::from(bytes[j] >> 4) * i32::from(xq[j + 16]);
            }
            acc += d[b].get() * x.d[b] * isum as f32;
        }
        res[k] = acc;
    }
}

fn q8_rows_scalar<S: Scale>(qs: &[i8], s: &[S], group: usize, xs: &[ActRow], res: &mut [f32; TILE]) {
    for (k, x) in xs.iter().enumerate() {
        let mut acc = 0f32;
        for (g, (wq, sc)) in qs.chunks_exact(group).zip(s.iter().map(|v| v.get())).enumerate() {
            let b = g * group / QK;
            let xq = &x.q[g * group..(g + 1) * group];
            let isum: i32 = wq.iter().zip(xq).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            acc += sc * x.d[b] * isum as f32;
        }
        res[k] = acc;
    }
}

/// `v[i] = e^v[i]` for every value, to within a few ulp (Cephes' polynomial on a range-reduced
/// argument; inputs are clamped to [−87, 88], so a very negative input gives about 1e-38, not 0).
/// Vectorised (AVX-512 or AVX2 when available, bit for bit the portable result): softmax rows call
/// it instead of one `expf` per value.
pub fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() == Isa::Avx512Vnni {
        // SAFETY: AVX-512 F was detected (part of `Isa::Avx512Vnni`).
        return unsafe { x86::exp_in_place_avx512(v) };
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() >= Isa::Avx2 {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { x86::exp_in_place_avx2(v) };
    }
    exp_portable(v)
}

/// Softmax of `v` in place: `e^(v[i] − max) / Σ`, with [`exp_in_place`]'s `exp` and the sum taken
/// in sixteen lanes (value `i` into lane `i mod 16`, the lanes then added in order), vectorised with
/// AVX-512 or AVX2 where available and bit for bit the same as the portable version. An empty slice is left
/// alone.
pub fn softmax_in_place(v: &mut [f32]) {
    if v.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() == Isa::Avx512Vnni {
        // SAFETY: AVX-512 F was detected (part of `Isa::Avx512Vnni`).
        return unsafe { x86::softmax_in_place_avx512(v) };
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() >= Isa::Avx2 {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { x86::softmax_in_place_avx2(v) };
    }
    softmax_portable(v)
}

/// The reference [`softmax_in_place`]'s vectorised versions reproduce bit for bit.
fn softmax_portable(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    v.iter_mut().for_each(|x| *x -= max);
    exp_portable(v);
    let mut lanes = [0f32; 16];
    for c in v.chunks(16) {
        lanes.iter_mut().zip(c).for_each(|(l, &x)| *l += x);
    }
    let inv = 1.0 / lanes.iter().sum::<f32>();
    v.iter_mut().for_each(|x| *x *= inv);
}

/// `exp_portable`'s constants (shared with the AVX-512 version, which must give the same bits):
/// the rounding constant 1.5 · 2²³ (adding and subtracting it rounds to the nearest integer), ln 2
/// split in two parts, and the polynomial's coefficients from the highest power down.
const EXP_ROUND: f32 = 12_582_912.0;
const EXP_LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

#[inline(always)]
fn exp_portable(v: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    for x in v.iter_mut() {
        let a = x.clamp(-87.0, 88.0);
        let n = (a * LOG2E + EXP_ROUND) - EXP_ROUND;
        let r = a - n * EXP_LN2[0] - n * EXP_LN2[1];
        let mut p = EXP_POLY[0];
        for c in &EXP_POLY[1..] {
            p = p * r + c;
        }
        let e = p * r * r + r + 1.0;
        *x = e * f32::from_bits(((n as i32 + 127) << 23) as u32);
    }
}

/// f32 dot product (AVX2/FMA when available).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() >= Isa::Avx2 {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { x86::dot_f32(a, b) };
    }
    dot_f32_portable(a, b)
}

/// `y += a · x` (AVX2/FMA when available).
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() >= Isa::Avx2 {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { x86::axpy(a, x, y) };
    }
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// f32 dot product with 16 independent accumulators (vectorised by the compiler).
fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests;
