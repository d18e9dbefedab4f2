//! Prefill and decode throughput on the real SmolLM2-135M-Instruct Q4_1 GGUF (CPU backend).
//!
//! `scripts/fetch-model.sh && cargo bench --bench generate`. Throughput is reported in tokens/s
//! (criterion "elements"). Compare with llama.cpp on the same file: see docs/performance.md.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

use agentlm::{LoadOptions, Model, Precision};

/// 128 prompt tokens: a fixed English paragraph, tokenized, cut or repeated to length.
fn prompt(model: &Model, n: usize) -> Vec<u32> {
    let text = "The robot walked through the kitchen, checked the fridge for milk, and then went to the \
                living room to find the remote control. It looked under the sofa, behind the cushions and on \
                the shelf next to the television, thinking about where a person would usually leave it. ";
    let ids = model.tokenizer().encode(text, false).expect("tokenize");
    ids.iter().cycle().take(n).copied().collect()
}

fn bench(c: &mut Criterion) {
    let path = common::model_path();
    assert!(path.is_file(), "{} not found: run scripts/fetch-model.sh", path.display());
    for precision in [Precision::Quantized, Precision::Exact] {
        let model = Model::load(&path, &LoadOptions { precision, ..LoadOptions::default() }).expect("load model");
        run(c, &model, precision);
    }
}

fn run(c: &mut Criterion, model: &Model, precision: Precision) {
    let ids = prompt(model, 128);
    let mut g = c.benchmark_group(format!("smollm2-135m-q4_1-cpu-{}", precision.name()));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(ids.len() as u64));
    let mut session = model.session(Some(512));
    g.bench_function("prefill_128", |b| {
        b.iter(|| {
            session.reset();
            session.append_tokens(&ids).unwrap();
            session.logits().unwrap()[0]
        })
    });

    g.throughput(Throughput::Elements(1));
    session.reset();
    session.append_tokens(&ids).unwrap();
    session.logits().unwrap();
    g.bench_function("decode_1_at_128", |b| {
        b.iter(|| {
            session.append_tokens(&[ids[5]]).unwrap();
            let x = session.logits().unwrap()[0];
            session.truncate(ids.len());
            x
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
