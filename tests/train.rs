//! The incremental trainer on the real SmolLM2 model with short conversations: it learns, it is
//! reproducible, a resumed run continues exactly, cancellation and budgets stop it cleanly, data is
//! filtered by reward and malformed lines are reported by number.

mod common;

use agentlm::train::{DataKind, RunStop, TrainConfig, Trainer};
use agentlm::{Adapter, LoadOptions, LoraConfig, Model};

fn model() -> Model {
    Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Exact, ..LoadOptions::default() }).unwrap()
}

fn record(q: &str, a: &str, reward: f64) -> String {
    serde_json::json!({
        "id": q,
        "reward": reward,
        "conversations": [
            {"from": "human", "value": q, "loss": null},
            {"from": "gpt", "value": a, "loss": true},
        ]
    })
    .to_string()
}

fn config() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()], ..LoraConfig::default() },
        learning_rate: 2e-3,
        warmup_steps: 1,
        total_steps: 8,
        grad_accum: 2,
        max_tokens: 96,
        agent_ratio: 0.5,
        seed: 7,
        ..TrainConfig::default()
    }
}

fn fill(t: &mut Trainer, dir: &std::path::Path) {
    let lines: Vec<String> = (0..4)
        .map(|i| record(&format!("You are in room {i}. Go to the door."), &format!("THOUGHT: the door is north.\nACTION: go to door {i}"), 1.0))
        .collect();
    let path = dir.join("agent.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    assert_eq!(t.add_jsonl_file(&path, DataKind::Agent).unwrap().added, 4);
    for i in 0..3 {
        assert!(t.add_json(&record(&format!("What is {i} plus {i}?"), &format!("{} .", 2 * i), 1.0), DataKind::General).unwrap());
    }
    t.add_eval_trajectory(
        agentlm::train::parse_record(&record("You are in room 9. Go to the door.", "THOUGHT: the door is north.\nACTION: go to door 9", 1.0)).unwrap(),
    )
    .unwrap();
}

fn params(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.adapter().unwrap().to_peft().unwrap().tensors.into_iter().map(|(k, v)| (k, v.data)).collect()
}

#[test]
fn training_lowers_the_held_out_loss_and_is_reproducible() {
    lowers_the_held_out_loss_and_is_reproducible(model());
}

/// The same on the host path (issue 16): frozen GGUF blocks, no f32 copy of the base.
#[test]
fn host_path_training_lowers_the_held_out_loss_and_is_reproducible() {
    let model = Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Quantized, ..LoadOptions::default() }).unwrap();
    assert!(model.trains_on_host());
    lowers_the_held_out_loss_and_is_reproducible(model);
}

fn lowers_the_held_out_loss_and_is_reproducible(model: Model) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(&model, config(), None).unwrap();
    fill(&mut a, dir.path());
    let before = a.evaluate().unwrap().loss;
    let mut reports = Vec::new();
    let s = a
        .run(6, None, |r| {
            reports.push(r.clone());
            true
        })
        .unwrap();
    assert_eq!((s.steps, s.stop), (6, RunStop::Steps));
    let after = a.evaluate().unwrap().loss;
    eprintln!("held-out loss {before:.4} -> {after:.4}; steps: {reports:?}");
    assert!(after < before * 0.8, "{before} -> {after}");
    assert!(reports.iter().all(|r| r.tokens > 0 && r.loss_tokens > 0 && r.tokens_per_s > 0.0 && r.grad_norm > 0.0));
    // Progress for long work: the call's mean speed, time so far, a shrinking ETA, peak memory.
    assert!(reports.iter().all(|r| r.mean_tokens_per_s > 0.0 && r.peak_rss > 1 << 20));
    assert!(reports.windows(2).all(|w| w[1].elapsed > w[0].elapsed && w[1].peak_rss >= w[0].peak_rss));
    assert!(reports[0].eta > std::time::Duration::ZERO && reports[5].eta == std::time::Duration::ZERO);
    assert!(reports[0].lr < reports[1].lr, "warm-up");
    // Same seed, same data: bit-identical parameters.
    let mut b = Trainer::new(&model, config(), None).unwrap();
    fill(&mut b, dir.path());
    b.run(6, None, |_| true).unwrap();
    assert_eq!(params(&a), params(&b));
}

