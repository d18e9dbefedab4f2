//! ReAct agents: action formats (one parser per task family), and — built on them — tool registries,
//! stepping, constrained actions and trajectory recording.

pub mod format;
pub mod grammar;
pub mod negatives;
mod episode;
mod run;
mod tool;
pub mod trajectory;

pub use format::{Action, ActionFormat, ParsedReply};
pub use trajectory::{Segment, TokenizedTrajectory, Trajectory, Turn};
pub use run::{Agent, AgentConfig, AgentStep, StepKind};
pub use tool::Tool;
pub use episode::{run_episode, Environment, EpisodeReport, EpisodeRunner, Outcome, Rates};
