//! Issues 5 and 9 through the `apr` binary: `apr showcase` (with its scaling study), `apr profile`,
//! `apr report` and
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

/// `apr report` on what showcase, profile and trace measured for two formats of one tiny
/// model: every section, every measured cell filled, the charts beside it, and the
/// recommendations naming the measured leader.
#[test]
fn issue_9_report_is_written_from_the_measurements() {
    let apr = Apr::new();
    let gguf = tiny(&apr, "m.gguf", GgmlType::Q8_0);
    apr.run(&["rosetta", "convert", &gguf, "m.apr", "--compression", "lz4"])
        .success();
    for (model, name) in [(gguf.as_str(), "gguf"), ("m.apr", "apr")] {
        apr.run(&[
            "showcase",
            model,
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--output",
            &format!("benchmarks/{name}-benchmark.json"),
        ])
        .success();
        let profile = apr.run(&[
            "profile",
            model,
            "--prompt",
            "Hello",
            "--max-tokens",
            "4",
            "--iterations",
            "3",
            "--json",
        ]);
        profile.success();
        fs::write(
            apr.dir().join(format!("benchmarks/{name}-profile.json")),
            &profile.stdout,
        )
        .unwrap();
        apr.run(&[
            "trace",
            model,
            "-p",
            "Test",
            "--trace-output",
            &format!("benchmarks/{name}-trace.json"),
            "--memory-profile",
        ])
        .success();
    }
    let out = apr.run(&["report", "benchmarks", "-o", "out/report.md"]);
    out.success();
    let md = fs::read_to_string(apr.dir().join("out/report.md")).unwrap();
    for section in [
        "## Executive Summary",
        "## Methodology",
        "## Results Table",
        "## Format Recommendations",
        "## Lessons Learned",
        "| Metric | GGUF (Q8_0) | APR (Q8_0, LZ4) |",
    ] {
        assert!(md.contains(section), "{section:?} in\n{md}");
    }
    // Everything was measured, so only the introduction's explanation says "not measured".
    assert_eq!(md.matches("not measured").count(), 1, "{md}");
    let row = |name: &str| -> Vec<String> {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| **{name}**")))
            .unwrap_or_else(|| panic!("no {name} row in\n{md}"));
        line.split('|')
            .skip(2)
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    for name in [
        "File Size",
        "Throughput",
        "P50 Latency",
        "P99 Latency",
        "Peak Memory",
        "First Token",
    ] {
        let cells = row(name);
        assert_eq!(cells.len(), 2, "{name}: {cells:?}");
        for cell in &cells {
            assert!(
                cell.starts_with(|c: char| c.is_ascii_digit()),
                "{name}: {cell}"
            );
        }
    }
    // The file sizes are the files' own.
    let size = |f: &str| fs::metadata(apr.dir().join(f)).unwrap().len() as f64 / 1048576.0;
    assert_eq!(
        row("File Size"),
        [
            format!("{:.1} MiB", size(&gguf)),
            format!("{:.1} MiB", size("m.apr"))
        ]
    );
    // The recommendation for throughput goes to the format the numbers say decoded faster.
    let decode = |f: &str| {
        json(&apr, &format!("benchmarks/{f}-benchmark.json"))["decode_tokens_per_s"]["median"]
            .as_f64()
            .unwrap()
    };
    let (g, a) = (decode("gguf"), decode("apr"));
    if (g - a).abs() > 0.02 * g.min(a) {
        let leader = if g > a {
            "GGUF (Q8_0)"
        } else {
            "APR (Q8_0, LZ4)"
        };
        let line = md
            .lines()
            .find(|l| l.contains("the highest decode throughput ("))
            .unwrap();
        assert!(line.starts_with(&format!("- **{leader}**")), "{line}");
    }
    // Both formats chose the same first token, and the report says so.
    assert!(
        md.contains("All 2 traced formats chose the same first token after \"Test\""),
        "{md}"
    );
    for chart in ["throughput", "latency", "memory"] {
        let svg = fs::read_to_string(apr.dir().join(format!("out/report-{chart}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
        assert!(
            md.contains(&format!("](report-{chart}.svg)")),
            "{chart} linked"
        );
    }

    // A folder without reports, and a broken one, are clear errors that write nothing.
    fs::create_dir(apr.dir().join("empty")).unwrap();
    apr.run(&["report", "empty", "-o", "empty/report.md"])
        .failure();
    assert!(!apr.dir().join("empty/report.md").exists());
    fs::write(apr.dir().join("benchmarks/zz.json"), "{\"schema\": ").unwrap();
    let out = apr.run(&["report", "benchmarks", "-o", "out/again.md"]);
    out.failure();
    assert!(
        out.stderr.contains("zz.json is not valid JSON"),
        "{}",
        out.stderr
    );
    assert!(!apr.dir().join("out/again.md").exists());
}
