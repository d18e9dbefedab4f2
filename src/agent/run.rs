//! [`Agent`]: steps a ReAct agent — generate to a complete action, parse it, hand it to the host, take
//! the observation back — one step (or one frame budget) at a time, inside the host's own loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::constrain::{ActionGrammar, Constraint};
use super::format::{Action, ActionFormat};
use super::trajectory::{Trajectory, Turn};
use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::generate::{CancelToken, SamplingParams};
use crate::runtime::Model;
use crate::session::{FinishReason, GenerateParams, Session, Step};
use crate::template::{BuiltinTemplate, ChatTemplate, Message};

/// Under constrained decoding, the thought is ended when this many tokens of the reply budget are left
/// (room for the action prefix, a tool name and short arguments)...
const WRAP_THOUGHT_TOKENS: usize = 16;
/// ...and the arguments are closed when this many are left.
const WRAP_ARGS_TOKENS: usize = 2;

/// A tool the agent may call: its name (for ALFWorld-style formats, an action verb such as `go to`),
/// what it does, and a JSON schema of its arguments (may be `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Name as the model writes it.
    pub name: String,
    /// One-line description shown to the model.
    pub description: String,
    /// JSON schema of the arguments, or `Value::Null`.
    pub parameters: Value,
}

/// How an agent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// How replies are written and parsed.
    pub format: ActionFormat,
    /// A named template, or `None` for the model's own chat template.
    pub template: Option<BuiltinTemplate>,
    /// Most steps (replies) before the episode ends with [`StepKind::StepLimit`].
    pub max_steps: usize,
    /// Most tokens in one reply.
    pub max_tokens_per_step: usize,
    /// Observations longer than this many characters are cut (AgentBench: 800).
    pub max_observation_chars: usize,
    /// Sampling (default greedy). The same seed replays an episode exactly.
    pub sampling: SamplingParams,
    /// Constrain decoding so every action names a registered tool (formats with an action grammar:
    /// ALFWorld, ReAct, WebShop).
    pub constrained: bool,
    /// KV cache capacity in tokens (`None`: the model's context).
    pub capacity: Option<usize>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            format: ActionFormat::Alfworld,
            template: None,
            max_steps: 30,
            max_tokens_per_step: 128,
            max_observation_chars: 800,
            sampling: SamplingParams::greedy(),
            constrained: false,
            capacity: None,
        }
    }
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// The model asks for `tool` with `input`; submit the observation with [`Agent::submit_observation`].
    Action {
        /// Tool name.
        tool: String,
        /// Its input as written.
        input: String,
        /// The same action as the previous step (a loop the host may want to break).
        repeated: bool,
    },
    /// The model gave its final answer; the episode is over.
    Final {
        /// The answer.
        answer: String,
    },
    /// The reply is not a valid action; the format's feedback was added as the observation, so the
    /// next step can follow directly.
    Invalid {
        /// Why.
        reason: String,
    },
    /// The frame budget ran out mid-reply: call [`Agent::step_budget`] again to continue.
    Pending,
    /// `max_steps` replies were generated; the episode is over.
    StepLimit,
    /// The agent was cancelled mid-reply; the reply so far is dropped and the next step starts over.
    Cancelled,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStep {
    /// The outcome.
    pub kind: StepKind,
    /// The reply's thought, if any.
    pub thought: Option<String>,
    /// The reply's full text (empty while pending).
    pub text: String,
    /// Tokens generated for this reply so far.
    pub tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NeedStep,
    Generating,
    NeedObservation,
    Finished,
}

/// A ReAct agent over one [`Session`]. Exclusively owned; its [`CancelToken`] may be used from any
/// thread.
pub struct Agent {
    session: Session,
    template: ChatTemplate,
    config: AgentConfig,
    tools: Vec<Tool>,
    messages: Vec<Message>,
    trajectory: Trajectory,
    phase: Phase,
    steps: usize,
    reply: String,
    reply_tokens: usize,
    constraint: Option<Constraint>,
    /// Text of every token id, for the constraint (computed once).
    pieces: Arc<[Option<String>]>,
    last_action: Option<(String, String)>,
    instructions: String,
    task: String,
}

