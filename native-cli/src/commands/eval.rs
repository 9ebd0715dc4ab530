//! `apr eval perplexity MODEL FILE --ctx-size 512`: llama-perplexity's measure. The text is cut
//! into windows of ctx-size tokens that do not overlap; each window starts with an empty cache and
//! scores its second half, each token by the log-probability the model gave it.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use apr_core::backend::KvType;
use apr_core::model::Logits;
use serde::Serialize;

use super::model;
use crate::args::PerplexityArgs;
use crate::output;

#[derive(Debug, Serialize)]
struct PerplexityReport {
    model: String,
    file: String,
    ctx_size: usize,
    tokens: usize,
    chunks: usize,
    scored_tokens: usize,
    /// Perplexity after each chunk.
    running: Vec<f64>,
    ppl: f64,
    /// Standard error of the estimate, as llama-perplexity prints it after `+/-`.
    ppl_error: f64,
    seconds: f64,
}

/// `-log softmax(logits)[target]`, in f64.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let l = logits
        .get(target as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    sum.ln() - f64::from(l - max)
}

pub(crate) fn perplexity(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {} as UTF-8 text", args.file.display()))?;
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let tokenizer = model::tokenizer(&parsed)?;
    // llama-perplexity tokenizes without parsing special tokens.
    let tokens = tokenizer.encode(&text, false)?;
    let ctx = args.ctx_size as usize;
    let mut chunks = tokens.len() / ctx;
    if let Some(max) = args.chunks {
        chunks = chunks.min(max);
    }
    if chunks == 0 {
        bail!(
            "{} holds {} tokens, fewer than one window of {ctx}; use a longer text or a smaller --ctx-size",
            args.file.display(),
            tokens.len()
        );
    }
    let mut qwen = model::load(
        &parsed,
        &model::Device::Cpu {
            threads: model::threads(args.threads),
        },
        ctx,
        KvType::F16,
    )?;
    let vocab = qwen.config().vocab;
    let first = ctx / 2;
    let start = Instant::now();
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let window = &tokens[c * ctx..(c + 1) * ctx];
        qwen.truncate(0);
        // The first half only builds the cache.
        qwen.forward(&window[..first], Logits::Last)?;
        // Logits at positions first..ctx-1 predict the tokens after them.
        for (i, piece) in window[first..ctx - 1]
            .chunks(apr_core::model::qwen2::BATCH)
            .enumerate()
        {
            let logits = qwen.forward(piece, Logits::All)?;
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                let pos = first + i * apr_core::model::qwen2::BATCH + j;
                let v = nll(row, window[pos + 1]);
                sum += v;
                sum2 += v * v;
                count += 1;
            }
        }
        let ppl = (sum / count as f64).exp();
        running.push(ppl);
        if !args.json {
            eprintln!("[{}/{chunks}] {ppl:.4}", c + 1);
        }
    }
    let mean = sum / count as f64;
    let ppl = mean.exp();
    // llama-perplexity's error: the standard error of the mean NLL, carried through exp.
    let var = (sum2 / count as f64 - mean * mean).max(0.0);
    let ppl_error = if count > 1 {
        ppl * (var / (count as f64 - 1.0)).sqrt()
    } else {
        0.0
    };
    let report = PerplexityReport {
        model: args.model.clone(),
        file: args.file.display().to_string(),
        ctx_size: ctx,
        tokens: tokens.len(),
        chunks,
        scored_tokens: count,
        running,
        ppl,
        ppl_error,
        seconds: start.elapsed().as_secs_f64(),
    };
    if args.json {
        output::print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        output::print(&format!(
            "{} tokens, {chunks} windows of {ctx}, {count} scored in {:.1} s\nPPL = {ppl:.4} +/- {ppl_error:.5}\n",
            tokens.len(),
            report.seconds
        ))?;
    }
    Ok(())
}
