//! LoRA parity with Hugging Face transformers + PEFT on SmolLM2-135M-Instruct
//! (golden `smollm2_lora_golden.json`, `smollm2_lora_agentinstruct_golden.json` and the PEFT adapter
//! `smollm2_lora_r8`, made by scripts/golden/make.sh):
//! logits with the adapter attached, detached and merged; masked losses of real ALFWorld trajectories;
//! one AdamW step; saving an adapter PEFT can read.

mod common;

use agentlm::agent::{Trajectory, Turn};
use agentlm::formats::peft;
use agentlm::train::{AdamWConfig, DataKind, TrainConfig, Trainer};
use agentlm::{Adapter, LoadOptions, Model};
use serde_json::Value;

fn golden() -> Value {
    common::json(&common::golden("smollm2_lora_golden.json"))
}

fn adapter_dir() -> std::path::PathBuf {
    common::golden("smollm2_lora_r8")
}

fn model() -> Model {
    Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Exact, ..LoadOptions::default() }).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Checks that the reference top-10 ids are our top-10 in order and each logit is within `tol`.
fn assert_top10(ours: &[f32], want: &Value, what: &str, tol: f32) -> f32 {
    let mut order: Vec<usize> = (0..ours.len()).collect();
    order.sort_by(|&a, &b| ours[b].total_cmp(&ours[a]));
    let mut worst = 0f32;
    for (i, w) in want.as_array().unwrap().iter().enumerate() {
        let id = w["id"].as_u64().unwrap() as usize;
        let logit = w["logit"].as_f64().unwrap() as f32;
        assert_eq!(order[i], id, "{what}: rank {i}");
        worst = worst.max((ours[id] - logit).abs());
    }
    assert!(worst < tol, "{what}: max |Δlogit| {worst}");
    worst
}

fn prompt_logits(model: &Model, adapter: Option<(Adapter, f32)>, p: &Value) -> Vec<f32> {
    let mut s = model.session(None);
    s.set_adapter(adapter).unwrap();
    s.append_tokens(&ids(&p["input_ids"])).unwrap();
    s.logits().unwrap().to_vec()
}

#[test]
fn peft_adapter_reproduces_transformers_logits_attached_detached_and_merged() {
    let g = golden();
    let model = model();
    let adapter = Adapter::load(&model, adapter_dir()).unwrap();
    assert_eq!(adapter.parameter_count() as u64, g["adapter"]["n_params"].as_u64().unwrap());
    assert_eq!(adapter.config().scaling(), 2.0);
    let merged = model.merged(&adapter, 1.0).unwrap();
    // A scale that is not finite is refused, merged or attached, with one message.
    for bad in [f32::NAN, f32::INFINITY] {
        let e = model.merged(&adapter, bad).err().expect("non-finite merge scale refused").to_string();
        assert!(e.contains("not finite"), "{e}");
        let e = model.session(None).set_adapter(Some((adapter.clone(), bad))).unwrap_err().to_string();
        assert!(e.contains("not finite"), "{e}");
    }
    for p in g["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let on = prompt_logits(&model, Some((adapter.clone(), 1.0)), p);
        let d_on = assert_top10(&on, &p["lora_last_logits_top10"], &format!("{name} with adapter"), 1e-2);
        let off = prompt_logits(&model, None, p);
        let d_off = assert_top10(&off, &p["base_last_logits_top10"], &format!("{name} without"), 1e-2);
        let m = prompt_logits(&merged, None, p);
        let d_m = assert_top10(&m, &p["merged_last_logits_top10"], &format!("{name} merged"), 1e-2);
        let merged_vs_unmerged = on.iter().zip(&m).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(merged_vs_unmerged < 1e-3, "{name}: merged vs unmerged {merged_vs_unmerged}");
        // The adapter changes the logits as much as the reference says (it is really applied).
        let moved = on.iter().zip(&off).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let want = p["max_abs_diff_lora_vs_base_full_vocab"].as_f64().unwrap() as f32;
        assert!((moved - want).abs() < 1e-2, "{name}: adapter moves logits by {moved}, reference {want}");
        eprintln!("{name}: max|Δ| on {d_on:.2e} off {d_off:.2e} merged {d_m:.2e}, merged vs unmerged {merged_vs_unmerged:.2e}");
    }
}

