//! Issue 4 through the `apr` binary: run, chat, trace, tokenize, detokenize and eval perplexity on
//! tiny generated models, and the seed's Parts 2 and 5 plus llama.cpp parity on the real model
//! (ignored by default; CI runs them after `scripts/fetch_model.py`).

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use apr_core::dtype::GgmlType;
use apr_core::synth::{self, Config};
use common::{Apr, real_model, tiny};
use serde_json::Value;

fn apr_with_stdin(dir: &Path, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apr"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn issue_4_run_streams_text_and_reports_json() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q8_0);
    // The same greedy run, with one extra flag.
    let greedy = |extra: &[&str]| {
        let mut args = vec![
            "run",
            &m,
            "-p",
            "the cat",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--ignore-eos",
        ];
        args.extend(extra);
        let r = apr.run(&args);
        r.success();
        r
    };
    let run = greedy(&[]);
    assert!(run.stderr.contains("tok/s"), "{}", run.stderr);
    let quiet = greedy(&["--quiet"]);
    assert_eq!(quiet.stdout, run.stdout, "--quiet changes only stderr");
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);
    let json = greedy(&["--json"]);
    let v: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["generated_tokens"], 8);
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(format!("{}\n", v["text"].as_str().unwrap()), run.stdout);
    assert!(v["timings"]["prompt_tokens_per_s"].as_f64().unwrap() > 0.0);
    // Same seed, same text; all three formats agree for a float model.
    let seeded = |f: &str| {
        let r = apr.run(&[
            "run",
            f,
            "-p",
            "the",
            "--max-tokens",
            "10",
            "--seed",
            "42",
            "--temperature",
            "1.0",
            "--ignore-eos",
            "--quiet",
        ]);
        r.success();
        r.stdout
    };
    apr.run(&["convert", &m, "m.apr", "--compression", "zstd"])
        .success();
    assert_eq!(seeded(&m), seeded(&m));
    assert_eq!(seeded(&m), seeded("m.apr"));
}

#[test]
fn issue_4_run_takes_a_model_from_the_import_cache() {
    let apr = Apr::new().env("HF_HUB_OFFLINE", "1");
    let snapshot = apr
        .hf_home()
        .join("hub/models--org--tiny/snapshots/0123abc");
    fs::create_dir_all(&snapshot).unwrap();
    fs::write(
        snapshot.join("tiny.gguf"),
        synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap(),
    )
    .unwrap();
    let refs = apr.hf_home().join("hub/models--org--tiny/refs");
    fs::create_dir_all(&refs).unwrap();
    fs::write(refs.join("main"), "0123abc").unwrap();
    let args = [
        "-p",
        "the",
        "--max-tokens",
        "3",
        "--ignore-eos",
        "--quiet",
        "--temperature",
        "0",
    ];
    let cached = apr.run(&[&["run", "hf://org/tiny/tiny.gguf"][..], &args[..]].concat());
    cached.success();
    tiny(&apr, "local.gguf", GgmlType::Q8_0);
    let local = apr.run(&[&["run", "local.gguf"][..], &args[..]].concat());
    assert_eq!(cached.stdout, local.stdout);
    apr.run(&["run", "hf://org/missing", "-p", "x"]).failure();
}

#[test]
fn issue_4_run_batches_prompts_and_rejects_bad_flags() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q4_K);
    fs::write(apr.dir().join("prompts.txt"), "the cat\n\nin the\n").unwrap();
    let r = apr.run(&[
        "run",
        &m,
        "--prompts-file",
        "prompts.txt",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
        "--temperature",
        "0",
    ]);
    r.success();
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prompt"], "in the");
    let (code, out, _) = apr_with_stdin(
        apr.dir(),
        // Greedy: a sampled reply from the tiny model's random weights may contain a newline.
        &[
            "run",
            &m,
            "--max-tokens",
            "3",
            "--quiet",
            "--ignore-eos",
            "--temperature",
            "0",
        ],
        "a\nb\nc\n",
    );
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 3, "{out}");
    apr.run(&["run", &m, "-p", "x", "--top-p", "0"]).failure();
    apr.run(&["run", &m, "-p", "x", "--temperature=-1"])
        .failure();
    apr.run(&["run", "missing.gguf", "-p", "x"]).failure();
    let r = apr.run(&["run", &m, "-p", "the cat sat on the mat", "--ctx-size", "4"]);
    r.failure();
    assert!(r.stderr.contains("context is full"), "{}", r.stderr);
    apr.run(&[
        "run",
        &m,
        "-p",
        "the cat sat on the mat",
        "--ctx-size",
        "4",
        "--truncate",
        "--max-tokens",
        "2",
        "--ignore-eos",
    ])
    .success();
    let r = apr.run(&["run", &m, "-p", "x", "--system", "s"]);
    assert_eq!(r.code, Some(2), "--system needs --chat");
}

