//! Ground floor: model files. Parsers validate everything they read and never allocate from an
//! unchecked header value. Tensors are handed up in Hugging Face naming and layout.

pub mod gguf;
pub mod hf;
mod hf_config;
pub mod peft;
pub mod quant;

use std::path::PathBuf;

/// Maps `file` read-only for parsing. With `copy`, reads it into private anonymous memory instead:
/// the result no longer depends on the file, so a file changed or truncated on disk (even while it
/// is being read here) cannot fault the process; a size change while reading is an I/O error.
pub(crate) fn map_file(file: &std::fs::File, copy: bool) -> std::io::Result<memmap2::Mmap> {
    if !copy {
        // SAFETY: read-only map; the documented contract (as for every mmap) is that the file is not
        // modified while it is mapped. `copy` is the option for hosts that cannot promise that.
        return unsafe { memmap2::Mmap::map(file) };
    }
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty file"));
    }
    let mut map = memmap2::MmapMut::map_anon(len)?;
    let mut reader = file;
    std::io::Read::read_exact(&mut reader, &mut map[..])?;
    let mut extra = [0u8; 1];
    if std::io::Read::read(&mut reader, &mut extra)? != 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file grew while it was read"));
    }
    map.make_read_only()
}

/// An error reading a model file. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not what it claims to be (bad magic, truncated, lying offsets, bad JSON, ...).
    #[error("{path}: invalid file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The file is well-formed but uses something we do not support (dtype, architecture, version).
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// A tensor the model needs is absent, or has the wrong shape.
    #[error("{path}: tensor {name}: {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
}

/// A dense f32 tensor in host memory, row-major, PyTorch dimension order (`[out, in]` for a linear).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Number of elements implied by `shape`.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Where model weights come from. Names are Hugging Face `LlamaForCausalLM` names
/// (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, `lm_head.weight`, ...),
/// layouts are Hugging Face's; each source translates from its own file format.
pub trait WeightSource: Send + Sync {
    /// The file or directory this source reads, for error messages.
    fn path(&self) -> &std::path::Path;
    /// Whether the source has a tensor of that (HF) name.
    fn contains(&self, name: &str) -> bool;
    /// Loads and dequantizes one tensor to f32.
    fn tensor(&self, name: &str) -> Result<HostTensor, FormatError>;
}
