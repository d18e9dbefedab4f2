//! Episodes against an environment the host implements: the loop every host writes (task, the
//! actions allowed now, a reply, the action run, its observation, ...), counted honestly: an action is
//! *accepted* when the environment says it did something, an episode *succeeded* when the environment
//! says its task is done. Never "the reply parsed" or "it named a tool".
//!
//! With [`EpisodeRunner`] and a [`crate::train::Trainer`] this is AgentTuning's loop on device:
//! record episodes (the model sampling, or the host demonstrating), keep those with reward 1
//! ([`crate::train::Trainer::add_trajectory`] filters on the reward), train, and evaluate on held-out
//! environments with [`EpisodeRunner::evaluate`].

use super::run::{Agent, AgentConfig, StepKind};
use super::tool::Tool;
use super::trajectory::Trajectory;
use crate::error::Result;
use crate::runtime::Adapter;
use crate::runtime::Model;

/// What the environment answers an action with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The observation shown to the agent.
    pub observation: String,
    /// Whether the action did something (false: refused, "Nothing happened.").
    pub accepted: bool,
}

/// A task environment driven by an agent (a household, a shell, a game level).
pub trait Environment {
    /// The task as the agent is told it (ALFWorld: `Here is your task. ... Your task is to: ...`).
    fn task(&self) -> String;
    /// The complete actions allowed now (ALFWorld's admissible commands); empty: any action.
    fn admissible(&self) -> Vec<String>;
    /// Runs an action: `tool` and `input` as the format parsed them, `action` as written after the
    /// format's action prefix (for admissible actions, exactly one of the set).
    fn act(&mut self, tool: &str, input: &str, action: &str) -> Outcome;
    /// Whether the task is done.
    fn solved(&self) -> bool;
    /// The reply a scripted solver would give now (for demonstrations); `None` when it has none.
    fn demonstration(&self) -> Option<String> {
        None
    }
}

/// How one episode went.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeReport {
    /// The environment says the task is done.
    pub solved: bool,
    /// Replies.
    pub steps: usize,
    /// Actions run.
    pub actions: usize,
    /// Of those, accepted by the environment.
    pub accepted: usize,
    /// The step that ended the episode (`Action` when it ended because the task was solved).
    pub end: StepKind,
    /// The episode, reward 1 when solved and 0 otherwise.
    pub trajectory: Trajectory,
}

/// Runs `agent` on `env` until the task is solved or the episode ends: before each reply the agent
/// gets the environment's admissible actions; each action is run and its observation and verdict
/// handed back. With `demonstrate`, the environment's [`Environment::demonstration`] replies instead
/// of the model (the episode ends when it has none).
///
/// # Errors
/// The agent's errors (an admissible action the format cannot read, model errors).
pub fn run_episode(agent: &mut Agent, env: &mut dyn Environment, demonstrate: bool) -> Result<EpisodeReport> {
    let mut end = StepKind::StepLimit;
    while !env.solved() && !agent.is_finished() {
        agent.set_admissible(env.admissible())?;
        let step = if demonstrate {
            match env.demonstration() {
                Some(reply) => agent.demonstrate(&reply)?,
                None => break,
            }
        } else {
            agent.step()?
        };
        end = step.kind.clone();
        match &step.kind {
            // A tool with its own handler already ran (and its observation was submitted).
            StepKind::Action { .. } if step.output.is_some() => {}
            StepKind::Action { tool, input, .. } => {
                let action = step.action.clone().unwrap_or_default();
                let out = env.act(tool, input, &action);
                agent.submit_result(&out.observation, Some(out.accepted))?;
            }
            StepKind::Invalid { .. } | StepKind::Pending => {}
            StepKind::Final { .. } | StepKind::StepLimit | StepKind::RepeatLimit | StepKind::Cancelled => break,
        }
    }
    let solved = env.solved();
    let outcome = if solved { "success".to_string() } else { agent.trajectory().outcome.clone().unwrap_or_else(|| "unsolved".into()) };
    agent.set_outcome(if solved { 1.0 } else { 0.0 }, &outcome);
    Ok(EpisodeReport {
        solved,
        steps: agent.steps(),
        actions: agent.actions(),
        accepted: agent.accepted_actions(),
        end,
        trajectory: agent.trajectory().clone(),
    })
}

/// Totals over episodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Episodes run.
    pub episodes: usize,
    /// Of those, solved.
    pub solved: usize,
    /// Actions run.
    pub actions: usize,
    /// Of those, accepted.
    pub accepted: usize,
    /// Replies.
    pub steps: usize,
}

impl Rates {
    /// Adds one episode.
    pub fn add(&mut self, r: &EpisodeReport) {
        self.episodes += 1;
        self.solved += usize::from(r.solved);
        self.actions += r.actions;
        self.accepted += r.accepted;
        self.steps += r.steps;
    }
    /// Solved episodes / episodes (0 when none).
    pub fn success_rate(&self) -> f64 {
        ratio(self.solved, self.episodes)
    }
    /// Accepted actions / actions (0 when none).
    pub fn accepted_rate(&self) -> f64 {
        ratio(self.accepted, self.actions)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Makes agents for episodes: one model, configuration, instructions, tools, adapter and
/// demonstrations, a fresh agent per environment.
#[derive(Clone)]
pub struct EpisodeRunner {
    /// The model.
    pub model: Model,
    /// Agent configuration (sampling: greedy for evaluation, a temperature for self-improvement).
    pub config: AgentConfig,
    /// The task family's instructions.
    pub instructions: String,
    /// Tools (may be empty: the environment reads the action itself).
    pub tools: Vec<Tool>,
    /// A LoRA adapter and its scale.
    pub adapter: Option<(Adapter, f32)>,
    /// Solved examples put in every prompt ([`Agent::add_example`]).
    pub examples: Vec<Trajectory>,
}

impl EpisodeRunner {
    /// A runner without adapter and examples.
    pub fn new(model: &Model, config: AgentConfig, instructions: &str, tools: Vec<Tool>) -> Self {
        EpisodeRunner { model: model.clone(), config, instructions: instructions.to_string(), tools, adapter: None, examples: Vec::new() }
    }

    /// One episode on `env` (see [`run_episode`]); `seed` replaces the sampling seed.
    ///
    /// # Errors
    /// As [`Agent::new`] and [`run_episode`].
    pub fn run(&self, env: &mut dyn Environment, demonstrate: bool, seed: u64) -> Result<EpisodeReport> {
        let mut config = self.config.clone();
        config.sampling.seed = seed;
        let mut agent = Agent::new(&self.model, config, &self.instructions, &env.task(), self.tools.clone())?;
        for e in &self.examples {
            agent.add_example(e)?;
        }
        if let Some((a, s)) = &self.adapter {
            agent.set_adapter(Some((a.clone(), *s)))?;
        }
        run_episode(&mut agent, env, demonstrate)
    }

    /// Runs the model (not demonstrations) on every environment; `progress` sees each report.
    ///
    /// # Errors
    /// As [`EpisodeRunner::run`].
    pub fn evaluate<E: Environment>(&self, envs: impl IntoIterator<Item = E>, mut progress: impl FnMut(&EpisodeReport)) -> Result<Rates> {
        let mut rates = Rates::default();
        for (i, mut env) in envs.into_iter().enumerate() {
            let r = self.run(&mut env, false, i as u64)?;
            progress(&r);
            rates.add(&r);
        }
        Ok(rates)
    }
}
