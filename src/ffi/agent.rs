//! The agent part of the C ABI: `agentlm_agent` over [`crate::agent::Agent`].

use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::time::Duration;

use super::agentlm_status::*;
use super::handles::{handle, lock};
use super::log::{with_sink, LogSink};
use super::model::agentlm_model;
use super::registry::{self, Kind, Users};
use super::types::{agentlm_action_format, agentlm_chat_template};
use super::util::{boundary, opt_out, read_params, str_arg, strs_arg, write_opt, write_out, Fail, Out, UserData};
use super::{agentlm_error, agentlm_status, agentlm_str};
use crate::agent::{ActionFormat, Agent, AgentConfig, AgentStep, StepKind, Tool, ToolOutput};
use crate::generate::{CancelToken, SamplingParams};
use crate::template::BuiltinTemplate;

/// Parameters of [`agentlm_agent_new`]. Initialise with [`agentlm_agent_params_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_agent_params {
    /// `sizeof(agentlm_agent_params)`.
    pub struct_size: u32,
    /// An `agentlm_action_format` (default ALFWorld).
    pub format: i32,
    /// An `agentlm_chat_template` (default: the model's own).
    pub chat_template: i32,
    /// Most replies in the episode (default 30).
    pub max_steps: u32,
    /// Most tokens per reply (default 128).
    pub max_tokens_per_step: u32,
    /// Observations are cut to this many characters (default 800, as in AgentBench).
    pub max_observation_chars: u32,
    /// Sampling temperature (default 0: greedy).
    pub temperature: f32,
    /// Top-k (0 disables).
    pub top_k: u32,
    /// Top-p (1 disables).
    pub top_p: f32,
    /// Seed: the same seed and observations replay an episode exactly.
    pub seed: u64,
    /// Constrain every reply to the format's grammar (every format): a bounded thought, then one
    /// action of a registered tool or the format's finish, with arguments valid under the tool's JSON
    /// schema (`parameters_json`) and the values set with `agentlm_agent_set_tool_values`. Admissible
    /// actions (`agentlm_agent_set_admissible`) take precedence while set.
    pub constrained: bool,
    /// KV cache capacity in tokens (0: the model's context).
    pub capacity: u32,
    /// End the episode (`AGENTLM_STEP_REPEAT_LIMIT`) when the same action is asked for this many times
    /// in a row (default 3, as AgentBench; 0: never).
    pub repeat_limit: u32,
    /// With admissible actions set, leave the previous action out of the next reply's set when another
    /// remains (default true).
    pub avoid_repeats: bool,
    /// With admissible actions set, show them at the end of the next reply's prompt (`Admissible
    /// actions: ...`; not kept in the conversation; default false).
    pub show_admissible: bool,
}

/// A tool's result, filled by its callback with [`agentlm_tool_result_set`] and
/// [`agentlm_tool_result_set_accepted`] (opaque).
pub struct agentlm_tool_result {
    text: Option<String>,
    accepted: Option<bool>,
}

/// A host tool: called with the action's input (`input_len` bytes of UTF-8, NUL-terminated, valid
/// during the call); sets the observation with [`agentlm_tool_result_set`]. Return false if the tool
/// failed (the observation then defaults to "The tool failed."). Called on the stepping thread.
pub type agentlm_tool_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, input: *const c_char, input_len: usize, result: *mut agentlm_tool_result) -> bool>;

