//! Grammar-constrained replies, on llguidance: every reply a constrained agent writes is one its
//! format's parser reads as an action of a registered tool (or the format's finish), with arguments
//! allowed by the tool's JSON schema and by the host's value sets.
//!
//! [`reply_grammar`] writes the reply language of a format as a Lark grammar: a bounded free thought,
//! then one action. A tool's arguments follow its schema: a whole JSON Schema for JSON calls (via
//! llguidance's `%json`); for line formats (`ACTION: verb args`, `tool[input]`, `fn(args)`), the
//! string schema of the input (the schema itself, or its one property) with `enum`, `const`,
//! `pattern`, `minLength`, `maxLength`. Host value sets ([`ValueSets`]) replace a tool's input (or a
//! JSON parameter) by an enumeration, updatable between replies. [`GrammarConstraint`] follows one
//! reply token by token with llguidance's matcher.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Map, Value};

use super::format::ActionFormat;
use super::tool::Tool;
use crate::error::{Error, Result};

/// Host value sets: per tool, per parameter (`None`: the tool's input as a line format writes it, or
/// its only parameter), the strings allowed there.
pub type ValueSets = BTreeMap<(String, Option<String>), Vec<String>>;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// A Lark (JSON-syntax) string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A Lark regex literal for `rx`.
fn rx(rx: &str) -> String {
    format!("/{}/", rx.replace('/', "\\/"))
}

/// A Lark alternation of exactly `strings` (each a literal), and the longest one's bytes.
fn alternation<S: AsRef<str>>(strings: &[S]) -> (String, usize) {
    let alts: Vec<String> = strings.iter().map(|v| lit(v.as_ref())).collect();
    (format!("({})", alts.join(" | ")), strings.iter().map(|v| v.as_ref().len()).max().unwrap_or(0))
}

/// The string schema that constrains a tool's input in a line format: the schema itself when it is a
/// string schema, or its one property's when it is an object of one string property.
fn input_schema(parameters: &Value) -> Option<(Option<String>, &Map<String, Value>)> {
    let obj = parameters.as_object()?;
    let is_string = |o: &Map<String, Value>| o.get("type").and_then(Value::as_str) == Some("string") || o.contains_key("enum") || o.contains_key("const");
    if is_string(obj) {
        return Some((None, obj));
    }
    let props = obj.get("properties")?.as_object()?;
    if props.len() != 1 {
        return None;
    }
    let (name, schema) = props.iter().next()?;
    let schema = schema.as_object()?;
    is_string(schema).then(|| (Some(name.clone()), schema))
}

/// The values the host set for `tool`'s input (`None` key, or the name of the property the input
/// stands for).
fn input_values<'a>(values: &'a ValueSets, tool: &str, property: Option<&str>) -> Option<&'a Vec<String>> {
    values.get(&(tool.to_string(), None)).or_else(|| property.and_then(|p| values.get(&(tool.to_string(), Some(p.to_string())))))
}

