//! A Text-Generation-Inference-compatible HTTP server on libagentlm, for the AgentTuning evaluation
//! scripts (and anything else that speaks TGI's `/generate` protocol).
//!
//! `cargo run --release --example tgi-server -- --model PATH [--host 127.0.0.1] [--port 3000]
//!     [--workers 4] [--max-input-tokens 4096] [--max-new-tokens 1024] [--max-body-bytes 1048576]`
//!
//! - `POST /generate` `{"inputs": "...", "parameters": {max_new_tokens, do_sample, temperature, top_p,
//!   top_k, seed, stop | stop_sequences, truncate, repetition_penalty, details, return_full_text}}` →
//!   `{"generated_text": "..."}` (plus `details` when asked);
//! - `POST /generate_stream`: the same, answered with server-sent events, one per token, the last
//!   carrying `generated_text`;
//! - `GET /health`: 200 once the model is loaded.
//!
//! Bound to 127.0.0.1 unless `--host` says otherwise (the port is TGI's default, 3000). Requests are
//! served by `--workers` threads from one shared model, each request on its own session. Bodies over
//! `--max-body-bytes`, malformed JSON and out-of-range parameters get a 4xx answer with a message, as
//! TGI gives: `{"error": "...", "error_type": "validation"}`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use agentlm::{FinishReason, LoadOptions, Model, Step};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

mod request;

use request::{parse, Bad, Job, Limits};

/// [`parse`] with the model's tokenizer and context length.
fn parse_for(model: &Model, limits: &Limits, body: &[u8]) -> Result<Job, Bad> {
    let tok = model.tokenizer();
    let tokenize = |s: &str| tok.encode(s, tok.add_bos_by_default()).map_err(|e| e.to_string());
    parse(&tokenize, model.context_length(), limits, body)
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos_token",
        FinishReason::Stop(_) => "stop_sequence",
        _ => "length",
    }
}

/// Runs a job, calling `on_token(id, text)` for each token; returns the text, token count and finish.
fn run(model: &Model, job: &Job, mut on_token: impl FnMut(u32, &str) -> bool) -> Result<(String, usize, FinishReason), String> {
    let mut session = model.session(Some(job.prompt_ids.len() + job.params.max_tokens));
    session.append_tokens(&job.prompt_ids).map_err(|e| e.to_string())?;
    session.begin(&job.params).map_err(|e| e.to_string())?;
    let mut n = 0;
    loop {
        match session.next_token().map_err(|e| e.to_string())? {
            Step::Token { id, text } => {
                n += 1;
                if !on_token(id, &text) {
                    session.cancel_token().cancel();
                }
            }
            Step::Finished { reason, .. } => {
                let g = session.end().ok_or("generation ended without a result")?;
                return Ok((g.text, n, reason));
            }
        }
    }
}

fn json_response(status: u16, v: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(v.to_string().into_bytes())
        .with_status_code(status)
        .with_header(Header::from_bytes("Content-Type", "application/json").expect("static header"))
}

fn error_response(b: Bad) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(b.0, &json!({"error": b.1, "error_type": "validation"}))
}

/// Reads the body, refusing more than the limit (413).
fn body(req: &mut Request, limit: usize) -> Result<Vec<u8>, Bad> {
    if req.body_length().is_some_and(|n| n > limit) {
        return Err(Bad(413, format!("request body larger than {limit} bytes")));
    }
    let mut buf = Vec::new();
    req.as_reader().take(limit as u64 + 1).read_to_end(&mut buf).map_err(|e| Bad(400, format!("cannot read the body: {e}")))?;
    if buf.len() > limit {
        return Err(Bad(413, format!("request body larger than {limit} bytes")));
    }
    Ok(buf)
}

/// A reader over server-sent events produced by the generating thread.
struct EventStream {
    rx: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
}

