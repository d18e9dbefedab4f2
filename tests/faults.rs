//! Faults: saving never loses the previous file, and a loaded model does not depend on its file.
//!
//! - Kills: a child process (this test binary run again, its role chosen by `AGENTLM_FAULT_CHILD`)
//!   trains a tiny random model step by step and, after each step, saves the adapter
//!   ([`Trainer::save_adapter`]) and a checkpoint ([`Trainer::checkpoint`]); the parent kills it with
//!   SIGKILL at seeded random moments. After every kill the adapter directory loads and equals the
//!   version being saved or the one before it (tensor hashes the child appended, fsync'd, to a log
//!   before each save), and the checkpoint resumes at one of those steps with exactly the parameters
//!   logged for it. The next child resumes from it, and a step taken again must reproduce the logged
//!   parameters bit for bit (so the optimizer moments and the data position were restored too).
//!   `AGENTLM_FAULT_ITERS` sets the number of kills (default 60), `AGENTLM_FAULT_SEED` the seed:
//!   `AGENTLM_FAULT_ITERS=1000 cargo test --test faults -- --nocapture kills`.
//! - Disk full: a small tmpfs (when this process may mount one) and, always, a per-file size limit
//!   (`ulimit -f`, SIGXFSZ ignored, in a child process): a save that cannot be written returns an I/O
//!   error naming the file, the previous adapter and checkpoint load unchanged, no temporary file is
//!   left behind.
//! - A model file overwritten or truncated after loading: the model generates the same tokens
//!   (nothing of the file stays mapped).
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentlm::config::LlamaConfig;
use agentlm::formats::peft::{self, CONFIG_FILE, WEIGHTS_FILE};
use agentlm::formats::HostTensor;
use agentlm::tokenizer::GgufVocab;
use agentlm::train::{DataKind, TrainConfig, Trainer};
use agentlm::{Adapter, GenerateParams, LoadOptions, LoraConfig, Model, SamplingParams};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "AGENTLM_FAULT_CHILD";
const DIR_ENV: &str = "AGENTLM_FAULT_DIR";
const STEPS_ENV: &str = "AGENTLM_FAULT_STEPS";
const LIMIT_ENV: &str = "AGENTLM_FAULT_LIMIT";

// ---------------------------------------------------------------------------------------------
// A tiny random Llama with a byte-level tokenizer and a ChatML template, written as a Hugging Face
// directory (the trainer and resume need a model with a chat template).

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 258,
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![257],
    }
}

fn write_tiny_model(dir: &Path) {
    let c = tiny_config();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let tensors: Vec<(String, HostTensor)> = agentlm::convert::llama_tensor_names(&c, false)
        .into_iter()
        .map(|n| {
            let shape = common::llama_shape(&c, &n);
            let len: usize = shape.iter().product();
            let data = if n.contains("norm") { vec![1.0; len] } else { (0..len).map(|_| rng.random_range(-0.1f32..0.1)).collect() };
            (n, HostTensor { shape, data })
        })
        .collect();
    let mut tokens = common::byte_alphabet();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let mut types = vec![1; tokens.len()];
    types[256] = 3;
    types[257] = 3;
    let vocab = GgufVocab {
        model: "gpt2".into(),
        pre: Some("default".into()),
        tokens,
        token_types: Some(types),
        merges: Some(vec![]),
        eos_id: Some(257),
        add_bos: Some(false),
        ..GgufVocab::default()
    };
    let tokenizer_json = vocab.to_hf_json().unwrap().to_string();
    let tokenizer_config = serde_json::json!({"add_bos_token": false, "eos_token": "<|im_end|>", "chat_template": CHATML}).to_string();
    let mut it = tensors.into_iter().map(Ok);
    agentlm::formats::hf::write_hf_dir(dir, &c, &mut it, &tokenizer_json, &tokenizer_config, None).unwrap();
}

fn load_tiny(dir: &Path) -> Model {
    Model::load(dir, &LoadOptions { threads: Some(1), ..LoadOptions::default() }).unwrap()
}

