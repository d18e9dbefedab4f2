//! ggml tensor element types and their dequantization to f32.
//!
//! Every formula follows ggml's reference scalar code (`dequantize_row_*` in `ggml-quants.c`),
//! including the order of floating-point operations, so results match ggml and gguf-py bit for
//! bit. The kernels are scalar and allocation-free; SIMD versions can replace them later behind
//! the same [`dequantize`] entry point.
//!
//! Supported for dequantization: `F32`, `F16`, `BF16`, `F64`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`,
//! `Q8_0`, `Q2_K`, `Q3_K`, `Q4_K`, `Q5_K`, `Q6_K`, `Q8_K`, `IQ4_NL`, `IQ4_XS`. The other types
//! are known (so a file using them can be opened and its raw blocks read) but
//! [`dequantize`] answers [`DequantError::Unsupported`] for them.

use std::fmt;

use half::{bf16, f16};

/// Elements per K-quant super-block (`QK_K`).
pub const QK_K: usize = 256;

/// A ggml tensor element type: every type of ggml's `enum ggml_type`. The numeric id used in GGUF
/// files is [`GgmlType::id`]; ids ggml has retired (4, 5, 31–33, 36–38) are not represented.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE f32 (id 0).
    F32,
    /// IEEE f16 (id 1).
    F16,
    /// 4-bit, 32 per block, f16 scale (id 2).
    Q4_0,
    /// 4-bit, 32 per block, f16 scale and min (id 3).
    Q4_1,
    /// 5-bit, 32 per block, f16 scale (id 6).
    Q5_0,
    /// 5-bit, 32 per block, f16 scale and min (id 7).
    Q5_1,
    /// 8-bit, 32 per block, f16 scale (id 8).
    Q8_0,
    /// 8-bit, 32 per block, f16 scale and sum; ggml-internal (id 9).
    Q8_1,
    /// 2-bit K-quant, 256 per super-block (id 10).
    Q2_K,
    /// 3-bit K-quant (id 11).
    Q3_K,
    /// 4-bit K-quant (id 12).
    Q4_K,
    /// 5-bit K-quant (id 13).
    Q5_K,
    /// 6-bit K-quant (id 14).
    Q6_K,
    /// 8-bit K-quant, f32 scale; ggml-internal (id 15).
    Q8_K,
    /// 2.06-bit i-quant (id 16).
    IQ2_XXS,
    /// 2.31-bit i-quant (id 17).
    IQ2_XS,
    /// 3.06-bit i-quant (id 18).
    IQ3_XXS,
    /// 1.56-bit i-quant (id 19).
    IQ1_S,
    /// 4-bit non-linear, 32 per block (id 20).
    IQ4_NL,
    /// 3.44-bit i-quant (id 21).
    IQ3_S,
    /// 2.5-bit i-quant (id 22).
    IQ2_S,
    /// 4.25-bit non-linear, 256 per super-block (id 23).
    IQ4_XS,
    /// Signed 8-bit integer (id 24).
    I8,
    /// Signed 16-bit integer (id 25).
    I16,
    /// Signed 32-bit integer (id 26).
    I32,
    /// Signed 64-bit integer (id 27).
    I64,
    /// IEEE f64 (id 28).
    F64,
    /// 1.75-bit i-quant (id 29).
    IQ1_M,
    /// bfloat16 (id 30).
    BF16,
    /// Ternary 1.69-bit (id 34).
    TQ1_0,
    /// Ternary 2-bit (id 35).
    TQ2_0,
    /// OCP MX FP4, 32 per block, E8M0 scale (id 39).
    MXFP4,
    /// NVIDIA FP4, 64 per block, E4M3 scales (id 40).
    NVFP4,
    /// 1-bit, 128 per block, f16 scale (id 41).
    Q1_0,
    /// 2-bit, 64 per block, f16 scale (id 42).
    Q2_0,
}

