//! The TGI request parser: a `/generate` body in, a validated generation job (or a 4xx answer) out.
//! Shared by the server (main.rs) and the `tgi_request` fuzz target.

use agentlm::{GenerateParams, SamplingParams};
use serde_json::{json, Value};

pub struct Limits {
    pub max_input_tokens: usize,
    pub max_new_tokens: usize,
    pub max_body_bytes: usize,
}

pub struct Job {
    /// `return_full_text`: the input is prepended to the answer.
    pub prefix: Option<String>,
    pub prompt_ids: Vec<u32>,
    pub params: GenerateParams,
    pub details: bool,
    pub seed: Option<u64>,
}

/// A client error: HTTP status and message.
pub struct Bad(pub u16, pub String);

pub fn bad(msg: impl Into<String>) -> Bad {
    Bad(422, msg.into())
}

/// Parses and validates a TGI request body into a job.
///
/// `tokenize` turns `inputs` into prompt ids (BOS included when the model wants one); `context_length`
/// bounds prompt + new tokens. Nothing here touches the model, so the parser can be fuzzed alone.
pub fn parse(tokenize: &dyn Fn(&str) -> Result<Vec<u32>, String>, context_length: usize, limits: &Limits, body: &[u8]) -> Result<Job, Bad> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Bad(400, format!("malformed JSON: {e}")))?;
    let inputs = v.get("inputs").and_then(Value::as_str).ok_or_else(|| bad("`inputs` must be a string"))?;
    let empty = json!({});
    let p = match v.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(bad("`parameters` must be an object")),
    };
    let num = |k: &str| -> Result<Option<f64>, Bad> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| bad(format!("`{k}` must be a number"))),
        }
    };
    let int = |k: &str| -> Result<Option<u64>, Bad> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(Some).ok_or_else(|| bad(format!("`{k}` must be a non-negative integer"))),
        }
    };
    let flag = |k: &str| -> Result<bool, Bad> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(format!("`{k}` must be a boolean"))),
        }
    };
    let max_new = int("max_new_tokens")?.unwrap_or(20) as usize;
    if max_new == 0 || max_new > limits.max_new_tokens {
        return Err(bad(format!("`max_new_tokens` must be between 1 and {}", limits.max_new_tokens)));
    }
    let do_sample = flag("do_sample")?;
    let temperature = num("temperature")?;
    let top_p = num("top_p")?;
    let top_k = int("top_k")?;
    if temperature.is_some_and(|t| t <= 0.0) {
        return Err(bad("`temperature` must be strictly positive"));
    }
    if top_p.is_some_and(|t| t <= 0.0 || t >= 1.0) {
        return Err(bad("`top_p` must be > 0.0 and < 1.0"));
    }
    if top_k == Some(0) {
        return Err(bad("`top_k` must be strictly positive"));
    }
    // Sent by TGI's Python client with their neutral values; anything else is not implemented here.
    if int("best_of")?.is_some_and(|b| b > 1) {
        return Err(bad("`best_of` > 1 is not supported"));
    }
    if num("typical_p")?.is_some() {
        return Err(bad("`typical_p` is not supported"));
    }
    if flag("watermark")? {
        return Err(bad("`watermark` is not supported"));
    }
    let repetition_penalty = num("repetition_penalty")?;
    if repetition_penalty.is_some_and(|r| r <= 0.0) {
        return Err(bad("`repetition_penalty` must be strictly positive"));
    }
    // TGI samples when asked to, or when any sampling parameter is set.
    let sample = do_sample || temperature.is_some_and(|t| t != 1.0) || top_p.is_some() || top_k.is_some();
    let seed = int("seed")?;
    let mut stop = Vec::new();
    for key in ["stop", "stop_sequences"] {
        match p.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for s in a {
                    let s = s.as_str().ok_or_else(|| bad(format!("`{key}` must be a list of strings")))?;
                    if !s.is_empty() {
                        stop.push(s.to_string());
                    }
                }
            }
            Some(_) => return Err(bad(format!("`{key}` must be a list of strings"))),
        }
    }
    let sampling = SamplingParams {
        temperature: if sample { temperature.unwrap_or(1.0) as f32 } else { 0.0 },
        top_k: if sample { top_k.unwrap_or(0) as usize } else { 0 },
        top_p: if sample { top_p.unwrap_or(1.0) as f32 } else { 1.0 },
        repetition_penalty: repetition_penalty.unwrap_or(1.0) as f32,
        seed: seed.unwrap_or(0),
        ..SamplingParams::default()
    };
    let mut prompt_ids = tokenize(inputs).map_err(|e| bad(format!("cannot tokenize `inputs`: {e}")))?;
    if let Some(t) = int("truncate")? {
        // TGI keeps the last `truncate` tokens of the input.
        let t = t as usize;
        if prompt_ids.len() > t {
            prompt_ids.drain(..prompt_ids.len() - t);
        }
    }
    if prompt_ids.is_empty() {
        return Err(bad("`inputs` is empty"));
    }
    if prompt_ids.len() > limits.max_input_tokens {
        return Err(bad(format!("`inputs` has {} tokens, more than the limit of {} (use `truncate`)", prompt_ids.len(), limits.max_input_tokens)));
    }
    if prompt_ids.len() + max_new > context_length {
        return Err(bad(format!("`inputs` tokens + `max_new_tokens` must be <= {}; given {} and {max_new}", context_length, prompt_ids.len())));
    }
    let params = GenerateParams { sampling, max_tokens: max_new, stop, ignore_eos: false };
    params.sampling.validate().map_err(|e| bad(e.to_string()))?;
    let prefix = flag("return_full_text")?.then(|| inputs.to_string());
    Ok(Job { prefix, prompt_ids, params, details: flag("details")?, seed: sample.then_some(seed.unwrap_or(0)) })
}