/// Frees a callback's `user_data` when the agent is freed (may be NULL).
pub type agentlm_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// One step's result. Strings are borrowed from the agent: valid until the next call on it, each
/// NUL-terminated; unset ones are empty.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct agentlm_agent_step_result {
    /// An `agentlm_step_kind`.
    pub kind: i32,
    /// Replies generated so far in the episode.
    pub step: u32,
    /// Tokens of this reply.
    pub tokens: u32,
    /// The action repeats the previous one.
    pub repeated: bool,
    /// The reply's text.
    pub text: agentlm_str,
    /// Its thought.
    pub thought: agentlm_str,
    /// ACTION: the tool.
    pub tool: agentlm_str,
    /// ACTION: its input.
    pub input: agentlm_str,
    /// FINAL: the answer; INVALID: the reason.
    pub answer: agentlm_str,
    /// ACTION with a tool callback: the observation it returned (already submitted).
    pub observation: agentlm_str,
    /// ACTION with a tool callback: 1 when the tool reported the action accepted, 0 refused, -1 not
    /// reported (see [`agentlm_tool_result_set_accepted`]); -1 for other kinds.
    pub accepted: i32,
    /// ACTION (and REPEAT_LIMIT): the action as written after the format's prefix; with admissible
    /// actions set, exactly the admissible string chosen.
    pub action: agentlm_str,
}

/// A host tool callback with its `user_data`, freed once with the host's function when dropped.
struct ToolCallback {
    f: agentlm_tool_fn,
    user: UserData,
    free: agentlm_free_fn,
}

impl Drop for ToolCallback {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the host's own free function for its own pointer, called once.
            unsafe { free(self.user.0) };
        }
    }
}

impl ToolCallback {
    /// Calls the host's tool on `input`: its observation (`""` when it set none and succeeded,
    /// "The tool failed." when it returned false) and verdict.
    fn call(&self, f: unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut agentlm_tool_result) -> bool, input: &str) -> ToolOutput {
        let mut result = agentlm_tool_result { text: None, accepted: None };
        let mut arg = input.as_bytes().to_vec();
        arg.push(0);
        let live = registry::scoped((&raw const result).cast(), Kind::ToolResult);
        // SAFETY: the host's callback, called as documented: `arg` is NUL-terminated and lives through
        // the call, `result` is registered for it and unregistered after.
        let ok = unsafe { f(self.user.0, arg.as_ptr().cast(), input.len(), &raw mut result) };
        drop(live);
        let observation = result.text.unwrap_or_else(|| if ok { String::new() } else { "The tool failed.".into() });
        ToolOutput { observation, accepted: result.accepted }
    }
}

pub(crate) struct AgentState {
    pub(crate) agent: Agent,
    /// The `user_data` of tools registered without a callback, kept to be freed with the agent.
    kept: Vec<ToolCallback>,
    /// Backing store of the last step's strings.
    strings: [Vec<u8>; 7],
    log: Option<LogSink>,
}

/// A ReAct agent (opaque): one episode on a model. One caller at a time (`AGENTLM_STATUS_BUSY`
/// otherwise); [`agentlm_agent_cancel`] from any thread.
pub struct agentlm_agent {
    cancel: CancelToken,
    pub(crate) state: Mutex<AgentState>,
    users: Users,
}

handle!(agentlm_agent: Agent, cancel = cancel, state = AgentState);

/// Default agent parameters: ALFWorld format, the model's template, 30 steps, 128 tokens per reply,
/// 800-character observations, greedy, unconstrained, an episode ends after 3 identical actions in a
/// row, an admissible set never offers the previous action again, admissible actions not shown.
#[no_mangle]
pub extern "C" fn agentlm_agent_params_default() -> agentlm_agent_params {
    let c = AgentConfig::default();
    agentlm_agent_params {
        struct_size: std::mem::size_of::<agentlm_agent_params>() as u32,
        format: agentlm_action_format::AGENTLM_FORMAT_ALFWORLD as i32,
        chat_template: agentlm_chat_template::AGENTLM_TEMPLATE_MODEL as i32,
        max_steps: c.max_steps as u32,
        max_tokens_per_step: c.max_tokens_per_step as u32,
        max_observation_chars: c.max_observation_chars as u32,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        constrained: false,
        capacity: 0,
        repeat_limit: c.repeat_limit as u32,
        avoid_repeats: c.avoid_repeats,
        show_admissible: c.show_admissible,
    }
}

