//! x86-64 dot-product kernels: AVX2 (`vpmaddubsw` + `vpmaddwd`, one block per 256-bit register)
//! and AVX-512 VNNI (`vpdpbusd`, two blocks per 512-bit register). Weight blocks are unpacked once
//! and multiplied with up to [`TILE`] activation rows; integer block sums are scaled in f32 with FMA.

use std::arch::x86_64::*;

use super::{ActRow, Isa, Scale, QK, TILE};

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
        /// `res[k] = Σ_b d_b·xd_b·(u·x_k)_b` over the blocks of one Q4 row (the offset term is
        /// the caller's).
        #[target_feature(enable = $feat)]
        unsafe fn $q4<S: Scale, const N: usize>(qs: &[u8], d: &[S], xs: &[ActRow], res: &mut [f32; TILE]) {
            // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
            // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
            unsafe {
                let nb = d.len();
                debug_assert!(qs.len() == nb * 16 && xs.len() == N);
                debug_assert!(xs.iter().all(|x| x.q.len() == nb * QK && x.d.len() == nb));
                let mask = _mm_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    let raw = _mm_loadu_si128(qs.as_ptr().add(b * 16) as *const __m128i);
                    let lo = _mm_and_si128(raw, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    let w = _mm256_set_m128i(hi, lo);
                    let wd = S::one(d.as_ptr().add(b));
                    for k in 0..N {
                        let x = xs.get_unchecked(k);
                        let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                        let p = $dot(w, xv);
                        let scale = _mm256_set1_ps(wd * *x.d.get_unchecked(b));
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
                    }
                }
                for k in 0..N {
                    res[k] = hsum(acc[k]);
                }
            }
        }

        /// `res[k] = Σ_g s_g·xd·(q·x_k)_g` over one Q8 row (scales per 32 or per 16 values).
        #[target_feature(enable = $feat)]
        unsafe fn $q8<S: Scale, const N: usize>(qs: &[i8], s: &[S], group: usize, xs: &[ActRow], res: &mut [f32; TILE]) {
            // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
            // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
            unsafe {
                let nb = qs.len() / QK;
                debug_assert!(xs.len() == N && s.len() * group == qs.len());
                debug_assert!(xs.iter().all(|x| x.q.len() == nb * QK && x.d.len() == nb));
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    let w = _mm256_loadu_si256(qs.as_ptr().add(b * QK) as *const __m256i);
                    let aw = _mm256_sign_epi8(w, w);
                    // Lanes 0-3 sum values 0-15 of the block, lanes 4-7 values 16-31.
                    let ws = if group == QK {
                        _mm256_set1_ps(S::one(s.as_ptr().add(b)))
                    } else {
                        let p = S::pair(s.as_ptr().add(2 * b));
                        _mm256_set_m128(_mm_permute_ps(p, 0b01_01_01_01), _mm_permute_ps(p, 0))
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
        }
    };
}

kernels!(q4_avx2, q8_avx2, "avx2,fma,f16c", dot_avx2);

/// `Σ_b m_b · s_b` (the Q4 offset term) with AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_term<S: Scale>(m: &[S], s: &[f32]) -> f32 {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let n = m.len();
        let mut b = 0;
        while b + 8 <= n {
            acc = _mm256_fmadd_ps(S::eight(m.as_ptr().add(b)), _mm256_loadu_ps(s.as_ptr().add(b)), acc);
            b += 8;
        }
        let mut sum = hsum(acc);
        while b < n {
            sum += S::one(m.as_ptr().add(b)) * *s.get_unchecked(b);
            b += 1;
        }
        sum
    }
}

/// One block pair (blocks `b`, `b + 1`) of unsigned weight bytes `w` in the activations' pair lane
/// order, with the weight scales `wd` spread over those lanes, against each activation row's pair
/// copy: `acc[k] += (w · x_k) · wd · dz_k` lane by lane.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `xs` holds `N` rows whose pair copies cover blocks `b`
/// and `b + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn pair_products<const N: usize>(w: __m512i, wd: __m512, xs: &[ActRow], b: usize, acc: &mut [__m512; N]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        for (k, acc) in acc.iter_mut().enumerate() {
            let x = xs.get_unchecked(k);
            let xv = _mm512_loadu_si512(x.qz.as_ptr().add(b * QK) as *const __m512i);
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
            let scale = _mm512_mul_ps(wd, _mm512_loadu_ps(x.dz.as_ptr().add(b * 8)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, *acc);
        }
    }
}

