//! Episodes in the AgentInstruct schema (`conversations: [{from, value, loss}]`), rendered with a chat
//! template into text and a per-token loss mask (loss only on assistant turns marked `loss: true`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::session::{encode_marked_with_offsets, marked_messages};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;

/// One turn: `from` is `human`, `gpt` or `system`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Who speaks: `human` (user or environment), `gpt` (the agent), `system`.
    pub from: String,
    /// The text.
    pub value: String,
    /// Train on this turn (`gpt` turns only; `null` elsewhere).
    #[serde(default)]
    pub loss: Option<bool>,
    /// On an observation turn: whether the environment accepted the action before it (as its tool
    /// reported; absent when it did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
}

impl Turn {
    /// A turn without an `accepted` report.
    pub fn new(from: &str, value: impl Into<String>, loss: Option<bool>) -> Self {
        Turn { from: from.to_string(), value: value.into(), loss, accepted: None }
    }
}

/// An episode: AgentInstruct's schema plus the outcome fields an agent run records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Identifier (AgentInstruct: `alfworld_0`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The turns.
    pub conversations: Vec<Turn>,
    /// Reward of the episode (AgentTuning keeps trajectories with reward 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    /// Free-form outcome (`success`, `step_limit`, `cancelled`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A rendered piece of a trajectory and whether it is trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Text.
    pub text: String,
    /// Loss is computed on it.
    pub train: bool,
}

/// A tokenized trajectory: ids and a same-length mask (`true` = loss on that token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedTrajectory {
    /// Token ids (BOS included when the tokenizer adds one).
    pub ids: Vec<u32>,
    /// Loss mask.
    pub train: Vec<bool>,
}

impl Trajectory {
    /// The turns as chat messages (`human` → `user`, `gpt` → `assistant`).
    ///
    /// # Errors
    /// An unknown `from`.
    pub fn messages(&self) -> Result<Vec<Message>> {
        self.conversations
            .iter()
            .map(|t| {
                let role = match t.from.as_str() {
                    "human" | "user" => "user",
                    "gpt" | "assistant" => "assistant",
                    "system" => "system",
                    other => return Err(Error::InvalidArgument(format!("unknown speaker {other:?}"))),
                };
                Ok(Message::new(role, t.value.as_str()))
            })
            .collect()
    }

    /// Renders the episode with `template` into segments that concatenate to the full conversation; an
    /// assistant turn's segment is its reply and the template's turn end (what the model must learn to
    /// produce), trained on when the turn says `loss: true`.
    ///
    /// # Errors
    /// Unknown speakers; a template that does not render the conversation incrementally.
    pub fn render(&self, template: &ChatTemplate) -> Result<Vec<Segment>> {
        self.render_messages(template, &self.messages()?)
    }

    /// [`Trajectory::render`] of `msgs` (this trajectory's messages, or stand-ins for their contents).
    fn render_messages(&self, template: &ChatTemplate, msgs: &[Message]) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        let mut done = String::new();
        for (i, m) in msgs.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = template.render(&msgs[..i], true)?;
            let full = template.render(&msgs[..=i], false)?;
            let (Some(context), Some(reply)) = (prompt.strip_prefix(done.as_str()), full.strip_prefix(prompt.as_str())) else {
                return Err(Error::InvalidArgument(format!("template does not render turn {i} incrementally")));
            };
            // The reply ends with the turn end; what follows belongs to the next turn.
            let cut = match template.turn_end() {
                Some(end) => reply.rfind(end).map_or(reply.len(), |p| p + end.len()),
                None => reply.len(),
            };
            segments.push(Segment { text: context.to_string(), train: false });
            segments.push(Segment { text: reply[..cut].to_string(), train: self.conversations[i].loss == Some(true) });
            done = format!("{prompt}{}", &reply[..cut]);
        }
        let all = template.render(msgs, false)?;
        match all.strip_prefix(done.as_str()) {
            Some(rest) if !rest.is_empty() => segments.push(Segment { text: rest.to_string(), train: false }),
            Some(_) => {}
            None => return Err(Error::InvalidArgument("template output is not incremental".into())),
        }
        segments.retain(|s| !s.text.is_empty());
        Ok(segments)
    }

    /// Renders and tokenizes the episode as an agent acting in it would see it: the template's own
    /// text (role markers, turn ends) with its control tokens, every turn's content as plain text, so
    /// a control-token string inside a recorded observation or reply (`</s>`, `<|im_end|>`) stays
    /// text and cannot end a turn in the training data. A token is trained when it belongs to a
    /// trained segment (a reply marked `loss: true` and its turn end). With `max_tokens`, the first
    /// `max_tokens` tokens are kept (a warning is logged when some are cut).
    ///
    /// # Errors
    /// As [`Trajectory::render`]; tokenizer errors.
    pub fn tokenize(&self, template: &ChatTemplate, tokenizer: &Tokenizer, max_tokens: Option<usize>) -> Result<TokenizedTrajectory> {
        let msgs = self.messages()?;
        let segments = self.render_messages(template, &marked_messages(&msgs))?;
        let contents: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
        // The whole conversation at once (template text runs across segment ends, as the agent
        // tokenizes it); a token is trained when it starts inside a trained segment.
        let text: String = segments.iter().map(|s| s.text.as_str()).collect();
        let mut trained = Vec::new();
        let mut at = 0;
        for s in &segments {
            if s.train {
                trained.push(at..at + s.text.len());
            }
            at += s.text.len();
        }
        let (body, starts) = encode_marked_with_offsets(tokenizer, &text, &contents)?;
        let (mut ids, mut train) = (Vec::with_capacity(body.len() + 1), Vec::with_capacity(body.len() + 1));
        if tokenizer.add_bos_by_default() {
            if let Some(b) = tokenizer.bos_id() {
                ids.push(b);
                train.push(false);
            }
        }
        train.extend(starts.iter().map(|p| trained.iter().any(|r| r.contains(p))));
        ids.extend(body);
        if let Some(n) = max_tokens.filter(|&n| n < ids.len()) {
            tracing::warn!(id = ?self.id, tokens = ids.len(), kept = n, "trajectory truncated");
            ids.truncate(n);
            train.truncate(n);
        }
        Ok(TokenizedTrajectory { ids, train })
    }
}