fn config(p: &agentlm_agent_params) -> Result<AgentConfig, Fail> {
    let format = ActionFormat::from(agentlm_action_format::try_from(p.format)?);
    let template = Option::<BuiltinTemplate>::from(agentlm_chat_template::try_from(p.chat_template)?);
    if p.max_steps == 0 || p.max_tokens_per_step == 0 {
        return Err(Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, "max_steps and max_tokens_per_step must be positive"));
    }
    Ok(AgentConfig {
        format,
        template,
        max_steps: p.max_steps as usize,
        max_tokens_per_step: p.max_tokens_per_step as usize,
        max_observation_chars: p.max_observation_chars as usize,
        sampling: SamplingParams { temperature: p.temperature, top_k: p.top_k as usize, top_p: p.top_p, seed: p.seed, ..SamplingParams::greedy() },
        constrained: p.constrained,
        capacity: (p.capacity > 0).then_some(p.capacity as usize),
        repeat_limit: p.repeat_limit as usize,
        avoid_repeats: p.avoid_repeats,
        show_admissible: p.show_admissible,
    })
}

/// Creates an agent on `model` for `task` (UTF-8, `task_len` bytes), told `instructions` (the task
/// family's rules). Register tools with [`agentlm_agent_add_tool`] before the first step. Free with
/// [`agentlm_agent_free`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_new(
    model: *const agentlm_model,
    params: *const agentlm_agent_params,
    instructions: *const c_char,
    instructions_len: usize,
    task: *const c_char,
    task_len: usize,
    out: *mut *mut agentlm_agent,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let m = registry::pin(model, "model")?;
        let p = read_params(params, agentlm_agent_params_default())?;
        let instructions = str_arg(instructions, instructions_len, "instructions")?;
        let task = str_arg(task, task_len, "task")?;
        let out = opt_out(out, "out")?;
        let cfg = config(&p)?;
        let agent = with_sink(m.log.as_ref(), || Agent::new(&m.model, cfg, instructions, task, vec![]))?;
        let a = agentlm_agent {
            cancel: agent.cancel_token(),
            state: Mutex::new(AgentState { agent, kept: Vec::new(), strings: Default::default(), log: m.log.clone() }),
            users: Users::default(),
        };
        write_out(out, registry::register(a));
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Frees an agent (and its tools' `user_data` through their free functions). `NULL` is a no-op, and so
/// is a pointer that is not a live agent (a second free). Freed from inside one of its own callbacks,
/// the running step is cancelled and the agent is released when it returns.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_free(agent: *mut agentlm_agent) {
    super::util::catch_or((), || {
        registry::release(agent);
    });
}