/// A Lark terminal expression for a tool's line input: `free` (the format's free-argument regex)
/// narrowed by the host's values or the input's string schema.
fn input_terminal(tool: &Tool, values: &ValueSets, free: &str, forbidden: &[char]) -> Result<(String, usize)> {
    let schema = input_schema(&tool.parameters);
    let property = schema.as_ref().and_then(|(p, _)| p.as_deref());
    let check = |v: &str| -> Result<()> {
        match v.chars().find(|c| forbidden.contains(c)) {
            Some(c) => Err(invalid(format!("value {v:?} of tool {:?} holds {c:?}, which this format's input cannot", tool.name))),
            None => Ok(()),
        }
    };
    if let Some(vals) = input_values(values, &tool.name, property) {
        for v in vals {
            check(v)?;
        }
        return Ok(alternation(vals));
    }
    let free = format!("{free}{{1,{MAX_INPUT_BYTES}}}");
    let Some((_, s)) = schema else {
        return Ok((rx(&free), MAX_INPUT_BYTES * 4));
    };
    if let Some(c) = s.get("const").and_then(Value::as_str) {
        check(c)?;
        return Ok((lit(c), c.len()));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        let vals: Vec<&str> = e.iter().filter_map(Value::as_str).collect();
        if vals.is_empty() {
            return Err(invalid(format!("tool {:?}: its enum has no strings", tool.name)));
        }
        for v in &vals {
            check(v)?;
        }
        return Ok(alternation(&vals));
    }
    let mut parts = vec![rx(&free)];
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        // JSON Schema patterns search: unanchored ends may hold anything.
        let (start, p) = p.strip_prefix('^').map_or((".*", p), |p| ("", p));
        let (p, end) = p.strip_suffix('$').filter(|p| !p.ends_with('\\')).map_or((p, ".*"), |p| (p, ""));
        parts.push(rx(&format!("{start}(?:{p}){end}")));
    }
    let min = s.get("minLength").and_then(Value::as_u64);
    let max = s.get("maxLength").and_then(Value::as_u64);
    if min.is_some() || max.is_some() {
        let max = max.map(|m| m.to_string()).unwrap_or_default();
        parts.push(rx(&format!(".{{{},{max}}}", min.unwrap_or(0))));
    }
    Ok((format!("({})", parts.join(" & ")), MAX_INPUT_BYTES * 4))
}

/// Caps every string of `schema` without a `maxLength` (or enumeration) at [`MAX_INPUT_BYTES`]
/// characters, so a JSON call cannot run on in one string.
fn cap_strings(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            let is_string = match o.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string && !o.contains_key("maxLength") && !o.contains_key("enum") && !o.contains_key("const") {
                o.insert("maxLength".into(), json!(MAX_INPUT_BYTES));
            }
            for (k, v) in o.iter_mut() {
                if !matches!(k.as_str(), "enum" | "const" | "default" | "examples") {
                    cap_strings(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(cap_strings),
        _ => {}
    }
}

/// `tool`'s arguments schema with the host's value sets applied (JSON calls).
fn arguments_schema(tool: &Tool, values: &ValueSets) -> Result<Value> {
    let mut schema = match &tool.parameters {
        Value::Null => json!({"type": "object"}),
        v @ Value::Object(_) => v.clone(),
        other => return Err(invalid(format!("tool {:?}: its parameters are not a JSON schema object: {other}", tool.name))),
    };
    for ((name, param), vals) in values.range((tool.name.clone(), None)..) {
        if name != &tool.name {
            break;
        }
        let enumeration = json!({"type": "string", "enum": vals});
        let props = schema.get("properties").and_then(Value::as_object);
        let param = match param {
            Some(p) => p.clone(),
            None => match props.map(|p| p.keys().collect::<Vec<_>>()).as_deref() {
                Some([only]) => (*only).clone(),
                _ => return Err(invalid(format!("tool {:?} has not exactly one parameter: name the parameter its values are for", tool.name))),
            },
        };
        let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            return Err(invalid(format!("tool {:?} has no parameter {param:?}", tool.name)));
        };
        match props.get_mut(&param) {
            Some(p) => *p = enumeration,
            None => return Err(invalid(format!("tool {:?} has no parameter {param:?}", tool.name))),
        }
    }
    cap_strings(&mut schema);
    Ok(schema)
}

/// Longest free input of a line format, in characters (so a reply always ends).
const MAX_INPUT_BYTES: usize = 200;
/// A fenced block's contents: at most 10 lines of at most 120 characters, none starting with a
/// backtick (the closing fence does), so a looping model still ends its block.
const FENCE_BODY: &str = r"([^`\n][^\n]{0,119}\n|\n){1,10}";
/// Bytes a fenced block's contents may take (4 per character, the UTF-8 bound).
const FENCE_BYTES: usize = 10 * 121 * 4;

/// The grammar of one reply ([`reply_grammar`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyGrammar {
    /// Its Lark text.
    pub lark: String,
    /// The most bytes its action (after the thought) can take, when bounded (every format but JSON):
    /// a token budget this large always lets the action end.
    pub max_action_bytes: Option<usize>,
}

