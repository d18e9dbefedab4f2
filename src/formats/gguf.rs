//! GGUF (v2, v3) reader: memory-mapped, everything validated before anything is allocated from a
//! header value.
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64,
//! metadata key/values, tensor infos (name, dims in ggml order — `ne[0]` fastest —, type id,
//! offset relative to the data section), padding to `general.alignment` (default 32), tensor data.
//!
//! Validation at [`GgufFile::open`]: magic and version; every count and string/array length is
//! bounded by the bytes left in the file before anything is allocated; metadata value types,
//! bools and UTF-8; duplicate keys and tensor names; at most 4 dimensions, each and their product
//! within `i64` (as ggml requires); a type id ggml defines (an unknown id fails at open, because the
//! size of such a tensor cannot be known and so neither can the validity of its offset); the first
//! dimension a multiple of the type's block size; offsets aligned, data inside the file and no
//! two tensors overlapping. Tensors whose type is known but has no dequantization kernel open
//! fine; [`GgufFile::tensor_f32`] then answers [`FormatError::Unsupported`].
//!
//! [`GgufWeights`] presents a Llama GGUF in Hugging Face names and layouts (undoing llama.cpp's
//! Q/K row permutation) as a [`WeightSource`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use super::quant::{dequantize, DequantError, GgmlType};
use super::{FormatError, HostTensor, WeightSource};
use crate::config::{LlamaConfig, RopeScaling, GLOBAL_TENSORS, LAYER_TENSORS};

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF; deeper nesting than this is treated as malicious.
const MAX_ARRAY_DEPTH: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most elements reserved ahead for a metadata array (larger arrays grow as they are parsed).
const MAX_ARRAY_RESERVE: usize = 1 << 16;

/// A metadata value. Arrays hold values of a single type (possibly arrays themselves).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (stored as one byte, 0 or 1).
    Bool(bool),
    /// GGUF type 8 (u64 length + UTF-8 bytes).
    String(String),
    /// GGUF type 9 (element type u32, u64 count, elements).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer: any integer type holding a non-negative value.
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

    /// The value as a signed integer: any integer type whose value fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float: either float type, or an integer converted (rounding to nearest
    /// for magnitudes above 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool (only [`GgufValue::Bool`]).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice (only [`GgufValue::String`]).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a slice of elements (only [`GgufValue::Array`]).
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// GGUF's name of the value's type (`"u32"`, `"string"`, `"array"`, ...), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F32(_) => "f32",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

/// One tensor's description, validated at open.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Name as stored (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` (ggml's `ne[0]`) varies fastest, i.e. it is PyTorch's
    /// last dimension. Between 0 and 4 entries.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file (data section start + the stored offset).
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Number of elements (the product of `dims`; 1 for a 0-dimensional tensor). Checked at open
    /// not to overflow.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in PyTorch order (`dims` reversed), e.g. `[out_features, in_features]` for a linear.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked at open to fit in `i64`; usize is 64-bit on every supported host
        // (the file is memory-mapped whole, so its tensors' element counts fit too).
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open GGUF file. `Send + Sync`; every read is `&self`.
///
/// The file is memory-mapped: like any mmap, it must not be modified or truncated by another
/// process while open (truncation underneath the map can fault the process).
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// The map is of the file itself (dropped pages are read again from it), not a private copy
    /// (where dropping pages would zero them).
    file_backed: bool,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// A bounds-checked little-endian reader over the mapped header.
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
            return Err(self.err(format!("truncated: {what} needs {n} bytes at offset {}, the file has {} left", self.pos, self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items, each at least `min_item` bytes long, bounded by the bytes left.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, FormatError> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(self.err(format!("{what} {n} at offset {} cannot fit in the {} bytes left", self.pos - 8, self.remaining())));
        }
        // n <= remaining <= usize::MAX.
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let at = self.pos;
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} at offset {at} is not UTF-8")))
    }

    /// Smallest encoding of one value of type `ty` (for bounding array lengths).
    fn min_size(&self, ty: u32) -> Result<usize, FormatError> {
        Ok(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, FormatError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>("u8")?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array("i8")?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => GgufValue::U32(self.u32("u32")?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("bool value {b} at offset {}", self.pos - 1))),
            },
            8 => GgufValue::String(self.string("string length")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.u32("array element type")?;
                let n = self.count("array length", self.min_size(elem)?)?;
                // `n` is bounded by the bytes left; the up-front reservation is capped further so
                // that memory only grows with elements actually parsed.
                let mut v = Vec::with_capacity(n.min(MAX_ARRAY_RESERVE));
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

/// A tensor info as read, before the data section's position is known.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    rel_offset: u64,
}