/// Registers a tool: `name` as the model writes it (for ALFWorld, an action verb such as `go to`), a
/// one-line `description`, a JSON schema of its arguments (`parameters_json`, may be empty), and an
/// optional callback that runs it (`tool` with `user_data`; NULL: the host submits observations
/// itself). `free_user_data` (may be NULL) is called on `user_data` exactly once: when the agent is
/// freed, or before this call returns if it fails. Only before the first step.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_add_tool(
    agent: *const agentlm_agent,
    name: *const c_char,
    name_len: usize,
    description: *const c_char,
    description_len: usize,
    parameters_json: *const c_char,
    parameters_json_len: usize,
    tool: agentlm_tool_fn,
    user_data: *mut c_void,
    free_user_data: agentlm_free_fn,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    // Whatever happens, the host's user_data is released exactly once.
    let mut callback = Some(ToolCallback { f: tool, user: UserData(user_data), free: free_user_data });
    boundary(err, || {
        let name = str_arg(name, name_len, "name")?;
        let description = str_arg(description, description_len, "description")?;
        let params = str_arg(parameters_json, parameters_json_len, "parameters_json")?;
        let parameters = if params.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(params).map_err(|e| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("parameters_json is not JSON: {e}")))?
        };
        lock(agent, |st| {
            let tool = Tool { name: name.to_string(), description: description.to_string(), parameters };
            let cb = callback.take().expect("taken once");
            match cb.f {
                Some(f) => st.agent.add_tool_with_handler(tool, Box::new(move |input: &str| cb.call(f, input)))?,
                None => {
                    st.agent.add_tool(tool)?;
                    st.kept.push(cb);
                }
            }
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// Sets a tool's observation (`text_len` bytes of UTF-8; copied). Call from within the tool's callback:
/// afterwards `result` is stale and the call returns `AGENTLM_STATUS_INVALID_HANDLE`.
#[no_mangle]
pub unsafe extern "C" fn agentlm_tool_result_set(result: *mut agentlm_tool_result, text: *const c_char, text_len: usize) -> agentlm_status {
    boundary(std::ptr::null_mut(), || {
        registry::check_scoped(result.cast_const().cast(), Kind::ToolResult, "result")?;
        let text = str_arg(text, text_len, "text")?;
        // SAFETY: registered, so the object the library passed to the running callback.
        let r = unsafe { &mut *result };
        r.text = Some(text.to_string());
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Says whether the environment accepted the action (it did something) or refused it ("Nothing
/// happened."): recorded in the trajectory and the step result, counted by
/// [`agentlm_agent_accepted_actions`]. Not calling it leaves the verdict unknown. Call from within the
/// tool's callback.
#[no_mangle]
pub unsafe extern "C" fn agentlm_tool_result_set_accepted(result: *mut agentlm_tool_result, accepted: bool) -> agentlm_status {
    boundary(std::ptr::null_mut(), || {
        registry::check_scoped(result.cast_const().cast(), Kind::ToolResult, "result")?;
        // SAFETY: registered, so the object the library passed to the running callback.
        let r = unsafe { &mut *result };
        r.accepted = Some(accepted);
        Ok(AGENTLM_STATUS_OK)
    })
}

fn set(buf: &mut Vec<u8>, s: &str) -> agentlm_str {
    buf.clear();
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    agentlm_str { ptr: buf.as_ptr().cast(), len: s.len() }
}

/// Reports step `s` in `*out` (an action's tool callback, if it has one, ran in the step).
fn report(st: &mut AgentState, s: AgentStep, out: Out<agentlm_agent_step_result>) -> Result<agentlm_status, Fail> {
    use super::agentlm_step_kind::*;
    let (kind, tool, input, answer, repeated) = match &s.kind {
        StepKind::Action { tool, input, repeated } => (AGENTLM_STEP_ACTION, tool.as_str(), input.as_str(), "", *repeated),
        StepKind::Final { answer } => (AGENTLM_STEP_FINAL, "", "", answer.as_str(), false),
        StepKind::Invalid { reason } => (AGENTLM_STEP_INVALID, "", "", reason.as_str(), false),
        StepKind::Pending => (AGENTLM_STEP_PENDING, "", "", "", false),
        StepKind::StepLimit => (AGENTLM_STEP_LIMIT, "", "", "", false),
        StepKind::Cancelled => (AGENTLM_STEP_CANCELLED, "", "", "", false),
        StepKind::RepeatLimit => (AGENTLM_STEP_REPEAT_LIMIT, "", "", "", true),
    };
    let (observation, accepted) = match &s.output {
        Some(out) => (out.observation.as_str(), out.accepted.map_or(-1, i32::from)),
        None => ("", -1),
    };
    let [b0, b1, b2, b3, b4, b5, b6] = &mut st.strings;
    let step = agentlm_agent_step_result {
        kind: kind as i32,
        step: st.agent.steps() as u32,
        tokens: s.tokens as u32,
        repeated,
        text: set(b0, &s.text),
        thought: set(b1, s.thought.as_deref().unwrap_or("")),
        tool: set(b2, tool),
        input: set(b3, input),
        answer: set(b4, answer),
        observation: set(b5, observation),
        accepted,
        action: set(b6, s.action.as_deref().unwrap_or("")),
    };
    write_out(out, step);
    Ok(AGENTLM_STATUS_OK)
}

/// Generates the agent's next reply — at most `max_tokens` tokens and `max_ms` milliseconds of it when
/// these are not 0 (then `AGENTLM_STEP_PENDING` until the reply is complete) — and reports it in
/// `*out`. An action whose tool has a callback is executed and its observation submitted.
///
/// Errors: `INVALID_ARGUMENT` when an observation is awaited or the episode is over; model errors.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_step(
    agent: *const agentlm_agent,
    max_tokens: u32,
    max_ms: u32,
    out: *mut agentlm_agent_step_result,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let out = opt_out(out, "out")?;
        lock(agent, |st| {
            let s = st.agent.step_budget((max_tokens > 0).then_some(max_tokens as usize), (max_ms > 0).then(|| Duration::from_millis(u64::from(max_ms))))?;
            report(st, s, out)
        })
    })
}

/// Takes `reply` (`reply_len` bytes of UTF-8) as the agent's next reply instead of generating one — a
/// demonstration by the host (a scripted solver, a player) — and reports it in `*out` exactly as
/// [`agentlm_agent_step`] does (tool callbacks run). The episode records it as the agent's turn, so a
/// trainer learns from it with the prompts the agent acts from.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_demonstrate(
    agent: *const agentlm_agent,
    reply: *const c_char,
    reply_len: usize,
    out: *mut agentlm_agent_step_result,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let out = opt_out(out, "out")?;
        let reply = str_arg(reply, reply_len, "reply")?;
        lock(agent, |st| {
            let s = st.agent.demonstrate(reply)?;
            report(st, s, out)
        })
    })
}

