//! Next-token selection from logits: greedy, or seeded sampling with the usual filters.

use serde::{Deserialize, Serialize};

/// How to choose the next token. Filters run in transformers' order:
/// repetition penalty → temperature → top-k → top-p → min-p → draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `0` selects greedy decoding (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1` disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `0` disables.
    pub min_p: f32,
    /// transformers' repetition penalty: a seen token's logit `l` becomes `l / p` if `l > 0`, else `l * p`.
    /// `1` disables.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the penalty looks at; `0` means the whole history.
    pub repetition_window: usize,
    /// Seed of the random generator (same seed + same logits = same tokens, on every platform).
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding with no penalty.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, repetition_window: 0, seed: 0 }
    }

    /// Checks ranges: temperature ≥ 0, top_p in (0, 1], min_p in [0, 1), penalty > 0, all finite.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |what: &str, v: f32| Err(SamplingError::Invalid(format!("{what} = {v}")));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be finite and >= 0, got", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1], got", self.top_p);
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad("min_p must be in [0, 1), got", self.min_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty must be finite and > 0, got", self.repetition_penalty);
        }
        Ok(())
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

/// Invalid sampling parameters.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("invalid sampling parameters: {0}")]
    Invalid(String),
}

/// xoshiro256** seeded through splitmix64: small, fast, and fixed forever (unlike `rand`'s `StdRng`).
#[derive(Debug, Clone)]
pub(crate) struct Rng([u64; 4]);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is below 2⁻⁵⁰ for the sizes used here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Picks tokens according to [`SamplingParams`]. Keeps scratch buffers between calls.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
    seen: Vec<u32>,
}