/// `(type, ggml id, elements per block, bytes per block)`, from ggml's `ggml.h` and the block
/// structs in `ggml-common.h`.
const TABLE: [(GgmlType, u32, usize, usize); 35] = [
    (GgmlType::F32, 0, 1, 4),
    (GgmlType::F16, 1, 1, 2),
    (GgmlType::Q4_0, 2, 32, 18),
    (GgmlType::Q4_1, 3, 32, 20),
    (GgmlType::Q5_0, 6, 32, 22),
    (GgmlType::Q5_1, 7, 32, 24),
    (GgmlType::Q8_0, 8, 32, 34),
    (GgmlType::Q8_1, 9, 32, 36),
    (GgmlType::Q2_K, 10, QK_K, 84),
    (GgmlType::Q3_K, 11, QK_K, 110),
    (GgmlType::Q4_K, 12, QK_K, 144),
    (GgmlType::Q5_K, 13, QK_K, 176),
    (GgmlType::Q6_K, 14, QK_K, 210),
    (GgmlType::Q8_K, 15, QK_K, 292),
    (GgmlType::IQ2_XXS, 16, QK_K, 66),
    (GgmlType::IQ2_XS, 17, QK_K, 74),
    (GgmlType::IQ3_XXS, 18, QK_K, 98),
    (GgmlType::IQ1_S, 19, QK_K, 50),
    (GgmlType::IQ4_NL, 20, 32, 18),
    (GgmlType::IQ3_S, 21, QK_K, 110),
    (GgmlType::IQ2_S, 22, QK_K, 82),
    (GgmlType::IQ4_XS, 23, QK_K, 136),
    (GgmlType::I8, 24, 1, 1),
    (GgmlType::I16, 25, 1, 2),
    (GgmlType::I32, 26, 1, 4),
    (GgmlType::I64, 27, 1, 8),
    (GgmlType::F64, 28, 1, 8),
    (GgmlType::IQ1_M, 29, QK_K, 56),
    (GgmlType::BF16, 30, 1, 2),
    (GgmlType::TQ1_0, 34, QK_K, 54),
    (GgmlType::TQ2_0, 35, QK_K, 66),
    (GgmlType::MXFP4, 39, 32, 17),
    (GgmlType::NVFP4, 40, 64, 36),
    (GgmlType::Q1_0, 41, 128, 18),
    (GgmlType::Q2_0, 42, 64, 18),
];

impl GgmlType {
    /// Every type this crate knows, in id order.
    pub const ALL: [GgmlType; 35] = {
        let mut all = [GgmlType::F32; 35];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> (GgmlType, u32, usize, usize) {
        // `TABLE` lists every variant exactly once (checked by a unit test), in declaration order.
        TABLE[self as usize]
    }

    /// The type with ggml/GGUF id `id`; `None` for ids ggml does not define (or has retired).
    pub fn from_id(id: u32) -> Option<Self> {
        TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    /// The ggml/GGUF numeric id.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// ggml's name for the type, upper case as gguf-py spells it (`"Q4_K"`, `"BF16"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Q8_K => "Q8_K",
            Self::IQ2_XXS => "IQ2_XXS",
            Self::IQ2_XS => "IQ2_XS",
            Self::IQ3_XXS => "IQ3_XXS",
            Self::IQ1_S => "IQ1_S",
            Self::IQ4_NL => "IQ4_NL",
            Self::IQ3_S => "IQ3_S",
            Self::IQ2_S => "IQ2_S",
            Self::IQ4_XS => "IQ4_XS",
            Self::I8 => "I8",
            Self::I16 => "I16",
            Self::I32 => "I32",
            Self::I64 => "I64",
            Self::F64 => "F64",
            Self::IQ1_M => "IQ1_M",
            Self::BF16 => "BF16",
            Self::TQ1_0 => "TQ1_0",
            Self::TQ2_0 => "TQ2_0",
            Self::MXFP4 => "MXFP4",
            Self::NVFP4 => "NVFP4",
            Self::Q1_0 => "Q1_0",
            Self::Q2_0 => "Q2_0",
        }
    }

    /// Elements per block (1 for plain scalar types, 32 for `Q8_0`, 256 for K-quants, ...).
    pub fn block_size(self) -> usize {
        self.row().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.row().3
    }