fn record(q: &str, a: &str) -> String {
    serde_json::json!({
        "id": q,
        "conversations": [
            {"from": "human", "value": q, "loss": null},
            {"from": "gpt", "value": a, "loss": true},
        ]
    })
    .to_string()
}

fn train_config() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig { r: 16, alpha: 32.0, ..LoraConfig::default() },
        learning_rate: 1e-3,
        warmup_steps: 2,
        total_steps: 100_000,
        grad_accum: 2,
        max_tokens: 64,
        agent_ratio: 0.5,
        seed: 11,
        ..TrainConfig::default()
    }
}

/// A fresh trainer on the tiny model with file-backed agent records and in-memory general ones (so
/// a checkpoint holds both kinds of data reference).
fn new_trainer(model: &Model, work: &Path) -> Trainer {
    let mut t = Trainer::new(model, train_config(), None).unwrap();
    let lines: Vec<String> = (0..5).map(|i| record(&format!("Room {i}. Where is the door?"), &format!("ACTION: go to door {i}"))).collect();
    let path = work.join("agent.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    assert_eq!(t.add_jsonl_file(&path, DataKind::Agent).unwrap().added, 5);
    for i in 0..4 {
        assert!(t.add_json(&record(&format!("What is {i} plus {i}?"), &format!("{}", 2 * i)), DataKind::General).unwrap());
    }
    t
}

/// FNV-1a over tensor names and f32 bit patterns: equal hashes mean bit-identical adapters.
fn hash_tensors(tensors: &BTreeMap<String, HostTensor>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, t) in tensors {
        eat(name.as_bytes());
        for d in &t.shape {
            eat(&(*d as u64).to_le_bytes());
        }
        for v in &t.data {
            eat(&v.to_bits().to_le_bytes());
        }
    }
    h
}

fn trainer_hash(t: &Trainer) -> u64 {
    hash_tensors(&t.adapter().unwrap().to_peft().unwrap().tensors)
}

/// The hash of the adapter directory as the PEFT reader sees it, after checking that [`Adapter::load`]
/// accepts it for `model` and gives the same tensors.
fn adapter_dir_hash(model: &Model, dir: &Path) -> u64 {
    let files = peft::read_adapter(dir).unwrap_or_else(|e| panic!("adapter does not read: {e}"));
    assert!(files.tensors.values().all(|t| t.data.iter().all(|v| v.is_finite())));
    let loaded = Adapter::load(model, dir).unwrap_or_else(|e| panic!("adapter does not load: {e}"));
    let h = hash_tensors(&files.tensors);
    assert_eq!(hash_tensors(&loaded.to_peft().unwrap().tensors), h, "Adapter::load differs from the files");
    h
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs this test binary again as a child in `role` (see [`fault_child`]).
fn child(role: &str, work: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["fault_child", "--exact", "--nocapture", "--test-threads", "1"]).env(CHILD_ENV, role).env(DIR_ENV, work).env("RAYON_NUM_THREADS", "1");
    c
}

