//! Hugging Face model directories: `config.json`, `model.safetensors` or sharded
//! `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`.
//! Safetensors shards are memory-mapped; F32, F16 and BF16 tensors are read as f32. Nothing is unpickled.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::hf_config::ConfigJson;
use super::{FormatError, HostTensor, WeightSource};
use crate::config::LlamaConfig;

/// Sampling defaults from `generation_config.json` (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    pub do_sample: Option<bool>,
    pub eos_token_ids: Vec<u32>,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One tensor listed in a safetensors header, its data at `bytes[start..end]` of the file.
#[derive(Debug, Clone)]
pub struct ShardTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Reads and checks a safetensors file's header. `SafeTensors::read_metadata` already requires the
/// data offsets to be contiguous, each tensor's byte size to match its dtype and shape, and the data
/// to fill the file; each range is checked against `bytes` once more here, before it serves as an
/// index. Nothing is allocated for what the header merely claims.
///
/// # Errors
/// [`FormatError::Invalid`] for a malformed header or offsets outside the file.
pub fn shard_tensors(bytes: &[u8], path: &Path) -> Result<Vec<ShardTensor>, FormatError> {
    let (header_len, meta) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(path, format!("bad safetensors header: {e}")))?;
    let data_start = 8usize.checked_add(header_len).ok_or_else(|| invalid(path, "header length overflows"))?;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        let (start, end) = match (data_start.checked_add(s), data_start.checked_add(e)) {
            (Some(a), Some(b)) if a <= b && b <= bytes.len() => (a, b),
            _ => return Err(invalid(path, format!("tensor {name}: data offsets outside the file"))),
        };
        out.push(ShardTensor { name, dtype: info.dtype, shape: info.shape.clone(), start, end });
    }
    Ok(out)
}

/// An open Hugging Face Llama directory. `Send + Sync`; implements [`WeightSource`].
///
/// Shards are memory-mapped: they must not be modified while open.
pub struct HfModelDir {
    dir: PathBuf,
    config: LlamaConfig,
    generation: GenerationConfig,
    chat_template: Option<String>,
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    tensors: BTreeMap<String, Entry>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> FormatError {
    FormatError::Invalid { path: path.to_path_buf(), reason: reason.into() }
}

fn read_json(path: &Path) -> Result<Value, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))
}

/// Parses a Llama `config.json`.
///
/// # Errors
/// [`FormatError::Unsupported`] for other architectures or rope scaling types; [`FormatError::Invalid`]
/// for missing or inconsistent values.
pub fn parse_llama_config(json_text: &str, path: &Path) -> Result<LlamaConfig, FormatError> {
    ConfigJson::parse(json_text, path)?.into_config(path)
}

impl HfModelDir {
    /// Opens a model directory and validates its config and every safetensors header.
    pub fn open(dir: &Path) -> Result<Self, FormatError> {
        Self::open_with(dir, false)
    }

