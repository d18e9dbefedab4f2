//! libagentlm side of the llama.cpp comparison (`benches/compare/run.sh`): loads a GGUF model, runs
//! a prompt of exactly `--prompt-tokens` ids (a fixed English text, tokenized and repeated), then
//! `--gen-tokens` greedy tokens, and prints one JSON object: prefill and decode tokens/s, peak
//! resident set, the prompt ids and the generated ids.
//!
//! ```text
//! cargo run --release --example compare-runner -- MODEL [--prompt-tokens 128] [--gen-tokens 128]
//!     [--threads 2] [--precision auto|exact|quantized] [--ids-out FILE]
//! ```

use std::time::Instant;

use agentlm::{LoadOptions, Model, Precision};

const TEXT: &str = "The robot walked through the kitchen, checked the fridge for milk, and then went to the \
    living room to find the remote control. It looked under the sofa, behind the cushions and on the shelf next \
    to the television, thinking about where a person would usually leave it. ";

/// Peak and current resident set in KiB, from /proc/self/status (0 where unavailable).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (field("VmHWM:"), field("VmRSS:"))
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model_path, mut n_prompt, mut n_gen, mut threads, mut precision, mut ids_out) = (None, 128usize, 128usize, 2usize, Precision::Auto, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--prompt-tokens" => n_prompt = val()?.parse()?,
            "--gen-tokens" => n_gen = val()?.parse()?,
            "--threads" => threads = val()?.parse()?,
            "--precision" => precision = val()?.parse()?,
            "--ids-out" => ids_out = Some(val()?),
            _ if model_path.is_none() && !a.starts_with("--") => model_path = Some(a),
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let model_path = model_path.ok_or("usage: compare-runner MODEL [options]")?;
    let (_, rss_start) = rss_kib();
    let t = Instant::now();
    let opts = LoadOptions { threads: Some(threads), precision, max_context: Some(n_prompt + n_gen + 8), ..LoadOptions::default() };
    let model = Model::load(&model_path, &opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let (_, rss_loaded) = rss_kib();
    let base = model.tokenizer().encode(TEXT, false)?;
    let ids: Vec<u32> = base.iter().cycle().take(n_prompt).copied().collect();
    if let Some(path) = ids_out {
        std::fs::write(path, serde_json::to_string(&ids)?)?;
    }
    let mut s = model.session(Some(n_prompt + n_gen + 1));
    // Warm-up, as the other runners: one prefill of the prompt, discarded.
    s.append_tokens(&ids)?;
    s.logits()?;
    s.reset();
    let t = Instant::now();
    s.append_tokens(&ids)?;
    let mut next = argmax(s.logits()?);
    let prefill_s = t.elapsed().as_secs_f64();
    let mut out = vec![next];
    let t = Instant::now();
    for _ in 1..n_gen {
        s.append_tokens(&[next])?;
        next = argmax(s.logits()?);
        out.push(next);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let (peak, _) = rss_kib();
    let report = serde_json::json!({
        "engine": "libagentlm",
        "precision": model.precision().name(),
        "threads": model.threads(),
        "prompt_tokens": n_prompt,
        "gen_tokens": n_gen,
        "load_s": load_s,
        "prefill_tok_s": n_prompt as f64 / prefill_s,
        // The first generated token comes from the prefill logits; n_gen - 1 decode steps follow.
        "decode_tok_s": (n_gen - 1) as f64 / decode_s,
        "peak_rss_mib": peak as f64 / 1024.0,
        "start_rss_mib": rss_start as f64 / 1024.0,
        "loaded_rss_mib": rss_loaded as f64 / 1024.0,
        "ids": out,
    });
    println!("{report}");
    Ok(())
}
