//! libagentlm side of the training comparison (`benches/compare/train.sh`): LoRA on the first
//! `--rows` conversations of an AgentInstruct/ShareGPT JSONL file, each cut to `--seq` tokens, one
//! per step (batch 1, each row once), then the mean masked loss on the next `--eval` rows (also before training). Prints
//! one JSON object: tokens/s over the steps after the first, peak resident set, losses. With
//! `--rows-out FILE` it also writes the rows it trains and evaluates on (ids and loss masks) for
//! the peer, so both engines see the same tokens.
//!
//! ```text
//! cargo run --release --example train-runner -- MODEL DATA.jsonl [--rows 8] [--eval 4] [--seq 1024]
//!     [--threads 2] [--precision auto|exact|quantized] [--rank 8] [--alpha 16] [--lr 2e-4]
//!     [--checkpointing] [--rows-out FILE]
//! ```

use std::io::Write;

use agentlm::agent::Trajectory;
use agentlm::train::{parse_record, AdamWConfig, DataKind, TrainConfig, Trainer};
use agentlm::{formats::peft::LoraConfig, LoadOptions, Model, Precision};

fn rss_kib(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut pos = Vec::new();
    let (mut rows, mut n_eval, mut seq, mut threads, mut precision) = (8usize, 4usize, 1024usize, 2usize, Precision::Auto);
    let (mut rank, mut alpha, mut lr, mut checkpointing, mut rows_out) = (8usize, 16f32, 2e-4f32, false, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rows" => rows = val()?.parse()?,
            "--eval" => n_eval = val()?.parse()?,
            "--seq" => seq = val()?.parse()?,
            "--threads" => threads = val()?.parse()?,
            "--precision" => precision = val()?.parse()?,
            "--rank" => rank = val()?.parse()?,
            "--alpha" => alpha = val()?.parse()?,
            "--lr" => lr = val()?.parse()?,
            "--checkpointing" => checkpointing = true,
            "--rows-out" => rows_out = Some(val()?),
            _ if !a.starts_with("--") => pos.push(a),
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let [model_path, data]: [String; 2] = pos.try_into().map_err(|_| "usage: train-runner MODEL DATA.jsonl [options]")?;
    let t = std::time::Instant::now();
    let model = Model::load(&model_path, &LoadOptions { threads: Some(threads), precision, max_context: Some(seq), ..LoadOptions::default() })?;
    let load_s = t.elapsed().as_secs_f64();
    let config = TrainConfig {
        lora: LoraConfig { r: rank, alpha, ..LoraConfig::default() },
        learning_rate: lr,
        adamw: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
        max_grad_norm: 0.0,
        max_tokens: seq,
        gradient_checkpointing: checkpointing,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, config, None)?;
    let text = std::fs::read_to_string(&data).map_err(|e| format!("{data}: {e}"))?;
    // The first conversations with a trained token within `--seq` tokens (ALFWorld's long first
    // turn leaves some without one at 512).
    let mut records: Vec<Trajectory> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r = parse_record(line)?;
        match trainer.tokenize(&r) {
            Ok(_) => records.push(r),
            Err(agentlm::Error::InvalidArgument(m)) if m.contains("no trained token") => {}
            Err(e) => return Err(e.into()),
        }
        if records.len() == rows + n_eval {
            break;
        }
    }
    if records.len() < rows + n_eval {
        return Err(format!("{data} holds {} usable conversations; {} are needed", records.len(), rows + n_eval).into());
    }
    for (i, r) in records.iter().enumerate() {
        // Every row once, whatever the reward field says.
        let r = Trajectory { reward: None, ..r.clone() };
        if i < rows {
            trainer.add_trajectory(r, DataKind::Agent)?;
        } else {
            trainer.add_eval_trajectory(r)?;
        }
    }
    // The rows for the peer: the training rows in the order the trainer draws them, so both
    // engines take the same steps; then the held-out rows.
    if let Some(path) = rows_out {
        let mut f = std::fs::File::create(path)?;
        let order = trainer.upcoming(DataKind::Agent);
        for (split, i) in order.iter().map(|&i| ("train", i)).chain((rows..rows + n_eval).map(|i| ("eval", i))) {
            let tok = trainer.tokenize(&records[i])?;
            let mask: Vec<u8> = tok.train.iter().map(|&m| u8::from(m)).collect();
            writeln!(f, "{}", serde_json::json!({"split": split, "ids": tok.ids, "mask": mask}))?;
        }
    }
    let eval_before = trainer.evaluate()?;
    let rss_before = rss_kib("VmHWM:");
    let (mut tokens, mut secs, mut losses) = (0usize, 0f64, Vec::new());
    for step in 0..rows {
        let t = std::time::Instant::now();
        let s = trainer.run(1, None, |_| true)?;
        let r = s.last.ok_or("no step ran")?;
        if step > 0 {
            tokens += r.tokens;
            secs += t.elapsed().as_secs_f64();
        }
        losses.push(r.loss);
        eprintln!("step {}: loss {:.4}, {} tokens, {:.0} tokens/s, peak {:.0} MiB", r.step, r.loss, r.tokens, r.tokens_per_s, r.peak_rss as f64 / 1048576.0);
    }
    let eval = trainer.evaluate()?;
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("libagentlm ({})", if model.trains_on_host() { "host path" } else { "burn autodiff" }),
            "precision": model.precision().name(),
            "threads": threads,
            "seq": seq,
            "rows": rows,
            "load_s": load_s,
            "train_tok_s": tokens as f64 / secs,
            "peak_rss_mib": rss_kib("VmHWM:") as f64 / 1024.0,
            "peak_rss_before_training_mib": rss_before as f64 / 1024.0,
            "losses": losses,
            "eval_loss_before": eval_before.loss,
            "eval_loss_after": eval.loss,
        })
    );
    Ok(())
}
