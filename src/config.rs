//! Model hyper-parameters shared by every loader (GGUF metadata, Hugging Face `config.json`).

use serde::{Deserialize, Serialize};

/// RoPE frequency scaling, as in Hugging Face `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// `{"rope_type": "linear", "factor": f}`: positions divided by `factor`.
    Linear { factor: f32 },
    /// `{"rope_type": "llama3", ...}` (Llama 3.1+).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
}

/// Hyper-parameters of a Llama decoder (`LlamaForCausalLM`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension (`hidden_size / num_attention_heads` unless the checkpoint says otherwise).
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// True when the LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (Llama 3 style configs list several).
    pub eos_token_ids: Vec<u32>,
}