/// The AVX-512 Q4 kernel: two blocks per 512-bit `vpdpbusd`. The 32 bytes of a block pair unpack
/// to `[b0 low, b1 low, b0 high, b1 high]` (16 values each), the lane order in which
/// [`super::QActs`] keeps a copy of the activations (`qz`, with spread scales `dz`); lanes 0-3 and
/// 8-11 then sum block 0, lanes 4-7 and 12-15 block 1. Includes the offset term.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn q4_zmm<S: Scale, const N: usize>(qs: &[u8], d: &[S], m: &[S], xs: &[ActRow], res: &mut [f32; TILE]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        let nb = d.len();
        let mask = _mm256_set1_epi8(0x0F);
        let idx = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut b = 0;
        while b + 2 <= nb {
            let raw = _mm256_loadu_si256(qs.as_ptr().add(b * 16) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            // The weight scales spread over the lanes once; the activations come pre-arranged.
            let wd = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(S::pair(d.as_ptr().add(b))));
            pair_products(w, wd, xs, b, &mut acc);
            b += 2;
        }
        for k in 0..N {
            let x = xs.get_unchecked(k);
            let mut r = _mm512_reduce_add_ps(acc[k]);
            if b < nb {
                // An odd last block: the 256-bit way.
                let raw = _mm_loadu_si128(qs.as_ptr().add(b * 16) as *const __m128i);
                let m4 = _mm_set1_epi8(0x0F);
                let w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
                let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                r += hsum(_mm256_cvtepi32_ps(dot_vnni(w, xv))) * (S::one(d.as_ptr().add(b)) * *x.d.get_unchecked(b));
            }
            res[k] = r + offset_term(m, x.sum);
        }
    }
}

/// Decode (one activation row) against `R` consecutive Q4 weight rows at once: the activation
/// block is loaded once for all rows and the rows' accumulators are independent, so neither the
/// FMA latency chain nor one row's memory stream limits the loop. Offset terms included.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn q4_gemv<S: Scale, const R: usize>(qs: &[u8], d: &[S], m: &[S], x: &ActRow, res: &mut [f32]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        let nb = x.d.len();
        debug_assert!(qs.len() == R * nb * 16 && d.len() == R * nb && m.len() == R * nb && res.len() == R);
        let mask = _mm256_set1_epi8(0x0F);
        let idx = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut b = 0;
        while b + 2 <= nb {
            let xv = _mm512_loadu_si512(x.qz.as_ptr().add(b * QK) as *const __m512i);
            let xd = _mm_castpd_ps(_mm_load_sd(x.d.as_ptr().add(b) as *const f64));
            for (r, acc) in acc.iter_mut().enumerate() {
                let blk = r * nb + b;
                let raw = _mm256_loadu_si256(qs.as_ptr().add(blk * 16) as *const __m256i);
                let lo = _mm256_and_si256(raw, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
                let wd = S::pair(d.as_ptr().add(blk));
                let scale = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(wd, xd)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, *acc);
            }
            b += 2;
        }
        for r in 0..R {
            let mut v = _mm512_reduce_add_ps(acc[r]);
            if b < nb {
                let blk = r * nb + b;
                let raw = _mm_loadu_si128(qs.as_ptr().add(blk * 16) as *const __m128i);
                let m4 = _mm_set1_epi8(0x0F);
                let w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
                let xq = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                v += hsum(_mm256_cvtepi32_ps(dot_vnni(w, xq))) * (S::one(d.as_ptr().add(blk)) * *x.d.get_unchecked(b));
            }
            *res.get_unchecked_mut(r) = v + offset_term(&m[r * nb..(r + 1) * nb], x.sum);
        }
    }
}

/// Rows per [`q4_gemv_rows`] call.
pub(super) const GEMV_ROWS: usize = 4;

/// One activation row against `res.len()` (1 or [`GEMV_ROWS`]) consecutive Q4 rows.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; slices as the Q4 layout implies for that many rows.
pub(super) unsafe fn q4_gemv_rows<S: Scale>(qs: &[u8], d: &[S], m: &[S], x: &ActRow, res: &mut [f32]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        if res.len() == GEMV_ROWS {
            q4_gemv::<S, GEMV_ROWS>(qs, d, m, x, res)
        } else {
            q4_gemv::<S, 1>(qs, d, m, x, res)
        }
    }
}