#[test]
fn issue_4_chat_reads_turns_from_stdin() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q8_0);
    let (code, out, err) = apr_with_stdin(
        apr.dir(),
        &[
            "chat",
            &m,
            "--max-tokens",
            "5",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
            "--system",
            "be brief",
        ],
        "hello\n/system be long\nthe cat\n/clear\nin\n/exit\nnever read\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 3, "one answer per turn: {out:?}");
    assert!(err.contains("cleared"), "{err}");
}

#[test]
fn issue_4_trace_tokenize_detokenize() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q6_K);
    apr.run(&[
        "trace",
        &m,
        "-p",
        "the cat",
        "--trace-output",
        "t.json",
        "--memory-profile",
    ])
    .success();
    let t: Value =
        serde_json::from_str(&fs::read_to_string(apr.dir().join("t.json")).unwrap()).unwrap();
    let argmax = t["first_token"]["argmax"].as_u64().unwrap();
    assert_eq!(t["first_token"]["top"][0]["id"].as_u64().unwrap(), argmax);
    assert_eq!(
        t["layers"].as_array().unwrap().len(),
        Config::default().layers as usize + 1
    );
    assert_eq!(t["layers"][1]["nan"], false);
    assert!(
        t["ops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["op"] == "attention")
    );
    assert!(t["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    let ids = apr.run(&["tokenize", &m, "--text", "the cat<|im_end|>", "--json"]);
    ids.success();
    let ids: Vec<u32> = serde_json::from_str(&ids.stdout).unwrap();
    let plain = apr.run(&[
        "tokenize",
        &m,
        "--text",
        "the cat<|im_end|>",
        "--json",
        "--no-special",
    ]);
    assert!(
        serde_json::from_str::<Vec<u32>>(&plain.stdout)
            .unwrap()
            .len()
            > ids.len()
    );
    let args: Vec<String> = ids.iter().map(u32::to_string).collect();
    let mut cmd = vec!["detokenize", &m];
    cmd.extend(args.iter().map(String::as_str));
    let back = apr.run(&cmd);
    back.success();
    assert_eq!(back.stdout, "the cat<|im_end|>\n");
    apr.run(&["detokenize", &m, "abc"]).failure();
    apr.run(&["detokenize", &m, "99999999"]).failure();
}

#[test]
fn issue_4_perplexity_of_a_tiny_model() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q8_0);
    fs::write(
        apr.dir().join("t.txt"),
        "the cat sat on the mat. ".repeat(30),
    )
    .unwrap();
    let r = apr.run(&["eval", "perplexity", &m, "t.txt", "--ctx-size", "64"]);
    r.success();
    let last = r.stdout.lines().last().unwrap();
    assert!(last.starts_with("PPL = "), "{}", r.stdout);
    let j = apr.run(&[
        "eval",
        "perplexity",
        &m,
        "t.txt",
        "--ctx-size",
        "64",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&j.stdout).unwrap();
    assert!(v["ppl"].as_f64().unwrap() > 1.0);
    assert_eq!(v["scored_tokens"], v["chunks"].as_u64().unwrap() * 31);
    let r = apr.run(&["eval", "perplexity", &m, "t.txt", "--ctx-size", "100000"]);
    r.failure();
}

// ---------------------------------------------------------------------------------------------
// The real model.

fn reference(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reference")).join(name)
}

/// The real model converted once per test to SafeTensors and APR beside a link to the GGUF.
fn real_formats(apr: &Apr) -> [String; 3] {
    let gguf = apr.dir().join("qwen2.5-coder-0.5b.gguf");
    std::os::unix::fs::symlink(real_model(), &gguf).unwrap();
    apr.run(&[
        "convert",
        "qwen2.5-coder-0.5b.gguf",
        "qwen2.5-coder-0.5b.safetensors",
    ])
    .success();
    apr.run(&[
        "convert",
        "qwen2.5-coder-0.5b.gguf",
        "qwen2.5-coder-0.5b.apr",
        "--compression",
        "lz4",
    ])
    .success();
    ["gguf", "safetensors", "apr"].map(|e| format!("qwen2.5-coder-0.5b.{e}"))
}

#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_greedy_parity_with_llama_cpp() {
    let apr = Apr::new();
    let [gguf, st, aprf] = real_formats(&apr);
    for name in [
        "a_fibonacci",
        "b_capital_france",
        "c_factorial",
        "d_chatml_rust_reverse",
    ] {
        let doc: Value = serde_json::from_str(
            &fs::read_to_string(reference(&format!("greedy/{name}.json"))).unwrap(),
        )
        .unwrap();
        let prompt = fs::read_to_string(reference(&format!("greedy/{name}.prompt.txt"))).unwrap();
        let steps = doc["steps"].as_array().unwrap();
        let run = |file: &str| -> Value {
            let r = apr.run(&[
                "run",
                file,
                "-p",
                &prompt,
                "--temperature",
                "0",
                "--max-tokens",
                &steps.len().to_string(),
                "--ignore-eos",
                "--json",
            ]);
            r.success();
            serde_json::from_str(r.stdout.trim()).unwrap()
        };
        let g = run(&gguf);
        let ours: Vec<u64> = g["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let mut safe = 0;
        for (i, step) in steps.iter().enumerate() {
            let top = step["top"].as_array().unwrap();
            let (t1, t2) = (
                top[0]["logit"].as_f64().unwrap(),
                top[1]["logit"].as_f64().unwrap(),
            );
            if t1 - t2 < 0.2 {
                let either = [
                    top[0]["id"].as_u64().unwrap(),
                    top[1]["id"].as_u64().unwrap(),
                ];
                assert!(
                    either.contains(&ours[i]),
                    "{name} step {i}: {} not in {either:?}",
                    ours[i]
                );
                break;
            }
            assert_eq!(ours[i], step["token"].as_u64().unwrap(), "{name} step {i}");
            safe += 1;
        }
        eprintln!("{name}: {safe} safe-prefix tokens equal llama.cpp's");
        // Past the rule: the CPU backend reproduces llama.cpp's arithmetic, so even the near
        // ties come out the same way and all 32 tokens are equal.
        let want: Vec<u64> = doc["generated_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ours, want, "{name}: all steps");
        // APR holds the same blocks: the same tokens and the same logits, bit for bit.
        assert_eq!(run(&aprf)["token_ids"], g["token_ids"], "{name}: APR");
        let trace = |file: &str| -> Value {
            apr.run(&["trace", file, "-p", &prompt, "--trace-output", "t.json"])
                .success();
            serde_json::from_str(&fs::read_to_string(apr.dir().join("t.json")).unwrap()).unwrap()
        };
        let (tg, ta) = (trace(&gguf), trace(&aprf));
        assert_eq!(
            tg["first_token"]["top"], ta["first_token"]["top"],
            "{name}: APR logits"
        );
        assert_eq!(
            tg["prompt_tokens"], doc["prompt_tokens"],
            "{name}: prompt tokens"
        );
        // SafeTensors F32 agrees on the first token (either of a near tie).
        let ts = trace(&st);
        let top = steps[0]["top"].as_array().unwrap();
        let margin = top[0]["logit"].as_f64().unwrap() - top[1]["logit"].as_f64().unwrap();
        let argmax = ts["first_token"]["argmax"].as_u64().unwrap();
        if margin < 0.2 {
            assert!(
                [top[0]["id"].as_u64(), top[1]["id"].as_u64()].contains(&Some(argmax)),
                "{name}: SafeTensors"
            );
        } else {
            assert_eq!(
                argmax,
                steps[0]["token"].as_u64().unwrap(),
                "{name}: SafeTensors"
            );
        }
    }
}

#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_seed_parts_2_and_5_on_the_real_model() {
    let apr = Apr::new();
    let formats = real_formats(&apr);
    let prompt = "Write a Python function to calculate factorial:";
    // 2.1 single shot.
    for f in &formats {
        let r = apr.run(&[
            "run",
            f,
            "-p",
            prompt,
            "--max-tokens",
            "100",
            "--temperature",
            "0.7",
        ]);
        r.success();
        assert!(r.stdout.trim().len() > 20, "{f}: {}", r.stdout);
        assert!(r.stderr.contains("tok/s"), "{f}");
    }
    // 2.2 chat, the three test cases through stdin.
    let cases = "Explain the difference between `==` and `is` in Python\nWrite a Rust function to reverse a string\nDebug this code: `for i in range(10): print(i`\n";
    for (i, f) in formats.iter().enumerate() {
        let mut args = vec!["chat", f, "--temperature", "0.7", "--top-p", "0.9"];
        if i == 0 {
            args.extend(["--system", "You are a helpful coding assistant."]);
        }
        let (code, out, err) = apr_with_stdin(apr.dir(), &args, cases);
        assert_eq!(code, Some(0), "{f}: {err}");
        assert!(out.trim().len() > 100, "{f}: {out}");
    }
    // 2.3 batch loop with --quiet.
    fs::create_dir_all(apr.dir().join("deployments/cli")).unwrap();
    fs::write(
        apr.dir().join("deployments/cli/prompts.txt"),
        "What is 2 + 2?\nWrite a hello world in Rust.\nExplain async/await in JavaScript.\n",
    )
    .unwrap();
    let script = format!(
        "while IFS= read -r prompt; do echo \"=== Prompt: $prompt ===\"; {} run {} -p \"$prompt\" --max-tokens 50 --quiet; done < deployments/cli/prompts.txt",
        env!("CARGO_BIN_EXE_apr"),
        formats[0]
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(apr.dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("=== Prompt:").count(), 3, "{text}");
    assert!(
        out.stderr.is_empty(),
        "--quiet keeps stderr empty: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 5.1 seeded runs: GGUF and APR give the same text.
    let seeded = |f: &str| {
        let r = apr.run(&[
            "run",
            f,
            "-p",
            "What is the capital of France?",
            "--seed",
            "42",
            "--max-tokens",
            "20",
        ]);
        r.success();
        r.stdout
    };
    assert_eq!(seeded(&formats[0]), seeded(&formats[2]));
    // 5.2 the same first-token argmax from all three.
    let argmax = |f: &str| {
        apr.run(&[
            "trace",
            f,
            "-p",
            "The answer is",
            "--trace-output",
            "t.json",
        ])
        .success();
        let v: Value =
            serde_json::from_str(&fs::read_to_string(apr.dir().join("t.json")).unwrap()).unwrap();
        v["first_token"]["argmax"].clone()
    };
    let a = argmax(&formats[0]);
    assert_eq!(argmax(&formats[1]), a);
    assert_eq!(argmax(&formats[2]), a);
    // check runs the smoke test on the real model.
    for f in &formats {
        let r = apr.run(&["check", f]);
        r.success();
        assert!(
            r.stdout.contains("10. inference smoke test        PASS"),
            "{}",
            r.stdout
        );
    }
}

#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_4_perplexity_within_one_percent_of_llama_cpp() {
    // llama-perplexity (llama.cpp 0c1e57098, CPU, 2 threads) on tests/data/perplexity.txt with
    // -c 512 printed "[1]3.4123,[2]2.8578,[3]3.0673,[4]3.0800" and "Final estimate: PPL = 3.0800
    // +/- 0.17293". The first two windows keep CI short; their estimate is 2.8578.
    const LLAMA_CPP_PPL: f64 = 2.8578;
    let apr = Apr::new();
    let text = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/perplexity.txt"
    ));
    let model = real_model();
    let r = apr.run(&[
        "eval",
        "perplexity",
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        "--ctx-size",
        "512",
        "--chunks",
        "2",
        "--json",
    ]);
    r.success();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["chunks"], 2);
    let ppl = v["ppl"].as_f64().unwrap();
    eprintln!("apr PPL = {ppl:.4}, llama.cpp PPL = {LLAMA_CPP_PPL}");
    assert!(
        (ppl / LLAMA_CPP_PPL - 1.0).abs() < 0.01,
        "PPL {ppl} vs llama.cpp {LLAMA_CPP_PPL}"
    );
}
