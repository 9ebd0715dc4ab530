//! The one decode loop. The CLI, the server and the browser worker all generate through a
//! [`Session`]: it evaluates the prompt (reusing whatever prefix the KV cache already holds),
//! samples token after token, streams each with its text, and says why it stopped.
//!
//! [`Session::generate`] runs a whole generation with a callback per token. A caller that
//! interleaves several generations (the server's request slots) drives the same loop a token at
//! a time: [`Session::start`], then [`Session::step`] until it returns `None`, swapping each
//! request's [`Slot`] in with [`Session::swap_slot`] before its steps.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::ControlFlow;

use crate::backend::{Backend, resolve_now};
use crate::model::{KvCache, Logits, Qwen2};
use crate::sample::{Sampler, SamplerConfig};
use crate::tokenizer::{TextStream, Tokenizer};
use crate::{Error, Result};

/// The most alternatives [`GenerateParams::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Stop (and cut the text) when one of these appears.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// When the prompt does not fit, drop its oldest tokens instead of failing.
    pub truncate_prompt: bool,
    /// With `Some(n)`, each token comes with its log-probability under the model and the `n`
    /// most likely tokens' (at most [`MAX_TOP_LOGPROBS`]).
    #[serde(default)]
    pub logprobs: Option<usize>,
}

impl GenerateParams {
    /// Whether the next token is simply the largest logit: greedy, no repeat penalty, no
    /// log-probabilities. Then the backend picks it ([`Qwen2::forward_greedy`]) and the logits
    /// never leave it.
    pub fn greedy_only(&self) -> bool {
        self.sampler.temperature <= 0.0
            && self.sampler.repeat_penalty == 1.0
            && self.logprobs.is_none()
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            truncate_prompt: false,
            logprobs: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// A stop string.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The KV cache is full.
    ContextFull,
    /// The caller stopped it.
    Cancelled,
}

impl StopReason {
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub fn finish_reason(self) -> &'static str {
        match self {
            StopReason::Eos | StopReason::StopString | StopReason::Cancelled => "stop",
            StopReason::MaxTokens | StopReason::ContextFull => "length",
        }
    }
}

/// A generated token as it streams out.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// The id; `None` for the final piece of text held back until generation ended (the tail of
    /// a character or of a possible stop string).
    pub id: Option<u32>,
    /// Text that became complete with this token (may be empty while a character or a possible
    /// stop string is pending).
    pub text: String,
    /// 0 for the first generated token.
    pub index: usize,
    /// The token's log-probabilities, when [`GenerateParams::logprobs`] asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// A token's log-probability under the model (the softmax of the raw logits, before any
/// sampling transform) and the most likely tokens' at the same step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprobs {
    /// The chosen token's.
    pub logprob: f32,
    /// The most likely tokens and theirs, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Prompt tokens evaluated by the model (after truncation).
    pub prompt_tokens: usize,
    /// Prompt tokens found already in the KV cache and not evaluated again.
    pub cached_tokens: usize,
    /// Generated ids (the end-of-generation token not included).
    pub tokens: Vec<u32>,
    /// Generated text, cut before any stop string.
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Where the time of one generation went, in milliseconds, as the CLI prints it, the server
/// returns it and the web page shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Mapping the file and building the model (0 when it was already loaded).
    pub load_ms: f64,
    /// Evaluating the prompt.
    pub prompt_ms: f64,
    /// From the start of the request to the first generated token.
    pub ttft_ms: f64,
    /// Generating the tokens after the first.
    pub decode_ms: f64,
    /// Prompt tokens per second.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

impl Timings {
    /// Timings from the durations measured around a generation that evaluated `prompt_tokens`
    /// and generated `tokens`.
    pub fn new(
        load_ms: f64,
        prompt_ms: f64,
        decode_ms: f64,
        prompt_tokens: usize,
        tokens: usize,
    ) -> Self {
        let rate = |n: usize, ms: f64| {
            if ms > 0.0 {
                n as f64 * 1000.0 / ms
            } else {
                0.0
            }
        };
        Self {
            load_ms,
            prompt_ms,
            ttft_ms: prompt_ms,
            decode_ms,
            prompt_tokens_per_s: rate(prompt_tokens, prompt_ms),
            decode_tokens_per_s: rate(tokens.saturating_sub(1), decode_ms),
        }
    }
}

