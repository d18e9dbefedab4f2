//! ReAct agents: action formats (one parser per task family), and — built on them — tool registries,
//! stepping, constrained actions and trajectory recording.

mod episode;
pub mod format;
pub mod grammar;
pub mod negatives;
mod run;
mod tool;
pub mod trajectory;

pub use episode::{run_episode, Environment, EpisodeReport, EpisodeRunner, Outcome, Rates};
pub use format::{Action, ActionFormat, ParsedReply};
pub use run::{Agent, AgentConfig, AgentStep, StepKind};
pub use tool::{Tool, ToolHandler, ToolOutput};
pub use trajectory::{Segment, TokenizedTrajectory, Trajectory, Turn};
