//! Converts a GGUF model to a Hugging Face directory (f32 safetensors + tokenizer.json) with
//! libagentlm's own readers and writers.
//!
//! `cargo run --release --example convert -- MODEL.gguf OUT_DIR [--layers N]`
//!
//! `--layers N` keeps only the first N decoder layers (a small model for tests where text quality does
//! not matter).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: convert MODEL.gguf OUT_DIR [--layers N]");
        ExitCode::from(2)
    };
    let (gguf, out, layers) = match args.as_slice() {
        [g, o] => (g, o, None),
        [g, o, flag, n] if flag == "--layers" => match n.parse::<usize>() {
            Ok(n) => (g, o, Some(n)),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    match agentlm::convert::gguf_to_hf_dir_with_layers(gguf.as_ref(), out.as_ref(), layers) {
        Ok(()) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
