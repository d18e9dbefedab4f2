//! x86-64 dot-product kernels: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI (`vpdpbusd` on
//! 256-bit registers). One weight block is unpacked once and multiplied with up to [`TILE`]
//! activation rows; integer block sums are scaled in f32 with FMA.

use std::arch::x86_64::*;

use super::{ActRow, Isa, QK, TILE};

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(w: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
unsafe fn dot_vnni(w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

macro_rules! kernels {
    ($q4:ident, $q8:ident, $feat:literal, $dot:ident) => {
        /// `res[k] = Σ_b d_b·xd_b·(u·x_k)_b + m_b·xsum_b` over the blocks of one Q4 row.
        #[target_feature(enable = $feat)]
        unsafe fn $q4<const N: usize>(qs: &[u8], d: &[f32], m: &[f32], xs: &[ActRow], res: &mut [f32; TILE]) {
            let nb = d.len();
            debug_assert!(qs.len() == nb * 16 && m.len() == nb && xs.len() == N);
            debug_assert!(xs.iter().all(|x| x.q.len() == nb * QK && x.d.len() == nb));
            let mask = _mm_set1_epi8(0x0F);
            let mut acc = [_mm256_setzero_ps(); N];
            let mut macc = [0f32; N];
            for b in 0..nb {
                let raw = _mm_loadu_si128(qs.as_ptr().add(b * 16) as *const __m128i);
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                let w = _mm256_set_m128i(hi, lo);
                let (wd, wm) = (*d.get_unchecked(b), *m.get_unchecked(b));
                for k in 0..N {
                    let x = xs.get_unchecked(k);
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                    let p = $dot(w, xv);
                    let scale = _mm256_set1_ps(wd * *x.d.get_unchecked(b));
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
                    macc[k] += wm * *x.sum.get_unchecked(b);
                }
            }
            for k in 0..N {
                res[k] = hsum(acc[k]) + macc[k];
            }
        }

        /// `res[k] = Σ_g s_g·xd·(q·x_k)_g` over one Q8 row (scales per 32 or per 16 values).
        #[target_feature(enable = $feat)]
        unsafe fn $q8<const N: usize>(qs: &[i8], s: &[f32], group: usize, xs: &[ActRow], res: &mut [f32; TILE]) {
            let nb = qs.len() / QK;
            debug_assert!(xs.len() == N && s.len() * group == qs.len());
            debug_assert!(xs.iter().all(|x| x.q.len() == nb * QK && x.d.len() == nb));
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..nb {
                let w = _mm256_loadu_si256(qs.as_ptr().add(b * QK) as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                // Lanes 0-3 sum values 0-15 of the block, lanes 4-7 values 16-31.
                let ws = if group == QK {
                    _mm256_set1_ps(*s.get_unchecked(b))
                } else {
                    _mm256_set_m128(_mm_set1_ps(*s.get_unchecked(2 * b + 1)), _mm_set1_ps(*s.get_unchecked(2 * b)))
                };
                for k in 0..N {
                    let x = xs.get_unchecked(k);
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                    let p = $dot(aw, _mm256_sign_epi8(xv, w));
                    let scale = _mm256_mul_ps(ws, _mm256_set1_ps(*x.d.get_unchecked(b)));
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
                }
            }
            for k in 0..N {
                res[k] = hsum(acc[k]);
            }
        }
    };
}

kernels!(q4_avx2, q8_avx2, "avx2,fma", dot_avx2);
kernels!(q4_vnni, q8_vnni, "avx2,fma,avx512vnni,avx512vl", dot_vnni);

/// Q4 row against `xs.len()` (1 to [`TILE`]) activation rows.
///
/// # Safety
/// The CPU supports `isa` (AVX2 + FMA, plus AVX-512 VNNI/VL for [`Isa::Avx512Vnni`]); slices as
/// the Q4 layout implies.
pub(super) unsafe fn q4_rows(isa: Isa, qs: &[u8], d: &[f32], m: &[f32], xs: &[ActRow], res: &mut [f32; TILE]) {
    macro_rules! go {
        ($f:ident) => {
            match xs.len() {
                1 => $f::<1>(qs, d, m, xs, res),
                2 => $f::<2>(qs, d, m, xs, res),
                3 => $f::<3>(qs, d, m, xs, res),
                _ => $f::<4>(qs, d, m, xs, res),
            }
        };
    }
    if isa == Isa::Avx512Vnni {
        go!(q4_vnni)
    } else {
        go!(q4_avx2)
    }
}

/// Q8 row against `xs.len()` (1 to [`TILE`]) activation rows.
///
/// # Safety
/// As [`q4_rows`].
pub(super) unsafe fn q8_rows(isa: Isa, qs: &[i8], s: &[f32], group: usize, xs: &[ActRow], res: &mut [f32; TILE]) {
    macro_rules! go {
        ($f:ident) => {
            match xs.len() {
                1 => $f::<1>(qs, s, group, xs, res),
                2 => $f::<2>(qs, s, group, xs, res),
                3 => $f::<3>(qs, s, group, xs, res),
                _ => $f::<4>(qs, s, group, xs, res),
            }
        };
    }
    if isa == Isa::Avx512Vnni {
        go!(q8_vnni)
    } else {
        go!(q8_avx2)
    }
}
