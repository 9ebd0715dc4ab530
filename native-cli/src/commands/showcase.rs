//! `apr showcase MODEL --iterations N --warmup W --output F.json`: the throughput benchmark.
//!
//! Loads the model cold (its pages dropped from the page cache first) and warm, then times
//! `--iterations` greedy generations of `--gen-tokens` tokens after a `--prompt-tokens` prompt,
//! each from an empty cache, and reports time to first token, prompt and decode speed (median,
//! mean, min, max, standard deviation), peak memory and the machine. `--sweep` adds decode
//! speed against cache depth and thread count, as CSV and an SVG chart. The JSON schema is in
//! docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use apr_core::backend::either::Either;
use apr_core::backend::gpu::GpuStats;
use apr_core::generate::Session;
use serde::{Deserialize, Serialize};

use super::bench::{self, Run, Stats};
use super::model;
use crate::args::ShowcaseArgs;
use crate::{atomic, system};

/// Cache depths of the scaling study, in tokens.
const SWEEP_DEPTHS: [usize; 4] = [128, 512, 2048, 4096];
/// Tokens generated at each depth of the scaling study.
const SWEEP_TOKENS: usize = 33;

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    model: ModelInfo,
    system: SystemInfo,
    settings: Settings,
    load: Load,
    ttft_ms: Stats,
    prefill_tokens_per_s: Stats,
    decode_tokens_per_s: Stats,
    peak_rss_bytes: Option<u64>,
    runs: Vec<Run>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sweep: Option<Vec<SweepPoint>>,
    /// On the GPU: what one decode step (one token after an empty cache) costs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_per_token: Option<GpuStats>,
}

/// One greedy decode step's GPU work, counted by the backend: `None` on the CPU.
fn gpu_step(session: &mut Session<'_, model::Engine>, token: u32) -> Result<Option<GpuStats>> {
    let model = session.model_mut();
    let Either::Right(gpu) = model.backend_mut() else {
        return Ok(None);
    };
    gpu.take_stats();
    model.truncate(0);
    model.forward_greedy(&[token])?;
    let Either::Right(gpu) = model.backend_mut() else {
        return Ok(None);
    };
    Ok(Some(gpu.take_stats()))
}

#[derive(Debug, Serialize)]
struct ModelInfo {
    path: String,
    format: String,
    file_bytes: u64,
    /// The whole file's quantization, as `apr inspect` names it (`Q4_K_M`, `F32`).
    quantization: Option<String>,
    /// APR's tensor compression (`none`, `lz4`, `zstd`); absent for other formats.
    compression: Option<String>,
    architecture: String,
    layers: usize,
    parameters: u64,
}

#[derive(Debug, Serialize)]
struct SystemInfo {
    cpu: String,
    os: &'static str,
    arch: &'static str,
    physical_cores: usize,
    /// The machine's memory (`MemTotal`), where the system says.
    memory_bytes: Option<u64>,
    /// Where the model ran: CPU threads and SIMD level, or the GPU adapter.
    #[serde(flatten)]
    backend: model::BackendInfo,
    apr_version: &'static str,
    git_revision: &'static str,
}

#[derive(Debug, Serialize)]
struct Settings {
    iterations: u32,
    warmup: u32,
    prompt_tokens: usize,
    gen_tokens: usize,
    ctx_size: usize,
    kv_type: &'static str,
    sampling: &'static str,
}

#[derive(Debug, Serialize)]
struct Load {
    /// Mapping, parsing and building the model after the file's pages were dropped from the
    /// page cache; `None` when the system offers no way to drop them.
    cold_ms: Option<f64>,
    /// The same with the file cached.
    warm_ms: f64,
}

/// One point of the scaling study.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SweepPoint {
    pub(crate) threads: usize,
    pub(crate) context: usize,
    pub(crate) decode_tokens_per_s: f64,
    pub(crate) ms_per_token: f64,
}

/// Maps, parses and builds the model and its tokenizer, returning how long it took.
fn load_once(args: &ShowcaseArgs, device: &model::Device, ctx: usize) -> Result<f64> {
    let started = Instant::now();
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let tokenizer = model::tokenizer(&parsed)?;
    let qwen = model::load(&parsed, device, ctx, args.engine.kv())?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    drop((qwen, tokenizer));
    Ok(ms)
}

