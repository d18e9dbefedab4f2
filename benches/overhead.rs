//! Costs around the model: tokenization, the C ABI over the Rust API, and a ReAct step.
//!
//! `scripts/fetch-model.sh && cargo bench --bench overhead`.
//! - `tokenize_1k`: encoding about 1 KB of English (throughput in bytes).
//! - `ffi/rust` vs `ffi/c_abi`: appending one token and truncating it again (no forward pass runs:
//!   pending tokens are computed lazily), through `Session` and through `agentlm_session_*`; the
//!   difference is the cost of the ABI layer (argument checks, panic boundary, handle lock).
//! - `react_step`: one constrained ALFWorld step of a fresh agent on the real model (prompt
//!   prefill, generation to a well-formed action, parsing), quantized CPU path.
//! - `decode/unconstrained` vs `decode/admissible_50`: 24 tokens of a reply on the real model, sampled
//!   freely or constrained to 50 admissible ALFWorld actions (a free thought, then the action from the
//!   set, on llguidance); throughput in tokens, so the ratio is the constraint's cost per token.
//!   `decode/values_50`: the same actions as value sets of three tools (constrained mode's grammar);
//!   `decode/json_call`: the JSON format's grammar with two schema-typed tools. The matcher alone,
//!   per token (take a token, compute the next mask), in the thought and in the action:
//!   `mask/thought_50`, `mask/action_50`.

mod common;

use std::time::Duration;

use agentlm::agent::grammar::{admissible_grammar, reply_grammar, GrammarConstraint, ValueSets};
use agentlm::agent::{ActionFormat, Agent, AgentConfig, Tool};
use agentlm::ffi::*;
use agentlm::{GenerateParams, LoadOptions, Model, SamplingParams, Step};
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
        assert_eq!(
            agentlm_model_load(path_str.as_ptr().cast(), path_str.len(), std::ptr::null(), &mut m, std::ptr::null_mut()),
            agentlm_status::AGENTLM_STATUS_OK
        );
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
    let tools: Vec<Tool> = [
        ("go to", "go to a place, e.g. go to fridge 1"),
        ("open", "open a place, e.g. open fridge 1"),
        ("take", "take an object, e.g. take apple 1 from fridge 1"),
    ]
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
    constrained_decode(c, &model);
}

/// Per-token cost of constrained decoding (see the module comment).
fn constrained_decode(c: &mut Criterion, model: &Model) {
    let places = ["cabinet", "drawer", "countertop", "shelf", "fridge", "sidetable", "dresser", "desk", "sinkbasin", "safe"];
    let mut actions: Vec<String> = Vec::new();
    for (i, p) in places.iter().enumerate() {
        for n in 1..=3 {
            actions.push(format!("go to {p} {n}"));
        }
        actions.push(format!("open {p} 1"));
        actions.push(format!("take {} 1 from {p} 1", ["apple", "mug", "key", "book", "pen"][i % 5]));
    }
    assert_eq!(actions.len(), 50);
    let factory = model.grammar_factory().unwrap();
    let compile = |lark: &str| GrammarConstraint::new(&factory, lark).unwrap();
    let admissible = compile(&admissible_grammar(ActionFormat::Alfworld, &actions, 16).unwrap().lark);
    // The same 50 actions as value sets of three tools (constrained mode's grammar).
    let mut values = ValueSets::new();
    let mut tools = Vec::new();
    for verb in ["go to", "open", "take"] {
        let vals: Vec<String> = actions.iter().filter_map(|a| a.strip_prefix(&format!("{verb} "))).map(str::to_string).collect();
        values.insert((verb.to_string(), None), vals);
        tools.push(Tool { name: verb.into(), description: String::new(), parameters: serde_json::Value::Null });
    }
    let valued = compile(&reply_grammar(ActionFormat::Alfworld, &tools, &values, 16).unwrap().lark);
    let json_tools = vec![
        Tool {
            name: "move".into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object", "properties": {
            "direction": {"type": "string", "enum": ["north", "south", "east", "west"]}, "steps": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["direction", "steps"]}),
        },
        Tool {
            name: "say".into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
        },
    ];
    let json = compile(&reply_grammar(ActionFormat::Json, &json_tools, &ValueSets::new(), 16).unwrap().lark);
    let prompt = model
        .apply_chat_template(&[agentlm::Message::new(
            "user",
            "Interact with a household to solve a task. Reply THOUGHT: ... then ACTION: ...\nYour task is to: put a mug in the fridge 1.",
        )])
        .unwrap();
    let mut s = model.session(Some(512));
    s.append_text(&prompt).unwrap();
    s.logits().unwrap();
    let n = s.tokens().len();
    // EOS is ignored so every variant generates all 24 tokens (the grammars never allow it anyway).
    let params = GenerateParams {
        sampling: SamplingParams { temperature: 1.0, ..SamplingParams::greedy() },
        max_tokens: 24,
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let mut g = c.benchmark_group("decode");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Elements(24));
    let reply = |fresh: Option<&GrammarConstraint>, s: &mut agentlm::Session| {
        let mut c = fresh.cloned();
        s.begin(&params).unwrap();
        let mut made = 0;
        while let Ok(Step::Token { id, .. }) = s.next_token_masked(|l| {
            if let Some(c) = c.as_mut() {
                c.mask(l).unwrap();
            }
        }) {
            made += 1;
            if let (Some(c), Some(fresh)) = (c.as_mut(), fresh) {
                c.advance(id).unwrap();
                if c.is_done() {
                    // The action is complete: start another reply, as an agent's next step would.
                    *c = fresh.clone();
                }
            }
            if made == 24 {
                break;
            }
        }
        s.end();
        s.truncate(n);
        assert_eq!(made, 24, "every reply generates the same number of tokens");
        made
    };
    g.bench_function("unconstrained", |b| b.iter(|| reply(None, &mut s)));
    g.bench_function("admissible_50", |b| b.iter(|| reply(Some(&admissible), &mut s)));
    g.bench_function("values_50", |b| b.iter(|| reply(Some(&valued), &mut s)));
    g.bench_function("json_call", |b| b.iter(|| reply(Some(&json), &mut s)));
    g.finish();

    // One step of the matcher in the thought and in the action: it takes a token and computes the
    // next mask (llguidance caches a mask per position, so the step is what is timed).
    let mut g = c.benchmark_group("mask");
    let logits = vec![0.5f32; model.config().vocab_size];
    let before = |text: &str| {
        let mut ids = model.tokenizer().encode_plain(text).unwrap();
        let last = ids.pop().unwrap();
        let mut c = admissible.clone();
        for t in ids {
            c.mask(&mut logits.clone()).unwrap();
            c.advance(t).unwrap();
        }
        c.mask(&mut logits.clone()).unwrap();
        (c, last)
    };
    let step = |(c, last): &(GrammarConstraint, u32)| {
        let mut c = c.clone();
        c.advance(*last).unwrap();
        c.mask(&mut logits.clone()).unwrap();
    };
    let (thought, action) = (before("THOUGHT: I need a mug"), before("THOUGHT: I need a mug\n ACTION: go"));
    g.bench_function("thought_50", |b| b.iter(|| step(&thought)));
    g.bench_function("action_50", |b| b.iter(|| step(&action)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
