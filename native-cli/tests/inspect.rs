//! `apr inspect` on synthetic files, hostile files and the real model.

mod common;
#[path = "../../core/tests/common/gguf_bytes.rs"]
mod gguf_bytes;

use std::fs;
use std::io::Read;
use std::process::Stdio;

use common::Apr;
use gguf_bytes::{Bytes, tiny, vt};
use serde_json::Value;

fn write(apr: &Apr, name: &str, bytes: &[u8]) -> String {
    let path = apr.dir().join(name);
    fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn text_json_and_tensor_listing_of_a_synthetic_model() {
    let apr = Apr::new();
    let file = write(&apr, "tiny.gguf", &tiny());
    let run = apr.run(&["inspect", &file]);
    run.success();
    for line in [
        "Model:           Tiny Qwen",
        "Format:          GGUF v3",
        "Quantization:    F32",
        "Architecture:    qwen2",
        "Vocabulary:      8 tokens",
        "Layers:          1",
        "Hidden Size:     4",
        "Attention Heads: 2",
        "KV Heads:        1",
        "Tensors:         3 (F32 ×3)",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("separate output.weight"),
        "{}",
        run.stdout
    );

    let json = apr.run(&["inspect", &file, "--json"]);
    json.success();
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["schema"], "apr.inspect.v1");
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["parameters"], 68);
    assert!(v.get("tensors").is_none(), "tensors only with --tensors");

    let listed = apr.run(&["inspect", &file, "--json", "--tensors"]);
    let v: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(v["tensors"][0]["name"], "token_embd.weight");
    assert_eq!(v["tensors"][0]["shape"], serde_json::json!([8, 4]));
    let text = apr.run(&["inspect", &file, "--tensors"]);
    assert!(
        text.stdout.contains("output_norm.weight"),
        "{}",
        text.stdout
    );
}

/// Each hostile file: exit code 1 (not 101), one line naming the file and the offset or tensor.
#[test]
fn issue_2_hostile_files_fail_cleanly() {
    let huge = 1u64 << 60;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push((
        "cut-in-counts",
        tiny()[..30].to_vec(),
        "metadata count 10 at byte 16 cannot fit in the 6 bytes",
    ));
    let mut b = Bytes::header(3, 0, 1);
    b.string("abcdefghijkl").u32(vt::U32).raw(&[1, 2]);
    cases.push((
        "cut-in-value",
        b.0,
        "truncated file: metadata value at byte 48 needs 4 bytes, only 2 remain",
    ));
    let whole = tiny();
    let cut = whole[..whole.len() - 10].to_vec();
    cases.push((
        "truncated-data",
        cut,
        "tensor 'output.weight': data at bytes",
    ));
    let mut magic = tiny();
    magic[..4].copy_from_slice(b"GGJT");
    cases.push(("magic", magic, "unrecognised file"));
    let mut version = tiny();
    version[4..8].copy_from_slice(&7u32.to_le_bytes());
    cases.push(("version", version, "version 7"));
    let mut b = Bytes::header(3, 0, huge);
    b.kv_u32("a", 1);
    cases.push((
        "kv-count",
        b.0,
        "metadata count 1152921504606846976 at byte 16",
    ));
    let mut b = Bytes::header(3, huge, 0);
    b.tensor("t", &[1], 0, 0);
    cases.push((
        "tensor-count",
        b.0,
        "tensor count 1152921504606846976 at byte 8",
    ));
    let mut b = Bytes::header(3, 0, 1);
    b.u64(huge).raw(&[b'k'; 32]);
    cases.push((
        "string-length",
        b.0,
        "metadata key length 1152921504606846976 at byte 24",
    ));
    let mut b = Bytes::header(3, 0, 1);
    b.string("tokens").u32(vt::ARRAY).u32(vt::STRING).u64(huge);
    cases.push((
        "array-length",
        b.0,
        "array length 1152921504606846976 at byte 46 cannot fit",
    ));
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("blk.0.ffn_up.weight", &[32], 8, 1 << 40)
        .pad(32)
        .raw(&[0; 34]);
    cases.push(("offset", b.0, "tensor 'blk.0.ffn_up.weight': data at bytes"));
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("blk.0.ffn_up.weight", &[32], 99, 0)
        .pad(32)
        .raw(&[0; 34]);
    cases.push((
        "type",
        b.0,
        "tensor 'blk.0.ffn_up.weight': unknown ggml type id 99",
    ));
    let mut b = Bytes::header(3, 0, 1);
    b.string("k").u32(42).u32(0);
    cases.push((
        "value-type",
        b.0,
        "unknown metadata value type 42 at byte 33",
    ));

    let apr = Apr::new();
    for (name, bytes, expected) in cases {
        let file = write(&apr, &format!("{name}.gguf"), &bytes);
        let run = apr.run(&["inspect", &file]);
        run.failure();
        assert_eq!(run.stderr.lines().count(), 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(&file), "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains(expected),
            "{name}: expected {expected:?} in {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{name}: {}", run.stdout);
    }
}

