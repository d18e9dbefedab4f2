//! One LoRA training step on a chosen backend, printed as JSON: the masked loss and gradient norm
//! before the step and the loss after it. `scripts/check-wgpu.sh` runs it on the CPU and on wgpu and
//! compares the figures.
//!
//! `cargo run --release --example train_step -- MODEL [--backend cpu|wgpu|cuda] [--max-tokens N]`

use std::process::ExitCode;

use agentlm::train::{parse_record, DataKind, TrainConfig, Trainer};
use agentlm::{Backend, LoadOptions, Model};

const RECORD: &str = r#"{"id":"check","conversations":[
 {"from":"human","value":"You are in the middle of a room. Your task is to: put a mug in the cabinet.","loss":null},
 {"from":"gpt","value":"THOUGHT: the mug is probably on the countertop.\n ACTION: go to countertop 1","loss":true},
 {"from":"human","value":"On the countertop 1, you see a mug 1 and an apple 1.","loss":null},
 {"from":"gpt","value":"ACTION: take mug 1 from countertop 1","loss":true}]}"#;

fn run(model: &str, backend: Backend, max_tokens: usize) -> agentlm::Result<serde_json::Value> {
    let model = Model::load(model, &LoadOptions { backend, ..LoadOptions::default() })?;
    let config = TrainConfig { learning_rate: 1e-3, max_grad_norm: 0.0, max_tokens, seed: 5, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&model, config, None)?;
    let record = parse_record(RECORD).map_err(agentlm::Error::InvalidArgument)?;
    trainer.add_trajectory(record.clone(), DataKind::Agent)?;
    trainer.add_eval_trajectory(record)?;
    let mut report = None;
    trainer.run(1, None, |r| {
        report = Some(r.clone());
        true
    })?;
    let report = report.expect("one step ran");
    let after = trainer.evaluate()?;
    Ok(serde_json::json!({
        "backend": backend.name(),
        "loss": report.loss,
        "grad_norm": report.grad_norm,
        "loss_after": after.loss,
        "tokens": report.tokens,
        "tokens_per_s": report.tokens_per_s,
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model) = args.first() else {
        eprintln!("usage: train_step MODEL [--backend cpu|wgpu|cuda] [--max-tokens N]");
        return ExitCode::from(2);
    };
    let (mut backend, mut max_tokens) = (Backend::Cpu, 256usize);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next();
        match (flag.as_str(), value) {
            ("--backend", Some(v)) => match v.parse() {
                Ok(b) => backend = b,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            },
            ("--max-tokens", Some(v)) if v.parse::<usize>().is_ok() => max_tokens = v.parse().unwrap_or(256),
            _ => {
                eprintln!("unknown or incomplete argument {flag}");
                return ExitCode::from(2);
            }
        }
    }
    match run(model, backend, max_tokens) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