impl GgufFile {
    /// Opens, maps and validates a GGUF v2 or v3 file (see the module documentation for
    /// everything checked).
    ///
    /// # Errors
    /// [`FormatError::Io`] if the file cannot be opened or mapped; [`FormatError::Invalid`] for a
    /// bad magic, truncation, counts or lengths that cannot fit in the file, malformed metadata,
    /// duplicate keys; [`FormatError::Tensor`] for a tensor with an unknown type id, bad or
    /// overflowing dimensions, a misaligned, out-of-file or overlapping data range, or a duplicate
    /// name; [`FormatError::Unsupported`] for GGUF v1, a future version or a big-endian file.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        Self::open_with(path, false)
    }

    /// [`GgufFile::open`]; with `copy`, the file is read into private memory instead of mapped, so
    /// it may change on disk at any time without effect (at the cost of holding a copy).
    ///
    /// # Errors
    /// As [`GgufFile::open`].
    pub fn open_with(path: &Path, copy: bool) -> Result<Self, FormatError> {
        let io = |source| FormatError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // The map is read-only and never handed out beyond `&self` borrows.
        let map = super::map_file(&file, copy).map_err(io)?;
        let len = map.len();
        Self::parse_len(path.to_path_buf(), map, len, !copy)
    }

    /// Parses a GGUF held in memory (copied into a private anonymous map): for files that may
    /// change on disk while in use (read them, then parse the copy), for data that never was a file,
    /// and for fuzzing. `name` stands in for the path in error messages.
    ///
    /// # Errors
    /// As [`GgufFile::open`].
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, FormatError> {
        let path = PathBuf::from(name);
        let io = |source| FormatError::Io { path: path.clone(), source };
        // An anonymous map cannot be empty: keep one byte beyond the data and parse the data only.
        let mut map = memmap2::MmapMut::map_anon(bytes.len() + 1).map_err(io)?;
        map[..bytes.len()].copy_from_slice(bytes);
        let map = map.make_read_only().map_err(io)?;
        Self::parse_len(path.clone(), map, bytes.len(), false)
    }

    fn parse_len(path: PathBuf, map: memmap2::Mmap, len: usize, file_backed: bool) -> Result<Self, FormatError> {
        let mut c = Cursor { buf: &map[..len], pos: 0, path: &path };
        let unsupported = |reason: String| FormatError::Unsupported { path: path.clone(), reason };

        if len < 4 {
            return Err(c.err(format!("{len} bytes is too short for a GGUF header")));
        }
        if c.take(4, "magic")? != MAGIC {
            return Err(c.err(format!("bad magic {:02x?}: not a GGUF file", &map[..4])));
        }
        let version = c.u32("version")?;
        if version == 1 {
            return Err(unsupported("GGUF version 1 (only versions 2 and 3 are supported)".into()));
        }
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(unsupported(format!("big-endian GGUF (version {})", version.swap_bytes())));
        }
        if !(2..=3).contains(&version) {
            return Err(unsupported(format!("GGUF version {version} (only versions 2 and 3 are supported)")));
        }
        // Smallest tensor info: name length (8), n_dims (4), type (4), offset (8).
        let n_tensors = c.count("tensor count", 24)?;
        // Smallest key/value: key length (8), type (4), one byte of value.
        let n_kv = c.count("metadata count", 13)?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut metadata_index = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("metadata key length")?;
            let in_key = |e: FormatError| match e {
                FormatError::Invalid { path, reason } => FormatError::Invalid { path, reason: format!("metadata {key:?}: {reason}") },
                e => e,
            };
            let ty = c.u32("metadata value type").map_err(in_key)?;
            let value = c.value(ty, 0).map_err(in_key)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }

        let mut raw = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string("tensor name length")?;
            let in_tensor = |e: FormatError| match e {
                FormatError::Invalid { path, reason } => FormatError::Tensor { path, name: name.clone(), reason },
                e => e,
            };
            let n_dims = c.u32("tensor dimension count").map_err(in_tensor)? as usize;
            if n_dims > MAX_DIMS {
                return Err(in_tensor(c.err(format!("{n_dims} dimensions (at most {MAX_DIMS})"))));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dimension").map_err(in_tensor)?);
            }
            let type_id = c.u32("tensor type").map_err(in_tensor)?;
            let rel_offset = c.u64("tensor offset").map_err(in_tensor)?;
            if tensor_index.insert(name.clone(), i).is_some() {
                return Err(in_tensor(c.err("duplicate tensor name")));
            }
            raw.push(RawTensorInfo { name, dims, type_id, rel_offset });
        }

        let alignment = match metadata_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 24 => a,
                _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        // The header was parsed from the map, so `pos` is at most the file length.
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = len as u64;

        let mut tensors = Vec::with_capacity(raw.len());
        for RawTensorInfo { name, dims, type_id, rel_offset } in raw {
            let bad = |reason: String| FormatError::Tensor { path: path.clone(), name: name.clone(), reason };
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| bad(format!("unknown ggml type id {type_id}")))?;
            if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
                return Err(bad(format!("dimension {d} is negative as ggml's int64")));
            }
            let n = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d).filter(|&p| p <= i64::MAX as u64))
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            let bs = ggml_type.block_size() as u64;
            let row = dims.first().copied().unwrap_or(1);
            if !row.is_multiple_of(bs) {
                return Err(bad(format!("first dimension {row} is not a multiple of the {ggml_type} block size {bs}")));
            }
            let n_bytes = ggml_type.bytes_for(n).ok_or_else(|| bad(format!("size of {n} {ggml_type} elements overflows")))?;
            if !rel_offset.is_multiple_of(alignment) {
                return Err(bad(format!("offset {rel_offset} is not a multiple of the alignment {alignment}")));
            }
            let offset = data_offset.checked_add(rel_offset).ok_or_else(|| bad(format!("offset {rel_offset} overflows")))?;
            match offset.checked_add(n_bytes) {
                Some(end) if end <= file_len => {}
                _ => return Err(bad(format!("data at {offset}..{offset}+{n_bytes} lies past the end of the file ({file_len} bytes)"))),
            }
            tensors.push(GgufTensorInfo { name, dims, ggml_type, offset, n_bytes });
        }

        // No two tensors may share bytes.
        let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if pair[0].offset + pair[0].n_bytes > pair[1].offset {
                return Err(FormatError::Tensor { path: path.clone(), name: pair[1].name.clone(), reason: format!("data overlaps tensor {}", pair[0].name) });
            }
        }

        Ok(GgufFile { path, map, version, alignment, data_offset, metadata, metadata_index, tensors, tensor_index, file_backed })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of every tensor's offset, in bytes
    /// (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// A metadata value by key (`llama.block_count`, `tokenizer.ggml.tokens`, ...).
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every metadata key, in file order.
    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata.iter().map(|(k, _)| k.as_str())
    }

    /// `general.architecture` (`"llama"`, ...), if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata("general.architecture").and_then(GgufValue::as_str)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's description by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn tensor_err(&self, name: &str, reason: String) -> FormatError {
        FormatError::Tensor { path: self.path.clone(), name: name.to_string(), reason }
    }

    /// A tensor's description and raw bytes (ggml blocks, `info.n_bytes` long), borrowed from the
    /// map. The bytes start at an `alignment()`-aligned file offset.
    ///
    /// # Errors
    /// [`FormatError::Tensor`] if there is no tensor of that name.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8]), FormatError> {
        let info = self.tensor_info(name).ok_or_else(|| self.tensor_err(name, "not in the file".into()))?;
        // Checked at open: offset + n_bytes <= map length, so both fit in usize.
        let start = info.offset as usize;
        let bytes = self.map.get(start..start + info.n_bytes as usize).ok_or_else(|| self.tensor_err(name, "data lies outside the file".into()))?;
        Ok((info, bytes))
    }

    /// Drops the resident pages of a tensor's data (best effort; `madvise(MADV_DONTNEED)` on Unix):
    /// loaders that copy a tensor call this so the file's pages do not add to the process's
    /// resident set on top of the copy. The data stays readable: the pages are read from the file
    /// again if touched. A no-op for a private copy ([`GgufFile::from_bytes`], `open_with(.., true)`),
    /// whose dropped pages would read back as zeros.
    pub fn release_pages(&self, name: &str) {
        #[cfg(unix)]
        if let (true, Some(info)) = (self.file_backed, self.tensor_info(name)) {
            // SAFETY: the map is read-only and the file is not modified while open (the contract
            // of `open`), so dropped pages re-read to the same bytes; no reference observes a change.
            let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, info.offset as usize, info.n_bytes as usize) };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// A tensor dequantized to f32, shape in PyTorch order (`dims` reversed), data row-major.
    /// GGUF layout is returned unchanged (no Q/K unpermutation: that is [`GgufWeights`]' job).
    ///
    /// # Errors
    /// [`FormatError::Tensor`] if there is no tensor of that name; [`FormatError::Unsupported`]
    /// (naming the tensor) if its type has no dequantization kernel.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, FormatError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let ty = info.ggml_type;
        if !ty.can_dequantize() {
            return Err(FormatError::Unsupported { path: self.path.clone(), reason: format!("tensor {name}: dequantization of ggml type {ty}") });
        }
        // Bounded by the file: every type takes at least 1 byte per 8 elements and the data was
        // checked at open to lie inside the file.
        let n = usize::try_from(info.n_elements()).map_err(|_| self.tensor_err(name, "too many elements".into()))?;
        let mut data = vec![0f32; n];
        dequantize(ty, bytes, n, &mut data).map_err(|e| self.tensor_err(name, e.to_string()))?;
        Ok(HostTensor { shape: info.shape(), data })
    }

    /// A metadata integer that must fit in `usize`, if present.
    fn meta_usize(&self, key: &str) -> Result<Option<usize>, FormatError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(GgufValue::Array(_)) => Err(FormatError::Unsupported { path: self.path.clone(), reason: format!("per-layer values in metadata {key}") }),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| FormatError::Invalid { path: self.path.clone(), reason: format!("metadata {key} should be a non-negative integer, is {v:?}") }),
        }
    }

    /// A metadata number, if present.
    fn meta_f64(&self, key: &str) -> Result<Option<f64>, FormatError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| FormatError::Invalid { path: self.path.clone(), reason: format!("metadata {key} should be a number, is {v:?}") }),
        }
    }

    /// Llama hyper-parameters from the `{arch}.*` and `tokenizer.ggml.*` metadata, for
    /// `general.architecture` `llama` or `mistral` (same graph).
    ///
    /// Required: `embedding_length`, `feed_forward_length`, `block_count`,
    /// `attention.head_count`, `attention.layer_norm_rms_epsilon`, `context_length`. Defaults:
    /// `vocab_size` = length of `tokenizer.ggml.tokens` (else of `token_embd.weight`),
    /// `attention.head_count_kv` = head count, `attention.key_length` (head_dim) =
    /// embedding_length / head count, `rope.freq_base` = 10000. Linear RoPE scaling comes from
    /// `rope.scaling.type`/`rope.scaling.factor` (or the older `rope.scale_linear`). Embeddings are
    /// tied when there is no `output.weight`.
    ///
    /// # Errors
    /// [`FormatError::Unsupported`] for other architectures, per-layer hyper-parameters, partial
    /// rotary embeddings, a value length other than the key length, RoPE scaling other than
    /// linear, or per-dimension RoPE factors (`rope_freqs.weight`, Llama 3.1 style);
    /// [`FormatError::Invalid`] for missing, mistyped or inconsistent values.
    pub fn llama_config(&self) -> Result<LlamaConfig, FormatError> {
        let invalid = |reason: String| FormatError::Invalid { path: self.path.clone(), reason };
        let unsupported = |reason: String| FormatError::Unsupported { path: self.path.clone(), reason };
        let arch = self.architecture().ok_or_else(|| invalid("no general.architecture string".into()))?;
        if arch != "llama" && arch != "mistral" {
            return Err(unsupported(format!("architecture {arch:?} (llama and mistral are supported)")));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let opt = |k: &str| self.meta_usize(&key(k));
        let need = |k: &str| opt(k)?.ok_or_else(|| invalid(format!("missing metadata {}", key(k))));
        let positive = |k: &str, v: usize| if v == 0 { Err(invalid(format!("{} is 0", key(k)))) } else { Ok(v) };

        let hidden = positive("embedding_length", need("embedding_length")?)?;
        let intermediate = positive("feed_forward_length", need("feed_forward_length")?)?;
        let layers = positive("block_count", need("block_count")?)?;
        let heads = positive("attention.head_count", need("attention.head_count")?)?;
        let kv_heads = positive("attention.head_count_kv", opt("attention.head_count_kv")?.unwrap_or(heads))?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(invalid(format!("{heads} attention heads do not split into {kv_heads} key/value groups")));
        }
        let head_dim = match opt("attention.key_length")? {
            Some(d) => positive("attention.key_length", d)?,
            None if hidden.is_multiple_of(heads) => hidden / heads,
            None => return Err(invalid(format!("embedding length {hidden} is not a multiple of {heads} heads"))),
        };
        if let Some(v) = opt("attention.value_length")? {
            if v != head_dim {
                return Err(unsupported(format!("value head size {v} differs from key head size {head_dim}")));
            }
        }
        if let Some(r) = opt("rope.dimension_count")? {
            if r != head_dim {
                return Err(unsupported(format!("rotary embedding on {r} of {head_dim} head dimensions")));
            }
        }
        let context = positive("context_length", need("context_length")?)?;
        let rms_norm_eps = self
            .meta_f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| invalid(format!("missing metadata {}", key("attention.layer_norm_rms_epsilon"))))? as f32;
        let rope_theta = self.meta_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0 && rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(invalid(format!("rms epsilon {rms_norm_eps} / rope base {rope_theta} out of range")));
        }

        let linear = |factor: Option<f64>| -> Result<Option<RopeScaling>, FormatError> {
            match factor {
                None => Ok(None),
                Some(1.0) => Ok(None),
                Some(f) if f.is_finite() && f > 0.0 => Ok(Some(RopeScaling::Linear { factor: f as f32 })),
                Some(f) => Err(invalid(format!("rope scaling factor {f}"))),
            }
        };
        let scaling_type = self.metadata(&key("rope.scaling.type"));
        let rope_scaling = match scaling_type.map(|v| v.as_str().ok_or(v)) {
            None => linear(self.meta_f64(&key("rope.scale_linear"))?)?,
            Some(Ok("none")) => None,
            Some(Ok("linear")) => linear(self.meta_f64(&key("rope.scaling.factor"))?)?,
            Some(Ok(other)) => return Err(unsupported(format!("rope scaling type {other:?}"))),
            Some(Err(v)) => return Err(invalid(format!("{} should be a string, is {v:?}", key("rope.scaling.type")))),
        };
        if self.tensor_info("rope_freqs.weight").is_some() {
            return Err(unsupported("per-dimension RoPE frequency factors (rope_freqs.weight, Llama 3.1 style) in GGUF".into()));
        }

        let vocab = match opt("vocab_size")? {
            Some(v) => v,
            None => match self.metadata("tokenizer.ggml.tokens") {
                Some(t) => t.as_array().map(<[GgufValue]>::len).ok_or_else(|| invalid("tokenizer.ggml.tokens is not an array".into()))?,
                None => match self.tensor_info("token_embd.weight").map(|t| t.dims.as_slice()) {
                    Some([_, v]) => *v as usize,
                    _ => return Err(invalid("cannot determine the vocabulary size".into())),
                },
            },
        };
        let vocab = positive("vocab_size", vocab)?;
        let token_id = |k: &str| -> Result<Option<u32>, FormatError> {
            self.meta_usize(k)?.map(|v| u32::try_from(v).map_err(|_| invalid(format!("{k} {v} does not fit in u32")))).transpose()
        };

        let config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: context,
            tie_word_embeddings: self.tensor_info("output.weight").is_none(),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }
}

