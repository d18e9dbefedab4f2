use super::*;

fn call(tool: &str, input: &str) -> Result<Action, String> {
    Ok(Action::Call { tool: tool.into(), input: input.into() })
}
fn finish(answer: &str) -> Result<Action, String> {
    Ok(Action::Finish { answer: answer.into() })
}

#[test]
fn alfworld() {
    let p = ActionFormat::Alfworld.parse("THOUGHT: I need a laptop.\n ACTION: take laptop 1 from diningtable 1");
    assert_eq!(p.thought.as_deref(), Some("I need a laptop."));
    assert_eq!(p.action, call("take", "laptop 1 from diningtable 1"));
    assert_eq!(ActionFormat::Alfworld.parse("ACTION: go to countertop 1\n").action, call("go to", "countertop 1"));
    assert_eq!(ActionFormat::Alfworld.parse("ACTION: inventory").action, call("inventory", ""));
    // The last action wins.
    assert_eq!(ActionFormat::Alfworld.parse("ACTION: look\nACTION: open fridge 1").action, call("open", "fridge 1"));
    assert!(ActionFormat::Alfworld.parse("OK. I'll follow your instructions.").action.is_err());
    assert!(ActionFormat::Alfworld.parse("ACTION:   \n").action.is_err());
    assert_eq!(ActionFormat::Alfworld.invalid_feedback("x"), "Nothing happened.");
}

#[test]
fn os() {
    let r = "Think: list files.\n\nAct: bash\n\n```bash\nls -a /home\n```";
    let p = ActionFormat::Os.parse(r);
    assert_eq!(p.thought.as_deref(), Some("list files."));
    assert_eq!(p.action, call("bash", "ls -a /home"));
    assert_eq!(ActionFormat::Os.parse("Think: done\nAct: finish").action, finish(""));
    assert_eq!(ActionFormat::Os.parse("Think: x\nAct: answer(42)").action, finish("42"));
    assert!(ActionFormat::Os.parse("Act: bash\nno block").action.is_err());
    assert!(ActionFormat::Os.parse("Act: answer 42").action.is_err());
}

#[test]
fn db() {
    let r = "I will count.\nAction: Operation\n```sql\nSELECT COUNT(*)\nFROM t\n```";
    let p = ActionFormat::Db.parse(r);
    assert_eq!(p.action, call("sql", "SELECT COUNT(*) FROM t"));
    assert_eq!(p.thought.as_deref(), Some("I will count."));
    assert_eq!(ActionFormat::Db.parse("Action: Answer\nFinal Answer: [\"3\"]").action, finish("[\"3\"]"));
    assert!(ActionFormat::Db.parse("SELECT 1").action.is_err());
}

#[test]
fn webshop_kg_mind2web() {
    assert_eq!(ActionFormat::WebShop.parse("Thought: t\nAction: search[red shoes]").action, call("search", "red shoes"));
    assert_eq!(ActionFormat::WebShop.parse("Action: click[B07X]").action, call("click", "B07X"));
    assert!(ActionFormat::WebShop.parse("Action: buy[now]").action.is_err());
    assert_eq!(ActionFormat::Kg.parse("Thought: t\nAction: get_relations(Barack Obama)").action, call("get_relations", "Barack Obama"));
    assert_eq!(ActionFormat::Kg.parse("Final Answer: #3").action, finish("#3"));
    assert!(ActionFormat::Kg.parse("Action: fly(#1)").action.is_err());
    let m = ActionFormat::Mind2Web.parse("Thought.\nAnswer: C.\nAction: TYPE\nValue: new york");
    assert_eq!(m.action, call("TYPE", "C\nnew york"));
    assert_eq!(ActionFormat::Mind2Web.parse("Answer: B\nAction: CLICK").action, call("CLICK", "B"));
    assert_eq!(ActionFormat::Mind2Web.parse("Answer: A.").action, finish(""));
}

#[test]
fn react_and_json() {
    let p = ActionFormat::React.parse("Thought: need math\nAction: calculator[2+3*4]");
    assert_eq!((p.thought.as_deref(), p.action), (Some("need math"), call("calculator", "2+3*4")));
    assert_eq!(ActionFormat::React.parse("Thought: ok\nFinal Answer: 14").action, finish("14"));
    assert_eq!(ActionFormat::React.parse("Action: search\nAction Input: {\"q\": \"x\"}").action, call("search", "{\"q\": \"x\"}"));
    let j = ActionFormat::Json.parse("I'll call it.\n```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```");
    assert_eq!(j.action, call("get_weather", "{\"city\":\"Paris\"}"));
    assert_eq!(j.thought.as_deref(), Some("I'll call it."));
    let j = ActionFormat::Json.parse("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>");
    assert_eq!(j.action, call("f", "{\"a\":1}"));
    assert_eq!(ActionFormat::Json.parse("{\"name\": \"final_answer\", \"arguments\": {\"answer\": \"42\"}}").action, finish("42"));
    assert!(ActionFormat::Json.parse("{\"oops\": 1}").action.is_err());
    assert!(ActionFormat::Json.parse("{ not json }").action.is_err());
}

#[test]
fn names_round_trip() {
    for f in ActionFormat::ALL {
        assert_eq!(ActionFormat::from_name(f.name()), Some(f));
    }
}
