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

impl LlamaConfig {
    /// The invariants every loader and decoder relies on: no zero dimension, the attention heads
    /// split evenly into key/value groups, an even head dimension (rotate-half RoPE), a positive
    /// finite RMSNorm epsilon and RoPE base. Both file readers and the decoders call this.
    ///
    /// # Errors
    /// What is wrong, naming the Hugging Face key.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0"));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_attention_heads, self.num_key_value_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} is odd", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }
}

/// One weight of a decoder layer: its name in each file format and its shape (`[out, in]` for a
/// linear, as Hugging Face stores it; `[n]` for a norm). Used by the GGUF reader and the converter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerTensor {
    /// Hugging Face name after `model.layers.{i}.`.
    pub hf: &'static str,
    /// GGUF name after `blk.{i}.`.
    pub gguf: &'static str,
    kind: LayerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerKind {
    Norm,
    Q,
    Kv,
    O,
    GateUp,
    Down,
}

impl LayerTensor {
    pub const ATTN_NORM: LayerTensor = LAYER_TENSORS[0];
    pub const Q: LayerTensor = LAYER_TENSORS[1];
    pub const K: LayerTensor = LAYER_TENSORS[2];
    pub const V: LayerTensor = LAYER_TENSORS[3];
    pub const O: LayerTensor = LAYER_TENSORS[4];
    pub const MLP_NORM: LayerTensor = LAYER_TENSORS[5];
    pub const GATE: LayerTensor = LAYER_TENSORS[6];
    pub const UP: LayerTensor = LAYER_TENSORS[7];
    pub const DOWN: LayerTensor = LAYER_TENSORS[8];

    /// The tensor's shape in a model of configuration `c`.
    pub fn shape(&self, c: &LlamaConfig) -> Vec<usize> {
        let (h, q, kv, i) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
        match self.kind {
            LayerKind::Norm => vec![h],
            LayerKind::Q => vec![q, h],
            LayerKind::Kv => vec![kv, h],
            LayerKind::O => vec![h, q],
            LayerKind::GateUp => vec![i, h],
            LayerKind::Down => vec![h, i],
        }
    }
}

/// Every weight of a Llama decoder layer, in checkpoint order.
pub const LAYER_TENSORS: [LayerTensor; 9] = [
    LayerTensor { hf: "input_layernorm.weight", gguf: "attn_norm.weight", kind: LayerKind::Norm },
    LayerTensor { hf: "self_attn.q_proj.weight", gguf: "attn_q.weight", kind: LayerKind::Q },
    LayerTensor { hf: "self_attn.k_proj.weight", gguf: "attn_k.weight", kind: LayerKind::Kv },
    LayerTensor { hf: "self_attn.v_proj.weight", gguf: "attn_v.weight", kind: LayerKind::Kv },
    LayerTensor { hf: "self_attn.o_proj.weight", gguf: "attn_output.weight", kind: LayerKind::O },
    LayerTensor { hf: "post_attention_layernorm.weight", gguf: "ffn_norm.weight", kind: LayerKind::Norm },
    LayerTensor { hf: "mlp.gate_proj.weight", gguf: "ffn_gate.weight", kind: LayerKind::GateUp },
    LayerTensor { hf: "mlp.up_proj.weight", gguf: "ffn_up.weight", kind: LayerKind::GateUp },
    LayerTensor { hf: "mlp.down_proj.weight", gguf: "ffn_down.weight", kind: LayerKind::Down },
];

/// The whole-model weights: (Hugging Face name, GGUF name), in checkpoint order (embedding, final norm,
/// untied head).
pub const GLOBAL_TENSORS: [(&str, &str); 3] =
    [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")];
