//! ggml tensor element types and their dequantization to f32 (ggml's reference formulas).

use half::{bf16, f16};

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// A ggml tensor element type, with its GGUF numeric id.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

impl GgmlType {
    /// Maps a GGUF type id; `None` for ids this crate does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q8_K => 292,
        }
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        !matches!(self, Self::Q8_1 | Self::Q2_K | Self::Q3_K | Self::Q8_K)
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error("dequantization of {0:?} is not supported")]
    Unsupported(GgmlType),
    #[error("{ty:?}: {n} elements is not a multiple of the block size {block}")]
    Partial { ty: GgmlType, n: usize, block: usize },
    #[error("{ty:?}: {n} elements need {need} bytes, got {got}")]
    Length { ty: GgmlType, n: usize, need: usize, got: usize },
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `out.len()` elements of type `ty` from `bytes` (exactly the bytes of those elements).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let n = out.len();
    let block = ty.block_size();
    if n % block != 0 {
        return Err(DequantError::Partial { ty, n, block });
    }
    let need = n / block * ty.block_bytes();
    if bytes.len() != need {
        return Err(DequantError::Length { ty, n, need, got: bytes.len() });
    }
    let blocks = bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = h(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = (i32::from(q & 0xF) - 8) as f32 * d;
                y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (h(b, 0), h(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = f32::from(q & 0xF) * d + m;
                y[j + 16] = f32::from(q >> 4) * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (j, &q) in b[6..22].iter().enumerate() {
                let hi0 = ((qh >> j) << 4) & 0x10;
                let hi1 = (qh >> (j + 12)) & 0x10;
                y[j] = ((u32::from(q & 0xF) | hi0) as i32 - 16) as f32 * d;
                y[j + 16] = ((u32::from(q >> 4) | hi1) as i32 - 16) as f32 * d;
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (h(b, 0), h(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for (j, &q) in b[8..24].iter().enumerate() {
                let hi0 = ((qh >> j) << 4) & 0x10;
                let hi1 = (qh >> (j + 12)) & 0x10;
                y[j] = (u32::from(q & 0xF) | hi0) as f32 * d + m;
                y[j + 16] = (u32::from(q >> 4) | hi1) as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for (j, &q) in b[2..34].iter().enumerate() {
                y[j] = f32::from(q as i8) * d;
            }
        }),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (chunk, j) in (0..QK_K).step_by(64).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
                let q = &qs[chunk * 32..chunk * 32 + 32];
                for l in 0..32 {
                    y[j + l] = d1 * f32::from(q[l] & 0xF) - min1;
                    y[j + 32 + l] = d2 * f32::from(q[l] >> 4) - min2;
                }
            }
        }),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for (chunk, j) in (0..QK_K).step_by(64).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
                let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
                let q = &qs[chunk * 32..chunk * 32 + 32];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
                    let h2 = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
                    y[j + l] = d1 * (f32::from(q[l] & 0xF) + h1) - min1;
                    y[j + 32 + l] = d2 * (f32::from(q[l] >> 4) + h2) - min2;
                }
            }
        }),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = h(b, 208);
            for half in 0..2 {
                let (ql, qh, sc, y) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..], &mut y[128 * half..]);
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
        }),
        other => return Err(DequantError::Unsupported(other)),
    }
    Ok(())
}

/// The 6-bit scale and min of sub-block `j` packed in a K-quant's 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (f32::from(sc), f32::from(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_by_hand() {
        let mut b = Vec::from(f16b(0.5));
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut y).unwrap();
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_1_by_hand() {
        let mut b = Vec::from(f16b(0.25));
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y).unwrap();
        for i in 0..16 {
            assert_eq!(y[i], i as f32 * 0.25 - 1.0);
            assert_eq!(y[i + 16], (15 - i) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn length_and_block_checks() {
        let mut y = [0f32; 31];
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 34], &mut y), Err(DequantError::Partial { .. })));
        let mut y = [0f32; 32];
        assert!(matches!(dequantize(GgmlType::Q8_0, &[0; 33], &mut y), Err(DequantError::Length { .. })));
        let mut y = [0f32; 256];
        assert!(matches!(dequantize(GgmlType::Q2_K, &[0; 84], &mut y), Err(DequantError::Unsupported(_))));
    }

    /// Random blocks dequantized by the reference implementation (gguf-py's `gguf.quants.dequantize`,
    /// which mirrors ggml), stored by `scripts/make_quant_fixtures.py`.
    #[test]
    fn matches_reference_dequantization() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf/quant_reference.json");
        let text = std::fs::read_to_string(path).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut checked = 0;
        for case in cases["cases"].as_array().unwrap() {
            let ty = GgmlType::from_id(case["type_id"].as_u64().unwrap() as u32).unwrap();
            let bytes: Vec<u8> = case["bytes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
            let want: Vec<f32> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &bytes, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6 * w.abs().max(1.0), "{ty:?}[{i}]: got {g}, want {w}");
            }
            checked += 1;
        }
        assert!(checked >= 9, "fixture has {checked} cases");
    }
}