fn first_message(format: ActionFormat, instructions: &str, task: &str, tools: &[Tool]) -> String {
    format!("{}\n\n{}\n{}", instructions.trim_end(), tools_section(format, tools), task)
}

impl Agent {
    /// An agent for `task`, told `instructions` (the task family's rules) and given `tools`.
    ///
    /// # Errors
    /// No chat template (model without one and no named template), constrained mode for a format
    /// without an action grammar or without tools, invalid sampling parameters.
    pub fn new(model: &Model, config: AgentConfig, instructions: &str, task: &str, tools: Vec<Tool>) -> Result<Agent> {
        config.sampling.validate()?;
        let template = match &config.template {
            Some(b) => ChatTemplate::builtin(b.clone()),
            None => {
                let src = model
                    .tokenizer()
                    .chat_template()
                    .ok_or_else(|| Error::InvalidArgument("the model has no chat template: choose a named template".into()))?;
                let tok = model.tokenizer();
                let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
                ChatTemplate::from_jinja(src, &name(tok.bos_id()), &name(tok.eos_ids().first().copied()))?
            }
        };
        if config.constrained && ActionGrammar::for_format(config.format, vec![]).is_none() {
            return Err(Error::InvalidArgument(format!("format {} has no constrained mode", config.format.name())));
        }
        let first = first_message(config.format, instructions, task, &tools);
        let trajectory = Trajectory {
            id: None,
            conversations: vec![Turn { from: "human".into(), value: first.clone(), loss: None }],
            reward: None,
            outcome: None,
        };
        Ok(Agent {
            session: model.try_session(config.capacity)?,
            template,
            messages: vec![Message::new("user", first)],
            trajectory,
            phase: Phase::NeedStep,
            steps: 0,
            reply: String::new(),
            reply_tokens: 0,
            constraint: None,
            pieces: Arc::from(Vec::new()),
            last_action: None,
            instructions: instructions.to_string(),
            task: task.to_string(),
            config,
            tools,
        })
    }

    /// Registers another tool. Only before the first step (the tools are part of the first prompt).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] after the first step, or for a duplicate or empty name.
    pub fn add_tool(&mut self, tool: Tool) -> Result<()> {
        if self.steps > 0 || self.phase != Phase::NeedStep || self.messages.len() != 1 {
            return Err(Error::InvalidArgument("tools can only be added before the first step".into()));
        }
        if tool.name.trim().is_empty() || tool.name.contains('\n') {
            return Err(Error::InvalidArgument("a tool needs a one-line, non-empty name".into()));
        }
        if self.tools.iter().any(|t| t.name == tool.name) {
            return Err(Error::InvalidArgument(format!("tool {:?} is already registered", tool.name)));
        }
        self.tools.push(tool);
        let first = first_message(self.config.format, &self.instructions, &self.task, &self.tools);
        self.messages[0].content = first.clone();
        self.trajectory.conversations[0].value = first;
        Ok(())
    }

