//! Converts a GGUF model to a Hugging Face directory (f32 safetensors + tokenizer.json) with
//! libagentlm's own readers and writers.
//!
//! `cargo run --release --example convert -- MODEL.gguf OUT_DIR`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gguf, out] = args.as_slice() else {
        eprintln!("usage: convert MODEL.gguf OUT_DIR");
        return ExitCode::from(2);
    };
    match agentlm::convert::gguf_to_hf_dir(gguf.as_ref(), out.as_ref()) {
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
