//! [`Agent`]: steps a ReAct agent — generate to a complete action, parse it, hand it to the host, take
//! the observation back — one step (or one frame budget) at a time, inside the host's own loop.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::format::{Action, ActionFormat};
use super::grammar::{admissible_grammar, chosen_action, reply_grammar, reply_prefixes, GrammarConstraint, ValueSets};
use super::tool::{Tool, ToolHandler, ToolOutput};
use super::trajectory::{Trajectory, Turn};
use crate::error::{Error, Result};
use crate::generate::{CancelToken, SamplingParams};
use crate::runtime::session::{chat_tokens, FinishReason, GenerateParams, Session, Step};
use crate::runtime::Adapter;
use crate::runtime::Model;
use crate::template::{BuiltinTemplate, ChatTemplate, Message};

/// In constrained mode, the tokens a JSON call gets after its thought.
const ACTION_TOKENS: usize = 320;
/// What the agent answers the task's instructions with (AgentInstruct's own words; not trained on).
const INSTRUCTIONS_ACK: &str = "OK. I'll follow your instructions and try my best to solve the task.";

/// How an agent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// How replies are written and parsed.
    pub format: ActionFormat,
    /// A named template, or `None` for the model's own chat template.
    pub template: Option<BuiltinTemplate>,
    /// Most steps (replies) before the episode ends with [`StepKind::StepLimit`].
    pub max_steps: usize,
    /// Most tokens in one reply. With admissible actions set it bounds the thought; the action
    /// itself always gets the tokens it needs.
    pub max_tokens_per_step: usize,
    /// Observations longer than this many characters are cut (AgentBench: 800).
    pub max_observation_chars: usize,
    /// Sampling (default greedy). The same seed replays an episode exactly.
    pub sampling: SamplingParams,
    /// Constrain decoding to the format's grammar (every format): each reply is a bounded thought and
    /// one action of a registered tool, or the format's finish, with arguments valid under the tool's
    /// JSON schema and the host's value sets ([`Agent::set_tool_values`]). The thought gets
    /// `max_tokens_per_step` tokens; inputs are bounded (200 characters; code blocks 10 lines of 120)
    /// and the reply's budget always lets the action end, except a JSON call, which gets 320 tokens
    /// (its strings without `maxLength` are capped at 200 characters; a reply cut off is an invalid
    /// action). Admissible actions
    /// ([`Agent::set_admissible`]) take precedence while set, whether this is set or not.
    pub constrained: bool,
    /// KV cache capacity in tokens (`None`: the model's context).
    pub capacity: Option<usize>,
    /// The episode ends ([`StepKind::RepeatLimit`]) when the same action is asked for this many times
    /// in a row (default 3, as AgentBench; 0: never).
    pub repeat_limit: usize,
    /// With admissible actions set, the previous reply's action is left out of the next reply's set
    /// when another action remains (default true): a step never repeats the one before it.
    pub avoid_repeats: bool,
    /// With admissible actions set, the list is shown to the model at the end of the prompt of the
    /// next reply (`Admissible actions: a, b, c`; default false). It is not kept in the conversation
    /// or the trajectory: only the current reply's prompt shows it.
    pub show_admissible: bool,
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
            repeat_limit: 3,
            avoid_repeats: true,
            show_admissible: false,
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
    /// The reply asked for the same action `repeat_limit` times in a row; the episode is over and the
    /// action is not run.
    RepeatLimit,
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
    /// The action as written after the format's action prefix (for admissible actions: exactly the
    /// admissible string chosen); `None` when the reply holds no action.
    pub action: Option<String>,
    /// An action whose tool has a handler: what the handler gave, already submitted as the
    /// observation (the agent is ready for its next step).
    pub output: Option<ToolOutput>,
}