/// Splits `{prefix}{layer}.{suffix}` into the layer number and suffix. The layer must be a plain
/// decimal number (no sign, no leading zeros) so that the mapping is a bijection.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (layer, suffix) = name.strip_prefix(prefix)?.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0')) {
        return None;
    }
    Some((layer.parse().ok()?, suffix))
}

/// The GGUF name of a Hugging Face Llama tensor name (`model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`); `None` for names with no GGUF counterpart.
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_TENSORS.iter().find(|(h, _)| *h == hf) {
        return Some((*g).to_string());
    }
    let (layer, suffix) = split_layer(hf, "model.layers.")?;
    let t = LAYER_TENSORS.iter().find(|t| t.hf == suffix)?;
    Some(format!("blk.{layer}.{}", t.gguf))
}

/// The Hugging Face name of a GGUF Llama tensor name (`blk.3.ffn_up.weight` →
/// `model.layers.3.mlp.up_proj.weight`); `None` for names with no Hugging Face counterpart
/// (`rope_freqs.weight`, ...). Inverse of [`hf_to_gguf_name`].
pub fn gguf_to_hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL_TENSORS.iter().find(|(_, g)| *g == gguf) {
        return Some((*h).to_string());
    }
    let (layer, suffix) = split_layer(gguf, "blk.")?;
    let t = LAYER_TENSORS.iter().find(|t| t.gguf == suffix)?;
    Some(format!("model.layers.{layer}.{}", t.hf))
}