    /// The tools the agent was given.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }
    /// Replies generated so far.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// Whether the episode is over (final answer or step limit).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }
    /// Whether the agent waits for [`Agent::submit_observation`].
    pub fn awaits_observation(&self) -> bool {
        self.phase == Phase::NeedObservation
    }
    /// A handle that cancels the reply being generated, from any thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.session.cancel_token()
    }
    /// The episode so far in the AgentInstruct schema (agent turns with `loss: true`).
    pub fn trajectory(&self) -> &Trajectory {
        &self.trajectory
    }
    /// Records the episode's reward and outcome (e.g. from the host's environment).
    pub fn set_outcome(&mut self, reward: f64, outcome: &str) {
        self.trajectory.reward = Some(reward);
        self.trajectory.outcome = Some(outcome.to_string());
    }
    /// The underlying session (its tokens are the rendered conversation).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Applies a LoRA adapter at `scale` (or none) from the next reply on: a hot swap between steps,
    /// e.g. the adapter a trainer just produced. The conversation is kept (and re-processed once with
    /// the new weights).
    ///
    /// # Errors
    /// Mid-reply (after a [`StepKind::Pending`] step); an adapter for another model.
    pub fn set_adapter(&mut self, adapter: Option<(Adapter, f32)>) -> Result<()> {
        if matches!(self.phase, Phase::Generating) {
            return Err(Error::InvalidArgument("a reply is in progress: finish the step before swapping adapters".into()));
        }
        self.session.set_adapter(adapter)
    }

    /// Generates one complete reply and returns what it asks for.
    ///
    /// # Errors
    /// Called while an observation is awaited or after the episode ended; model errors.
    pub fn step(&mut self) -> Result<AgentStep> {
        self.step_budget(None, None)
    }

    /// Like [`Agent::step`], but generates at most `max_tokens` tokens and stops after `max_time`
    /// (checked between tokens), returning [`StepKind::Pending`] if the reply is not complete: a game
    /// loop calls it once per frame and never stalls.
    ///
    /// # Errors
    /// As [`Agent::step`].
    pub fn step_budget(&mut self, max_tokens: Option<usize>, max_time: Option<Duration>) -> Result<AgentStep> {
        let start = Instant::now();
        match self.phase {
            Phase::NeedObservation => {
                return Err(Error::InvalidArgument("the agent awaits an observation: call submit_observation".into()))
            }
            Phase::Finished => return Err(Error::InvalidArgument("the episode is over".into())),
            Phase::NeedStep => {
                if self.steps >= self.config.max_steps {
                    self.phase = Phase::Finished;
                    self.trajectory.outcome.get_or_insert_with(|| "step_limit".into());
                    return Ok(AgentStep { kind: StepKind::StepLimit, thought: None, text: String::new(), tokens: 0 });
                }
                self.begin_reply()?;
            }
            Phase::Generating => {}
        }
        let mut made = 0usize;
        loop {
            if max_tokens.is_some_and(|m| made >= m) || max_time.is_some_and(|t| start.elapsed() >= t) {
                return Ok(AgentStep { kind: StepKind::Pending, thought: None, text: self.reply.clone(), tokens: self.reply_tokens });
            }
            if let Some(c) = self.constraint.as_mut() {
                // Leave room to finish the action inside the reply's token budget.
                let left = self.config.max_tokens_per_step.saturating_sub(self.reply_tokens);
                if left <= WRAP_ARGS_TOKENS {
                    c.wrap_up(2);
                } else if left <= WRAP_THOUGHT_TOKENS {
                    c.wrap_up(1);
                }
            }
            let (constraint, pieces) = (&self.constraint, &self.pieces);
            let step = self.session.next_token_masked(|logits| {
                if let Some(c) = constraint {
                    c.mask(logits, pieces);
                }
            });
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    self.session.end();
                    self.phase = Phase::NeedStep;
                    return Err(e);
                }
            };
            made += 1;
            match step {
                Step::Token { id, text } => {
                    self.reply_tokens += 1;
                    self.reply.push_str(&text);
                    if let Some(c) = self.constraint.as_mut() {
                        let piece = self.pieces.get(id as usize).cloned().flatten().unwrap_or_default();
                        c.advance(&piece);
                        if c.is_done() {
                            self.session.end();
                            return self.finish_reply();
                        }
                    }
                }
                Step::Finished { reason, text } => {
                    self.reply.push_str(&text);
                    self.session.end();
                    if reason == FinishReason::Cancelled {
                        self.phase = Phase::NeedStep;
                        let text = std::mem::take(&mut self.reply);
                        return Ok(AgentStep { kind: StepKind::Cancelled, thought: None, text, tokens: self.reply_tokens });
                    }
                    return self.finish_reply();
                }
            }
        }
    }

    /// Hands the agent the observation for its last action (tool output, environment text). It is
    /// cut to `max_observation_chars` and tokenized as plain text: control-token strings in it
    /// (`</s>`, `[INST]`, `<|im_end|>`) stay text.
    ///
    /// # Errors
    /// Called when no action awaits an observation.
    pub fn submit_observation(&mut self, observation: &str) -> Result<()> {
        if self.phase != Phase::NeedObservation {
            return Err(Error::InvalidArgument("no action awaits an observation".into()));
        }
        self.push_observation(observation);
        self.phase = Phase::NeedStep;
        Ok(())
    }

    fn push_observation(&mut self, observation: &str) {
        let max = self.config.max_observation_chars;
        let text = match observation.char_indices().nth(max) {
            Some((cut, _)) => format!("{}...", &observation[..cut]),
            None => observation.to_string(),
        };
        self.trajectory.conversations.push(Turn { from: "human".into(), value: text.clone(), loss: None });
        self.messages.push(Message::new("user", text));
    }

    /// Brings the session to the rendered conversation (reusing the cached prefix) and starts a reply.
    fn begin_reply(&mut self) -> Result<()> {
        if self.config.constrained && self.constraint.is_none() {
            if self.tools.is_empty() {
                return Err(Error::InvalidArgument("constrained actions need at least one tool".into()));
            }
            let names = self.tools.iter().map(|t| t.name.clone()).collect();
            let grammar = ActionGrammar::for_format(self.config.format, names)
                .ok_or_else(|| Error::InvalidArgument(format!("format {} has no constrained mode", self.config.format.name())))?;
            self.pieces = self.session.model().token_pieces()?;
            self.constraint = Some(Constraint::new(grammar));
        }
        let ids = self.render_tokens()?;
        let common = self.session.tokens().iter().zip(&ids).take_while(|(a, b)| a == b).count();
        self.session.truncate(common);
        self.session.append_tokens(&ids[common..])?;
        let mut stop: Vec<String> = self.config.format.stop_sequences().iter().map(|s| s.to_string()).collect();
        if let Some(b) = &self.config.template {
            stop.push(b.turn_end().to_string());
        }
        let params = GenerateParams { sampling: self.config.sampling.clone(), max_tokens: self.config.max_tokens_per_step, stop, ignore_eos: false };
        self.session.begin(&params)?;
        self.reply.clear();
        self.reply_tokens = 0;
        if let Some(c) = self.constraint.as_mut() {
            *c = Constraint::new(c.grammar().clone());
        }
        self.phase = Phase::Generating;
        Ok(())
    }

    /// Tokens of the conversation rendered with a generation prompt: the template's own text may hold
    /// control tokens; every message's content is tokenized as plain text.
    fn render_tokens(&self) -> Result<Vec<u32>> {
        const OPEN: char = '\u{E000}';
        const CLOSE: char = '\u{E001}';
        let marked: Vec<Message> =
            self.messages.iter().enumerate().map(|(i, m)| Message::new(m.role.as_str(), format!("{OPEN}{i}{CLOSE}"))).collect();
        let text = self.template.render(&marked, true)?;
        let tok = self.session.model().tokenizer();
        let mut ids = Vec::new();
        if tok.add_bos_by_default() {
            ids.extend(tok.bos_id());
        }
        let mut rest = text.as_str();
        while let Some(open) = rest.find(OPEN) {
            ids.extend(tok.encode(&rest[..open], false)?);
            let after = &rest[open + OPEN.len_utf8()..];
            let close = after.find(CLOSE).ok_or_else(|| Error::InvalidArgument("template mangled a message".into()))?;
            let i: usize = after[..close].parse().map_err(|_| Error::InvalidArgument("template mangled a message".into()))?;
            let content = &self.messages.get(i).ok_or_else(|| Error::InvalidArgument("template mangled a message".into()))?.content;
            ids.extend(tok.encode_plain(content)?);
            rest = &after[close + CLOSE.len_utf8()..];
        }
        ids.extend(tok.encode(rest, false)?);
        Ok(ids)
    }

    fn finish_reply(&mut self) -> Result<AgentStep> {
        self.steps += 1;
        let mut text = std::mem::take(&mut self.reply);
        if self.config.format == ActionFormat::Alfworld {
            // The reply ends with its action line (a model may run on and invent the observation).
            if let Some(at) = text.rfind("ACTION:") {
                if let Some(nl) = text[at..].find('\n') {
                    text.truncate(at + nl);
                }
            }
        }
        let text = text.trim().to_string();
        let parsed = self.config.format.parse(&text);
        self.trajectory.conversations.push(Turn { from: "gpt".into(), value: text.clone(), loss: Some(true) });
        self.messages.push(Message::new("assistant", text.clone()));
        let tokens = self.reply_tokens;
        let action = resolve(parsed.action, &self.tools);
        let kind = match action {
            Ok(Action::Call { tool, input }) => {
                let repeated = self.last_action.as_ref() == Some(&(tool.clone(), input.clone()));
                self.last_action = Some((tool.clone(), input.clone()));
                self.phase = Phase::NeedObservation;
                StepKind::Action { tool, input, repeated }
            }
            Ok(Action::Finish { answer }) => {
                self.phase = Phase::Finished;
                StepKind::Final { answer }
            }
            Err(reason) => {
                let feedback = self.config.format.invalid_feedback(&reason);
                self.push_observation(&feedback);
                self.phase = Phase::NeedStep;
                StepKind::Invalid { reason }
            }
        };
        Ok(AgentStep { kind, thought: parsed.thought, text, tokens })
    }
}

