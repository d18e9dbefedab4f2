//! Action formats: how each agent task family writes a step, parsed with the tolerances of the
//! AgentBench / AgentTuning reference parsers (the last action in a reply wins; a reply without one is
//! an invalid action the environment answers with feedback).

use serde_json::Value;

/// What a reply asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Call `tool` with `input` (text; JSON text for JSON tool calls).
    Call {
        /// Tool (or environment verb) name.
        tool: String,
        /// Its input, as written.
        input: String,
    },
    /// The task is done; `answer` may be empty (e.g. OS `Act: finish`).
    Finish {
        /// The final answer.
        answer: String,
    },
}

/// A parsed reply: its thought (if any) and its action, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    /// The reasoning text (`THOUGHT:` / `Think:` / `Thought:` lines), joined with newlines.
    pub thought: Option<String>,
    /// The action, or the reason the reply is not a valid action.
    pub action: Result<Action, String>,
}

/// An action format (one per task family of AgentBench / AgentInstruct, plus generic ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionFormat {
    /// ALFWorld: `THOUGHT: ...` then `ACTION: go to countertop 1` (verb + arguments).
    Alfworld,
    /// AgentBench OS: `Think: ...`, `Act: bash` + a fenced ```` ```bash ```` block, `Act: finish`,
    /// `Act: answer(...)`.
    Os,
    /// AgentBench DB: `Action: Operation` + a fenced ```` ```sql ```` block, or `Action: Answer` +
    /// `Final Answer: ...`.
    Db,
    /// WebShop: `Action: search[...]` / `Action: click[...]`.
    WebShop,
    /// Knowledge graph: `Action: get_relations(#0)` style calls, `Final Answer: #3`.
    Kg,
    /// Mind2Web: `Answer: B`, `Action: CLICK|TYPE|SELECT`, `Value: ...`.
    Mind2Web,
    /// Classic ReAct: `Thought: ...`, `Action: tool[input]` (or `Action: tool` + `Action Input: ...`),
    /// `Final Answer: ...`.
    React,
    /// JSON tool calls: `{"name": ..., "arguments": {...}}`, optionally fenced or in `<tool_call>` tags;
    /// `{"name": "final_answer", ...}` or `Final Answer:` ends the task.
    Json,
}

/// ALFWorld's action verbs (longest first where one is a prefix of another).
pub const ALFWORLD_VERBS: &[&str] = &["go to", "take", "put", "open", "close", "toggle", "clean", "heat", "cool", "use", "examine", "inventory", "look"];

impl ActionFormat {
    /// Every format, in declaration order.
    pub const ALL: [ActionFormat; 8] = [
        ActionFormat::Alfworld,
        ActionFormat::Os,
        ActionFormat::Db,
        ActionFormat::WebShop,
        ActionFormat::Kg,
        ActionFormat::Mind2Web,
        ActionFormat::React,
        ActionFormat::Json,
    ];

    /// By name: `alfworld`, `os`, `db`, `webshop`, `kg`, `mind2web`, `react`, `json`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "alfworld" => ActionFormat::Alfworld,
            "os" => ActionFormat::Os,
            "db" => ActionFormat::Db,
            "webshop" => ActionFormat::WebShop,
            "kg" => ActionFormat::Kg,
            "mind2web" => ActionFormat::Mind2Web,
            "react" => ActionFormat::React,
            "json" => ActionFormat::Json,
            _ => return None,
        })
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            ActionFormat::Alfworld => "alfworld",
            ActionFormat::Os => "os",
            ActionFormat::Db => "db",
            ActionFormat::WebShop => "webshop",
            ActionFormat::Kg => "kg",
            ActionFormat::Mind2Web => "mind2web",
            ActionFormat::React => "react",
            ActionFormat::Json => "json",
        }
    }

    /// Text after which a reply is complete (besides the chat turn end): generation stops there.
    pub fn stop_sequences(self) -> &'static [&'static str] {
        match self {
            ActionFormat::React => &["\nObservation:", "\nObservation"],
            _ => &[],
        }
    }

    /// Parses a model reply.
    pub fn parse(self, reply: &str) -> ParsedReply {
        match self {
            ActionFormat::Alfworld => parse_alfworld(reply),
            ActionFormat::Os => parse_os(reply),
            ActionFormat::Db => parse_db(reply),
            ActionFormat::WebShop => parse_webshop(reply),
            ActionFormat::Kg => parse_kg(reply),
            ActionFormat::Mind2Web => parse_mind2web(reply),
            ActionFormat::React => parse_react(reply),
            ActionFormat::Json => parse_json(reply),
        }
    }

    /// The environment's answer to an invalid action (what the reference environments reply).
    pub fn invalid_feedback(self, reason: &str) -> String {
        match self {
            ActionFormat::Alfworld => "Nothing happened.".to_string(),
            _ => format!("Invalid action: {reason}. Follow the required format."),
        }
    }
}

/// Values of every line starting with `key` (after optional spaces), in order.
fn lines_with<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.trim_start().strip_prefix(key)).map(str::trim).collect()
}