impl Read for EventStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.pending.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len() - self.at);
        out[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn handle(model: &Model, limits: &Limits, mut req: Request) {
    let url = req.url().split('?').next().unwrap_or("").to_string();
    let method = req.method().clone();
    let result = match (method, url.as_str()) {
        (Method::Get, "/health") => req.respond(Response::from_string("").with_status_code(200)),
        (Method::Get, "/info") => req.respond(json_response(
            200,
            &json!({"model_id": model.path().display().to_string(), "max_input_length": limits.max_input_tokens,
                    "max_total_tokens": model.context_length(), "version": agentlm_version()}),
        )),
        (Method::Post, "/generate") | (Method::Post, "/") => {
            let job = body(&mut req, limits.max_body_bytes).and_then(|b| parse_for(model, limits, &b));
            match job {
                Err(b) => req.respond(error_response(b)),
                Ok(job) => match run(model, &job, |_, _| true) {
                    Ok((text, n, finish)) => {
                        let text = format!("{}{text}", job.prefix.as_deref().unwrap_or(""));
                        let mut v = json!({"generated_text": text});
                        if job.details {
                            v["details"] = json!({"finish_reason": finish_name(finish), "generated_tokens": n, "seed": job.seed});
                        }
                        req.respond(json_response(200, &v))
                    }
                    Err(e) => req.respond(json_response(500, &json!({"error": e, "error_type": "generation"}))),
                },
            }
        }
        (Method::Post, "/generate_stream") => {
            let job = body(&mut req, limits.max_body_bytes).and_then(|b| parse_for(model, limits, &b));
            match job {
                Err(b) => req.respond(error_response(b)),
                Ok(job) => {
                    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(64);
                    let model = model.clone();
                    let details = job.details;
                    let seed = job.seed;
                    let prefix = job.prefix.clone().unwrap_or_default();
                    let producer = std::thread::spawn(move || {
                        let event = |v: Value| format!("data:{v}\n\n").into_bytes();
                        let r = run(&model, &job, |id, text| {
                            let v = json!({"token": {"id": id, "text": text, "logprob": null, "special": false},
                                           "generated_text": null, "details": null});
                            tx.send(event(v)).is_ok()
                        });
                        let last = match r {
                            Ok((text, n, finish)) => {
                                let d = details.then(|| json!({"finish_reason": finish_name(finish), "generated_tokens": n, "seed": seed}));
                                json!({"token": {"id": null, "text": "", "logprob": null, "special": true}, "generated_text": format!("{prefix}{text}"), "details": d})
                            }
                            Err(e) => json!({"error": e, "error_type": "generation"}),
                        };
                        let _ = tx.send(event(last));
                    });
                    let headers = vec![
                        Header::from_bytes("Content-Type", "text/event-stream").expect("static header"),
                        Header::from_bytes("Cache-Control", "no-cache").expect("static header"),
                    ];
                    let stream = EventStream { rx, pending: Vec::new(), at: 0 };
                    let r = req.respond(Response::new(tiny_http::StatusCode(200), headers, stream, None, None));
                    let _ = producer.join();
                    r
                }
            }
        }
        (_, "/generate" | "/generate_stream" | "/health" | "/info" | "/") => {
            req.respond(json_response(405, &json!({"error": "method not allowed", "error_type": "validation"})))
        }
        _ => req.respond(json_response(404, &json!({"error": format!("no route {url}"), "error_type": "validation"}))),
    };
    if let Err(e) = result {
        eprintln!("tgi-server: could not answer: {e}");
    }
}

fn agentlm_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tgi-server --model PATH [--host 127.0.0.1] [--port 3000] [--workers 4] \
                 [--max-input-tokens 4096] [--max-new-tokens 1024] [--max-body-bytes 1048576]";
    let (mut model_path, mut host, mut port, mut workers) = (None, "127.0.0.1".to_string(), 3000u16, 4usize);
    let mut limits = Limits { max_input_tokens: 4096, max_new_tokens: 1024, max_body_bytes: 1 << 20 };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("{flag} needs a value\n{usage}");
            return ExitCode::from(2);
        };
        let num = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0);
        let ok = match flag.as_str() {
            "--model" => {
                model_path = Some(value.clone());
                true
            }
            "--host" => {
                host = value.clone();
                true
            }
            "--port" => value.parse().map(|p| port = p).is_ok(),
            "--workers" => num(value).map(|n| workers = n).is_some(),
            "--max-input-tokens" => num(value).map(|n| limits.max_input_tokens = n).is_some(),
            "--max-new-tokens" => num(value).map(|n| limits.max_new_tokens = n).is_some(),
            "--max-body-bytes" => num(value).map(|n| limits.max_body_bytes = n).is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("bad argument {flag} {value}\n{usage}");
            return ExitCode::from(2);
        }
    }
    let Some(model_path) = model_path else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let model = match Model::load(&model_path, &LoadOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::http((host.as_str(), port)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: cannot listen on {host}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = server.server_addr().to_ip().map(|a| a.to_string()).unwrap_or_default();
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let limits = Arc::new(limits);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (server, model, limits) = (server.clone(), model.clone(), limits.clone());
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    handle(&model, &limits, req);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}