pub(crate) fn run(args: ShowcaseArgs) -> Result<()> {
    let path = model::resolve(&args.model)?;
    let device = args.engine.device();
    if args.sweep && matches!(device, model::Device::Gpu { .. }) {
        bail!("--sweep studies decode speed against CPU threads; it does not apply to --gpu");
    }
    let (prompt_tokens, gen_tokens) = (args.prompt_tokens as usize, args.gen_tokens as usize);
    let ctx = args.engine.ctx_size as usize;
    if prompt_tokens + gen_tokens > ctx {
        bail!(
            "--prompt-tokens {prompt_tokens} plus --gen-tokens {gen_tokens} do not fit a context of {ctx}; raise --ctx-size"
        );
    }
    let file_bytes = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();

    eprintln!("apr: loading {} cold, then warm", path.display());
    let cold_ms = if system::evict_page_cache(&path) {
        Some(load_once(&args, &device, ctx)?)
    } else {
        None
    };
    let started = Instant::now();
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let tokenizer = model::tokenizer(&parsed)?;
    let qwen = model::load(&parsed, &device, ctx, args.engine.kv())?;
    let warm_ms = started.elapsed().as_secs_f64() * 1e3;
    let summary = apr_core::info::ModelInfo::from_model(&parsed, false);
    let config = qwen.config().clone();
    let backend = model::BackendInfo::of(qwen.backend());
    let described = model::describe(qwen.backend());
    let mut session = Session::new(qwen, tokenizer);
    let prompt = bench::synthetic_prompt(session.tokenizer(), prompt_tokens)?;

    eprintln!(
        "apr: {} warm-up and {} timed runs of {prompt_tokens} prompt + {gen_tokens} generated tokens, {described}",
        args.warmup, args.iterations
    );
    for _ in 0..args.warmup {
        bench::timed(&mut session, &prompt, gen_tokens)?;
    }
    let mut runs = Vec::with_capacity(args.iterations as usize);
    for i in 0..args.iterations {
        let run = bench::timed(&mut session, &prompt, gen_tokens)?;
        eprintln!(
            "apr: run {}: ttft {:.1} ms, prefill {:.1} tok/s, decode {:.1} tok/s",
            i + 1,
            run.ttft_ms,
            run.prefill_tokens_per_s,
            run.decode_tokens_per_s
        );
        runs.push(run);
    }
    let series = |f: fn(&Run) -> f64| {
        Stats::of(&runs.iter().map(f).collect::<Vec<_>>()).context("no timed runs")
    };
    let ttft_ms = series(|r| r.ttft_ms)?;
    let prefill = series(|r| r.prefill_tokens_per_s)?;
    let decode = series(|r| r.decode_tokens_per_s)?;
    let peak_rss_bytes = system::peak_rss();
    let gpu_per_token = gpu_step(&mut session, prompt[0])?;
    drop(session);

    let sweep = if args.sweep {
        Some(sweep(&args, &parsed, backend.threads.unwrap_or(1))?)
    } else {
        None
    };

    let report = Report {
        schema: "apr-showcase/1",
        model: ModelInfo {
            path: path.display().to_string(),
            format: parsed.format.to_string(),
            file_bytes,
            quantization: summary.quantization,
            compression: summary.compression,
            architecture: "qwen2".into(),
            layers: config.layers,
            parameters: summary.parameters,
        },
        system: SystemInfo {
            cpu: system::cpu_model(),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            physical_cores: system::physical_cores(),
            memory_bytes: system::memory_total(),
            backend,
            apr_version: env!("CARGO_PKG_VERSION"),
            git_revision: system::GIT_REVISION,
        },
        settings: Settings {
            iterations: args.iterations,
            warmup: args.warmup,
            prompt_tokens,
            gen_tokens,
            ctx_size: ctx,
            kv_type: args.engine.kv().name(),
            sampling: "greedy, end of generation ignored",
        },
        load: Load { cold_ms, warm_ms },
        ttft_ms,
        prefill_tokens_per_s: prefill,
        decode_tokens_per_s: decode,
        peak_rss_bytes,
        runs,
        sweep,
        gpu_per_token,
    };
    print!("{}", table(&report));
    if let Some(out) = &args.output {
        let mut json = serde_json::to_vec_pretty(&report)?;
        json.push(b'\n');
        atomic::write(out, &json)?;
        eprintln!("apr: report written to {}", out.display());
        if let Some(points) = &report.sweep {
            let (csv, svg) = (sibling(out, "sweep.csv"), sibling(out, "sweep.svg"));
            atomic::write(&csv, sweep_csv(points).as_bytes())?;
            atomic::write(
                &svg,
                sweep_svg(points, "Decode speed against tokens in the KV cache").as_bytes(),
            )?;
            eprintln!(
                "apr: scaling study written to {} and {}",
                csv.display(),
                svg.display()
            );
        }
    }
    Ok(())
}

/// `dir/name.json` -> `dir/name.<suffix>`.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "showcase".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.{suffix}"))
}