/// The entry point of the child processes; a no-op in an ordinary test run.
#[test]
fn fault_child() {
    let Ok(role) = std::env::var(CHILD_ENV) else { return };
    let work = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    match role.as_str() {
        "writer" => writer(&work),
        "limited" => limited(&work),
        other => panic!("unknown child role {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Kills.

/// The writer: resume (or start), then forever (or `AGENTLM_FAULT_STEPS` steps): one train step, log
/// `step hash train_us previous_save_us` (appended and fsync'd), save the adapter, checkpoint.
fn writer(work: &Path) {
    let model = load_tiny(&work.join("model"));
    let (adapter, ckpt) = (work.join("adapter"), work.join("ckpt"));
    let max_steps: Option<u64> = std::env::var(STEPS_ENV).ok().map(|s| s.parse().unwrap());
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(work.join("log")).unwrap();
    let mut append = |line: String| {
        log.write_all(line.as_bytes()).unwrap();
        log.sync_data().unwrap();
    };
    let mut t = if ckpt.exists() || sibling(&ckpt, ".old").exists() {
        Trainer::resume(&model, &ckpt).unwrap()
    } else {
        let t = new_trainer(&model, work);
        append(format!("0 {:016x} 0 0\n", trainer_hash(&t)));
        t.save_adapter(&adapter).unwrap();
        t.checkpoint(&ckpt).unwrap();
        t
    };
    let mut save_us = 0u128;
    loop {
        let t0 = Instant::now();
        t.run(1, None, |_| true).unwrap();
        let train_us = t0.elapsed().as_micros();
        append(format!("{} {:016x} {train_us} {save_us}\n", t.step(), trainer_hash(&t)));
        let t1 = Instant::now();
        t.save_adapter(&adapter).unwrap();
        t.checkpoint(&ckpt).unwrap();
        save_us = t1.elapsed().as_micros();
        if max_steps.is_some_and(|m| t.step() >= m) {
            return;
        }
    }
}

struct LogLine {
    step: u64,
    hash: u64,
    train_us: u64,
    save_us: u64,
}

/// Complete lines of the writer's log.
fn read_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            LogLine {
                step: f[0].parse().unwrap(),
                hash: u64::from_str_radix(f[1], 16).unwrap(),
                train_us: f[2].parse().unwrap(),
                save_us: f[3].parse().unwrap(),
            }
        })
        .collect()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// What a kill interrupted, judged from the files it left.
#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    /// The adapter was still the previous version although the next one was logged: killed inside
    /// `save_adapter` (or between logging and saving).
    adapter_old: usize,
    /// Adapter new, checkpoint previous: killed inside `checkpoint`.
    checkpoint_old: usize,
    /// A temporary file of an interrupted write in the adapter directory.
    adapter_temp_files: usize,
    /// `ckpt.tmp` present: killed while the checkpoint was being written.
    ckpt_tmp: usize,
    /// `ckpt.old` present: killed during the swap or while the old copy was being removed.
    ckpt_old_dir: usize,
    /// `ckpt` absent, `ckpt.old` present: killed between the two renames (resume used `.old`).
    ckpt_missing: usize,
    /// Steps logged again by a resumed child, each bit-identical to the first time.
    replayed_steps: usize,
}

impl Tally {
    fn mid_save(&self) -> usize {
        self.adapter_old + self.checkpoint_old
    }
}