/// Q4 row against `xs.len()` (1 to [`TILE`]) activation rows, offset term included.
///
/// # Safety
/// The CPU supports `isa` (AVX2 + FMA; for [`Isa::Avx512Vnni`] also AVX-512 F/BW/VL/VNNI).
pub(super) unsafe fn q4_rows_full<S: Scale>(isa: Isa, qs: &[u8], d: &[S], m: &[S], xs: &[ActRow], res: &mut [f32; TILE]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        if isa == Isa::Avx512Vnni {
            match xs.len() {
                1 => q4_zmm::<S, 1>(qs, d, m, xs, res),
                2 => q4_zmm::<S, 2>(qs, d, m, xs, res),
                3 => q4_zmm::<S, 3>(qs, d, m, xs, res),
                _ => q4_zmm::<S, 4>(qs, d, m, xs, res),
            }
        } else {
            q4_rows(isa, qs, d, xs, res);
            for (r, x) in res.iter_mut().zip(xs) {
                *r += offset_term(m, x.sum);
            }
        }
    }
}

/// Q4 row against `xs.len()` (1 to [`TILE`]) activation rows.
///
/// # Safety
/// The CPU supports `isa` (AVX2 + FMA, plus AVX-512 VNNI/VL for [`Isa::Avx512Vnni`]); slices as
/// the Q4 layout implies.
pub(super) unsafe fn q4_rows<S: Scale>(isa: Isa, qs: &[u8], d: &[S], xs: &[ActRow], res: &mut [f32; TILE]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        macro_rules! go {
            ($f:ident) => {
                match xs.len() {
                    1 => $f::<S, 1>(qs, d, xs, res),
                    2 => $f::<S, 2>(qs, d, xs, res),
                    3 => $f::<S, 3>(qs, d, xs, res),
                    _ => $f::<S, 4>(qs, d, xs, res),
                }
            };
        }
        debug_assert!(isa >= Isa::Avx2);
        go!(q4_avx2)
    }
}

/// Q8 row against `xs.len()` (1 to [`TILE`]) activation rows.
///
/// # Safety
/// The CPU supports AVX2 and FMA; slices as the Q8 layout implies.
pub(super) unsafe fn q8_rows<S: Scale>(isa: Isa, qs: &[i8], s: &[S], group: usize, xs: &[ActRow], res: &mut [f32; TILE]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        macro_rules! go {
            ($f:ident) => {
                match xs.len() {
                    1 => $f::<S, 1>(qs, s, group, xs, res),
                    2 => $f::<S, 2>(qs, s, group, xs, res),
                    3 => $f::<S, 3>(qs, s, group, xs, res),
                    _ => $f::<S, 4>(qs, s, group, xs, res),
                }
            };
        }
        // AVX2 also on AVX-512 CPUs: measured faster for Q8 rows (benches/kernels.rs, AMD EPYC).
        debug_assert!(isa >= Isa::Avx2);
        go!(q8_avx2)
    }
}

/// f32 dot product with four 8-wide FMA accumulators.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum(v);
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }
}

/// `y += a · x` with 8-wide FMA.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        let n = x.len().min(y.len());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)));
            i += 8;
        }
        while i < n {
            *y.get_unchecked_mut(i) += a * *x.get_unchecked(i);
            i += 1;
        }
    }
}

/// [`super::QKind::U8`] rows (pair-interleaved unsigned bytes, `w = d·u + m`) against `N`
/// activation rows: `vpdpbusd` on two blocks per 512-bit register, the activations' pair copy and
/// spread scales as the Q4 kernel uses them, offset term included.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
unsafe fn u8_zmm<const N: usize>(qs: &[u8], d: &[f32], m: &[f32], xs: &[ActRow], res: &mut [f32; TILE]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        let nb = d.len();
        debug_assert!(qs.len() == nb * QK && m.len() == nb && xs.len() == N);
        let idx = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut b = 0;
        while b + 2 <= nb {
            let w = _mm512_loadu_si512(qs.as_ptr().add(b * QK) as *const __m512i);
            let wd = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f32::pair(d.as_ptr().add(b))));
            pair_products(w, wd, xs, b, &mut acc);
            b += 2;
        }
        for k in 0..N {
            let x = xs.get_unchecked(k);
            let mut r = _mm512_reduce_add_ps(acc[k]);
            if b < nb {
                let w = _mm256_loadu_si256(qs.as_ptr().add(b * QK) as *const __m256i);
                let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                r += hsum(_mm256_cvtepi32_ps(dot_vnni(w, xv))) * (*d.get_unchecked(b) * *x.d.get_unchecked(b));
            }
            res[k] = r + offset_term(m, x.sum);
        }
    }
}