/// A model with its tokenizer and the tokens its KV cache holds.
#[derive(Debug)]
pub struct Session<'w, B: Backend> {
    model: Qwen2<'w, B>,
    tokenizer: Tokenizer,
    /// The tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
}

/// One sequence's KV cache and the tokens it holds, kept aside while another sequence runs; see
/// [`Session::swap_slot`].
pub struct Slot<B: Backend> {
    cache: KvCache<B>,
    cached: Vec<u32>,
}

impl<B: Backend> Slot<B> {
    /// The tokens whose keys and values the slot's cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.cached
    }
}

impl<B: Backend> core::fmt::Debug for Slot<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slot")
            .field("cache", &self.cache)
            .field("cached", &self.cached.len())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sampling tokens.
    Running,
    /// Stopped; the held-back text is still to be handed out.
    Flushing,
    /// Nothing more to hand out.
    Done,
}

/// One generation in progress: what [`Session::step`] needs between tokens.
#[derive(Debug)]
pub struct Generation {
    params: GenerateParams,
    sampler: Sampler,
    stream: TextStream,
    /// Text generated but not yet handed out, because it may begin a stop string.
    held: String,
    longest_stop: usize,
    /// The prompt and the tokens generated so far (the repeat penalty's window).
    recent: Vec<u32>,
    /// The logits to sample the next token from.
    logits: Vec<f32>,
    /// The next token, when the backend already chose it ([`GenerateParams::greedy_only`]).
    chosen: Option<u32>,
    /// The last token handed out, not yet evaluated: its forward pass runs at the next step, so
    /// the token streams out before the model computes what follows it.
    pending: Option<u32>,
    outcome: Outcome,
    phase: Phase,
}

impl Generation {
    /// What has been generated so far, and once finished, why it stopped.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Whether [`Session::step`] has nothing more to hand out.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Stops sampling ([`StopReason::Cancelled`]); the next step hands out the held-back text,
    /// if any. Does nothing once generation has stopped for another reason.
    pub fn cancel(&mut self) {
        if self.phase == Phase::Running {
            self.outcome.stop = StopReason::Cancelled;
            self.phase = Phase::Flushing;
        }
    }

    /// The result.
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }

    /// Ends generation for `why` and hands out what was held back.
    fn finish(&mut self, why: StopReason) -> Option<Token> {
        self.outcome.stop = why;
        self.flush()
    }

    fn flush(&mut self) -> Option<Token> {
        self.phase = Phase::Done;
        self.held.push_str(&self.stream.finish());
        if self.held.is_empty() {
            return None;
        }
        let text = core::mem::take(&mut self.held);
        self.outcome.text.push_str(&text);
        Some(Token {
            id: None,
            text,
            index: self.outcome.tokens.len(),
            logprobs: None,
        })
    }
}

impl<'w, B: Backend> Session<'w, B> {
    /// A session with an empty cache.
    pub fn new(model: Qwen2<'w, B>, tokenizer: Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            cached: Vec::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Qwen2<'w, B> {
        &self.model
    }

    /// The model, for direct forward passes (this forgets the cache's contents).
    pub fn model_mut(&mut self) -> &mut Qwen2<'w, B> {
        self.cached.clear();
        self.model.truncate(0);
        &mut self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokens whose keys and values the session's cache holds.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the cache.
    pub fn reset(&mut self) {
        self.cached.clear();
        self.model.truncate(0);
    }

    /// A new, empty slot: a second KV cache the size of the session's.
    pub fn new_slot(&mut self) -> Result<Slot<B>> {
        Ok(Slot {
            cache: self.model.new_cache()?,
            cached: Vec::new(),
        })
    }

    /// Exchanges the session's cache (and the record of the tokens in it) with `slot`'s, so the
    /// next [`Session::start`] or [`Session::step`] goes on from the slot's sequence.
    pub fn swap_slot(&mut self, slot: &mut Slot<B>) -> Result<()> {
        self.model.swap_cache(&mut slot.cache)?;
        core::mem::swap(&mut self.cached, &mut slot.cached);
        Ok(())
    }

    /// Evaluates `prompt` and returns the logits after it, reusing the longest prefix the cache
    /// already holds. Returns the logits and how many prompt tokens were reused.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        resolve_now(self.prefill_async(prompt))
    }