#[test]
fn a_resumed_run_continues_exactly_and_survives_an_interrupted_swap() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let mut straight = Trainer::new(&model, config(), None).unwrap();
    fill(&mut straight, dir.path());
    straight.run(4, None, |_| true).unwrap();

    let mut first = Trainer::new(&model, config(), None).unwrap();
    fill(&mut first, dir.path());
    first.run(2, None, |_| true).unwrap();
    let ckpt = dir.path().join("ckpt");
    first.checkpoint(&ckpt).unwrap();
    first.checkpoint(&ckpt).unwrap(); // overwriting a checkpoint works
    drop(first);
    let mut resumed = Trainer::resume(&model, &ckpt).unwrap();
    assert_eq!(resumed.step(), 2);
    assert_eq!((resumed.examples(DataKind::Agent), resumed.examples(DataKind::General), resumed.eval_examples()), (4, 3, 1));
    resumed.run(2, None, |_| true).unwrap();
    assert_eq!(resumed.step(), 4);
    assert_eq!(params(&straight), params(&resumed));

    // A crash between the two renames of a checkpoint leaves `ckpt.old`; resume finds it.
    let old = dir.path().join("ckpt.old");
    std::fs::rename(&ckpt, &old).unwrap();
    std::fs::create_dir_all(dir.path().join("ckpt.tmp")).unwrap();
    assert_eq!(Trainer::resume(&model, &ckpt).unwrap().step(), 2);
    // A damaged checkpoint is an error, not a panic.
    std::fs::write(old.join("trainer_state.json"), "{").unwrap();
    assert!(matches!(Trainer::resume(&model, &ckpt), Err(agentlm::Error::State(_))));
}

#[test]
fn cancellation_budgets_and_callbacks_stop_cleanly() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model, config(), None).unwrap();
    fill(&mut t, dir.path());
    let start = params(&t);
    t.cancel_token().cancel();
    let s = t.run(3, None, |_| true).unwrap();
    assert_eq!((s.steps, s.stop), (0, RunStop::Cancelled));
    assert_eq!(params(&t), start, "a cancelled step changes nothing");
    let s = t.run(3, Some(std::time::Duration::ZERO), |_| true).unwrap();
    assert_eq!((s.steps, s.stop), (0, RunStop::TimeBudget));
    let s = t.run(3, None, |r| r.step < 1).unwrap();
    assert_eq!((s.steps, s.stop), (1, RunStop::Callback));
    // Cancelled mid-run from another thread: stops at the next example, the step count is consistent.
    let token = t.cancel_token();
    let s = t
        .run(100, None, move |r| {
            if r.step == 2 {
                token.cancel();
            }
            true
        })
        .unwrap();
    assert_eq!((s.steps, s.stop, t.step()), (1, RunStop::Cancelled, 2));
}

