//! Parity with llama.cpp on the real model (`../shared/reference` copies live in
//! `tests/reference/`). Ignored by default; CI runs them after `scripts/fetch_model.py`.

use std::path::PathBuf;

use apr_core::backend::cpu::Cpu;
use apr_core::file::MappedFile;
use apr_core::model::{Logits, Qwen2};

fn real_model() -> PathBuf {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fetch_model.py"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn reference(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reference")).join(name)
}

#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_first_logits_match_llama_cpp() {
    let file = MappedFile::open(real_model()).unwrap();
    let parsed = file.model().unwrap();
    let mut model = Qwen2::load(&parsed, Cpu::new(2), 512).unwrap();
    let t = std::time::Instant::now();
    let logits = model.forward(&[785, 6722, 315, 9625, 374], Logits::Last).unwrap();
    eprintln!("prompt: {:?}", t.elapsed());
    let want: Vec<f32> = std::fs::read(reference("greedy/b_capital_france.first_logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(logits.len(), want.len()); std::fs::write("/tmp/np/ours.f32", logits.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let n = want.len() as f32; let mean = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / n; let bias = logits.iter().zip(&want).map(|(a, b)| a - b).sum::<f32>() / n; eprintln!("mean abs {mean} bias {bias}; top ours {:?} ref {:?}", &logits[12095], &want[12095]);
    let mut idx: Vec<usize> = (0..want.len()).collect(); idx.sort_by(|&a, &b| (logits[b]-want[b]).abs().total_cmp(&(logits[a]-want[a]).abs())); for &i in &idx[..8] { eprintln!("id {i}: ours {} ref {}", logits[i], want[i]); }
    let max = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    eprintln!("max abs diff {max}, argmax {} vs {}", argmax(&logits), argmax(&want));
    let t = std::time::Instant::now();
    for _ in 0..5 { model.forward(&[1], Logits::Last).unwrap(); }
    eprintln!("5 tokens: {:?}", t.elapsed());
    assert!(max < 0.1, "max abs diff {max}");
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_tokenizer_matches_llama_cpp_on_every_reference_file() {
    let file = MappedFile::open(real_model()).unwrap();
    let tok = apr_core::tokenizer::Tokenizer::from_metadata(&file.model().unwrap().metadata).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(reference("tokenize")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let doc = json(path);
        let body = &doc["request"]["body"];
        if name.starts_with("detokenize") {
            let ids: Vec<u32> = body["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.decode(&ids, false).unwrap(), doc["response"]["content"].as_str().unwrap(), "{name}");
        } else {
            let text = body["content"].as_str().unwrap();
            let special = body["parse_special"].as_bool().unwrap_or(true);
            let want: Vec<u32> = doc["response"]["tokens"].as_array().unwrap().iter()
                .map(|t| t.get("id").unwrap_or(t).as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text, special).unwrap(), want, "{name}");
            // Pieces, where llama.cpp gave them, are the token bytes.
            for t in doc["response"]["tokens"].as_array().unwrap() {
                if let (Some(id), Some(piece)) = (t.get("id"), t.get("piece").and_then(|p| p.as_str())) {
                    let bytes = tok.token_bytes(id.as_u64().unwrap() as u32).unwrap();
                    if let Ok(s) = std::str::from_utf8(bytes) { assert_eq!(s, piece, "{name}"); }
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 11);
}