    async fn prefill_async(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        let common = self.reuse(prompt)?;
        let logits = self
            .model
            .forward_async(&prompt[common..], Logits::Last)
            .await?;
        self.cached.extend_from_slice(&prompt[common..]);
        Ok((logits, common))
    }

    /// [`Session::prefill`] returning the greedy choice instead of the logits.
    async fn prefill_greedy(&mut self, prompt: &[u32]) -> Result<(u32, usize)> {
        let common = self.reuse(prompt)?;
        let id = self.model.forward_greedy_async(&prompt[common..]).await?;
        self.cached.extend_from_slice(&prompt[common..]);
        Ok((id, common))
    }

    /// Keeps the longest prefix of `prompt` that the cache holds (leaving at least one token to
    /// evaluate) and returns its length.
    fn reuse(&mut self, prompt: &[u32]) -> Result<usize> {
        if prompt.is_empty() {
            return Err(Error::Invalid(
                "the prompt is empty: nothing to continue".into(),
            ));
        }
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            // At least one token must run to get logits.
            .min(prompt.len() - 1);
        self.model.truncate(common);
        self.cached.truncate(common);
        Ok(common)
    }

    /// Generates after `prompt`, calling `on_token` with each token; `on_token` returning
    /// `Break` stops generation ([`StopReason::Cancelled`]).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(&Token) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        let mut generation = self.start(prompt, params)?;
        while let Some(token) = self.step(&mut generation)? {
            if on_token(&token).is_break() {
                generation.cancel();
            }
        }
        Ok(generation.into_outcome())
    }

    /// Checks `params`, evaluates `prompt` (see [`Session::prefill`]) and returns the generation,
    /// ready for [`Session::step`].
    pub fn start(&mut self, prompt: &[u32], params: &GenerateParams) -> Result<Generation> {
        resolve_now(self.start_async(prompt, params))
    }

    /// [`Session::start`] on a backend whose reads are awaited (WebGPU in the browser).
    pub async fn start_async(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
    ) -> Result<Generation> {
        params
            .sampler
            .validate()
            .map_err(|e| Error::Invalid(e.into()))?;
        if params.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::Invalid(alloc::format!(
                "at most {MAX_TOP_LOGPROBS} top log-probabilities per token"
            )));
        }
        let ctx = self.model.context_size();
        let mut prompt = prompt;
        if prompt.len() >= ctx {
            if !params.truncate_prompt {
                return Err(Error::ContextFull {
                    need: prompt.len() + 1,
                    ctx,
                });
            }
            // Keep the newest tokens, leaving room to answer.
            let keep = ctx - params.max_tokens.clamp(1, ctx / 2);
            prompt = &prompt[prompt.len() - keep..];
        }
        let (logits, chosen, cached_tokens) = if params.greedy_only() {
            let (id, cached) = self.prefill_greedy(prompt).await?;
            (Vec::new(), Some(id), cached)
        } else {
            let (logits, cached) = self.prefill_async(prompt).await?;
            (logits, None, cached)
        };
        Ok(Generation {
            sampler: Sampler::new(params.sampler.clone()),
            stream: TextStream::new(),
            held: String::new(),
            longest_stop: params.stop.iter().map(String::len).max().unwrap_or(0),
            recent: prompt.to_vec(),
            logits,
            chosen,
            pending: None,
            outcome: Outcome {
                prompt_tokens: prompt.len(),
                cached_tokens,
                tokens: Vec::new(),
                text: String::new(),
                stop: StopReason::MaxTokens,
            },
            phase: Phase::Running,
            params: params.clone(),
        })
    }

    /// The next token of `generation`, which this session started (with the same slot swapped
    /// in); `None` once it has finished. The last token may carry no id: the text held back
    /// until the end.
    pub fn step(&mut self, generation: &mut Generation) -> Result<Option<Token>> {
        resolve_now(self.step_async(generation))
    }

    /// [`Session::step`] on a backend whose reads are awaited (WebGPU in the browser).
    pub async fn step_async(&mut self, generation: &mut Generation) -> Result<Option<Token>> {
        let g = generation;
        match self.prepare(g, self.model.position()) {
            Prepared::Out(token) => Ok(token),
            Prepared::Evaluate(id) => {
                let evaluated = if g.params.greedy_only() {
                    let chosen = self.model.forward_greedy_async(&[id]).await;
                    chosen.map(|c| g.chosen = Some(c))
                } else {
                    let logits = self.model.forward_async(&[id], Logits::Last).await;
                    logits.map(|logits| g.logits = logits)
                };
                if let Err(e) = evaluated {
                    g.phase = Phase::Done;
                    return Err(e);
                }
                self.cached.push(id);
                Ok(self.sample(g))
            }
            Prepared::Sample => Ok(self.sample(g)),
        }
    }

    /// [`Session::step`] for several generations at once, each with its own slot (none of them
    /// swapped in): the tokens they need evaluated go through the model together
    /// ([`Qwen2::forward_each`]), so each weight matrix is read once for all of them. Returns
    /// each generation's next token (`None` once it has finished), in order; the results are
    /// the same as stepping each alone.
    pub fn step_each(
        &mut self,
        batch: &mut [(&mut Slot<B>, &mut Generation)],
    ) -> Result<Vec<Option<Token>>> {
        let mut decided: Vec<Option<Option<Token>>> = alloc::vec![None; batch.len()];
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for (i, (slot, g)) in batch.iter_mut().enumerate() {
            match self.prepare(g, slot.cache.position()) {
                Prepared::Out(token) => decided[i] = Some(token),
                Prepared::Evaluate(id) => {
                    ids.push(id);
                    rows.push(i);
                }
                Prepared::Sample => {}
            }
        }
        if !ids.is_empty() {
            let mut caches: Vec<&mut KvCache<B>> = batch
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| rows.contains(i))
                .map(|(_, (slot, _))| &mut slot.cache)
                .collect();
            let logits = match self.model.forward_each(&ids, &mut caches) {
                Ok(logits) => logits,
                Err(e) => {
                    for &i in &rows {
                        batch[i].1.phase = Phase::Done;
                    }
                    return Err(e);
                }
            };
            let vocab = self.model.config().vocab;
            for ((row, &i), &id) in logits.chunks_exact(vocab).zip(&rows).zip(&ids) {
                let (slot, g) = &mut batch[i];
                g.logits.clear();
                g.logits.extend_from_slice(row);
                slot.cached.push(id);
            }
        }
        Ok(batch
            .iter_mut()
            .zip(decided)
            .map(|((_, g), d)| d.unwrap_or_else(|| self.sample(g)))
            .collect())
    }

    /// The checks before a step, for a sequence whose cache holds `position` positions.
    fn prepare(&self, g: &mut Generation, position: usize) -> Prepared {
        match g.phase {
            Phase::Running => {}
            Phase::Flushing => return Prepared::Out(g.flush()),
            Phase::Done => return Prepared::Out(None),
        }
        if g.pending.is_some() && position >= self.model.context_size() {
            return Prepared::Out(g.finish(StopReason::ContextFull));
        }
        if g.outcome.tokens.len() >= g.params.max_tokens {
            return Prepared::Out(g.finish(StopReason::MaxTokens));
        }
        match g.pending.take() {
            Some(id) => Prepared::Evaluate(id),
            None => Prepared::Sample,
        }
    }

    /// Samples from `g.logits` and hands out the token (`None` when it ends generation with
    /// nothing held back): the half of a step after the model.
    fn sample(&self, g: &mut Generation) -> Option<Token> {
        let raw = g.params.logprobs.map(|_| g.logits.clone());
        let id = match g.chosen.take() {
            Some(id) => id,
            None => g.sampler.sample(&mut g.logits, &g.recent),
        };
        if !g.params.ignore_eos && self.tokenizer.is_end_of_generation(id) {
            return g.finish(StopReason::Eos);
        }
        g.outcome.tokens.push(id);
        g.recent.push(id);
        let bytes = self.tokenizer.token_bytes(id).unwrap_or_default();
        g.held.push_str(&g.stream.push(bytes));
        // Hand out what can no longer be part of a stop string.
        let stop_at = g
            .params
            .stop
            .iter()
            .filter_map(|s| g.held.find(s.as_str()))
            .min();
        let release =
            stop_at.unwrap_or_else(|| safe_prefix(&g.held, &g.params.stop, g.longest_stop));
        let text: String = g.held.drain(..release).collect();
        g.outcome.text.push_str(&text);
        let token = Token {
            id: Some(id),
            text,
            index: g.outcome.tokens.len() - 1,
            logprobs: raw.map(|raw| logprobs(&raw, id, g.params.logprobs.unwrap_or(0))),
        };
        if stop_at.is_some() {
            g.held.clear();
            g.outcome.stop = StopReason::StopString;
            g.phase = Phase::Done;
        } else {
            g.pending = Some(id);
        }
        Some(token)
    }
}

