//! Chat templates: a model's own Jinja `chat_template`, rendered with Hugging Face semantics, and
//! the named formats agent models were trained with ([`BuiltinTemplate`]).
//!
//! transformers renders templates with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, a
//! `raise_exception` function and a `tojson` filter that does not HTML-escape). [`ChatTemplate`]
//! reproduces that with minijinja, byte for byte on the templates models ship.

mod builtin;
mod guard;

pub use builtin::{BuiltinTemplate, LLAMA2_AGENTLM_SYSTEM};

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, or a template-specific role such as `tool`.
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// An error compiling or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source does not compile.
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// Rendering failed, including `raise_exception(...)` called by the template itself.
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// The rendered prompt exceeded the output cap.
    #[error("chat template output exceeds {0} bytes")]
    TooLong(usize),
}

/// Largest prompt a template may render (a guard against runaway templates): rendering stops with
/// [`TemplateError::TooLong`] as soon as the output passes it.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Instructions one render may execute (minijinja "fuel"): a template that loops for longer fails
/// with [`TemplateError::Render`]. Real chat templates use a few hundred per message; this allows
/// conversations of tens of thousands of messages.
pub const RENDER_FUEL: u64 = 50_000_000;

/// An `io::Write` that refuses to grow past `cap` bytes (minijinja then stops rendering).
struct CappedWriter {
    out: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output cap reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled Jinja chat template plus the special-token strings it may refer to.
///
/// Rendering is `&self` and thread-safe.
pub struct ChatTemplate {
    kind: Kind,
}

enum Kind {
    Jinja { env: Box<minijinja::Environment<'static>>, bos_token: String, eos_token: String },
    Builtin(BuiltinTemplate),
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let err = |e: serde_json::Error| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string());
    let json = match indent {
        None => python_compact_json(&serde_json::to_value(&value).map_err(err)?),
        Some(n) => {
            let indent = " ".repeat(n);
            let fmt = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&value, &mut ser).map_err(err)?;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    Ok(minijinja::Value::from_safe_string(json))
}

/// Python's `json.dumps` default separators: `", "` and `": "`.
fn python_compact_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(python_compact_json).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(map) => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("{}: {}", serde_json::Value::String(k.clone()), python_compact_json(v))).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

impl ChatTemplate {
    /// Compiles a Jinja template (as found in `tokenizer_config.json` or GGUF `tokenizer.chat_template`).
    ///
    /// # Errors
    /// [`TemplateError::Syntax`] for a template that does not compile, or that could store a namespace
    /// inside a namespace (a self-containing value crashes rendering; see `guard.rs`).
    pub fn from_jinja(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        guard::check(source).map_err(|why| TemplateError::Syntax(format!("refused: {why}")))?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_recursion_limit(64);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let kind = Kind::Jinja { env: Box::new(env), bos_token: bos_token.to_string(), eos_token: eos_token.to_string() };
        Ok(ChatTemplate { kind })
    }

    /// One of the named formats ([`BuiltinTemplate`]).
    pub fn builtin(template: BuiltinTemplate) -> Self {
        ChatTemplate { kind: Kind::Builtin(template) }
    }

    /// A named format by name: `llama-2` (AgentLM, with its fixed system prompt), `llama-2-no-system`,
    /// `chatml`, `agent-flan`.
    ///
    /// # Errors
    /// [`TemplateError::Syntax`] for an unknown name.
    pub fn named(name: &str) -> Result<Self, TemplateError> {
        BuiltinTemplate::from_name(name)
            .map(Self::builtin)
            .ok_or_else(|| TemplateError::Syntax(format!("unknown template {name:?} (expected llama-2, llama-2-no-system, chatml or agent-flan)")))
    }

    /// The text that ends an assistant turn (and is trained with it): the named format's turn end, or
    /// the EOS token of a Jinja template (`<|im_end|>` for ChatML-style models). `None` when unknown.
    pub fn turn_end(&self) -> Option<&str> {
        match &self.kind {
            Kind::Builtin(b) => Some(b.turn_end()),
            Kind::Jinja { eos_token, .. } => (!eos_token.is_empty()).then_some(eos_token.as_str()),
        }
    }