impl Sampler {
    /// A sampler; fails on out-of-range parameters.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Sampler { params, rng, candidates: Vec::new(), seen: Vec::new() })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Restarts the random sequence from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = Rng::new(seed);
    }

    /// Picks the next token from `logits` (one per vocabulary entry; modified in place as scratch).
    /// `history` holds the previous tokens (prompt and generated) for the repetition penalty.
    /// NaN logits count as impossible. Returns 0 for an empty slice.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        self.apply_penalty(logits, history);
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l * inv_t)));
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(p.top_k - 1, desc);
            self.candidates.truncate(p.top_k);
        }
        self.candidates.sort_unstable_by(desc);
        let max = self.candidates.first().map_or(0.0, |c| c.1);
        if max == f32::NEG_INFINITY {
            return self.candidates.first().map_or(0, |c| c.0);
        }
        // Unnormalised probabilities, reusing the logit slot.
        for c in self.candidates.iter_mut() {
            c.1 = (f64::from(c.1 - max)).exp() as f32;
        }
        let total: f64 = self.candidates.iter().map(|c| f64::from(c.1)).sum();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += f64::from(c.1) / total;
                if cum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            // The first candidate has probability weight exp(0) = 1, the maximum.
            let threshold = p.min_p;
            let keep = self.candidates.iter().take_while(|c| c.1 >= threshold).count();
            self.candidates.truncate(keep.max(1));
        }
        let total: f64 = self.candidates.iter().map(|c| f64::from(c.1)).sum();
        let mut r = self.rng.next_f64() * total;
        for c in &self.candidates {
            r -= f64::from(c.1);
            if r < 0.0 {
                return c.0;
            }
        }
        self.candidates.last().map_or(0, |c| c.0)
    }

    fn apply_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 {
            return;
        }
        let w = self.params.repetition_window;
        let window = if w == 0 || w >= history.len() { history } else { &history[history.len() - w..] };
        self.seen.clear();
        self.seen.extend_from_slice(window);
        self.seen.sort_unstable();
        self.seen.dedup();
        for &id in &self.seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Index of the largest value, lowest index on ties (as `torch.argmax`).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams { temperature: t, ..SamplingParams::greedy() }
    }

    #[test]
    fn greedy_is_argmax_lowest_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, 0.5, 0.2], &[]), 1);
        let mut k1 = Sampler::new(SamplingParams { top_k: 1, ..params(1.0) }).unwrap();
        assert_eq!(k1.sample(&mut [0.1, 0.3, 2.0, 0.0], &[]), 2);
    }

    #[test]
    fn seeds_reproduce() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }).unwrap();
            (0..40).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn frequencies_follow_softmax() {
        let logits = [1.0f32, 2.0, 0.0, 1.5];
        let t = 0.8f64;
        let z: f64 = logits.iter().map(|&l| (f64::from(l) / t).exp()).sum();
        let mut s = Sampler::new(SamplingParams { seed: 9, ..params(0.8) }).unwrap();
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        let mut chi2 = 0.0;
        for (i, &c) in counts.iter().enumerate() {
            let e = n as f64 * (f64::from(logits[i]) / t).exp() / z;
            chi2 += (c as f64 - e).powi(2) / e;
        }
        // 3 degrees of freedom: P(chi2 > 16.3) < 0.001.
        assert!(chi2 < 16.3, "chi2 {chi2}, counts {counts:?}");
    }

    #[test]
    fn top_p_keeps_the_head_reaching_the_mass() {
        // probs ≈ [0.5, 0.3, 0.2] (ln-space logits), top_p 0.75 → {0, 1}; 0.85 → {0, 1, 2}.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        for (top_p, allowed) in [(0.75, vec![0, 1]), (0.5, vec![0]), (0.85, vec![0, 1, 2])] {
            let mut s = Sampler::new(SamplingParams { top_p, seed: 3, ..params(1.0) }).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..2000 {
                seen.insert(s.sample(&mut logits.to_vec(), &[]));
            }
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), allowed, "top_p {top_p}");
        }
    }

    #[test]
    fn min_p_and_top_k_filter() {
        // probs ∝ [1, 0.5, 0.09]: min_p 0.1 drops token 2.
        let logits = [0f32, 0.5f32.ln(), 0.09f32.ln()];
        let mut s = Sampler::new(SamplingParams { min_p: 0.1, seed: 5, ..params(1.0) }).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3000 {
            seen.insert(s.sample(&mut logits.to_vec(), &[]));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1]);
        let mut s = Sampler::new(SamplingParams { top_k: 2, seed: 5, ..params(1.0) }).unwrap();
        for _ in 0..2000 {
            assert!(s.sample(&mut [0.0, 5.0, 4.9, 4.8], &[]) != 0);
            assert!(s.sample(&mut [0.0, 5.0, 4.9, 4.8], &[]) != 3);
        }
    }

    #[test]
    fn repetition_penalty_matches_transformers() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() }).unwrap();
        let mut logits = [4.0f32, 3.0, -1.0, 2.5];
        // Token 0 seen (twice): 4 -> 2; token 2 seen: -1 -> -2. Argmax becomes 1.
        assert_eq!(s.sample(&mut logits, &[0, 2, 0]), 1);
        assert_eq!(logits, [2.0, 3.0, -2.0, 2.5]);
        // A window of 1 only penalises the last token.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, repetition_window: 1, ..SamplingParams::greedy() }).unwrap();
        let mut logits = [4.0f32, 3.0];
        assert_eq!(s.sample(&mut logits, &[0, 1]), 0);
        assert_eq!(logits, [4.0, 1.5]);
    }

    #[test]
    fn validation() {
        for bad in [
            params(-1.0),
            params(f32::NAN),
            SamplingParams { top_p: 0.0, ..params(1.0) },
            SamplingParams { top_p: 1.5, ..params(1.0) },
            SamplingParams { min_p: 1.0, ..params(1.0) },
            SamplingParams { repetition_penalty: 0.0, ..params(1.0) },
        ] {
            assert!(Sampler::new(bad).is_err());
        }
        assert!(Sampler::new(SamplingParams::greedy()).is_ok());
    }
}
