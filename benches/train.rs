//! One LoRA training step on the real SmolLM2-135M-Instruct Q4_1 GGUF (CPU backend): forward and
//! backward through all 30 layers with adapters (r 8) on every linear, masked loss, AdamW update.
//!
//! `scripts/fetch-model.sh && cargo bench --bench train`. Throughput is reported in tokens/s
//! (criterion "elements"): tokens run through the model per step. See docs/training.md.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

use agentlm::train::{DataKind, TrainConfig, Trainer};
use agentlm::{LoadOptions, Model};

/// A ReAct-style episode long enough to fill `tokens` tokens, loss on the agent's replies.
fn episode(turns: usize) -> String {
    let mut conv = vec![serde_json::json!({"from": "human", "value": "Interact with a household to solve a task. \
        Your task is to: put a clean mug in the coffee machine.", "loss": null})];
    for i in 0..turns {
        conv.push(serde_json::json!({"from": "gpt", "value": format!("THOUGHT: the mug may be in cabinet {i}.\n ACTION: go to cabinet {i}"), "loss": true}));
        conv.push(serde_json::json!({"from": "human", "value": format!("On the cabinet {i}, you see a plate {i} and a glass {i}."), "loss": null}));
    }
    serde_json::json!({"conversations": conv}).to_string()
}

fn bench(c: &mut Criterion) {
    let path = common::model_path();
    assert!(path.is_file(), "{} not found: run scripts/fetch-model.sh", path.display());
    let model = Model::load(&path, &LoadOptions::default()).expect("load model");
    let mut g = c.benchmark_group("smollm2-135m-q4_1-cpu-lora-r8");
    g.sample_size(10).measurement_time(Duration::from_secs(60));
    for tokens in [256usize, 512] {
        let config = TrainConfig { max_tokens: tokens, learning_rate: 1e-4, ..TrainConfig::default() };
        let mut trainer = Trainer::new(&model, config, None).expect("trainer");
        trainer.add_json(&episode(40), DataKind::Agent).expect("data");
        let mut n = 0;
        trainer
            .run(1, None, |r| {
                n = r.tokens;
                true
            })
            .expect("warm-up step");
        assert_eq!(n, tokens, "the episode fills the token limit");
        g.throughput(Throughput::Elements(tokens as u64));
        g.bench_function(format!("train_step_{tokens}"), |b| b.iter(|| trainer.run(1, None, |_| true).expect("step").steps));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
