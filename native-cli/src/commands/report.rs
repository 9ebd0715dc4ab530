//! `apr report BENCH_DIR -o report.md`: the capstone's benchmark report, written from what
//! `apr showcase --output`, `apr profile --json` and `apr trace --memory-profile` measured.
//!
//! Every `.json` file in BENCH_DIR is read and sorted by its `schema` and its model's format.
//! The report has the seed's sections (Executive Summary, Methodology, Results Table, Format
//! Recommendations, Lessons Learned) and SVG charts beside it. Every number comes from a file;
//! a value no file holds reads "not measured", and a sentence whose numbers are missing is left
//! out rather than guessed.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use apr_core::format::Format;
use serde_json::Value;

use crate::args::ReportArgs;
use crate::atomic;
use crate::chart::{self, Series};
use crate::commands::showcase::{self, SweepPoint};

/// Two measurements closer than this (relative) are a tie: runs vary more than that.
const TIE: f64 = 0.02;

/// Larger files are not benchmark reports.
const MAX_JSON_BYTES: u64 = 64 << 20;

const SHOWCASE: &str = "apr-showcase/1";
const PROFILE: &str = "apr-profile/1";
const TRACE: &str = "apr.trace.v1";

/// What was measured for one model format.
#[derive(Debug, Default)]
struct Measured {
    format: String,
    showcase: Option<Value>,
    profile: Option<Value>,
    trace: Option<Value>,
}

impl Measured {
    /// `GGUF (Q4_K_M)`, `APR (F32, LZ4)`: the format with what the showcase saw inside it.
    fn label(&self) -> String {
        let model = self.showcase.as_ref().map(|s| &s["model"]);
        let mut inside = Vec::new();
        if let Some(q) = model.and_then(|m| m["quantization"].as_str()) {
            inside.push(q.to_string());
        }
        if let Some(c) = model.and_then(|m| m["compression"].as_str())
            && c != "none"
        {
            inside.push(c.to_uppercase());
        }
        if inside.is_empty() {
            self.format.clone()
        } else {
            format!("{} ({})", self.format, inside.join(", "))
        }
    }

    fn file_bytes(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/model/file_bytes")
            .or_else(|| num(self.profile.as_ref(), "/file_bytes"))
    }
    fn decode(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/decode_tokens_per_s/median")
    }
    fn prefill(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/prefill_tokens_per_s/median")
    }
    fn ttft(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/ttft_ms/median")
    }
    fn load_warm(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/load/warm_ms")
    }
    fn load_cold(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/load/cold_ms")
    }
    fn peak_rss(&self) -> Option<f64> {
        num(self.showcase.as_ref(), "/peak_rss_bytes")
            .or_else(|| num(self.trace.as_ref(), "/memory/peak_rss_bytes"))
    }
    fn latency(&self, p: &str) -> Option<f64> {
        num(self.profile.as_ref(), &format!("/request_ms/{p}"))
    }
    fn per_token(&self, p: &str) -> Option<f64> {
        num(self.profile.as_ref(), &format!("/per_token_ms/{p}"))
    }
    fn argmax(&self) -> Option<(u64, String)> {
        let first = &self.trace.as_ref()?["first_token"];
        Some((
            first["argmax"].as_u64()?,
            first["token"].as_str().unwrap_or_default().to_string(),
        ))
    }
}

/// The number at JSON pointer `at`, when the file and the value are there.
fn num(doc: Option<&Value>, at: &str) -> Option<f64> {
    doc?.pointer(at)?.as_f64().filter(|v| v.is_finite())
}

/// A recorded setting as text, or "not recorded".
fn field(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "not recorded".into(),
    }
}

fn text<'a>(doc: Option<&'a Value>, at: &str) -> Option<&'a str> {
    doc?.pointer(at)?.as_str()
}

/// The format a file was measured on: its own field, else its model's extension.
fn format_of(doc: &Value, schema: &str) -> Option<String> {
    let field = match schema {
        SHOWCASE => doc.pointer("/model/format"),
        _ => doc.get("format"),
    };
    if let Some(f) = field.and_then(Value::as_str) {
        return Some(f.to_string());
    }
    let model = doc.get("model").and_then(Value::as_str)?;
    let ext = Path::new(model).extension()?.to_str()?;
    Some(Format::from_extension(ext)?.name().to_string())
}

