//! A static check that a Jinja template cannot build a cyclic value.
//!
//! minijinja's namespaces are the one mutable value a template can create: `{% set ns.x = ns %}`
//! (or a list holding `ns`) makes a namespace that contains itself, and printing, comparing or
//! serializing it then recurses without end: a stack overflow, which aborts the process (found by the
//! `template` fuzz target). Fuel and the recursion limit do not see it, and minijinja offers no hook on
//! attribute assignment, so templates are checked before they are compiled.
//!
//! The check is a small taint analysis over the syntax tree, flow- and scope-insensitive (a name's
//! kind is the join over every assignment to it anywhere). Values are *clean* (cannot reach a
//! namespace), *namespace* (exactly a namespace) or *tainted* (may contain one). It keeps the
//! invariant "every namespace attribute holds a clean value" by rejecting:
//! - `set a.b = E` where `E` is not clean;
//! - `namespace(...)` with an argument that is not clean;
//! - any use of the name `namespace` other than a direct call (aliasing it would hide the calls).
//!
//! Given the invariant, an attribute or item of a namespace is clean, so the patterns real chat
//! templates use (`set ns.n = ns.n + 1`, `set ns.system = m.content`, `set ns.found = true`) pass.

use std::collections::HashMap;

use minijinja::machinery::ast::{CallArg, Expr, Stmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Clean,
    Namespace,
    Tainted,
}

#[derive(Default)]
struct Analysis {
    kinds: HashMap<String, Kind>,
    changed: bool,
    /// Why the template is refused (the first reason found in the final pass).
    refused: Option<String>,
    /// The final pass: assignments no longer change kinds; report violations.
    check: bool,
}

/// `Err(reason)` when the template could make a namespace that reaches itself (see the module docs).
/// A template that does not parse is left to the compiler to report.
pub(super) fn check(source: &str) -> Result<(), String> {
    let ws = minijinja::machinery::WhitespaceConfig { keep_trailing_newline: false, lstrip_blocks: true, trim_blocks: true };
    let Ok(ast) = minijinja::machinery::parse(source, "chat", Default::default(), ws) else { return Ok(()) };
    let mut a = Analysis::default();
    // Kinds only grow (three levels per name), so this reaches a fixpoint.
    loop {
        a.changed = false;
        a.stmt(&ast);
        if !a.changed {
            break;
        }
    }
    a.check = true;
    a.stmt(&ast);
    a.refused.map_or(Ok(()), Err)
}

impl Analysis {
    fn refuse(&mut self, why: impl FnOnce() -> String) {
        if self.check && self.refused.is_none() {
            self.refused = Some(why());
        }
    }

    /// Joins `kind` into every name bound by `target` (a name or a tuple of names).
    fn bind(&mut self, target: &Expr, kind: Kind) {
        match target {
            Expr::Var(v) => self.bind_name(v.id, kind),
            Expr::List(l) => {
                // Unpacking: each element may be anything the value held.
                let each = if kind == Kind::Clean { Kind::Clean } else { Kind::Tainted };
                for item in &l.items {
                    self.bind(item, each);
                }
            }
            _ => {}
        }
    }

    fn stmts(&mut self, list: &[Stmt]) {
        for s in list {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => {
                self.expr(&e.expr);
            }
            Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
            Stmt::ForLoop(f) => {
                let iter = self.expr(&f.iter);
                // Iterating a namespace yields its keys; anything else not clean may yield namespaces.
                let item = if iter == Kind::Tainted { Kind::Tainted } else { Kind::Clean };
                self.bind(&f.target, item);
                // `loop.previtem`, `loop.cycle(...)` and friends hand out the items too.
                self.bind_name("loop", item);
                if let Some(e) = &f.filter_expr {
                    self.expr(e);
                }
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            Stmt::IfCond(c) => {
                self.expr(&c.expr);
                self.stmts(&c.true_body);
                self.stmts(&c.false_body);
            }
            Stmt::WithBlock(w) => {
                for (target, value) in &w.assignments {
                    let k = self.expr(value);
                    self.bind(target, k);
                }
                self.stmts(&w.body);
            }
            Stmt::Set(set) => {
                let k = self.expr(&set.expr);
                match &set.target {
                    Expr::GetAttr(g) => {
                        self.expr(&g.expr);
                        if k != Kind::Clean {
                            let name = g.name.to_string();
                            self.refuse(|| {
                                format!("`set ….{name} = …` stores a value that may hold a namespace (a namespace that contains itself would crash rendering)")
                            });
                        }
                    }
                    target => self.bind(target, k),
                }
            }
            Stmt::SetBlock(b) => {
                // The captured block is a string.
                if let Some(f) = &b.filter {
                    self.expr(f);
                }
                self.stmts(&b.body);
                self.bind(&b.target, Kind::Clean);
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.stmts(&a.body);
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter);
                self.stmts(&f.body);
            }
            Stmt::Block(b) => self.stmts(&b.body),
            Stmt::Import(i) => {
                self.expr(&i.expr);
                self.bind(&i.name, Kind::Tainted);
            }
            Stmt::FromImport(i) => {
                self.expr(&i.expr);
                for (name, alias) in &i.names {
                    self.bind(alias.as_ref().unwrap_or(name), Kind::Tainted);
                }
            }
            Stmt::Extends(e) => {
                self.expr(&e.name);
            }
            Stmt::Include(i) => {
                self.expr(&i.name);
            }
            Stmt::Macro(m) => self.macro_body(&m.args, &m.defaults, &m.body),
            Stmt::CallBlock(c) => {
                self.call(&c.call.expr, &c.call.args);
                self.macro_body(&c.macro_decl.args, &c.macro_decl.defaults, &c.macro_decl.body);
            }
            Stmt::Do(d) => {
                self.call(&d.call.expr, &d.call.args);
            }
        }
    }

