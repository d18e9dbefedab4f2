//! Agent-FLAN's negative samples, measured (issue 16): does training with them stop the model from
//! calling tools when none fits or the one asked for does not exist, without stopping it from
//! calling the right tool when one does?
//!
//! A ReAct agent with four household tools (`go_to`, `open`, `take`, `look`). Positive examples ask
//! for one of them ("Go to the garage.") and are answered with the call; negatives
//! (`agent::negatives`) ask for arithmetic or spelling, or name a tool that is not registered, and
//! are answered without a call. Held-out requests use other places, objects, numbers, words, request
//! templates and missing tool names. For each condition the agent replies once (greedy) to every
//! held-out request:
//! - **false tool calls**: replies to held-out negatives that call a tool (registered or not);
//! - **right calls**: replies to held-out positives that call the asked-for tool on the asked-for
//!   argument (what the environment would accept).
//!
//! Conditions: the base model; LoRA trained on the positives alone; LoRA trained on the positives
//! with negatives making up `--ratio` of the data (same steps, same seed).
//!
//! ```text
//! cargo run --release --example negatives -- MODEL [--steps 60] [--ratio 0.3] [--eval 30] [--lr 1e-3]
//! ```

use agentlm::agent::negatives::{is_tool_call, negative_samples, negatives_for_ratio, opening_turns, NegativeSplit};
use agentlm::agent::{ActionFormat, Agent, AgentConfig, StepKind, Tool, Trajectory, Turn};
use agentlm::train::{DataKind, TrainConfig, Trainer};
use agentlm::{Adapter, LoadOptions, Model};

const INSTRUCTIONS: &str = "You are a household robot. Use your tools to do what the user asks, one action at a time.";
const TRAIN_PLACES: [&str; 8] = ["kitchen", "garage", "bedroom", "bathroom", "attic", "hallway", "cellar", "porch"];
const HELD_PLACES: [&str; 6] = ["office", "pantry", "laundry room", "balcony", "study", "living room"];
const TRAIN_THINGS: [&str; 8] = ["fridge", "drawer", "cabinet", "box", "closet", "oven", "safe", "chest"];
const HELD_THINGS: [&str; 6] = ["wardrobe", "locker", "crate", "dishwasher", "suitcase", "toolbox"];
const TRAIN_OBJECTS: [&str; 8] = ["mug", "apple", "key", "book", "towel", "spoon", "lamp", "phone"];
const HELD_OBJECTS: [&str; 6] = ["wallet", "pillow", "hammer", "candle", "scarf", "bottle"];

fn tools() -> Vec<Tool> {
    let t = |name: &str, description: &str| Tool { name: name.into(), description: description.into(), parameters: serde_json::Value::Null };
    vec![
        t("go_to", "walk to a room; input: the room"),
        t("open", "open a container or appliance; input: its name"),
        t("take", "pick up an object; input: its name"),
        t("look", "describe what is around; input: nothing"),
    ]
}

/// (request, tool, input) for positive example `i` of a split.
fn positive(i: usize, held: bool) -> (String, &'static str, String) {
    let (places, things, objects) =
        if held { (&HELD_PLACES[..], &HELD_THINGS[..], &HELD_OBJECTS[..]) } else { (&TRAIN_PLACES[..], &TRAIN_THINGS[..], &TRAIN_OBJECTS[..]) };
    let k = i / 4;
    match i % 4 {
        0 => (format!("Go to the {}.", places[k % places.len()]), "go_to", places[k % places.len()].to_string()),
        1 => (format!("Open the {}.", things[k % things.len()]), "open", things[k % things.len()].to_string()),
        2 => (format!("Pick up the {}.", objects[k % objects.len()]), "take", objects[k % objects.len()].to_string()),
        _ => ("What is around you?".to_string(), "look", String::new()),
    }
}

fn positive_trajectory(i: usize) -> Trajectory {
    let (request, tool, input) = positive(i, false);
    let thought = if tool == "look" { "I should look around first.".to_string() } else { format!("I should use {tool} for this.") };
    let mut conversations = opening_turns(ActionFormat::React, INSTRUCTIONS, &tools());
    conversations.push(Turn::new("human", request, None));
    conversations.push(Turn::new("gpt", format!("Thought: {thought}\nAction: {tool}[{input}]"), Some(true)));
    Trajectory { id: Some(format!("positive_{i}")), conversations, reward: Some(1.0), outcome: None }
}

fn config() -> AgentConfig {
    AgentConfig { format: ActionFormat::React, max_tokens_per_step: 64, ..AgentConfig::default() }
}

/// The first reply of an agent to `request`.
fn first_reply(model: &Model, adapter: Option<&Adapter>, request: &str) -> Result<(String, StepKind), Box<dyn std::error::Error>> {
    let mut agent = Agent::new(model, config(), INSTRUCTIONS, request, tools())?;
    if let Some(a) = adapter {
        agent.set_adapter(Some((a.clone(), 1.0)))?;
    }
    let step = agent.step()?;
    Ok((step.text, step.kind))
}

