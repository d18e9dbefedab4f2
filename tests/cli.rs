//! The `generate` example's command-line interface, which other tools rely on.
//! The binary is built by `cargo build --examples`, which scripts/test.sh runs before the tests.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn generate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("examples").join(format!("generate{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} missing: run `cargo build --examples` first (scripts/test.sh does)", bin.display());
    bin
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(generate_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn json_output_matches_golden_greedy_tokens() {
    let model = common::model_path();
    let golden = common::json(&common::golden("smollm2_hf_golden.json"));
    let p = golden["prompts"].as_array().unwrap().iter().find(|p| p["name"] == "chat_capital").unwrap();
    let user = p["messages"][0]["content"].as_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        user,
        "--chat",
        "--max-tokens",
        "48",
        "--greedy",
        "--ignore-eos",
        "--backend",
        "cpu",
        "--precision",
        "exact",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["prompt_ids"], p["input_ids"]);
    assert_eq!(v["ids"], p["greedy_ids"]);
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["precision"], "exact");
    assert!(v["text"].as_str().unwrap().starts_with("The capital of France is Paris."));
    assert!(v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn sampling_flags_stop_and_prompt_file() {
    let model = common::model_path();
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("prompt.txt");
    std::fs::write(&pf, "Once upon a time, in a small village nestled between two mountains, there lived a").unwrap();
    let args = |seed: &str| {
        vec![
            "--model",
            m,
            "--prompt-file",
            pf.to_str().unwrap(),
            "--temperature",
            "0.8",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--max-tokens",
            "16",
            "--ignore-eos",
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let go = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (ok, out, err) = run(&refs);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    assert_eq!(go(args("3"))["ids"], go(args("3"))["ids"]);
    let mut stop = args("3");
    stop.extend(["--stop".to_string(), " ".to_string()]);
    let v = go(stop);
    assert!(!v["text"].as_str().unwrap().contains(' '), "{v}");
    assert_eq!(v["finish"], "Stop(0)");
}

#[test]
fn usage_errors() {
    let (ok, _, err) = run(&["--prompt", "x"]);
    assert!(!ok && err.contains("--model"));
    let (ok, _, err) = run(&["--model", "m", "--prompt", "x", "--greedy", "--temperature", "1"]);
    assert!(!ok && err.contains("--greedy"), "{err}");
    let (ok, _, err) = run(&["--model", "m", "--prompt", "x", "--backend", "tpu"]);
    assert!(!ok && err.contains("tpu"), "{err}");
    let (ok, _, err) = run(&["--model", "m", "--prompt", "x", "--precision", "fast"]);
    assert!(!ok && err.contains("fast"), "{err}");
    let (ok, _, err) = run(&["--model", "/nonexistent/model.gguf", "--prompt", "x"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
    if !agentlm::Backend::Cuda.is_compiled() {
        let (ok, _, err) = run(&["--model", common::model_path().to_str().unwrap(), "--prompt", "x", "--backend", "cuda"]);
        assert!(!ok && err.contains("not compiled"), "{err}");
    }
}
