//! `apr profile MODEL --prompt P --max-tokens N --iterations K`: latency percentiles.
//!
//! Each iteration is one request from an empty cache: the prompt, then exactly `--max-tokens`
//! greedy tokens (the end of generation does not stop it, so every request does the same work).
//! Reports P50, P95 and P99 of the request latency, the time to first token and the time per
//! generated token, as a table or (`--json`) as JSON on stdout.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::bench::{self, Stats};
use super::model;
use crate::args::ProfileArgs;
use crate::system;

#[derive(Debug, Serialize)]
struct Profile {
    schema: &'static str,
    model: String,
    /// `GGUF`, `SafeTensors` or `APR`.
    format: String,
    file_bytes: u64,
    prompt_tokens: usize,
    max_tokens: usize,
    iterations: u32,
    warmup: u32,
    #[serde(flatten)]
    backend: model::BackendInfo,
    #[serde(skip)]
    device: String,
    kv_type: &'static str,
    load_ms: f64,
    /// Request start to the last token.
    request_ms: Stats,
    /// Request start to the first token.
    ttft_ms: Stats,
    /// Between consecutive generated tokens, over every request.
    per_token_ms: Stats,
    decode_tokens_per_s: Stats,
    peak_rss_bytes: Option<u64>,
    git_revision: &'static str,
}

pub(crate) fn run(args: ProfileArgs) -> Result<()> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let (mut session, load) = model::session(&parsed, &args.engine, opened.started)?;
    let prompt = session
        .tokenizer()
        .encode(&args.prompt, !args.no_special)
        .context("cannot tokenize the prompt")?;
    if prompt.is_empty() {
        bail!("the prompt is empty: nothing to continue");
    }
    let need = prompt.len() + args.max_tokens;
    if need > session.model().context_size() {
        bail!(
            "{} prompt tokens plus --max-tokens {} do not fit a context of {}; raise --ctx-size",
            prompt.len(),
            args.max_tokens,
            session.model().context_size()
        );
    }
    if !args.json {
        eprintln!(
            "apr: {} warm-up and {} timed requests of {} prompt + {} generated tokens",
            args.warmup,
            args.iterations,
            prompt.len(),
            args.max_tokens
        );
    }
    for _ in 0..args.warmup {
        bench::timed(&mut session, &prompt, args.max_tokens)?;
    }
    let mut runs = Vec::with_capacity(args.iterations as usize);
    for _ in 0..args.iterations {
        runs.push(bench::timed(&mut session, &prompt, args.max_tokens)?);
    }
    let of = |v: Vec<f64>| Stats::of(&v).context("nothing was timed");
    let intervals: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.intervals_ms.iter().copied())
        .collect();
    let per_token_ms = if intervals.is_empty() {
        // One token per request: there is no interval between tokens to time.
        of(runs.iter().map(|r| r.ttft_ms).collect())?
    } else {
        of(intervals)?
    };
    let report = Profile {
        schema: "apr-profile/1",
        model: opened.file.path().display().to_string(),
        format: parsed.format.to_string(),
        file_bytes: opened.file.bytes().len() as u64,
        prompt_tokens: prompt.len(),
        max_tokens: args.max_tokens,
        iterations: args.iterations,
        warmup: args.warmup,
        backend: model::BackendInfo::of(session.model().backend()),
        device: model::describe(session.model().backend()),
        kv_type: session.model().kv_type().name(),
        load_ms: load.as_secs_f64() * 1e3,
        request_ms: of(runs.iter().map(|r| r.total_ms).collect())?,
        ttft_ms: of(runs.iter().map(|r| r.ttft_ms).collect())?,
        per_token_ms,
        decode_tokens_per_s: of(runs.iter().map(|r| r.decode_tokens_per_s).collect())?,
        peak_rss_bytes: system::peak_rss(),
        git_revision: system::GIT_REVISION,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn table(p: &Profile) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} requests: {} prompt + {} generated tokens, {}, KV cache {}",
        p.iterations, p.prompt_tokens, p.max_tokens, p.device, p.kv_type
    );
    let _ = writeln!(
        t,
        "{:<18}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "latency (ms)", "p50", "p95", "p99", "mean", "min", "max"
    );
    for (name, s) in [
        ("request", &p.request_ms),
        ("first token", &p.ttft_ms),
        ("per token", &p.per_token_ms),
    ] {
        let _ = writeln!(
            t,
            "{name:<18}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
            s.p50, s.p95, s.p99, s.mean, s.min, s.max
        );
    }
    let _ = writeln!(
        t,
        "decode            {:.1} tok/s median; load {:.0} ms{}",
        p.decode_tokens_per_s.median,
        p.load_ms,
        p.peak_rss_bytes
            .map(|b| format!("; peak RSS {:.1} MiB", b as f64 / (1 << 20) as f64))
            .unwrap_or_default()
    );
    t
}
