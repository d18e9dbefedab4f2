//! LoRA adapters in Hugging Face PEFT's on-disk form: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, tensors named `base_model.model.<module path>.lora_A.weight` (`[r, in]`)
//! and `...lora_B.weight` (`[out, r]`). What is read here is validated for PEFT features we do not
//! implement (DoRA, biases, `modules_to_save`, per-module ranks): those are refused, never ignored.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::{json, Value};

use super::hf::{decode_f32, float_width, write_atomic, write_shard};
use super::{FormatError, HostTensor};

/// The Llama linear layers a LoRA can target, in the order adapters keep them.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A LoRA configuration (the subset of PEFT's `LoraConfig` this library implements).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
    pub alpha: f32,
    /// Dropout on the adapter's input during training (0 disables it).
    pub dropout: f32,
    /// Targeted modules, a subset of [`TARGETS`] in that order.
    pub target_modules: Vec<String>,
    /// rsLoRA scaling (`alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// `base_model_name_or_path`, informational.
    pub base_model: Option<String>,
}

impl Default for LoraConfig {
    /// PEFT's defaults for a causal LM with every Llama linear targeted: r 8, alpha 16, no dropout.
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, target_modules: TARGETS.iter().map(|s| s.to_string()).collect(), use_rslora: false, base_model: None }
    }
}

impl LoraConfig {
    /// The factor applied to `B A x`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    /// Whether `module` (one of [`TARGETS`]) is targeted.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|m| m == module)
    }

    /// Checks ranges and module names; puts the modules in [`TARGETS`] order.
    ///
    /// # Errors
    /// A zero rank, a non-finite alpha, a dropout outside `[0, 1)`, an unknown or empty module list.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.r == 0 {
            return Err("r must be positive".into());
        }
        if !self.alpha.is_finite() {
            return Err("lora_alpha must be finite".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("lora_dropout {} is outside [0, 1)", self.dropout));
        }
        if let Some(bad) = self.target_modules.iter().find(|m| !TARGETS.contains(&m.as_str())) {
            return Err(format!("target module {bad:?} is not one of {TARGETS:?}"));
        }
        if self.target_modules.is_empty() {
            return Err("no target modules".into());
        }
        let set: Vec<String> = TARGETS.iter().filter(|t| self.targets(t)).map(|s| s.to_string()).collect();
        self.target_modules = set;
        Ok(())
    }

    /// Parses PEFT's `adapter_config.json`.
    ///
    /// # Errors
    /// Malformed JSON, a non-LoRA adapter, or a PEFT feature this library does not implement.
    pub fn from_json(text: &str, path: &Path) -> Result<LoraConfig, FormatError> {
        let invalid = |reason: String| FormatError::Invalid { path: path.to_path_buf(), reason };
        let unsupported = |reason: String| FormatError::Unsupported { path: path.to_path_buf(), reason };
        let v: Value = serde_json::from_str(text).map_err(|e| invalid(format!("bad JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| invalid("not a JSON object".into()))?;
        let peft_type = obj.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(unsupported(format!("peft_type {peft_type:?} (only LORA)")));
        }
        let truthy = |k: &str| obj.get(k).is_some_and(|v| v.as_bool() == Some(true));
        let nonempty = |k: &str| {
            obj.get(k).is_some_and(|v| match v {
                Value::Null => false,
                Value::Object(o) => !o.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            })
        };
        for k in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
            if truthy(k) {
                return Err(unsupported(format!("{k} is true")));
            }
        }
        for k in ["modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform", "target_parameters", "trainable_token_indices"] {
            if nonempty(k) {
                return Err(unsupported(format!("{k} is set")));
            }
        }
        if let Some(bias) = obj.get("bias").and_then(Value::as_str) {
            if bias != "none" {
                return Err(unsupported(format!("bias {bias:?} (only \"none\")")));
            }
        }
        let r = obj.get("r").and_then(Value::as_u64).ok_or_else(|| invalid("\"r\" is missing or not a positive integer".into()))?;
        let alpha = obj.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0) as f32;
        let dropout = obj.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
        let target_modules: Vec<String> = match obj.get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|m| {
                    let m = m.as_str().ok_or_else(|| invalid("target_modules holds a non-string".into()))?;
                    // PEFT matches on the module path's suffix: accept "self_attn.q_proj" as "q_proj".
                    Ok(m.rsplit('.').next().unwrap_or(m).to_string())
                })
                .collect::<Result<_, FormatError>>()?,
            Some(Value::String(s)) if s == "all-linear" => TARGETS.iter().map(|s| s.to_string()).collect(),
            Some(Value::String(s)) => return Err(unsupported(format!("target_modules as a pattern ({s:?})"))),
            _ => return Err(invalid("target_modules is missing".into())),
        };
        let mut config = LoraConfig {
            r: r as usize,
            alpha,
            dropout,
            target_modules,
            use_rslora: truthy("use_rslora"),
            base_model: obj.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string),
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// PEFT's `adapter_config.json` for this configuration (readable by PEFT's `PeftModel.from_pretrained`).
    pub fn to_json(&self) -> Value {
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }
}

