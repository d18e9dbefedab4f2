use super::*;
use crate::testdata::{golden, model_path};
use std::io::Write;

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer for synthetic test files.

/// Encodes a metadata value (without its type tag) the way GGUF stores it.
fn encode_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => encode_str(out, s),
        GgufValue::Array(items) => {
            // Element type of an empty array: u8 (any would do).
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| encode_value(out, i));
        }
    }
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tensor to write: name, ggml dims, type id, raw data bytes.
struct T<'a> {
    name: &'a str,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn t<'a>(name: &'a str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> T<'a> {
    T { name, dims: dims.to_vec(), ty: ty.id(), data }
}

/// Writes a GGUF v3 file image with 32-byte alignment; tensors laid out back to back (each
/// padded to 32 bytes) in the given order. Returns the image and the file offset of each tensor
/// info's offset field (for mutation tests).
fn build_with_fields(kvs: &[(&str, GgufValue)], tensors: &[T]) -> (Vec<u8>, Vec<usize>) {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        encode_str(&mut b, k);
        b.extend(type_id(v).to_le_bytes());
        encode_value(&mut b, v);
    }
    let mut offset = 0u64;
    let mut fields = vec![];
    for t in tensors {
        encode_str(&mut b, t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.ty.to_le_bytes());
        fields.push(b.len());
        b.extend(offset.to_le_bytes());
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    let pad = |b: &mut Vec<u8>| b.resize(b.len().div_ceil(32) * 32, 0);
    pad(&mut b);
    for t in tensors {
        b.extend(&t.data);
        pad(&mut b);
    }
    (b, fields)
}

fn build(kvs: &[(&str, GgufValue)], tensors: &[T]) -> Vec<u8> {
    build_with_fields(kvs, tensors).0
}

fn s(v: &str) -> GgufValue {
    GgufValue::String(v.into())
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
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

fn reason(r: Result<GgufFile, FormatError>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

/// One Q8_0 block: scale 2, quants 0..32 (values 0, 2, ..., 62).
fn q8_block() -> Vec<u8> {
    let mut q8 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
    q8.extend(0..32u8);
    q8
}

fn sample_kvs() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", s("llama")),
        ("llama.block_count", GgufValue::U32(1)),
        ("i8", GgufValue::I8(-3)),
        ("u16", GgufValue::U16(65535)),
        ("i16", GgufValue::I16(-300)),
        ("i32", GgufValue::I32(-70000)),
        ("u64", GgufValue::U64(u64::MAX)),
        ("i64", GgufValue::I64(i64::MIN)),
        ("f32", GgufValue::F32(0.5)),
        ("f64", GgufValue::F64(-2.25)),
        ("bool", GgufValue::Bool(true)),
        ("strings", GgufValue::Array(vec![s("a"), s(""), s("ü")])),
        ("nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1), GgufValue::U8(2)])])),
        ("empty", GgufValue::Array(vec![])),
    ]
}

fn sample() -> Vec<u8> {
    build(
        &sample_kvs(),
        &[
            t("a", &[4, 2], GgmlType::F32, f32_bytes((0..8).map(|i| i as f32))),
            t("q", &[32], GgmlType::Q8_0, q8_block()),
            t("h", &[3], GgmlType::F16, [1.0f32, -2.0, 0.5].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()),
            t("scalar", &[], GgmlType::F32, f32_bytes([7.0])),
        ],
    )
}

// ---------------------------------------------------------------------------------------------

#[test]
fn gguf_file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GgufFile>();
    check::<GgufWeights>();
}

#[test]
fn reads_synthetic_file() {
    let g = open(&sample()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(g.architecture(), Some("llama"));
    let keys: Vec<&str> = g.metadata_keys().collect();
    let want: Vec<&str> = sample_kvs().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, want, "file order");
    for (k, v) in sample_kvs() {
        assert_eq!(g.metadata(k), Some(&v), "{k}");
    }
    assert_eq!(g.metadata("llama.block_count").and_then(GgufValue::as_u64), Some(1));
    assert_eq!(g.metadata("i8").and_then(GgufValue::as_i64), Some(-3));
    assert_eq!(g.metadata("i8").and_then(GgufValue::as_u64), None);
    assert_eq!(g.metadata("u64").and_then(GgufValue::as_i64), None);
    assert_eq!(g.metadata("f64").and_then(GgufValue::as_f64), Some(-2.25));
    assert_eq!(g.metadata("bool").and_then(GgufValue::as_bool), Some(true));
    assert_eq!(g.metadata("strings").and_then(GgufValue::as_array).map(<[_]>::len), Some(3));
    assert_eq!(g.metadata("missing"), None);

    assert_eq!(g.tensors().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "q", "h", "scalar"]);
    let a = g.tensor_f32("a").unwrap();
    assert_eq!(a.shape, vec![2, 4]);
    assert_eq!(a.data, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    let q = g.tensor_f32("q").unwrap();
    assert_eq!(q.shape, vec![32]);
    assert_eq!(q.data, (0..32).map(|i| 2.0 * i as f32).collect::<Vec<_>>());
    let (info, raw) = g.tensor_bytes("q").unwrap();
    assert_eq!((info.ggml_type, info.n_bytes, info.offset % 32), (GgmlType::Q8_0, 34, 0));
    assert_eq!(raw, q8_block());
    assert_eq!(g.tensor_f32("h").unwrap().data, [1.0, -2.0, 0.5]);
    let scalar = g.tensor_f32("scalar").unwrap();
    assert_eq!((scalar.shape.len(), scalar.data), (0, vec![7.0]));
    assert!(matches!(g.tensor_f32("missing"), Err(FormatError::Tensor { name, .. }) if name == "missing"));
    assert!(format!("{g:?}").contains("GgufFile"));
}

#[test]
fn custom_alignment_and_v2() {
    // general.alignment = 64: tensor data must start on a 64-byte boundary; write it by hand.
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(2u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    encode_str(&mut b, "general.alignment");
    b.extend(4u32.to_le_bytes());
    b.extend(64u32.to_le_bytes());
    encode_str(&mut b, "x");
    b.extend(1u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(64) * 64, 0);
    let start = b.len();
    b.extend(f32_bytes([1.5, -1.5]));
    let g = open(&b).unwrap();
    assert_eq!((g.version(), g.alignment(), g.data_offset()), (2, 64, start as u64));
    assert_eq!(g.tensor_f32("x").unwrap().data, [1.5, -1.5]);
    // A non-power-of-two alignment is rejected.
    let mut bad = b.clone();
    let at = 24 + 8 + "general.alignment".len() + 4;
    bad[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
    assert!(reason(open(&bad)).contains("alignment"));
}

#[test]
fn truncated_files_are_errors_never_panics() {
    let good = sample();
    // The last tensor's data ends 4 bytes into its 32-byte padded slot.
    let data_end = good.len() - 28;
    for len in 0..good.len() {
        let r = open(&good[..len]);
        if len < data_end {
            let e = r.expect_err(&format!("truncated at {len} accepted"));
            assert!(e.to_string().contains(&std::env::temp_dir().display().to_string()), "{e} does not name the file");
        }
    }
    assert!(open(&good[..data_end]).is_ok());
}

#[test]
fn malformed_headers_are_errors() {
    let good = sample();
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    assert!(reason(open(&patch(0, b"GGUG"))).contains("bad magic"));
    assert!(matches!(open(&patch(4, &1u32.to_le_bytes())), Err(FormatError::Unsupported { reason, .. }) if reason.contains("version 1")));
    assert!(matches!(open(&patch(4, &4u32.to_le_bytes())), Err(FormatError::Unsupported { .. })));
    assert!(matches!(open(&patch(4, &3u32.to_be_bytes())), Err(FormatError::Unsupported { reason, .. }) if reason.contains("big-endian")));
    // Huge counts and lengths are rejected before allocating.
    assert!(reason(open(&patch(8, &u64::MAX.to_le_bytes()))).contains("tensor count"));
    assert!(reason(open(&patch(16, &u64::MAX.to_le_bytes()))).contains("metadata count"));
    assert!(reason(open(&patch(16, &(1u64 << 40).to_le_bytes()))).contains("metadata count"));
    assert!(reason(open(&patch(24, &(1u64 << 60).to_le_bytes()))).contains("metadata key length"));

    let one = |k: &str, ty: u32, v: &[u8]| {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        encode_str(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
        b
    };
    assert!(open(&one("k", 4, &7u32.to_le_bytes())).is_ok());
    assert!(reason(open(&one("k", 77, &[0; 8]))).contains("unknown metadata value type 77"));
    assert!(reason(open(&one("k", 7, &[2]))).contains("bool value 2"));
    assert!(reason(open(&one("k", 8, &u64::MAX.to_le_bytes()))).contains("string length"));
    let huge_array = [8u32.to_le_bytes().as_slice(), &(1u64 << 50).to_le_bytes()].concat();
    assert!(reason(open(&one("k", 9, &huge_array))).contains("array length"));
    let bad_elem = [99u32.to_le_bytes().as_slice(), &1u64.to_le_bytes(), &[0; 8]].concat();
    assert!(reason(open(&one("k", 9, &bad_elem))).contains("unknown metadata value type 99"));
    let mut deep = Vec::new();
    for _ in 0..6 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(0u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    assert!(reason(open(&one("k", 9, &deep))).contains("nested too deeply"));
    assert!(open(&one("ключ", 7, &[1])).is_ok());
    let mut not_utf8 = one("kk", 7, &[1]);
    not_utf8[32] = 0xFF; // first byte of the key
    assert!(reason(open(&not_utf8)).contains("not UTF-8"));
    // Duplicate keys.
    let dup = build(&[("k", GgufValue::U8(1)), ("k", GgufValue::U8(2))], &[]);
    assert!(reason(open(&dup)).contains("duplicate metadata key"));
}

#[test]
fn malformed_tensor_infos_are_errors() {
    let f = |dims: &[u64], ty: GgmlType, data: Vec<u8>| build(&[], &[t("a", dims, ty, data)]);
    // Offset past the end of the file, and misaligned.
    let (mut past, fields) = build_with_fields(&[], &[t("a", &[8], GgmlType::F32, vec![0; 32])]);
    past[fields[0]..fields[0] + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(matches!(open(&past), Err(FormatError::Tensor { reason, name, .. }) if reason.contains("past the end") && name == "a"));
    past[fields[0]..fields[0] + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open(&past).is_err());
    past[fields[0]..fields[0] + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(reason(open(&past)).contains("not a multiple of the alignment"));
    // Dimensions: overflow, > i64::MAX, too many, not a multiple of the block size.
    assert!(reason(open(&f(&[u64::MAX / 2, 4], GgmlType::F32, vec![]))).contains("overflow"));
    assert!(reason(open(&f(&[1 << 32, 1 << 31], GgmlType::F32, vec![]))).contains("overflow"));
    assert!(reason(open(&f(&[1 << 63], GgmlType::F32, vec![]))).contains("negative"));
    assert!(reason(open(&f(&[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]))).contains("5 dimensions"));
    assert!(reason(open(&f(&[31], GgmlType::Q8_0, vec![0; 34]))).contains("block size"));
    // Type ids: unknown (and retired) ids fail at open; known types without a kernel open but do
    // not dequantize.
    let unknown = build(&[], &[T { name: "a", dims: vec![4], ty: 99, data: vec![0; 4] }]);
    assert!(matches!(open(&unknown), Err(FormatError::Tensor { reason, .. }) if reason.contains("unknown ggml type id 99")));
    assert!(reason(open(&build(&[], &[T { name: "a", dims: vec![32], ty: 4, data: vec![0; 20] }]))).contains("unknown ggml type id 4"));
    let iq = open(&f(&[256], GgmlType::IQ2_XXS, vec![0; 66])).unwrap();
    assert_eq!(iq.tensor_bytes("a").unwrap().1.len(), 66);
    assert!(matches!(iq.tensor_f32("a"), Err(FormatError::Unsupported { reason, .. }) if reason.contains("IQ2_XXS") && reason.contains("tensor a")));
    // Duplicate names, overlapping data.
    let dup = build(&[], &[t("a", &[1], GgmlType::F32, vec![0; 4]), t("a", &[1], GgmlType::F32, vec![0; 4])]);
    assert!(reason(open(&dup)).contains("duplicate tensor name"));
    let (mut overlap, fields) = build_with_fields(&[], &[t("a", &[16], GgmlType::F32, vec![0; 64]), t("b", &[8], GgmlType::F32, vec![0; 32])]);
    overlap[fields[1]..fields[1] + 8].copy_from_slice(&32u64.to_le_bytes());
    assert!(reason(open(&overlap)).contains("overlaps"));
    // Zero-sized tensors are fine anywhere.
    assert!(open(&f(&[0, 5], GgmlType::Q4_K, vec![])).unwrap().tensor_f32("a").unwrap().data.is_empty());
    // A tensor count larger than the infos present.
    let mut more = f(&[1], GgmlType::F32, vec![0; 4]);
    more[8..16].copy_from_slice(&2u64.to_le_bytes());
    assert!(open(&more).is_err());
}

#[test]
fn missing_file_is_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.gguf");
    assert!(matches!(GgufFile::open(&p), Err(FormatError::Io { path, .. }) if path == p));
    assert!(GgufFile::open(dir.path()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Q/K permutation and names.

/// llama.cpp's forward permutation written literally as the numpy expression
/// `w.reshape(n_head, 2, R/2, cols).swapaxes(1, 2).reshape(w.shape)`: the result at 4-D index
/// `[h, i, j, c]` (shape `[n_head, R/2, 2, cols]`) is the source at `[h, j, i, c]` (shape
/// `[n_head, 2, R/2, cols]`), both flattened row-major.
fn numpy_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                for c in 0..cols {
                    out.push(w[((h * 2 + j) * half + i) * cols + c]);
                }
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    for (n_head, per_head, cols) in [(3usize, 8usize, 5usize), (1, 2, 1), (9, 64, 3)] {
        let rows = n_head * per_head;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let gguf = numpy_permute(&hf, rows, cols, n_head);
        assert_eq!(permute_qk(&hf, rows, cols, n_head).unwrap(), gguf);
        if per_head > 2 {
            assert_ne!(gguf, hf);
        }
        assert_eq!(unpermute_qk(&gguf, rows, cols, n_head).unwrap(), hf);
        assert_eq!(permute_qk(&unpermute_qk(&hf, rows, cols, n_head).unwrap(), rows, cols, n_head).unwrap(), hf);
    }
    let x = vec![0f32; 24 * 5];
    assert!(unpermute_qk(&x, 24, 5, 5).is_none());
    assert!(unpermute_qk(&x, 24, 5, 0).is_none());
    assert!(unpermute_qk(&x, 24, 4, 3).is_none());
    assert!(permute_qk(&x, 24, 5, 24).is_none());
}

#[test]
fn name_mapping() {
    let pairs = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
        ("model.layers.7.post_attention_layernorm.weight", "blk.7.ffn_norm.weight"),
        ("model.layers.12.self_attn.q_proj.weight", "blk.12.attn_q.weight"),
        ("model.layers.12.self_attn.k_proj.weight", "blk.12.attn_k.weight"),
        ("model.layers.12.self_attn.v_proj.weight", "blk.12.attn_v.weight"),
        ("model.layers.29.self_attn.o_proj.weight", "blk.29.attn_output.weight"),
        ("model.layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight"),
        ("model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight"),
        ("model.layers.100.mlp.down_proj.weight", "blk.100.ffn_down.weight"),
    ];
    for (hf, gg) in pairs {
        assert_eq!(hf_to_gguf_name(hf).as_deref(), Some(gg));
        assert_eq!(gguf_to_hf_name(gg).as_deref(), Some(hf));
    }
    for bad in [
        "model.layers.x.mlp.up_proj.weight",
        "model.layers.1.mlp.fc.weight",
        "model.layers.01.mlp.up_proj.weight",
        "model.layers.+1.mlp.up_proj.weight",
        "model.layers..mlp.up_proj.weight",
        "embed",
    ] {
        assert_eq!(hf_to_gguf_name(bad), None, "{bad}");
    }
    for bad in ["rope_freqs.weight", "blk.1.attn_q.bias", "blk.a.attn_q.weight", "blk.1"] {
        assert_eq!(gguf_to_hf_name(bad), None, "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Llama configuration and weights on synthetic files.

fn llama_kvs(arch: &str) -> Vec<(String, GgufValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    vec![
        ("general.architecture".into(), s(arch)),
        (k("embedding_length"), GgufValue::U32(8)),
        (k("feed_forward_length"), GgufValue::U32(16)),
        (k("block_count"), GgufValue::U32(1)),
        (k("attention.head_count"), GgufValue::U32(2)),
        (k("attention.head_count_kv"), GgufValue::U32(1)),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-6)),
        (k("context_length"), GgufValue::U32(128)),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array((0..10).map(|i| s(&i.to_string())).collect())),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
    ]
}

fn open_kvs(kvs: &[(String, GgufValue)], tensors: &[T]) -> Result<GgufFile, FormatError> {
    let kvs: Vec<(&str, GgufValue)> = kvs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    open(&build(&kvs, tensors))
}

fn with(mut kvs: Vec<(String, GgufValue)>, key: &str, v: Option<GgufValue>) -> Vec<(String, GgufValue)> {
    kvs.retain(|(k, _)| k != key);
    if let Some(v) = v {
        kvs.push((key.into(), v));
    }
    kvs
}

#[test]
fn llama_config_from_metadata() {
    let c = open_kvs(&llama_kvs("llama"), &[]).unwrap().llama_config().unwrap();
    let want = LlamaConfig {
        vocab_size: 10,
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    assert_eq!(c, want);
    assert_eq!(open_kvs(&llama_kvs("mistral"), &[]).unwrap().llama_config().unwrap(), want);

    let kvs = with(llama_kvs("llama"), "llama.vocab_size", Some(GgufValue::U64(12)));
    let kvs = with(kvs, "llama.attention.head_count_kv", None);
    let kvs = with(kvs, "llama.attention.key_length", Some(GgufValue::U32(6)));
    let kvs = with(kvs, "llama.rope.freq_base", Some(GgufValue::F32(5e5)));
    let kvs = with(kvs, "llama.rope.scaling.type", Some(s("linear")));
    let kvs = with(kvs, "llama.rope.scaling.factor", Some(GgufValue::F32(4.0)));
    let out = t("output.weight", &[8, 12], GgmlType::F32, vec![0; 8 * 12 * 4]);
    let c = open_kvs(&kvs, &[out]).unwrap().llama_config().unwrap();
    assert_eq!((c.vocab_size, c.num_key_value_heads, c.head_dim, c.rope_theta), (12, 2, 6, 5e5));
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
    assert!(!c.tie_word_embeddings);
    let legacy = with(llama_kvs("llama"), "llama.rope.scale_linear", Some(GgufValue::F32(2.0)));
    assert_eq!(open_kvs(&legacy, &[]).unwrap().llama_config().unwrap().rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));

    // Vocabulary from the embedding matrix when there is neither vocab_size nor a token list.
    let kvs = with(llama_kvs("llama"), "tokenizer.ggml.tokens", None);
    let emb = t("token_embd.weight", &[8, 7], GgmlType::F32, vec![0; 8 * 7 * 4]);
    assert_eq!(open_kvs(&kvs, &[emb]).unwrap().llama_config().unwrap().vocab_size, 7);
    assert!(matches!(open_kvs(&kvs, &[]).unwrap().llama_config(), Err(FormatError::Invalid { .. })));

    let unsupported =
        |kvs: Vec<(String, GgufValue)>, tensors: &[T]| matches!(open_kvs(&kvs, tensors).unwrap().llama_config(), Err(FormatError::Unsupported { .. }));
    let invalid = |kvs: Vec<(String, GgufValue)>| matches!(open_kvs(&kvs, &[]).unwrap().llama_config(), Err(FormatError::Invalid { .. }));
    assert!(unsupported(llama_kvs("gemma"), &[]));
    assert!(unsupported(with(llama_kvs("llama"), "llama.rope.scaling.type", Some(s("yarn"))), &[]));
    assert!(unsupported(with(llama_kvs("llama"), "llama.rope.dimension_count", Some(GgufValue::U32(2))), &[]));
    assert!(unsupported(with(llama_kvs("llama"), "llama.feed_forward_length", Some(GgufValue::Array(vec![GgufValue::U32(16)]))), &[]));
    assert!(unsupported(llama_kvs("llama"), &[t("rope_freqs.weight", &[2], GgmlType::F32, vec![0; 8])]));
    assert!(invalid(with(llama_kvs("llama"), "general.architecture", None)));
    assert!(invalid(with(llama_kvs("llama"), "llama.block_count", None)));
    assert!(invalid(with(llama_kvs("llama"), "llama.context_length", None)));
    assert!(invalid(with(llama_kvs("llama"), "llama.attention.layer_norm_rms_epsilon", None)));
    assert!(invalid(with(llama_kvs("llama"), "llama.attention.head_count", Some(GgufValue::U32(0)))));
    assert!(invalid(with(llama_kvs("llama"), "llama.attention.head_count_kv", Some(GgufValue::U32(3)))));
    assert!(invalid(with(llama_kvs("llama"), "llama.embedding_length", Some(GgufValue::I32(-8)))));
    assert!(invalid(with(llama_kvs("llama"), "llama.embedding_length", Some(s("8")))));
    assert!(invalid(with(llama_kvs("llama"), "tokenizer.ggml.bos_token_id", Some(GgufValue::U64(1 << 40)))));
}

#[test]
fn gguf_weights_hand_up_hf_names_and_layout() {
    // hidden 8, 2 heads of 4, 1 kv head: q is [8, 8], k is [4, 8] in PyTorch order.
    let q_hf: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let k_hf: Vec<f32> = (0..32).map(|i| -(i as f32)).collect();
    let q_gguf = numpy_permute(&q_hf, 8, 8, 2);
    let k_gguf = numpy_permute(&k_hf, 4, 8, 1);
    let v: Vec<f32> = (0..32).map(|i| i as f32 * 0.5).collect();
    let norm: Vec<f32> = (0..8).map(|i| i as f32 + 0.25).collect();
    let tensors = [
        t("blk.0.attn_q.weight", &[8, 8], GgmlType::F32, f32_bytes(q_gguf.iter().copied())),
        t("blk.0.attn_k.weight", &[8, 4], GgmlType::F32, f32_bytes(k_gguf.iter().copied())),
        t("blk.0.attn_v.weight", &[8, 4], GgmlType::F32, f32_bytes(v.iter().copied())),
        t("blk.0.attn_norm.weight", &[8], GgmlType::F32, f32_bytes(norm.iter().copied())),
    ];
    let w = GgufWeights::new(Arc::new(open_kvs(&llama_kvs("llama"), &tensors).unwrap())).unwrap();
    assert_eq!(w.config().num_attention_heads, 2);
    assert_eq!(w.file().tensors().len(), 4);
    let q = w.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!((q.shape.as_slice(), q.data.as_slice()), ([8, 8].as_slice(), q_hf.as_slice()));
    let k = w.tensor("model.layers.0.self_attn.k_proj.weight").unwrap();
    assert_eq!((k.shape.as_slice(), k.data.as_slice()), ([4, 8].as_slice(), k_hf.as_slice()));
    assert_eq!(w.tensor("model.layers.0.self_attn.v_proj.weight").unwrap().data, v, "v is not permuted");
    assert_eq!(w.tensor("model.layers.0.input_layernorm.weight").unwrap().data, norm);
    assert!(w.contains("model.layers.0.self_attn.q_proj.weight"));
    assert!(!w.contains("lm_head.weight"));
    assert!(!w.contains("model.layers.0.mlp.up_proj.weight"));
    assert!(!w.contains("blk.0.attn_q.weight"));
    assert!(matches!(w.tensor("lm_head.weight"), Err(FormatError::Tensor { name, .. }) if name == "lm_head.weight"));
    assert!(matches!(w.tensor("nonsense"), Err(FormatError::Tensor { .. })));
    assert_eq!(WeightSource::path(&w), w.file().path());
}

// ---------------------------------------------------------------------------------------------
// The real test model.

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Compares a metadata value with its JSON rendering by gguf-py.
fn same_value(ours: &GgufValue, want: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (ours, want) {
        (GgufValue::String(a), J::String(b)) => a == b,
        (GgufValue::Bool(a), J::Bool(b)) => a == b,
        (GgufValue::Array(a), J::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y)),
        (v, J::Number(n)) => match (v.as_i64(), n.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => v.as_f64().zip(n.as_f64()).is_some_and(|(a, b)| a == b),
        },
        _ => false,
    }
}

#[test]
fn real_model_matches_reference_inventory() {
    let info = json(&golden("smollm2_gguf_info.json"));
    let g = GgufFile::open(&model_path()).unwrap();
    assert_eq!(u64::from(g.version()), info["gguf_version"].as_u64().unwrap());
    assert_eq!(g.architecture(), info["architecture"].as_str());
    let tensors = info["tensors"].as_array().unwrap();
    assert_eq!(g.tensors().len() as u64, info["tensor_count"].as_u64().unwrap());
    assert_eq!(g.tensors().len(), tensors.len());
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let ours = g.tensor_info(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(ours.ggml_type.name(), t["type"].as_str().unwrap(), "{name}");
        let ne: Vec<u64> = t["ggml_ne"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let torch: Vec<usize> = t["torch_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(ours.dims, ne, "{name}");
        assert_eq!(ours.shape(), torch, "{name}");
        assert_eq!(ours.n_bytes, t["n_bytes"].as_u64().unwrap(), "{name}");
    }

    // Metadata: the same keys in the same order (gguf-py lists three pseudo-keys first), and the
    // values gguf-py reported.
    let want_keys: Vec<&str> = info["all_kv_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).filter(|k| !k.starts_with("GGUF.")).collect();
    assert_eq!(g.metadata_keys().collect::<Vec<_>>(), want_keys);
    for (k, v) in info["general"].as_object().unwrap() {
        assert!(same_value(g.metadata(k).unwrap(), v), "{k}: {:?} vs {v}", g.metadata(k));
    }
    let tok = &info["tokenizer"];
    let meta = |k: &str| g.metadata(k).unwrap_or_else(|| panic!("{k}"));
    assert!(same_value(meta("tokenizer.ggml.model"), &tok["ggml_model"]));
    assert!(same_value(meta("tokenizer.ggml.pre"), &tok["ggml_pre"]));
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.unknown_token_id", "unknown_token_id"),
        ("tokenizer.ggml.padding_token_id", "padding_token_id"),
        ("tokenizer.ggml.add_bos_token", "add_bos_token"),
        ("tokenizer.ggml.add_space_prefix", "add_space_prefix"),
    ] {
        assert!(same_value(meta(key), &tok[field]), "{key}");
    }
    let tokens = meta("tokenizer.ggml.tokens").as_array().unwrap();
    assert_eq!(tokens.len() as u64, tok["n_tokens"].as_u64().unwrap());
    for (i, t) in tok["first_tokens"].as_array().unwrap().iter().enumerate() {
        assert!(same_value(&tokens[i], t), "token {i}");
    }
    let merges = meta("tokenizer.ggml.merges").as_array().unwrap();
    assert_eq!(merges.len() as u64, tok["n_merges"].as_u64().unwrap());
    for (i, m) in tok["first_merges"].as_array().unwrap().iter().enumerate() {
        assert!(same_value(&merges[i], m), "merge {i}");
    }
    assert_eq!(meta("tokenizer.ggml.token_type").as_array().unwrap().len(), tokens.len());
    assert!(same_value(meta("tokenizer.chat_template"), &info["chat_template"]));

    let hp = &info["hyperparameters"];
    let c = g.llama_config().unwrap();
    let u = |k: &str| hp[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    assert_eq!(c.num_hidden_layers, u("n_layers"));
    assert_eq!(c.num_attention_heads, u("n_heads"));
    assert_eq!(c.num_key_value_heads, u("n_kv_heads"));
    assert_eq!(c.hidden_size, u("hidden_size"));
    assert_eq!(c.intermediate_size, u("intermediate_size"));
    assert_eq!(c.head_dim, u("head_dim"));
    assert_eq!(c.vocab_size, u("vocab_size"));
    assert_eq!(c.max_position_embeddings, u("context_length"));
    assert_eq!(f64::from(c.rope_theta), hp["rope_theta"].as_f64().unwrap());
    assert_eq!(f64::from(c.rms_norm_eps), hp["rms_norm_eps"].as_f64().unwrap());
    assert!(hp["rope_scaling"].is_null() && c.rope_scaling.is_none());
    assert_eq!(c.tie_word_embeddings, hp["tied_embeddings"].as_bool().unwrap());
    assert_eq!(c.bos_token_id.map(u64::from), tok["bos_token_id"].as_u64());
    assert_eq!(c.eos_token_ids.iter().map(|&e| u64::from(e)).collect::<Vec<_>>(), vec![tok["eos_token_id"].as_u64().unwrap()]);
}

/// Rows and sums of real tensors as dequantized by gguf-py (scripts/make_gguf_probe_fixture.py),
/// and every tensor dequantizes to finite values.
#[test]
fn real_model_dequantizes_like_gguf_py() {
    let probe = json(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf/smollm2_probe.json")));
    let g = GgufFile::open(&model_path()).unwrap();
    for p in probe["probes"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let d = g.tensor_f32(name).unwrap();
        assert_eq!(g.tensor_info(name).unwrap().ggml_type.name(), p["type"].as_str().unwrap());
        let shape: Vec<usize> = p["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(d.shape, shape, "{name}");
        let cols = *shape.last().unwrap();
        for row in p["rows"].as_array().unwrap() {
            let r = row["index"].as_u64().unwrap_or(0) as usize;
            let want: Vec<u32> = row["f32_bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let got: Vec<u32> = d.data[r * cols..r * cols + want.len()].iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{name} row {r}");
        }
        let sum: f64 = d.data.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = d.data.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        for (got, key) in [(sum, "sum"), (sum_sq, "sum_sq")] {
            let want = p[key].as_f64().unwrap();
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{name} {key}: {got} vs {want}");
        }
    }
    for t in g.tensors() {
        let d = g.tensor_f32(&t.name).unwrap();
        assert_eq!(d.data.len() as u64, t.n_elements());
        assert!(d.data.iter().all(|v| v.is_finite()), "{}", t.name);
    }
}

#[test]
fn real_model_weights_in_hf_layout() {
    let file = Arc::new(GgufFile::open(&model_path()).unwrap());
    let w = GgufWeights::new(file.clone()).unwrap();
    let c = w.config().clone();
    assert!(!w.contains("lm_head.weight") && c.tie_word_embeddings);
    for i in [0, c.num_hidden_layers - 1] {
        for (proj, g, heads) in [("q_proj", "attn_q", c.num_attention_heads), ("k_proj", "attn_k", c.num_key_value_heads)] {
            let hf = w.tensor(&format!("model.layers.{i}.self_attn.{proj}.weight")).unwrap();
            assert_eq!(hf.shape, [heads * c.head_dim, c.hidden_size]);
            let raw = file.tensor_f32(&format!("blk.{i}.{g}.weight")).unwrap();
            assert_eq!(numpy_permute(&hf.data, hf.shape[0], hf.shape[1], heads), raw.data);
        }
    }
    let emb = w.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(emb.shape, [c.vocab_size, c.hidden_size]);
    assert_eq!(w.tensor("model.norm.weight").unwrap().shape, [c.hidden_size]);
}

#[test]
fn parsing_from_memory_matches_the_file_and_sees_only_the_given_bytes() {
    let good = sample();
    let (a, b) = (open(&good).unwrap(), GgufFile::from_bytes(&good, "sample.gguf").unwrap());
    assert_eq!(a.tensors(), b.tensors());
    assert_eq!(a.metadata_keys().collect::<Vec<_>>(), b.metadata_keys().collect::<Vec<_>>());
    for t in a.tensors() {
        assert_eq!(a.tensor_bytes(&t.name).unwrap().1, b.tensor_bytes(&t.name).unwrap().1);
    }
    // Every truncation is an error naming the stand-in path, as from a file (the map's spare byte
    // past the data is never read).
    let data_end = good.len() - 28;
    for len in 0..data_end {
        let e = GgufFile::from_bytes(&good[..len], "sample.gguf").expect_err(&format!("truncated at {len} accepted"));
        assert!(e.to_string().contains("sample.gguf"), "{e}");
    }
    assert!(GgufFile::from_bytes(&good[..data_end], "sample.gguf").is_ok());
}