    /// A macro's parameters may receive whatever any call passes: they take the kind of the
    /// `%macro-args` pseudo-name, joined from every call's arguments.
    fn macro_body(&mut self, args: &[Expr], defaults: &[Expr], body: &[Stmt]) {
        let passed = self.kinds.get("%macro-args").copied().unwrap_or(Kind::Clean);
        let passed = if passed == Kind::Clean { Kind::Clean } else { Kind::Tainted };
        for d in defaults {
            let k = self.expr(d);
            self.join_macro_args(k);
        }
        for a in args {
            self.bind(a, passed);
        }
        for name in ["varargs", "kwargs", "caller"] {
            self.bind_name(name, passed);
        }
        self.stmts(body);
    }

    /// Joins `kind` into `name`'s kind (an absent name is clean).
    fn bind_name(&mut self, name: &str, kind: Kind) {
        let k = self.kinds.entry(name.to_string()).or_insert(Kind::Clean);
        if kind > *k {
            *k = kind;
            self.changed = true;
        }
    }

    fn join_macro_args(&mut self, k: Kind) {
        if k != Kind::Clean {
            self.bind_name("%macro-args", Kind::Tainted);
        }
    }

    fn args(&mut self, args: &[CallArg]) -> Kind {
        let mut worst = Kind::Clean;
        for a in args {
            let e = match a {
                CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => e,
            };
            worst = worst.max(self.expr(e));
        }
        worst
    }

    fn call(&mut self, callee: &Expr, args: &[CallArg]) -> Kind {
        if let Expr::Var(v) = callee {
            if v.id == "namespace" {
                if self.args(args) != Kind::Clean {
                    self.refuse(|| "`namespace(...)` is given a value that may hold a namespace".to_string());
                }
                return Kind::Namespace;
            }
        }
        let f = self.expr(callee);
        let a = self.args(args);
        self.join_macro_args(a);
        // A macro returns a string; a method of a value that holds namespaces may return one.
        if f == Kind::Tainted || a != Kind::Clean {
            Kind::Tainted
        } else {
            Kind::Clean
        }
    }

    fn expr(&mut self, e: &Expr) -> Kind {
        match e {
            Expr::Var(v) => {
                if v.id == "namespace" {
                    self.refuse(|| "`namespace` may only be called directly".to_string());
                    return Kind::Tainted;
                }
                self.kinds.get(v.id).copied().unwrap_or(Kind::Clean)
            }
            Expr::Const(_) => Kind::Clean,
            Expr::Slice(s) => {
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(x);
                }
                if self.expr(&s.expr) == Kind::Clean {
                    Kind::Clean
                } else {
                    Kind::Tainted
                }
            }
            Expr::UnaryOp(u) => {
                self.expr(&u.expr);
                Kind::Clean
            }
            Expr::BinOp(b) => {
                let (l, r) = (self.expr(&b.left), self.expr(&b.right));
                use minijinja::machinery::ast::BinOpKind::*;
                match b.op {
                    // Booleans, numbers, strings.
                    Eq | Ne | Lt | Lte | Gt | Gte | In | Sub | Mul | Div | FloorDiv | Rem | Pow | Concat => Kind::Clean,
                    // `and`/`or` return an operand; `+` joins lists.
                    ScAnd | ScOr | Add => {
                        if l == Kind::Clean && r == Kind::Clean {
                            Kind::Clean
                        } else {
                            Kind::Tainted
                        }
                    }
                }
            }
            Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
                Kind::Clean
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                let t = self.expr(&i.true_expr);
                let f = i.false_expr.as_ref().map_or(Kind::Clean, |f| self.expr(f));
                t.max(f)
            }
            Expr::Filter(f) => {
                let base = f.expr.as_ref().map_or(Kind::Clean, |x| self.expr(x));
                let args = self.args(&f.args);
                // Filters that print (string, tojson, length, ...) still make strings, but the
                // generic rule is simpler and safe: anything not clean in, tainted out.
                if base == Kind::Clean && args == Kind::Clean {
                    Kind::Clean
                } else {
                    Kind::Tainted
                }
            }
            Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
                Kind::Clean
            }
            Expr::GetAttr(g) => match self.expr(&g.expr) {
                // The invariant: a namespace's attributes are clean.
                Kind::Clean | Kind::Namespace => Kind::Clean,
                Kind::Tainted => Kind::Tainted,
            },
            Expr::GetItem(g) => {
                self.expr(&g.subscript_expr);
                match self.expr(&g.expr) {
                    Kind::Clean | Kind::Namespace => Kind::Clean,
                    Kind::Tainted => Kind::Tainted,
                }
            }
            Expr::Call(c) => self.call(&c.expr, &c.args),
            Expr::List(l) => {
                let mut k = Kind::Clean;
                for x in &l.items {
                    if self.expr(x) != Kind::Clean {
                        k = Kind::Tainted;
                    }
                }
                k
            }
            Expr::Map(m) => {
                let mut k = Kind::Clean;
                for x in m.keys.iter().chain(&m.values) {
                    if self.expr(x) != Kind::Clean {
                        k = Kind::Tainted;
                    }
                }
                k
            }
        }
    }
}