fn thought(text: &str, key: &str) -> Option<String> {
    let t = lines_with(text, key);
    (!t.is_empty()).then(|| t.join("\n"))
}

fn parse_alfworld(reply: &str) -> ParsedReply {
    let thought = thought(reply, "THOUGHT:");
    // The reference takes what follows the last "ACTION:" on its line.
    let action = match reply.rfind("ACTION:") {
        None => Err("no ACTION: line".to_string()),
        Some(at) => {
            let line = reply[at + "ACTION:".len()..].lines().next().unwrap_or("").trim();
            if line.is_empty() {
                Err("empty ACTION".to_string())
            } else {
                let (tool, input) = split_verb(line, ALFWORLD_VERBS);
                Ok(Action::Call { tool, input })
            }
        }
    };
    ParsedReply { thought, action }
}

/// Splits `go to countertop 1` into the verb (longest known prefix, else the first word) and the rest.
pub(crate) fn split_verb(line: &str, verbs: &[&str]) -> (String, String) {
    let best = verbs.iter().filter(|v| line == **v || line.strip_prefix(**v).is_some_and(|r| r.starts_with(' '))).max_by_key(|v| v.len());
    match best {
        Some(v) => (v.to_string(), line[v.len()..].trim().to_string()),
        None => match line.split_once(' ') {
            Some((a, b)) => (a.to_string(), b.trim().to_string()),
            None => (line.to_string(), String::new()),
        },
    }
}

/// The contents of every fenced block opened with ```` ```lang ````.
fn fenced(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&open) {
        let body = &rest[i + open.len()..];
        match body.find("\n```") {
            Some(j) => {
                out.push(body[..j].to_string());
                rest = &body[j + 4..];
            }
            None => break,
        }
    }
    out
}

fn parse_os(reply: &str) -> ParsedReply {
    let thought = thought(reply, "Think:");
    let acts = lines_with(reply, "Act:");
    let mut action = Err("no Act: line".to_string());
    for act in acts.iter().rev() {
        let lower = act.to_ascii_lowercase();
        if lower.starts_with("bash") {
            let code = fenced(reply, "bash").join("\n\n");
            action = if code.is_empty() { Err("Act: bash without a ```bash block".to_string()) } else { Ok(Action::Call { tool: "bash".into(), input: code }) };
            break;
        }
        if lower.starts_with("finish") {
            action = Ok(Action::Finish { answer: String::new() });
            break;
        }
        if lower.starts_with("answer") {
            let content = &act[6..];
            if let (Some(l), Some(r)) = (content.find('('), content.rfind(')')) {
                if l < r {
                    action = Ok(Action::Finish { answer: content[l + 1..r].to_string() });
                    break;
                }
            }
        }
    }
    ParsedReply { thought, action }
}

fn parse_db(reply: &str) -> ParsedReply {
    let action = if reply.contains("Action: Operation") {
        match fenced(reply, "sql").into_iter().next() {
            // The reference runs the first block, with its lines joined by spaces.
            Some(sql) => Ok(Action::Call { tool: "sql".into(), input: sql.lines().map(str::trim).collect::<Vec<_>>().join(" ") }),
            None => Err("Action: Operation without a ```sql block".to_string()),
        }
    } else if reply.contains("Action: Answer") {
        match lines_with(reply, "Final Answer:").last() {
            Some(a) => Ok(Action::Finish { answer: a.to_string() }),
            None => Err("Action: Answer without Final Answer:".to_string()),
        }
    } else {
        Err("no Action: Operation or Action: Answer".to_string())
    };
    let before = reply.find("Action:").map_or(reply, |i| &reply[..i]).trim();
    ParsedReply { thought: (!before.is_empty()).then(|| before.to_string()), action }
}

/// `name[arg]` → (name, arg).
fn bracket_call(s: &str) -> Option<(String, String)> {
    let l = s.find('[')?;
    let r = s.rfind(']')?;
    (l < r && l > 0).then(|| (s[..l].trim().to_string(), s[l + 1..r].to_string()))
}

fn parse_webshop(reply: &str) -> ParsedReply {
    let thought = thought(reply, "Thought:");
    let action = match lines_with(reply, "Action:").last() {
        None => Err("no Action: line".to_string()),
        Some(a) => match bracket_call(a) {
            Some((tool, input)) if tool == "search" || tool == "click" => Ok(Action::Call { tool, input }),
            Some((tool, _)) => Err(format!("unknown action {tool:?} (search[...] or click[...])")),
            None => Err(format!("{a:?} is not search[...] or click[...]")),
        },
    };
    ParsedReply { thought, action }
}

/// The functions of the AgentBench knowledge-graph task.
pub const KG_FUNCTIONS: &[&str] = &["get_relations", "get_neighbors", "intersection", "get_attributes", "argmax", "argmin", "count"];

