//! Costs around the model: tokenization, the C ABI over the Rust API, and a ReAct step.
//!
//! `scripts/fetch-model.sh && cargo bench --bench overhead`.
//! - `tokenize_1k`: encoding about 1 KB of English (throughput in bytes).
//! - `ffi/rust` vs `ffi/c_abi`: appending one token and truncating it again (no forward pass runs:
//!   pending tokens are computed lazily), through `Session` and through `agentlm_session_*`; the
//!   difference is the cost of the ABI layer (argument checks, panic boundary, handle lock).
//! - `react_step`: one constrained ALFWorld step of a fresh agent on the real model (prompt
//!   prefill, generation to a well-formed action, parsing), quantized CPU path.

mod common;

use std::time::Duration;

use agentlm::agent::{ActionFormat, Agent, AgentConfig, Tool};
use agentlm::ffi::*;
use agentlm::{LoadOptions, Model};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TEXT: &str = "The robot walked through the kitchen, checked the fridge for milk, and then went to the \
    living room to find the remote control. It looked under the sofa, behind the cushions and on the shelf next \
    to the television, thinking about where a person would usually leave it. ";

fn bench(c: &mut Criterion) {
    let path = common::model_path();
    assert!(path.is_file(), "{} not found: run scripts/fetch-model.sh", path.display());
    let model = Model::load(&path, &LoadOptions::default()).expect("load model");

    let text: String = TEXT.repeat(4);
    let mut g = c.benchmark_group("overhead");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("tokenize_1k", |b| b.iter(|| model.tokenizer().encode(&text, false).unwrap().len()));

    // Rust API vs C ABI on the same cheap calls.
    g.throughput(Throughput::Elements(1));
    let ids = model.tokenizer().encode(TEXT, false).unwrap();
    let mut s = model.session(Some(256));
    s.append_tokens(&ids).unwrap();
    s.logits().unwrap();
    let n = ids.len();
    g.bench_function("ffi/rust", |b| {
        b.iter(|| {
            s.append_tokens(&[ids[3]]).unwrap();
            s.truncate(n);
        })
    });
    let path_str = path.to_str().unwrap();
    let (mut m, mut h) = (std::ptr::null_mut(), std::ptr::null_mut());
    unsafe {
        assert_eq!(agentlm_model_load(path_str.as_ptr().cast(), path_str.len(), std::ptr::null(), &mut m, std::ptr::null_mut()), agentlm_status::AGENTLM_STATUS_OK);
        assert_eq!(agentlm_session_new(m, std::ptr::null(), &mut h, std::ptr::null_mut()), agentlm_status::AGENTLM_STATUS_OK);
        assert_eq!(agentlm_session_append_tokens(h, ids.as_ptr(), n, std::ptr::null_mut()), agentlm_status::AGENTLM_STATUS_OK);
    }
    g.bench_function("ffi/c_abi", |b| {
        b.iter(|| unsafe {
            agentlm_session_append_tokens(h, &ids[3], 1, std::ptr::null_mut());
            agentlm_session_truncate(h, n, std::ptr::null_mut())
        })
    });
    unsafe {
        agentlm_session_free(h);
        agentlm_model_free(m);
    }

    // One ReAct step of a fresh agent.
    let tools: Vec<Tool> = [("go to", "go to a place, e.g. go to fridge 1"), ("open", "open a place, e.g. open fridge 1"), ("take", "take an object, e.g. take apple 1 from fridge 1")]
        .iter()
        .map(|(n, d)| Tool { name: n.to_string(), description: d.to_string(), parameters: serde_json::Value::Null })
        .collect();
    let config = AgentConfig { format: ActionFormat::Alfworld, constrained: true, max_tokens_per_step: 32, ..AgentConfig::default() };
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("react_step", |b| {
        b.iter(|| {
            let mut a = Agent::new(
                &model,
                config.clone(),
                "Interact with a household to solve a task. Answer with THOUGHT: and ACTION: lines.",
                "You are in the middle of a room. Looking around you, you see a fridge 1 and a countertop 1. Your task is to: put an apple in the fridge.",
                tools.clone(),
            )
            .unwrap();
            a.step().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
