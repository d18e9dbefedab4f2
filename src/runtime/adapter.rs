//! [`Adapter`]: a LoRA adapter loaded for one model, shared by any number of sessions.
//!
//! Adapters are immutable once made and cheap to clone (reference-counted), `Send + Sync`. Several can
//! be loaded on one model at once; each session picks one (or none) and a scale with
//! [`crate::Session::set_adapter`]. Files are Hugging Face PEFT's (`adapter_config.json`,
//! `adapter_model.safetensors`), so adapters move both ways between this library and Python.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::model::Model;
use crate::config::LlamaConfig;
use crate::engine::Device;
use crate::error::{Error, Result};
use crate::formats::peft::{self, tensor_name, LoraConfig, PeftAdapter, TARGETS};
use crate::formats::HostTensor;
use crate::generate::Rng;
use crate::model::{lora::linear_shape, LoraWeights};

struct Inner {
    config: LoraConfig,
    weights: LoraWeights,
    /// The model shape and device it was made for.
    model_config: LlamaConfig,
    device: Device,
}

/// A LoRA adapter on a model's device. See the module documentation.
#[derive(Clone)]
pub struct Adapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Adapter {
    /// Loads a PEFT adapter directory for `model`.
    ///
    /// # Errors
    /// Missing or malformed files, unsupported PEFT features ([`Error::Format`]), tensors whose names or
    /// shapes do not fit the model ([`Error::Model`]).
    pub fn load(model: &Model, dir: impl AsRef<Path>) -> Result<Adapter> {
        let files = peft::read_adapter(dir.as_ref())?;
        Self::from_peft(model, &files)
    }

    /// An adapter from PEFT-named host tensors.
    ///
    /// # Errors
    /// As [`Adapter::load`].
    pub fn from_peft(model: &Model, adapter: &PeftAdapter) -> Result<Adapter> {
        let mut config = adapter.config.clone();
        config.validate().map_err(Error::InvalidArgument)?;
        let device = model.llama().device().clone();
        let weights = LoraWeights::from_host(model.config(), &config, &adapter.tensors, &device)?;
        Ok(Adapter { inner: Arc::new(Inner { config, weights, model_config: model.config().clone(), device }) })
    }

    /// A fresh adapter initialised as PEFT does (`A` Kaiming-uniform, `B` zero, so it starts as a
    /// no-op), from `seed`.
    ///
    /// # Errors
    /// An invalid configuration ([`Error::InvalidArgument`]).
    pub fn new_initialized(model: &Model, config: &LoraConfig, seed: u64) -> Result<Adapter> {
        let files = PeftAdapter { config: config.clone(), tensors: init_lora(model.config(), config, seed)? };
        Self::from_peft(model, &files)
    }

    /// Writes the adapter as a PEFT directory; each file is replaced atomically.
    ///
    /// # Errors
    /// I/O errors, a device readback failure.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        peft::write_adapter(dir.as_ref(), &self.to_peft()?)?;
        Ok(())
    }

    /// The configuration and host copies of the matrices.
    ///
    /// # Errors
    /// A device readback failure.
    pub fn to_peft(&self) -> Result<PeftAdapter> {
        Ok(PeftAdapter { config: self.inner.config.clone(), tensors: self.inner.weights.to_host()? })
    }

    /// The LoRA configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.inner.config
    }

    /// Trainable values: `r · (in + out)` per targeted linear per layer.
    pub fn parameter_count(&self) -> usize {
        self.inner.weights.layers.iter().flatten().flatten().map(|p| p.a.shape().num_elements() + p.b.shape().num_elements()).sum()
    }

    pub(crate) fn weights(&self) -> &LoraWeights {
        &self.inner.weights
    }

    /// Whether both handles are the same adapter.
    pub fn ptr_eq(&self, other: &Adapter) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Checks that the adapter was made for a model of `model`'s shape on its device.
    pub(crate) fn check_model(&self, model: &Model) -> Result<()> {
        if self.inner.model_config != *model.config() || self.inner.device != *model.llama().device() {
            return Err(Error::InvalidArgument("the adapter was loaded for a model of another shape or device".into()));
        }
        Ok(())
    }
}

impl Model {
    /// A model with `adapter` merged into its weights at `scale`: the adapter's outputs at the base
    /// model's speed. It shares the tokenizer, template and thread pool with `self`; the targeted
    /// weights are new (memory: one more copy of those matrices).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the adapter belongs to a model of another shape or device, or
    /// for a non-finite scale.
    pub fn merged(&self, adapter: &Adapter, scale: f32) -> Result<Model> {
        adapter.check_model(self)?;
        check_scale(scale)?;
        let llama = self.compute(|| self.llama().merged(adapter.weights(), scale));
        Ok(self.with_llama(llama))
    }
}

/// An adapter's scale must be finite (merging or attaching at NaN or infinity would poison every
/// output).
pub(crate) fn check_scale(scale: f32) -> Result<()> {
    if scale.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("adapter scale {scale} is not finite")))
    }
}

/// PEFT's initialisation: `A` Kaiming-uniform with `a = √5` (uniform in ±1/√in), `B` zero.
pub(crate) fn init_lora(model: &LlamaConfig, lora: &LoraConfig, seed: u64) -> Result<BTreeMap<String, HostTensor>> {
    let mut lora = lora.clone();
    lora.validate().map_err(Error::InvalidArgument)?;
    let mut rng = Rng::new(seed);
    let mut out = BTreeMap::new();
    for l in 0..model.num_hidden_layers {
        for m in TARGETS.iter().filter(|m| lora.targets(m)) {
            let (o, i) = linear_shape(model, m);
            let bound = 1.0 / (i as f64).sqrt();
            let a = (0..lora.r * i).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            out.insert(tensor_name(l, m, true), HostTensor { shape: vec![lora.r, i], data: a });
            out.insert(tensor_name(l, m, false), HostTensor { shape: vec![o, lora.r], data: vec![0.0; o * lora.r] });
        }
    }
    Ok(out)
}
