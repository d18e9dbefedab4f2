use super::*;
use crate::testdata::golden as golden_file;

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn sentencepiece_from_arrays() -> Tokenizer {
    let v = json_file(&golden_file("sentencepiece_bpe/vocab.json"));
    let vocab = GgufVocab {
        model: v["model"].as_str().unwrap().into(),
        tokens: v["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect(),
        scores: Some(v["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect()),
        token_types: Some(v["token_type"].as_array().unwrap().iter().map(|s| s.as_i64().unwrap() as i32).collect()),
        bos_id: v["bos_token_id"].as_u64().map(|i| i as u32),
        eos_id: v["eos_token_id"].as_u64().map(|i| i as u32),
        unk_id: v["unknown_token_id"].as_u64().map(|i| i as u32),
        add_bos: v["add_bos_token"].as_bool(),
        add_space_prefix: v["add_space_prefix"].as_bool(),
        ..GgufVocab::default()
    };
    Tokenizer::from_gguf_vocab(&vocab).unwrap()
}

#[test]
fn sentencepiece_bpe_matches_reference_from_json_and_from_gguf_arrays() {
    let golden = json_file(&golden_file("sentencepiece_bpe/golden.json"));
    let from_json = Tokenizer::from_hf_files(&golden_file("sentencepiece_bpe/tokenizer.json"), None).unwrap();
    let from_arrays = sentencepiece_from_arrays();
    assert!(from_json.add_bos_by_default() && from_arrays.add_bos_by_default());
    assert_eq!(from_json.bos_id(), Some(1));
    assert_eq!(from_arrays.bos_id(), Some(1));
    assert_eq!(from_arrays.eos_ids(), &[2]);
    let probes = golden["probes"].as_array().unwrap();
    assert!(probes.len() >= 14);
    for p in probes {
        let text = p["text"].as_str().unwrap();
        let want = ids(&p["ids"]);
        assert_eq!(from_json.encode(text, false).unwrap(), want, "tokenizer.json: {text:?}");
        assert_eq!(from_arrays.encode(text, false).unwrap(), want, "GGUF arrays: {text:?}");
        if let Some(d) = p["decoded"].as_str() {
            assert_eq!(from_arrays.decode(&want, true).unwrap(), d, "decode {text:?}");
        }
    }
    assert_eq!(from_arrays.encode("Hello", true).unwrap()[0], 1);
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(&crate::testdata::model_path()).unwrap()).unwrap()
}

#[test]
fn smollm2_from_gguf_matches_reference_and_round_trips_through_tokenizer_json() {
    let golden = json_file(&golden_file("smollm2_hf_golden.json"));
    let tok = smollm2();
    assert!(!tok.add_bos_by_default());
    assert_eq!(tok.eos_ids(), &[2]);
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tok.to_hf_json().unwrap()).unwrap();
    let reloaded = Tokenizer::from_hf_files(&path, None).unwrap();
    let mut cases: Vec<(String, Vec<u32>)> =
        golden["tokenizer_probes"].as_array().unwrap().iter().map(|p| (p["text"].as_str().unwrap().to_string(), ids(&p["ids"]))).collect();
    cases.extend(golden["prompts"].as_array().unwrap().iter().map(|p| (p["text"].as_str().unwrap().to_string(), ids(&p["input_ids"]))));
    for (text, want) in &cases {
        assert_eq!(&tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(&reloaded.encode(text, false).unwrap(), want, "reloaded: {text:?}");
    }
}

#[test]
fn stream_decoder_yields_whole_characters_only() {
    let tok = smollm2();
    let text = "naïve café — 東京 🙂🙂 done\n";
    let ids = tok.encode(text, false).unwrap();
    let mut d = tok.stream_decoder();
    let mut out = String::new();
    for &id in &ids {
        if let Some(piece) = d.push(id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "partial character in {piece:?}");
            out.push_str(&piece);
        }
    }
    out.push_str(&d.flush());
    assert_eq!(out, tok.decode(&ids, true).unwrap());
    assert_eq!(out, text);
}

#[test]
fn plain_encoding_never_produces_special_tokens() {
    let tok = smollm2();
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    assert_eq!(tok.encode("<|im_start|>user", false).unwrap()[0], im_start);
    let plain = tok.encode_plain("<|im_start|>user<|im_end|><|endoftext|>").unwrap();
    let specials = tok.special_token_ids();
    assert!(specials.contains(&im_start));
    assert!(plain.iter().all(|id| !specials.contains(id)), "{plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), "<|im_start|>user<|im_end|><|endoftext|>");
}

/// `encode_with`: BOS only where asked for and the tokenizer adds one by default; special-token
/// strings parsed only where asked for.
#[test]
fn encode_options_choose_bos_and_special_tokens() {
    let spm = sentencepiece_from_arrays();
    let text = "Hello </s> world";
    let eos = spm.eos_ids()[0];
    let opts = |add_bos, parse_special| EncodeOptions { add_bos, parse_special };
    assert_eq!(spm.encode_with(text, opts(true, true)).unwrap(), spm.encode(text, true).unwrap());
    assert_eq!(spm.encode_with(text, opts(false, true)).unwrap(), spm.encode(text, false).unwrap());
    assert!(spm.encode(text, false).unwrap().contains(&eos));
    let plain = spm.encode_with(text, opts(true, false)).unwrap();
    assert_eq!(plain[0], 1, "BOS in front of plain text too");
    assert_eq!(plain[1..], spm.encode_plain(text).unwrap()[..]);
    assert!(!plain.contains(&eos));
    // SmolLM2 adds no BOS by default: asking for one changes nothing.
    let tok = smollm2();
    assert!(!tok.add_bos_by_default());
    assert_eq!(tok.encode_with("<|im_start|>user", opts(true, true)).unwrap(), tok.encode("<|im_start|>user", false).unwrap());
    assert_eq!(tok.encode_with("<|im_start|>user", opts(true, false)).unwrap(), tok.encode_plain("<|im_start|>user").unwrap());
}

#[test]
fn bad_vocabularies_are_errors() {
    assert!(Tokenizer::from_gguf_vocab(&GgufVocab { model: "gpt2".into(), ..Default::default() }).is_err());
    let v = GgufVocab { model: "rwkv".into(), tokens: vec!["a".into()], ..Default::default() };
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    let v = GgufVocab { model: "gpt2".into(), pre: Some("unknown-pre".into()), tokens: vec!["a".into()], merges: Some(vec![]), ..Default::default() };
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    let v = GgufVocab { model: "llama".into(), tokens: vec!["a".into()], ..Default::default() };
    assert!(Tokenizer::from_gguf_vocab(&v).is_err(), "llama without scores");
    assert!(Tokenizer::from_hf_files(Path::new("/nonexistent/tokenizer.json"), None).is_err());
}
