//! `apr trace MODEL -p PROMPT --trace-output F.json`: one observed forward pass over the prompt.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apr_core::backend::either::Either;
use apr_core::backend::gpu::KernelTime;
use apr_core::model::{Logits, Observer, Op};
use serde::Serialize;

use super::model;
use crate::args::TraceArgs;
use crate::atomic;

#[derive(Debug, Serialize)]
struct Candidate {
    id: u32,
    token: String,
    logit: f32,
    prob: f64,
}

#[derive(Debug, Serialize)]
struct FirstToken {
    argmax: u32,
    token: String,
    top: Vec<Candidate>,
}

#[derive(Debug, Serialize)]
struct LayerStats {
    /// 0 is the embedding output; i is block i - 1's output.
    layer: usize,
    min: f32,
    max: f32,
    mean: f64,
    std: f64,
    nan: bool,
    inf: bool,
}

#[derive(Debug, Serialize)]
struct OpTiming {
    op: &'static str,
    calls: u64,
    total_ms: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    peak_rss_bytes: Option<u64>,
    rss_file_bytes: Option<u64>,
    rss_anon_bytes: Option<u64>,
    mapped_file_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Trace {
    schema: &'static str,
    model: String,
    format: String,
    prompt: String,
    prompt_tokens: Vec<u32>,
    first_token: FirstToken,
    layers: Vec<LayerStats>,
    /// Host time between op boundaries. Empty on the GPU, where ops only record work and the
    /// time is spent at read-back; `gpu_kernels` holds the GPU's own timing there.
    ops: Vec<OpTiming>,
    /// On the GPU: each kernel's dispatches and time from timestamp queries.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_kernels: Option<Vec<KernelTime>>,
    forward_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
}

#[derive(Default)]
struct Recorder {
    started: Option<Instant>,
    batches: usize,
    ops: BTreeMap<Op, (u64, Duration)>,
    layers: Vec<LayerStats>,
}

impl Observer for Recorder {
    fn enter(&mut self, op: Op) {
        if op == Op::Embed {
            self.batches += 1;
        }
        self.started = Some(Instant::now());
    }

    fn exit(&mut self, op: Op) {
        if let Some(t) = self.started.take() {
            let e = self.ops.entry(op).or_default();
            e.0 += 1;
            e.1 += t.elapsed();
        }
    }

    fn wants_hidden(&self) -> bool {
        // Only the first batch holds the first position.
        self.batches == 1
    }

    fn hidden(&mut self, layer: usize, values: &[f32]) {
        let finite: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| f64::from(v))
            .collect();
        let n = finite.len().max(1) as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        self.layers.push(LayerStats {
            layer,
            min: values.iter().copied().fold(f32::INFINITY, f32::min),
            max: values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            mean,
            std: var.sqrt(),
            nan: values.iter().any(|v| v.is_nan()),
            inf: values.iter().any(|v| v.is_infinite()),
        });
    }
}

pub(crate) fn run(args: TraceArgs) -> Result<()> {
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let tokenizer = model::tokenizer(&parsed)?;
    let ids = tokenizer.encode(&args.prompt, true)?;
    if ids.is_empty() {
        bail!("the prompt is empty: nothing to trace");
    }
    let ctx = (args.engine.ctx_size as usize).max(ids.len());
    let mut qwen = model::load(&parsed, &args.engine.device(), ctx, args.engine.kv())?;
    let on_gpu = match qwen.backend_mut() {
        Either::Right(gpu) => {
            if !gpu.time_kernels() {
                eprintln!("apr: this GPU has no timestamp queries: no per-kernel times");
            }
            true
        }
        Either::Left(_) => false,
    };
    let mut rec = Recorder::default();
    let start = Instant::now();
    let logits = qwen.forward_observed(&ids, Logits::Last, Some(&mut rec))?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;
    let gpu_kernels = match qwen.backend_mut() {
        Either::Right(gpu) => Some(gpu.take_kernel_times()),
        Either::Left(_) => None,
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let top_n = args.top.clamp(1, logits.len());
    order.select_nth_unstable_by(top_n - 1, |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    order.truncate(top_n);
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    let top: Vec<Candidate> = order
        .iter()
        .map(|&id| Candidate {
            id,
            token: tokenizer.token_text(id).unwrap_or_default(),
            logit: logits[id as usize],
            prob: f64::from(logits[id as usize] - max).exp() / sum,
        })
        .collect();
    let argmax = apr_core::sample::argmax(&logits);
    let trace = Trace {
        schema: "apr.trace.v1",
        model: args.model.clone(),
        format: parsed.format.to_string(),
        prompt: args.prompt.clone(),
        prompt_tokens: ids,
        first_token: FirstToken {
            argmax,
            token: tokenizer.token_text(argmax).unwrap_or_default(),
            top,
        },
        layers: rec.layers,
        ops: rec
            .ops
            .iter()
            .filter(|_| !on_gpu)
            .map(|(op, (calls, t))| OpTiming {
                op: op.name(),
                calls: *calls,
                total_ms: t.as_secs_f64() * 1e3,
            })
            .collect(),
        gpu_kernels,
        forward_ms,
        memory: args.memory_profile.then(|| Memory {
            peak_rss_bytes: crate::system::proc_status("VmHWM:"),
            rss_file_bytes: crate::system::proc_status("RssFile:"),
            rss_anon_bytes: crate::system::proc_status("RssAnon:"),
            mapped_file_bytes: opened.file.bytes().len() as u64,
        }),
    };
    let mut json = serde_json::to_vec_pretty(&trace)?;
    json.push(b'\n');
    atomic::write(&args.trace_output, &json)
        .with_context(|| format!("cannot write {}", args.trace_output.display()))?;
    eprintln!(
        "apr: first token {} {:?}; trace written to {}",
        trace.first_token.argmax,
        trace.first_token.token,
        args.trace_output.display()
    );
    Ok(())
}