#[test]
fn data_is_filtered_by_reward_and_bad_lines_are_named() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model, config(), None).unwrap();
    assert!(!t.add_json(&record("q", "a", 0.0), DataKind::Agent).unwrap());
    assert!(t.add_json(&record("q", "a", 1.0), DataKind::Agent).unwrap());
    let path = dir.path().join("mixed.jsonl");
    std::fs::write(&path, [record("a", "b", 1.0), record("c", "d", 0.5), String::new(), record("e", "f", 1.0)].join("\n")).unwrap();
    let r = t.add_jsonl_file(&path, DataKind::Agent).unwrap();
    assert_eq!((r.added, r.below_reward), (2, 1));
    assert_eq!(t.examples(DataKind::Agent), 3);
    std::fs::write(&path, format!("{}\n{{\"conversations\": [{{\"from\": \"gpt\"}}]}}\n", record("a", "b", 1.0))).unwrap();
    let e = t.add_jsonl_file(&path, DataKind::Agent).unwrap_err().to_string();
    assert!(e.contains("mixed.jsonl:2:"), "{e}");
    assert_eq!(t.examples(DataKind::Agent), 3, "nothing added from a bad file");
    // Nothing to learn from: no assistant turn marked for loss.
    let none = r#"{"conversations":[{"from":"human","value":"hi","loss":null},{"from":"gpt","value":"x","loss":false}]}"#;
    assert!(t.add_json(none, DataKind::Agent).unwrap_err().to_string().contains("no trained token"));
    // In a file such a record is skipped and counted, the others are added.
    std::fs::write(&path, [record("a", "b", 1.0), none.to_string()].join("\n")).unwrap();
    let r = t.add_jsonl_file(&path, DataKind::Agent).unwrap();
    assert_eq!((r.added, r.below_reward, r.no_loss), (1, 0, 1));
    // No data: a clear error, not a panic.
    let mut empty = Trainer::new(&model, config(), None).unwrap();
    assert!(empty.run(1, None, |_| true).unwrap_err().to_string().contains("no training examples"));
    assert!(empty.evaluate().unwrap_err().to_string().contains("no held-out"));
}

#[test]
fn a_trained_adapter_hot_swaps_into_a_live_session() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model, config(), None).unwrap();
    fill(&mut t, dir.path());
    // Freshly initialised (B = 0): attaching it changes nothing.
    let fresh = t.adapter().unwrap();
    let mut s = model.session(None);
    s.append_text("You are in room 3. Go to the door.").unwrap();
    let base = s.logits().unwrap().to_vec();
    s.set_adapter(Some((fresh, 1.0))).unwrap();
    assert_eq!(s.logits().unwrap(), &base[..]);
    t.run(4, None, |_| true).unwrap();
    let trained = t.adapter().unwrap();
    s.set_adapter(Some((trained.clone(), 1.0))).unwrap();
    let tuned = s.logits().unwrap().to_vec();
    assert!(tuned.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3));
    // Scale 0 is the base model; saving and loading keeps the trained weights exactly.
    s.set_adapter(Some((trained.clone(), 0.0))).unwrap();
    assert_eq!(s.logits().unwrap(), &base[..]);
    t.save_adapter(dir.path().join("a")).unwrap();
    let loaded = Adapter::load(&model, dir.path().join("a")).unwrap();
    assert_eq!(loaded.to_peft().unwrap(), trained.to_peft().unwrap());
    // An adapter for a model of another shape is refused.
    let other =
        Model::load(common::model_path(), &LoadOptions { max_context: Some(64), precision: agentlm::Precision::Exact, ..LoadOptions::default() }).unwrap();
    assert!(other.session(None).set_adapter(Some((loaded, 1.0))).is_ok(), "same shape: allowed");
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients_and_dropout_changes_them() {
    let model = model();
    let t = agentlm::train::parse_record(&record("You are in room 2. Go to the door.", "THOUGHT: north.\nACTION: go to door 2", 1.0)).unwrap();
    let mut cfg = config();
    // Fresh adapters have B = 0: A's gradients are zero, B's are not; both are compared.
    let base = Trainer::new(&model, cfg.clone(), None).unwrap();
    let (loss, plain) = base.gradients(&t).unwrap();
    cfg.gradient_checkpointing = true;
    let ckpt = Trainer::new(&model, cfg.clone(), None).unwrap();
    let (loss_ckpt, with_ckpt) = ckpt.gradients(&t).unwrap();
    assert!((loss - loss_ckpt).abs() < 1e-6, "{loss} vs {loss_ckpt}");
    for (k, g) in &plain {
        let d = g.iter().zip(&with_ckpt[k]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "{k}: {d}");
    }
    cfg.gradient_checkpointing = false;
    cfg.lora.dropout = 0.5;
    let drop = Trainer::new(&model, cfg, None).unwrap();
    let (loss_drop, with_drop) = drop.gradients(&t).unwrap();
    let moved = plain.iter().any(|(k, g)| g.iter().zip(&with_drop[k]).any(|(a, b)| (a - b).abs() > 1e-6));
    assert!(moved && loss_drop.is_finite(), "dropout on the adapters' input changes the gradients");
}

