//! [`Tool`]: what the host registers for the agent to call.

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