struct Score {
    false_calls: usize,
    negatives: usize,
    right_calls: usize,
    positives: usize,
}

fn measure(model: &Model, adapter: Option<&Adapter>, negatives: &[Trajectory], n_pos: usize, verbose: bool) -> Result<Score, Box<dyn std::error::Error>> {
    let mut s = Score { false_calls: 0, negatives: negatives.len(), right_calls: 0, positives: n_pos };
    for t in negatives {
        let request = &t.conversations[t.conversations.len() - 2].value;
        let (reply, _) = first_reply(model, adapter, request)?;
        let called = is_tool_call(ActionFormat::React, &reply);
        s.false_calls += usize::from(called);
        if verbose {
            eprintln!("negative {request:?} -> {reply:?}{}", if called { "  [FALSE CALL]" } else { "" });
        }
    }
    for i in 0..n_pos {
        let (request, tool, input) = positive(i, true);
        let (reply, kind) = first_reply(model, adapter, &request)?;
        let right = matches!(&kind, StepKind::Action { tool: t, input: x, .. } if t == tool && x.trim().trim_matches('"') == input);
        s.right_calls += usize::from(right);
        if verbose {
            eprintln!("positive {request:?} -> {reply:?}{}", if right { "" } else { "  [WRONG]" });
        }
    }
    Ok(s)
}

fn train(model: &Model, data: &[Trajectory], steps: u64, lr: f32) -> Result<Adapter, Box<dyn std::error::Error>> {
    let config = TrainConfig { learning_rate: lr, max_tokens: 512, seed: 7, ..TrainConfig::default() };
    let mut trainer = Trainer::new(model, config, None)?;
    for t in data {
        trainer.add_trajectory(t.clone(), DataKind::Agent)?;
    }
    let summary = trainer.run(steps, None, |r| {
        eprint!("\r  step {:3}  loss {:.4}  {:.0} tokens/s  ", r.step, r.loss, r.mean_tokens_per_s);
        true
    })?;
    eprintln!();
    eprintln!("  trained {} steps, last loss {:.4}", summary.steps, summary.last.map_or(f64::NAN, |r| r.loss));
    Ok(trainer.adapter()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model_path, mut steps, mut ratio, mut n_eval, mut lr, mut verbose) = (None, 60u64, 0.3f32, 30usize, 1e-3f32, false);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--steps" => steps = val()?.parse()?,
            "--ratio" => ratio = val()?.parse()?,
            "--eval" => n_eval = val()?.parse()?,
            "--lr" => lr = val()?.parse()?,
            "--verbose" => verbose = true,
            _ if model_path.is_none() && !a.starts_with("--") => model_path = Some(a),
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let model = Model::load(model_path.ok_or("usage: negatives MODEL [options]")?, &LoadOptions::default())?;
    let positives: Vec<Trajectory> = (0..64).map(positive_trajectory).collect();
    let n_neg = negatives_for_ratio(positives.len(), ratio)?;
    let train_negatives = negative_samples(ActionFormat::React, INSTRUCTIONS, &tools(), &positives, n_neg, NegativeSplit::Train, 1)?;
    let held_negatives = negative_samples(ActionFormat::React, INSTRUCTIONS, &tools(), &[], n_eval, NegativeSplit::HeldOut, 2)?;
    println!(
        "ReAct agent, tools go_to/open/take/look; {} training positives, {n_neg} training negatives (ratio {ratio}); \
         held out: {n_eval} negatives, {n_eval} positives; {steps} LoRA steps each",
        positives.len()
    );
    let mut rows = Vec::new();
    eprintln!("base model ...");
    rows.push(("base model", measure(&model, None, &held_negatives, n_eval, verbose)?));
    eprintln!("training on positives only ...");
    let plain = train(&model, &positives, steps, lr)?;
    rows.push(("LoRA, positives only", measure(&model, Some(&plain), &held_negatives, n_eval, verbose)?));
    eprintln!("training on positives + negatives ...");
    let mixed: Vec<Trajectory> = positives.iter().cloned().chain(train_negatives).collect();
    let with_neg = train(&model, &mixed, steps, lr)?;
    rows.push(("LoRA, positives + negatives", measure(&model, Some(&with_neg), &held_negatives, n_eval, verbose)?));
    println!("{:<30} {:>28} {:>28}", "condition", "false tool calls (negatives)", "right calls (positives)");
    for (name, s) in rows {
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
        println!(
            "{name:<30} {:>17}/{:<3} {:>5.1}% {:>17}/{:<3} {:>5.1}%",
            s.false_calls,
            s.negatives,
            pct(s.false_calls, s.negatives),
            s.right_calls,
            s.positives,
            pct(s.right_calls, s.positives)
        );
    }
    Ok(())
}