#[test]
fn greedy_continuation_with_the_adapter_matches_and_detaching_restores_the_base() {
    let g = golden();
    let model = model();
    let adapter = Adapter::load(&model, adapter_dir()).unwrap();
    let p = &g["prompts"][0];
    let mut s = model.session(None);
    s.append_tokens(&ids(&p["input_ids"])).unwrap();
    let greedy = |s: &mut agentlm::Session| {
        let start = s.tokens().len();
        for _ in 0..24 {
            let l = s.logits().unwrap();
            let best = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32;
            s.append_tokens(&[best]).unwrap();
        }
        let out = s.tokens()[start..].to_vec();
        s.truncate(start);
        out
    };
    // Hot swap on a live session: the same tokens give the adapter's and then the base's output.
    s.set_adapter(Some((adapter.clone(), 1.0))).unwrap();
    assert_eq!(greedy(&mut s), ids(&p["lora_greedy_ids"]));
    s.set_adapter(None).unwrap();
    assert_eq!(greedy(&mut s), ids(&p["base_greedy_ids"]));
}

fn reference_trajectory(g: &Value) -> Trajectory {
    let msgs = g["messages"].as_array().unwrap();
    let flags = g["turn_loss_flags"].as_array().unwrap();
    let conversations = msgs
        .iter()
        .zip(flags)
        .map(|(m, f)| Turn {
            from: if m["role"] == "assistant" { "gpt".into() } else { "human".into() },
            value: m["content"].as_str().unwrap().to_string(),
            loss: f.as_bool(),
            accepted: None,
        })
        .collect();
    Trajectory { id: g["id"].as_str().map(str::to_string), conversations, reward: None, outcome: None }
}

fn reference_config() -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-3,
        adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        max_grad_norm: 0.0,
        max_tokens: 1024,
        ..TrainConfig::default()
    }
}

#[test]
fn masked_losses_match_the_reference_with_and_without_the_adapter() {
    let Some(path) = common::agentinstruct_golden_or_skip("lora::masked_losses_match_the_reference") else { return };
    let g = common::json(&path);
    let model = model();
    let adapter = Adapter::load(&model, adapter_dir()).unwrap();
    for (start, key) in [(Some(&adapter), "lora_loss"), (None, "base_loss")] {
        let mut config = reference_config();
        if start.is_none() {
            // A fresh adapter has B = 0: exactly the base model.
            config.lora = adapter.config().clone();
        }
        let mut trainer = Trainer::new(&model, config, start).unwrap();
        for t in g["masked_loss"]["trajectories"].as_array().unwrap() {
            let traj = reference_trajectory(t);
            let tok = trainer.tokenize(&traj).unwrap();
            assert_eq!(tok.ids, ids(&t["input_ids"]));
            trainer.add_eval_trajectory(traj).unwrap();
        }
        // Token-weighted mean over the three; also check each one alone.
        let mut want_sum = 0.0;
        let mut n_sum = 0.0;
        for t in g["masked_loss"]["trajectories"].as_array().unwrap() {
            let n = t["n_loss_tokens"].as_f64().unwrap();
            want_sum += t[key].as_f64().unwrap() * n;
            n_sum += n;
            let (loss, _) = trainer.loss(&reference_trajectory(t)).unwrap();
            let want = t[key].as_f64().unwrap();
            assert!((loss - want).abs() < 1e-3, "{} {key}: {loss} vs {want}", t["id"]);
            eprintln!("{} {key}: ours {loss:.6} reference {want:.6}", t["id"]);
        }
        let eval = trainer.evaluate().unwrap();
        assert!((eval.loss - want_sum / n_sum).abs() < 1e-3, "{key}: eval {} vs {}", eval.loss, want_sum / n_sum);
        assert_eq!(eval.tokens as f64, n_sum);
    }
}