    /// Whether the type packs several elements per block (everything but the plain scalar types).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n_elements` elements of this type; `None` when `n_elements` is not a
    /// multiple of [`block_size`](Self::block_size) or the size overflows `u64`.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.block_bytes() as u64)
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::F64
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q2_K
                | Self::Q3_K
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
                | Self::Q8_K
                | Self::IQ4_NL
                | Self::IQ4_XS
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// [`dequantize`] has no kernel for this type (see [`GgmlType::can_dequantize`]).
    #[error("dequantization of {0} is not supported")]
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    Partial {
        /// The element type.
        ty: GgmlType,
        /// Element count asked for.
        n: usize,
        /// Elements per block of `ty`.
        block: usize,
    },
    /// The input holds a different number of bytes than `n` elements take.
    #[error("{ty}: {n} elements take {need} bytes, got {got}")]
    Length {
        /// The element type.
        ty: GgmlType,
        /// Element count asked for.
        n: usize,
        /// Bytes those elements take.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The output slice's length differs from the element count.
    #[error("{ty}: output holds {got} values, expected {n}")]
    Output {
        /// The element type.
        ty: GgmlType,
        /// Element count asked for.
        n: usize,
        /// Length of the output slice.
        got: usize,
    },
}

/// Non-linear 4-bit code book of `IQ4_NL` / `IQ4_XS` (ggml's `kvalues_iq4nl`).
const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Little-endian f16 at byte `at`, widened exactly to f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `n_elements` elements of type `ty` from `bytes` into `out`.
///
/// `bytes` must be exactly the blocks of those elements (`ty.bytes_for(n_elements)` bytes, as a
/// slice of [`GgufFile::tensor_bytes`](super::gguf::GgufFile::tensor_bytes) or one row of it) and
/// `out` must hold exactly `n_elements` values. Element order is ggml's (within a tensor,
/// `ne[0]` fastest, i.e. row-major in PyTorch order).
///
/// # Errors
/// [`DequantError::Unsupported`] for types without a kernel, [`DequantError::Partial`] when
/// `n_elements` is not a whole number of blocks, [`DequantError::Length`] /
/// [`DequantError::Output`] when the slices have the wrong length. Nothing is written on error.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize, out: &mut [f32]) -> Result<(), DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    let block = ty.block_size();
    if !n_elements.is_multiple_of(block) {
        return Err(DequantError::Partial { ty, n: n_elements, block });
    }
    if out.len() != n_elements {
        return Err(DequantError::Output { ty, n: n_elements, got: out.len() });
    }
    let need = (n_elements / block).checked_mul(ty.block_bytes());
    if need != Some(bytes.len()) {
        return Err(DequantError::Length { ty, n: n_elements, need: need.unwrap_or(usize::MAX), got: bytes.len() });
    }
    let blocks = bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::F64 => blocks.for_each(|(b, y)| y[0] = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        GgmlType::Q8_K => blocks.for_each(|(b, y)| q8_k(b, y)),
        GgmlType::IQ4_NL => blocks.for_each(|(b, y)| iq4_nl(b, y)),
        GgmlType::IQ4_XS => blocks.for_each(|(b, y)| iq4_xs(b, y)),
        other => return Err(DequantError::Unsupported(other)),
    }
    Ok(())
}

// Block kernels. Each takes exactly one block's bytes and its output elements (lengths
// guaranteed by `chunks_exact` in `dequantize`).

/// `Q4_0`: f16 `d`, 16 bytes of nibbles; `y = (q - 8) * d`, low nibbles first.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = (i32::from(q & 0xF) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// `Q4_1`: f16 `d`, f16 `m`, 16 bytes of nibbles; `y = q * d + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = f32::from(q & 0xF) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// `Q5_0`: f16 `d`, 32 fifth bits in a u32, 16 bytes of nibbles; `y = (q - 16) * d`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((u32::from(q & 0xF) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = ((u32::from(q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// `Q5_1`: f16 `d`, f16 `m`, u32 fifth bits, 16 bytes of nibbles; `y = q * d + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (u32::from(q & 0xF) | h0) as f32 * d + m;
        y[j + 16] = (u32::from(q >> 4) | h1) as f32 * d + m;
    }
}

