//! Constrained actions: a token-level constraint that keeps a reply inside the action grammar of its
//! format, with the tool name restricted to registered tools. The thought stays free text.
//!
//! The grammar (per format, see [`ActionGrammar`]):
//! `[thought_prefix free-text "\n" sep] action_prefix TOOL [open args] close`, e.g. for ALFWorld
//! `THOUGHT: ...\n ACTION: go to countertop 1\n` and for classic ReAct `Thought: ...\nAction: calc[2+2]\n`.
//! Every candidate token's text is run through a byte-level matcher; tokens that would leave the
//! grammar get a logit of minus infinity.

use super::format::ActionFormat;

/// The action grammar of a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionGrammar {
    thought_prefix: &'static str,
    /// Between the thought's newline and the action prefix.
    separator: &'static str,
    action_prefix: &'static str,
    /// After the tool name, before the arguments (`" "` or `"["`).
    args_open: &'static str,
    /// Ends the action (`"\n"` or `"]\n"`).
    close: &'static str,
    tools: Vec<String>,
    /// Longest thought, in bytes, before the newline is forced.
    max_thought_bytes: usize,
}

/// Where the matcher is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` bytes of the thought prefix matched (at 0 the action prefix may start instead).
    Start(usize),
    /// In the thought text (`n` bytes of it).
    Thought(usize),
    /// After the thought's newline: `n` bytes of `separator + action_prefix` matched.
    AfterThought(usize),
    /// `n` bytes of the action prefix matched (entered from Start).
    ActionPrefix(usize),
    /// `n` bytes of a tool name matched.
    Tool(usize),
    /// In the arguments.
    Args,
    /// `n` bytes of the closing text matched.
    Close(usize),
    /// The action is complete.
    Done,
}

/// Tracks a reply being generated under an [`ActionGrammar`].
#[derive(Debug, Clone)]
pub struct Constraint {
    grammar: ActionGrammar,
    state: State,
    /// The tool-name bytes matched so far.
    tool: Vec<u8>,
    /// 1: the thought must end now; 2: the arguments must close now too (the reply's token budget is
    /// nearly spent, so the action is completed rather than cut off).
    wrap_up: u8,
}

impl ActionGrammar {
    /// The grammar for `format` with `tools` as the only action names; `None` for formats without a
    /// line-oriented action grammar here.
    pub fn for_format(format: ActionFormat, tools: Vec<String>) -> Option<Self> {
        let (thought_prefix, separator, action_prefix, args_open, close) = match format {
            ActionFormat::Alfworld => ("THOUGHT: ", " ", "ACTION: ", " ", "\n"),
            ActionFormat::React | ActionFormat::WebShop => ("Thought: ", "", "Action: ", "[", "]\n"),
            _ => return None,
        };
        Some(ActionGrammar { thought_prefix, separator, action_prefix, args_open, close, tools, max_thought_bytes: 400 })
    }

    /// Caps the thought's length (bytes) before the action is forced.
    pub fn with_max_thought_bytes(mut self, n: usize) -> Self {
        self.max_thought_bytes = n;
        self
    }

