//! AdamW (decoupled weight decay, PyTorch's formulation), the warm-up + cosine learning-rate schedule
//! and global-norm gradient clipping, on host vectors. LoRA parameters are few (millions, not
//! billions), so the update costs milliseconds next to a forward/backward pass of seconds.

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults except weight decay 0 (PEFT fine-tuning usually decays nothing).
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW state: first and second moments per parameter tensor and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

impl AdamW {
    /// Fresh state for tensors of these sizes.
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> AdamW {
        AdamW { config, step: 0, exp_avg: sizes.iter().map(|&n| vec![0.0; n]).collect(), exp_avg_sq: sizes.iter().map(|&n| vec![0.0; n]).collect() }
    }

    /// One update of `params` with `grads` at learning rate `lr`, exactly as `torch.optim.AdamW`
    /// (`foreach=False`, `amsgrad=False`): decay, moments, bias correction, `p -= lr/bc1 · m / (√v/√bc2 + eps)`.
    ///
    /// Returns the L2 norm of the whole update.
    pub fn update(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f32) -> f64 {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - f64::from(c.beta1).powi(t);
        let bc2 = 1.0 - f64::from(c.beta2).powi(t);
        let step_size = (f64::from(lr) / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - lr * c.weight_decay;
        let mut update_sq = 0f64;
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let before = *p;
                *p *= decay;
                *m = c.beta1 * *m + (1.0 - c.beta1) * g;
                *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + c.eps;
                *p -= step_size * *m / denom;
                update_sq += f64::from(*p - before).powi(2);
            }
        }
        update_sq.sqrt()
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warm-up from 0 over `warmup` steps, then a
/// cosine decay from `peak` to `peak · min_ratio` at step `total`, flat after it.
pub fn lr_at(step: u64, peak: f32, warmup: u64, total: u64, min_ratio: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / (warmup + 1) as f32;
    }
    let floor = peak * min_ratio;
    if total <= warmup || step >= total {
        return if total <= warmup { peak } else { floor };
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    floor + (peak - floor) * cos as f32
}

/// The global L2 norm of `grads`.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads.iter().flatten().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm` (as `torch.nn.utils.clip_grad_norm_`);
/// returns the norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: f32) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > f64::from(max_norm) {
        let k = (f64::from(max_norm) / (norm + 1e-6)) as f32;
        grads.iter_mut().flatten().for_each(|g| *g *= k);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr() {
        // After bias correction the first update is lr · g / (|g| + eps): ±lr for every non-zero g.
        let mut opt = AdamW::new(AdamWConfig::default(), &[3]);
        let mut p = vec![vec![1.0f32, 2.0, 3.0]];
        let n = opt.update(&mut p, &[vec![0.5, -4.0, 0.0]], 0.01);
        assert!((p[0][0] - 0.99).abs() < 1e-6 && (p[0][1] - 2.01).abs() < 1e-6 && p[0][2] == 3.0, "{p:?}");
        assert!((n - (2.0f64 * 0.01 * 0.01).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn matches_a_hand_computed_second_step_with_decay() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg, &[1]);
        let mut p = vec![vec![1.0f32]];
        opt.update(&mut p, &[vec![1.0]], 0.1);
        opt.update(&mut p, &[vec![-1.0]], 0.1);
        // By hand (float64): p1 = 1·0.99 − 0.1 = 0.89; m2 = 0.09·… see PyTorch's formula.
        let (b1, b2, lr, wd, eps) = (0.9f64, 0.999f64, 0.1f64, 0.1f64, 1e-8f64);
        let mut q = 1.0f64;
        let (mut m, mut v) = (0.0, 0.0);
        for (t, g) in [(1, 1.0f64), (2, -1.0)] {
            q *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            q -= lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps);
        }
        assert!((f64::from(p[0][0]) - q).abs() < 1e-6, "{} vs {q}", p[0][0]);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr: Vec<f32> = (0..12).map(|s| lr_at(s, 1.0, 2, 10, 0.1)).collect();
        assert!((lr[0] - 1.0 / 3.0).abs() < 1e-6 && (lr[1] - 2.0 / 3.0).abs() < 1e-6);
        assert!((lr[2] - 1.0).abs() < 1e-6);
        assert!(lr[2..10].windows(2).all(|w| w[1] < w[0]));
        assert!((lr[6] - 0.55).abs() < 1e-5, "midpoint {}", lr[6]);
        assert!((lr[10] - 0.1).abs() < 1e-6 && (lr[11] - 0.1).abs() < 1e-6);
        assert_eq!(lr_at(5, 0.5, 0, 0, 0.0), 0.5);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        assert_eq!(clip_global_norm(&mut g, 0.0), 5.0);
        assert_eq!(g, [vec![3.0], vec![4.0]]);
        assert_eq!(clip_global_norm(&mut g, 1.0), 5.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
        assert!((g[0][0] / g[1][0] - 0.75).abs() < 1e-6);
    }
}