/// `Q8_0`: f16 `d`, 32 signed bytes; `y = q * d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = f32::from(q as i8) * d;
    }
}

/// `Q2_K`: 16 bytes of 4-bit scale|min pairs, 64 bytes of 2-bit quants, f16 `d`, f16 `dmin`;
/// sixteen groups of 16: `y = (d * scale) * q - (dmin * min)`.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &b[16 + 32 * half..16 + 32 * half + 32];
        let y = &mut y[128 * half..128 * half + 128];
        for (j, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = dmin * f32::from(sc >> 4);
                let q = &q[16 * part..16 * part + 16];
                let y = &mut y[32 * j + 16 * part..32 * j + 16 * part + 16];
                for (yl, &ql) in y.iter_mut().zip(q) {
                    *yl = dl * f32::from((ql >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// The sixteen signed 6-bit scales of a `Q3_K` block, unpacked from 12 bytes (low nibbles in
/// bytes 0..8, high bit pairs in bytes 8..12), minus 32.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0xF;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = i32::from(low | (high << 4)) - 32;
    }
    out
}

/// `Q3_K`: 32 bytes of high bits (set = no offset), 64 bytes of 2-bit quants, 12 bytes of 6-bit
/// scales, f16 `d`; sixteen groups of 16: `y = (d * scale) * (q - (high ? 0 : 4))`.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &b[32 + 32 * half..32 + 32 * half + 32];
        let y = &mut y[128 * half..128 * half + 128];
        for (j, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                let r = 16 * part..16 * part + 16;
                let y = &mut y[32 * j + 16 * part..32 * j + 16 * part + 16];
                for ((yl, &ql), &hl) in y.iter_mut().zip(&q[r.clone()]).zip(&hmask[r.clone()]) {
                    let v = i32::from((ql >> shift) & 3) - if hl & m != 0 { 0 } else { 4 };
                    *yl = dl * v as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in a K-quant's 12 scale bytes
/// (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 { (q[j] & 63, q[j + 4] & 63) } else { ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)) };
    (f32::from(sc), f32::from(m))
}

/// `Q4_K`: f16 `d`, f16 `dmin`, 12 scale bytes, 128 bytes of nibbles; eight groups of 32:
/// `y = (d * scale) * q - (dmin * min)`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let q = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
        let (lo, hi) = y[64 * chunk..64 * chunk + 64].split_at_mut(32);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(q) {
            *l = d1 * f32::from(q & 0xF) - min1;
            *h = d2 * f32::from(q >> 4) - min2;
        }
    }
}

/// `Q5_K`: like `Q4_K` plus 32 bytes of fifth bits; `y = (d * scale) * (q + 16 * high) - (dmin * min)`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let q = &b[48 + 32 * chunk..48 + 32 * chunk + 32];
        let (lo, hi) = y[64 * chunk..64 * chunk + 64].split_at_mut(32);
        for (((l, h), &q), &qh) in lo.iter_mut().zip(hi).zip(q).zip(qh) {
            let h1 = if qh & u1 != 0 { 16 } else { 0 };
            let h2 = if qh & u2 != 0 { 16 } else { 0 };
            *l = d1 * f32::from((q & 0xF) + h1) - min1;
            *h = d2 * f32::from((q >> 4) + h2) - min2;
        }
    }
}