/// One [`super::QKind::U8`] row against `xs.len()` (1 to [`TILE`]) activation rows.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; slices as the U8 layout implies.
pub(super) unsafe fn u8_rows(qs: &[u8], d: &[f32], m: &[f32], xs: &[ActRow], res: &mut [f32; TILE]) {
    // SAFETY: this function's contract: its callers checked the CPU features it enables and pass
    // slices of the sizes the layout implies, which every load and pointer offset below stays inside.
    unsafe {
        match xs.len() {
            1 => u8_zmm::<1>(qs, d, m, xs, res),
            2 => u8_zmm::<2>(qs, d, m, xs, res),
            3 => u8_zmm::<3>(qs, d, m, xs, res),
            _ => u8_zmm::<4>(qs, d, m, xs, res),
        }
    }
}

/// [`super::exp_in_place`] sixteen lanes at a time: the same operations in the same order as
/// `exp_portable` (no fused multiply-adds), so the results are bit for bit the same.
///
/// # Safety
/// The CPU supports AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_in_place_avx512(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(16);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds 16 values.
        let x = unsafe { _mm512_loadu_ps(p) };
        // SAFETY: as the load.
        unsafe { _mm512_storeu_ps(p, exp16(x)) };
    }
    super::exp_portable(chunks.into_remainder());
}

/// `exp_portable` on sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    let a = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
    let round = _mm512_set1_ps(super::EXP_ROUND);
    let n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(a, _mm512_set1_ps(std::f32::consts::LOG2_E)), round), round);
    let [ln2_hi, ln2_lo] = super::EXP_LN2;
    let r = _mm512_sub_ps(_mm512_sub_ps(a, _mm512_mul_ps(n, _mm512_set1_ps(ln2_hi))), _mm512_mul_ps(n, _mm512_set1_ps(ln2_lo)));
    let mut q = _mm512_set1_ps(super::EXP_POLY[0]);
    for &coef in &super::EXP_POLY[1..] {
        q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(coef));
    }
    let e = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(q, r), r), r), _mm512_set1_ps(1.0));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23));
    _mm512_mul_ps(e, scale)
}

/// [`super::softmax_in_place`] sixteen lanes at a time (the same operations in the same order as
/// `softmax_portable`; the last partial chunk masked).
///
/// # Safety
/// The CPU supports AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_in_place_avx512(v: &mut [f32]) {
    let n = v.len();
    let p = v.as_mut_ptr();
    let mask_at = |i: usize| -> __mmask16 {
        if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        }
    };
    // Every load and store below is masked to values `i..min(i + 16, n)` of `v`.
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(16) {
        // SAFETY: the mask covers only values of `v`.
        m = _mm512_max_ps(m, unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask_at(i), p.add(i)) });
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let k = mask_at(i);
        // SAFETY: the mask covers only values of `v`.
        let e = exp16(_mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(k, p.add(i)) }, max));
        sum = _mm512_mask_add_ps(sum, k, sum, e);
        // SAFETY: as the load.
        unsafe { _mm512_mask_storeu_ps(p.add(i), k, e) };
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 values.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sum) };
    let inv = _mm512_set1_ps(1.0 / lanes.iter().sum::<f32>());
    for i in (0..n).step_by(16) {
        let k = mask_at(i);
        // SAFETY: the mask covers only values of `v`.
        unsafe { _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv)) };
    }
}

/// [`super::exp_in_place`] eight lanes at a time, bit for bit `exp_portable` (as [`exp16`]). The
/// portable loop compiled for AVX2 converts `n` to an integer one lane at a time (Rust's saturating
/// `as`), which made the vectorised `exp` several times slower than this.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn exp_in_place_avx2(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds 8 values.
        let x = unsafe { _mm256_loadu_ps(p) };
        // SAFETY: as the load.
        unsafe { _mm256_storeu_ps(p, exp8(x)) };
    }
    super::exp_portable(chunks.into_remainder());
}