/// Every measurement in `dir`, by format: GGUF, SafeTensors and APR first, in that order.
fn collect(dir: &Path) -> Result<Vec<Measured>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the benchmark folder {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .collect();
    paths.sort();
    let mut found: Vec<Measured> = Vec::new();
    let mut sources: Vec<(String, &'static str, PathBuf)> = Vec::new();
    for path in paths {
        let size = std::fs::metadata(&path)?.len();
        if size > MAX_JSON_BYTES {
            bail!(
                "{} is {size} bytes: too large for a benchmark report",
                path.display()
            );
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let doc: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let schema = doc.get("schema").and_then(Value::as_str).unwrap_or("");
        let kind = match schema {
            SHOWCASE => "showcase",
            PROFILE => "profile",
            TRACE => "trace",
            _ => {
                eprintln!(
                    "apr: skipping {}: not an apr showcase, profile or trace report",
                    path.display()
                );
                continue;
            }
        };
        let Some(format) = format_of(&doc, schema) else {
            bail!(
                "{}: cannot tell which model format it measured",
                path.display()
            );
        };
        if let Some((_, _, first)) = sources.iter().find(|(f, k, _)| *f == format && *k == kind) {
            bail!(
                "two {kind} reports for {format}: {} and {}; keep one per format",
                first.display(),
                path.display()
            );
        }
        sources.push((format.clone(), kind, path));
        let at = match found.iter().position(|m| m.format == format) {
            Some(i) => i,
            None => {
                found.push(Measured {
                    format: format.clone(),
                    ..Measured::default()
                });
                found.len() - 1
            }
        };
        let slot = match kind {
            "showcase" => &mut found[at].showcase,
            "profile" => &mut found[at].profile,
            _ => &mut found[at].trace,
        };
        *slot = Some(doc);
    }
    if found.is_empty() {
        bail!(
            "{} holds no apr showcase, profile or trace JSON: run `apr showcase --output`, `apr profile --json` or `apr trace` first",
            dir.display()
        );
    }
    let rank = |f: &str| {
        [Format::Gguf, Format::Safetensors, Format::Apr]
            .iter()
            .position(|k| k.name() == f)
            .unwrap_or(3)
    };
    found.sort_by(|a, b| {
        rank(&a.format)
            .cmp(&rank(&b.format))
            .then(a.format.cmp(&b.format))
    });
    Ok(found)
}

fn mib(bytes: f64) -> String {
    let mib = bytes / f64::from(1 << 20);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn or_not(v: Option<String>) -> String {
    v.unwrap_or_else(|| "not measured".into())
}

/// The format with the smallest (`Ordering::Less`) or largest value of `f`, and the value.
fn best(
    all: &[Measured],
    f: impl Fn(&Measured) -> Option<f64>,
    want: Ordering,
) -> Option<(&Measured, f64)> {
    all.iter()
        .filter_map(|m| f(m).map(|v| (m, v)))
        .reduce(|a, b| if b.1.total_cmp(&a.1) == want { b } else { a })
}

/// A ratio as "2.3x".
fn times(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b)
}

/// The charts, as (file name, title, SVG).
fn charts(all: &[Measured], stem: &str) -> Vec<(String, String, String)> {
    let groups: Vec<String> = all.iter().map(Measured::label).collect();
    let series = |name, f: &dyn Fn(&Measured) -> Option<f64>| Series {
        name,
        values: all.iter().map(f).collect(),
    };
    let mut out = Vec::new();
    let title = "Throughput per format (median of the timed runs)";
    out.push((
        format!("{stem}-throughput.svg"),
        title.to_string(),
        chart::bars(
            title,
            "tokens/s",
            &groups,
            &[
                series("decode", &Measured::decode),
                series("prefill", &Measured::prefill),
            ],
            1,
        ),
    ));
    let title = "Request latency per format (apr profile)";
    out.push((
        format!("{stem}-latency.svg"),
        title.to_string(),
        chart::bars(
            title,
            "ms",
            &groups,
            &[
                series("P50", &|m| m.latency("p50")),
                series("P95", &|m| m.latency("p95")),
                series("P99", &|m| m.latency("p99")),
            ],
            0,
        ),
    ));
    let title = "Memory per format";
    let in_mib = |v: Option<f64>| v.map(|b| b / f64::from(1 << 20));
    out.push((
        format!("{stem}-memory.svg"),
        title.to_string(),
        chart::bars(
            title,
            "MiB",
            &groups,
            &[
                series("peak resident memory", &|m| in_mib(m.peak_rss())),
                series("file size", &|m| in_mib(m.file_bytes())),
            ],
            0,
        ),
    ));
    for (m, label) in all.iter().zip(&groups) {
        let Some(sweep) = m.showcase.as_ref().and_then(|s| s.get("sweep")) else {
            continue;
        };
        let Ok(points) = serde_json::from_value::<Vec<SweepPoint>>(sweep.clone()) else {
            continue;
        };
        if points.is_empty() {
            continue;
        }
        let title = format!("{label}: decode speed against tokens in the KV cache");
        let svg = showcase::sweep_svg(&points, &title);
        out.push((
            format!("{stem}-scaling-{}.svg", m.format.to_lowercase()),
            title,
            svg,
        ));
    }
    out
}

pub(crate) fn run(args: ReportArgs) -> Result<()> {
    let all = collect(&args.bench_dir)?;
    let stem = args
        .output
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("report")
        .to_string();
    let dir = atomic::parent_dir(&args.output)?;
    let charts = charts(&all, &stem);
    let adapters = gpu_adapters();
    let md = markdown(&all, &charts, &args.bench_dir, &adapters);
    for (name, _, svg) in &charts {
        atomic::write(&dir.join(name), svg.as_bytes())?;
    }
    atomic::write(&args.output, md.as_bytes())?;
    eprintln!(
        "apr: wrote {} and {} charts from {} format{} measured in {}",
        args.output.display(),
        charts.len(),
        all.len(),
        if all.len() == 1 { "" } else { "s" },
        args.bench_dir.display()
    );
    Ok(())
}

/// The GPU adapters of the machine writing the report.
fn gpu_adapters() -> Vec<String> {
    apr_core::backend::gpu::adapters()
        .iter()
        .map(|a| a.describe())
        .collect()
}

fn markdown(
    all: &[Measured],
    charts: &[(String, String, String)],
    bench_dir: &Path,
    adapters: &[String],
) -> String {
    let mut s = String::new();
    let name = all
        .iter()
        .find_map(|m| text(m.showcase.as_ref(), "/model/path"))
        .and_then(|p| Path::new(p).file_stem()?.to_str())
        .unwrap_or("the model");
    let _ = writeln!(s, "# Benchmark report: {name} in {}\n", formats(all));
    let _ = writeln!(
        s,
        "Written by `apr report` from the measurements in `{}`. Every number below was measured; \
         a value that was not reads \"not measured\".\n",
        bench_dir.display()
    );
    summary(&mut s, all);
    methodology(&mut s, all, adapters);
    results(&mut s, all, charts);
    recommendations(&mut s, all);
    lessons(&mut s, all);
    s
}

fn formats(all: &[Measured]) -> String {
    let names: Vec<&str> = all.iter().map(|m| m.format.as_str()).collect();
    match names.as_slice() {
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        [] => String::new(),
    }
}

fn summary(s: &mut String, all: &[Measured]) {
    let _ = writeln!(s, "## Executive Summary\n");
    let mut said = Vec::new();
    let measured = |f: fn(&Measured) -> Option<f64>| all.iter().filter(|m| f(m).is_some()).count();
    if let (Some((fast, hi)), Some((slow, lo))) = (
        best(all, Measured::decode, Ordering::Greater),
        best(all, Measured::decode, Ordering::Less),
    ) {
        if measured(Measured::decode) == 1 {
            said.push(format!("{} decoded at {hi:.1} tokens/s.", fast.label()));
        } else if hi - lo < TIE * lo {
            said.push(format!(
                "The formats decoded at the same speed within {:.0}% ({lo:.1} to {hi:.1} tokens/s).",
                TIE * 100.0
            ));
        } else {
            said.push(format!(
                "{} decoded fastest at {hi:.1} tokens/s, {} the speed of {} ({lo:.1} tokens/s).",
                fast.label(),
                times(hi, lo),
                slow.label()
            ));
        }
    }
    if let (Some((small, lo)), Some((large, hi))) = (
        best(all, Measured::file_bytes, Ordering::Less),
        best(all, Measured::file_bytes, Ordering::Greater),
    ) && measured(Measured::file_bytes) > 1
    {
        if hi - lo < TIE * lo {
            said.push(format!(
                "The files are the same size within {:.0}% ({} to {}).",
                TIE * 100.0,
                mib(lo),
                mib(hi)
            ));
        } else {
            said.push(format!(
                "{} is the smallest file at {}, {} smaller than {} ({}).",
                small.label(),
                mib(lo),
                times(hi, lo),
                large.label(),
                mib(hi)
            ));
        }
    }
    if let Some(line) = agreement(all) {
        said.push(line);
    }
    if said.is_empty() {
        said.push("Neither throughput nor file sizes were measured.".into());
    }
    let _ = writeln!(s, "{}\n", said.join(" "));
}

/// Whether the traced formats chose the same first token.
fn agreement(all: &[Measured]) -> Option<String> {
    let traced: Vec<(&Measured, (u64, String))> =
        all.iter().filter_map(|m| Some((m, m.argmax()?))).collect();
    if traced.len() < 2 {
        return None;
    }
    let prompt = text(traced[0].0.trace.as_ref(), "/prompt").unwrap_or_default();
    let (id, token) = &traced[0].1;
    if traced.iter().all(|(_, (i, _))| i == id) {
        Some(format!(
            "All {} traced formats chose the same first token after {prompt:?}: {id} ({token:?}).",
            traced.len()
        ))
    } else {
        let each: Vec<String> = traced
            .iter()
            .map(|(m, (i, t))| format!("{} {i} ({t:?})", m.format))
            .collect();
        Some(format!(
            "The traced formats chose different first tokens after {prompt:?}: {}.",
            each.join(", ")
        ))
    }
}

fn methodology(s: &mut String, all: &[Measured], adapters: &[String]) {
    let _ = writeln!(s, "## Methodology\n");
    let docs: Vec<&Value> = all
        .iter()
        .flat_map(|m| [m.showcase.as_ref(), m.profile.as_ref()])
        .flatten()
        .collect();
    let first = all.iter().find_map(|m| m.showcase.as_ref());
    let sys = |at: &str| text(first, &format!("/system/{at}"));
    let _ = writeln!(s, "**Hardware** (as `apr showcase` recorded it):\n");
    let _ = writeln!(s, "- CPU: {}", or_not(sys("cpu").map(str::to_string)));
    let _ = writeln!(
        s,
        "- Physical cores: {}",
        or_not(num(first, "/system/physical_cores").map(|v| format!("{v:.0}")))
    );
    let _ = writeln!(
        s,
        "- Memory: {}",
        or_not(num(first, "/system/memory_bytes").map(mib))
    );
    let backends: Vec<String> = docs
        .iter()
        .map(
            |d| match d.pointer("/system/gpu").or_else(|| d.get("gpu")) {
                Some(g) if !g.is_null() => format!(
                    "GPU {} ({}, {})",
                    g["name"].as_str().unwrap_or("?"),
                    g["backend"].as_str().unwrap_or("?"),
                    g["device_type"].as_str().unwrap_or("?")
                ),
                _ => {
                    let at = |k: &str| {
                        d.pointer(&format!("/system/{k}"))
                            .or_else(|| d.get(k))
                            .cloned()
                            .unwrap_or(Value::Null)
                    };
                    format!(
                        "CPU, {} threads, {} kernels",
                        at("threads"),
                        at("simd").as_str().unwrap_or("?")
                    )
                }
            },
        )
        .collect();
    let mut unique = backends.clone();
    unique.sort();
    unique.dedup();
    let _ = writeln!(
        s,
        "- Ran on: {}",
        if unique.is_empty() {
            "not measured".to_string()
        } else {
            unique.join("; ")
        }
    );
    let _ = writeln!(
        s,
        "- GPU adapters on the machine that wrote this report: {}\n",
        if adapters.is_empty() {
            "none".to_string()
        } else {
            adapters.join("; ")
        }
    );
    let _ = writeln!(s, "**Software:**\n");
    let _ = writeln!(
        s,
        "- apr {} (git {}), {} {}",
        sys("apr_version").unwrap_or("?"),
        sys("git_revision").unwrap_or("?"),
        sys("os").unwrap_or("?"),
        sys("arch").unwrap_or("?")
    );
    let mut revisions: Vec<&str> = docs
        .iter()
        .filter_map(|d| {
            d.pointer("/system/git_revision")
                .or_else(|| d.get("git_revision"))
                .and_then(Value::as_str)
        })
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    if revisions.len() > 1 {
        let _ = writeln!(
            s,
            "- The files come from {} different builds: {}",
            revisions.len(),
            revisions.join(", ")
        );
    }
    let _ = writeln!(s, "\n**Test conditions:**\n");
    if let Some(sc) = first {
        let st = |k: &str| field(&sc["settings"][k]);
        let _ = writeln!(
            s,
            "- Throughput (`apr showcase`): {} warm-up and {} timed runs per format, each a {}-token prompt and exactly {} generated tokens ({}), from an empty {} KV cache of {} positions. Load time is one measurement of mapping, parsing and building the model: warm (the file in the page cache) and cold (its pages dropped first).",
            st("warmup"),
            st("iterations"),
            st("prompt_tokens"),
            st("gen_tokens"),
            st("sampling"),
            st("kv_type"),
            st("ctx_size")
        );
    } else {
        let _ = writeln!(s, "- Throughput: not measured.");
    }
    if let Some(p) = all.iter().find_map(|m| m.profile.as_ref()) {
        let _ = writeln!(
            s,
            "- Latency (`apr profile`): {} warm-up and {} timed requests per format, each a {}-token prompt and exactly {} greedy tokens from an empty cache; percentiles are nearest-rank.",
            field(&p["warmup"]),
            field(&p["iterations"]),
            field(&p["prompt_tokens"]),
            field(&p["max_tokens"])
        );
    } else {
        let _ = writeln!(s, "- Latency: not measured.");
    }
    if let Some(t) = all.iter().find_map(|m| m.trace.as_ref()) {
        let _ = writeln!(
            s,
            "- First token and memory (`apr trace`): one forward pass over {:?}.",
            t["prompt"].as_str().unwrap_or_default()
        );
    }
    let _ = writeln!(s);
}

fn results(s: &mut String, all: &[Measured], charts: &[(String, String, String)]) {
    let _ = writeln!(s, "## Results Table\n");
    let mut header = String::from("| Metric |");
    let mut rule = String::from("|---|");
    for m in all {
        let _ = write!(header, " {} |", m.label());
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{header}\n{rule}");
    type Cell = Box<dyn Fn(&Measured) -> Option<String>>;
    let rows: Vec<(&str, Cell)> = vec![
        ("**File Size**", Box::new(|m| m.file_bytes().map(mib))),
        (
            "**Load Time** (warm / cold)",
            Box::new(|m| {
                let warm = m.load_warm()?;
                Some(match m.load_cold() {
                    Some(cold) => format!("{} / {}", ms(warm), ms(cold)),
                    None => format!("{} / not measured", ms(warm)),
                })
            }),
        ),
        (
            "**Throughput** (decode, median)",
            Box::new(|m| m.decode().map(|v| format!("{v:.1} tok/s"))),
        ),
        (
            "**Prefill** (median)",
            Box::new(|m| m.prefill().map(|v| format!("{v:.1} tok/s"))),
        ),
        (
            "**P50 Latency** (request)",
            Box::new(|m| m.latency("p50").map(ms)),
        ),
        (
            "**P99 Latency** (request)",
            Box::new(|m| m.latency("p99").map(ms)),
        ),
        (
            "**Per-token latency** (P50 / P99)",
            Box::new(|m| {
                Some(format!(
                    "{} / {}",
                    ms(m.per_token("p50")?),
                    ms(m.per_token("p99")?)
                ))
            }),
        ),
        (
            "**Peak Memory** (resident)",
            Box::new(|m| m.peak_rss().map(mib)),
        ),
        (
            "**First Token** (median time)",
            Box::new(|m| m.ttft().map(ms)),
        ),
        (
            "**First token** (trace argmax)",
            Box::new(|m| {
                m.argmax()
                    .map(|(id, t)| format!("{id} `{}`", t.escape_debug()))
            }),
        ),
    ];
    for (name, cell) in &rows {
        let _ = write!(s, "| {name} |");
        for m in all {
            let _ = write!(s, " {} |", or_not(cell(m)));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s);
    for (file, title, _) in charts {
        let _ = writeln!(s, "![{title}]({file})\n");
    }
}

/// One way to rank the formats.
struct Criterion {
    /// What leading on it means ("the smallest file").
    what: &'static str,
    /// The uses that want it.
    serves: &'static str,
    /// A format's value.
    value: fn(&Measured) -> Option<f64>,
    /// Greater or Less is better.
    want: Ordering,
    /// The value as text.
    show: fn(f64) -> String,
}

fn recommendations(s: &mut String, all: &[Measured]) {
    let _ = writeln!(s, "## Format Recommendations\n");
    let criteria = [
        Criterion {
            what: "the highest decode throughput",
            serves: "servers and batch jobs",
            value: Measured::decode,
            want: Ordering::Greater,
            show: |v| format!("{v:.1} tok/s"),
        },
        Criterion {
            what: "the fastest first token",
            serves: "interactive chat",
            value: Measured::ttft,
            want: Ordering::Less,
            show: ms,
        },
        Criterion {
            what: "the smallest file",
            serves: "downloads, the browser and edge devices",
            value: Measured::file_bytes,
            want: Ordering::Less,
            show: mib,
        },
        Criterion {
            what: "the least resident memory",
            serves: "small machines",
            value: Measured::peak_rss,
            want: Ordering::Less,
            show: mib,
        },
        Criterion {
            what: "the fastest load",
            serves: "short-lived command-line runs",
            value: Measured::load_warm,
            want: Ordering::Less,
            show: ms,
        },
    ];
    let mut any = false;
    for m in all {
        let mut wins = Vec::new();
        let mut uses = Vec::new();
        let mut behind = Vec::new();
        for Criterion {
            what,
            serves,
            value: f,
            want,
            show,
        } in &criteria
        {
            let (Some(v), Some((top, tv))) = (f(m), best(all, *f, *want)) else {
                continue;
            };
            let others: Vec<f64> = all
                .iter()
                .filter(|o| o.format != m.format)
                .filter_map(f)
                .collect();
            if others.is_empty() {
                continue;
            }
            if std::ptr::eq(top, m) {
                let runner = others
                    .iter()
                    .copied()
                    .reduce(|a, b| if b.total_cmp(&a) == *want { b } else { a })
                    .unwrap_or(tv);
                if (v - runner).abs() < TIE * runner.abs() {
                    behind.push(format!(
                        "{what}: {}, within {:.0}% of the next best ({})",
                        show(v),
                        TIE * 100.0,
                        show(runner)
                    ));
                } else {
                    wins.push(format!(
                        "{what} ({}, against {} for the next best)",
                        show(v),
                        show(runner)
                    ));
                    uses.push(*serves);
                }
            } else {
                behind.push(format!(
                    "{what}: {} against {}'s {}",
                    show(v),
                    top.format,
                    show(tv)
                ));
            }
        }
        if wins.is_empty() && behind.is_empty() {
            continue;
        }
        any = true;
        if wins.is_empty() {
            let _ = writeln!(
                s,
                "- **{}** led on none of the measured criteria ({}).",
                m.label(),
                behind.join("; ")
            );
        } else {
            uses.dedup();
            let _ = writeln!(
                s,
                "- **{}** for {}: it had {}.",
                m.label(),
                uses.join(", "),
                wins.join(", ")
            );
        }
    }
    if !any {
        let _ = writeln!(
            s,
            "Not measured: recommendations need at least two formats measured on the same criterion."
        );
    }
    let _ = writeln!(s);
}

fn lessons(s: &mut String, all: &[Measured]) {
    let _ = writeln!(s, "## Lessons Learned\n");
    let mut said = 0;
    let mut say = |s: &mut String, line: String| {
        let _ = writeln!(s, "- {line}");
        said += 1;
    };
    // Decode reads every weight once per token: does the smallest file decode fastest?
    if let (Some((fast, d_fast)), Some((small, b_small))) = (
        best(all, Measured::decode, Ordering::Greater),
        best(all, Measured::file_bytes, Ordering::Less),
    ) && let (Some(d_small), Some(b_fast)) = (small.decode(), fast.file_bytes())
    {
        let (slow, d_slow) = best(all, Measured::decode, Ordering::Less).unwrap_or((fast, d_fast));
        if std::ptr::eq(fast, small) && !std::ptr::eq(fast, slow) && d_fast > d_slow * (1.0 + TIE) {
            let b_slow = slow.file_bytes().unwrap_or(b_fast);
            say(
                s,
                format!(
                    "The smallest file was also the fastest to decode: {} (a {} file) decoded {} as fast as {} (a {} file). A generated token reads every weight once, so fewer bytes per weight mean less to read.",
                    fast.format,
                    mib(b_fast),
                    times(d_fast, d_slow),
                    slow.format,
                    mib(b_slow)
                ),
            );
        } else if !std::ptr::eq(fast, small) && d_fast > d_small * (1.0 + TIE) {
            say(
                s,
                format!(
                    "The smallest file was not the fastest to decode: {} ({}) decoded at {d_small:.1} tokens/s, {} ({}) at {d_fast:.1}; the cost of decoding its weights outweighed the bytes saved.",
                    small.format,
                    mib(b_small),
                    fast.format,
                    mib(b_fast)
                ),
            );
        }
    }
    // Compression: APR against SafeTensors.
    let find = |f: &str| all.iter().find(|m| m.format == f);
    if let (Some(apr), Some(st)) = (find("APR"), find("SafeTensors"))
        && let (Some(a_bytes), Some(s_bytes)) = (apr.file_bytes(), st.file_bytes())
        && let (Some(a_load), Some(s_load)) = (apr.load_warm(), st.load_warm())
    {
        say(
            s,
            format!(
                "{} is {} the size of {} and loads in {} ({} against {}): {}",
                apr.label(),
                times(a_bytes, s_bytes),
                st.label(),
                times(a_load, s_load).replace('x', "x the time"),
                ms(a_load),
                ms(s_load),
                if a_load > s_load * 1.5 {
                    "decompressing at load costs more than reading the larger file saves."
                } else {
                    "the smaller file costs little or nothing at load."
                }
            ),
        );
    }
    // Cold against warm loads.
    let cold: Vec<String> = all
        .iter()
        .filter_map(|m| {
            let (c, w) = (m.load_cold()?, m.load_warm()?);
            Some(format!(
                "{} {} cold against {} warm",
                m.format,
                ms(c),
                ms(w)
            ))
        })
        .collect();
    if !cold.is_empty() {
        say(
            s,
            format!(
                "A load from disk differs from one from the page cache: {}.",
                cold.join("; ")
            ),
        );
    }
    // Run-to-run variation.
    let spread: Vec<String> = all
        .iter()
        .filter_map(|m| {
            let sc = m.showcase.as_ref();
            let (sd, med) = (
                num(sc, "/decode_tokens_per_s/stddev")?,
                num(sc, "/decode_tokens_per_s/median")?,
            );
            Some(format!("{} {:.1}%", m.format, 100.0 * sd / med))
        })
        .collect();
    if !spread.is_empty() {
        say(
            s,
            format!(
                "Repeated runs vary (standard deviation of decode speed over its median: {}), so compare formats measured in the same session, and ratios rather than absolute numbers.",
                spread.join(", ")
            ),
        );
    }
    if let Some(line) = agreement(all) {
        say(s, line);
    }
    if said == 0 {
        let _ = writeln!(
            s,
            "Not measured: no two measurements to draw a lesson from."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn showcase(format: &str, quant: &str, bytes: u64, decode: f64, load: f64) -> Value {
        json!({
            "schema": SHOWCASE,
            "model": {"path": format!("models/m.{}", format.to_lowercase()), "format": format,
                      "file_bytes": bytes, "quantization": quant, "compression": null},
            "system": {"cpu": "Test CPU", "physical_cores": 2, "memory_bytes": 8u64 << 30,
                       "threads": 2, "simd": "avx2", "backend": "cpu", "gpu": null,
                       "apr_version": "0.1.0", "git_revision": "abc", "os": "linux", "arch": "x86_64"},
            "settings": {"iterations": 10, "warmup": 2, "prompt_tokens": 128, "gen_tokens": 64,
                         "ctx_size": 4096, "kv_type": "f16", "sampling": "greedy"},
            "load": {"cold_ms": null, "warm_ms": load},
            "ttft_ms": {"median": 900.0},
            "prefill_tokens_per_s": {"median": 130.0},
            "decode_tokens_per_s": {"median": decode, "stddev": 1.0},
            "peak_rss_bytes": bytes + (50 << 20),
        })
    }

    fn measured(format: &str, quant: &str, bytes: u64, decode: f64, load: f64) -> Measured {
        Measured {
            format: format.into(),
            showcase: Some(showcase(format, quant, bytes, decode, load)),
            ..Measured::default()
        }
    }

    #[test]
    fn the_report_is_derived_from_the_numbers() {
        let all = vec![
            measured("GGUF", "Q4_K_M", 500 << 20, 40.0, 600.0),
            measured("SafeTensors", "F32", 2500 << 20, 16.0, 550.0),
        ];
        let md = markdown(&all, &charts(&all, "report"), Path::new("b"), &[]);
        for part in [
            "## Executive Summary",
            "## Methodology",
            "## Results Table",
            "## Format Recommendations",
            "## Lessons Learned",
            "| Metric | GGUF (Q4_K_M) | SafeTensors (F32) |",
            "GGUF (Q4_K_M) decoded fastest at 40.0 tokens/s, 2.50x the speed of SafeTensors (F32)",
            "- **GGUF (Q4_K_M)** for servers and batch jobs, downloads, the browser and edge devices, small machines",
            "- **SafeTensors (F32)** for short-lived command-line runs: it had the fastest load (550 ms, against 600 ms for the next best).",
            "- CPU: Test CPU",
            "- Memory: 8.00 GiB",
            "![Throughput per format (median of the timed runs)](report-throughput.svg)",
        ] {
            assert!(md.contains(part), "{part:?} in\n{md}");
        }
        // Nothing profiled or traced: those cells say so, and no sentence guesses them.
        assert!(
            md.contains("| **P50 Latency** (request) | not measured | not measured |"),
            "{md}"
        );
        assert!(md.contains("- Latency: not measured."), "{md}");
        assert!(!md.contains("first token after"), "{md}");
    }

    #[test]
    fn a_single_format_recommends_nothing_it_cannot_compare() {
        let all = vec![measured("APR", "F32", 2000 << 20, 15.0, 5000.0)];
        let md = markdown(&all, &charts(&all, "r"), Path::new("b"), &[]);
        assert!(md.contains("APR (F32) decoded at 15.0 tokens/s."), "{md}");
        assert!(
            md.contains("Not measured: recommendations need at least two formats"),
            "{md}"
        );
    }

    #[test]
    fn files_are_sorted_by_format_and_refused_when_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: &Value| {
            std::fs::write(dir.path().join(name), serde_json::to_vec(v).unwrap()).unwrap();
        };
        write("apr.json", &showcase("APR", "F32", 10, 1.0, 1.0));
        write("gguf.json", &showcase("GGUF", "Q4_K_M", 10, 1.0, 1.0));
        write(
            "gguf-profile.json",
            &json!({"schema": PROFILE, "model": "models/m.gguf"}),
        );
        write("other.json", &json!({"hello": 1}));
        std::fs::write(dir.path().join("notes.txt"), "not json").unwrap();
        let all = collect(dir.path()).unwrap();
        let order: Vec<&str> = all.iter().map(|m| m.format.as_str()).collect();
        assert_eq!(order, ["GGUF", "APR"]);
        assert!(all[0].profile.is_some() && all[1].profile.is_none());

        write("again.json", &showcase("GGUF", "Q4_K_M", 10, 1.0, 1.0));
        let err = collect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("two showcase reports for GGUF"), "{err}");
        std::fs::remove_file(dir.path().join("again.json")).unwrap();

        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let err = format!("{:#}", collect(dir.path()).unwrap_err());
        assert!(err.contains("broken.json is not valid JSON"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = collect(empty.path()).unwrap_err().to_string();
        assert!(err.contains("holds no apr showcase"), "{err}");
    }
}