    /// Renders `messages`; with `add_generation_prompt` the result ends with the assistant header,
    /// ready for the model to continue.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let out = match &self.kind {
            Kind::Builtin(b) => b.render(messages, add_generation_prompt)?,
            Kind::Jinja { env, bos_token, eos_token } => {
                let tmpl = env.get_template("chat").map_err(|e| TemplateError::Render(e.to_string()))?;
                let mut w = CappedWriter { out: Vec::new(), cap: MAX_RENDERED_BYTES, overflowed: false };
                let ctx = minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos_token,
                    eos_token => eos_token,
                };
                match tmpl.render_captured_to(ctx, &mut w) {
                    Ok(_) => {}
                    Err(_) if w.overflowed => return Err(TemplateError::TooLong(MAX_RENDERED_BYTES)),
                    Err(e) => return Err(TemplateError::Render(format!("{e:#}"))),
                }
                // minijinja writes whole `str`s, so the bytes are UTF-8.
                String::from_utf8(w.out).map_err(|e| TemplateError::Render(e.to_string()))?
            }
        };
        if out.len() > MAX_RENDERED_BYTES {
            return Err(TemplateError::TooLong(MAX_RENDERED_BYTES));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as stored in its GGUF `tokenizer.chat_template`.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_smollm2_with_default_system() {
        let t = ChatTemplate::from_jinja(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let s = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = t.render(&[Message::new("system", "S"), Message::new("user", "u")], false).unwrap();
        assert_eq!(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n");
    }

    #[test]
    fn hf_jinja_semantics() {
        // trim_blocks/lstrip_blocks, python string methods, bos_token, raise_exception, tojson.
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]{{ {'a': 1, 'b': '<x>'} | tojson }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::from_jinja(src, "<s>", "</s>").unwrap();
        let s = t.render(&[Message::new("user", "  hey ")], false).unwrap();
        assert_eq!(s, "<s>[hey]{\"a\": 1, \"b\": \"<x>\"}\n");
        let t = ChatTemplate::from_jinja("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
        assert!(matches!(ChatTemplate::from_jinja("{% if %}", "", ""), Err(TemplateError::Syntax(_))));
    }

    /// Found by the `template` fuzz target: a namespace stored in itself made printing it recurse
    /// until the stack overflowed (an abort). Such templates are refused when compiled; the patterns
    /// real templates use still compile and render.
    #[test]
    fn templates_that_could_nest_a_namespace_in_itself_are_refused() {
        let refused = [
            "{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = [ns] %}{{ ns }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = {'a': ns} %}{{ ns }}",
            "{% set ns = namespace(n=0) %}{% set x = ns %}{% set ns.n = x %}",
            "{% set ns = namespace(n=0) %}{% set ns2 = namespace(a=ns) %}{% set ns.b = ns2.a %}",
            "{% set ns = namespace(n=0) %}{% for x in [ns] %}{% set ns.n = x %}{% endfor %}",
            "{% set ns = namespace(n=0) %}{% set ns.n = ns.n or ns %}",
            "{% macro f(a) %}{% set a.x = a %}{% endmacro %}{% set ns = namespace() %}{{ f(ns) }}",
            "{% macro f(a, b) %}{% set a.x = b %}{% endmacro %}{% set ns = namespace() %}{{ f(ns, ns) }}",
            "{% set mk = namespace %}{% set ns = mk() %}{% set ns.x = ns %}",
            "{% set ns = namespace(n=0) %}{% set ns.n = [ns]|first %}",
            "{% set ns = namespace(n=0) %}{% set a, b = [ns, 1] %}{% set ns.n = a %}",
            "{% set ns = namespace(n=0) %}{% with y = ns %}{% set ns.n = y %}{% endwith %}",
        ];
        for src in refused {
            match ChatTemplate::from_jinja(src, "", "") {
                Err(TemplateError::Syntax(m)) => assert!(m.contains("refused"), "{src}: {m}"),
                Err(e) => panic!("{src}: wrong error {e}"),
                Ok(_) => panic!("{src}: compiled"),
            }
        }
        let fuzz_found = include_str!("../../fuzz/corpus/template/regression_self_namespace");
        assert!(ChatTemplate::from_jinja(fuzz_found, "", "").is_err());
        let accepted = [
            "{% set ns = namespace(found=false, n=0, sys='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = m.content %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.sys }}{{ ns.n }}{{ ns.found }}",
            "{% set ns = namespace(parts=[]) %}{% for m in messages %}{% set ns.parts = ns.parts + [m.content] %}{% endfor %}{{ ns.parts|join(',') }}",
            "{%- set ns = namespace(last='') -%}{%- for m in messages|reverse -%}{%- if ns.last == '' and m.role == 'user' -%}{%- set ns.last = m['content'].strip() -%}{%- endif -%}{%- endfor -%}[{{ ns.last }}]",
            "{% macro t(m) %}<{{ m.role }}>{{ m.content }}{% endmacro %}{% set ns = namespace(x='') %}{% for m in messages %}{% set ns.x = t(m) %}{% endfor %}{{ ns.x }}",
            SMOLLM2,
        ];
        for src in accepted {
            let t = ChatTemplate::from_jinja(src, "", "").unwrap_or_else(|e| panic!("{src}: {e}"));
            assert!(!t.render(&[Message::new("system", "s"), Message::new("user", " hi ")], true).unwrap().is_empty(), "{src}");
        }
    }

    #[test]
    fn hostile_templates_hit_their_limits() {
        let render = |src: &str| ChatTemplate::from_jinja(src, "", "").unwrap().render(&[Message::new("user", "x")], true);
        // Output cap: stops while rendering, not after building the whole string.
        let big = "{% for i in range(100000) %}{% for j in range(100000) %}0123456789abcdef{% endfor %}{% endfor %}";
        assert!(matches!(render(big), Err(TemplateError::TooLong(MAX_RENDERED_BYTES))), "{:?}", render(big).map(|s| s.len()));
        // Fuel: a loop that produces nothing still ends.
        let spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render(spin).unwrap_err();
        assert!(matches!(e, TemplateError::Render(_)) && e.to_string().contains("fuel"), "{e}");
        // Recursion limit.
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(matches!(render(deep), Err(TemplateError::Render(_))));
        // minijinja's own cap on string repetition.
        assert!(matches!(render("{{ 'ab' * 1000000000000 }}"), Err(TemplateError::Render(_))));
        // The limits leave real use alone: a 20,000-message conversation still renders.
        let t = ChatTemplate::from_jinja(SMOLLM2, "", "").unwrap();
        let msgs: Vec<Message> = (0..20_000).map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "hello there")).collect();
        assert!(t.render(&msgs, true).unwrap().len() > 20_000 * 11);
    }
}
