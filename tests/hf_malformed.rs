//! Hugging Face directories: writer/reader round trips (single file and sharded, F16/BF16 inputs)
//! and malformed inputs — each a clear error naming the file, never a panic.

mod common;

use std::path::Path;

use agentlm::config::LlamaConfig;
use agentlm::formats::hf::{parse_llama_config, write_hf_dir, HfModelDir};
use agentlm::formats::{FormatError, HostTensor, WeightSource};

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 11,
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 32,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

fn tensors(c: &LlamaConfig) -> Vec<(String, HostTensor)> {
    let names = agentlm::convert::llama_tensor_names(c, false);
    names
        .into_iter()
        .enumerate()
        .map(|(k, n)| {
            let shape = common::llama_shape(c, &n);
            let len: usize = shape.iter().product();
            let data = (0..len).map(|j| ((j * 7 + k * 13) % 17) as f32 * 0.125 - 1.0).collect();
            (n, HostTensor { shape, data })
        })
        .collect()
}

fn write(dir: &Path, max_shard: Option<u64>) -> Vec<(String, HostTensor)> {
    let c = tiny_config();
    let t = tensors(&c);
    let mut it = t.clone().into_iter().map(Ok);
    write_hf_dir(dir, &c, &mut it, "{}", "{\"add_bos_token\": false}", max_shard).unwrap();
    t
}

#[test]
fn single_and_sharded_round_trips() {
    for shard in [None, Some(600)] {
        let d = tempfile::tempdir().unwrap();
        let want = write(d.path(), shard);
        if shard.is_some() {
            let shards = shard_files(d.path());
            assert!(shards.len() > 1, "{shards:?}");
            let n = shards.len();
            for (i, f) in shards.iter().enumerate() {
                assert_eq!(f, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
            }
            assert!(!d.path().join("model.safetensors").exists());
        } else {
            assert!(d.path().join("model.safetensors").is_file());
        }
        let dir = HfModelDir::open(d.path()).unwrap();
        assert_eq!(dir.config(), &tiny_config());
        for (name, t) in &want {
            assert_eq!(&dir.tensor(name).unwrap(), t, "{name}");
        }
        assert!(!dir.contains("lm_head.weight"));
        assert!(!std::fs::read_dir(d.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("partial")));
    }
}

/// Shard file names listed in the index, sorted.
fn shard_files(dir: &Path) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut files: Vec<String> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
    files.sort();
    files.dedup();
    files
}

fn write_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn f16_and_bf16_tensors_read_as_f32() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), None);
    let vals = [1.5f32, -2.25, 0.0, 3.0];
    let f16: Vec<u8> = vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16: Vec<u8> = vals.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let mut data = f16.clone();
    data.extend(&bf16);
    let header = r#"{"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[8,16]}}"#;
    write_safetensors(&d.path().join("model.safetensors"), header, &data);
    let dir = HfModelDir::open(d.path()).unwrap();
    assert_eq!(dir.tensor("a").unwrap(), HostTensor { shape: vec![2, 2], data: vals.to_vec() });
    assert_eq!(dir.tensor("b").unwrap().data, vals.to_vec());
}

fn open_err(dir: &Path) -> FormatError {
    match HfModelDir::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn malformed_directories_are_clear_errors() {
    // Bad safetensors header: garbage JSON.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), None);
    let st = d.path().join("model.safetensors");
    write_safetensors(&st, "{not json", &[]);
    let e = open_err(d.path());
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    // Header length past the end of the file.
    std::fs::write(&st, 1_000_000u64.to_le_bytes()).unwrap();
    assert!(open_err(d.path()).to_string().contains("model.safetensors"));
    // Data offsets outside the data.
    write_safetensors(&st, r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]);
    assert!(open_err(d.path()).to_string().contains("model.safetensors"));
    // Unsupported dtype: an error when the tensor is read, naming it.
    write_safetensors(&st, r#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]);
    let dir = HfModelDir::open(d.path()).unwrap();
    assert!(matches!(dir.tensor("a"), Err(FormatError::Tensor { ref reason, .. }) if reason.contains("I64")));

    // Missing shard listed in the index.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), Some(600));
    let second = shard_files(d.path())[1].clone();
    std::fs::remove_file(d.path().join(&second)).unwrap();
    let e = open_err(d.path());
    assert!(matches!(e, FormatError::Io { .. }) && e.to_string().contains(&second), "{e}");

    // Only a pickle checkpoint.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), None);
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
    assert!(matches!(open_err(d.path()), FormatError::Unsupported { ref reason, .. } if reason.contains("pickle")));

    // No config.json at all.
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(open_err(d.path()), FormatError::Invalid { .. }));
}

