//! Rotary position embeddings in Hugging Face's rotate-half layout.

use crate::config::{LlamaConfig, RopeScaling};

/// Inverse frequencies `1 / theta^(2i/d)` for `i < d/2`, with the checkpoint's scaling applied
/// (as transformers' `ROPE_INIT_FUNCTIONS`).
pub fn inv_freq(config: &LlamaConfig) -> Vec<f32> {
    let d = config.head_dim;
    let theta = f64::from(config.rope_theta);
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64)).collect();
    let scaled: Vec<f64> = match &config.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / f64::from(*factor)).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let (factor, low, high) = (f64::from(*factor), f64::from(*low_freq_factor), f64::from(*high_freq_factor));
            let old_ctx = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old_ctx / low;
            let high_freq_wavelen = old_ctx / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

/// Host tables `cos` and `sin`, each `[positions, head_dim]` row-major, where row `p` holds
/// `cos(p * inv_freq)` repeated twice (the rotate-half layout: `[f0..f(d/2-1), f0..f(d/2-1)]`).
pub fn tables(config: &LlamaConfig, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let inv = inv_freq(config);
    let d = config.head_dim;
    let mut cos = Vec::with_capacity(positions * d);
    let mut sin = Vec::with_capacity(positions * d);
    for p in 0..positions {
        // transformers computes the angle in f32 (position as f32 times inv_freq in f32).
        let angles: Vec<f32> = inv.iter().map(|&f| p as f32 * f).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|&a| f64::from(a).cos() as f32));
            sin.extend(angles.iter().map(|&a| f64::from(a).sin() as f32));
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scaling: Option<RopeScaling>) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: scaling,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    #[test]
    fn frequencies_and_tables() {
        let c = config(None);
        let f = inv_freq(&c);
        assert_eq!(f, vec![1.0, 0.01]);
        let (cos, sin) = tables(&c, 3);
        assert_eq!(cos.len(), 12);
        // position 2: angles [2, 0.02], repeated.
        assert!((cos[8] - 2f32.cos()).abs() < 1e-7 && (cos[10] - 2f32.cos()).abs() < 1e-7);
        assert!((sin[9] - 0.02f32.sin()).abs() < 1e-7 && (sin[11] - 0.02f32.sin()).abs() < 1e-7);
        assert_eq!(&cos[0..4], &[1.0; 4]);
    }

    #[test]
    fn linear_scaling_divides() {
        let c = config(Some(RopeScaling::Linear { factor: 4.0 }));
        assert_eq!(inv_freq(&c), vec![0.25, 0.0025]);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        let mut c = config(Some(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }));
        c.head_dim = 128;
        c.rope_theta = 500000.0;
        let plain = inv_freq(&config(None).clone_with(128, 500000.0));
        let scaled = inv_freq(&c);
        assert_eq!(scaled[0], plain[0]); // wavelength 2π < 2048: unchanged
        let last = plain.len() - 1; // longest wavelength: divided by factor
        assert!((scaled[last] - plain[last] / 8.0).abs() <= plain[last] * 1e-6);
    }

    impl LlamaConfig {
        fn clone_with(&self, head_dim: usize, theta: f32) -> LlamaConfig {
            let mut c = self.clone();
            c.head_dim = head_dim;
            c.rope_theta = theta;
            c
        }
    }
}
