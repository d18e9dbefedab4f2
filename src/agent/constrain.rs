//! Admissible actions: a token-level constraint that keeps a reply to a bounded free thought and
//! exactly one of the host's admissible actions ([`ActionGrammar::admissible`], every format). The
//! general grammar of a format (tools, schemas, value sets) is [`super::grammar`]'s, on llguidance;
//! this byte matcher stays for the one language it serves faster, a finite set of strings.
//!
//! The grammar (per format, see [`ActionGrammar`]):
//! `[thought_prefix free-text "\n" sep] action_prefix ACTION "\n"`, e.g. for ALFWorld
//! `THOUGHT: ...\n ACTION: go to countertop 1\n` and for classic ReAct `Thought: ...\nAction: search[x]\n`.
//! Every candidate token's text is run through a byte-level matcher; tokens that would leave the
//! grammar get a logit of minus infinity. While an admissible action is being written, the allowed
//! tokens are looked up instead (every prefix of what each candidate has left, in a [`PieceIndex`]):
//! a few hundred hash lookups per token rather than a pass over the vocabulary. Any tokenization of an
//! admissible action is reachable, since every token whose text continues a candidate is allowed.

use std::collections::HashMap;

use super::format::ActionFormat;

/// The action grammar of a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionGrammar {
    thought_prefix: &'static str,
    /// Between the thought's newline and the action prefix.
    separator: &'static str,
    action_prefix: &'static str,
    /// Ends the action (`"\n"`).
    close: &'static str,
    /// The complete actions allowed, each followed by `close` (the bytes matched against).
    actions: Vec<Vec<u8>>,
    /// Longest thought, in bytes, before the newline is forced.
    max_thought_bytes: usize,
}

/// Token ids by their text's bytes: the lookup behind admissible actions.
#[derive(Debug, Default)]
pub struct PieceIndex {
    by_bytes: HashMap<Box<[u8]>, Vec<u32>>,
    longest: usize,
    /// Per token: its text's length in bytes when it holds no newline (`None`: it does, or it has no
    /// text). Inside a thought such a token is allowed exactly when the thought stays within its cap.
    plain_len: Vec<Option<u32>>,
}

impl PieceIndex {
    /// Indexes `pieces` (the text of each token id; `None`: never allowed).
    pub fn new(pieces: &[Option<String>]) -> Self {
        let mut by_bytes: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut longest = 0;
        let mut plain_len = Vec::with_capacity(pieces.len());
        for (id, p) in pieces.iter().enumerate() {
            let p = p.as_deref().filter(|p| !p.is_empty());
            plain_len.push(p.filter(|p| !p.contains('\n')).map(|p| p.len() as u32));
            if let Some(p) = p {
                longest = longest.max(p.len());
                by_bytes.entry(p.as_bytes().into()).or_default().push(id as u32);
            }
        }
        PieceIndex { by_bytes, longest, plain_len }
    }

    /// Ids of the tokens whose text is `bytes`.
    fn get(&self, bytes: &[u8]) -> &[u32] {
        self.by_bytes.get(bytes).map_or(&[], Vec::as_slice)
    }
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
    /// `n` bytes of the action (with its closing newline) matched.
    Tool(usize),
    /// The action is complete.
    Done,
}

/// Tracks a reply being generated under an [`ActionGrammar`].
#[derive(Debug, Clone)]
pub struct Constraint {
    grammar: ActionGrammar,
    state: State,
    /// The action bytes matched so far.
    tool: Vec<u8>,
    /// 1: the thought must end now (the reply's token budget for it is spent).
    wrap_up: u8,
}

