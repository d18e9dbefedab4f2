//! The TGI-compatible server example (`examples/tgi-server`) driven over loopback by a real HTTP client
//! (this test process): AgentTuning-style requests, greedy output identical to `examples/generate`,
//! streaming, 4xx on bad input, and a load test (200 requests, 8 at a time) with no errors and no
//! memory growth. The binaries are built by `cargo build --examples` (scripts/test.sh does it first).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} missing: run `cargo build --examples` first (scripts/test.sh does)", bin.display());
    bin
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let model = common::model_path();
    let mut child = Command::new(example("tgi-server"))
        .args(["--model", model.to_str().unwrap(), "--port", "0", "--workers", "4"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    assert!(addr.starts_with("127.0.0.1:"), "binds to loopback by default: {addr}");
    Server { child, addr }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn post(addr: &str, path: &str, v: &Value) -> (u16, Value, String) {
    let (status, body) = http(addr, "POST", path, v.to_string().as_bytes());
    (status, serde_json::from_str(&body).unwrap_or(Value::Null), body)
}

fn generate_cli(prompt: &str, max_tokens: usize) -> String {
    let out = Command::new(example("generate"))
        .args(["--model", common::model_path().to_str().unwrap(), "--prompt", prompt, "--greedy", "--max-tokens"])
        .arg(max_tokens.to_string())
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

const PROMPT: &str =
    "<|im_start|>user\nYou are in the middle of a room. Your task is to: put an apple in the fridge.\nWhat do you do first?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn agenttuning_style_requests_match_the_generate_example() {
    let server = start(&[]);
    let a = &server.addr;
    assert_eq!(http(a, "GET", "/health", b"").0, 200);
    // Greedy with truncate, as the AgentTuning eval scripts send it.
    let (st, v, body) =
        post(a, "/generate", &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 24, "do_sample": false, "truncate": 3500, "details": true}}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(v["generated_text"].as_str().unwrap(), generate_cli(PROMPT, 24));
    assert!(v["details"]["generated_tokens"].as_u64().unwrap() > 0);
    // Stop at the first newline.
    let (st, v, body) = post(a, "/generate", &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 64, "stop_sequences": ["\n"], "details": true}}));
    assert_eq!(st, 200, "{body}");
    let text = v["generated_text"].as_str().unwrap();
    assert!(!text.contains('\n'), "{text:?}");
    assert!(generate_cli(PROMPT, 64).starts_with(text));
    // The full body TGI's Python client sends (every parameter, most of them null), as AgentBench's
    // TGI agent posts it.
    let client_body = json!({"inputs": PROMPT, "parameters": {
        "best_of": null, "decoder_input_details": false, "details": false, "do_sample": false, "max_new_tokens": 24,
        "repetition_penalty": null, "return_full_text": false, "seed": null, "stop": ["</s>"], "temperature": null,
        "top_k": null, "top_p": null, "truncate": null, "typical_p": null, "watermark": false}, "stream": false});
    let (st, v, body) = post(a, "/generate", &client_body);
    assert_eq!(st, 200, "{body}");
    assert_eq!(v["generated_text"].as_str().unwrap(), generate_cli(PROMPT, 24));
    let mut full = client_body.clone();
    full["parameters"]["return_full_text"] = json!(true);
    let (_, v, _) = post(a, "/generate", &full);
    assert_eq!(v["generated_text"].as_str().unwrap(), format!("{PROMPT}{}", generate_cli(PROMPT, 24)));
    // Sampling with temperature and top_p: seeded, so repeatable.
    let sampled = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 16, "do_sample": true, "temperature": 0.7, "top_p": 0.9, "seed": 3}});
    let (st1, v1, _) = post(a, "/generate", &sampled);
    let (st2, v2, _) = post(a, "/generate", &sampled);
    assert!(st1 == 200 && st2 == 200 && v1["generated_text"] == v2["generated_text"]);
    // Streaming gives the same text as /generate, token by token.
    let (st, body) = http(a, "POST", "/generate_stream", json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 12}}).to_string().as_bytes());
    assert_eq!(st, 200);
    let events: Vec<Value> = body.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(events.len() >= 2, "{body}");
    let last = events.last().unwrap();
    let streamed: String = events[..events.len() - 1].iter().map(|e| e["token"]["text"].as_str().unwrap()).collect();
    assert_eq!(last["generated_text"].as_str().unwrap(), generate_cli(PROMPT, 12));
    assert!(last["generated_text"].as_str().unwrap().starts_with(streamed.trim_end()) || streamed.starts_with(last["generated_text"].as_str().unwrap()));
}

#[test]
fn bad_requests_get_4xx_with_a_message() {
    let server = start(&["--max-body-bytes", "4096", "--max-new-tokens", "64"]);
    let a = &server.addr;
    for (body, want) in [
        ("{not json".to_string(), 400),
        (json!({"parameters": {}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"max_new_tokens": 0}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"max_new_tokens": 65}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"temperature": -1}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"top_p": 1.5}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"stop": "x"}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"best_of": 2}}).to_string(), 422),
        (json!({"inputs": "hi", "parameters": {"typical_p": 0.5}}).to_string(), 422),
        (json!({"inputs": 3}).to_string(), 422),
        (json!({"inputs": "x".repeat(5000)}).to_string(), 413),
    ] {
        let (st, b) = http(a, "POST", "/generate", body.as_bytes());
        assert_eq!(st, want, "{body:.80}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(http(a, "GET", "/nope", b"").0, 404);
    assert_eq!(http(a, "GET", "/generate", b"").0, 405);
    // Still serving.
    assert_eq!(http(a, "GET", "/health", b"").0, 200);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn survives_200_requests_8_at_a_time_without_errors_or_memory_growth() {
    let server = start(&["--workers", "8"]);
    let a = server.addr.clone();
    let body = json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 4, "do_sample": false}});
    let want = post(&a, "/generate", &body).1;
    let burst = |n: usize| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (a, body, want) = (a.clone(), body.clone(), want.clone());
                std::thread::spawn(move || {
                    for _ in 0..n / 8 {
                        let (st, v, raw) = post(&a, "/generate", &body);
                        assert_eq!(st, 200, "{raw}");
                        assert_eq!(v, want);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    burst(40);
    let before = rss_kib(server.child.id());
    burst(200);
    let after = rss_kib(server.child.id());
    eprintln!("server RSS {before} KiB after warm-up, {after} KiB after 200 more requests");
    assert!(after < before + 64 * 1024, "RSS grew from {before} to {after} KiB");
}