#[test]
fn kills_never_lose_the_adapter_or_the_checkpoint() {
    let iters: usize = std::env::var("AGENTLM_FAULT_ITERS").ok().map_or(60, |s| s.parse().unwrap());
    let seed: u64 = std::env::var("AGENTLM_FAULT_SEED").ok().map_or(20240601, |s| s.parse().unwrap());
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    write_tiny_model(&work.join("model"));
    let model = load_tiny(&work.join("model"));
    let (adapter, ckpt) = (work.join("adapter"), work.join("ckpt"));
    let log_path = work.join("log");

    // A first run to completion: version 0 on disk, and the time a step and a save take.
    let st = child("writer", work).env(STEPS_ENV, "6").stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "writer failed: {st}");
    let first = read_log(&log_path);
    let train = median(first.iter().skip(1).map(|l| l.train_us).collect());
    let save = median(first.iter().skip(2).map(|l| l.save_us).collect());
    let cycle = Duration::from_micros((train + save).max(1000));
    eprintln!("tiny model: train step {train} us, adapter+checkpoint save {save} us (medians)");

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let mut known: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen_lines = 0;
    let started = Instant::now();
    for kill in 0..iters {
        let before = read_log(&log_path).len();
        let mut proc = child("writer", work).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // Wait for this child's first logged step (it is about to save), then a random delay: within
        // 1.25 times the median save time for three kills in four, within two step+save cycles for one
        // in eight; the remaining eighth come at a random moment of start-up and resume.
        let aim = rng.random_range(0..8);
        if aim != 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while read_log(&log_path).len() <= before {
                if let Ok(Some(st)) = proc.try_wait() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(proc.stderr.as_mut().unwrap(), &mut err).unwrap();
                    panic!("kill {kill}: the writer exited ({st}) before its first step:\n{err}");
                }
                assert!(Instant::now() < deadline, "kill {kill}: no step logged in 60 s");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let window = if aim >= 2 { Duration::from_micros(save).mul_f64(1.25) } else { cycle * 2 };
        std::thread::sleep(window.mul_f64(rng.random_range(0.0..1.0)));
        if let Ok(Some(st)) = proc.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(proc.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("kill {kill}: the writer exited ({st}):\n{err}");
        }
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        tally.kills += 1;

        // The log: steps contiguous from 0, a step logged again has the same parameters.
        let log = read_log(&log_path);
        for l in &log[seen_lines..] {
            match known.get(&l.step) {
                Some(&h) => {
                    assert_eq!(h, l.hash, "kill {kill}: step {} replayed after resume differs", l.step);
                    tally.replayed_steps += 1;
                }
                None => {
                    assert_eq!(l.step, known.len() as u64, "kill {kill}: steps are not contiguous");
                    known.insert(l.step, l.hash);
                }
            }
        }
        seen_lines = log.len();
        let last = log.last().unwrap().step;
        let allowed = |v: u64| v == last || v + 1 == last;

        // Evidence of what was interrupted.
        let temps: Vec<PathBuf> = std::fs::read_dir(&adapter)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| ![CONFIG_FILE, WEIGHTS_FILE].contains(&p.file_name().unwrap().to_str().unwrap()))
            .collect();
        tally.adapter_temp_files += usize::from(!temps.is_empty());
        tally.ckpt_tmp += usize::from(sibling(&ckpt, ".tmp").exists());
        tally.ckpt_old_dir += usize::from(sibling(&ckpt, ".old").exists());
        tally.ckpt_missing += usize::from(!ckpt.exists());

        // The adapter: loads, and is the version being saved or the one before.
        let h = adapter_dir_hash(&model, &adapter);
        let adapter_version = [last, last.saturating_sub(1)]
            .into_iter()
            .find(|v| known[v] == h)
            .unwrap_or_else(|| panic!("kill {kill}: the adapter on disk is neither step {last} nor the one before"));
        // The checkpoint: resumes at one of those steps with exactly that step's parameters, never
        // ahead of the adapter (it is saved second).
        let t = Trainer::resume(&model, &ckpt).unwrap_or_else(|e| panic!("kill {kill}: the checkpoint does not resume: {e}"));
        assert!(allowed(t.step()), "kill {kill}: checkpoint at step {}, log at {last}", t.step());
        assert_eq!(trainer_hash(&t), known[&t.step()], "kill {kill}: checkpoint parameters differ from step {}", t.step());
        assert!(t.step() == adapter_version || t.step() + 1 == adapter_version, "kill {kill}: checkpoint {} adapter {adapter_version}", t.step());
        if adapter_version < last {
            tally.adapter_old += 1;
        } else if t.step() < last {
            tally.checkpoint_old += 1;
        }
        // A killed process cannot remove its temporary files; they are never read. Clear them so
        // each kill's evidence is its own.
        for p in temps {
            std::fs::remove_file(p).unwrap();
        }
    }
    eprintln!(
        "{} kills in {:.1} s (seed {seed}), last step {}: {tally:?}; {} landed mid-save",
        tally.kills,
        started.elapsed().as_secs_f64(),
        known.len() - 1,
        tally.mid_save()
    );
    assert!(tally.mid_save() > 0, "no kill landed inside a save: {tally:?}");
}

// ---------------------------------------------------------------------------------------------
// Disk full.