    /// Moves the cursor (`state`, the tool-name bytes matched so far) over one byte; false when the
    /// byte leaves the grammar (the cursor is then meaningless).
    fn push(&self, wrap_up: u8, state: &mut State, tool: &mut Vec<u8>, b: u8) -> bool {
        let g = self;
        let tp = g.thought_prefix.as_bytes();
        let ap = g.action_prefix.as_bytes();
        *state = match *state {
            State::Start(n) => {
                // The two prefixes differ in their first byte (true of every format here).
                if n == 0 && ap.first() == Some(&b) && tp.first() != Some(&b) {
                    if ap.len() == 1 {
                        State::Tool(0)
                    } else {
                        State::ActionPrefix(1)
                    }
                } else if tp.get(n) == Some(&b) {
                    if n + 1 == tp.len() {
                        State::Thought(0)
                    } else {
                        State::Start(n + 1)
                    }
                } else {
                    return false;
                }
            }
            State::ActionPrefix(n) => {
                if ap.get(n) != Some(&b) {
                    return false;
                }
                if n + 1 == ap.len() {
                    State::Tool(0)
                } else {
                    State::ActionPrefix(n + 1)
                }
            }
            State::Thought(n) => {
                if b == b'\n' {
                    State::AfterThought(0)
                } else if n >= g.max_thought_bytes || wrap_up >= 1 {
                    return false;
                } else {
                    State::Thought(n + 1)
                }
            }
            State::AfterThought(n) => {
                // The separator, then the action prefix.
                let sep = g.separator.as_bytes();
                let want = if n < sep.len() { sep.get(n) } else { ap.get(n - sep.len()) };
                if want != Some(&b) {
                    return false;
                }
                if n + 1 == sep.len() + ap.len() {
                    State::Tool(0)
                } else {
                    State::AfterThought(n + 1)
                }
            }
            State::Tool(n) => {
                let complete = g.tools.iter().any(|t| t.as_bytes() == &tool[..]);
                // Some tool name goes on with `b` after what was matched.
                if g.tools.iter().any(|t| t.as_bytes().starts_with(tool) && t.as_bytes().get(tool.len()) == Some(&b)) {
                    tool.push(b);
                    State::Tool(n + 1)
                } else if complete && g.args_open.as_bytes().first() == Some(&b) {
                    State::Args
                } else if complete && g.close.as_bytes().first() == Some(&b) && g.args_open == " " {
                    // A tool without arguments (`ACTION: inventory\n`).
                    if g.close.len() == 1 {
                        State::Done
                    } else {
                        State::Close(1)
                    }
                } else {
                    return false;
                }
            }
            State::Args => {
                let close = g.close.as_bytes();
                if b == close[0] {
                    if close.len() == 1 {
                        State::Done
                    } else {
                        State::Close(1)
                    }
                } else if b == b'\n' || wrap_up >= 2 {
                    return false;
                } else {
                    State::Args
                }
            }
            State::Close(n) => {
                let close = g.close.as_bytes();
                if close.get(n) != Some(&b) {
                    return false;
                }
                if n + 1 == close.len() {
                    State::Done
                } else {
                    State::Close(n + 1)
                }
            }
            State::Done => return false,
        };
        true
    }
}

impl Constraint {
    /// A matcher at the start of a reply.
    pub fn new(grammar: ActionGrammar) -> Self {
        Constraint { grammar, state: State::Start(0), tool: Vec::new(), wrap_up: 0 }
    }

    /// Hurries the reply to its end as its token budget runs out: `1` ends the thought at once, `2`
    /// also closes the arguments at once (levels only rise).
    pub fn wrap_up(&mut self, level: u8) {
        self.wrap_up = self.wrap_up.max(level.min(2));
    }

    /// The grammar it follows.
    pub fn grammar(&self) -> &ActionGrammar {
        &self.grammar
    }

    /// Whether the action is complete (generation should stop).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds generated text; returns false (and leaves the state unchanged) if it leaves the grammar.
    pub fn advance(&mut self, text: &str) -> bool {
        let (mut state, mut tool) = (self.state, self.tool.clone());
        if !text.as_bytes().iter().all(|&b| self.grammar.push(self.wrap_up, &mut state, &mut tool, b)) {
            return false;
        }
        self.state = state;
        self.tool = tool;
        true
    }

    /// Whether `text` may come next (the state is unchanged). Text after the action is complete is
    /// refused. Called once per vocabulary entry per token: it copies only the cursor, never the grammar.
    pub fn allows(&self, text: &str) -> bool {
        if text.is_empty() {
            return false;
        }
        let (mut state, mut tool) = (self.state, self.tool.clone());
        text.as_bytes().iter().all(|&b| self.grammar.push(self.wrap_up, &mut state, &mut tool, b))
    }