/// `Q6_K`: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed 8-bit scales, f16 `d`;
/// sixteen groups of 16: `y = (d * scale) * (q - 32)`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = (i32::from(ql[l] & 0xF) | (i32::from(qh[l] & 3) << 4)) - 32;
            let q2 = (i32::from(ql[l + 32] & 0xF) | (i32::from((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = (i32::from(ql[l] >> 4) | (i32::from((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = (i32::from(ql[l + 32] >> 4) | (i32::from((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// `Q8_K` (ggml's intermediate type): f32 `d`, 256 signed bytes, 16 i16 sums; `y = d * q`.
fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (yj, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
        *yj = d * f32::from(q as i8);
    }
}

/// `IQ4_NL`: f16 `d`, 16 bytes of nibbles indexing the non-linear code book; `y = d * kvalue[q]`.
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

/// `IQ4_XS`: f16 `d`, u16 of high scale bit pairs, 4 bytes of low scale nibbles, 128 bytes of
/// code-book nibbles; eight groups of 32: `y = (d * (scale - 32)) * kvalue[q]`.
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let scales_l = &b[4..8];
    for ib in 0..QK_K / 32 {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * (i32::from(low | (high << 4)) - 32) as f32;
        let q = &b[8 + 16 * ib..8 + 16 * ib + 16];
        let (lo, hi) = y[32 * ib..32 * ib + 32].split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(q) {
            *l = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
            *h = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn type_table_is_consistent() {
        for (i, ty) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(*ty as usize, i, "{ty}: TABLE out of declaration order");
            assert_eq!(GgmlType::from_id(ty.id()), Some(*ty));
            assert_eq!(format!("{ty:?}"), ty.name());
        }
        // Retired and future ids.
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "{id}");
        }
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }

    /// Q8_0 by hand: scale 0.5, quants -16..15, so element i is (i - 16) / 2.
    #[test]
    fn q8_0_by_hand() {
        let mut b = Vec::from(f16b(0.5));
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, 32, &mut y).unwrap();
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
    }

    /// Q4_1 by hand: d = 0.25, m = -1; byte j holds j in its low nibble (element j) and 15 - j in
    /// its high nibble (element j + 16).
    #[test]
    fn q4_1_by_hand() {
        let mut b = Vec::from(f16b(0.25));
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, 32, &mut y).unwrap();
        for i in 0..16 {
            assert_eq!(y[i], i as f32 * 0.25 - 1.0);
            assert_eq!(y[i + 16], (15 - i) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn length_and_block_checks() {
        let mut y = [0f32; 31];
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 34], 31, &mut y), Err(DequantError::Partial { .. })));
        let mut y = [0f32; 32];
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 33], 32, &mut y), Err(DequantError::Length { .. })));
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 68], 64, &mut y), Err(DequantError::Output { .. })));
        let mut y = [0f32; 256];
        assert!(matches!(dequantize(GgmlType::IQ2_XXS, &[0; 66], 256, &mut y), Err(DequantError::Unsupported(_))));
        assert!(dequantize(GgmlType::Q4_K, &[], 0, &mut []).is_ok());
    }

    /// Random blocks (and special f16/bf16 values) dequantized by the reference implementation
    /// (gguf-py's `gguf.quants.dequantize`, which mirrors ggml), stored by
    /// `scripts/make_quant_fixtures.py` as f32 bit patterns. Compared bit for bit.
    #[test]
    fn matches_reference_dequantization() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf/quant_reference.json");
        let text = std::fs::read_to_string(path).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for case in cases["cases"].as_array().unwrap() {
            let id = case["type_id"].as_u64().unwrap() as u32;
            let ty = GgmlType::from_id(id).unwrap();
            assert_eq!(ty.name(), case["type"].as_str().unwrap());
            let bytes: Vec<u8> = case["bytes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
            let want: Vec<u32> = case["f32_bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &bytes, want.len(), &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let w = f32::from_bits(*w);
                assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{ty}[{i}]: got {g:e}, want {w:e}");
            }
            seen.insert(ty.name());
        }
        for ty in GgmlType::ALL.iter().filter(|t| t.can_dequantize() && **t != GgmlType::Q8_K) {
            assert!(seen.contains(ty.name()), "no reference case for {ty}");
        }
    }

    /// Q8_K has no gguf-py reference (it never appears in files); check ggml's `y = d * q`.
    #[test]
    fn q8_k_by_hand() {
        let mut b = 0.125f32.to_le_bytes().to_vec();
        b.extend((0..256).map(|i| (i as u8).wrapping_sub(128)));
        b.extend([0u8; 32]);
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q8_K, &b, 256, &mut y).unwrap();
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 128.0) * 0.125);
        }
    }
}