/// Bytes of the adapter's weights file.
fn weights_bytes(adapter: &Path) -> u64 {
    std::fs::metadata(adapter.join(WEIGHTS_FILE)).unwrap().len()
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

const SAVED: [&str; 9] = [
    "adapter",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "ckpt",
    "ckpt/adapter_config.json",
    "ckpt/adapter_model.safetensors",
    "ckpt/data.jsonl",
    "ckpt/optimizer.safetensors",
    "ckpt/trainer_state.json",
];

/// Takes one more step on the trainer resumed from `root/ckpt` and tries to save it (the checkpoint
/// first when `checkpoint_first`). Returns the errors of the saves that failed, `None` for a save
/// that succeeded.
fn step_and_save(model: &Model, root: &Path, checkpoint_first: bool) -> [Option<String>; 2] {
    let mut t = Trainer::resume(model, root.join("ckpt")).unwrap();
    t.run(1, None, |_| true).unwrap();
    let adapter = || t.save_adapter(root.join("adapter")).err().map(|e| e.to_string());
    let ckpt = || t.checkpoint(root.join("ckpt")).err().map(|e| e.to_string());
    if checkpoint_first {
        let c = ckpt();
        [adapter(), c]
    } else {
        let a = adapter();
        [a, ckpt()]
    }
}

/// After failed saves: the previous adapter and checkpoint load unchanged and no temporary file or
/// directory is left under `root` (beyond `extra`, e.g. a filler file).
fn assert_intact(model: &Model, root: &Path, adapter_hash: u64, ckpt_step: u64, ckpt_hash: u64, extra: &[&str]) {
    assert_eq!(adapter_dir_hash(model, &root.join("adapter")), adapter_hash, "the previous adapter changed");
    let t = Trainer::resume(model, root.join("ckpt")).unwrap();
    assert_eq!((t.step(), trainer_hash(&t)), (ckpt_step, ckpt_hash), "the previous checkpoint changed");
    let mut want: Vec<String> = SAVED.iter().chain(extra).map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(tree(root), want, "files left behind");
}

fn check_error(e: &Option<String>, path: &str, reason: &str) {
    let e = e.as_deref().unwrap_or_else(|| panic!("a save to {path} succeeded on a full disk"));
    assert!(e.contains(path) && e.contains(reason), "{e:?} should name {path} and say {reason:?}");
}

/// Saves version 0 under `root` (adapter and checkpoint), returns (adapter hash, step, hash).
fn save_first(model: &Model, work: &Path, root: &Path) -> (u64, u64, u64) {
    let mut t = new_trainer(model, work);
    t.run(1, None, |_| true).unwrap();
    t.save_adapter(root.join("adapter")).unwrap();
    t.checkpoint(root.join("ckpt")).unwrap();
    (trainer_hash(&t), t.step(), trainer_hash(&t))
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_tmpfs_fails_the_save_and_keeps_the_previous_files() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): the disk-full case runs under `ulimit -f` only");
        return;
    }
    let _guard = Mount(mnt.clone());
    write_tiny_model(&work.join("model"));
    let model = load_tiny(&work.join("model"));
    let (ah, step, ch) = save_first(&model, work, &mnt);
    let w = weights_bytes(&mnt.join("adapter"));
    // Fill the file system, then free `free` bytes: nothing, half a weights file (both saves fail
    // inside their first file), one and a half (the checkpoint's adapter fits, its optimizer state does
    // not: it fails half-way through its directory).
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
                break;
            }
        }
    }
    let full = std::fs::metadata(&filler).unwrap().len();
    for (free, checkpoint_first) in [(0, false), (w / 2, false), (w * 3 / 2, true)] {
        std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(full - free).unwrap();
        let [a, c] = step_and_save(&model, &mnt, checkpoint_first);
        eprintln!("tmpfs, {free} bytes free: adapter save: {a:?}; checkpoint: {c:?}");
        check_error(&c, &mnt.join("ckpt.tmp").display().to_string(), "No space left on device");
        if free > w {
            // The checkpoint's partial directory was removed, so the adapter (one weights file) fits.
            assert!(a.is_none(), "{a:?}");
            let new = adapter_dir_hash(&model, &mnt.join("adapter"));
            assert_ne!(new, ah);
            assert_intact(&model, &mnt, new, step, ch, &["filler"]);
        } else {
            check_error(&a, &mnt.join("adapter").display().to_string(), "No space left on device");
            assert_intact(&model, &mnt, ah, step, ch, &["filler"]);
        }
    }
}

