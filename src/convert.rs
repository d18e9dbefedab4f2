//! Conversion between model file formats with the crate's own readers and writers.

use std::path::Path;
use std::sync::Arc;

use crate::config::{LlamaConfig, GLOBAL_TENSORS, LAYER_TENSORS};
use crate::error::Result;
use crate::formats::gguf::{GgufFile, GgufWeights};
use crate::formats::{hf, WeightSource};
use crate::tokenizer::Tokenizer;

/// Hugging Face names of every weight of a Llama checkpoint, in checkpoint order.
/// `lm_head.weight` is listed only when `with_lm_head` (untied heads).
pub fn llama_tensor_names(config: &LlamaConfig, with_lm_head: bool) -> Vec<String> {
    let [(embed, _), (norm, _), (head, _)] = GLOBAL_TENSORS;
    let mut names = vec![embed.to_string()];
    for i in 0..config.num_hidden_layers {
        for t in &LAYER_TENSORS {
            names.push(format!("model.layers.{i}.{}", t.hf));
        }
    }
    names.push(norm.to_string());
    if with_lm_head {
        names.push(head.to_string());
    }
    names
}

/// Converts a GGUF file to a Hugging Face directory: `config.json`, f32 `model.safetensors`
/// (dequantized, Q/K rows in HF order), `tokenizer.json`, `tokenizer_config.json` (with the chat
/// template) and `generation_config.json`. Tensors are streamed one at a time.
///
/// # Errors
/// Unreadable GGUF, a tokenizer that cannot be expressed, I/O errors writing `out_dir`.
pub fn gguf_to_hf_dir(gguf: &Path, out_dir: &Path) -> Result<()> {
    gguf_to_hf_dir_with_layers(gguf, out_dir, None)
}

/// [`gguf_to_hf_dir`] keeping only the first `keep_layers` decoder layers (all when `None`): a small,
/// fast model with the real embeddings, tokenizer and template, for tests where the text does not
/// matter (e.g. under valgrind).
///
/// # Errors
/// As [`gguf_to_hf_dir`]; [`crate::Error::InvalidArgument`] when `keep_layers` is 0.
pub fn gguf_to_hf_dir_with_layers(gguf: &Path, out_dir: &Path, keep_layers: Option<usize>) -> Result<()> {
    let file = Arc::new(GgufFile::open(gguf)?);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let weights = GgufWeights::new(file)?;
    let mut config = weights.config().clone();
    if let Some(n) = keep_layers {
        if n == 0 {
            return Err(crate::Error::InvalidArgument("keep at least one layer".into()));
        }
        config.num_hidden_layers = config.num_hidden_layers.min(n);
    }
    let names = llama_tensor_names(&config, weights.contains("lm_head.weight"));
    let mut tensors = names.into_iter().map(|n| weights.tensor(&n).map(|t| (n, t)));
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let tokenizer_config = serde_json::json!({
        "add_bos_token": tokenizer.add_bos_by_default(),
        "add_eos_token": false,
        "bos_token": token(tokenizer.bos_id()),
        "eos_token": token(tokenizer.eos_ids().first().copied()),
        "chat_template": tokenizer.chat_template(),
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let tokenizer_config = serde_json::to_string_pretty(&tokenizer_config).map_err(|e| crate::Error::InvalidArgument(format!("tokenizer_config.json: {e}")))?;
    hf::write_hf_dir(out_dir, &config, &mut tensors, &tokenizer.to_hf_json()?, &tokenizer_config, None)?;
    Ok(())
}
