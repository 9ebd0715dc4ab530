//! Issue 5 through the `apr` binary: `apr showcase` (with its scaling study), `apr profile` and
//! `--kv-type` on tiny generated models. Speed itself is measured by these commands and
//! scripts/bench-vs-llamacpp.sh, never asserted here.

mod common;

use std::fs;

use apr_core::dtype::GgmlType;
use common::{Apr, tiny};
use serde_json::Value;

fn json(apr: &Apr, path: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(apr.dir().join(path)).unwrap()).unwrap()
}

/// Checks a summary block: ordered, and within its runs' range.
fn stats(v: &Value, runs: usize) {
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(f("min") <= f("median") && f("median") <= f("max"), "{v}");
    assert!(f("min") <= f("mean") && f("mean") <= f("max"), "{v}");
    assert!(
        f("p50") <= f("p95") && f("p95") <= f("p99") && f("p99") <= f("max"),
        "{v}"
    );
    assert!(f("stddev") >= 0.0);
    assert_eq!(v["count"].as_u64().unwrap() as usize, runs);
}

#[test]
fn issue_5_showcase_writes_the_documented_report() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q5_0);
    let out = apr.run(&[
        "showcase",
        &m,
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--prompt-tokens",
        "20",
        "--gen-tokens",
        "6",
        "--threads",
        "2",
        "--output",
        "benchmarks/gguf-benchmark.json",
    ]);
    out.success();
    assert!(out.stdout.contains("decode tok/s"), "{}", out.stdout);
    let r = json(&apr, "benchmarks/gguf-benchmark.json");
    assert_eq!(r["schema"], "apr-showcase/1");
    assert_eq!(r["model"]["format"], "GGUF");
    assert_eq!(
        r["model"]["file_bytes"].as_u64().unwrap(),
        fs::metadata(apr.dir().join(&m)).unwrap().len()
    );
    assert_eq!(r["settings"]["iterations"], 3);
    assert_eq!(r["settings"]["warmup"], 1);
    assert_eq!(r["settings"]["prompt_tokens"], 20);
    assert_eq!(r["settings"]["gen_tokens"], 6);
    assert_eq!(r["settings"]["kv_type"], "f16");
    assert_eq!(r["system"]["threads"], 2);
    assert!(!r["system"]["cpu"].as_str().unwrap().is_empty());
    assert!(!r["system"]["simd"].as_str().unwrap().is_empty());
    assert!(!r["system"]["git_revision"].as_str().unwrap().is_empty());
    assert!(r["load"]["warm_ms"].as_f64().unwrap() > 0.0);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["prompt_tokens"], 20);
        assert_eq!(run["tokens"], 6);
        assert!(run["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(run["total_ms"].as_f64().unwrap() >= run["ttft_ms"].as_f64().unwrap());
    }
    for key in ["ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        stats(&r[key], 3);
    }
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(r.get("sweep").is_none());
}

#[test]
fn issue_5_showcase_sweep_writes_csv_and_svg() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q8_0);
    apr.run(&[
        "showcase",
        &m,
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
        "--threads",
        "2",
        "--sweep",
        "--output",
        "s.json",
    ])
    .success();
    let r = json(&apr, "s.json");
    let points = r["sweep"].as_array().unwrap();
    // Four cache depths at 1 and 2 threads.
    assert_eq!(points.len(), 8);
    let csv = fs::read_to_string(apr.dir().join("s.sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "threads,context,decode_tokens_per_s,ms_per_token");
    assert_eq!(lines.len(), 9);
    for (line, depth) in lines[1..].iter().zip([128, 512, 2048, 4096].iter().cycle()) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[1], depth.to_string());
        assert!(cells[2].parse::<f64>().unwrap() > 0.0);
    }
    let svg = fs::read_to_string(apr.dir().join("s.sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
}

#[test]
fn issue_5_profile_reports_percentiles() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q4_K);
    let table = apr.run(&[
        "profile",
        &m,
        "--prompt",
        "Hello",
        "--max-tokens",
        "5",
        "--iterations",
        "4",
    ]);
    table.success();
    for word in ["p50", "p95", "p99", "request", "first token", "per token"] {
        assert!(table.stdout.contains(word), "{word} in {}", table.stdout);
    }
    let out = apr.run(&[
        "profile",
        &m,
        "--prompt",
        "Hello",
        "--max-tokens",
        "5",
        "--iterations",
        "4",
        "--json",
        "--kv-type",
        "f32",
    ]);
    out.success();
    let p: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(p["schema"], "apr-profile/1");
    assert_eq!(p["kv_type"], "f32");
    stats(&p["request_ms"], 4);
    stats(&p["ttft_ms"], 4);
    // Four gaps between five tokens, in each of four requests.
    stats(&p["per_token_ms"], 16);
}

#[test]
fn issue_5_kv_type_selects_the_cache_and_bad_flags_fail() {
    let apr = Apr::new();
    let m = tiny(&apr, "m.gguf", GgmlType::Q8_0);
    let run = |kv: &str| {
        let out = apr.run(&[
            "run",
            &m,
            "-p",
            "the cat",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--ignore-eos",
            "--kv-type",
            kv,
            "--json",
        ]);
        out.success();
        serde_json::from_str::<Value>(out.stdout.trim()).unwrap()
    };
    let (f16, f32) = (run("f16"), run("f32"));
    assert_eq!(f16["generated_tokens"], 6);
    assert_eq!(f32["generated_tokens"], 6);

    let fails = |args: &[&str], why: &str| {
        let out = apr.run(args);
        assert_ne!(out.code, Some(0), "{args:?} succeeded");
        assert!(
            out.stderr.contains(why),
            "{args:?}: expected {why:?} in {}",
            out.stderr
        );
    };
    fails(&["run", &m, "-p", "x", "--kv-type", "f8"], "f8");
    fails(&["showcase", &m, "--iterations", "0"], "iterations");
    fails(&["showcase", &m, "--sweep"], "--output");
    fails(
        &[
            "showcase",
            &m,
            "--prompt-tokens",
            "100",
            "--gen-tokens",
            "20",
            "--ctx-size",
            "64",
        ],
        "do not fit",
    );
    fails(
        &["profile", &m, "--prompt", "x", "--max-tokens", "0"],
        "max-tokens",
    );
    fails(
        &[
            "profile",
            &m,
            "--prompt",
            "x",
            "--max-tokens",
            "100",
            "--ctx-size",
            "16",
        ],
        "do not fit",
    );
    fails(&["profile", &m, "--max-tokens", "3"], "--prompt");
}
