//! Parity with Hugging Face transformers on the real SmolLM2-135M-Instruct weights, loaded both from
//! the GGUF file and from a Hugging Face directory converted from it by our own code:
//! tokenization, last-position top-10 logits (ids identical, values within 1e-2) and 48 greedy tokens.

mod common;

use std::sync::OnceLock;

use agentlm::{GenerateParams, LoadOptions, Message, Model, SamplingParams};
use serde_json::Value;

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| common::json(&common::shared("golden/smollm2_hf_golden.json")))
}

fn gguf_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(common::model_path(), &LoadOptions::default()).expect("load GGUF"))
}

fn hf_model() -> &'static Model {
    static M: OnceLock<(tempfile::TempDir, Model)> = OnceLock::new();
    &M.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        agentlm::convert::gguf_to_hf_dir(&common::model_path(), dir.path()).expect("convert GGUF to HF");
        let model = Model::load(dir.path(), &LoadOptions::default()).expect("load HF dir");
        (dir, model)
    })
    .1
}

fn prompt(name: &str) -> &'static Value {
    golden()["prompts"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no golden prompt {name}"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check(model: &Model, name: &str) {
    let p = prompt(name);
    let text = p["text"].as_str().unwrap();
    if let Some(msgs) = p["messages"].as_array() {
        let msgs: Vec<Message> = msgs
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(model.apply_chat_template(&msgs).unwrap(), text, "{name}: chat template rendering");
    }
    let want_ids = ids(&p["input_ids"]);
    let mut session = model.session(Some(256));
    session.append_text(text).unwrap();
    assert_eq!(session.tokens(), want_ids.as_slice(), "{name}: prompt token ids");

    let logits = session.logits().unwrap().to_vec();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut max_diff = 0f32;
    for (rank, want) in p["last_logits_top10"].as_array().unwrap().iter().enumerate() {
        let id = want["id"].as_u64().unwrap() as usize;
        let logit = want["logit"].as_f64().unwrap() as f32;
        assert_eq!(order[rank], id, "{name}: top-10 rank {rank}");
        let d = (logits[id] - logit).abs();
        max_diff = max_diff.max(d);
        assert!(d <= 1e-2, "{name}: logit of {id}: got {}, want {logit}", logits[id]);
    }

    let params = GenerateParams { sampling: SamplingParams::greedy(), max_tokens: 48, stop: vec![], ignore_eos: true };
    let out = session.generate(&params, |_| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(out.ids, ids(&p["greedy_ids"]), "{name}: 48 greedy tokens");
    eprintln!(
        "{name} [{:?}]: top-10 ids identical, max |Δlogit| {max_diff:.2e}, 48 greedy tokens identical",
        model.format()
    );
}

#[test]
fn gguf_plain_story() {
    check(gguf_model(), "plain_story");
}
#[test]
fn gguf_chat_capital() {
    check(gguf_model(), "chat_capital");
}
#[test]
fn gguf_plain_code() {
    check(gguf_model(), "plain_code");
}
#[test]
fn hf_plain_story() {
    check(hf_model(), "plain_story");
}
#[test]
fn hf_chat_capital() {
    check(hf_model(), "chat_capital");
}
#[test]
fn hf_plain_code() {
    check(hf_model(), "plain_code");
}

#[test]
fn tokenizer_probes_from_gguf_and_hf() {
    for model in [gguf_model(), hf_model()] {
        for probe in golden()["tokenizer_probes"].as_array().unwrap() {
            let text = probe["text"].as_str().unwrap();
            let got = model.tokenizer().encode(text, false).unwrap();
            assert_eq!(got, ids(&probe["ids"]), "{:?}: probe {text:?}", model.format());
        }
    }
}

#[test]
fn converted_directory_has_same_config() {
    assert_eq!(gguf_model().config(), hf_model().config());
}
