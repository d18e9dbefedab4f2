//! A decode step on the quantized CPU path allocates no memory: scratch buffers, the KV cache and
//! the logits buffer are reused from step to step (counted with a counting global allocator).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use agentlm::{LoadOptions, Model, Precision};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn quantized_decode_steps_do_not_allocate() {
    let opts = LoadOptions { precision: Precision::Quantized, threads: Some(2), ..LoadOptions::default() };
    let model = Model::load(common::model_path(), &opts).unwrap();
    let mut s = model.session(Some(256));
    let prompt = model.tokenizer().encode("The robot walked into the kitchen and", false).unwrap();
    s.append_tokens(&prompt).unwrap();
    let mut next = argmax(s.logits().unwrap());
    // Two warm-up steps grow the scratch buffers to their decode size.
    for _ in 0..2 {
        s.append_tokens(&[next]).unwrap();
        next = argmax(s.logits().unwrap());
    }
    let steps = 32;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..steps {
        s.append_tokens(&[next]).unwrap();
        next = argmax(s.logits().unwrap());
    }
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    eprintln!("{n} allocations in {steps} decode steps");
    // The thread pool's job queue may grow a block once in a while; nothing may allocate per step.
    assert!(n <= 2, "{n} allocations in {steps} decode steps");
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}