/// `exp_portable` on eight lanes: the same operations in the same order, no fused multiply-adds
/// (`n` is a whole number in `[-126, 127]` after the clamp, so truncating it is exact).
#[inline]
#[target_feature(enable = "avx2")]
fn exp8(x: __m256) -> __m256 {
    let a = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
    let round = _mm256_set1_ps(super::EXP_ROUND);
    let n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(a, _mm256_set1_ps(std::f32::consts::LOG2_E)), round), round);
    let [ln2_hi, ln2_lo] = super::EXP_LN2;
    let r = _mm256_sub_ps(_mm256_sub_ps(a, _mm256_mul_ps(n, _mm256_set1_ps(ln2_hi))), _mm256_mul_ps(n, _mm256_set1_ps(ln2_lo)));
    let mut q = _mm256_set1_ps(super::EXP_POLY[0]);
    for &coef in &super::EXP_POLY[1..] {
        q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(coef));
    }
    let e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(q, r), r), r), _mm256_set1_ps(1.0));
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23));
    _mm256_mul_ps(e, scale)
}

/// [`super::softmax_in_place`] with AVX2, bit for bit `softmax_portable`: the maximum (exact in any
/// order), [`exp8`], the sum in the same sixteen lanes (two registers; the last partial chunk's
/// missing lanes add nothing), the same reciprocal and products.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn softmax_in_place_avx2(v: &mut [f32]) {
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut eights = v.chunks_exact(8);
    for c in &mut eights {
        // SAFETY: `c` holds 8 values.
        m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let max = lanes[..8].iter().chain(eights.remainder()).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let maxv = _mm256_set1_ps(max);
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut sixteens = v.chunks_exact_mut(16);
    for c in &mut sixteens {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds 16 values.
        unsafe {
            let e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), maxv));
            let e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8)), maxv));
            _mm256_storeu_ps(p, e0);
            _mm256_storeu_ps(p.add(8), e1);
            s0 = _mm256_add_ps(s0, e0);
            s1 = _mm256_add_ps(s1, e1);
        }
    }
    let rest = sixteens.into_remainder();
    if !rest.is_empty() {
        let k = rest.len();
        let mut buf = [0f32; 16];
        buf[..k].copy_from_slice(rest);
        // Lanes at or past `k` hold no value: masked out of the sums.
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let keep = |base: i32| _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k as i32 - base), lane));
        // SAFETY: `buf` holds 16 values.
        unsafe {
            let e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), maxv));
            let e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr().add(8)), maxv));
            _mm256_storeu_ps(buf.as_mut_ptr(), e0);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), e1);
            s0 = _mm256_add_ps(s0, _mm256_and_ps(e0, keep(0)));
            s1 = _mm256_add_ps(s1, _mm256_and_ps(e1, keep(8)));
        }
        rest.copy_from_slice(&buf[..k]);
    }
    // SAFETY: `lanes` holds 16 values.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), s0);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), s1);
    }
    let inv = 1.0 / lanes.iter().sum::<f32>();
    let invv = _mm256_set1_ps(inv);
    let mut eights = v.chunks_exact_mut(8);
    for c in &mut eights {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds 8 values.
        unsafe { _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), invv)) };
    }
    eights.into_remainder().iter_mut().for_each(|x| *x *= inv);
}

/// `super::quantize_row` sixteen values at a time, bit for bit the same: the block's `max |x|` (exact
/// in any order), the same scale and reciprocal, `x · inv` rounded half away from zero (truncate, then
/// step away from zero where the exact remainder is at least one half), the integers' sum.
///
/// # Safety
/// The CPU supports AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_avx512(x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [f32]) {
    let abs_mask = _mm512_set1_epi32(0x7FFF_FFFF);
    let half = _mm512_set1_ps(0.5);
    for (((xb, qb), d), s) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(d).zip(sum) {
        // SAFETY: a block holds 32 values (QK), two vectors of 16.
        let (lo, hi) = unsafe { (_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16))) };
        let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(lo), abs(hi)));
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
        let round = |v: __m512| -> __m512i {
            let y = _mm512_mul_ps(v, inv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(abs(_mm512_sub_ps(y, t)), half);
            // `t ± 1`, with the sign of `y` (the sign bit of `y` copied onto 1).
            let one = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0)), _mm512_andnot_si512(abs_mask, _mm512_castps_si512(y))));
            _mm512_cvttps_epi32(_mm512_mask_add_ps(t, away, t, one))
        };
        let (a, b) = (round(lo), round(hi));
        let total = _mm512_reduce_add_epi32(_mm512_add_epi32(a, b));
        // SAFETY: 16 bytes each at `qb[0..16]` and `qb[16..32]`.
        unsafe {
            _mm_storeu_si128(qb.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(a));
            _mm_storeu_si128(qb.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(b));
        }
        *d = scale;
        *s = scale * total as f32;
    }
}