/// Checks the shape assumptions shared by [`permute_qk`] and [`unpermute_qk`].
fn qk_layout(len: usize, rows: usize, cols: usize, n_head: usize) -> Option<usize> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || rows.checked_mul(cols) != Some(len) {
        return None;
    }
    Some(rows / n_head)
}

/// llama.cpp's Q/K row permutation (`LlamaModel.permute` in `convert_hf_to_gguf.py`), applied when
/// converting Hugging Face weights to GGUF: a row-major `[rows, cols]` matrix is viewed as
/// `[n_head, 2, rows / n_head / 2, cols]`, axes 1 and 2 swapped, and flattened back, so GGUF row
/// `h*R + 2*i + j` holds HF row `h*R + j*R/2 + i` (`R = rows / n_head`). This turns HF's
/// "rotate half" RoPE pairing into ggml's adjacent-pair pairing.
///
/// Returns `None` if `data.len() != rows * cols`, `n_head == 0` or `rows` is not a multiple of
/// `2 * n_head`.
pub fn permute_qk(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    let per_head = qk_layout(data.len(), rows, cols, n_head)?;
    let half = per_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let (hf, gg) = (h * per_head + j * half + i, h * per_head + 2 * i + j);
                out[gg * cols..(gg + 1) * cols].copy_from_slice(&data[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// Undoes [`permute_qk`]: GGUF-layout Q or K projection rows back to Hugging Face order.
/// `n_head` is the number of attention heads for Q and of key/value heads for K.
///
/// Returns `None` under the same conditions as [`permute_qk`].
pub fn unpermute_qk(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    let per_head = qk_layout(data.len(), rows, cols, n_head)?;
    let half = per_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let (hf, gg) = (h * per_head + j * half + i, h * per_head + 2 * i + j);
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&data[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// A Llama GGUF file seen as Hugging Face-named, Hugging Face-layout f32 weights: names are
/// translated with [`hf_to_gguf_name`], tensors dequantized, and `q_proj` / `k_proj` rows
/// unpermuted with [`unpermute_qk`]. `lm_head.weight` is absent when the embeddings are tied.
#[derive(Debug)]
pub struct GgufWeights {
    file: Arc<GgufFile>,
    config: LlamaConfig,
}

impl GgufWeights {
    /// Wraps an open file and reads its Llama configuration.
    ///
    /// # Errors
    /// Those of [`GgufFile::llama_config`].
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
        let err = |name: &str, reason: String| FormatError::Tensor { path: self.file.path().to_path_buf(), name: name.to_string(), reason };
        let g = hf_to_gguf_name(name).ok_or_else(|| err(name, "no GGUF counterpart for this name".into()))?;
        if self.file.tensor_info(&g).is_none() {
            return Err(err(name, format!("not in the file (as {g})")));
        }
        let mut t = self.file.tensor_f32(&g)?;
        let n_head = if g.ends_with(".attn_q.weight") {
            Some(self.config.num_attention_heads)
        } else if g.ends_with(".attn_k.weight") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        };
        if let Some(n_head) = n_head {
            let [rows, cols] = t.shape[..] else {
                return Err(err(name, format!("shape {:?} is not 2-D", t.shape)));
            };
            t.data =
                unpermute_qk(&t.data, rows, cols, n_head).ok_or_else(|| err(name, format!("{rows} rows do not split into {n_head} heads of rotary pairs")))?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests;