#[test]
fn config_parsing() {
    let p = Path::new("config.json");
    // Unknown architecture.
    let e = parse_llama_config(r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#, p).unwrap_err();
    assert!(matches!(e, FormatError::Unsupported { ref reason, .. } if reason.contains("GPT2LMHeadModel")), "{e}");
    // AgentLM-7B (Llama-2-7B shape).
    let c = parse_llama_config(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
            "rms_norm_eps": 1e-05, "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": 2,
            "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16"}"#,
        p,
    )
    .unwrap();
    assert_eq!((c.head_dim, c.num_key_value_heads, c.rope_theta, c.eos_token_ids.clone()), (128, 32, 10000.0, vec![2]));
    // Llama-3.1 style: GQA, llama3 rope scaling, several EOS ids.
    let c = parse_llama_config(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}"#,
        p,
    )
    .unwrap();
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert!(matches!(c.rope_scaling, Some(agentlm::config::RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    // Inconsistent values.
    for bad in [
        r#"{"model_type": "llama", "hidden_size": 10, "num_attention_heads": 3, "intermediate_size": 4, "num_hidden_layers": 1, "vocab_size": 5}"#,
        r#"{"model_type": "llama", "hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 3, "intermediate_size": 4, "num_hidden_layers": 1, "vocab_size": 5}"#,
        r#"{"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 4, "num_hidden_layers": 1}"#,
        r#"{"model_type": "llama", "hidden_size": "big"}"#,
        r#"[1, 2"#,
    ] {
        assert!(parse_llama_config(bad, p).is_err(), "{bad}");
    }
    // A wrongly typed field is named by its path, nested ones included.
    let e = parse_llama_config(r#"{"model_type": "llama", "hidden_size": "big"}"#, p).unwrap_err();
    assert!(e.to_string().contains("hidden_size"), "{e}");
    let e = parse_llama_config(r#"{"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": "x"}, "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 4, "num_hidden_layers": 1, "vocab_size": 5}"#, p).unwrap_err();
    assert!(e.to_string().contains("rope_scaling"), "{e}");
    let e = parse_llama_config(r#"{"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4}, "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 4, "num_hidden_layers": 1, "vocab_size": 5}"#, p).unwrap_err();
    assert!(matches!(e, FormatError::Unsupported { .. }), "{e}");
}

#[test]
fn model_load_reports_unknown_architecture_and_bad_gguf() {
    use agentlm::{LoadOptions, Model};
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), r#"{"architectures": ["FalconForCausalLM"]}"#).unwrap();
    let e = Model::load(d.path(), &LoadOptions::default()).err().unwrap();
    assert!(e.to_string().contains("FalconForCausalLM"), "{e}");
    let f = d.path().join("x.gguf");
    std::fs::write(&f, b"GGUF\x03\x00\x00\x00").unwrap();
    let e = Model::load(&f, &LoadOptions::default()).err().unwrap();
    assert!(e.to_string().contains("x.gguf"), "{e}");
    let e = Model::load(d.path().join("missing.gguf"), &LoadOptions::default()).err().unwrap();
    assert!(e.to_string().contains("missing.gguf"), "{e}");
}
