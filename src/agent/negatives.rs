//! Agent-FLAN's negative samples: conversations in which the right reply calls no tool, built from
//! an agent's tool registry (and the tasks of recorded trajectories), so that training teaches the
//! model not to reach for a tool that does not fit or does not exist.
//!
//! Two kinds, each in the agent's own conversation shape (instructions with the tool list, the
//! acknowledgement, the request, one trained reply):
//! - [`NegativeKind::NoToolFits`]: a self-contained request no registered tool does (arithmetic,
//!   spelling, counting, comparing; the answers are computed, so they are right). The reply answers
//!   directly with the format's final answer.
//! - [`NegativeKind::ToolNotProvided`]: the request names a tool that is not registered ("Use the
//!   weather tool to ..."), or a recorded task prefixed with such an instruction. The reply says the
//!   tool is not available, names the registered ones, and calls nothing.
//!
//! The two [`NegativeSplit`]s draw from disjoint request templates, numbers and missing tool
//! names, so a model trained on one split can be measured on the other ([`is_tool_call`] tells a
//! false call).

use crate::error::{Error, Result};
use crate::generate::Rng;

use super::format::{Action, ActionFormat};
use super::run::head_turns;
use super::tool::Tool;
use super::trajectory::{Trajectory, Turn};

/// Which kind of negative a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegativeKind {
    /// No registered tool does what is asked; the reply answers directly.
    NoToolFits,
    /// The request names a tool that is not registered; the reply declines to call it.
    ToolNotProvided,
}

/// Disjoint halves of the generators: train on one, measure on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegativeSplit {
    /// For training data.
    Train,
    /// For held-out measurement.
    HeldOut,
}

/// Tool names a request may ask for (those registered are skipped); even indices train, odd ones
/// are held out.
const MISSING_TOOLS: [&str; 24] = [
    "weather",
    "calendar",
    "email",
    "translate",
    "stock_price",
    "web_browser",
    "calculator",
    "camera",
    "music_player",
    "maps",
    "news",
    "timer",
    "alarm",
    "dictionary",
    "flight_search",
    "payment",
    "sms",
    "database",
    "image_generator",
    "spreadsheet",
    "file_upload",
    "clock",
    "thermostat",
    "voice_call",
];

/// What the missing tool would be used for, per name above.
const PURPOSES: [&str; 24] = [
    "check tomorrow's forecast",
    "book a meeting on Friday",
    "send a message to my manager",
    "translate 'good morning' into French",
    "get the price of one share",
    "open a news website",
    "compute 1234 divided by 7",
    "take a photo of the room",
    "play some jazz",
    "find the nearest pharmacy",
    "read today's headlines",
    "set a ten minute countdown",
    "wake me at six",
    "look up the word 'ephemeral'",
    "find a flight to Lisbon",
    "pay the electricity bill",
    "text my brother",
    "query last month's orders",
    "draw a red bicycle",
    "sum column B",
    "upload my report",
    "tell the time in Tokyo",
    "set the heating to 21 degrees",
    "call the office",
];

/// The reply's answer when asked to compute something with the first kind of negative.
fn no_tool_request(rng: &mut Rng, split: NegativeSplit) -> (String, String) {
    const WORDS: [&str; 16] = [
        "cabinet", "drawer", "kitchen", "garden", "window", "pencil", "bottle", "basket", "lantern", "blanket", "carpet", "mirror", "ladder", "helmet",
        "candle", "bucket",
    ];
    let held = split == NegativeSplit::HeldOut;
    // Held-out numbers come from another range, held-out words from the other half of the list.
    let num = |rng: &mut Rng| if held { 50 + rng.below(49) } else { 2 + rng.below(47) };
    let word = |rng: &mut Rng| WORDS[2 * rng.below(WORDS.len() / 2) + usize::from(held)];
    let templates: [usize; 3] = if held { [1, 3, 5] } else { [0, 2, 4] };
    match templates[rng.below(3)] {
        0 => {
            let (a, b) = (num(rng), num(rng));
            (format!("What is {a} times {b}?"), (a * b).to_string())
        }
        1 => {
            let (a, b) = (num(rng), num(rng));
            (format!("Please add {a} and {b} for me."), (a + b).to_string())
        }
        2 => {
            let w = word(rng);
            (format!("How many letters are in the word \"{w}\"?"), w.len().to_string())
        }
        3 => {
            let w = word(rng);
            (format!("Spell \"{w}\" backwards."), w.chars().rev().collect())
        }
        4 => {
            let (a, b) = (num(rng), num(rng));
            (format!("Which is larger, {a} or {b}?"), a.max(b).to_string())
        }
        _ => {
            let (a, b) = (word(rng), word(rng));
            let first = if a <= b { a } else { b };
            (format!("Which comes first in alphabetical order: \"{a}\" or \"{b}\"?"), first.to_string())
        }
    }
}

