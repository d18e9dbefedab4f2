//! LoRA on the Llama linears: `y = W x + factor · B (A x)` with `A: [r, in]`, `B: [out, r]` (PEFT's
//! layout) and `factor = scale · alpha / r`. The base weights are never modified; merging builds new ones.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::config::LlamaConfig;
use crate::engine::{self, Device, Tensor};
use crate::formats::peft::{tensor_name, LoraConfig, TARGETS};
use crate::formats::HostTensor;

use super::host::HostPair;
use super::ModelError;

/// `(out, in)` of a targeted linear (one of [`TARGETS`]).
pub fn linear_shape(c: &LlamaConfig, module: &str) -> (usize, usize) {
    let (h, q, kv, i) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
    match module {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_proj" | "up_proj" => (i, h),
        "down_proj" => (h, i),
        other => unreachable!("not a LoRA target: {other}"),
    }
}

/// One linear's `A` (`[r, in]`) and `B` (`[out, r]`) on the device.
#[derive(Clone)]
pub struct LoraPair {
    pub a: Tensor<2>,
    pub b: Tensor<2>,
}

/// Device-side LoRA matrices for every layer: `layers[i][m]` for module `TARGETS[m]`.
#[derive(Clone)]
pub struct LoraWeights {
    pub(crate) layers: Vec<[Option<LoraPair>; 7]>,
    /// `alpha / r` (or rsLoRA's `alpha / sqrt(r)`).
    pub(crate) scaling: f32,
    /// Host copies for the quantized CPU path, read back on first use.
    pub(crate) host: OnceLock<Vec<[Option<HostPair>; 7]>>,
}

/// What a forward pass applies: weights, a multiplier on top of their scaling, and (training only)
/// dropout on the adapters' input.
#[derive(Clone, Copy)]
pub struct LoraApply<'a> {
    pub weights: &'a LoraWeights,
    pub scale: f32,
    pub dropout: f32,
}

impl LoraApply<'_> {
    pub(crate) fn factor(&self) -> f64 {
        f64::from(self.scale) * f64::from(self.weights.scaling)
    }
}

impl LoraWeights {
    /// Uploads host matrices named as PEFT names them, checking that every targeted linear of every
    /// layer has both matrices with the shapes the model implies, and nothing else is present.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the offending tensor.
    pub fn from_host(model: &LlamaConfig, lora: &LoraConfig, tensors: &BTreeMap<String, HostTensor>, device: &Device) -> Result<LoraWeights, ModelError> {
        let mut used = 0;
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for l in 0..model.num_hidden_layers {
            let mut mods: [Option<LoraPair>; 7] = Default::default();
            for (m, module) in TARGETS.iter().enumerate() {
                if !lora.targets(module) {
                    continue;
                }
                let (out, inp) = linear_shape(model, module);
                let get = |a: bool, shape: [usize; 2]| -> Result<Tensor<2>, ModelError> {
                    let name = tensor_name(l, module, a);
                    let t = tensors.get(&name).ok_or_else(|| ModelError::Config(format!("adapter tensor {name} is missing")))?;
                    if t.shape != shape {
                        return Err(ModelError::Config(format!("adapter tensor {name} has shape {:?}, expected {shape:?}", t.shape)));
                    }
                    Ok(engine::upload(t.data.clone(), shape, device))
                };
                mods[m] = Some(LoraPair { a: get(true, [lora.r, inp])?, b: get(false, [out, lora.r])? });
                used += 2;
            }
            layers.push(mods);
        }
        if used != tensors.len() {
            let extra = tensors
                .keys()
                .find(|k| {
                    !(0..model.num_hidden_layers)
                        .any(|l| TARGETS.iter().any(|m| lora.targets(m) && (**k == tensor_name(l, m, true) || **k == tensor_name(l, m, false))))
                })
                .cloned()
                .unwrap_or_default();
            return Err(ModelError::Config(format!(
                "adapter tensor {extra} does not belong to a targeted module of this {}-layer model",
                model.num_hidden_layers
            )));
        }
        Ok(LoraWeights { layers, scaling: lora.scaling(), host: OnceLock::new() })
    }

    /// The matrices on the host for the quantized CPU path (read back once, then shared).
    ///
    /// # Errors
    /// A device readback failure.
    pub(crate) fn host_pairs(&self) -> Result<&[[Option<HostPair>; 7]], ModelError> {
        if let Some(h) = self.host.get() {
            return Ok(h);
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for mods in &self.layers {
            let mut out: [Option<HostPair>; 7] = Default::default();
            for (slot, pair) in out.iter_mut().zip(mods) {
                if let Some(p) = pair {
                    let r = p.a.dims()[0];
                    *slot = Some(HostPair { a: engine::readback(p.a.clone())?, b: engine::readback(p.b.clone())?, r });
                }
            }
            layers.push(out);
        }
        Ok(self.host.get_or_init(|| layers))
    }

    /// The matrices back on the host, by PEFT name.
    ///
    /// # Errors
    /// A device readback failure.
    pub fn to_host(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = BTreeMap::new();
        for (l, mods) in self.layers.iter().enumerate() {
            for (m, pair) in mods.iter().enumerate() {
                if let Some(p) = pair {
                    for (a, t) in [(true, &p.a), (false, &p.b)] {
                        let shape = t.dims().to_vec();
                        let data = engine::readback(t.clone())?;
                        out.insert(tensor_name(l, TARGETS[m], a), HostTensor { shape, data });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `h W` plus the adapter's `factor · (h Aᵀ) Bᵀ`, with dropout on the adapter's input when training.
pub(crate) fn project(h: &Tensor<2>, w: &Tensor<2>, lora: Option<(&LoraPair, &LoraApply)>) -> Tensor<2> {
    let base = h.clone().matmul(w.clone());
    match lora {
        None => base,
        Some((pair, apply)) => {
            let mut x = h.clone();
            if apply.dropout > 0.0 {
                let keep = 1.0 - f64::from(apply.dropout);
                let mask = Tensor::<2>::random(x.dims(), engine::Distribution::Bernoulli(keep), &x.device());
                x = x.mul(mask).div_scalar(keep);
            }
            let delta = x.matmul(pair.a.clone().transpose()).matmul(pair.b.clone().transpose());
            base.add(delta.mul_scalar(apply.factor()))
        }
    }
}

/// `[in, out]` weight with the adapter merged in: `W + factor · Aᵀ Bᵀ`.
pub(crate) fn merge(w: &Tensor<2>, pair: &LoraPair, factor: f64) -> Tensor<2> {
    w.clone().add(pair.a.clone().transpose().matmul(pair.b.clone().transpose()).mul_scalar(factor))
}
