//! Everything that touches burn: backend choice at run time, tensor upload/readback.
//!
//! burn 0.22 has no backend type parameter: tensors are `Tensor<D>` and the backend is picked by the
//! [`Device`] they live on. The rest of the crate names burn only through the re-exports here (the model
//! code uses them; nothing above the model does).

use std::fmt;
use std::str::FromStr;

pub mod kernels;
pub mod memory;

pub use burn::tensor::activation::log_softmax;
pub use burn::tensor::activation::{silu, softmax};
pub use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};

/// A compute backend, chosen at run time among those compiled in (cargo features `flex`, `wgpu`, `cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// burn's Flex CPU backend (feature `flex`, on by default).
    #[default]
    Cpu,
    /// wgpu: Vulkan, Metal or DX12 GPUs, or Mesa's lavapipe software Vulkan (feature `wgpu`).
    Wgpu,
    /// NVIDIA CUDA (feature `cuda`; see docs/building.md for its build requirement).
    Cuda,
}

/// An error choosing or starting a backend.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend name is not one of `cpu`, `wgpu`, `cuda`.
    #[error("unknown backend {0:?} (expected cpu, wgpu or cuda)")]
    UnknownBackend(String),
    /// The backend exists but this build does not include it.
    #[error("backend {0} is not compiled into this build (cargo feature `{1}`)")]
    NotCompiled(Backend, &'static str),
    /// The backend is compiled in but no device could be started (no GPU, no driver, ...).
    #[error("backend {backend} could not start a device: {reason}")]
    DeviceUnavailable { backend: Backend, reason: String },
    /// A tensor could not be read back from the device.
    #[error("tensor readback failed: {0}")]
    Readback(String),
}

impl Backend {
    /// The lower-case name used on command lines and in JSON (`cpu`, `wgpu`, `cuda`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Backend::Cpu => "flex",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this build includes the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Cpu => cfg!(feature = "flex"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this build, CPU first.
    pub fn compiled() -> Vec<Backend> {
        [Backend::Cpu, Backend::Wgpu, Backend::Cuda].into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// Starts a device of this backend (device 0 for GPUs).
    ///
    /// GPU backends are probed with a tiny upload and readback, so a machine without a usable adapter
    /// yields [`EngineError::DeviceUnavailable`] here instead of a panic on first use.
    pub fn device(self) -> Result<Device, EngineError> {
        if !self.is_compiled() {
            return Err(EngineError::NotCompiled(self, self.feature()));
        }
        let device = self.make_device()?;
        if self != Backend::Cpu {
            probe(self, &device)?;
        }
        Ok(device)
    }

    #[allow(unreachable_code)]
    fn make_device(self) -> Result<Device, EngineError> {
        match self {
            #[cfg(feature = "flex")]
            Backend::Cpu => return Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            Backend::Cuda => return Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Err(EngineError::NotCompiled(self, self.feature()))
    }
}

/// Runs a tiny computation on `device`, turning a panic inside the backend into an error.
fn probe(backend: Backend, device: &Device) -> Result<(), EngineError> {
    let device = device.clone();
    let result = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &device);
        let t = t.mul_scalar(2.0);
        t.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))
    });
    match result {
        Ok(Ok(v)) if v == [2.0, 4.0] => Ok(()),
        Ok(Ok(v)) => Err(EngineError::DeviceUnavailable { backend, reason: format!("probe computed {v:?} instead of [2.0, 4.0]") }),
        Ok(Err(reason)) => Err(EngineError::DeviceUnavailable { backend, reason }),
        Err(panic) => Err(EngineError::DeviceUnavailable { backend, reason: panic_message(&panic) }),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "backend panicked".to_string()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Backend::Cpu),
            "wgpu" | "vulkan" | "gpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            _ => Err(EngineError::UnknownBackend(s.to_string())),
        }
    }
}

/// Uploads a host f32 buffer as a tensor of rank `D`.
///
/// `shape` must match `data.len()`; callers validate shapes before this point.
pub fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(data, shape), device)
}

/// Uploads token ids as a rank-1 integer tensor.
pub fn upload_ids(ids: &[u32], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::<1, Int>::from_data(TensorData::new(v, [ids.len()]), device)
}

/// Reads a float tensor back to host memory (blocks until the device has computed it).
pub fn readback<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, EngineError> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| EngineError::Readback(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("WGPU".parse::<Backend>().unwrap(), Backend::Wgpu);
        assert_eq!("cuda".parse::<Backend>().unwrap(), Backend::Cuda);
        assert!(matches!("tpu".parse::<Backend>(), Err(EngineError::UnknownBackend(_))));
    }

    #[test]
    fn cpu_roundtrip() {
        let dev = Backend::Cpu.device().unwrap();
        let t = upload(vec![1.0, 2.0, 3.0, 4.0], [2, 2], &dev);
        let r = readback(t.clone().matmul(t)).unwrap();
        assert_eq!(r, vec![7.0, 10.0, 15.0, 22.0]);
    }

    #[test]
    fn uncompiled_backend_is_an_error() {
        if !Backend::Cuda.is_compiled() {
            assert!(matches!(Backend::Cuda.device(), Err(EngineError::NotCompiled(..))));
        }
    }
}
