//! Session features under the C ABI, tested on the real model from Rust: pull-style generation, state
//! save/restore, per-model thread pools, load progress and abort.

mod common;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use agentlm::{Error, FinishReason, GenerateParams, LoadOptions, Model, SamplingParams, Step};

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(common::model_path(), &LoadOptions::default()).expect("load GGUF"))
}

fn params(max_tokens: usize, stop: &[&str]) -> GenerateParams {
    GenerateParams { sampling: SamplingParams::greedy(), max_tokens, stop: stop.iter().map(|s| s.to_string()).collect(), ignore_eos: true }
}

const PROMPT: &str = "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn pull_style_generation_equals_push_style() {
    for stop in [&[][..], &["Red"][..], &["\n"][..]] {
        let p = params(20, stop);
        let mut a = model().session(Some(256));
        a.append_text(PROMPT).unwrap();
        let mut pushed = String::new();
        let ga = a
            .generate(&p, |t| {
                pushed.push_str(t);
                ControlFlow::Continue(())
            })
            .unwrap();

        let mut b = model().session(Some(256));
        b.append_text(PROMPT).unwrap();
        b.begin(&p).unwrap();
        let (mut ids, mut pulled) = (vec![], String::new());
        let reason = loop {
            match b.next_token().unwrap() {
                Step::Token { id, text } => {
                    ids.push(id);
                    pulled.push_str(&text);
                }
                Step::Finished { reason, text } => {
                    pulled.push_str(&text);
                    break reason;
                }
            }
        };
        assert!(matches!(b.next_token().unwrap(), Step::Finished { text, .. } if text.is_empty()));
        let gb = b.end().unwrap();
        assert_eq!((ids.as_slice(), pulled.as_str(), reason), (ga.ids.as_slice(), pushed.as_str(), ga.finish), "stop {stop:?}");
        assert_eq!((gb.ids, gb.text, gb.finish), (ga.ids.clone(), ga.text.clone(), ga.finish));
        assert_eq!(a.tokens(), b.tokens());

        // The per-token callback: every id in order, the same text, a final `None` only for held-back text.
        let mut c = model().session(Some(256));
        c.append_text(PROMPT).unwrap();
        let (mut ids, mut text, mut tail) = (vec![], String::new(), None);
        let gc = c
            .generate_tokens(&p, |id, t| {
                match id {
                    Some(id) => ids.push(id),
                    None => tail = Some(t.to_string()),
                }
                text.push_str(t);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!((ids.as_slice(), text.as_str(), gc.finish), (ga.ids.as_slice(), pushed.as_str(), ga.finish), "stop {stop:?}");
        assert!(tail.is_none_or(|t| !t.is_empty()));
        // Breaking after the second token: two ids, finished by the callback, both in the conversation.
        let mut d = model().session(Some(256));
        d.append_text(PROMPT).unwrap();
        let mut seen = 0;
        let gd = d
            .generate_tokens(&p, |id, _| {
                seen += usize::from(id.is_some());
                if seen == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        if ga.ids.len() > 2 {
            assert_eq!((gd.ids.as_slice(), gd.finish), (&ga.ids[..2], FinishReason::Callback), "stop {stop:?}");
        }
    }
}

#[test]
fn ending_early_reports_callback_and_no_generation_means_an_error() {
    let mut s = model().session(Some(64));
    assert!(matches!(s.next_token(), Err(Error::InvalidArgument(_))));
    assert!(s.end().is_none());
    assert!(matches!(s.begin(&params(4, &[])), Err(Error::InvalidArgument(_))), "empty session");
    s.append_text("Hello").unwrap();
    s.begin(&params(4, &[])).unwrap();
    assert!(matches!(s.next_token().unwrap(), Step::Token { .. }));
    assert!(s.is_generating());
    let g = s.end().unwrap();
    assert_eq!((g.ids.len(), g.finish), (1, FinishReason::Callback));
    // Appending ends a generation in progress.
    s.begin(&params(4, &[])).unwrap();
    s.append_text(" world").unwrap();
    assert!(!s.is_generating());
}

#[test]
fn saved_state_continues_exactly_and_bad_state_is_refused() {
    let mut s = model().session(Some(128));
    s.append_text(PROMPT).unwrap();
    s.generate(&params(3, &[]), |_| ControlFlow::Continue(())).unwrap();
    let state = s.save_state().unwrap();
    let logits_before = s.logits().unwrap().to_vec();

    let mut r = model().session(Some(128));
    r.load_state(&state).unwrap();
    assert_eq!(r.tokens(), s.tokens());
    assert_eq!(r.logits().unwrap(), logits_before.as_slice(), "restored logits are bit-identical");
    let a = s.generate(&params(10, &[]), |_| ControlFlow::Continue(())).unwrap();
    let b = r.generate(&params(10, &[]), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(a.ids, b.ids);

    // Through a file, and the state of a session whose last tokens are not yet processed.
    let mut pending = model().session(Some(128));
    pending.append_text(PROMPT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    pending.save_state_file(&path).unwrap();
    let mut p2 = model().session(Some(128));
    p2.load_state_file(&path).unwrap();
    let a = pending.generate(&params(6, &[]), |_| ControlFlow::Continue(())).unwrap();
    let b = p2.generate(&params(6, &[]), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(a.ids, b.ids);

    // Every truncation and a flipped byte in the header are errors; the session is left as it was.
    let before = r.tokens().to_vec();
    for cut in [0, 7, 20, 49, state.len() / 2, state.len() - 1] {
        assert!(matches!(r.load_state(&state[..cut]), Err(Error::State(_))), "cut at {cut}");
    }
    let mut bad = state.clone();
    bad[12] ^= 1; // vocabulary size
    assert!(matches!(r.load_state(&bad), Err(Error::State(m)) if m.contains("shape")));
    let mut small = model().session(Some(8));
    assert!(matches!(small.load_state(&state), Err(Error::State(_))));
    assert_eq!(r.tokens(), before.as_slice());
    assert!(matches!(r.load_state_file(dir.path().join("missing")), Err(Error::Io { .. })));
}

#[test]
fn a_private_thread_pool_gives_the_same_tokens() {
    let opts = LoadOptions { threads: Some(1), ..LoadOptions::default() };
    let one = Model::load(common::model_path(), &opts).unwrap();
    assert_eq!(one.threads(), 1);
    let run = |m: &Model| {
        let mut s = m.session(Some(128));
        s.append_text(PROMPT).unwrap();
        s.generate(&params(8, &[]), |_| ControlFlow::Continue(())).unwrap().ids
    };
    assert_eq!(run(&one), run(model()));
    let zero = LoadOptions { threads: Some(0), ..LoadOptions::default() };
    assert!(matches!(Model::load(common::model_path(), &zero), Err(Error::InvalidArgument(_))));
}

#[test]
fn load_progress_is_monotonic_and_can_abort() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = LoadOptions {
        progress: Some(Arc::new(move |f| {
            s2.lock().unwrap().push(f);
            true
        })),
        ..LoadOptions::default()
    };
    Model::load(common::model_path(), &opts).unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 30 && seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!((seen[0], *seen.last().unwrap()), (0.0, 1.0));

    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let opts = LoadOptions {
        progress: Some(Arc::new(move |f| {
            c2.fetch_add(1, Ordering::SeqCst);
            f < 0.3
        })),
        ..LoadOptions::default()
    };
    let err = Model::load(common::model_path(), &opts).err().expect("aborted");
    assert!(err.to_string().contains("aborted"), "{err}");
    assert!(calls.load(Ordering::SeqCst) < seen.len());
}
