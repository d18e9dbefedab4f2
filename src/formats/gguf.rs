//! GGUF (v2, v3) reader: memory-mapped, validated before anything is allocated from header values.
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64, metadata key/values,
//! tensor infos (name, dims in ggml order — `ne[0]` fastest —, type, offset), padding to
//! `general.alignment` (default 32), tensor data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::quant::{dequantize, GgmlType};
use super::{FormatError, HostTensor, WeightSource};
use crate::config::{LlamaConfig, RopeScaling};

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DIMS: usize = 8;
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// The value as a float (integers converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` is the fastest-varying, i.e. PyTorch's last).
    pub dims: Vec<u64>,
    /// Element type; `None` for a type id this crate does not know (an error only when read).
    pub ggml_type: Option<GgmlType>,
    /// The raw type id.
    pub type_id: u32,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes (0 for unknown types).
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Shape in PyTorch order (`dims` reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open GGUF file. `Send + Sync`; reads are `&self`.
///
/// The file is memory-mapped: it must not be modified while open (the same rule as for any mmap;
/// truncating it underneath can fault the process).
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid { path: self.path.to_path_buf(), reason: reason.into() }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(self.err(format!("truncated: {what} needs {n} bytes at offset {}, {} left", self.pos, self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count of items each at least `min_item` bytes long, bounded by what is left in the file.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, FormatError> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(self.err(format!("{what} {n} cannot fit in the {} bytes left", self.remaining())));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, FormatError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>("u8")?[0]),
            1 => GgufValue::I8(self.array::<1>("i8")?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => GgufValue::U32(self.u32("u32")?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("bool value {b}"))),
            },
            8 => GgufValue::String(self.string("string length")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.u32("array element type")?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4 | 5 | 6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("unknown metadata value type {t}"))),
                };
                let n = self.count("array length", min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64("u64")?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array("f64")?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata, tensor infos, and that every tensor's data
    /// lies inside the file.
    ///
    /// # Errors
    /// [`FormatError::Io`] if unreadable; [`FormatError::Invalid`] for a bad magic, truncation, lying
    /// counts or offsets, duplicate names; [`FormatError::Unsupported`] for GGUF v1 or a future version.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let io = |source| FormatError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; the documented contract is that the file is not modified while open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), map)
    }

    fn parse(path: PathBuf, map: memmap2::Mmap) -> Result<Self, FormatError> {
        let mut c = Cursor { buf: &map, pos: 0, path: &path };
        if c.take(4, "magic").map_err(|_| c.err("too short for a GGUF header"))? != MAGIC {
            return Err(c.err("bad magic: not a GGUF file"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(FormatError::Unsupported { path: path.clone(), reason: format!("GGUF version {version} (2 and 3 are supported)") });
        }
        let n_tensors = c.count("tensor count", 8 + 4 + 8 + 4 + 8)?;
        let n_kv = c.count("metadata count", 8 + 4 + 1)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let v = c.value(ty, 0).map_err(|e| match e {
                FormatError::Invalid { path, reason } => FormatError::Invalid { path, reason: format!("metadata {key}: {reason}") },
                e => e,
            })?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(c.err(format!("duplicate metadata key {key}")));
            }
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dims")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let type_id = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            infos.push((name, dims, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = HashMap::with_capacity(infos.len());
        for (name, dims, type_id, rel) in infos {
            let bad = |reason: String| FormatError::Tensor { path: path.clone(), name: name.clone(), reason };
            let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            let ggml_type = GgmlType::from_id(type_id);
            let n_bytes = match ggml_type {
                Some(t) => {
                    let bs = t.block_size() as u64;
                    if dims[0] % bs != 0 {
                        return Err(bad(format!("first dimension {} is not a multiple of the {t:?} block size {bs}", dims[0])));
                    }
                    (n / bs).checked_mul(t.block_bytes() as u64).ok_or_else(|| bad("size overflows".into()))?
                }
                None => 0,
            };
            if rel % alignment != 0 {
                return Err(bad(format!("offset {rel} is not aligned to {alignment}")));
            }
            let offset = data_start.checked_add(rel).ok_or_else(|| bad("offset overflows".into()))?;
            match offset.checked_add(n_bytes) {
                Some(end) if end <= file_len => {}
                _ => return Err(bad(format!("data at {offset}+{n_bytes} lies past the end of the file ({file_len} bytes)"))),
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("duplicate tensor name".into()));
            }
            tensors.push(GgufTensorInfo { name, dims, ggml_type, type_id, offset, n_bytes });
        }
        Ok(GgufFile { path, map, version, metadata, tensors, by_name })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// A metadata value by key.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
    /// All metadata keys, sorted.
    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata.keys().map(String::as_str)
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata("general.architecture").and_then(GgufValue::as_str)
    }
    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    /// One tensor's description.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn tensor_err(&self, name: &str, reason: String) -> FormatError {
        FormatError::Tensor { path: self.path.clone(), name: name.to_string(), reason }
    }

    /// A tensor's raw (possibly quantized) bytes, validated at open.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8]), FormatError> {
        let info = self.tensor_info(name).ok_or_else(|| self.tensor_err(name, "not in the file".into()))?;
        if info.ggml_type.is_none() {
            return Err(self.tensor_err(name, format!("unknown ggml type id {}", info.type_id)));
        }
        // Bounds were checked at open; the conversions cannot truncate on 64-bit hosts.
        let start = usize::try_from(info.offset).map_err(|_| self.tensor_err(name, "offset too large".into()))?;
        let len = usize::try_from(info.n_bytes).map_err(|_| self.tensor_err(name, "too large".into()))?;
        Ok((info, &self.map[start..start + len]))
    }

    /// A tensor dequantized to f32, shape in PyTorch order.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, FormatError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let ty = info.ggml_type.ok_or_else(|| self.tensor_err(name, "unknown type".into()))?;
        let n = usize::try_from(info.n_elements()).map_err(|_| self.tensor_err(name, "too large".into()))?;
        let mut data = vec![0f32; n];
        dequantize(ty, bytes, &mut data).map_err(|e| self.tensor_err(name, e.to_string()))?;
        Ok(HostTensor { shape: info.shape(), data })
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>, FormatError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| FormatError::Invalid {
                path: self.path.clone(),
                reason: format!("metadata {key} should be an unsigned integer, is {v:?}"),
            }),
        }
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>, FormatError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| FormatError::Invalid {
                path: self.path.clone(),
                reason: format!("metadata {key} should be a number, is {v:?}"),
            }),
        }
    }

    /// Llama hyper-parameters from `{arch}.*` metadata (`llama` and `mistral` architectures).
    ///
    /// # Errors
    /// [`FormatError::Unsupported`] for other architectures; [`FormatError::Invalid`] for missing keys.
    pub fn llama_config(&self) -> Result<LlamaConfig, FormatError> {
        let arch = self.architecture().ok_or_else(|| FormatError::Invalid {
            path: self.path.clone(),
            reason: "no general.architecture".into(),
        })?;
        if arch != "llama" && arch != "mistral" {
            return Err(FormatError::Unsupported { path: self.path.clone(), reason: format!("architecture {arch:?} (llama is supported)") });
        }
        let need = |key: &str| -> Result<usize, FormatError> {
            let k = format!("{arch}.{key}");
            self.meta_u64(&k)?.map(|v| v as usize).ok_or_else(|| FormatError::Invalid { path: self.path.clone(), reason: format!("missing {k}") })
        };
        let opt = |key: &str| self.meta_u64(&format!("{arch}.{key}")).map(|v| v.map(|v| v as usize));
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let vocab = match opt("vocab_size")? {
            Some(v) => v,
            None => self
                .metadata("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(<[GgufValue]>::len)
                .or_else(|| self.tensor_info("token_embd.weight").map(|t| t.dims.get(1).copied().unwrap_or(0) as usize))
                .ok_or_else(|| FormatError::Invalid { path: self.path.clone(), reason: "cannot determine the vocabulary size".into() })?,
        };
        if heads == 0 {
            return Err(FormatError::Invalid { path: self.path.clone(), reason: format!("{arch}.attention.head_count is 0") });
        }
        let rope_scaling = match self.metadata(&format!("{arch}.rope.scaling.type")).and_then(GgufValue::as_str) {
            None | Some("none") => None,
            Some("linear") => {
                let f = self.meta_f64(&format!("{arch}.rope.scaling.factor"))?.unwrap_or(1.0) as f32;
                (f != 1.0).then_some(RopeScaling::Linear { factor: f })
            }
            Some(other) => {
                return Err(FormatError::Unsupported { path: self.path.clone(), reason: format!("rope scaling type {other:?}") })
            }
        };
        if self.tensor_info("rope_freqs.weight").is_some() {
            return Err(FormatError::Unsupported {
                path: self.path.clone(),
                reason: "per-dimension rope frequency factors (rope_freqs.weight, Llama 3.1 style) in GGUF".into(),
            });
        }
        let token_id = |key: &str| -> Result<Option<u32>, FormatError> { Ok(self.meta_u64(key)?.map(|v| v as u32)) };
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: opt("attention.head_count_kv")?.unwrap_or(heads),
            head_dim: opt("attention.key_length")?.unwrap_or(hidden / heads),
            rms_norm_eps: self.meta_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32,
            rope_theta: self.meta_f64(&format!("{arch}.rope.freq_base"))?.unwrap_or(10000.0) as f32,
            rope_scaling,
            max_position_embeddings: opt("context_length")?.unwrap_or(2048),
            tie_word_embeddings: self.tensor_info("output.weight").is_none(),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        })
    }
}

