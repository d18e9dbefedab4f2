//! The real AgentInstruct ALFWorld trajectories (`$AGENTLM_ALFWORLD`, or ../shared/data/agentinstruct where
//! a team has it; each test prints `SKIPPED` without them): every agent turn parses
//! as the action it contains; rendering with llama-2 and tokenization give the loss mask AgentTuning
//! trains with (loss only on turns marked `loss: true`).

mod common;

use agentlm::agent::format::ALFWORLD_VERBS;
use agentlm::agent::{Action, ActionFormat, Trajectory};
use agentlm::runtime::chat_tokens;
use agentlm::{BuiltinTemplate, ChatTemplate, LoadOptions, Model};

/// The trajectories, or `None` after a `SKIPPED` line when the data is not available.
fn trajectories(test: &str) -> Option<Vec<Trajectory>> {
    let path = common::alfworld_or_skip(test)?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("AgentInstruct row")).collect())
}

#[test]
fn every_agent_turn_parses_as_its_action() {
    let Some(all) = trajectories("agentinstruct::every_agent_turn_parses_as_its_action") else { return };
    assert_eq!(all.len(), 50);
    let (mut actions, mut thoughts, mut other_verbs) = (0, 0, vec![]);
    for t in &all {
        for turn in t.conversations.iter().filter(|c| c.from == "gpt") {
            let parsed = ActionFormat::Alfworld.parse(&turn.value);
            if turn.loss != Some(true) {
                // The acknowledgement turn ("OK. I'll follow your instructions...") has no action.
                assert!(parsed.action.is_err(), "{:?}: {:?}", t.id, turn.value);
                continue;
            }
            let written = turn.value.rsplit("ACTION:").next().unwrap().lines().next().unwrap().trim();
            match parsed.action {
                Ok(Action::Call { tool, input }) => {
                    if !ALFWORLD_VERBS.contains(&tool.as_str()) {
                        other_verbs.push(written.to_string());
                    }
                    assert_eq!(format!("{tool} {input}").trim(), written, "{:?}", t.id);
                }
                other => panic!("{:?}: {:?} parsed as {other:?}", t.id, turn.value),
            }
            actions += 1;
            thoughts += usize::from(parsed.thought.is_some());
        }
    }
    assert!(actions > 500 && thoughts > 50, "{actions} actions, {thoughts} with thoughts");
    // A few replies use actions outside ALFWorld's verbs (`ACTION: Task succeeded.`,
    // `report problem with toilet 1`); they still parse as the action they contain (checked above), and
    // the environment answers them "Nothing happened.".
    assert_eq!(other_verbs.len(), 8, "{other_verbs:?}");
    assert!(other_verbs.iter().all(|a| a.starts_with("Task ") || a.starts_with("report ")), "{other_verbs:?}");
}

#[test]
fn llama2_rendering_and_loss_masks() {
    let Some(all) = trajectories("agentinstruct::llama2_rendering_and_loss_masks") else { return };
    let whole = ChatTemplate::builtin(BuiltinTemplate::Llama2 { default_system: true });
    let template = &whole;
    let model = Model::load(common::model_path(), &LoadOptions::default()).unwrap();
    let tok = model.tokenizer();
    for t in all {
        let segments = t.render(template).unwrap();
        let joined: String = segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(joined, whole.render(&t.messages().unwrap(), false).unwrap(), "{:?}", t.id);
        assert!(joined.starts_with("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nInteract with a household"));
        // One trained segment per `loss: true` turn, exactly " {reply} </s>".
        let trained: Vec<&str> = segments.iter().filter(|s| s.train).map(|s| s.text.as_str()).collect();
        let want: Vec<String> = t.conversations.iter().filter(|c| c.loss == Some(true)).map(|c| format!(" {} </s>", c.value)).collect();
        assert_eq!(trained, want, "{:?}", t.id);

        let tt = t.tokenize(template, tok, None).unwrap();
        assert_eq!(tt.ids.len(), tt.train.len());
        // The ids are those the agent feeds when it acts in this conversation (contents as plain text).
        assert_eq!(tt.ids, chat_tokens(template, tok, &t.messages().unwrap(), false).unwrap(), "{:?}", t.id);
        // Trained tokens come in one run per `loss: true` turn, decoding to " {reply} </s>" (a token may
        // run a byte past a reply's end where this byte-level BPE merges across the boundary, `</s><`).
        let mut runs: Vec<Vec<u32>> = Vec::new();
        for (k, (&id, &m)) in tt.ids.iter().zip(&tt.train).enumerate() {
            if m {
                if k == 0 || !tt.train[k - 1] {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push(id);
            }
        }
        let decoded: Vec<String> = runs.iter().map(|r| tok.decode(r, false).unwrap()).collect();
        assert_eq!(decoded.len(), want.len(), "{:?}", t.id);
        for (d, w) in decoded.iter().zip(&want) {
            let rest = d.strip_prefix(w.as_str()).unwrap_or_else(|| panic!("{:?}: {d:?} does not start with {w:?}", t.id));
            assert!(rest.is_empty() || rest == "<", "{:?}: {d:?} runs past {w:?}", t.id);
        }
        assert!(!tt.train[0] && tt.train.iter().filter(|&&m| m).count() < tt.train.len() / 2);
    }
}

/// The exact masking rule of the transformers reference (golden `smollm2_lora_agentinstruct_golden.json`):
/// SmolLM2's own template, loss on the content and `<|im_end|>` of `loss: true` assistant turns, first
/// 1024 tokens kept. Ids and masks must be identical.
#[test]
fn masks_match_the_transformers_reference_on_smollm2s_template() {
    let Some(path) = common::agentinstruct_golden_or_skip("agentinstruct::masks_match_the_transformers_reference") else {
        return;
    };
    let golden = common::json(&path);
    let ml = &golden["masked_loss"];
    let max = ml["max_tokens"].as_u64().unwrap() as usize;
    let model = Model::load(common::model_path(), &LoadOptions::default()).unwrap();
    let template = model.chat_template().expect("SmolLM2 ships a template");
    let mut checked = 0;
    for g in ml["trajectories"].as_array().unwrap() {
        let msgs = g["messages"].as_array().unwrap();
        let flags = g["turn_loss_flags"].as_array().unwrap();
        assert_eq!(msgs.len(), flags.len());
        let conversations = msgs
            .iter()
            .zip(flags)
            .map(|(m, f)| agentlm::agent::Turn {
                from: if m["role"] == "assistant" { "gpt".into() } else { "human".into() },
                value: m["content"].as_str().unwrap().to_string(),
                loss: f.as_bool(),
                accepted: None,
            })
            .collect();
        let t = Trajectory { id: g["id"].as_str().map(str::to_string), conversations, reward: None, outcome: None };
        let tt = t.tokenize(template, model.tokenizer(), Some(max)).unwrap();
        let want_ids: Vec<u32> = g["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want_mask: Vec<bool> = g["loss_mask"].as_array().unwrap().iter().map(|v| v.as_u64() == Some(1)).collect();
        assert_eq!(tt.ids, want_ids, "{:?}: ids", t.id);
        assert_eq!(tt.train, want_mask, "{:?}: loss mask", t.id);
        assert_eq!(tt.train.iter().filter(|&&m| m).count() as u64, g["n_loss_tokens"].as_u64().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 3);
}
