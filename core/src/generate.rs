//! The one decode loop. The CLI, the server and the browser worker all generate through
//! [`Session::generate`]: it evaluates the prompt (reusing whatever prefix the KV cache already
//! holds), samples token after token, streams each with its text, and says why it stopped.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::ControlFlow;

use crate::backend::Backend;
use crate::model::{Logits, Qwen2};
use crate::sample::{Sampler, SamplerConfig};
use crate::tokenizer::{TextStream, Tokenizer};
use crate::{Error, Result};

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
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            truncate_prompt: false,
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
pub struct Token<'a> {
    /// The id; `None` for the final piece of text held back until generation ended (the tail of
    /// a character or of a possible stop string).
    pub id: Option<u32>,
    /// Text that became complete with this token (may be empty while a character or a possible
    /// stop string is pending).
    pub text: &'a str,
    /// 0 for the first generated token.
    pub index: usize,
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

    /// Forgets the cache.
    pub fn reset(&mut self) {
        self.cached.clear();
        self.model.truncate(0);
    }

    /// Evaluates `prompt` and returns the logits after it, reusing the longest prefix the cache
    /// already holds. Returns the logits and how many prompt tokens were reused.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
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
        let logits = self.model.forward(&prompt[common..], Logits::Last)?;
        self.cached.extend_from_slice(&prompt[common..]);
        Ok((logits, common))
    }

    /// Generates after `prompt`, calling `on_token` with each token; `on_token` returning
    /// `Break` stops generation ([`StopReason::Cancelled`]).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(&Token<'_>) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        params
            .sampler
            .validate()
            .map_err(|e| Error::Invalid(e.into()))?;
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
        let (mut logits, cached_tokens) = self.prefill(prompt)?;
        let mut sampler = Sampler::new(params.sampler.clone());
        let mut stream = TextStream::new();
        let mut outcome = Outcome {
            prompt_tokens: prompt.len(),
            cached_tokens,
            tokens: Vec::new(),
            text: String::new(),
            stop: StopReason::MaxTokens,
        };
        // Text generated but not yet handed out, because it may begin a stop string.
        let mut held = String::new();
        let longest_stop = params.stop.iter().map(String::len).max().unwrap_or(0);
        let mut recent: Vec<u32> = prompt.to_vec();
        loop {
            if outcome.tokens.len() >= params.max_tokens {
                outcome.stop = StopReason::MaxTokens;
                break;
            }
            let id = sampler.sample(&mut logits, &recent);
            if !params.ignore_eos && self.tokenizer.is_end_of_generation(id) {
                outcome.stop = StopReason::Eos;
                break;
            }
            outcome.tokens.push(id);
            recent.push(id);
            let bytes = self.tokenizer.token_bytes(id).unwrap_or_default();
            held.push_str(&stream.push(bytes));
            // Hand out what can no longer be part of a stop string.
            let mut stopped = false;
            let release = match params
                .stop
                .iter()
                .filter_map(|s| held.find(s.as_str()))
                .min()
            {
                Some(at) => {
                    stopped = true;
                    at
                }
                None => safe_prefix(&held, &params.stop, longest_stop),
            };
            let text: String = held.drain(..release).collect();
            outcome.text.push_str(&text);
            let flow = on_token(&Token {
                id: Some(id),
                text: &text,
                index: outcome.tokens.len() - 1,
            });
            if stopped {
                held.clear();
                outcome.stop = StopReason::StopString;
                break;
            }
            if flow.is_break() {
                outcome.stop = StopReason::Cancelled;
                break;
            }
            if self.model.position() >= ctx {
                outcome.stop = StopReason::ContextFull;
                break;
            }
            logits = self.model.forward(&[id], Logits::Last)?;
            self.cached.push(id);
        }
        // Whatever is left is plain text now.
        if outcome.stop != StopReason::StopString {
            held.push_str(&stream.finish());
            if !held.is_empty() {
                outcome.text.push_str(&held);
                let _ = on_token(&Token {
                    id: None,
                    text: &held,
                    index: outcome.tokens.len(),
                });
            }
        }
        Ok(outcome)
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
}