/// The GGUF name of a Hugging Face Llama tensor name (`None` if it has no GGUF counterpart).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match suffix {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// Undoes llama.cpp's Q/K row permutation (`convert_hf_to_gguf.py`'s `permute`): GGUF row
/// `h*R + 2i + j` holds HF row `h*R + j*R/2 + i` for each of `n_head` groups of `R` rows.
pub fn unpermute_qk(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    if n_head == 0 || rows % (2 * n_head) != 0 || data.len() != rows * cols {
        return None;
    }
    let per_head = rows / n_head;
    let half = per_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * per_head + 2 * i + j;
                let dst = h * per_head + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// A GGUF file seen as Hugging Face-named, HF-layout f32 weights.
pub struct GgufWeights {
    file: Arc<GgufFile>,
    config: LlamaConfig,
}

impl GgufWeights {
    /// Wraps an open file; reads its Llama configuration.
    pub fn new(file: Arc<GgufFile>) -> Result<Self, FormatError> {
        let config = file.llama_config()?;
        Ok(GgufWeights { file, config })
    }
    /// The underlying file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }
    /// The configuration read from the metadata.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        self.file.path()
    }
    fn contains(&self, name: &str) -> bool {
        hf_to_gguf_name(name).is_some_and(|g| self.file.tensor_info(&g).is_some())
    }
    fn tensor(&self, name: &str) -> Result<HostTensor, FormatError> {
        let g = hf_to_gguf_name(name).ok_or_else(|| FormatError::Tensor {
            path: self.file.path().to_path_buf(),
            name: name.to_string(),
            reason: "no GGUF counterpart for this name".into(),
        })?;
        let mut t = self.file.tensor_f32(&g)?;
        let n_head = if g.ends_with(".attn_q.weight") {
            Some(self.config.num_attention_heads)
        } else if g.ends_with(".attn_k.weight") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        };
        if let Some(n_head) = n_head {
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] => (*r, *c),
                s => return Err(FormatError::Tensor { path: self.file.path().to_path_buf(), name: g, reason: format!("shape {s:?} is not 2-D") }),
            };
            t.data = unpermute_qk(&t.data, rows, cols, n_head).ok_or_else(|| FormatError::Tensor {
                path: self.file.path().to_path_buf(),
                name: g.clone(),
                reason: format!("{rows} rows do not split into {n_head} heads of rotary pairs"),
            })?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests;
