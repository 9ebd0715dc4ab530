//! Parity with llama.cpp on the real model (`../shared/reference` copies live in
//! `tests/reference/`). Ignored by default; CI runs them after `scripts/fetch_model.py`.

#[path = "common/real.rs"]
mod real;

use std::path::PathBuf;

use real::{real_model, reference};

use apr_core::backend::cpu::Cpu;
use apr_core::file::MappedFile;
use apr_core::model::{Logits, Qwen2};

/// First-position logits of prompt (b) against llama.cpp's whole logit vector: within 0.1 (the
/// issue's bar). The CPU backend follows llama.cpp's x86 arithmetic operation for operation
/// (activation quantization, lane sums and fused multiply-adds, f16 flash attention, its SiLU
/// exponential), and the logits come out identical; a difference means a kernel drifted.
#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_first_logits_match_llama_cpp() {
    let file = MappedFile::open(real_model()).unwrap();
    let parsed = file.model().unwrap();
    let mut model = Qwen2::load(&parsed, Cpu::new(2), 64).unwrap();
    let logits = model
        .forward(&[785, 6722, 315, 9625, 374], Logits::Last)
        .unwrap();
    let want: Vec<f32> = std::fs::read(reference("greedy/b_capital_france.first_logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(logits.len(), want.len());
    let max = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("first logits vs llama.cpp: max abs diff {max}");
    assert!(max < 0.1, "max abs diff {max}");
    assert_eq!(
        apr_core::sample::argmax(&logits),
        apr_core::sample::argmax(&want)
    );
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_tokenizer_matches_llama_cpp_on_every_reference_file() {
    let file = MappedFile::open(real_model()).unwrap();
    let tok =
        apr_core::tokenizer::Tokenizer::from_metadata(&file.model().unwrap().metadata).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(reference("tokenize")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let doc = json(path);
        let body = &doc["request"]["body"];
        if name.starts_with("detokenize") {
            let ids: Vec<u32> = body["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                doc["response"]["content"].as_str().unwrap(),
                "{name}"
            );
        } else {
            let text = body["content"].as_str().unwrap();
            let special = body["parse_special"].as_bool().unwrap_or(true);
            let want: Vec<u32> = doc["response"]["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.get("id").unwrap_or(t).as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text, special).unwrap(), want, "{name}");
            // Pieces, where llama.cpp gave them, are the token bytes.
            for t in doc["response"]["tokens"].as_array().unwrap() {
                if let (Some(id), Some(piece)) =
                    (t.get("id"), t.get("piece").and_then(|p| p.as_str()))
                {
                    let bytes = tok.token_bytes(id.as_u64().unwrap() as u32).unwrap();
                    if let Ok(s) = std::str::from_utf8(bytes) {
                        assert_eq!(s, piece, "{name}");
                    }
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 11);
}

/// Our own corpus (tests/data/tokenizer_corpus.json, made by scripts/gen_tokenizer_corpus.py with
/// llama.cpp's llama-tokenize): code in several languages, whitespace runs, digits, CJK and other
/// scripts, emoji sequences, special and FIM tokens with parsing on and off, CRLF, empty input.
#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_tokenizer_matches_llama_cpp_on_a_broad_corpus() {
    let file = MappedFile::open(real_model()).unwrap();
    let tok =
        apr_core::tokenizer::Tokenizer::from_metadata(&file.model().unwrap().metadata).unwrap();
    let corpus = json(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/tokenizer_corpus.json"
    )));
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let special = case["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text, special).unwrap();
        assert_eq!(ids, want, "{text:?} (parse_special {special})");
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{text:?}");
    }
}
