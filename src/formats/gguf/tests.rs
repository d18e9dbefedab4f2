use super::*;
use std::io::Write;

/// Builds a small GGUF v3 in memory: metadata + tensors (name, ggml dims, type id, raw bytes).
fn build(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(MAGIC);
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    for (k, ty, v) in kvs {
        s(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    let mut offset = 0u64;
    let mut offsets = vec![];
    for (name, dims, ty, data) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        b.extend(data);
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    b
}

fn string_val(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn sample() -> Vec<u8> {
    let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut q8 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| i as u8));
    build(
        &[("general.architecture", 8, string_val("llama")), ("llama.block_count", 4, 1u32.to_le_bytes().to_vec())],
        &[("a", vec![4, 2], 0, f32s), ("q", vec![32], 8, q8)],
    )
}

fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn open(bytes: &[u8]) -> Result<GgufFile, FormatError> {
    let f = write(bytes);
    GgufFile::open(f.path())
}

#[test]
fn reads_synthetic_file() {
    let g = open(&sample()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.metadata("llama.block_count").unwrap().as_u64(), Some(1));
    let a = g.tensor_f32("a").unwrap();
    assert_eq!(a.shape, vec![2, 4]);
    assert_eq!(a.data, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    let q = g.tensor_f32("q").unwrap();
    assert_eq!(q.data[5], 10.0);
    assert!(matches!(g.tensor_f32("missing"), Err(FormatError::Tensor { .. })));
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let good = sample();
    // Truncated at every length: never a panic; short of the data end, always an error.
    let data_end = good.len() - 64 + 34; // the last tensor (34 bytes) sits in a 64-byte padded slot
    for len in 0..good.len() {
        let r = open(&good[..len]);
        if len < data_end.min(good.len()) {
            assert!(r.is_err(), "truncated at {len} accepted");
        }
    }
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(open(&bad), Err(FormatError::Invalid { reason, .. }) if reason.contains("magic")));
    let mut v1 = good.clone();
    v1[4] = 1;
    assert!(matches!(open(&v1), Err(FormatError::Unsupported { .. })));
    // Huge counts and lengths are rejected before allocating.
    let mut huge = good.clone();
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // kv count
    assert!(open(&huge).is_err());
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes()); // first key's length
    assert!(open(&huge).is_err());
    // Offset past the end of the file.
    let f32s: Vec<u8> = vec![0; 32];
    let mut past = build(&[], &[("a", vec![8], 0, f32s)]);
    // header 24 bytes, then name (8 + 1), n_dims (4), one dim (8), type (4): the offset field.
    let idx = 24 + 9 + 4 + 8 + 4;
    past[idx..idx + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(matches!(open(&past), Err(FormatError::Tensor { reason, .. }) if reason.contains("past the end")));
    // Dimension overflow, bad block multiple, unknown type (error on read), duplicate names.
    assert!(open(&build(&[], &[("a", vec![u64::MAX, 4], 0, vec![])])).is_err());
    assert!(open(&build(&[], &[("a", vec![31], 8, vec![0; 34])])).is_err());
    let unknown = open(&build(&[], &[("a", vec![4], 99, vec![0; 4])])).unwrap();
    assert!(matches!(unknown.tensor_f32("a"), Err(FormatError::Tensor { reason, .. }) if reason.contains("unknown")));
    assert!(open(&build(&[], &[("a", vec![1], 0, vec![0; 4]), ("a", vec![1], 0, vec![0; 4])])).is_err());
    // Unknown metadata type, bad bool, non-UTF-8 key.
    assert!(open(&build(&[("k", 77, vec![0; 8])], &[])).is_err());
    assert!(open(&build(&[("k", 7, vec![2])], &[])).is_err());
    assert!(open(&build(&[("\u{fffd}", 7, vec![1])], &[])).is_ok());
    let mut nonutf = build(&[("kk", 7, vec![1])], &[]);
    nonutf[32] = 0xFF;
    assert!(open(&nonutf).is_err());
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // Forward permute as convert_hf_to_gguf.py: reshape(n_head, 2, R/2, cols).swapaxes(1, 2).
    let (n_head, per_head, cols) = (3usize, 8usize, 5usize);
    let rows = n_head * per_head;
    let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let mut gguf = vec![0f32; hf.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..per_head / 2 {
                let src = h * per_head + j * per_head / 2 + i;
                let dst = h * per_head + i * 2 + j;
                gguf[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
            }
        }
    }
    assert_ne!(gguf, hf);
    assert_eq!(unpermute_qk(&gguf, rows, cols, n_head).unwrap(), hf);
    assert!(unpermute_qk(&gguf, rows, cols, 5).is_none());
}

#[test]
fn name_mapping() {
    assert_eq!(hf_to_gguf_name("model.layers.12.self_attn.k_proj.weight").as_deref(), Some("blk.12.attn_k.weight"));
    assert_eq!(hf_to_gguf_name("model.embed_tokens.weight").as_deref(), Some("token_embd.weight"));
    assert_eq!(hf_to_gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    assert_eq!(hf_to_gguf_name("model.layers.1.mlp.fc.weight"), None);
}

fn model_path() -> PathBuf {
    const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let p = std::env::var_os("AGENTLM_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("AGENTLM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/agentlm"))
            .join(NAME)
    });
    assert!(p.is_file(), "{} missing: run scripts/fetch-model.sh", p.display());
    p
}

#[test]
fn real_model_matches_reference_inventory() {
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden/smollm2_gguf_info.json")).unwrap(),
    )
    .unwrap();
    let g = GgufFile::open(&model_path()).unwrap();
    assert_eq!(g.version() as u64, info["gguf_version"].as_u64().unwrap());
    let tensors = info["tensors"].as_array().unwrap();
    assert_eq!(g.tensors().len(), tensors.len());
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let ours = g.tensor_info(name).unwrap_or_else(|| panic!("{name} missing"));
        let ty = t["type"].as_str().unwrap();
        assert_eq!(format!("{:?}", ours.ggml_type.unwrap()), ty, "{name}");
        let ne: Vec<u64> = t["ggml_ne"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let torch: Vec<usize> = t["torch_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(ours.dims, ne, "{name}");
        assert_eq!(ours.shape(), torch, "{name}");
        assert_eq!(ours.n_bytes, t["n_bytes"].as_u64().unwrap(), "{name}");
    }
    let keys: Vec<&str> = g.metadata_keys().collect();
    for k in info["all_kv_keys"].as_array().unwrap() {
        let k = k.as_str().unwrap();
        if !k.starts_with("GGUF.") {
            assert!(keys.contains(&k), "metadata {k} missing");
        }
    }
    let hp = &info["hyperparameters"];
    let c = g.llama_config().unwrap();
    assert_eq!(c.num_hidden_layers as u64, hp["n_layers"].as_u64().unwrap());
    assert_eq!(c.num_attention_heads as u64, hp["n_heads"].as_u64().unwrap());
    assert_eq!(c.num_key_value_heads as u64, hp["n_kv_heads"].as_u64().unwrap());
    assert_eq!(c.hidden_size as u64, hp["hidden_size"].as_u64().unwrap());
    assert_eq!(c.intermediate_size as u64, hp["intermediate_size"].as_u64().unwrap());
    assert_eq!(c.head_dim as u64, hp["head_dim"].as_u64().unwrap());
    assert_eq!(c.vocab_size as u64, hp["vocab_size"].as_u64().unwrap());
    assert_eq!(c.max_position_embeddings as u64, hp["context_length"].as_u64().unwrap());
    assert_eq!(f64::from(c.rope_theta), hp["rope_theta"].as_f64().unwrap());
    assert_eq!(f64::from(c.rms_norm_eps), hp["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(c.tie_word_embeddings, hp["tied_embeddings"].as_bool().unwrap());
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
    // Every tensor dequantizes to finite values.
    for t in g.tensors() {
        let d = g.tensor_f32(&t.name).unwrap();
        assert_eq!(d.data.len() as u64, t.n_elements());
        assert!(d.data.iter().all(|v| v.is_finite()), "{}", t.name);
    }
}