impl AgentStep {
    fn bare(kind: StepKind, text: String, tokens: usize) -> Self {
        AgentStep { kind, thought: None, text, tokens, action: None, output: None }
    }
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
    /// Handlers of the tools that have one, by name.
    handlers: std::collections::HashMap<String, ToolHandler>,
    /// The instructions and the agent's acknowledgement (empty without instructions and tools).
    head: Vec<Message>,
    /// Demonstrations, rendered between the instructions and the task.
    examples: Vec<Message>,
    /// The episode from its task on.
    messages: Vec<Message>,
    trajectory: Trajectory,
    phase: Phase,
    steps: usize,
    reply: String,
    reply_tokens: usize,
    /// The grammar the reply being generated follows (constrained mode or admissible actions).
    constraint: Option<GrammarConstraint>,
    /// Host value sets for tool arguments (constrained mode).
    values: ValueSets,
    /// The last compiled grammar, cloned for the next reply while unchanged.
    grammar: Option<(String, GrammarConstraint)>,
    /// The complete actions allowed in the next reply (host-set).
    admissible: Option<Vec<String>>,
    /// The admissible actions of the reply being generated.
    reply_actions: Option<Vec<String>>,
    /// The admissible action the reply chose.
    chosen: Option<String>,
    last_action: Option<(String, String)>,
    last_action_text: Option<String>,
    repeats: usize,
    actions: usize,
    accepted: usize,
    instructions: String,
    task: String,
}

fn first_message(format: ActionFormat, instructions: &str, tools: &[Tool]) -> String {
    let tools = tools_section(format, tools);
    match (instructions.trim_end(), tools.as_str()) {
        ("", t) => t.trim_end().to_string(),
        (i, "") => i.to_string(),
        (i, t) => format!("{i}\n\n{}", t.trim_end()),
    }
}

/// The turns an agent's conversation opens with: the instructions with the tool list, and the
/// agent's acknowledgement (not trained on); none when both instructions and tools are empty.
pub(crate) fn head_turns(format: ActionFormat, instructions: &str, tools: &[Tool]) -> Vec<Turn> {
    let first = first_message(format, instructions, tools);
    if first.is_empty() {
        return Vec::new();
    }
    vec![Turn::new("human", first, None), Turn::new("gpt", INSTRUCTIONS_ACK, Some(false))]
}

