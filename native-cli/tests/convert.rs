//! `apr rosetta convert`, `apr check` and `apr validate` end to end: every direction on tiny
//! synthetic models, the safety rules (no overwrite, atomic output, Ctrl-C), the hostile corpus,
//! and the seed's Part 1 commands on the real model.

mod common;
#[path = "../../core/tests/common/hostile.rs"]
mod hostile;

use std::fs;
use std::path::Path;

use apr_core::dtype::GgmlType;
use apr_core::synth::{self, Config};
use common::Apr;

/// A tiny Q8_0 qwen2 GGUF in the runner's folder.
fn tiny_gguf(apr: &Apr, name: &str, ty: GgmlType) -> String {
    let bytes = synth::gguf(&Config::default(), ty).unwrap();
    fs::write(apr.dir().join(name), bytes).unwrap();
    name.to_string()
}

/// Everything in the folder that is not one of `keep`: leftovers such as temporary files.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "hf" && !keep.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

#[test]
fn issue_3_all_six_directions_with_verify() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::Q8_0);
    let steps = [
        (g.as_str(), "m.safetensors"),
        ("m.safetensors", "from-st.apr"),
        ("m.safetensors", "from-st.gguf"),
        (g.as_str(), "m.apr"),
        ("m.apr", "from-apr.safetensors"),
        ("m.apr", "from-apr.gguf"),
    ];
    for (i, o) in steps {
        let run = apr.run(&["rosetta", "convert", i, o, "--verify"]);
        run.success();
        assert!(
            run.stdout.contains("Verify: PASS"),
            "{i} -> {o}: {}",
            run.stdout
        );
        // The reported size is the file's size.
        let size = fs::metadata(apr.dir().join(o)).unwrap().len();
        let shown = size
            .to_string()
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            run.stdout.contains(&format!("{shown} bytes")),
            "{o}: {size} not in {}",
            run.stdout
        );
    }
    // GGUF -> APR -> GGUF gives back the same file, byte for byte.
    assert_eq!(
        fs::read(apr.dir().join("m.gguf")).unwrap(),
        fs::read(apr.dir().join("from-apr.gguf")).unwrap()
    );
    // `apr convert` is the same command.
    apr.run(&[
        "convert",
        "m.gguf",
        "alias.apr",
        "--compression",
        "zstd",
        "--verify",
    ])
    .success();
}

#[test]
fn issue_3_json_report_and_inspect_of_every_format() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::Q4_K);
    let run = apr.run(&[
        "rosetta",
        "convert",
        &g,
        "m.apr",
        "--compression",
        "lz4",
        "--verify",
        "--json",
    ]);
    run.success();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["verify"]["pass"], true);
    assert_eq!(
        v["output"]["bytes"],
        fs::metadata(apr.dir().join("m.apr")).unwrap().len()
    );
    assert_eq!(v["tensors"].as_array().unwrap().len(), 2 + 2 * 12 + 1);
    for f in ["m.gguf", "m.apr"] {
        let run = apr.run(&["inspect", f, "--json"]);
        run.success();
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(v["architecture"], "qwen2");
        assert_eq!(v["layers"], 2);
    }
    let run = apr.run(&["inspect", "m.apr"]);
    assert!(
        run.stdout.contains("APR v2, lz4 compressed"),
        "{}",
        run.stdout
    );
}

#[test]
fn issue_3_outputs_are_never_overwritten_without_force() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::F16);
    let before = fs::read(apr.dir().join(&g)).unwrap();
    apr.run(&["convert", &g, &g]).failure();
    apr.run(&["convert", &g, "./m.gguf", "--force"]).failure();
    assert_eq!(
        fs::read(apr.dir().join(&g)).unwrap(),
        before,
        "the input is untouched"
    );
    fs::write(apr.dir().join("out.apr"), b"keep me").unwrap();
    let run = apr.run(&["convert", &g, "out.apr"]);
    run.failure();
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(fs::read(apr.dir().join("out.apr")).unwrap(), b"keep me");
    apr.run(&["convert", &g, "out.apr", "--force"]).success();
    assert_ne!(fs::read(apr.dir().join("out.apr")).unwrap(), b"keep me");
    assert_eq!(
        leftovers(apr.dir(), &["m.gguf", "out.apr"]),
        Vec::<String>::new()
    );
}