    /// [`HfModelDir::open`]; with `copy`, every shard is read into private memory instead of mapped,
    /// so the files may change on disk at any time without effect.
    pub fn open_with(dir: &Path, copy: bool) -> Result<Self, FormatError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(invalid(dir, "no config.json: not a Hugging Face model directory"));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| FormatError::Io { path: config_path.clone(), source })?;
        let config = parse_llama_config(&text, &config_path)?;

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (shard_names, weight_map): (Vec<String>, Option<HashMap<String, String>>) = if index_path.is_file() {
            let index = read_json(&index_path)?;
            let map = index["weight_map"].as_object().ok_or_else(|| invalid(&index_path, "no weight_map object"))?;
            let mut wm = HashMap::new();
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| invalid(&index_path, format!("weight_map[{tensor}] is not a file name")))?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(invalid(&index_path, format!("shard name {file:?} is not a plain file name")));
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
                wm.insert(tensor.clone(), file.to_string());
            }
            names.sort();
            (names, Some(wm))
        } else if single.is_file() {
            (vec!["model.safetensors".into()], None)
        } else if dir.join("pytorch_model.bin").is_file() || dir.join("pytorch_model.bin.index.json").is_file() {
            return Err(FormatError::Unsupported {
                path: dir.to_path_buf(),
                reason: "only PyTorch pickle checkpoints (pytorch_model.bin); convert them to safetensors first (pickles are never loaded)".into(),
            });
        } else {
            return Err(invalid(dir, "no model.safetensors or model.safetensors.index.json"));
        };

        let mut shards = Vec::with_capacity(shard_names.len());
        let mut tensors = BTreeMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let io = |source| FormatError::Io { path: path.clone(), source };
            let file = std::fs::File::open(&path).map_err(io)?;
            // Read-only map (the documented contract: shards are not modified while open), or a copy.
            let map = super::map_file(&file, copy).map_err(io)?;
            for t in shard_tensors(&map, &path)? {
                if let Some(wm) = &weight_map {
                    if wm.get(&t.name) != Some(name) {
                        continue; // listed elsewhere (or not at all) in the index
                    }
                }
                tensors.insert(t.name, Entry { shard: i, dtype: t.dtype, shape: t.shape, start: t.start, end: t.end });
            }
            shards.push((path, map));
        }
        if let Some(wm) = &weight_map {
            if let Some((t, f)) = wm.iter().find(|(t, _)| !tensors.contains_key(*t)) {
                return Err(FormatError::Tensor { path: dir.join(f), name: t.clone(), reason: "listed in the index but absent from its shard".into() });
            }
        }

        let mut chat_template = None;
        let tc = dir.join("tokenizer_config.json");
        if tc.is_file() {
            chat_template = match &read_json(&tc)?["chat_template"] {
                Value::String(s) => Some(s.clone()),
                Value::Array(list) => list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string),
                _ => None,
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.is_file() {
            chat_template = Some(std::fs::read_to_string(&jinja).map_err(|source| FormatError::Io { path: jinja.clone(), source })?);
        }
        let mut generation = GenerationConfig::default();
        let gc = dir.join("generation_config.json");
        if gc.is_file() {
            let g = read_json(&gc)?;
            generation = GenerationConfig {
                temperature: g["temperature"].as_f64().map(|f| f as f32),
                top_p: g["top_p"].as_f64().map(|f| f as f32),
                top_k: g["top_k"].as_u64().map(|k| k as usize),
                repetition_penalty: g["repetition_penalty"].as_f64().map(|f| f as f32),
                max_new_tokens: g["max_new_tokens"].as_u64().map(|k| k as usize),
                do_sample: g["do_sample"].as_bool(),
                eos_token_ids: match &g["eos_token_id"] {
                    Value::Array(a) => a.iter().filter_map(Value::as_u64).map(|i| i as u32).collect(),
                    x => x.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
                },
            };
        }
        let mut config = config;
        for id in &generation.eos_token_ids {
            if !config.eos_token_ids.contains(id) {
                config.eos_token_ids.push(*id);
            }
        }
        Ok(HfModelDir { dir: dir.to_path_buf(), config, generation, chat_template, shards, tensors })
    }

    /// The model configuration (EOS ids from `generation_config.json` merged in).
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
    /// `tokenizer.json`, if present.
    pub fn tokenizer_json_path(&self) -> Option<PathBuf> {
        Some(self.dir.join("tokenizer.json")).filter(|p| p.is_file())
    }
    /// `tokenizer_config.json`, if present.
    pub fn tokenizer_config_path(&self) -> Option<PathBuf> {
        Some(self.dir.join("tokenizer_config.json")).filter(|p| p.is_file())
    }
    /// The chat template (`tokenizer_config.json` or `chat_template.jinja`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// `generation_config.json` values.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }
    /// Names of all tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

impl WeightSource for HfModelDir {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor, FormatError> {
        let e =
            self.tensors.get(name).ok_or_else(|| FormatError::Tensor { path: self.dir.clone(), name: name.into(), reason: "not in the checkpoint".into() })?;
        let (path, map) = &self.shards[e.shard];
        let bytes = &map[e.start..e.end];
        let n: usize = e.shape.iter().product();
        let bad = |reason: String| FormatError::Tensor { path: path.clone(), name: name.into(), reason };
        let width = float_width(e.dtype).map_err(bad)?;
        if bytes.len() != n * width {
            return Err(bad(format!("{} bytes for shape {:?} of {:?}", bytes.len(), e.shape, e.dtype)));
        }
        Ok(HostTensor { shape: e.shape.clone(), data: decode_f32(e.dtype, bytes) })
    }
}

/// Bytes per element of the float dtypes the safetensors readers accept (F32, F16, BF16).
///
/// # Errors
/// Any other dtype, named.
pub(crate) fn float_width(dtype: Dtype) -> Result<usize, String> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::F16 | Dtype::BF16 => Ok(2),
        other => Err(format!("dtype {other:?} is not supported (F32, F16, BF16)")),
    }
}