/// PEFT's file name for the `A` (`a == true`) or `B` matrix of `module` in decoder layer `layer`.
pub fn tensor_name(layer: usize, module: &str, a: bool) -> String {
    let block = if matches!(module, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("base_model.model.model.layers.{layer}.{block}.{module}.lora_{}.weight", if a { "A" } else { "B" })
}

/// Splits a PEFT tensor name into (layer, module, is `A`).
pub fn parse_tensor_name(name: &str) -> Option<(usize, &str, bool)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("self_attn.").or_else(|| rest.strip_prefix("mlp."))?;
    let (module, which) = rest.split_once('.')?;
    let a = match which {
        "lora_A.weight" => true,
        "lora_B.weight" => false,
        _ => return None,
    };
    Some((layer.parse().ok()?, TARGETS.iter().find(|t| **t == module)?, a))
}

/// An adapter as files hold it: configuration and f32 tensors by PEFT name.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    /// Configuration.
    pub config: LoraConfig,
    /// Tensors by PEFT name, PyTorch layout.
    pub tensors: BTreeMap<String, HostTensor>,
}

/// Reads a PEFT adapter directory (F32, F16 or BF16 weights; converted to f32).
///
/// # Errors
/// Missing files, malformed JSON or safetensors, unsupported PEFT features, tensor names that are not
/// LoRA matrices of a Llama linear (embeddings, biases, `modules_to_save` copies).
pub fn read_adapter(dir: &Path) -> Result<PeftAdapter, FormatError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| FormatError::Io { path: cfg_path.clone(), source })?;
    let config = LoraConfig::from_json(&text, &cfg_path)?;
    let path = dir.join(WEIGHTS_FILE);
    let tensors = read_tensors(&path)?;
    for name in tensors.keys() {
        if parse_tensor_name(name).is_none() {
            return Err(FormatError::Unsupported { path: path.clone(), reason: format!("tensor {name:?} is not a LoRA matrix of a Llama linear layer") });
        }
    }
    Ok(PeftAdapter { config, tensors })
}

/// Reads every tensor of a safetensors file as f32.
pub(crate) fn read_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, FormatError> {
    let bytes = std::fs::read(path).map_err(|source| FormatError::Io { path: path.to_path_buf(), source })?;
    read_tensors_bytes(&bytes, path)
}