/// The child under `ulimit -f`: one step from the checkpoint, both saves (which must fail); prints
/// the errors.
fn limited(work: &Path) {
    let limit: u64 = std::env::var(LIMIT_ENV).unwrap().parse().unwrap();
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let line = limits.lines().find(|l| l.starts_with("Max file size")).unwrap();
        assert!(line.contains(&limit.to_string()), "{line}");
    }
    let model = load_tiny(&work.join("model"));
    let root = work.join("saved");
    let w = weights_bytes(&root.join("adapter"));
    let checkpoint_first = limit > w;
    let [a, c] = step_and_save(&model, &root, checkpoint_first);
    eprintln!("ulimit -f {limit} bytes: adapter save: {a:?}; checkpoint: {c:?}");
    check_error(&c, &root.join("ckpt.tmp").display().to_string(), "File too large");
    if checkpoint_first {
        assert!(a.is_none(), "{a:?}");
    } else {
        check_error(&a, &root.join("adapter").display().to_string(), "File too large");
    }
}

#[test]
fn a_file_size_limit_fails_the_save_and_keeps_the_previous_files() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    write_tiny_model(&work.join("model"));
    let model = load_tiny(&work.join("model"));
    let root = work.join("saved");
    let (ah, step, ch) = save_first(&model, work, &root);
    let w = weights_bytes(&root.join("adapter"));
    // Half a weights file: every save fails in its first file. One and a half: the checkpoint fails
    // at its optimizer state, after writing its adapter; the adapter save itself fits.
    for kib in [w / 2048, w * 3 / 2048] {
        let limit = kib * 1024;
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!("trap '' XFSZ; ulimit -f {kib} && exec \"$0\" \"$@\"")).arg(std::env::current_exe().unwrap());
        c.args(["fault_child", "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, "limited")
            .env(DIR_ENV, work)
            .env(LIMIT_ENV, limit.to_string())
            .env("RAYON_NUM_THREADS", "1");
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{}", err.lines().filter(|l| l.starts_with("ulimit")).collect::<Vec<_>>().join("\n"));
        assert!(out.status.success(), "limited child failed ({}):\n{err}\n{}", out.status, String::from_utf8_lossy(&out.stdout));
        if limit > w {
            let new = adapter_dir_hash(&model, &root.join("adapter"));
            assert_ne!(new, ah);
            assert_intact(&model, &root, new, step, ch, &[]);
        } else {
            assert_intact(&model, &root, ah, step, ch, &[]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model file changes after loading.

fn greedy(model: &Model) -> Vec<u32> {
    let mut s = model.session(Some(128));
    s.append_text("The capital of France is").unwrap();
    let p = GenerateParams { sampling: SamplingParams::greedy(), max_tokens: 12, stop: vec![], ignore_eos: true };
    s.generate(&p, |_| std::ops::ControlFlow::Continue(())).unwrap().ids
}

#[test]
fn a_loaded_model_survives_its_file_being_overwritten_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.gguf");
    std::fs::copy(common::model_path(), &copy).unwrap();
    let len = std::fs::metadata(&copy).unwrap().len();
    let exact = LoadOptions { precision: agentlm::Precision::Exact, ..LoadOptions::default() };
    let models = [("quantized", Model::load(&copy, &LoadOptions::default()).unwrap()), ("exact", Model::load(&copy, &exact).unwrap())];
    assert_eq!(models[0].1.precision(), agentlm::Precision::Quantized);
    let before: Vec<Vec<u32>> = models.iter().map(|(_, m)| greedy(m)).collect();
    // Overwrite every byte in place (a mapping of the file would see the zeros), then truncate (a
    // mapping would fault).
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
    for ((name, m), want) in models.iter().zip(&before) {
        assert_eq!(&greedy(m), want, "{name}: after the file was overwritten with zeros");
    }
    std::fs::OpenOptions::new().write(true).open(&copy).unwrap().set_len(0).unwrap();
    for ((name, m), want) in models.iter().zip(&before) {
        assert_eq!(&greedy(m), want, "{name}: after the file was truncated");
    }
    assert!(Model::load(&copy, &LoadOptions::default()).is_err(), "the truncated file should not load");
    eprintln!("greedy tokens unchanged after overwrite and truncation: quantized {:?}, exact {:?}", before[0], before[1]);
}