impl Agent {
    /// An agent for `task`, told `instructions` (the task family's rules) and given `tools`. The
    /// conversation starts as AgentInstruct's do: the instructions (with the tool list), the agent's
    /// `OK.` (not trained on), then the task.
    ///
    /// # Errors
    /// No chat template (model without one and no named template), constrained mode with a tool whose
    /// schema the format cannot constrain, invalid sampling parameters.
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
        if config.constrained && !tools.is_empty() {
            reply_grammar(config.format, &tools, &ValueSets::new(), config.max_tokens_per_step)?;
        }
        let mut agent = Agent {
            session: model.try_session(config.capacity)?,
            template,
            head: Vec::new(),
            examples: Vec::new(),
            messages: vec![Message::new("user", task)],
            trajectory: Trajectory { id: None, conversations: Vec::new(), reward: None, outcome: None },
            phase: Phase::NeedStep,
            steps: 0,
            reply: String::new(),
            reply_tokens: 0,
            constraint: None,
            values: ValueSets::new(),
            grammar: None,
            admissible: None,
            reply_actions: None,
            chosen: None,
            last_action: None,
            last_action_text: None,
            repeats: 0,
            actions: 0,
            accepted: 0,
            instructions: instructions.to_string(),
            task: task.to_string(),
            config,
            tools,
            handlers: Default::default(),
        };
        agent.set_head();
        Ok(agent)
    }

    /// Rebuilds the instructions (with the tool list) and the trajectory's first turns.
    fn set_head(&mut self) {
        let turns = head_turns(self.config.format, &self.instructions, &self.tools);
        self.head = turns.iter().map(|t| Message::new(if t.from == "gpt" { "assistant" } else { "user" }, t.value.as_str())).collect();
        self.trajectory.conversations = turns;
        self.trajectory.conversations.push(Turn::new("human", self.task.clone(), None));
    }

    fn before_first_step(&self) -> bool {
        self.steps == 0 && self.phase == Phase::NeedStep && self.messages.len() == 1
    }

    /// Registers another tool. Only before the first step (the tools are part of the first prompt).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] after the first step, or for a duplicate or empty name.
    pub fn add_tool(&mut self, tool: Tool) -> Result<()> {
        if !self.before_first_step() {
            return Err(Error::InvalidArgument("tools can only be added before the first step".into()));
        }
        if tool.name.trim().is_empty() || tool.name.contains('\n') {
            return Err(Error::InvalidArgument("a tool needs a one-line, non-empty name".into()));
        }
        if self.tools.iter().any(|t| t.name == tool.name) {
            return Err(Error::InvalidArgument(format!("tool {:?} is already registered", tool.name)));
        }
        if self.config.constrained {
            // A schema the format cannot constrain is refused now, not at the first step.
            let mut tools = self.tools.clone();
            tools.push(tool.clone());
            reply_grammar(self.config.format, &tools, &self.values, self.config.max_tokens_per_step)?;
        }
        self.tools.push(tool);
        self.set_head();
        Ok(())
    }

    /// [`Agent::add_tool`] with a handler that runs the tool: when a step (generated or
    /// demonstrated) asks for it, the handler is called with the action's input and its output is
    /// submitted as the observation before the step returns ([`AgentStep::output`]); the host need
    /// not call [`Agent::submit_result`]. The handler is dropped with the agent.
    ///
    /// # Errors
    /// As [`Agent::add_tool`] (the handler is dropped then).
    pub fn add_tool_with_handler(&mut self, tool: Tool, handler: ToolHandler) -> Result<()> {
        let name = tool.name.clone();
        self.add_tool(tool)?;
        self.handlers.insert(name, handler);
        Ok(())
    }

    /// Adds a solved example episode (a demonstration, as AgentBench's prompts hold one of the same
    /// task type), rendered after the instructions and before the task, in the order added. Its turns
    /// are taken from its task on: a leading instructions turn and the agent's acknowledgement are
    /// skipped (so an episode this library recorded can be handed in as it is), and so is a last
    /// observation. Examples are part of the prompt only, not of the trajectory. Only before the first
    /// step.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] after the first step; an example without an agent turn, whose turns
    /// do not alternate human/gpt from a human turn, or with a `system` turn.
    pub fn add_example(&mut self, example: &Trajectory) -> Result<()> {
        if !self.before_first_step() {
            return Err(Error::InvalidArgument("examples can only be added before the first step".into()));
        }
        let t = &example.conversations;
        let is = |turn: &Turn, roles: &[&str]| roles.contains(&turn.from.as_str());
        let (human, gpt) = (["human", "user"], ["gpt", "assistant"]);
        let mut turns = &t[..];
        if turns.len() >= 3 && is(&turns[0], &human) && is(&turns[1], &gpt) && turns[1].loss != Some(true) {
            turns = &turns[2..];
        }
        if turns.last().is_some_and(|l| is(l, &human)) {
            turns = &turns[..turns.len() - 1];
        }
        if turns.len() < 2 {
            return Err(Error::InvalidArgument("an example needs its task and at least one agent turn".into()));
        }
        for (i, turn) in turns.iter().enumerate() {
            let want: &[&str] = if i % 2 == 0 { &human } else { &gpt };
            if !is(turn, want) {
                return Err(Error::InvalidArgument(format!("example turn {i} is {:?}: examples alternate human and gpt turns, from the task", turn.from)));
            }
        }
        self.examples.extend(turns.iter().enumerate().map(|(i, t)| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, t.value.as_str())));
        Ok(())
    }

    /// How many example turns the prompt holds.
    pub fn example_turns(&self) -> usize {
        self.examples.len()
    }

    /// Sets the complete actions the next replies may take (ALFWorld's admissible commands: `go to
    /// cabinet 1`, `take apple 1 from table 1`; in other formats the text after the action prefix, such
    /// as `search[red shoes]`). With a set in place the action is decoded from exactly these strings,
    /// in any tokenization, and the reply can hold nothing else; the thought before it stays free and
    /// bounded by `max_tokens_per_step`. It stays until replaced; an empty set clears it. Works in every
    /// format, with or without `constrained`.
    ///
    /// # Errors
    /// Mid-reply or after the episode; an empty action; an action the format does not read back as an
    /// action (or that names a tool not registered, when tools are).
    pub fn set_admissible(&mut self, actions: Vec<String>) -> Result<()> {
        if matches!(self.phase, Phase::Generating | Phase::Finished) {
            return Err(Error::InvalidArgument("admissible actions can only be set between steps".into()));
        }
        if actions.is_empty() {
            self.admissible = None;
            return Ok(());
        }
        let prefix = reply_prefixes(self.config.format).2;
        for a in &actions {
            if a.trim().is_empty() {
                return Err(Error::InvalidArgument("an admissible action is empty".into()));
            }
            let parsed = resolve(self.config.format.parse(&format!("{prefix}{a}\n")).action, &self.tools);
            if let Err(reason) = parsed {
                return Err(Error::InvalidArgument(format!("admissible action {a:?} is not a {} action: {reason}", self.config.format.name())));
            }
        }
        self.admissible = Some(actions);
        Ok(())
    }

    /// Sets the values a tool's argument may take in constrained mode, from the next reply on (e.g.
    /// the places and objects seen so far): `param` `None` is the tool's input as line formats write
    /// it (`ACTION: go to <value>`, `search[<value>]`), or the tool's only parameter in JSON calls; a
    /// name is that parameter of the tool's JSON schema. They replace what the schema allows there.
    /// An empty set clears it.
    ///
    /// # Errors
    /// Mid-reply or after the episode; an unregistered tool; a parameter the tool's schema lacks; a
    /// value the format cannot write there (a newline; `]` in `tool[input]`; a parenthesis in KG calls).
    pub fn set_tool_values(&mut self, tool: &str, param: Option<&str>, values: Vec<String>) -> Result<()> {
        if matches!(self.phase, Phase::Generating | Phase::Finished) {
            return Err(Error::InvalidArgument("tool values can only be set between steps".into()));
        }
        let Some(t) = self.tools.iter().find(|t| t.name == tool) else {
            return Err(Error::InvalidArgument(format!("tool {tool:?} is not registered")));
        };
        if let Some(p) = param {
            if t.parameters.get("properties").and_then(|ps| ps.get(p)).is_none() {
                return Err(Error::InvalidArgument(format!("tool {tool:?} has no parameter {p:?}")));
            }
        }
        if values.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument("a tool value is empty".into()));
        }
        let key = (tool.to_string(), param.map(str::to_string));
        let mut next = self.values.clone();
        if values.is_empty() {
            next.remove(&key);
        } else {
            next.insert(key, values);
        }
        // Checked now against the format's rules, not at the next reply.
        reply_grammar(self.config.format, &self.tools, &next, self.config.max_tokens_per_step)?;
        self.values = next;
        Ok(())
    }

    /// The admissible actions in place, if any.
    pub fn admissible(&self) -> Option<&[String]> {
        self.admissible.as_deref()
    }

    /// The tools the agent was given.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }
    /// Replies generated so far.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// Actions asked for so far (replies that named a tool the host runs).
    pub fn actions(&self) -> usize {
        self.actions
    }
    /// Of these, how many the environment reported as accepted ([`Agent::submit_result`]).
    pub fn accepted_actions(&self) -> usize {
        self.accepted
    }
    /// Whether the episode is over (final answer, step or repeat limit).
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

    /// Takes `reply` as the agent's next reply instead of generating one: a demonstration the host
    /// writes (a scripted solver, a player), recorded and answered exactly like a generated reply, so
    /// the episode trains the model on the prompts it will act from.
    ///
    /// # Errors
    /// As [`Agent::step`]; mid-reply.
    pub fn demonstrate(&mut self, reply: &str) -> Result<AgentStep> {
        self.check_may_reply()?;
        if self.phase == Phase::Generating {
            return Err(Error::InvalidArgument("a reply is in progress".into()));
        }
        if self.steps >= self.config.max_steps {
            return Ok(self.step_limit());
        }
        self.reply = reply.to_string();
        self.reply_tokens = 0;
        self.chosen = None;
        self.finish_reply()
    }

    /// Refuses a reply while an observation is awaited or after the episode.
    fn check_may_reply(&self) -> Result<()> {
        match self.phase {
            Phase::NeedObservation => Err(Error::InvalidArgument("the agent awaits an observation: call submit_observation".into())),
            Phase::Finished => Err(Error::InvalidArgument("the episode is over".into())),
            Phase::NeedStep | Phase::Generating => Ok(()),
        }
    }

    fn step_limit(&mut self) -> AgentStep {
        self.phase = Phase::Finished;
        self.trajectory.outcome.get_or_insert_with(|| "step_limit".into());
        AgentStep::bare(StepKind::StepLimit, String::new(), 0)
    }

    /// Like [`Agent::step`], but generates at most `max_tokens` tokens and stops after `max_time`
    /// (checked between tokens), returning [`StepKind::Pending`] if the reply is not complete: a game
    /// loop calls it once per frame and never stalls.
    ///
    /// # Errors
    /// As [`Agent::step`].
    pub fn step_budget(&mut self, max_tokens: Option<usize>, max_time: Option<Duration>) -> Result<AgentStep> {
        let start = Instant::now();
        self.check_may_reply()?;
        if self.phase == Phase::NeedStep {
            if self.steps >= self.config.max_steps {
                return Ok(self.step_limit());
            }
            self.begin_reply()?;
        }
        let mut made = 0usize;
        loop {
            if max_tokens.is_some_and(|m| made >= m) || max_time.is_some_and(|t| start.elapsed() >= t) {
                return Ok(AgentStep::bare(StepKind::Pending, self.reply.clone(), self.reply_tokens));
            }
            let constraint = &mut self.constraint;
            let mut mask_error = None;
            let step = self.session.next_token_masked(|logits| {
                if let Some(g) = constraint {
                    mask_error = g.mask(logits).err();
                }
            });
            let step = match mask_error.map_or(step, Err) {
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
                    let done = match self.constraint.as_mut() {
                        Some(g) => {
                            if let Err(e) = g.advance(id) {
                                self.session.end();
                                self.phase = Phase::NeedStep;
                                return Err(e);
                            }
                            g.is_done()
                        }
                        None => false,
                    };
                    if done {
                        self.session.end();
                        if let Some(actions) = &self.reply_actions {
                            self.chosen = chosen_action(self.config.format, &self.reply, actions);
                        }
                        return self.finish_reply();
                    }
                }
                Step::Finished { reason, text } => {
                    self.reply.push_str(&text);
                    self.session.end();
                    if reason == FinishReason::Cancelled {
                        self.phase = Phase::NeedStep;
                        let text = std::mem::take(&mut self.reply);
                        return Ok(AgentStep::bare(StepKind::Cancelled, text, self.reply_tokens));
                    }
                    return self.finish_reply();
                }
            }
        }
    }

    /// Hands the agent the observation for its last action (tool output, environment text). It is
    /// cut to `max_observation_chars` and tokenized as plain text: control-token strings in it
    /// (`</s>`, `[INST]`, `<|im_end|>`) stay text. Whether the environment accepted the action is not
    /// recorded; [`Agent::submit_result`] records it.
    ///
    /// # Errors
    /// Called when no action awaits an observation.
    pub fn submit_observation(&mut self, observation: &str) -> Result<()> {
        self.submit_result(observation, None)
    }

    /// [`Agent::submit_observation`] with the environment's verdict on the action: `Some(true)` when it
    /// was accepted (it did something), `Some(false)` when it was refused ("Nothing happened."),
    /// `None` when unknown. Recorded on the observation's turn and counted in
    /// [`Agent::accepted_actions`].
    ///
    /// # Errors
    /// Called when no action awaits an observation.
    pub fn submit_result(&mut self, observation: &str, accepted: Option<bool>) -> Result<()> {
        if self.phase != Phase::NeedObservation {
            return Err(Error::InvalidArgument("no action awaits an observation".into()));
        }
        self.push_observation(observation, accepted);
        if accepted == Some(true) {
            self.accepted += 1;
        }
        self.phase = Phase::NeedStep;
        Ok(())
    }

    fn push_observation(&mut self, observation: &str, accepted: Option<bool>) {
        let max = self.config.max_observation_chars;
        let text = match observation.char_indices().nth(max) {
            Some((cut, _)) => format!("{}...", &observation[..cut]),
            None => observation.to_string(),
        };
        let mut turn = Turn::new("human", text.clone(), None);
        turn.accepted = accepted;
        self.trajectory.conversations.push(turn);
        self.messages.push(Message::new("user", text));
    }

    /// The admissible actions for the next reply: the host's set, less the previous action when
    /// `avoid_repeats` and another remains.
    fn next_admissible(&self) -> Option<Vec<String>> {
        let set = self.admissible.as_ref()?;
        if self.config.avoid_repeats {
            if let Some(last) = &self.last_action_text {
                let rest: Vec<String> = set.iter().filter(|a| *a != last).cloned().collect();
                if !rest.is_empty() {
                    return Some(rest);
                }
            }
        }
        Some(set.clone())
    }

    /// Brings the session to the rendered conversation (reusing the cached prefix) and starts a reply.
    fn begin_reply(&mut self) -> Result<()> {
        let admissible = self.next_admissible();
        let mut extra = 0;
        let grammar = match &admissible {
            // The thought has `max_tokens_per_step` tokens (the grammar ends it there); every token
            // carries a byte, so the action's byte bound lets it always end.
            Some(actions) => Some(admissible_grammar(self.config.format, actions, self.config.max_tokens_per_step)?),
            None if self.config.constrained => Some(reply_grammar(self.config.format, &self.tools, &self.values, self.config.max_tokens_per_step)?),
            None => None,
        };
        self.constraint = match grammar {
            Some(rg) => {
                // JSON calls (unbounded) get ACTION_TOKENS.
                extra = rg.max_action_bytes.unwrap_or(ACTION_TOKENS);
                if admissible.is_none() {
                    extra = extra.max(self.config.max_tokens_per_step);
                }
                let fresh = match self.grammar.take() {
                    Some((l, g)) if l == rg.lark => g,
                    _ => GrammarConstraint::new(&*self.session.model().grammar_factory()?, &rg.lark)?,
                };
                self.grammar = Some((rg.lark, fresh.clone()));
                Some(fresh)
            }
            None => None,
        };
        self.reply_actions = admissible.clone();
        let ids = self.render_tokens(admissible.as_deref())?;
        let common = self.session.tokens().iter().zip(&ids).take_while(|(a, b)| a == b).count();
        self.session.truncate(common);
        self.session.append_tokens(&ids[common..])?;
        let mut stop: Vec<String> = self.config.format.stop_sequences().iter().map(|s| s.to_string()).collect();
        if let Some(b) = &self.config.template {
            stop.push(b.turn_end().to_string());
        }
        let params = GenerateParams { sampling: self.config.sampling.clone(), max_tokens: self.config.max_tokens_per_step + extra, stop, ignore_eos: false };
        self.session.begin(&params)?;
        self.reply.clear();
        self.reply_tokens = 0;
        self.chosen = None;
        self.phase = Phase::Generating;
        Ok(())
    }

    /// Tokens of the conversation rendered with a generation prompt (the admissible actions shown at
    /// the end when asked): the template's own text may hold control tokens; every message's content
    /// is tokenized as plain text.
    fn render_tokens(&self, admissible: Option<&[String]>) -> Result<Vec<u32>> {
        let mut messages: Vec<Message> = self.head.iter().chain(&self.examples).chain(&self.messages).cloned().collect();
        if let (Some(actions), true) = (admissible, self.config.show_admissible) {
            if let Some(last) = messages.last_mut().filter(|m| m.role == "user") {
                last.content = format!("{}\nAdmissible actions: {}", last.content, actions.join(", "));
            }
        }
        chat_tokens(&self.template, self.session.model().tokenizer(), &messages, true)
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
        self.trajectory.conversations.push(Turn::new("gpt", text.clone(), Some(true)));
        self.messages.push(Message::new("assistant", text.clone()));
        let tokens = self.reply_tokens;
        let action = resolve(parsed.action, &self.tools);
        let mut action_text = self.chosen.take();
        let kind = match action {
            Ok(Action::Call { tool, input }) => {
                let written = action_text.get_or_insert_with(|| written_action(self.config.format, &tool, &input)).clone();
                let repeated = self.last_action.as_ref() == Some(&(tool.clone(), input.clone()));
                self.repeats = if repeated { self.repeats + 1 } else { 1 };
                self.last_action = Some((tool.clone(), input.clone()));
                self.last_action_text = Some(written);
                if self.config.repeat_limit > 0 && self.repeats >= self.config.repeat_limit {
                    self.phase = Phase::Finished;
                    self.trajectory.outcome.get_or_insert_with(|| "repeat_limit".into());
                    StepKind::RepeatLimit
                } else {
                    self.actions += 1;
                    self.phase = Phase::NeedObservation;
                    StepKind::Action { tool, input, repeated }
                }
            }
            Ok(Action::Finish { answer }) => {
                self.phase = Phase::Finished;
                StepKind::Final { answer }
            }
            Err(reason) => {
                action_text = None;
                let feedback = self.config.format.invalid_feedback(&reason);
                self.push_observation(&feedback, Some(false));
                self.phase = Phase::NeedStep;
                StepKind::Invalid { reason }
            }
        };
        let mut step = AgentStep { kind, thought: parsed.thought, text, tokens, action: action_text, output: None };
        self.run_handler(&mut step)?;
        Ok(step)
    }

    /// Runs the handler of an action's tool, if it has one, and submits its output.
    fn run_handler(&mut self, step: &mut AgentStep) -> Result<()> {
        if let StepKind::Action { tool, input, .. } = &step.kind {
            if let Some(handler) = self.handlers.get_mut(tool) {
                let output = handler(input);
                self.submit_result(&output.observation, output.accepted)?;
                step.output = Some(output);
            }
        }
        Ok(())
    }
}