/// A model loaded for the quantized CPU path trains on f32 weights rebuilt from its block weights,
/// which are bit-identical to the exact path's: the same data gives the same loss. The trained
/// adapter then runs on the quantized path in a live session.
#[test]
fn a_quantized_path_model_trains_on_its_blocks_and_serves_the_adapter() {
    let exact = model();
    let q = Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Quantized, ..LoadOptions::default() }).unwrap();
    assert!(q.trains_on_host() && !exact.trains_on_host());
    let dir = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(&exact, config(), None).unwrap();
    fill(&mut a, dir.path());
    let mut b = Trainer::new(&q, config(), None).unwrap();
    fill(&mut b, dir.path());
    // The host path's int8 activations against the exact path's f32: close, not identical.
    let (la, lb) = (a.evaluate().unwrap().loss, b.evaluate().unwrap().loss);
    assert!((la - lb).abs() / la < 0.03, "held-out loss {la} (exact) vs {lb} (host path)");
    assert_eq!(q.training_bytes(), 0, "no transposed weights before the first backward pass");
    b.run(3, None, |_| true).unwrap();
    assert!(q.training_bytes() > 0, "the trainer holds the transposed weights");
    let mut s = q.session(None);
    s.append_text("You are in room 3. Go to the door.").unwrap();
    let base = s.logits().unwrap().to_vec();
    s.set_adapter(Some((b.adapter().unwrap(), 1.0))).unwrap();
    let tuned = s.logits().unwrap().to_vec();
    assert!(tuned.iter().zip(&base).any(|(x, y)| (x - y).abs() > 1e-3), "the trained adapter changes the quantized path's logits");
    drop(b);
    assert_eq!(q.training_bytes(), 0, "the transposed weights go with the last trainer");
}

/// `Trainer::upcoming` names the examples in the order `run` draws them, across an epoch boundary:
/// each step's loss is the loss of the example it named, before the update.
#[test]
fn upcoming_names_the_examples_in_the_order_they_are_drawn() {
    let model = Model::load(common::model_path(), &LoadOptions { precision: agentlm::Precision::Quantized, ..LoadOptions::default() }).unwrap();
    let cfg = TrainConfig { grad_accum: 1, agent_ratio: 1.0, lora: LoraConfig { dropout: 0.0, ..config().lora }, ..config() };
    let mut t = Trainer::new(&model, cfg, None).unwrap();
    let rows: Vec<_> = (0..4)
        .map(|i| {
            agentlm::train::parse_record(&record(
                &format!("You are in room {i}. Find the key {i}."),
                &format!("THOUGHT: look around.\nACTION: open drawer {}", 3 * i + 1),
                1.0,
            ))
            .unwrap()
        })
        .collect();
    for r in &rows {
        assert!(t.add_trajectory(r.clone(), DataKind::Agent).unwrap());
    }
    let first = t.upcoming(DataKind::Agent);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2, 3]);
    for step in 0..6 {
        let order = t.upcoming(DataKind::Agent);
        assert_eq!(order.len(), if step < 4 { 4 - step } else { 8 - step }, "step {step}: {order:?}");
        let (want, _) = t.loss(&rows[order[0]]).unwrap();
        let got = t.run(1, None, |_| true).unwrap().last.unwrap().loss;
        assert!((got - want).abs() <= 1e-9 * want, "step {step}: the step's loss {got} is not example {}'s {want}", order[0]);
    }
}
