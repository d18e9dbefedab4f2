//! Resource limits (issue 8): sizes a file merely claims are checked before anything is allocated
//! for them, and a context larger than memory allows is an error, not an abort.

mod common;

use agentlm::{Error, LoadOptions, Model};

#[test]
fn a_claimed_context_larger_than_memory_is_an_error() {
    let f = common::tiny_gguf_with_context(u32::MAX);
    match Model::load(f.path(), &LoadOptions::default()) {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains("4294967295 positions") && msg.contains("max_context"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a context of 2^32 positions loaded"),
    }
    // The same file loads with a context cap, and its sessions work.
    let model = Model::load(f.path(), &LoadOptions { max_context: Some(32), ..LoadOptions::default() }).unwrap();
    assert_eq!(model.context_length(), 32);
    let mut s = model.try_session(Some(1 << 40)).unwrap();
    assert_eq!(s.capacity(), 32, "a larger request is clamped to the context");
    s.append_text("hello").unwrap();
    s.prefill().unwrap();
    let fork = s.try_fork().unwrap();
    assert_eq!(fork.tokens(), s.tokens());
}

#[test]
fn kv_cache_sizes_are_checked_arithmetic() {
    let f = common::tiny_gguf_with_context(64);
    let model = Model::load(f.path(), &LoadOptions::default()).unwrap();
    let c = model.config();
    let per_position = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
    assert_eq!(model.kv_cache_bytes(10), Some(10 * per_position));
    assert_eq!(model.kv_cache_bytes(usize::MAX), None);
}

/// `LoadOptions::copy_file` / `GgufFile::open_with(.., true)`: the file is read into private memory,
/// so truncating it on disk while it is open (which would fault a mapped reader on its next access)
/// changes nothing.
#[test]
fn a_copied_file_may_be_truncated_while_open() {
    use agentlm::formats::gguf::GgufFile;
    let f = common::tiny_gguf_with_context(64);
    let file = GgufFile::open_with(f.path(), true).unwrap();
    let before: Vec<Vec<f32>> = file.tensors().iter().map(|t| file.tensor_f32(&t.name).unwrap().data).collect();
    std::fs::OpenOptions::new().write(true).open(f.path()).unwrap().set_len(0).unwrap();
    let after: Vec<Vec<f32>> = file.tensors().iter().map(|t| file.tensor_f32(&t.name).unwrap().data).collect();
    assert_eq!(before, after);
    assert!(!before.is_empty());

    // Through the model loader: same greedy tokens with and without the copy.
    let f = common::tiny_gguf_with_context(64);
    let greedy = |copy_file: bool| {
        let m = Model::load(f.path(), &LoadOptions { copy_file, ..LoadOptions::default() }).unwrap();
        let mut s = m.try_session(None).unwrap();
        s.append_text("hello there").unwrap();
        let p = agentlm::GenerateParams { max_tokens: 8, ignore_eos: true, ..Default::default() };
        s.generate(&p, |_| std::ops::ControlFlow::Continue(())).unwrap().ids
    };
    assert_eq!(greedy(true), greedy(false));
    // An empty file is an error with the copy too, not a crash.
    std::fs::write(f.path(), b"").unwrap();
    assert!(Model::load(f.path(), &LoadOptions { copy_file: true, ..LoadOptions::default() }).is_err());
}
