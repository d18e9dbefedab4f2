//! The burn forward pass against a plain f64 reference written from the transformers formulas, on a
//! tiny random model (GQA, several layers, untied head), plus cache behaviour.

use super::*;
use crate::formats::HostTensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Mem(HashMap<String, HostTensor>, PathBuf);

impl WeightSource for Mem {
    fn path(&self) -> &Path {
        &self.1
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor, FormatError> {
        self.0.get(name).cloned().ok_or_else(|| FormatError::Tensor { path: self.1.clone(), name: name.into(), reason: "missing".into() })
    }
}

/// A small model shape for unit tests (GQA, untied head).
pub(crate) fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 37,
        hidden_size: 24,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor { shape: shape.to_vec(), data: (0..n).map(|_| self.next() * scale).collect() }
    }
}

fn weights(c: &LlamaConfig) -> Mem {
    let mut r = Rng(7);
    let mut m = HashMap::new();
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    m.insert("model.embed_tokens.weight".into(), r.tensor(&[c.vocab_size, h], 2.0));
    m.insert("model.norm.weight".into(), r.tensor(&[h], 1.0));
    m.insert("lm_head.weight".into(), r.tensor(&[c.vocab_size, h], 1.0));
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let norm = |r: &mut Rng| {
            let mut t = r.tensor(&[h], 0.5);
            t.data.iter_mut().for_each(|x| *x += 1.0);
            t
        };
        m.insert(format!("{p}.input_layernorm.weight"), norm(&mut r));
        m.insert(format!("{p}.post_attention_layernorm.weight"), norm(&mut r));
        m.insert(format!("{p}.self_attn.q_proj.weight"), r.tensor(&[q, h], 0.6));
        m.insert(format!("{p}.self_attn.k_proj.weight"), r.tensor(&[kv, h], 0.6));
        m.insert(format!("{p}.self_attn.v_proj.weight"), r.tensor(&[kv, h], 0.6));
        m.insert(format!("{p}.self_attn.o_proj.weight"), r.tensor(&[h, q], 0.6));
        m.insert(format!("{p}.mlp.gate_proj.weight"), r.tensor(&[i, h], 0.6));
        m.insert(format!("{p}.mlp.up_proj.weight"), r.tensor(&[i, h], 0.6));
        m.insert(format!("{p}.mlp.down_proj.weight"), r.tensor(&[h, i], 0.6));
    }
    Mem(m, PathBuf::from("memory"))
}

/// y = W x for HF `[out, in]` W.
fn linear(w: &HostTensor, x: &[f64]) -> Vec<f64> {
    let inp = w.shape[1];
    w.data.chunks_exact(inp).map(|row| row.iter().zip(x).map(|(&a, &b)| f64::from(a) * b).sum()).collect()
}

fn rms(x: &[f64], w: &HostTensor, eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(&w.data).map(|(v, &g)| v * inv * f64::from(g)).collect()
}

fn rope_ref(v: &mut [f64], pos: usize, theta: f64) {
    let d = v.len();
    let orig = v.to_vec();
    for i in 0..d / 2 {
        let a = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
        v[i] = orig[i] * a.cos() - orig[i + d / 2] * a.sin();
        v[i + d / 2] = orig[i + d / 2] * a.cos() + orig[i] * a.sin();
    }
}