#[test]
fn issue_3_bad_requests_fail_cleanly() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::F32);
    for (args, says) in [
        (
            vec!["convert", &g, "out.bin"],
            "cannot tell the output format",
        ),
        (
            vec!["convert", &g, "out.gguf", "--compression", "lz4"],
            "APR output only",
        ),
        (
            vec!["convert", &g, "out.safetensors", "--quantize", "q4_k"],
            "SafeTensors cannot hold",
        ),
        (
            vec!["convert", &g, "out.gguf", "--target", "wasm"],
            "--target wasm writes an .apr",
        ),
        (
            vec!["convert", "missing.gguf", "out.apr"],
            "cannot open missing.gguf",
        ),
    ] {
        let run = apr.run(&args);
        run.failure();
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    // Usage errors are exit 2.
    let run = apr.run(&["convert", &g, "o.gguf", "--quantize", "q3_xl"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(leftovers(apr.dir(), &["m.gguf"]), Vec::<String>::new());
}

#[test]
fn issue_3_quantize_and_wasm_target() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::F32);
    apr.run(&["convert", &g, "q.gguf", "--quantize", "q4_k_m", "--verify"])
        .success();
    let run = apr.run(&["inspect", "q.gguf"]);
    assert!(run.stdout.contains("Q4_K_M"), "{}", run.stdout);
    apr.run(&[
        "convert",
        &g,
        "web.apr",
        "--target",
        "wasm",
        "--optimize-size",
        "--verify",
    ])
    .success();
    apr.run(&["convert", &g, "plain.apr"]).success();
    let size = |f: &str| fs::metadata(apr.dir().join(f)).unwrap().len();
    assert!(
        size("web.apr") < size("plain.apr"),
        "{} vs {}",
        size("web.apr"),
        size("plain.apr")
    );
    let run = apr.run(&["inspect", "web.apr"]);
    assert!(run.stdout.contains("zstd compressed"), "{}", run.stdout);
}

#[test]
fn issue_3_hf_folder_and_side_files() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::Q8_0);
    apr.run(&[
        "convert",
        &g,
        "hf/",
        "--max-shard-size",
        "400KB",
        "--verify",
    ])
    .success();
    let dir = apr.dir().join("hf");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors.index.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["rms_norm_eps"], 1e-6);
    let tok: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tok["added_tokens"].as_array().unwrap().len(), 3);
    // --hf-dir writes the side files next to a single-file output.
    apr.run(&["convert", &g, "one.safetensors", "--hf-dir", "side"])
        .success();
    assert!(apr.dir().join("side/tokenizer_config.json").exists());
}

#[test]
fn issue_3_check_and_validate() {
    let apr = Apr::new();
    let g = tiny_gguf(&apr, "m.gguf", GgmlType::Q6_K);
    apr.run(&["convert", &g, "m.safetensors"]).success();
    apr.run(&["convert", &g, "m.apr", "--compression", "lz4"])
        .success();
    for f in ["m.gguf", "m.safetensors", "m.apr"] {
        let run = apr.run(&["check", f]);
        run.success();
        assert_eq!(
            run.stdout.matches("PASS").count() + run.stdout.matches("SKIP").count(),
            10,
            "{}",
            run.stdout
        );
        let run = apr.run(&["check", f, "--json"]);
        run.success();
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let stages = v["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 10);
        assert_eq!(stages[9]["status"], "PASS", "{}", run.stdout);
        let run = apr.run(&["validate", f]);
        run.success();
        assert!(run.stdout.contains("0 failed"), "{}", run.stdout);
    }
    // A NaN in a norm: validate fails, naming the tensor.
    let mut bytes = fs::read(apr.dir().join("m.gguf")).unwrap();
    let model = apr_core::format::model::ModelFile::parse(&bytes).unwrap();
    let t = model.tensor("output_norm.weight").unwrap();
    let at = t.offset as usize;
    drop(model);
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(apr.dir().join("nan.gguf"), &bytes).unwrap();
    let run = apr.run(&["validate", "nan.gguf"]);
    run.failure();
    assert!(
        run.stdout.contains("output_norm.weight") && run.stdout.contains("1 NaN"),
        "{}",
        run.stdout
    );
    // A SafeTensors file without apr metadata fails the metadata stages, and check says so.
    let plain = hostile::valid_safetensors();
    let n = u64::from_le_bytes(plain[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&plain[8..8 + n]).unwrap();
    let mut header = header.as_object().unwrap().clone();
    header.remove("__metadata__");
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&plain[8 + n..]);
    fs::write(apr.dir().join("bare.safetensors"), out).unwrap();
    let run = apr.run(&["check", "bare.safetensors"]);
    run.failure();
    assert!(
        run.stdout.contains("metadata completeness       FAIL"),
        "{}",
        run.stdout
    );
}

#[test]
fn issue_3_hostile_files_exit_1_everywhere() {
    let apr = Apr::new();
    let mut cases = hostile::apr_cases();
    cases.extend(
        hostile::safetensors_cases()
            .into_iter()
            .map(|(n, b)| (format!("st-{n}"), b)),
    );
    for (name, bytes) in &cases {
        let ext = if name.starts_with("st-") {
            "safetensors"
        } else {
            "apr"
        };
        let file = format!("{name}.{ext}");
        fs::write(apr.dir().join(&file), bytes).unwrap();
        apr.run(&["convert", &file, "out.gguf"]).failure();
        apr.run(&["check", &file]).failure();
        if !name.contains("lz4-frame") {
            apr.run(&["inspect", &file]).failure();
        }
        assert!(!apr.dir().join("out.gguf").exists(), "{name}: no output");
    }
    let names: Vec<String> = cases
        .iter()
        .map(|(n, _)| {
            format!(
                "{n}.{}",
                if n.starts_with("st-") {
                    "safetensors"
                } else {
                    "apr"
                }
            )
        })
        .collect();
    let keep: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        leftovers(apr.dir(), &keep),
        Vec::<String>::new(),
        "no temporary files left"
    );
}