#[test]
fn missing_unknown_and_unreadable_files() {
    let apr = Apr::new();
    let run = apr.run(&["inspect", "nope.gguf"]);
    run.failure();
    assert!(
        run.stderr.contains("cannot open nope.gguf"),
        "{}",
        run.stderr
    );

    let empty = write(&apr, "empty.gguf", b"");
    assert!(
        apr.run(&["inspect", &empty])
            .failure()
            .stderr
            .contains("the file is empty")
    );
    let dir = apr.dir().to_str().unwrap().to_string();
    assert!(
        apr.run(&["inspect", &dir])
            .failure()
            .stderr
            .contains("is a directory")
    );

    let text = write(&apr, "notes.txt", b"just some text");
    assert!(
        apr.run(&["inspect", &text])
            .failure()
            .stderr
            .contains("unrecognised file")
    );

    // A SafeTensors header that promises more bytes than the file has (issue 3 made SafeTensors
    // readable; what it rejects is damage).
    let mut st = 64u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    let st = write(&apr, "m.safetensors", &st);
    let run = apr.run(&["inspect", &st]);
    run.failure();
    assert!(run.stderr.contains("SafeTensors: "), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let apr = Apr::new();
    assert_eq!(apr.run(&["inspect"]).code, Some(2));
    assert_eq!(apr.run(&["inspect", "x", "--no-such-flag"]).code, Some(2));
    assert_eq!(apr.run(&["frobnicate"]).code, Some(2));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    // Enough tensors that the listing overflows the pipe buffer.
    let n = 4000u64;
    let mut b = Bytes::header(3, n, 0);
    for i in 0..n {
        b.tensor(&format!("blk.{i}.ffn_norm.weight"), &[8], 0, i * 32);
    }
    b.pad(32).raw(&vec![0; n as usize * 32]);
    let apr = Apr::new();
    let file = write(&apr, "many.gguf", &b.0);
    let mut child = common::apr_in(apr.dir())
        .args(["inspect", &file, "--tensors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs the real model: run scripts/fetch_model.py (scripts/test.sh does)"]
fn issue_2_real_model_facts() {
    let model = common::real_model();
    let model = model.to_str().unwrap();
    let apr = Apr::new();
    let run = apr.run(&["inspect", model]);
    run.success();
    for line in [
        "Format:          GGUF v3",
        "Quantization:    Q4_K_M",
        "Parameters:      630.17M (630,167,424); 494.03M without the LM head",
        "LM head:         separate output.weight",
        "Vocabulary:      151,936 tokens",
        "Architecture:    qwen2",
        "Layers:          24",
        "Hidden Size:     896",
        "Attention Heads: 14",
        "KV Heads:        2",
        "Context Length:  32,768",
        "RoPE Theta:      1000000",
        "Tensors:         291 (Q5_0 ×133, F32 ×121, Q8_0 ×13, Q4_K ×12, Q6_K ×12)",
        "(491,400,064 bytes",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in\n{}",
            run.stdout
        );
    }

    let json = apr.run(&["inspect", model, "--json"]);
    json.success();
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["architecture"], "qwen2");
    assert_eq!(v["format_version"], 3);
    assert_eq!(v["quantization"], "Q4_K_M");
    assert_eq!(v["layers"], 24);
    assert_eq!(v["hidden_size"], 896);
    assert_eq!(v["attention_heads"], 14);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["vocab_size"], 151_936);
    assert_eq!(v["tensor_count"], 291);
    assert_eq!(v["file_size"], 491_400_064u64);
    assert_eq!(v["parameters"], 630_167_424u64);
    assert_eq!(v["lm_head"]["tied"], false);
    assert_eq!(v["lm_head"]["tensor"], "output.weight");
    assert_eq!(v["rope_theta"], 1_000_000.0);
    let dtypes: Vec<(String, u64)> = v["dtypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dtype"].as_str().unwrap().to_string(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("Q5_0", 133),
        ("F32", 121),
        ("Q8_0", 13),
        ("Q4_K", 12),
        ("Q6_K", 12),
    ];
    assert_eq!(dtypes, expected.map(|(d, c)| (d.to_string(), c)).to_vec());

    let listed = apr.run(&["inspect", model, "--json", "--tensors"]);
    let v: Value = serde_json::from_str(&listed.stdout).unwrap();
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 291);
    let find = |name: &str| tensors.iter().find(|t| t["name"] == name).unwrap().clone();
    assert_eq!(find("output.weight")["dtype"], "Q8_0");
    assert_eq!(find("token_embd.weight")["dtype"], "Q5_0");
    assert_eq!(
        find("token_embd.weight")["shape"],
        serde_json::json!([151_936, 896])
    );
}