/// An action as the format writes it after its prefix (for the repeat guard and the step's
/// `action`): `go to cabinet 1`, `search[x]`.
fn written_action(format: ActionFormat, tool: &str, input: &str) -> String {
    match format {
        ActionFormat::Alfworld if input.is_empty() => tool.to_string(),
        ActionFormat::Alfworld => format!("{tool} {input}"),
        ActionFormat::React | ActionFormat::WebShop => format!("{tool}[{input}]"),
        ActionFormat::Kg => format!("{tool}({input})"),
        _ => format!("{tool} {input}").trim().to_string(),
    }
}

/// The action the host is asked to run: a call naming a tool the host did not register (exact,
/// case-sensitive name) becomes an invalid action. With no tools registered every call passes (the
/// host dispatches environment verbs itself, as in ALFWorld).
fn resolve(action: std::result::Result<Action, String>, tools: &[Tool]) -> std::result::Result<Action, String> {
    match action {
        Ok(Action::Call { tool, .. }) if !tools.is_empty() && !tools.iter().any(|x| x.name == tool) => Err(format!("unknown tool {tool:?}")),
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
        let tools: Vec<Tool> =
            ["search", "click", "look", "bash"].iter().map(|n| Tool { name: n.to_string(), description: String::new(), parameters: Value::Null }).collect();
        const PIECES: [&str; 29] = [
            "search",
            "click",
            "look",
            "bash",
            "Search",
            "search ",
            " look",
            "lооk",
            "se\u{0}arch",
            "rm",
            "sudo",
            "ACTION: ",
            "Action: ",
            "Act: ",
            "Thought: x\n",
            "[",
            "]",
            "(",
            ")",
            "{\"name\": \"",
            "\", \"arguments\": {}}",
            "\n",
            "```bash\nls\n```",
            "Observation: ",
            "Final Answer: ",
            "<|im_end|>",
            "final_answer",
            "\"",
            "#0",
        ];
        let mut rng = crate::testdata::Rng(0x9E37_79B9_7F4A_7C15);
        let mut next = |n: usize| rng.below(n);
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
