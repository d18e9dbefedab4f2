//! The fuzz targets' bodies (fuzz/targets.rs) on stable Rust, as CI's smoke run: every seed under
//! fuzz/corpus, then deterministic mutations of each (truncations, byte flips, insertions of
//! interesting bytes, splices of two seeds). Long runs use `cargo fuzz` (docs/security.md).

mod common;
#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

use common::Rng;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 => v.truncate(rng.below(v.len() + 1)),
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 => {
                const INTERESTING: [&[u8]; 8] = [&[0xff; 8], &[0; 8], &[0x7f, 0xff, 0xff, 0xff], b"{", b"\"", b"\n", b"ACTION:", &[0x80, 0, 0, 0, 0, 0, 0, 0]];
                let i = rng.below(v.len() + 1);
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(i..i, ins.iter().copied());
            }
            3 if !v.is_empty() => {
                // Overwrite 8 bytes with a huge little-endian count (header fields claiming too much).
                let i = rng.below(v.len());
                let huge = (u64::MAX >> rng.below(40)).to_le_bytes();
                for (k, b) in huge.iter().enumerate() {
                    if let Some(x) = v.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            _ => {
                let cut = rng.below(v.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[rng.below(other.len() + 1)..]);
            }
        }
    }
    v
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    let per_seed = std::env::var("AGENTLM_FUZZ_SMOKE_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    for (name, run) in targets::TARGETS {
        let seeds = seeds(name);
        let mut rng = Rng(0x5EED ^ name.len() as u64);
        let mut n = 0;
        for (i, seed) in seeds.iter().enumerate() {
            run(seed);
            for _ in 0..per_seed {
                let other = &seeds[(i + 1 + rng.below(seeds.len())) % seeds.len()];
                run(&mutate(seed, other, &mut rng));
                n += 1;
            }
        }
        eprintln!("{name}: {} seeds, {n} mutated inputs, no panic", seeds.len());
    }
}

/// The synthetic GGUF seeds are real files: they parse, carry a Llama configuration, and one of
/// them builds a tokenizer (so the fuzzer starts from inputs that reach the deep code).
#[test]
fn gguf_seeds_reach_the_tokenizer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf");
    for (name, tokenizer) in [("tiny_llama_q4_q8_tokenizer", true), ("tiny_llama_f32", false)] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let file = agentlm::formats::gguf::GgufFile::from_bytes(&bytes, name).unwrap();
        let c = file.llama_config().unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers), (64, 1), "{name}");
        assert_eq!(agentlm::Tokenizer::from_gguf(&file).is_ok(), tokenizer, "{name}");
        for t in file.tensors() {
            file.tensor_f32(&t.name).unwrap();
        }
    }
}

/// The new targets' seeds are valid inputs: every template seed renders, every safetensors seed
/// decodes, every TGI body parses into a job.
#[test]
fn template_safetensors_and_tgi_seeds_are_valid() {
    let msgs = [agentlm::Message::new("system", "s"), agentlm::Message::new("user", "hi"), agentlm::Message::new("assistant", "ok")];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/template");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let t = agentlm::ChatTemplate::from_jinja(&src, "<s>", "</s>");
        // Crashes the fuzzer found are kept as seeds; they must be refused.
        if path.file_name().unwrap().to_string_lossy().starts_with("regression_") {
            assert!(t.is_err(), "{}", path.display());
            continue;
        }
        let (i, t) = (path.display(), t.unwrap());
        let out = t.render(&msgs, true).unwrap_or_else(|e| panic!("template seed {i}: {e}"));
        assert!(!out.is_empty());
    }
    for seed in seeds("safetensors") {
        let p = Path::new("seed.safetensors");
        assert!(!agentlm::formats::hf::shard_tensors(&seed, p).unwrap().is_empty());
    }
    let adapters = seeds("safetensors").iter().filter(|s| agentlm::formats::peft::read_tensors_bytes(s, Path::new("s")).is_ok()).count();
    assert_eq!(adapters, 2, "the F32 and F16 seeds decode; the one with an I64 tensor is refused");
    for seed in seeds("tgi_request") {
        let job = targets::tgi_parse(&seed).unwrap_or_else(|b| panic!("{}: {}", b.0, b.1));
        assert!(job.params.max_tokens > 0);
    }
}
