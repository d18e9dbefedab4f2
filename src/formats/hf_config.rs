//! The Llama `config.json` schema, one serde struct for reading and writing.
//!
//! Reading: [`ConfigJson`] is deserialized (after the architecture check, so that another
//! architecture's fields never get in the way), then [`ConfigJson::into_config`] fills the defaults
//! transformers applies and [`LlamaConfig::validate`] checks the invariants. Writing:
//! [`ConfigJson::from_config`] is what [`super::hf::write_hf_dir`] serializes, so a written directory
//! reads back through the same fields.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{LlamaConfig, RopeScaling};
use crate::formats::FormatError;

/// The architectures this crate decodes (`architectures` in `config.json`).
const KNOWN_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];

/// What every Hugging Face config says about its model family; read first.
#[derive(Deserialize)]
struct Family {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
}

/// `eos_token_id` is one id or a list (Llama 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `rope_scaling`, or the newer `rope_parameters` (which also carries `rope_theta`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RopeJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f32>,
}

/// The keys of a Llama `config.json` this crate reads or writes. Unknown keys are ignored on read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConfigJson {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub rms_norm_eps: Option<f32>,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub rope_scaling: Option<RopeJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeJson>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> FormatError {
    FormatError::Invalid { path: path.to_path_buf(), reason: reason.into() }
}

impl ConfigJson {
    /// Parses `config.json` text: the family first (another architecture is
    /// [`FormatError::Unsupported`]), then the Llama keys (a key of the wrong type is
    /// [`FormatError::Invalid`] naming it).
    pub fn parse(json_text: &str, path: &Path) -> Result<Self, FormatError> {
        let value: serde_json::Value = serde_json::from_str(json_text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))?;
        let family: Family = serde_path_to_error::deserialize(&value).map_err(|e| invalid(path, e.to_string()))?;
        let archs = family.architectures.unwrap_or_default();
        let model_type = family.model_type.unwrap_or_default();
        let known =
            if archs.is_empty() { matches!(model_type.as_str(), "llama" | "mistral") } else { archs.iter().any(|a| KNOWN_ARCHITECTURES.contains(&a.as_str())) };
        if !known {
            let what = if archs.is_empty() { format!("model_type {model_type:?}") } else { format!("architectures {archs:?}") };
            return Err(FormatError::Unsupported { path: path.to_path_buf(), reason: format!("{what} (LlamaForCausalLM is supported)") });
        }
        serde_path_to_error::deserialize(value).map_err(|e| invalid(path, e.to_string()))
    }

    /// The hyper-parameters, with transformers' defaults for absent keys, validated.
    pub fn into_config(self, path: &Path) -> Result<LlamaConfig, FormatError> {
        let need = |v: Option<usize>, k: &str| v.ok_or_else(|| invalid(path, format!("missing {k}")));
        let hidden = need(self.hidden_size, "hidden_size")?;
        let heads = need(self.num_attention_heads, "num_attention_heads")?;
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if heads != 0 && hidden.is_multiple_of(heads) => hidden / heads,
            None => return Err(invalid(path, format!("hidden_size {hidden} is not divisible by num_attention_heads {heads}"))),
        };
        let rope = self.rope_scaling.clone().or_else(|| self.rope_parameters.clone()).unwrap_or_default();
        let rope_theta = self.rope_theta.or(self.rope_parameters.as_ref().and_then(|r| r.rope_theta)).unwrap_or(10000.0);
        let rope_scaling = match rope.rope_type.as_deref().or(rope.kind.as_deref()) {
            None | Some("default") => None,
            Some("linear") => Some(RopeScaling::Linear { factor: rope.factor.ok_or_else(|| invalid(path, "linear rope scaling without factor"))? }),
            Some("llama3") => {
                let f = |v: Option<f32>, k: &str| v.ok_or_else(|| invalid(path, format!("llama3 rope scaling without {k}")));
                Some(RopeScaling::Llama3 {
                    factor: f(rope.factor, "factor")?,
                    low_freq_factor: f(rope.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: f(rope.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: rope
                        .original_max_position_embeddings
                        .ok_or_else(|| invalid(path, "llama3 rope scaling without original_max_position_embeddings"))?,
                })
            }
            Some(other) => return Err(FormatError::Unsupported { path: path.to_path_buf(), reason: format!("rope scaling type {other:?}") }),
        };
        let config = LlamaConfig {
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => Vec::new(),
                Some(TokenIds::One(id)) => vec![id],
                Some(TokenIds::Many(ids)) => ids,
            },
        };
        config.validate().map_err(|e| invalid(path, e))?;
        Ok(config)
    }

    /// The `config.json` a written float32 Llama directory carries.
    pub fn from_config(config: &LlamaConfig) -> Self {
        let rope_scaling = config.rope_scaling.as_ref().map(|r| match *r {
            RopeScaling::Linear { factor } => RopeJson { rope_type: Some("linear".into()), factor: Some(factor), ..RopeJson::default() },
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => RopeJson {
                rope_type: Some("llama3".into()),
                factor: Some(factor),
                low_freq_factor: Some(low_freq_factor),
                high_freq_factor: Some(high_freq_factor),
                original_max_position_embeddings: Some(original_max_position_embeddings),
                ..RopeJson::default()
            },
        });
        ConfigJson {
            architectures: Some(vec!["LlamaForCausalLM".into()]),
            model_type: Some("llama".into()),
            torch_dtype: Some("float32".into()),
            vocab_size: Some(config.vocab_size),
            hidden_size: Some(config.hidden_size),
            intermediate_size: Some(config.intermediate_size),
            num_hidden_layers: Some(config.num_hidden_layers),
            num_attention_heads: Some(config.num_attention_heads),
            num_key_value_heads: Some(config.num_key_value_heads),
            head_dim: Some(config.head_dim),
            rms_norm_eps: Some(config.rms_norm_eps),
            rope_theta: Some(config.rope_theta),
            max_position_embeddings: Some(config.max_position_embeddings),
            tie_word_embeddings: Some(config.tie_word_embeddings),
            hidden_act: Some("silu".into()),
            attention_bias: Some(false),
            mlp_bias: Some(false),
            bos_token_id: config.bos_token_id,
            eos_token_id: match config.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(TokenIds::One(*one)),
                many => Some(TokenIds::Many(many.to_vec())),
            },
            rope_scaling,
            rope_parameters: None,
        }
    }
}
