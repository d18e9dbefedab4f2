//! Generate text with a model from the command line.
//!
//! ```text
//! cargo run --release --example generate -- --model PATH (--prompt TEXT | --prompt-file FILE) [--chat]
//!     [--system TEXT] [--max-tokens N] [--greedy | --temperature T --top-k K --top-p P --seed S]
//!     [--ignore-eos] [--stop STR]... [--backend cpu|wgpu|cuda] [--precision auto|exact|quantized] [--json]
//! ```
//! Without `--chat` the prompt is tokenized raw; with it, it is rendered with the model's chat template.
//! `--json` prints one object: prompt_ids, ids, text, prefill/decode tokens per second, backend.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use agentlm::{Backend, GenerateParams, LoadOptions, Message, Model, Precision, SamplingParams};

const USAGE: &str = "usage: generate --model PATH (--prompt TEXT | --prompt-file FILE) [--chat] [--system TEXT] \
[--max-tokens N] [--greedy | --temperature T --top-k K --top-p P --seed S] [--ignore-eos] [--stop STR]... \
[--backend cpu|wgpu|cuda] [--precision auto|exact|quantized] [--json]";

struct Args {
    model: String,
    prompt: String,
    chat: bool,
    system: Option<String>,
    params: GenerateParams,
    backend: Backend,
    precision: Precision,
    json: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut model = None;
    let mut prompt = None;
    let (mut chat, mut json, mut greedy) = (false, false, false);
    let mut system = None;
    let mut params = GenerateParams::default();
    let mut sampling = SamplingParams { temperature: 1.0, ..SamplingParams::greedy() };
    let mut sampled = false;
    let mut backend = Backend::Cpu;
    let mut precision = Precision::Auto;
    fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
        it.next().ok_or_else(|| format!("{flag} needs a value"))
    }
    fn num<T: std::str::FromStr>(s: String, flag: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("{flag}: not a number: {s:?}"))
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => model = Some(value(&mut it, &a)?),
            "--prompt" => prompt = Some(value(&mut it, &a)?),
            "--prompt-file" => {
                let f = value(&mut it, &a)?;
                prompt = Some(std::fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?);
            }
            "--chat" => chat = true,
            "--system" => system = Some(value(&mut it, &a)?),
            "--max-tokens" => params.max_tokens = num(value(&mut it, &a)?, &a)?,
            "--greedy" => greedy = true,
            "--temperature" => (sampling.temperature, sampled) = (num(value(&mut it, &a)?, &a)?, true),
            "--top-k" => (sampling.top_k, sampled) = (num(value(&mut it, &a)?, &a)?, true),
            "--top-p" => (sampling.top_p, sampled) = (num(value(&mut it, &a)?, &a)?, true),
            "--seed" => (sampling.seed, sampled) = (num(value(&mut it, &a)?, &a)?, true),
            "--ignore-eos" => params.ignore_eos = true,
            "--stop" => params.stop.push(value(&mut it, &a)?),
            "--backend" => backend = value(&mut it, &a)?.parse().map_err(|e| format!("{e}"))?,
            "--precision" => precision = value(&mut it, &a)?.parse()?,
            "--json" => json = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if greedy && sampled {
        return Err("--greedy cannot be combined with --temperature/--top-k/--top-p/--seed".into());
    }
    params.sampling = if sampled { sampling } else { SamplingParams::greedy() };
    Ok(Args {
        model: model.ok_or(format!("--model is required\n{USAGE}"))?,
        prompt: prompt.ok_or(format!("--prompt or --prompt-file is required\n{USAGE}"))?,
        chat,
        system,
        params,
        backend,
        precision,
        json,
    })
}

fn run(args: Args) -> Result<(), agentlm::Error> {
    let model = Model::load(&args.model, &LoadOptions { backend: args.backend, precision: args.precision, ..LoadOptions::default() })?;
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s.as_str()));
        }
        messages.push(Message::new("user", args.prompt.as_str()));
        model.apply_chat_template(&messages)?
    } else {
        if args.system.is_some() {
            return Err(agentlm::Error::InvalidArgument("--system needs --chat".into()));
        }
        args.prompt.clone()
    };
    let mut session = model.session(None);
    session.append_text(&text)?;
    let prompt_ids = session.tokens().to_vec();
    let stdout = std::io::stdout();
    let out = session.generate(&args.params, |piece| {
        if !args.json {
            let mut lock = stdout.lock();
            let _ = lock.write_all(piece.as_bytes());
            let _ = lock.flush();
        }
        ControlFlow::Continue(())
    })?;
    if args.json {
        let obj = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": out.ids,
            "text": out.text,
            "finish": format!("{:?}", out.finish),
            "prefill_tokens_per_s": out.prefill_tokens_per_s(),
            "decode_tokens_per_s": out.decode_tokens_per_s(),
            "backend": model.backend().name(),
            "precision": model.precision().name(),
        });
        println!("{obj}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} new tokens, {:.1} tok/s decode; {:?}; backend {}]",
            prompt_ids.len(),
            out.prefill_tokens_per_s(),
            out.ids.len(),
            out.decode_tokens_per_s(),
            out.finish,
            model.backend()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