#[test]
fn one_adamw_step_matches_the_reference_gradient_and_loss_after() {
    let Some(path) = common::agentinstruct_golden_or_skip("lora::one_adamw_step_matches_the_reference") else { return };
    let g = common::json(&path);
    let ts = &g["train_step"];
    let model = model();
    let adapter = Adapter::load(&model, adapter_dir()).unwrap();
    let mut trainer = Trainer::new(&model, reference_config(), Some(&adapter)).unwrap();
    let traj = reference_trajectory(&g["masked_loss"]["trajectories"][0]);
    let (loss, grads) = trainer.gradients(&traj).unwrap();
    let norm = |pred: &dyn Fn(&str) -> bool| grads.iter().filter(|(k, _)| pred(k)).flat_map(|(_, v)| v).map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let (all, a, b) = (norm(&|_| true), norm(&|k| k.contains("lora_A")), norm(&|k| k.contains("lora_B")));
    eprintln!("loss {loss} grad norm {all} (A {a}, B {b})");
    assert!((loss - ts["loss_before"].as_f64().unwrap()).abs() < 1e-3);
    assert!(rel(all, ts["lora_grad_global_l2_norm"].as_f64().unwrap()) < 0.01, "grad norm {all}");
    assert!(rel(a, ts["lora_A_grad_l2_norm"].as_f64().unwrap()) < 0.01, "A grad norm {a}");
    assert!(rel(b, ts["lora_B_grad_l2_norm"].as_f64().unwrap()) < 0.01, "B grad norm {b}");
    for (name, check) in ts["grad_checks_in_memory_names"].as_object().unwrap() {
        let ours = &grads[&name.replace(".default.weight", ".weight")];
        let l2 = ours.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        assert!(rel(l2, check["l2"].as_f64().unwrap()) < 0.02, "{name}: l2 {l2} vs {}", check["l2"]);
    }
    trainer.add_trajectory(traj.clone(), DataKind::Agent).unwrap();
    trainer.add_eval_trajectory(traj).unwrap();
    let summary = trainer.run(1, None, |_| true).unwrap();
    let report = summary.last.unwrap();
    assert!((report.loss - loss).abs() < 1e-5 && (report.grad_norm - all).abs() < 1e-6);
    let after = trainer.evaluate().unwrap().loss;
    eprintln!("loss after one step {after} (reference {})", ts["loss_after"]);
    assert!(rel(after, ts["loss_after"].as_f64().unwrap()) < 0.01, "loss after {after}");
    // The step moved the parameters by the reference's update norm.
    let moved = trainer.adapter().unwrap().to_peft().unwrap();
    let start = adapter.to_peft().unwrap();
    let update = moved.tensors.iter().flat_map(|(k, v)| v.data.iter().zip(&start.tensors[k].data).map(|(a, b)| f64::from(a - b).powi(2))).sum::<f64>().sqrt();
    assert!(rel(update, ts["param_update_global_l2_norm"].as_f64().unwrap()) < 0.01, "update norm {update}");
}

