//! What `apr showcase` and `apr profile` share: timed generations and their statistics.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::commands::model::Engine;
use anyhow::{Result, bail};
use apr_core::generate::{GenerateParams, Session, Timings};
use apr_core::sample::SamplerConfig;
use serde::Serialize;

/// One timed generation from an empty cache.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    /// Prompt tokens evaluated.
    pub(crate) prompt_tokens: usize,
    /// Tokens generated.
    pub(crate) tokens: usize,
    /// Request start to the first generated token (prompt evaluation plus one sampling step).
    pub(crate) ttft_ms: f64,
    /// First to last generated token.
    pub(crate) decode_ms: f64,
    /// Request start to the last token.
    pub(crate) total_ms: f64,
    /// `prompt_tokens / ttft`.
    pub(crate) prefill_tokens_per_s: f64,
    /// `(tokens - 1) / decode`.
    pub(crate) decode_tokens_per_s: f64,
    /// Time between each generated token and the one before it.
    #[serde(skip)]
    pub(crate) intervals_ms: Vec<f64>,
}

/// Generates exactly `tokens` greedy tokens after `prompt` from an empty cache (the end of
/// generation token does not stop it, so every run does the same work) and times it.
pub(crate) fn timed(
    session: &mut Session<'_, Engine>,
    prompt: &[u32],
    tokens: usize,
) -> Result<Run> {
    if tokens == 0 {
        bail!("a timed run must generate at least one token");
    }
    session.reset();
    let params = GenerateParams {
        max_tokens: tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        truncate_prompt: false,
        logprobs: None,
    };
    let start = Instant::now();
    let mut at = Vec::with_capacity(tokens);
    let outcome = session.generate(prompt, &params, |token| {
        // Held-back text flushed at the end comes without a token id: not a token.
        if token.id.is_some() {
            at.push(start.elapsed().as_secs_f64() * 1e3);
        }
        ControlFlow::Continue(())
    })?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let (Some(&first), Some(&last)) = (at.first(), at.last()) else {
        bail!("the model generated nothing");
    };
    // The same rates `apr run` reports, from the same definitions.
    let t = Timings::new(0.0, first, last - first, outcome.prompt_tokens, at.len());
    Ok(Run {
        prompt_tokens: outcome.prompt_tokens,
        tokens: at.len(),
        ttft_ms: t.ttft_ms,
        decode_ms: t.decode_ms,
        total_ms,
        prefill_tokens_per_s: t.prompt_tokens_per_s,
        decode_tokens_per_s: t.decode_tokens_per_s,
        intervals_ms: at.windows(2).map(|w| w[1] - w[0]).collect(),
    })
}

/// Summary statistics of a series.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) mean: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// Sample standard deviation (0 for a single value).
    pub(crate) stddev: f64,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) count: usize,
}

impl Stats {
    /// Statistics of `values`, or `None` when there are none.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            mean,
            min: v[0],
            max: v[n - 1],
            stddev: var.sqrt(),
            p50: percentile(&v, 50.0),
            p95: percentile(&v, 95.0),
            p99: percentile(&v, 99.0),
            count: n,
        })
    }
}

/// The nearest-rank percentile of sorted values: the smallest value with at least `p`% of the
/// values at or below it.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// A prompt of exactly `n` tokens cut from a fixed piece of code and prose, so every run and
/// every format sees the same input (`llama-bench` likewise uses a synthetic prompt).
pub(crate) fn synthetic_prompt(
    tokenizer: &apr_core::tokenizer::Tokenizer,
    n: usize,
) -> Result<Vec<u32>> {
    const TEXT: &str = "def quicksort(items):\n    \"\"\"Sort a list with quicksort.\"\"\"\n    \
        if len(items) <= 1:\n        return items\n    pivot = items[len(items) // 2]\n    \
        left = [x for x in items if x < pivot]\n    middle = [x for x in items if x == pivot]\n    \
        right = [x for x in items if x > pivot]\n    return quicksort(left) + middle + \
        quicksort(right)\n\nA hash map stores keys in buckets chosen by a hash function; when two \
        keys land in the same bucket, the map keeps both and compares them on lookup. ";
    let unit = tokenizer.encode(TEXT, false)?;
    if unit.is_empty() {
        bail!("the tokenizer produced no tokens for the benchmark prompt");
    }
    Ok(unit.iter().copied().cycle().take(n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_and_percentiles() {
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.max, s.median, s.mean), (1.0, 4.0, 2.5, 2.5));
        assert!((s.stddev - 1.2909944).abs() < 1e-6);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&hundred).unwrap();
        assert_eq!((s.p50, s.p95, s.p99), (50.0, 95.0, 99.0));
        let one = Stats::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.stddev), (7.0, 7.0, 0.0));
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
    }
}