fn parse_kg(reply: &str) -> ParsedReply {
    let thought = thought(reply, "Thought:");
    if let Some(ans) = lines_with(reply, "Final Answer:").last() {
        return ParsedReply { thought, action: Ok(Action::Finish { answer: ans.to_string() }) };
    }
    let action = match lines_with(reply, "Action:").last() {
        None => Err("no Action: or Final Answer: line".to_string()),
        Some(a) => {
            let (l, r) = (a.find('('), a.rfind(')'));
            match (l, r) {
                (Some(l), Some(r)) if l < r && l > 0 => {
                    let tool = a[..l].trim().to_string();
                    if KG_FUNCTIONS.contains(&tool.as_str()) {
                        Ok(Action::Call { tool, input: a[l + 1..r].trim().to_string() })
                    } else {
                        Err(format!("unknown function {tool:?}"))
                    }
                }
                _ => Err(format!("{a:?} is not a function call")),
            }
        }
    };
    ParsedReply { thought, action }
}

fn parse_mind2web(reply: &str) -> ParsedReply {
    let choice = lines_with(reply, "Answer:").last().map(|s| s.to_string());
    let op = lines_with(reply, "Action:").last().map(|s| s.to_ascii_uppercase());
    let value = lines_with(reply, "Value:").last().map(|s| s.to_string());
    let thought = reply.find("Answer:").map(|i| reply[..i].trim().to_string()).filter(|t| !t.is_empty());
    let action = match (choice, op) {
        (Some(c), _) if c.trim_end_matches('.').trim().eq_ignore_ascii_case("A") || c.to_ascii_lowercase().starts_with("none") => {
            Ok(Action::Finish { answer: String::new() })
        }
        (Some(c), Some(op)) if ["CLICK", "TYPE", "SELECT"].contains(&op.as_str()) => {
            let element = c.trim_end_matches('.').trim().to_string();
            let input = match value {
                Some(v) if op != "CLICK" => format!("{element}\n{v}"),
                _ => element,
            };
            Ok(Action::Call { tool: op, input })
        }
        (Some(_), Some(op)) => Err(format!("unknown operation {op:?} (CLICK, TYPE or SELECT)")),
        (Some(_), None) => Err("no Action: line".to_string()),
        (None, _) => Err("no Answer: line".to_string()),
    };
    ParsedReply { thought, action }
}

fn parse_react(reply: &str) -> ParsedReply {
    let thought = thought(reply, "Thought:");
    let final_at = reply.rfind("Final Answer:");
    let action_at = reply.rfind("Action:");
    if let Some(f) = final_at {
        if action_at.is_none_or(|a| a < f) {
            let answer = reply[f + "Final Answer:".len()..].trim().to_string();
            return ParsedReply { thought, action: Ok(Action::Finish { answer }) };
        }
    }
    let action = match lines_with(reply, "Action:").last() {
        None => Err("no Action: or Final Answer:".to_string()),
        Some(a) => match bracket_call(a) {
            Some((tool, input)) => Ok(Action::Call { tool, input }),
            None if !a.is_empty() => {
                // LangChain style: `Action: tool` then `Action Input: ...`.
                let input = lines_with(reply, "Action Input:").last().map(|s| s.to_string()).unwrap_or_default();
                Ok(Action::Call { tool: a.to_string(), input })
            }
            None => Err("empty Action:".to_string()),
        },
    };
    ParsedReply { thought, action }
}

/// The first balanced `{...}` object in `s` that parses as JSON.
fn first_json_object(s: &str) -> Option<(usize, Value)> {
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(off) = s[start..].find('{') {
        let i = start + off;
        let (mut depth, mut in_str, mut esc) = (0i32, false, false);
        for (j, &b) in bytes.iter().enumerate().skip(i) {
            if in_str {
                match (esc, b) {
                    (true, _) => esc = false,
                    (false, b'\\') => esc = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Ok(v) = serde_json::from_str::<Value>(&s[i..=j]) {
                            if v.is_object() {
                                return Some((i, v));
                            }
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
        start = i + 1;
    }
    None
}

fn parse_json(reply: &str) -> ParsedReply {
    let (thought, action) = match first_json_object(reply) {
        Some((at, v)) => {
            let before = reply[..at].trim().trim_end_matches("```json").trim_end_matches("<tool_call>").trim();
            let thought = (!before.is_empty()).then(|| before.to_string());
            let name = v.get("name").or_else(|| v.get("tool")).and_then(Value::as_str);
            let args = v.get("arguments").or_else(|| v.get("parameters")).or_else(|| v.get("args")).cloned().unwrap_or(Value::Object(Default::default()));
            let args = match args {
                // Some models double-encode the arguments.
                Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
                other => other,
            };
            let action = match name {
                Some("final_answer") | Some("finish") => {
                    Ok(Action::Finish { answer: args.get("answer").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| args.to_string()) })
                }
                Some(n) => Ok(Action::Call { tool: n.to_string(), input: args.to_string() }),
                None => Err("JSON object without a \"name\"".to_string()),
            };
            (thought, action)
        }
        None => match lines_with(reply, "Final Answer:").last() {
            Some(a) => (None, Ok(Action::Finish { answer: a.to_string() })),
            None => (None, Err("no JSON tool call".to_string())),
        },
    };
    ParsedReply { thought, action }
}

#[cfg(test)]
mod tests;