/// Sets the complete actions the next replies may take (`n_actions` strings, each UTF-8; copied): with
/// a set in place the action is decoded from exactly these (ALFWorld: `go to cabinet 1`; ReAct:
/// `search[x]`; the text after the format's action prefix) and the reply can hold nothing else; the
/// thought before it stays free, bounded by `max_tokens_per_step`. The set stays until replaced;
/// `n_actions = 0` clears it. Between steps only.
///
/// Errors: `INVALID_ARGUMENT` mid-reply or after the episode, for an empty action, or one the format
/// does not read back as an action of a registered tool.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_set_admissible(
    agent: *const agentlm_agent,
    actions: *const agentlm_str,
    n_actions: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let owned = strs_arg(actions, n_actions, "actions", "action", false)?;
        lock(agent, |st| Ok(st.agent.set_admissible(owned)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Sets the values a tool's argument may take in constrained mode (`n_values` UTF-8 strings, copied),
/// from the next reply on: e.g. the places seen so far for ALFWorld's `go to`. `param` NULL (or
/// `param_len` 0) is the tool's input as line formats write it (`ACTION: go to <value>`,
/// `search[<value>]`), or its only parameter in JSON calls; otherwise the name of a parameter of the
/// tool's JSON schema. The values replace what the schema allows there; `n_values = 0` clears them.
/// Between steps only.
///
/// Errors: `INVALID_ARGUMENT` mid-reply or after the episode, for an unregistered tool, a parameter
/// its schema lacks, an empty value, or one the format cannot write (a newline; `]` in
/// `tool[input]`; parentheses in KG calls; any value for OS and DB code blocks).
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_set_tool_values(
    agent: *const agentlm_agent,
    tool: *const c_char,
    tool_len: usize,
    param: *const c_char,
    param_len: usize,
    values: *const agentlm_str,
    n_values: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let tool = str_arg(tool, tool_len, "tool")?;
        let param = if param.is_null() || param_len == 0 { None } else { Some(str_arg(param, param_len, "param")?) };
        let owned = strs_arg(values, n_values, "values", "value", false)?;
        lock(agent, |st| Ok(st.agent.set_tool_values(tool, param, owned)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Adds a solved example episode (`json_len` bytes: a trajectory in the AgentInstruct schema, e.g. one
/// `agentlm_agent_trajectory_json` returned), rendered between the instructions and the task, as
/// AgentBench's prompts hold one solved example. A leading instructions turn and its acknowledgement
/// are skipped, and so is a last observation. Before the first step only.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_add_example(
    agent: *const agentlm_agent,
    json: *const c_char,
    json_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let json = str_arg(json, json_len, "json")?;
        let t = crate::train::parse_record(json).map_err(|e| Fail::new(AGENTLM_STATUS_INVALID_ARGUMENT, format!("example is not a trajectory: {e}")))?;
        lock(agent, |st| Ok(st.agent.add_example(&t)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Actions the agent asked for so far (`*actions`, may be NULL) and how many of them the environment
/// accepted (`*accepted`, may be NULL), as tools reported with [`agentlm_tool_result_set_accepted`]
/// or [`agentlm_agent_submit_result`].
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_accepted_actions(
    agent: *const agentlm_agent,
    actions: *mut u32,
    accepted: *mut u32,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        lock(agent, |st| {
            write_opt(actions, st.agent.actions() as u32);
            write_opt(accepted, st.agent.accepted_actions() as u32);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// [`agentlm_agent_submit_observation`] with the environment's verdict: `accepted` true when the
/// action did something, false when it was refused. Recorded in the trajectory and counted.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_submit_result(
    agent: *const agentlm_agent,
    text: *const c_char,
    text_len: usize,
    accepted: bool,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let text = str_arg(text, text_len, "text")?;
        lock(agent, |st| Ok(st.agent.submit_result(text, Some(accepted))?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Hands the agent the observation for its last action (`text_len` bytes of UTF-8). It is tokenized as
/// plain text: control-token strings in it never become control tokens.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_submit_observation(
    agent: *const agentlm_agent,
    text: *const c_char,
    text_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let text = str_arg(text, text_len, "text")?;
        lock(agent, |st| Ok(st.agent.submit_observation(text)?)).map(|_| AGENTLM_STATUS_OK)
    })
}

/// Cancels the reply being generated (or the next one), from any thread. `AGENTLM_STATUS_NULL_POINTER`
/// for NULL, `AGENTLM_STATUS_INVALID_HANDLE` for a pointer that is not a live agent.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_cancel(agent: *const agentlm_agent) -> agentlm_status {
    boundary(std::ptr::null_mut(), || {
        registry::pin(agent, "agent")?.cancel.cancel();
        Ok(AGENTLM_STATUS_OK)
    })
}

/// Whether the episode is over (final answer or step limit); false for NULL, a busy agent, or a pointer
/// that is not a live agent.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_is_finished(agent: *const agentlm_agent) -> bool {
    lock(agent, |st| Ok(st.agent.is_finished())).unwrap_or(false)
}

/// Records the episode's reward and outcome (`outcome_len` bytes of UTF-8) in its trajectory.
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_set_outcome(
    agent: *const agentlm_agent,
    reward: f64,
    outcome: *const c_char,
    outcome_len: usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let outcome = str_arg(outcome, outcome_len, "outcome")?;
        lock(agent, |st| {
            st.agent.set_outcome(reward, outcome);
            Ok(AGENTLM_STATUS_OK)
        })
    })
}

/// The episode as JSON in the AgentInstruct schema (`{"conversations": [{"from", "value", "loss"}],
/// "reward", "outcome"}`), into `buf` like `agentlm_model_detokenize` (NUL-terminated; needed size on
/// `AGENTLM_STATUS_BUFFER_TOO_SMALL`).
#[no_mangle]
pub unsafe extern "C" fn agentlm_agent_trajectory_json(
    agent: *const agentlm_agent,
    buf: *mut c_char,
    capacity: usize,
    len: *mut usize,
    err: *mut *mut agentlm_error,
) -> agentlm_status {
    boundary(err, || {
        let len = opt_out(len, "len")?;
        lock(agent, |st| {
            let json = serde_json::to_string(st.agent.trajectory()).map_err(|e| Fail::new(AGENTLM_STATUS_PANIC, format!("trajectory JSON: {e}")))?;
            super::util::copy_str_out(&json, buf, capacity, len)
        })
    })
}