/// Little-endian values of a dtype [`float_width`] accepts, as f32.
pub(crate) fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub(crate) fn write_atomic(path: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<(), FormatError> {
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    write(tmp.as_file_mut()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

struct F32View<'a> {
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl safetensors::View for &F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

pub(crate) fn write_shard(path: &Path, tensors: &[(String, HostTensor)]) -> Result<(), FormatError> {
    let views: Vec<(String, F32View)> =
        tensors.iter().map(|(n, t)| (n.clone(), F32View { shape: &t.shape, bytes: t.data.iter().flat_map(|v| v.to_le_bytes()).collect() })).collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), Some(meta)).map_err(|e| invalid(path, e.to_string()))?;
    write_atomic(path, |f| f.write_all(&bytes))
}

/// Writes a Hugging Face Llama directory: `config.json`, `generation_config.json`, `tokenizer.json`,
/// `tokenizer_config.json` and f32 safetensors — one `model.safetensors`, or
/// `model-0000i-of-0000N.safetensors` shards plus `model.safetensors.index.json` when the tensors exceed
/// `max_shard_bytes`. Tensors are consumed one at a time; at most one shard is held in memory.
/// Every file is written atomically.
pub fn write_hf_dir(
    dir: &Path,
    config: &LlamaConfig,
    tensors: &mut dyn Iterator<Item = Result<(String, HostTensor), FormatError>>,
    tokenizer_json: &str,
    tokenizer_config_json: &str,
    max_shard_bytes: Option<u64>,
) -> Result<(), FormatError> {
    std::fs::create_dir_all(dir).map_err(|source| FormatError::Io { path: dir.to_path_buf(), source })?;
    let limit = max_shard_bytes.unwrap_or(u64::MAX).max(1);
    // Shards are first written under temporary numbering, renamed once the count is known.
    let mut shard: Vec<(String, HostTensor)> = Vec::new();
    let mut shard_bytes = 0u64;
    let mut written: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let flush = |shard: &mut Vec<(String, HostTensor)>, written: &mut Vec<(PathBuf, Vec<String>)>| -> Result<(), FormatError> {
        if shard.is_empty() {
            return Ok(());
        }
        let path = dir.join(format!(".shard-{}.safetensors.partial", written.len()));
        write_shard(&path, shard)?;
        written.push((path, shard.iter().map(|(n, _)| n.clone()).collect()));
        shard.clear();
        Ok(())
    };
    for item in tensors {
        let (name, t) = item?;
        if t.numel() != t.data.len() {
            return Err(FormatError::Tensor { path: dir.to_path_buf(), name, reason: "data length does not match shape".into() });
        }
        let size = t.data.len() as u64 * 4;
        if !shard.is_empty() && shard_bytes + size > limit {
            flush(&mut shard, &mut written)?;
            shard_bytes = 0;
        }
        shard_bytes += size;
        shard.push((name, t));
    }
    flush(&mut shard, &mut written)?;
    let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|source| FormatError::Io { path: to.to_path_buf(), source });
    if written.len() <= 1 {
        if let Some((p, _)) = written.first() {
            rename(p, &dir.join("model.safetensors"))?;
        }
    } else {
        let n = written.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0u64;
        for (i, (p, names)) in written.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            rename(p, &dir.join(&file))?;
            for name in names {
                weight_map.insert(name.clone(), json!(file));
            }
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(&dir.join("model.safetensors.index.json"), |f| f.write_all(index.to_string().as_bytes()))?;
    }
    let cfg = serde_json::to_value(ConfigJson::from_config(config)).map_err(|e| invalid(dir, e.to_string()))?;
    let text = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write_atomic(&dir.join("config.json"), |f| f.write_all(text(&cfg).as_bytes()))?;
    let gen = json!({"bos_token_id": config.bos_token_id, "eos_token_id": cfg["eos_token_id"].clone()});
    write_atomic(&dir.join("generation_config.json"), |f| f.write_all(text(&gen).as_bytes()))?;
    write_atomic(&dir.join("tokenizer.json"), |f| f.write_all(tokenizer_json.as_bytes()))?;
    write_atomic(&dir.join("tokenizer_config.json"), |f| f.write_all(tokenizer_config_json.as_bytes()))?;
    Ok(())
}