impl ActionGrammar {
    /// The grammar for `format` whose action is exactly one of `actions` (complete action texts as
    /// written after the format's action prefix: `go to cabinet 1`, `search[red shoes]`,
    /// `get_relations(#0)`, `bash\n```bash\nls\n```` for OS, a whole JSON call for JSON), then a
    /// newline. Every format has one: ALFWorld `THOUGHT: `/`ACTION: `; ReAct, WebShop, KG `Thought: `/
    /// `Action: `; OS `Think: `/`Act: `; DB a free line before `Action: `; Mind2Web a free line before
    /// `Answer: `; JSON the call alone. `actions` must not be empty.
    pub fn admissible(format: ActionFormat, actions: &[String]) -> Self {
        let (thought_prefix, separator, action_prefix) = match format {
            ActionFormat::Alfworld => ("THOUGHT: ", " ", "ACTION: "),
            ActionFormat::React | ActionFormat::WebShop | ActionFormat::Kg => ("Thought: ", "", "Action: "),
            ActionFormat::Os => ("Think: ", "", "Act: "),
            ActionFormat::Db => ("", "", "Action: "),
            ActionFormat::Mind2Web => ("", "", "Answer: "),
            ActionFormat::Json => ("", "", ""),
        };
        let close = "\n";
        let actions = actions.iter().map(|a| [a.as_bytes(), close.as_bytes()].concat()).collect();
        ActionGrammar { thought_prefix, separator, action_prefix, close, actions, max_thought_bytes: 400 }
    }