/// The reply that ends the task with `answer` after `thought`, as `format` writes it.
///
/// # Errors
/// A format without a final answer (ALFWorld, WebShop, Mind2Web).
pub fn final_reply(format: ActionFormat, thought: &str, answer: &str) -> Result<String> {
    match format {
        ActionFormat::React | ActionFormat::Kg => Ok(format!("Thought: {thought}\nFinal Answer: {answer}")),
        ActionFormat::Db => Ok(format!("{thought}\nAction: Answer\nFinal Answer: {answer}")),
        ActionFormat::Os => Ok(format!("Think: {thought}\n\nAct: answer({answer})")),
        ActionFormat::Json => Ok(format!("{thought}\n{}", serde_json::json!({"name": "final_answer", "arguments": {"answer": answer}}))),
        ActionFormat::Alfworld | ActionFormat::WebShop | ActionFormat::Mind2Web => {
            Err(Error::InvalidArgument(format!("the {} format has no final answer to reply with", format.name())))
        }
    }
}

/// The turns an agent of `format` told `instructions` with `tools` opens its conversation with (the
/// instructions with the tool list, and its acknowledgement): for writing training examples in the
/// shape the agent sees.
pub fn opening_turns(format: ActionFormat, instructions: &str, tools: &[Tool]) -> Vec<Turn> {
    head_turns(format, instructions, tools)
}

/// Whether `reply` calls a tool (any tool, registered or not) in `format`: the false call a
/// negative sample trains against. A final answer or an unparsable reply is not a call.
pub fn is_tool_call(format: ActionFormat, reply: &str) -> bool {
    matches!(format.parse(reply).action, Ok(Action::Call { .. }))
}

/// The request turns of recorded trajectories: the first human turn after the acknowledgement
/// (or the first human turn when there is none).
fn recorded_tasks(trajectories: &[Trajectory]) -> Vec<String> {
    trajectories
        .iter()
        .filter_map(|t| {
            let c = &t.conversations;
            let after_ack = c.iter().position(|x| x.from == "gpt").map_or(0, |i| i + 1);
            c[after_ack..].iter().find(|x| x.from == "human").or_else(|| c.iter().find(|x| x.from == "human")).map(|x| x.value.clone())
        })
        .filter(|s| !s.trim().is_empty() && s.len() < 600)
        .collect()
}

/// `n` negative samples for an agent of `format` told `instructions` with `tools`, about half of
/// each kind, drawn from `split`; `trajectories` (may be empty) lend their tasks to the second kind.
/// Each is `reward: 1`, its one reply trained on.
///
/// # Errors
/// A format without a final answer; no tools (there is nothing to call falsely).
pub fn negative_samples(
    format: ActionFormat,
    instructions: &str,
    tools: &[Tool],
    trajectories: &[Trajectory],
    n: usize,
    split: NegativeSplit,
    seed: u64,
) -> Result<Vec<Trajectory>> {
    if tools.is_empty() {
        return Err(Error::InvalidArgument("negative samples need the agent's tools".into()));
    }
    final_reply(format, "", "")?;
    let registered: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    let missing: Vec<usize> = (0..MISSING_TOOLS.len())
        .filter(|i| i % 2 == usize::from(split == NegativeSplit::HeldOut))
        .filter(|&i| !registered.iter().any(|r| r.eq_ignore_ascii_case(MISSING_TOOLS[i])))
        .collect();
    let tasks = recorded_tasks(trajectories);
    let names = registered.join(", ");
    let mut rng = Rng::new(seed ^ 0xF1A4 ^ u64::from(split == NegativeSplit::HeldOut));
    let head = head_turns(format, instructions, tools);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (kind, request, reply) = if i % 2 == 0 || missing.is_empty() {
            let (request, answer) = no_tool_request(&mut rng, split);
            (NegativeKind::NoToolFits, request, final_reply(format, "None of my tools is needed for this; I can answer it myself.", &answer)?)
        } else {
            let m = missing[rng.below(missing.len())];
            let tool = MISSING_TOOLS[m];
            let request = match tasks.len() {
                len if len > 0 && rng.below(2) == 0 => format!("Use the {tool} tool first. {}", tasks[rng.below(len)]),
                _ => format!("Use the {tool} tool to {}.", PURPOSES[m]),
            };
            let thought = format!("There is no {tool} tool among my tools, so I will not call it.");
            let answer = format!("I cannot do that: I have no {tool} tool. The tools I have are: {names}.");
            (NegativeKind::ToolNotProvided, request, final_reply(format, &thought, &answer)?)
        };
        let mut conversations = head.clone();
        conversations.push(Turn::new("human", request, None));
        conversations.push(Turn::new("gpt", reply, Some(true)));
        let kind = match kind {
            NegativeKind::NoToolFits => "no_tool_fits",
            NegativeKind::ToolNotProvided => "tool_not_provided",
        };
        out.push(Trajectory { id: Some(format!("negative_{kind}_{i}")), conversations, reward: Some(1.0), outcome: Some(kind.into()) });
    }
    Ok(out)
}