/// The Lark grammar of one reply in `format` with `tools` registered: a thought of at most
/// `thought_tokens` tokens where the format has one, then one action and a newline. The action is a
/// registered tool's (OS `bash`, DB `sql`, Mind2Web `CLICK`/`TYPE`/`SELECT` where registered) or
/// the format's way to finish (React and KG `Final Answer:`, OS `finish`/`answer(...)`, DB
/// `Action: Answer`, Mind2Web `Answer: A.`, JSON `final_answer`).
///
/// # Errors
/// No action possible (no tools in a format without a finish), a value or enum string the format's
/// input cannot hold, a value set for a parameter the tool lacks, parameters that are not a schema.
pub fn reply_grammar(format: ActionFormat, tools: &[Tool], values: &ValueSets, thought_tokens: usize) -> Result<ReplyGrammar> {
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    let has = |n: &str| names.is_empty() || names.contains(&n);
    let thought_tokens = thought_tokens.max(1);
    let mut g = String::new();
    // Without a thought prefix, a thought line must not look like the action.
    let thought = |g: &mut String, not: Option<&str>| {
        let body = match not {
            Some(p) => format!("{} & ~{}", rx(r"[^\n]+"), rx(&format!("{p}[^\\n]*"))),
            None => rx(r"[^\n]+"),
        };
        let _ = writeln!(g, "thought[max_tokens={thought_tokens}]: {body}");
    };
    let longest_name = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut longest_input = 0;
    let mut line_actions = |open: &str, free: &str, close: &str, forbidden: &[char], optional_args: bool| -> Result<Vec<String>> {
        tools
            .iter()
            .map(|t| {
                let (input, bytes) = input_terminal(t, values, free, forbidden)?;
                longest_input = longest_input.max(bytes);
                let free_input = input_schema(&t.parameters).is_none() && input_values(values, &t.name, None).is_none();
                Ok(if optional_args && free_input {
                    format!("{} ({} {input})?{close}", lit(&t.name), lit(open))
                } else {
                    format!("{} {} {input}{close}", lit(&t.name), lit(open))
                })
            })
            .collect()
    };
    if matches!(format, ActionFormat::Os | ActionFormat::Db) {
        if let Some(((tool, _), _)) = values.iter().next() {
            return Err(invalid(format!("{} actions are code blocks: values cannot constrain tool {tool:?}", format.name())));
        }
    }
    let none_left = || invalid(format!("constrained {} actions need at least one tool", format.name()));
    match format {
        ActionFormat::Alfworld => {
            let acts = line_actions(" ", r"[^\n]", "", &['\n'], true)?;
            if acts.is_empty() {
                return Err(none_left());
            }
            let _ = writeln!(g, "start: \"THOUGHT: \" thought \"\\n \" ACTION | ACTION");
            thought(&mut g, None);
            let _ = writeln!(g, "ACTION: \"ACTION: \" ({}) \"\\n\"", acts.join(" | "));
        }
        ActionFormat::React | ActionFormat::WebShop | ActionFormat::Kg => {
            let (open, close, free, forbidden): (&str, &str, &str, &[char]) = match format {
                ActionFormat::Kg => ("(", " \")\"", r"[^\n()]", &['\n', '(', ')']),
                _ => ("[", " \"]\"", r"[^\n\]]", &['\n', ']']),
            };
            let mut acts: Vec<String> = line_actions(open, free, close, forbidden, false)?.into_iter().map(|a| format!("\"Action: \" {a}")).collect();
            if format != ActionFormat::WebShop {
                acts.push(format!("\"Final Answer: \" {}", rx(&format!("[^\\n]{{1,{MAX_INPUT_BYTES}}}"))));
            }
            if acts.is_empty() {
                return Err(none_left());
            }
            let _ = writeln!(g, "start: \"Thought: \" thought \"\\n\" ACTION | ACTION");
            thought(&mut g, None);
            let _ = writeln!(g, "ACTION: ({}) \"\\n\"", acts.join(" | "));
        }
        ActionFormat::Os => {
            let mut acts = vec!["\"finish\"".to_string(), format!("\"answer(\" {} \")\"", rx(&format!("[^\\n)]{{0,{MAX_INPUT_BYTES}}}")))];
            if has("bash") {
                acts.insert(0, format!("\"bash\\n\" \"\\n\"? \"```bash\\n\" {} \"\\n```\"", rx(FENCE_BODY)));
            }
            let _ = writeln!(g, "start: \"Think: \" thought \"\\n\" \"\\n\"? ACTION | ACTION");
            thought(&mut g, None);
            let _ = writeln!(g, "ACTION: \"Act: \" ({}) \"\\n\"", acts.join(" | "));
        }
        ActionFormat::Db => {
            let mut acts = vec![format!("\"Action: Answer\\nFinal Answer: \" {}", rx(&format!("[^\\n]{{1,{MAX_INPUT_BYTES}}}")))];
            if has("sql") {
                acts.insert(0, format!("\"Action: Operation\\n```sql\\n\" {} \"\\n```\"", rx(FENCE_BODY)));
            }
            let _ = writeln!(g, "start: thought \"\\n\" ACTION | ACTION");
            thought(&mut g, Some("Action:"));
            let _ = writeln!(g, "ACTION: ({}) \"\\n\"", acts.join(" | "));
        }
        ActionFormat::Mind2Web => {
            // The value typed or selected follows the tool's input schema and value set.
            let mut ops = Vec::new();
            for op in ["CLICK", "TYPE", "SELECT"] {
                let value = match tools.iter().find(|t| t.name == op) {
                    Some(t) => input_terminal(t, values, r"[^\n]", &['\n'])?,
                    None if names.is_empty() => (rx(&format!("[^\\n]{{1,{MAX_INPUT_BYTES}}}")), MAX_INPUT_BYTES * 4),
                    None => continue,
                };
                longest_input = longest_input.max(value.1);
                let value = value.0;
                ops.push(if op == "CLICK" { lit(op) } else { format!("{} \"\\nValue: \" {value}", lit(op)) });
            }
            let mut acts = vec!["\"Answer: A.\"".to_string()];
            if !ops.is_empty() {
                acts.push(format!("\"Answer: \" {} \".\\nAction: \" ({})", rx("[B-Z]"), ops.join(" | ")));
            }
            let _ = writeln!(g, "start: thought \"\\n\" ACTION | ACTION");
            thought(&mut g, Some("Answer:"));
            let _ = writeln!(g, "ACTION: ({}) \"\\n\"", acts.join(" | "));
        }
        ActionFormat::Json => {
            let mut calls = Vec::new();
            for t in tools {
                calls.push(json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": arguments_schema(t, values)?},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                }));
            }
            calls.push(json!({
                "type": "object",
                "properties": {
                    "name": {"const": "final_answer"},
                    "arguments": {"type": "object", "properties": {"answer": {"type": "string", "maxLength": MAX_INPUT_BYTES}}, "required": ["answer"], "additionalProperties": false},
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            }));
            let schema = json!({
                "anyOf": calls,
                "x-guidance": {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false},
            });
            let _ = writeln!(g, "start: call \"\\n\"");
            let _ = writeln!(g, "call: %json {schema}");
            return Ok(ReplyGrammar { lark: g, max_action_bytes: None });
        }
    }
    let code = if matches!(format, ActionFormat::Os | ActionFormat::Db) { FENCE_BYTES } else { 0 };
    let max_action_bytes = 64 + longest_name + (longest_input.max(MAX_INPUT_BYTES * 4)).max(code);
    Ok(ReplyGrammar { lark: g, max_action_bytes: Some(max_action_bytes) })
}

/// The prefixes of a reply in `format` as AgentInstruct writes them: the thought's, what comes between
/// the thought's newline and the action, and the action's (`THOUGHT: `, ` `, `ACTION: ` for ALFWorld;
/// DB and Mind2Web have an unprefixed thought line, JSON no thought).
pub fn reply_prefixes(format: ActionFormat) -> (&'static str, &'static str, &'static str) {
    match format {
        ActionFormat::Alfworld => ("THOUGHT: ", " ", "ACTION: "),
        ActionFormat::React | ActionFormat::WebShop | ActionFormat::Kg => ("Thought: ", "", "Action: "),
        ActionFormat::Os => ("Think: ", "", "Act: "),
        ActionFormat::Db => ("", "", "Action: "),
        ActionFormat::Mind2Web => ("", "", "Answer: "),
        ActionFormat::Json => ("", "", ""),
    }
}

/// `s` as a regex matching it literally.
fn rx_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.^$*+?()[]{}|-".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// The grammar of a reply whose action is exactly one of `actions` (complete action texts as written
/// after the format's action prefix: `go to cabinet 1`, `search[red shoes]`, a whole OS `bash` block
/// or JSON call), then a newline; before it, where the format has one, a thought of at most
/// `thought_tokens` tokens. Any tokenization of an action is allowed.
///
/// # Errors
/// No actions.
pub fn admissible_grammar(format: ActionFormat, actions: &[String], thought_tokens: usize) -> Result<ReplyGrammar> {
    if actions.is_empty() {
        return Err(invalid("no admissible actions"));
    }
    let (tp, sep, ap) = reply_prefixes(format);
    let (alts, longest) = alternation(actions);
    let prefix = if ap.is_empty() { String::new() } else { format!("{} ", lit(ap)) };
    let mut g = String::new();
    let thought = format!("thought[max_tokens={}]: ", thought_tokens.max(1));
    if !tp.is_empty() {
        let _ = writeln!(g, "start: {} thought {} ACTION | ACTION", lit(tp), lit(&format!("\n{sep}")));
        let _ = writeln!(g, "{thought}{}", rx(r"[^\n]+"));
    } else if !ap.is_empty() {
        let _ = writeln!(g, "start: thought \"\\n\" ACTION | ACTION");
        let _ = writeln!(g, "{thought}{} & ~{}", rx(r"[^\n]+"), rx(&format!("{}[^\\n]*", rx_escape(ap))));
    } else {
        let _ = writeln!(g, "start: ACTION");
    }
    let _ = writeln!(g, "ACTION: {prefix}{alts} \"\\n\"");
    Ok(ReplyGrammar { lark: g, max_action_bytes: Some(24 + ap.len() + sep.len() + longest) })
}

/// The admissible action a complete reply ends with (the longest, if one ends another).
pub fn chosen_action(format: ActionFormat, reply: &str, actions: &[String]) -> Option<String> {
    let ap = reply_prefixes(format).2;
    actions.iter().filter(|a| reply.ends_with(&format!("{ap}{a}\n"))).max_by_key(|a| a.len()).cloned()
}

/// Follows one reply under a grammar: the allowed tokens before each token, the grammar's state
/// after it. Cloning one at the start of a reply is cheaper than compiling its grammar again.
#[derive(Clone)]
pub struct GrammarConstraint {
    matcher: Matcher,
    eos: u32,
    /// The allowed tokens for the next position (computed once per position).
    next: Option<SimpleVob>,
    done: bool,
}

impl std::fmt::Debug for GrammarConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarConstraint").field("done", &self.done).finish_non_exhaustive()
    }
}