/// [`read_adapter`]'s safetensors decoding on bytes already in memory (`path` names them in errors):
/// every tensor as f32, F32/F16/BF16 only, no NaN or infinity.
///
/// # Errors
/// A malformed file, another dtype, non-finite values.
pub fn read_tensors_bytes(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, HostTensor>, FormatError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| FormatError::Invalid { path: path.to_path_buf(), reason: format!("bad safetensors: {e}") })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let bad = |reason: String| FormatError::Tensor { path: path.to_path_buf(), name: name.clone(), reason };
        float_width(view.dtype()).map_err(bad)?;
        let values = decode_f32(view.dtype(), data);
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad("holds NaN or infinite values".into()));
        }
        out.insert(name.clone(), HostTensor { shape: view.shape().to_vec(), data: values });
    }
    Ok(out)
}

/// Writes `adapter` as a PEFT directory (created if needed). Each file is written atomically
/// (temporary file, fsync, rename) and the weights before the configuration, so a crash leaves the
/// previous adapter readable. Extra `(name, value)` metadata goes in the safetensors header.
///
/// # Errors
/// I/O errors.
pub fn write_adapter(dir: &Path, adapter: &PeftAdapter) -> Result<(), FormatError> {
    std::fs::create_dir_all(dir).map_err(|source| FormatError::Io { path: dir.to_path_buf(), source })?;
    let tensors: Vec<(String, HostTensor)> = adapter.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    write_shard(&dir.join(WEIGHTS_FILE), &tensors)?;
    let cfg = serde_json::to_string_pretty(&adapter.config.to_json()).expect("JSON value serializes");
    write_atomic(&dir.join(CONFIG_FILE), |f| f.write_all(cfg.as_bytes()))?;
    sync_dir(dir);
    Ok(())
}

/// Writes named f32 tensors to one safetensors file, atomically.
pub(crate) fn write_tensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<(), FormatError> {
    write_shard(path, tensors)
}

/// Makes the renames in `dir` durable (best effort: not every platform can open a directory).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (l, m) in [(0, "q_proj"), (29, "down_proj"), (3, "gate_proj"), (7, "o_proj")] {
            for a in [true, false] {
                assert_eq!(parse_tensor_name(&tensor_name(l, m, a)), Some((l, m, a)));
            }
        }
        assert_eq!(tensor_name(0, "down_proj", true), "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
        assert_eq!(parse_tensor_name("base_model.model.model.embed_tokens.lora_A.weight"), None);
        assert_eq!(parse_tensor_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"), None);
    }

    #[test]
    fn config_refuses_what_is_not_implemented() {
        let p = Path::new("adapter_config.json");
        let ok = r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["self_attn.q_proj","v_proj"]}"#;
        let c = LoraConfig::from_json(ok, p).unwrap();
        assert_eq!(c.target_modules, ["q_proj", "v_proj"]);
        assert_eq!(c.scaling(), 2.0);
        for bad in [
            r#"{"r":4,"target_modules":["q_proj"],"use_dora":true}"#,
            r#"{"r":4,"target_modules":["q_proj"],"modules_to_save":["lm_head"]}"#,
            r#"{"r":4,"target_modules":["q_proj"],"bias":"all"}"#,
            r#"{"r":4,"target_modules":["q_proj"],"rank_pattern":{"q_proj":2}}"#,
            r#"{"r":4,"target_modules":".*proj"}"#,
            r#"{"peft_type":"IA3","r":4,"target_modules":["q_proj"]}"#,
        ] {
            assert!(matches!(LoraConfig::from_json(bad, p), Err(FormatError::Unsupported { .. })), "{bad}");
        }
        for bad in [r#"{"r":0,"target_modules":["q_proj"]}"#, r#"{"r":4,"target_modules":["lm_head"]}"#, "[1]", "{"] {
            assert!(matches!(LoraConfig::from_json(bad, p), Err(FormatError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn config_json_round_trips() {
        let mut c = LoraConfig { r: 16, alpha: 32.0, dropout: 0.05, use_rslora: true, ..LoraConfig::default() };
        c.target_modules = vec!["v_proj".into(), "q_proj".into()];
        c.validate().unwrap();
        let back = LoraConfig::from_json(&c.to_json().to_string(), Path::new("x")).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.target_modules, ["q_proj", "v_proj"]);
    }
}