#[test]
fn saved_adapters_reload_bit_identically_with_pefts_names_and_config() {
    let g = golden();
    let model = model();
    let adapter = Adapter::load(&model, adapter_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    adapter.save(dir.path()).unwrap();
    let ours = peft::read_adapter(dir.path()).unwrap();
    let theirs = peft::read_adapter(&adapter_dir()).unwrap();
    assert_eq!(ours, theirs, "tensors and config identical after a round trip");
    let want_keys: Vec<&str> = g["adapter"]["all_keys_sorted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ours.tensors.keys().map(String::as_str).collect::<Vec<_>>(), want_keys);
    // The config carries PEFT's fields with the reference's values.
    let cfg: Value = common::json(&dir.path().join("adapter_config.json"));
    let reference: Value = common::json(&adapter_dir().join("adapter_config.json"));
    for (k, v) in cfg.as_object().unwrap() {
        assert!(reference.get(k).is_some(), "field {k} is not one PEFT writes");
        if k != "target_modules" && k != "base_model_name_or_path" && k != "lora_alpha" && k != "lora_dropout" {
            assert_eq!(&reference[k], v, "field {k}");
        }
    }
    assert_eq!(cfg["lora_alpha"].as_f64(), reference["lora_alpha"].as_f64());
    // safetensors header: F32, PEFT's "format": "pt" metadata.
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    // Loading what we saved gives the same logits as the original.
    let again = Adapter::load(&model, dir.path()).unwrap();
    let p = &g["prompts"][1];
    assert_eq!(prompt_logits(&model, Some((adapter, 1.0)), p), prompt_logits(&model, Some((again, 1.0)), p));
}

/// The quantized CPU path applies adapters too (host copies of A and B on every projection): with
/// the PEFT adapter its top-1 matches the reference and the top-10 logits are within the quantized
/// tolerance; merging builds the exact path's f32 weights from the block weights.
#[test]
fn quantized_path_applies_the_adapter() {
    let g = golden();
    let q = Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Quantized, ..LoadOptions::default() }).unwrap();
    assert_eq!(q.precision(), agentlm::Precision::Quantized);
    let adapter = Adapter::load(&q, adapter_dir()).unwrap();
    for p in g["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let on = prompt_logits(&q, Some((adapter.clone(), 1.0)), p);
        let off = prompt_logits(&q, None, p);
        let want = p["lora_last_logits_top10"].as_array().unwrap();
        let top1 = (0..on.len()).max_by(|&a, &b| on[a].total_cmp(&on[b])).unwrap();
        assert_eq!(top1 as u64, want[0]["id"].as_u64().unwrap(), "{name}: top-1 with the adapter");
        let worst = want.iter().map(|w| (on[w["id"].as_u64().unwrap() as usize] - w["logit"].as_f64().unwrap() as f32).abs()).fold(0f32, f32::max);
        assert!(worst <= 0.5, "{name}: quantized path with adapter, top-10 max |Δlogit| {worst}");
        let moved = on.iter().zip(&off).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let reference = p["max_abs_diff_lora_vs_base_full_vocab"].as_f64().unwrap() as f32;
        // Over the whole vocabulary the 8-bit activations add their own error in the far tail, so
        // only check that the adapter is really applied (it moves the logits about as much).
        assert!(moved > 0.5 * reference, "{name}: adapter moves logits by {moved}, reference {reference}");
        eprintln!("{name} [quantized]: with adapter top-10 max |Δ| {worst:.3}, adapter moves logits by {moved:.2} (reference {reference:.2})");
    }
    // Merging on a quantized model yields an exact-path model with the reference's merged logits.
    let merged = q.merged(&adapter, 1.0).unwrap();
    assert_eq!(merged.precision(), agentlm::Precision::Exact);
    let p = &g["prompts"][0];
    assert_top10(&prompt_logits(&merged, None, p), &p["merged_last_logits_top10"], "merged from the quantized model", 1e-2);
}

fn quantized_model() -> Model {
    let m = Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Quantized, ..LoadOptions::default() }).unwrap();
    assert!(m.trains_on_host(), "a quantized GGUF on the CPU trains on the host path");
    m
}