    /// Sets every logit whose token text (`pieces[id]`) may not come next to minus infinity. Tokens
    /// whose text is not known (`None`: special or partial-UTF-8 tokens) are forbidden.
    pub fn mask(&self, logits: &mut [f32], pieces: &[Option<String>]) {
        for (l, p) in logits.iter_mut().zip(pieces) {
            if !p.as_deref().is_some_and(|t| self.allows(t)) {
                *l = f32::NEG_INFINITY;
            }
        }
        for l in logits.iter_mut().skip(pieces.len()) {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alf() -> Constraint {
        let tools = ["go to", "take", "open", "inventory", "calculate"].iter().map(|s| s.to_string()).collect();
        Constraint::new(ActionGrammar::for_format(ActionFormat::Alfworld, tools).unwrap())
    }

    #[test]
    fn alfworld_grammar() {
        let mut c = alf();
        assert!(c.advance("THOUGHT: I should look in the fridge.\n ACTION: go to fridge 1\n"));
        assert!(c.is_done());
        let mut c = alf();
        assert!(c.advance("ACTION: inventory\n") && c.is_done());
        let c = alf();
        assert!(c.allows("ACT") && c.allows("THO") && c.allows("ACTION: go") && !c.allows("I think"));
        assert!(!c.allows("ACTION: fly to the moon"), "unregistered tool");
        assert!(!c.allows("ACTION: goto x"), "tool name must be complete");
        let mut c = alf();
        assert!(c.advance("ACTION: take apple 1"));
        assert!(!c.is_done() && c.allows("\n") && !c.allows("\nmore"));
        assert!(c.advance("\n") && c.is_done() && !c.allows("x"));
        // A thought ends with a newline followed by the action.
        let mut c = alf();
        assert!(c.advance("THOUGHT: hm\n"));
        assert!(!c.allows("THOUGHT") && c.allows(" ACT"));
    }

    #[test]
    fn react_grammar_and_mask() {
        let tools = vec!["calculator".to_string()];
        let mut c = Constraint::new(ActionGrammar::for_format(ActionFormat::React, tools).unwrap());
        assert!(c.advance("Thought: add them\nAction: calculator[2+2"));
        assert!(c.allows("]\n") && !c.allows("]x"));
        let c = Constraint::new(ActionGrammar::for_format(ActionFormat::React, vec!["calculator".into()]).unwrap());
        let pieces = vec![Some("Action".to_string()), Some("Hello".to_string()), None, Some("Th".to_string())];
        let mut logits = vec![1.0, 5.0, 9.0, 0.5, 7.0];
        c.mask(&mut logits, &pieces);
        assert_eq!(logits[0], 1.0);
        assert_eq!(logits[3], 0.5);
        assert!(logits[1].is_infinite() && logits[2].is_infinite() && logits[4].is_infinite());
        assert!(ActionGrammar::for_format(ActionFormat::Os, vec![]).is_none());
    }

    #[test]
    fn wrapping_up_forces_the_action_to_complete() {
        let mut c = alf();
        assert!(c.advance("THOUGHT: long"));
        c.wrap_up(1);
        assert!(!c.allows(" more") && c.allows("\n ACTION: take"));
        assert!(c.advance("\n ACTION: take apple"));
        assert!(c.allows(" 1"));
        c.wrap_up(2);
        assert!(!c.allows(" 1") && c.allows("\n"));
    }

    #[test]
    fn thought_length_is_capped() {
        let g = ActionGrammar::for_format(ActionFormat::Alfworld, vec!["look".into()]).unwrap().with_max_thought_bytes(5);
        let mut c = Constraint::new(g);
        assert!(c.advance("THOUGHT: abcde"));
        assert!(!c.allows("f") && c.allows("\n"));
    }
}