/// What a step needs once its checks are done.
enum Prepared {
    /// Nothing from the model: this is the step's result.
    Out(Option<Token>),
    /// The pending token must be evaluated before sampling.
    Evaluate(u32),
    /// The logits are ready.
    Sample,
}

/// The log-softmax of `logits` at `id`, and the `top` most likely entries'. NaN logits count as
/// impossible.
fn logprobs(logits: &[f32], id: u32, top: usize) -> TokenLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| libm::exp(f64::from(l - max)))
        .sum();
    let lse = f64::from(max) + libm::log(sum);
    let logprob = |l: f32| {
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            (f64::from(l) - lse) as f32
        }
    };
    // The best `top` so far, most likely first; ties keep the lower id first.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || (best.len() == top && l <= best[top - 1].1) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    TokenLogprobs {
        logprob: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&l| logprob(l)),
        top: best.into_iter().map(|(i, l)| (i, logprob(l))).collect(),
    }
}

/// How much of `held` can be handed out: all of it but the longest tail that begins one of the
/// stop strings, cut at a character boundary.
fn safe_prefix(held: &str, stops: &[String], longest: usize) -> usize {
    let from = held.len().saturating_sub(longest.saturating_sub(1));
    for start in from..held.len() {
        if held.is_char_boundary(start) && stops.iter().any(|s| s.starts_with(&held[start..])) {
            return start;
        }
    }
    held.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_prefix_holds_back_stop_beginnings() {
        let stops = alloc::vec![String::from("\n\n"), String::from("END")];
        assert_eq!(safe_prefix("hello\n", &stops, 3), 5);
        assert_eq!(safe_prefix("hello EN", &stops, 3), 6);
        assert_eq!(safe_prefix("hello", &stops, 3), 5);
        assert_eq!(safe_prefix("héé", &[], 0), 5);
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_first() {
        let logits = [1.0f32, 3.0, f32::NAN, 2.0, 3.0];
        let lp = logprobs(&logits, 3, 3);
        let sum: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|l| l.exp()).sum();
        let expect = |l: f64| (l - sum.ln()) as f32;
        assert!((lp.logprob - expect(2.0)).abs() < 1e-6);
        assert_eq!(
            lp.top.iter().map(|&(i, _)| i).collect::<Vec<_>>(),
            [1, 4, 3]
        );
        assert!((lp.top[0].1 - expect(3.0)).abs() < 1e-6);
        assert_eq!(logprobs(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(logprobs(&logits, 0, 0).top.is_empty());
    }
}