/// The host training path (issue 16: frozen GGUF blocks, int8 activations and transposes) on the same
/// goldens as the exact path, with the tolerances of docs/training.md: masked losses within 2 % of
/// transformers + PEFT on the dequantized weights (measured at most 0.75 %; the int8 activations make
/// these figures move by up to about 1 % with any change in the last bits upstream, and the gradient
/// norms and the loss after the step by up to 2.7 %), one AdamW step's gradient norms within 4 %, per
/// tensor within 6 %, the loss after the step within 4 %.
#[test]
fn host_path_losses_and_one_step_stay_close_to_the_reference() {
    let Some(path) = common::agentinstruct_golden_or_skip("lora::host_path_losses_and_one_step_stay_close_to_the_reference") else { return };
    let g = common::json(&path);
    let model = quantized_model();
    let adapter = Adapter::load(&model, adapter_dir()).unwrap();
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let mut trainer = Trainer::new(&model, reference_config(), Some(&adapter)).unwrap();
    let mut worst = 0f64;
    for t in g["masked_loss"]["trajectories"].as_array().unwrap() {
        let (loss, _) = trainer.loss(&reference_trajectory(t)).unwrap();
        let want = t["lora_loss"].as_f64().unwrap();
        eprintln!("{} host path lora_loss: ours {loss:.6} reference {want:.6} ({:.2e} relative)", t["id"], rel(loss, want));
        worst = worst.max(rel(loss, want));
    }
    assert!(worst < 0.02, "masked losses: worst relative difference {worst}");
    let ts = &g["train_step"];
    let traj = reference_trajectory(&g["masked_loss"]["trajectories"][0]);
    let (loss, grads) = trainer.gradients(&traj).unwrap();
    let norm = |pred: &dyn Fn(&str) -> bool| grads.iter().filter(|(k, _)| pred(k)).flat_map(|(_, v)| v).map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let (all, a, b) = (norm(&|_| true), norm(&|k| k.contains("lora_A")), norm(&|k| k.contains("lora_B")));
    eprintln!(
        "host path: loss {loss} ({:.2e}), grad norm {all} ({:.2e}), A {a} ({:.2e}), B {b} ({:.2e})",
        rel(loss, ts["loss_before"].as_f64().unwrap()),
        rel(all, ts["lora_grad_global_l2_norm"].as_f64().unwrap()),
        rel(a, ts["lora_A_grad_l2_norm"].as_f64().unwrap()),
        rel(b, ts["lora_B_grad_l2_norm"].as_f64().unwrap())
    );
    assert!(rel(all, ts["lora_grad_global_l2_norm"].as_f64().unwrap()) < 0.04, "grad norm {all}");
    assert!(rel(a, ts["lora_A_grad_l2_norm"].as_f64().unwrap()) < 0.04, "A grad norm {a}");
    assert!(rel(b, ts["lora_B_grad_l2_norm"].as_f64().unwrap()) < 0.04, "B grad norm {b}");
    let mut worst_tensor = 0f64;
    for (name, check) in ts["grad_checks_in_memory_names"].as_object().unwrap() {
        let ours = &grads[&name.replace(".default.weight", ".weight")];
        let l2 = ours.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        worst_tensor = worst_tensor.max(rel(l2, check["l2"].as_f64().unwrap()));
    }
    eprintln!("host path: worst per-tensor gradient norm {worst_tensor:.2e} relative");
    assert!(worst_tensor < 0.06, "per-tensor gradient norms: worst {worst_tensor}");
    trainer.add_trajectory(traj.clone(), DataKind::Agent).unwrap();
    trainer.add_eval_trajectory(traj).unwrap();
    trainer.run(1, None, |_| true).unwrap();
    let after = trainer.evaluate().unwrap().loss;
    eprintln!("host path: loss after one step {after} (reference {}, {:.2e})", ts["loss_after"], rel(after, ts["loss_after"].as_f64().unwrap()));
    assert!(rel(after, ts["loss_after"].as_f64().unwrap()) < 0.04, "loss after {after}");
}

/// The host path's gradients point where the exact path's do: per-tensor cosine similarity on a real
/// conversation, both from the same non-trivial adapter (docs/training.md: lowest above 0.95, median
/// above 0.99; the int8 activations and transposes are the difference).
#[test]
fn host_path_gradients_agree_with_the_exact_path() {
    let Some(path) = common::agentinstruct_golden_or_skip("lora::host_path_gradients_agree_with_the_exact_path") else { return };
    let g = common::json(&path);
    let traj = reference_trajectory(&g["masked_loss"]["trajectories"][1]);
    let grads = |m: &Model| {
        let adapter = Adapter::load(m, adapter_dir()).unwrap();
        Trainer::new(m, reference_config(), Some(&adapter)).unwrap().gradients(&traj).unwrap().1
    };
    let (exact, host) = (grads(&model()), grads(&quantized_model()));
    let mut cosines: Vec<(f64, &String)> = exact
        .iter()
        .map(|(name, e)| {
            let h = &host[name];
            let dot: f64 = e.iter().zip(h).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            (dot / (n(e) * n(h)), name)
        })
        .collect();
    cosines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = cosines[cosines.len() / 2].0;
    eprintln!("host vs exact path: per-tensor gradient cosine lowest {:.4} ({}), median {median:.5}, of {}", cosines[0].0, cosines[0].1, cosines.len());
    assert!(cosines[0].0 > 0.95 && median > 0.99, "lowest {:?}, median {median}", cosines[0]);
}