/// Full-sequence reference forward: logits for every position.
fn reference(m: &Mem, c: &LlamaConfig, tokens: &[u32]) -> Vec<Vec<f64>> {
    let g = |n: &str| m.0.get(n).unwrap();
    let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
    let eps = f64::from(c.rms_norm_eps);
    let emb = g("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| emb.data[t as usize * h..(t as usize + 1) * h].iter().map(|&v| f64::from(v)).collect()).collect();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut qs = vec![];
        let mut ks = vec![];
        let mut vs = vec![];
        for (pos, x) in xs.iter().enumerate() {
            let hn = rms(x, g(&format!("{p}.input_layernorm.weight")), eps);
            let mut q = linear(g(&format!("{p}.self_attn.q_proj.weight")), &hn);
            let mut k = linear(g(&format!("{p}.self_attn.k_proj.weight")), &hn);
            for head in q.chunks_mut(hd).chain(k.chunks_mut(hd)) {
                rope_ref(head, pos, f64::from(c.rope_theta));
            }
            qs.push(q);
            ks.push(k);
            vs.push(linear(g(&format!("{p}.self_attn.v_proj.weight")), &hn));
        }
        for (i, x) in xs.iter_mut().enumerate() {
            let mut out = vec![0f64; nh * hd];
            for head in 0..nh {
                let kvh = head / (nh / nkv);
                let q = &qs[i][head * hd..(head + 1) * hd];
                let scores: Vec<f64> =
                    (0..=i).map(|j| q.iter().zip(&ks[j][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()).collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, w) in e.iter().enumerate() {
                    for d in 0..hd {
                        out[head * hd + d] += w / z * vs[j][kvh * hd + d];
                    }
                }
            }
            let o = linear(g(&format!("{p}.self_attn.o_proj.weight")), &out);
            x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
            let hn = rms(x, g(&format!("{p}.post_attention_layernorm.weight")), eps);
            let gate = linear(g(&format!("{p}.mlp.gate_proj.weight")), &hn);
            let up = linear(g(&format!("{p}.mlp.up_proj.weight")), &hn);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let d = linear(g(&format!("{p}.mlp.down_proj.weight")), &act);
            x.iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
    xs.iter().map(|x| linear(g("lm_head.weight"), &rms(x, g("model.norm.weight"), eps))).collect()
}

fn device() -> Device {
    crate::engine::Backend::Cpu.device().unwrap()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= tol, "logit {i}: got {g}, want {w}");
    }
}

const TOKENS: [u32; 7] = [3, 17, 0, 36, 8, 8, 21];

#[test]
fn prefill_matches_reference_at_every_position() {
    let c = config();
    let w = weights(&c);
    let model = Llama::load(&w, &c, &device(), 64).unwrap();
    let want = reference(&w, &c, &TOKENS);
    let mut cache = model.new_cache(16);
    let got = model.forward(&TOKENS, &mut cache, Logits::All).unwrap();
    assert_eq!(cache.len(), TOKENS.len());
    for (p, row) in got.chunks(c.vocab_size).enumerate() {
        assert_close(row, &want[p], 1e-3);
    }
}

#[test]
fn chunked_and_token_by_token_decoding_match_reference() {
    let c = config();
    let w = weights(&c);
    let model = Llama::load(&w, &c, &device(), 64).unwrap();
    let want = reference(&w, &c, &TOKENS);
    // Token by token.
    let mut cache = model.new_cache(16);
    for (p, &t) in TOKENS.iter().enumerate() {
        let got = model.forward(&[t], &mut cache, Logits::Last).unwrap();
        assert_close(&got, &want[p], 1e-3);
    }
    // Two chunks: 3 then 4 tokens (mask offset by the cached prefix).
    let mut cache = model.new_cache(16);
    model.forward(&TOKENS[..3], &mut cache, Logits::Last).unwrap();
    let got = model.forward(&TOKENS[3..], &mut cache, Logits::All).unwrap();
    for (p, row) in got.chunks(c.vocab_size).enumerate() {
        assert_close(row, &want[p + 3], 1e-3);
    }
}

#[test]
fn tied_head_uses_embeddings() {
    let mut c = config();
    c.tie_word_embeddings = true;
    let mut w = weights(&c);
    w.0.remove("lm_head.weight");
    let model = Llama::load(&w, &c, &device(), 64).unwrap();
    let emb = w.0["model.embed_tokens.weight"].clone();
    w.0.insert("lm_head.weight".into(), emb);
    let want = reference(&w, &c, &TOKENS[..3]);
    let got = model.forward(&TOKENS[..3], &mut model.new_cache(8), Logits::Last).unwrap();
    assert_close(&got, &want[2], 1e-3);
}

#[test]
fn cache_truncate_and_fork() {
    let c = config();
    let w = weights(&c);
    let model = Llama::load(&w, &c, &device(), 64).unwrap();
    let mut cache = model.new_cache(16);
    let a = model.forward(&TOKENS[..4], &mut cache, Logits::Last).unwrap();
    let mut fork = cache.clone();
    let b = model.forward(&[5], &mut fork, Logits::Last).unwrap();
    // Writing to the fork left the original untouched.
    cache.truncate(3);
    let a2 = model.forward(&TOKENS[3..4], &mut cache, Logits::Last).unwrap();
    assert_eq!(a, a2);
    let b2 = model.forward(&[5], &mut cache, Logits::Last).unwrap();
    assert_eq!(b, b2);
}

#[test]
fn errors_leave_cache_unchanged() {
    let c = config();
    let w = weights(&c);
    let model = Llama::load(&w, &c, &device(), 64).unwrap();
    let mut cache = model.new_cache(4);
    assert!(matches!(model.forward(&[], &mut cache, Logits::Last), Err(ModelError::Empty)));
    assert!(matches!(model.forward(&[99], &mut cache, Logits::Last), Err(ModelError::BadToken { id: 99, .. })));
    model.forward(&[1, 2, 3], &mut cache, Logits::Last).unwrap();
    assert!(matches!(model.forward(&[1, 2], &mut cache, Logits::Last), Err(ModelError::ContextFull { .. })));
    assert_eq!(cache.len(), 3);
}

#[test]
fn load_rejects_bad_shapes_and_missing_tensors() {
    let c = config();
    let mut w = weights(&c);
    w.0.get_mut("model.norm.weight").unwrap().shape = vec![c.hidden_size - 1];
    assert!(matches!(Llama::load(&w, &c, &device(), 64), Err(ModelError::Shape { .. })));
    let mut w = weights(&c);
    w.0.remove("lm_head.weight");
    assert!(matches!(Llama::load(&w, &c, &device(), 64), Err(ModelError::Format(FormatError::Tensor { .. }))));
    let mut bad = config();
    bad.num_key_value_heads = 4;
    assert!(matches!(Llama::load(&weights(&bad), &bad, &device(), 64), Err(ModelError::Config(_))));
}