fn llg(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("constrained decoding: {e}"))
}

impl GrammarConstraint {
    /// A matcher for `lark` at the start of a reply.
    ///
    /// # Errors
    /// A grammar llguidance refuses (with its reason).
    pub fn new(factory: &ParserFactory, lark: &str) -> Result<Self> {
        let grammar = llguidance::api::TopLevelGrammar::from_lark(lark.to_string());
        let parser = factory.create_parser(grammar).map_err(llg)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(llg(e));
        }
        let eos = factory.tok_env().tok_trie().eos_token();
        Ok(GrammarConstraint { matcher, eos, next: None, done: false })
    }

    fn next_mask(&mut self) -> Result<&SimpleVob> {
        if self.next.is_none() {
            self.next = Some(self.matcher.compute_mask().map_err(llg)?);
        }
        Ok(self.next.as_ref().expect("just computed"))
    }

    /// Sets the logit of every token the grammar does not allow next to minus infinity.
    ///
    /// # Errors
    /// The matcher failed (its reason).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.next_mask()?;
        for (i, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Takes the token generated; the reply is done when the grammar allows nothing more.
    ///
    /// # Errors
    /// A token the grammar does not allow.
    pub fn advance(&mut self, token: u32) -> Result<()> {
        self.next = None;
        self.matcher.consume_token(token).map_err(llg)?;
        if self.matcher.is_stopped() {
            self.done = true;
            return Ok(());
        }
        let eos = self.eos;
        let m = self.next_mask()?;
        let n = m.num_set();
        self.done = n == 0 || (n == 1 && m.is_allowed(eos));
        Ok(())
    }

    /// Whether the reply is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::format::Action;

    fn tool(name: &str, parameters: Value) -> Tool {
        Tool { name: name.into(), description: String::new(), parameters }
    }

    #[test]
    fn grammars_are_written_for_every_format() {
        let tools = vec![tool("go to", Value::Null), tool("search", json!({"type": "string", "enum": ["a", "b c"]}))];
        for f in ActionFormat::ALL {
            let g = reply_grammar(f, &tools, &ValueSets::new(), 16).unwrap().lark;
            assert!(g.starts_with("start:"), "{f:?}: {g}");
        }
        assert!(reply_grammar(ActionFormat::Alfworld, &[], &ValueSets::new(), 16).is_err());
        let bad = vec![tool("search", json!({"type": "string", "enum": ["a]"]}))];
        assert!(reply_grammar(ActionFormat::React, &bad, &ValueSets::new(), 16).is_err());
        let mut values = ValueSets::new();
        values.insert(("search".into(), Some("nope".into())), vec!["x".into()]);
        assert!(reply_grammar(ActionFormat::Json, &tools, &values, 16).is_err());
    }

    /// A grammar compiler over a vocabulary of single bytes (plus a few special tokens).
    fn byte_factory() -> (llguidance::toktrie::TokEnv, ParserFactory) {
        let env = llguidance::toktrie::ApproximateTokEnv::single_byte_env();
        let mut factory = ParserFactory::new_simple(&env).unwrap();
        factory.quiet();
        (env, factory)
    }

    /// Greedy decoding under `lark` with random logits (raised for the bytes of `favoured`, so replies
    /// tend to close), at most `max` tokens: the reply's bytes, and whether the grammar completed.
    fn decode_random(
        env: &llguidance::toktrie::TokEnv,
        factory: &ParserFactory,
        rng: &mut crate::testdata::Rng,
        lark: &str,
        favoured: &[u8],
        max: usize,
    ) -> (Vec<u8>, bool) {
        let vocab = env.tok_trie().vocab_size();
        let mut c = GrammarConstraint::new(factory, lark).unwrap_or_else(|e| panic!("{e}\n{lark}"));
        let mut bytes = Vec::new();
        for _ in 0..max {
            let mut logits: Vec<f32> = (0..vocab).map(|_| rng.below(1000) as f32).collect();
            for &b in favoured {
                logits[b as usize] += 700.0;
            }
            c.mask(&mut logits).unwrap();
            let best = (0..vocab).filter(|&i| logits[i].is_finite()).max_by(|&i, &j| logits[i].total_cmp(&logits[j]));
            let best = best.unwrap_or_else(|| panic!("dead end after {:?}\n{lark}", String::from_utf8_lossy(&bytes))) as u32;
            c.advance(best).unwrap();
            bytes.extend_from_slice(env.tok_trie().token(best));
            if c.is_done() {
                return (bytes, true);
            }
        }
        (bytes, false)
    }

    /// Whether `v` satisfies the schema subset the property test draws from.
    fn validates(v: &Value, schema: &Value) -> bool {
        if let Some(e) = schema.get("enum").and_then(Value::as_array) {
            return e.contains(v);
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => {
                let Some(s) = v.as_str() else { return false };
                let n = s.chars().count() as u64;
                schema.get("maxLength").and_then(Value::as_u64).is_none_or(|m| n <= m)
                    && schema.get("minLength").and_then(Value::as_u64).is_none_or(|m| n >= m)
                    && schema.get("pattern").and_then(Value::as_str).is_none_or(|p| p != "^[0-9]+$" || (n > 0 && s.bytes().all(|b| b.is_ascii_digit())))
            }
            Some("integer") => v.as_i64().is_some_and(|i| {
                schema.get("minimum").and_then(Value::as_i64).is_none_or(|m| i >= m) && schema.get("maximum").and_then(Value::as_i64).is_none_or(|m| i <= m)
            }),
            Some("boolean") => v.is_boolean(),
            Some("object") => {
                let Some(o) = v.as_object() else { return false };
                let props = schema.get("properties").and_then(Value::as_object);
                let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
                required.iter().filter_map(Value::as_str).all(|r| o.contains_key(r))
                    && o.iter().all(|(k, x)| match props.and_then(|p| p.get(k)) {
                        Some(s) => validates(x, s),
                        None => schema.get("additionalProperties") != Some(&Value::Bool(false)),
                    })
            }
            _ => true,
        }
    }

    /// Property: over random tool sets (schemas with enums, patterns, lengths, integers, booleans,
    /// value sets) and random logits (standing in for any model and prompt), every reply decoded under
    /// the grammar, in every format, parses as a registered tool's action or the format's finish,
    /// and its arguments satisfy the tool's schema and value set.
    #[test]
    fn constrained_replies_always_parse_and_validate() {
        let (env, factory) = byte_factory();
        let mut rng = crate::testdata::Rng(0x1234_5678_9ABC_DEF1);
        let strings = ["apple 1", "cabinet 2", "red shoes", "m.0x", "B c"];
        let string_schemas = [
            json!({"type": "string", "enum": ["apple 1", "cabinet 2"]}),
            json!({"type": "string", "pattern": "^[0-9]+$"}),
            json!({"type": "string", "maxLength": 6}),
            json!({"type": "string", "minLength": 2, "maxLength": 4}),
        ];
        let mut done_replies = 0;
        for round in 0..160 {
            let format = ActionFormat::ALL[round % 8];
            let names: &[&str] = match format {
                ActionFormat::Os => &["bash"],
                ActionFormat::Db => &["sql"],
                ActionFormat::Mind2Web => &["CLICK", "TYPE"],
                ActionFormat::WebShop => &["search", "click"],
                ActionFormat::Kg => &["get_relations", "count"],
                _ => &["go to", "take", "lookup", "move"],
            };
            let mut values = ValueSets::new();
            let tools: Vec<Tool> = names
                .iter()
                .map(|n| {
                    let p = match rng.below(4) {
                        0 => Value::Null,
                        1 => string_schemas[rng.below(string_schemas.len())].clone(),
                        2 => json!({"type": "object", "properties": {"q": string_schemas[rng.below(string_schemas.len())]}, "required": ["q"]}),
                        _ => json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "ok": {"type": "boolean"}}, "required": ["n", "ok"], "additionalProperties": false}),
                    };
                    let code = matches!(format, ActionFormat::Os | ActionFormat::Db);
                    if code {
                    } else if rng.below(3) == 0 && format != ActionFormat::Json && input_schema(&p).is_some_and(|(q, _)| q.is_some()) || (rng.below(4) == 0 && p.is_null() && format != ActionFormat::Json) {
                        let k = 1 + rng.below(3);
                        values.insert((n.to_string(), None), strings[..k].iter().map(|s| s.to_string()).collect());
                    }
                    tool(n, p)
                })
                .collect();
            let lark = reply_grammar(format, &tools, &values, 6).unwrap().lark;
            let (bytes, done) = decode_random(&env, &factory, &mut rng, &lark, b"\n])\"}`", 600);
            if !done {
                continue;
            }
            done_replies += 1;
            let text = String::from_utf8(bytes).unwrap();
            let parsed = format.parse(&text).action.unwrap_or_else(|e| panic!("{format:?} {text:?}: {e}\n{lark}"));
            if let Action::Call { tool: name, input } = parsed {
                let t = tools.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{format:?}: unregistered {name:?} in {text:?}"));
                if format == ActionFormat::Mind2Web {
                    let value = input.split_once('\n').map(|(_, v)| v.to_string());
                    if let (Some(v), Some(vals)) = (value, values.get(&(name.clone(), None))) {
                        assert!(vals.contains(&v), "{text:?}: {v:?} not in {vals:?}");
                    }
                } else if format == ActionFormat::Json {
                    let args: Value = serde_json::from_str(&input).unwrap();
                    let schema = arguments_schema(t, &values).unwrap();
                    assert!(validates(&args, &schema), "{text:?} against {schema}");
                } else if let Some(vals) = values.get(&(name.clone(), None)) {
                    assert!(vals.contains(&input), "{format:?} {text:?}: {input:?} not in {vals:?}");
                } else if let (Some((_, s)), ActionFormat::Alfworld | ActionFormat::React | ActionFormat::Kg) = (input_schema(&t.parameters), format) {
                    assert!(validates(&Value::String(input.clone()), &Value::Object(s.clone())), "{format:?} {text:?}: {input:?} against {s:?}");
                }
            }
        }
        assert!(done_replies >= 120, "most random replies complete ({done_replies} of 160)");
    }

    /// Property: over random admissible sets (all 8 formats, multi-line OS blocks and JSON calls
    /// included) and random logits, every reply ends in exactly one action of the set, which the
    /// format's own parser reads back.
    #[test]
    fn admissible_actions_always_decode_to_one_of_the_set() {
        let (env, factory) = byte_factory();
        let mut rng = crate::testdata::Rng(0x2545_F491_4F6C_DD1D);
        let parts = ["go to", "cabinet 1", "cabinet 2", "take apple 1 from", "put apple 1 in/on", "open", "look"];
        for round in 0..200 {
            let format = ActionFormat::ALL[round % 8];
            let n = 1 + rng.below(6);
            let actions: Vec<String> = (0..n)
                .map(|_| match format {
                    ActionFormat::React | ActionFormat::WebShop => format!("search[{}]", parts[rng.below(parts.len())]),
                    ActionFormat::Kg => format!("get_relations(#{})", rng.below(4)),
                    ActionFormat::Os => format!("bash\n\n```bash\nls {}\n```", rng.below(9)),
                    ActionFormat::Db => format!("Operation\n```sql\nSELECT {};\n```", rng.below(9)),
                    ActionFormat::Mind2Web => format!("{}.\nAction: CLICK", ["B", "C", "D"][rng.below(3)]),
                    ActionFormat::Json => format!("{{\"name\": \"look\", \"arguments\": {{\"at\": \"{}\"}}}}", parts[rng.below(parts.len())]),
                    ActionFormat::Alfworld => (0..1 + rng.below(2)).map(|_| parts[rng.below(parts.len())]).collect::<Vec<_>>().join(" "),
                })
                .collect();
            let lark = admissible_grammar(format, &actions, 5).unwrap().lark;
            let (bytes, done) = decode_random(&env, &factory, &mut rng, &lark, b"", 400);
            let text = String::from_utf8_lossy(&bytes).into_owned(); // a thought cut by its token cap may end mid-character
            assert!(done, "{format:?} {actions:?}: {text:?}");
            let chosen = chosen_action(format, &text, &actions).unwrap_or_else(|| panic!("{format:?} {text:?} ends in none of {actions:?}"));
            assert!(format.parse(&text).action.is_ok(), "{format:?} {text:?}");
            assert!(text.ends_with(&format!("{}{chosen}\n", reply_prefixes(format).2)));
        }
    }
}
