//! [`Tool`]: what the host registers for the agent to call, and the [`ToolHandler`] that runs it.

use serde_json::Value;

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

/// What running a tool gave: the observation handed back to the agent and, where the environment
/// says, whether it accepted the action (it did something) or refused it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolOutput {
    /// The observation.
    pub observation: String,
    /// The environment's verdict, if it gave one.
    pub accepted: Option<bool>,
}

/// Runs a tool for the agent ([`crate::agent::Agent::add_tool_with_handler`]): called with the
/// action's input as written, on the thread that steps the agent; its output is submitted as the
/// action's observation before the step returns.
pub type ToolHandler = Box<dyn FnMut(&str) -> ToolOutput + Send>;