/// The action the host is asked to run: a call naming a tool the host did not register (exact,
/// case-sensitive name) becomes an invalid action. With no tools registered every call passes (the
/// host dispatches environment verbs itself, as in ALFWorld).
fn resolve(action: std::result::Result<Action, String>, tools: &[Tool]) -> std::result::Result<Action, String> {
    match action {
        Ok(Action::Call { tool, .. }) if !tools.is_empty() && !tools.iter().any(|x| x.name == tool) => {
            Err(format!("unknown tool {tool:?}"))
        }
        other => other,
    }
}

/// The tool list shown to the model, in the format's style.
fn tools_section(format: ActionFormat, tools: &[Tool]) -> String {
    if tools.is_empty() {
        return String::new();
    }
    let list: Vec<String> = tools
        .iter()
        .map(|t| match &t.parameters {
            Value::Null => format!("- {}: {}", t.name, t.description),
            p => format!("- {}: {} Arguments: {}", t.name, t.description, p),
        })
        .collect();
    let list = list.join("\n");
    match format {
        ActionFormat::Alfworld => format!("The available actions are:\n{list}\n"),
        ActionFormat::React | ActionFormat::WebShop => format!(
            "You have access to the following tools:\n{list}\n\nUse this format:\nThought: what to do next\nAction: tool[input]\nObservation: the tool's result\n... (repeat Thought/Action/Observation)\nThought: I know the answer\nFinal Answer: the answer\n"
        ),
        ActionFormat::Json => format!(
            "You can call these tools by replying with a JSON object {{\"name\": tool, \"arguments\": {{...}}}}:\n{list}\nWhen done, reply {{\"name\": \"final_answer\", \"arguments\": {{\"answer\": ...}}}}.\n"
        ),
        _ => format!("Tools:\n{list}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property: whatever a reply says, in any format, the host is only ever asked to run a tool it
    /// registered: replies built at random from registered names, look-alikes (case, spaces,
    /// Cyrillic letters, control characters), injected observations and format syntax.
    #[test]
    fn replies_cannot_name_unregistered_tools() {
        let tools: Vec<Tool> = ["search", "click", "look", "bash"]
            .iter()
            .map(|n| Tool { name: n.to_string(), description: String::new(), parameters: Value::Null })
            .collect();
        const PIECES: [&str; 29] = [
            "search", "click", "look", "bash", "Search", "search ", " look", "lооk", "se\u{0}arch", "rm", "sudo", "ACTION: ",
            "Action: ", "Act: ", "Thought: x\n", "[", "]", "(", ")", "{\"name\": \"", "\", \"arguments\": {}}", "\n",
            "```bash\nls\n```", "Observation: ", "Final Answer: ", "<|im_end|>", "final_answer", "\"", "#0",
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut calls = 0;
        for _ in 0..20_000 {
            let reply: String = (0..1 + next(10)).map(|_| PIECES[next(PIECES.len())]).collect();
            for f in ActionFormat::ALL {
                if let Ok(Action::Call { tool, .. }) = resolve(f.parse(&reply).action, &tools) {
                    assert!(tools.iter().any(|t| t.name == tool), "{f:?} {reply:?} -> {tool:?}");
                    calls += 1;
                }
            }
        }
        assert!(calls > 100, "the generator reaches valid calls too ({calls})");
        let unknown = Ok(Action::Call { tool: "rm".into(), input: String::new() });
        assert_eq!(resolve(unknown, &tools), Err("unknown tool \"rm\"".into()));
    }
}