fn table(r: &Report) -> String {
    let mut t = String::new();
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} ms"));
    let _ = writeln!(
        t,
        "model        {} ({}, {} bytes)",
        r.model.path, r.model.format, r.model.file_bytes
    );
    let ran_on = match (&r.system.backend.gpu, r.system.backend.threads) {
        (Some(gpu), _) => format!("GPU {}", gpu.describe()),
        (None, threads) => format!(
            "{} threads, {}",
            threads.unwrap_or(1),
            r.system.backend.simd.unwrap_or("scalar")
        ),
    };
    let _ = writeln!(
        t,
        "machine      {}, {ran_on}, apr {} ({})",
        r.system.cpu, r.system.apr_version, r.system.git_revision
    );
    if let Some(g) = &r.gpu_per_token {
        let _ = writeln!(
            t,
            "gpu/token    {} dispatches, {:.1} MiB of weights, {} bytes read back",
            g.dispatches,
            g.weight_bytes as f64 / (1 << 20) as f64,
            g.read_bytes
        );
    }
    let _ = writeln!(
        t,
        "load         cold {}, warm {}",
        ms(r.load.cold_ms),
        ms(Some(r.load.warm_ms))
    );
    let _ = writeln!(
        t,
        "{:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "", "median", "mean", "min", "max", "stddev"
    );
    for (name, s) in [
        ("time to first token ms", &r.ttft_ms),
        ("prefill tok/s", &r.prefill_tokens_per_s),
        ("decode tok/s", &r.decode_tokens_per_s),
    ] {
        let _ = writeln!(
            t,
            "{name:<24}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.2}",
            s.median, s.mean, s.min, s.max, s.stddev
        );
    }
    if let Some(rss) = r.peak_rss_bytes {
        let _ = writeln!(t, "peak RSS     {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    if let Some(points) = &r.sweep {
        let _ = writeln!(t, "scaling      threads  context  decode tok/s  ms/token");
        for p in points {
            let _ = writeln!(
                t,
                "             {:>7}  {:>7}  {:>12.1}  {:>8.2}",
                p.threads, p.context, p.decode_tokens_per_s, p.ms_per_token
            );
        }
    }
    t
}

/// Decode speed with `SWEEP_DEPTHS` tokens already in the cache, at one thread and at the
/// benchmark's thread count.
fn sweep(
    args: &ShowcaseArgs,
    parsed: &apr_core::format::model::ModelFile<'_>,
    threads: usize,
) -> Result<Vec<SweepPoint>> {
    let max_depth = SWEEP_DEPTHS[SWEEP_DEPTHS.len() - 1];
    let ctx = max_depth + SWEEP_TOKENS + 1;
    let mut counts = vec![1, threads];
    counts.dedup();
    let mut points = Vec::new();
    for &t in &counts {
        let tokenizer = model::tokenizer(parsed)?;
        let qwen = model::load(
            parsed,
            &model::Device::Cpu { threads: t },
            ctx,
            args.engine.kv(),
        )?;
        let mut session = Session::new(qwen, tokenizer);
        let prompt = bench::synthetic_prompt(session.tokenizer(), max_depth)?;
        for &depth in &SWEEP_DEPTHS {
            eprintln!("apr: scaling study: {t} threads, {depth} tokens in the cache");
            let run = bench::timed(&mut session, &prompt[..depth], SWEEP_TOKENS)?;
            points.push(SweepPoint {
                threads: t,
                context: depth,
                decode_tokens_per_s: run.decode_tokens_per_s,
                ms_per_token: run.decode_ms / (run.tokens - 1).max(1) as f64,
            });
        }
    }
    Ok(points)
}

fn sweep_csv(points: &[SweepPoint]) -> String {
    let mut s = String::from("threads,context,decode_tokens_per_s,ms_per_token\n");
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{:.3},{:.4}",
            p.threads, p.context, p.decode_tokens_per_s, p.ms_per_token
        );
    }
    s
}

/// A line chart of decode speed against cache depth, one line per thread count.
pub(crate) fn sweep_svg(points: &[SweepPoint], title: &str) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let max_ctx = points.iter().map(|p| p.context).max().unwrap_or(1) as f64;
    let max_rate = points
        .iter()
        .map(|p| p.decode_tokens_per_s)
        .fold(1.0f64, f64::max)
        * 1.1;
    let x = |c: f64| left + c / max_ctx * (w - left - right);
    let y = |r: f64| h - bottom - r / max_rate * (h - top - bottom);
    let mut s = crate::chart::open(w, h, title);
    // Axes, grid and labels.
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#000"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#000"/>"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=5 {
        let r = max_rate * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4:.0}</text>"##,
            y(r),
            w - right,
            left - 6.0,
            y(r) + 4.0,
            r
        );
    }
    let mut contexts: Vec<usize> = points.iter().map(|p| p.context).collect();
    contexts.sort_unstable();
    contexts.dedup();
    for c in contexts {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{c}</text>"##,
            x(c as f64),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">tokens in the cache</text><text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">decode tokens/s</text>"##,
        (left + w - right) / 2.0,
        h - 10.0,
        h / 2.0,
        h / 2.0
    );
    let colors = crate::chart::COLORS;
    let mut counts: Vec<usize> = points.iter().map(|p| p.threads).collect();
    counts.sort_unstable();
    counts.dedup();
    for (i, t) in counts.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line: Vec<String> = points
            .iter()
            .filter(|p| p.threads == *t)
            .map(|p| format!("{:.1},{:.1}", x(p.context as f64), y(p.decode_tokens_per_s)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
            line.join(" ")
        );
        for p in points.iter().filter(|p| p.threads == *t) {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"##,
                x(p.context as f64),
                y(p.decode_tokens_per_s)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="{color}">{t} thread{}</text>"##,
            w - right - 90.0,
            top + 16.0 * (i as f64 + 1.0),
            if *t == 1 { "" } else { "s" }
        );
    }
    s.push_str("</svg>\n");
    s
}