/// Ctrl-C in the middle of a conversion leaves neither the output nor a temporary file.
#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_3_ctrl_c_leaves_no_partial_output() {
    let apr = Apr::new();
    let model = common::real_model();
    let mut child = common::apr_in(apr.dir())
        .args(["rosetta", "convert"])
        .arg(&model)
        .arg("big.safetensors")
        .spawn()
        .unwrap();
    // Wait until the temporary file exists and is growing, then interrupt.
    let start = std::time::Instant::now();
    loop {
        let tmp = leftovers(apr.dir(), &[]);
        if tmp.iter().any(|n| n.starts_with(".apr-tmp-")) && start.elapsed().as_millis() > 500 {
            break;
        }
        assert!(start.elapsed().as_secs() < 60, "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C");
    assert_eq!(
        leftovers(apr.dir(), &[]),
        Vec::<String>::new(),
        "nothing left behind"
    );
}

/// The seed's Part 1 commands, as written, on the real model.
#[test]
#[ignore = "needs the real model (scripts/fetch_model.py); CI runs it"]
fn issue_3_seed_part_1_commands_on_the_real_model() {
    let apr = Apr::new();
    fs::create_dir_all(apr.dir().join("models")).unwrap();
    std::os::unix::fs::symlink(
        common::real_model(),
        apr.dir().join("models/qwen2.5-coder-0.5b.gguf"),
    )
    .unwrap();
    let seed: [&[&str]; 11] = [
        &[
            "rosetta",
            "convert",
            "models/qwen2.5-coder-0.5b.gguf",
            "models/qwen2.5-coder-0.5b.safetensors",
            "--verify",
        ],
        &["inspect", "models/qwen2.5-coder-0.5b.safetensors"],
        &[
            "rosetta",
            "convert",
            "models/qwen2.5-coder-0.5b.safetensors",
            "models/qwen2.5-coder-0.5b.apr",
            "--compression",
            "lz4",
            "--verify",
        ],
        &[
            "rosetta",
            "convert",
            "models/qwen2.5-coder-0.5b.gguf",
            "models/qwen2.5-coder-0.5b-direct.apr",
            "--verify",
        ],
        &["inspect", "models/qwen2.5-coder-0.5b.apr", "--json"],
        &["check", "models/qwen2.5-coder-0.5b.gguf"],
        &["check", "models/qwen2.5-coder-0.5b.safetensors"],
        &["check", "models/qwen2.5-coder-0.5b.apr"],
        &["validate", "models/qwen2.5-coder-0.5b-direct.apr"],
        &["check", "models/qwen2.5-coder-0.5b-direct.apr", "--json"],
        // Zstd, its big tensors compressed on every core, read back bit for bit.
        &[
            "rosetta",
            "convert",
            "models/qwen2.5-coder-0.5b.gguf",
            "models/qwen2.5-coder-0.5b-wasm.apr",
            "--target",
            "wasm",
            "--verify",
        ],
    ];
    let mut outputs = Vec::new();
    for args in seed {
        let run = apr.run(args);
        run.success();
        outputs.push(run.stdout.clone());
    }
    assert!(
        outputs[0].contains("Verify: PASS (291 tensors in, 291 out; 0 problems)"),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].contains("Tensors:         291") && outputs[1].contains("151,936 tokens"),
        "{}",
        outputs[1]
    );
    let info: serde_json::Value = serde_json::from_str(&outputs[4]).unwrap();
    assert_eq!(info["tensor_count"], 291);
    assert_eq!(info["vocab_size"], 151936);
    assert_eq!(info["architecture"], "qwen2");
    assert_eq!(info["compression"], "lz4");
    let st = fs::metadata(apr.dir().join("models/qwen2.5-coder-0.5b.safetensors"))
        .unwrap()
        .len();
    assert_eq!(st, 2_525_432_832, "F32 weights plus a header");
    assert_eq!(
        info["file_size"],
        fs::metadata(apr.dir().join("models/qwen2.5-coder-0.5b.apr"))
            .unwrap()
            .len()
    );
    // Direct GGUF -> APR keeps every quant block: the same tensor bytes as the GGUF.
    let direct = fs::metadata(apr.dir().join("models/qwen2.5-coder-0.5b-direct.apr"))
        .unwrap()
        .len();
    assert!(direct < common::REAL_MODEL_SIZE, "{direct}");
    assert!(
        outputs[10].contains("Verify: PASS (291 tensors in, 291 out; 0 problems)"),
        "{}",
        outputs[10]
    );
}