    /// The text every reply starts its action with (`ACTION: `), after any thought.
    pub fn action_prefix(&self) -> &'static str {
        self.action_prefix
    }

    /// Whether the reply may hold a thought before its action.
    fn has_thought(&self) -> bool {
        !self.action_prefix.is_empty()
    }

    /// The state a reply starts in.
    fn start(&self) -> State {
        if self.has_thought() {
            State::Start(0)
        } else {
            State::Tool(0)
        }
    }

    /// Caps the thought's length (bytes) before the action is forced.
    pub fn with_max_thought_bytes(mut self, n: usize) -> Self {
        self.max_thought_bytes = n;
        self
    }

    /// Moves the cursor (`state`, the action bytes matched so far) over one byte; false when the
    /// byte leaves the grammar (the cursor is then meaningless).
    fn push(&self, wrap_up: u8, state: &mut State, tool: &mut Vec<u8>, b: u8) -> bool {
        let g = self;
        let tp = g.thought_prefix.as_bytes();
        let ap = g.action_prefix.as_bytes();
        *state = match *state {
            State::Start(n) => {
                // The two prefixes differ in their first byte (true of every format here). Without a
                // thought prefix, the thought is any line not starting like the action prefix.
                if n == 0 && tp.is_empty() {
                    if ap.first() == Some(&b) {
                        if ap.len() == 1 {
                            State::Tool(0)
                        } else {
                            State::ActionPrefix(1)
                        }
                    } else if b == b'\n' || wrap_up >= 1 {
                        return false;
                    } else {
                        State::Thought(1)
                    }
                } else if n == 0 && ap.first() == Some(&b) && tp.first() != Some(&b) {
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
                // `tool` holds the action bytes so far; some action (with its closing newline) goes
                // on with `b`, and the reply is done when one is complete.
                let actions = &g.actions;
                if !actions.iter().any(|a| a.starts_with(tool) && a.get(tool.len()) == Some(&b)) {
                    return false;
                }
                tool.push(b);
                if actions.iter().any(|a| a[..] == tool[..]) {
                    State::Done
                } else {
                    State::Tool(n + 1)
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
        Constraint { state: grammar.start(), grammar, tool: Vec::new(), wrap_up: 0 }
    }

    /// Once the reply is done: the action chosen (without its closing newline).
    pub fn chosen_action(&self) -> Option<String> {
        if self.state != State::Done {
            return None;
        }
        let n = self.tool.len().saturating_sub(self.grammar.close.len());
        Some(String::from_utf8_lossy(&self.tool[..n]).into_owned())
    }

    /// Whether the reply is writing its action (the allowed tokens are looked up).
    fn in_action(&self) -> bool {
        matches!(self.state, State::Tool(_))
    }

    /// Hurries the reply to its action as the thought's token budget runs out: `1` ends the thought
    /// at once (levels only rise).
    pub fn wrap_up(&mut self, level: u8) {
        self.wrap_up = self.wrap_up.max(level.min(1));
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
        self.mask_indexed(logits, pieces, None)
    }

    /// [`Constraint::mask`], with the allowed tokens looked up in `index` (built from the same
    /// `pieces`) while the action is being written: the same result, far fewer checks.
    pub fn mask_indexed(&self, logits: &mut [f32], pieces: &[Option<String>], index: Option<&PieceIndex>) {
        if let (Some(index), true) = (index, self.in_action()) {
            let actions = &self.grammar.actions;
            let done = &self.tool[..];
            let mut keep: Vec<(u32, f32)> = Vec::new();
            for a in actions.iter().filter(|a| a.starts_with(done)) {
                let rest = &a[done.len()..];
                for k in 1..=rest.len().min(index.longest) {
                    for &id in index.get(&rest[..k]) {
                        if let Some(&l) = logits.get(id as usize) {
                            keep.push((id, l));
                        }
                    }
                }
            }
            logits.fill(f32::NEG_INFINITY);
            for (id, l) in keep {
                logits[id as usize] = l;
            }
            return;
        }
        if let (Some(index), State::Thought(n), 0) = (index, self.state, self.wrap_up) {
            // Inside the thought: a token without a newline only has to fit the cap; only tokens
            // with a newline (few) go through the matcher.
            let room = self.grammar.max_thought_bytes.saturating_sub(n);
            for (i, l) in logits.iter_mut().enumerate() {
                let allowed = match index.plain_len.get(i) {
                    Some(Some(len)) => *len as usize <= room,
                    _ => pieces.get(i).and_then(|p| p.as_deref()).is_some_and(|t| self.allows(t)),
                };
                if !allowed {
                    *l = f32::NEG_INFINITY;
                }
            }
            return;
        }
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
        let actions = ["go to fridge 1", "take apple 1 from table 1", "inventory"].map(String::from);
        Constraint::new(ActionGrammar::admissible(ActionFormat::Alfworld, &actions))
    }

    #[test]
    fn alfworld_grammar() {
        let mut c = alf();
        assert!(c.advance("THOUGHT: I should look in the fridge.\n ACTION: go to fridge 1\n"));
        assert!(c.is_done());
        assert_eq!(c.chosen_action().as_deref(), Some("go to fridge 1"));
        let mut c = alf();
        assert!(c.advance("ACTION: inventory\n") && c.is_done());
        let c = alf();
        assert!(c.allows("ACT") && c.allows("THO") && c.allows("ACTION: go") && !c.allows("I think"));
        assert!(!c.allows("ACTION: fly to the moon"), "not admissible");
        assert!(!c.allows("ACTION: go to fridge 2"), "not admissible");
        let mut c = alf();
        assert!(c.advance("ACTION: take apple 1 from table 1"));
        assert!(!c.is_done() && c.allows("\n") && !c.allows("\nmore"));
        assert!(c.advance("\n") && c.is_done() && !c.allows("x"));
        // A thought ends with a newline followed by the action.
        let mut c = alf();
        assert!(c.advance("THOUGHT: hm\n"));
        assert!(!c.allows("THOUGHT") && c.allows(" ACT"));
    }

    #[test]
    fn react_grammar_and_mask() {
        let actions = vec!["calculator[2+2]".to_string()];
        let mut c = Constraint::new(ActionGrammar::admissible(ActionFormat::React, &actions));
        assert!(c.advance("Thought: add them\nAction: calculator[2+2"));
        assert!(c.allows("]\n") && !c.allows("]x"));
        let c = Constraint::new(ActionGrammar::admissible(ActionFormat::React, &actions));
        let pieces = vec![Some("Action".to_string()), Some("Hello".to_string()), None, Some("Th".to_string())];
        let mut logits = vec![1.0, 5.0, 9.0, 0.5, 7.0];
        c.mask(&mut logits, &pieces);
        assert_eq!(logits[0], 1.0);
        assert_eq!(logits[3], 0.5);
        assert!(logits[1].is_infinite() && logits[2].is_infinite() && logits[4].is_infinite());
    }

    #[test]
    fn wrapping_up_forces_the_action() {
        let mut c = alf();
        assert!(c.advance("THOUGHT: long"));
        c.wrap_up(1);
        assert!(!c.allows(" more") && c.allows("\n ACTION: take"));
    }

    #[test]
    fn thought_length_is_capped() {
        let g = ActionGrammar::admissible(ActionFormat::Alfworld, &["look".to_string()]).with_max_thought_bytes(5);
        let mut c = Constraint::new(g);
        assert!(c.advance("THOUGHT: abcde"));
        assert!(!c.allows("f") && c.allows("\n"));
    }

    /// Property: over random admissible sets and random logits (standing in for any prompt), greedy
    /// decoding under the constraint always ends in exactly one of the admissible actions, in every
    /// format; the indexed mask equals the full scan at every token.
    #[test]
    fn admissible_actions_always_decode_to_one_of_the_set() {
        let words = ["go", " to", " cabinet", " 1", " 2", "take", " apple", " from", "put", " in/on", "open", "\n", " ", "ca", "b", "inet",
            "ACTION", ":", " AC", "TION: ", "THOUGHT: ", "Thought: ", "Action: ", "Act: ", "Answer: ", "search[", "]", "x", "1", "2", "(", ")", "#0",
            "{\"name\": ", "\"a\"", "}", "I think", " go to", " t", "o", "ap", "ple", "B.", "\n```bash\nls\n```", "ls"];
        let mut pieces: Vec<Option<String>> = words.iter().map(|w| Some(w.to_string())).collect();
        // Every single byte too, so any string is reachable.
        for b in 32u8..127 {
            pieces.push(Some((b as char).to_string()));
        }
        pieces.push(None);
        let index = PieceIndex::new(&pieces);
        let mut rng = crate::testdata::Rng(0x2545_F491_4F6C_DD1D);
        let mut next = |n: usize| rng.below(n);
        let parts = ["go to", "cabinet 1", "cabinet 2", "take apple 1 from", "put apple 1 in/on", "open", "search[x]", "get_relations(#0)", "B.", "bash\n```bash\nls\n```", "{\"name\": \"a\"}", "look"];
        for round in 0..300 {
            let n = 1 + next(6);
            let actions: Vec<String> = (0..n).map(|_| {
                let k = 1 + next(2);
                (0..k).map(|_| parts[next(parts.len())]).collect::<Vec<_>>().join(" ")
            }).collect();
            let format = ActionFormat::ALL[round % 8];
            let mut c = Constraint::new(ActionGrammar::admissible(format, &actions).with_max_thought_bytes(12));
            let mut text = String::new();
            for _ in 0..200 {
                let logits: Vec<f32> = (0..pieces.len()).map(|_| next(1000) as f32).collect();
                let (mut a, mut b) = (logits.clone(), logits);
                c.mask(&mut a, &pieces);
                c.mask_indexed(&mut b, &pieces, Some(&index));
                assert_eq!(a, b, "{format:?} {actions:?} after {text:?}");
                let best = (0..a.len()).filter(|&i| a[i].is_finite()).max_by(|&i, &j| a[i].total_cmp(&a[j]));
                let best = best.unwrap_or_else(|| panic!("dead end: {format:?} {actions:?} after {text:?}"));
                let piece = pieces[best].clone().unwrap();
                assert!(c.advance(&piece));
                text.push_str(&piece);
                if c.is_done() {
                    break;
                }
            }
            assert!(c.is_done(), "{format:?} {actions:?}: {text:?}");
            let chosen = c.chosen_action().unwrap();
            assert!(actions.contains(&chosen), "{chosen:?} not in {actions:?}");
            assert!(text.ends_with(&format!("{}{chosen}\n", c.grammar().action_prefix())), "{text:?}");
            // And the format's own parser reads the same action back (where it is a call or a finish).
            if format == ActionFormat::Alfworld && !chosen.contains('\n') {
                let parsed = format.parse(&text).action.unwrap();
                match parsed {
                    super::super::format::Action::Call { tool, input } => {
                        assert_eq!(if input.is_empty() { tool } else { format!("{tool} {input}") }, chosen)
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}
