//! The named chat formats agent models were trained with, reproduced byte for byte.

use super::{Message, TemplateError};

/// AgentLM's fixed system prompt (AgentTuning trains and evaluates with it).
pub const LLAMA2_AGENTLM_SYSTEM: &str = "You are a helpful, respectful and honest assistant.";

/// A named chat format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// Llama-2-chat as FastChat renders it for AgentLM (AgentTuning):
    /// `[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]`.
    /// The BOS token is left to the tokenizer. A `system` message replaces the default system prompt;
    /// `default_system: false` drops it when there is none (`[INST] {user} [/INST]`).
    Llama2 {
        /// Use [`LLAMA2_AGENTLM_SYSTEM`] when the conversation has no system message.
        default_system: bool,
    },
    /// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n`, generation prompt `<|im_start|>assistant\n`.
    ChatMl,
    /// Agent-FLAN (InternLM's Llama-2 agent format): user and system turns `<|Human|>\u{0D46}{content}\n `,
    /// assistant turns `<|Assistant|>\u{0D46}{content}\u{0D3F}\n `, generation prompt `<|Assistant|>\u{0D46}`.
    AgentFlan,
}

impl BuiltinTemplate {
    /// By name: `llama-2`, `llama-2-no-system`, `chatml`, `agent-flan`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama-2" | "llama2" | "agentlm" => Some(BuiltinTemplate::Llama2 { default_system: true }),
            "llama-2-no-system" => Some(BuiltinTemplate::Llama2 { default_system: false }),
            "chatml" => Some(BuiltinTemplate::ChatMl),
            "agent-flan" | "agentflan" => Some(BuiltinTemplate::AgentFlan),
            _ => None,
        }
    }

    /// The text after which the model's reply ends (also its stop sequence), where one is not an EOS token.
    pub fn turn_end(&self) -> &'static str {
        match self {
            BuiltinTemplate::Llama2 { .. } => "</s>",
            BuiltinTemplate::ChatMl => "<|im_end|>",
            BuiltinTemplate::AgentFlan => "\u{0D3F}",
        }
    }

    /// Renders `messages` (the assistant header appended when `add_generation_prompt`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, TemplateError> {
        match self {
            BuiltinTemplate::Llama2 { default_system } => llama2(messages, *default_system, add_generation_prompt),
            BuiltinTemplate::ChatMl => {
                let mut out = String::new();
                for m in messages {
                    out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
                Ok(out)
            }
            BuiltinTemplate::AgentFlan => {
                let mut out = String::new();
                for m in messages {
                    match m.role.as_str() {
                        "user" | "system" => out.push_str(&format!("<|Human|>\u{0D46}{}\n ", m.content)),
                        "assistant" => out.push_str(&format!("<|Assistant|>\u{0D46}{}\u{0D3F}\n ", m.content)),
                        other => return Err(TemplateError::Render(format!("agent-flan has no role {other:?}"))),
                    }
                }
                if add_generation_prompt {
                    out.push_str("<|Assistant|>\u{0D46}");
                }
                Ok(out)
            }
        }
    }
}

/// FastChat's `SeparatorStyle.LLAMA2` with roles `[INST]`/`[/INST]`, separators `" "` and `" </s><s>"`.
fn llama2(messages: &[Message], default_system: bool, add_generation_prompt: bool) -> Result<String, TemplateError> {
    let (system, turns) = match messages.first() {
        Some(m) if m.role == "system" => (Some(m.content.as_str()), &messages[1..]),
        _ => (default_system.then_some(LLAMA2_AGENTLM_SYSTEM), messages),
    };
    let mut out = match system {
        Some(s) if !s.is_empty() => format!("[INST] <<SYS>>\n{s}\n<</SYS>>\n\n"),
        _ => "[INST] ".to_string(),
    };
    for (i, m) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if m.role != want {
            return Err(TemplateError::Render(format!(
                "llama-2 turns must alternate user/assistant after an optional system message; message {i} is {:?}",
                m.role
            )));
        }
        if i == 0 {
            out.push_str(&m.content);
            out.push(' ');
        } else if i % 2 == 1 {
            out.push_str("[/INST] ");
            out.push_str(&m.content);
            out.push_str(" </s><s>");
        } else {
            out.push_str("[INST] ");
            out.push_str(&m.content);
            out.push(' ');
        }
    }
    if add_generation_prompt && turns.len() % 2 == 1 {
        out.push_str("[/INST]");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(&str, &str)]) -> Vec<Message> {
        list.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    #[test]
    fn llama2_matches_fastchat_for_agentlm() {
        let t = BuiltinTemplate::Llama2 { default_system: true };
        let conv = msgs(&[("user", "u1"), ("assistant", "a1"), ("user", "u2")]);
        assert_eq!(
            t.render(&conv, true).unwrap(),
            "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nu1 [/INST] a1 </s><s>[INST] u2 [/INST]"
        );
        assert_eq!(
            t.render(&conv, false).unwrap(),
            "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nu1 [/INST] a1 </s><s>[INST] u2 "
        );
        let no_sys = BuiltinTemplate::Llama2 { default_system: false };
        assert_eq!(no_sys.render(&msgs(&[("user", "hi")]), true).unwrap(), "[INST] hi [/INST]");
        let own = msgs(&[("system", "S"), ("user", "hi"), ("assistant", "yo")]);
        assert_eq!(no_sys.render(&own, false).unwrap(), "[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] yo </s><s>");
        assert!(t.render(&msgs(&[("assistant", "x")]), true).is_err());
    }

    #[test]
    fn chatml_and_agent_flan_golden_strings() {
        let conv = msgs(&[("system", "S"), ("user", "u"), ("assistant", "a")]);
        assert_eq!(
            BuiltinTemplate::ChatMl.render(&conv, true).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>assistant\n"
        );
        let flan = BuiltinTemplate::AgentFlan.render(&conv, true).unwrap();
        assert_eq!(flan, "<|Human|>\u{0D46}S\n <|Human|>\u{0D46}u\n <|Assistant|>\u{0D46}a\u{0D3F}\n <|Assistant|>\u{0D46}");
        // The separators are the Malayalam signs U+0D46 and U+0D3F, three UTF-8 bytes each.
        assert_eq!("\u{0D46}".as_bytes(), [0xE0, 0xB5, 0x86]);
        assert_eq!("\u{0D3F}".as_bytes(), [0xE0, 0xB4, 0xBF]);
        assert!(BuiltinTemplate::AgentFlan.render(&msgs(&[("tool", "x")]), false).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(BuiltinTemplate::from_name("llama-2"), Some(BuiltinTemplate::Llama2 { default_system: true }));
        assert_eq!(BuiltinTemplate::from_name("agent-flan"), Some(BuiltinTemplate::AgentFlan));
        assert_eq!(BuiltinTemplate::from_name("vicuna"), None);
    }
}