/// How many negatives make them `ratio` of a pool that holds `positives` other examples
/// (`ratio` in `[0, 1)`).
///
/// # Errors
/// `ratio` outside `[0, 1)`.
pub fn negatives_for_ratio(positives: usize, ratio: f32) -> Result<usize> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(Error::InvalidArgument(format!("negative ratio {ratio} is outside [0, 1)")));
    }
    Ok((positives as f64 * f64::from(ratio) / (1.0 - f64::from(ratio))).round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Tool> {
        ["go_to", "open", "take", "look"]
            .iter()
            .map(|n| Tool { name: n.to_string(), description: format!("{n} something"), parameters: serde_json::Value::Null })
            .collect()
    }

    #[test]
    fn negatives_answer_without_calling_and_splits_are_disjoint() {
        let recorded = Trajectory {
            id: None,
            conversations: vec![Turn::new("human", "Rules.", None), Turn::new("gpt", "OK.", Some(false)), Turn::new("human", "Find the mug.", None)],
            reward: Some(1.0),
            outcome: None,
        };
        for format in [ActionFormat::React, ActionFormat::Json, ActionFormat::Db, ActionFormat::Os, ActionFormat::Kg] {
            let train = negative_samples(format, "Help the user.", &tools(), std::slice::from_ref(&recorded), 40, NegativeSplit::Train, 1).unwrap();
            let held = negative_samples(format, "Help the user.", &tools(), &[], 40, NegativeSplit::HeldOut, 1).unwrap();
            assert_eq!(train.len(), 40);
            let request = |t: &Trajectory| t.conversations[t.conversations.len() - 2].value.clone();
            for t in train.iter().chain(&held) {
                let reply = &t.conversations.last().unwrap().value;
                assert!(!is_tool_call(format, reply), "{format:?}: {reply}");
                assert!(matches!(format.parse(reply).action, Ok(Action::Finish { .. })), "{format:?}: {reply}");
                assert_eq!(t.conversations.last().unwrap().loss, Some(true));
                assert!(t.conversations[0].value.contains("go_to"), "the tool list is in the instructions");
            }
            // Both kinds appear; the missing tools of the two splits never overlap, nor the requests.
            assert!(train.iter().any(|t| t.outcome.as_deref() == Some("tool_not_provided")));
            assert!(train.iter().any(|t| request(t).contains("Find the mug.")), "recorded tasks are used");
            let names = |v: &[Trajectory]| -> std::collections::BTreeSet<String> {
                v.iter().filter_map(|t| request(t).split(" tool").next().and_then(|s| s.strip_prefix("Use the ")).map(str::to_string)).collect()
            };
            assert!(names(&train).is_disjoint(&names(&held)), "{:?} {:?}", names(&train), names(&held));
            let (tr, he): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
                (train.iter().map(request).collect(), held.iter().map(request).collect());
            assert!(tr.is_disjoint(&he));
        }
        // Computed answers are right.
        let t = negative_samples(ActionFormat::React, "", &tools(), &[], 60, NegativeSplit::Train, 3).unwrap();
        for t in t.iter().filter(|t| t.outcome.as_deref() == Some("no_tool_fits")) {
            let (q, r) = (&t.conversations[t.conversations.len() - 2].value, &t.conversations.last().unwrap().value);
            let answer = r.rsplit("Final Answer: ").next().unwrap();
            if let Some(rest) = q.strip_prefix("What is ") {
                let (a, b) = rest.trim_end_matches('?').split_once(" times ").unwrap();
                assert_eq!(answer, (a.parse::<usize>().unwrap() * b.parse::<usize>().unwrap()).to_string());
            }
        }
        assert!(negative_samples(ActionFormat::Alfworld, "", &tools(), &[], 2, NegativeSplit::Train, 0).is_err());
        assert!(negative_samples(ActionFormat::React, "", &[], &[], 2, NegativeSplit::Train, 0).is_err());
        assert_eq!(negatives_for_ratio(80, 0.2).unwrap(), 20);
        assert!(negatives_for_ratio(80, 1.0).is_err());
    }

    #[test]
    fn tool_calls_are_told_from_answers() {
        assert!(is_tool_call(ActionFormat::React, "Thought: x\nAction: go_to[kitchen]"));
        assert!(is_tool_call(ActionFormat::React, "Thought: x\nAction: weather[today]"));
        assert!(!is_tool_call(ActionFormat::React, "Thought: x\nFinal Answer: 42"));
        assert!(is_tool_call(ActionFormat::Json, r#"{"name": "open", "arguments": {}}"#));
        assert!(!is_tool_call(ActionFormat::Json, r#"{"name": "final_answer", "arguments": {"answer": "7"}}"#));
    }
}
