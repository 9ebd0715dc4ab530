//! The request and response bodies of the OpenAI-compatible endpoints, and the checks that turn
//! a request into generation parameters. Field names and shapes follow OpenAI's API (and
//! llama.cpp's server where OpenAI has nothing, as for `timings`).

use std::collections::BTreeMap;

use apr_core::chat_template::{Message, Role};
use apr_core::generate::{GenerateParams, MAX_TOP_LOGPROBS, Outcome, Timings, TokenLogprobs};
use apr_core::sample::SamplerConfig;
use apr_core::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;

/// Fields OpenAI's clients may send that change nothing here, so they are accepted and
/// ignored. Any other unknown field is an error rather than silently dropped.
const IGNORED_FIELDS: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "model",
];

/// Most stop strings per request (OpenAI's limit).
const MAX_STOPS: usize = 4;

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// The sampling fields both generation endpoints take.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Sampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    /// llama.cpp's extension: generate past end-of-generation tokens (benchmarks use it to get
    /// answers of exactly `max_tokens`).
    #[serde(default)]
    ignore_eos: bool,
    seed: Option<u64>,
    stop: Option<Stop>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    n: Option<u32>,
    logit_bias: Option<BTreeMap<String, Value>>,
}

/// `prompt`: text, token ids, or a one-element list of either.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, a list of token ids, or a list holding one of either"
)]
pub(crate) enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) prompt: Option<Prompt>,
    pub(crate) max_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) echo: bool,
    pub(crate) logprobs: Option<u32>,
    best_of: Option<u32>,
    suffix: Option<String>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// A chat message's `content`: text, or a list of parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of content parts")]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// One message of `messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    role: String,
    content: Option<Content>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "OpenAI's participant name: accepted, not rendered"
    )]
    name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) messages: Option<Vec<ChatMessage>>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: Option<u32>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    response_format: Option<Value>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    pub(crate) content: String,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "llama.cpp's flag: qwen2 adds no BOS, so it changes nothing"
    )]
    pub(crate) add_special: bool,
    #[serde(default = "yes")]
    pub(crate) parse_special: bool,
    #[serde(default)]
    pub(crate) with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetokenizeRequest {
    pub(crate) tokens: Vec<u32>,
}

fn reject_unknown(rest: &BTreeMap<String, Value>) -> Result<(), ApiError> {
    match rest.keys().find(|k| !IGNORED_FIELDS.contains(&k.as_str())) {
        Some(key) => Err(ApiError::invalid_param(
            key,
            format!("unknown parameter `{key}`"),
        )),
        None => Ok(()),
    }
}

fn unsupported_if(cond: bool, param: &str, why: &str) -> Result<(), ApiError> {
    if cond {
        Err(ApiError::invalid_param(param, format!("{param}: {why}")))
    } else {
        Ok(())
    }
}

impl Sampling {
    /// The generation parameters, checked, for at most `max_tokens` tokens.
    fn params(
        &self,
        max_tokens: usize,
        logprobs: Option<usize>,
    ) -> Result<GenerateParams, ApiError> {
        unsupported_if(
            self.n.is_some_and(|n| n != 1),
            "n",
            "only n = 1 is supported",
        )?;
        unsupported_if(
            self.presence_penalty.is_some_and(|p| p != 0.0),
            "presence_penalty",
            "not supported; use repeat_penalty",
        )?;
        unsupported_if(
            self.frequency_penalty.is_some_and(|p| p != 0.0),
            "frequency_penalty",
            "not supported; use repeat_penalty",
        )?;
        unsupported_if(
            self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()),
            "logit_bias",
            "not supported",
        )?;
        let defaults = SamplerConfig::default();
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be between 0 and 2, not {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(defaults.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid_param(
                "top_p",
                format!("top_p must be in (0, 1], not {top_p}"),
            ));
        }
        let min_p = self.min_p.unwrap_or(defaults.min_p);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid_param(
                "min_p",
                format!("min_p must be in [0, 1], not {min_p}"),
            ));
        }
        let repeat_penalty = self.repeat_penalty.unwrap_or(defaults.repeat_penalty);
        if !(repeat_penalty > 0.0 && repeat_penalty <= 10.0) {
            return Err(ApiError::invalid_param(
                "repeat_penalty",
                format!("repeat_penalty must be in (0, 10], not {repeat_penalty}"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param(
                "stop",
                format!("stop takes up to {MAX_STOPS} non-empty strings"),
            ));
        }
        Ok(GenerateParams {
            max_tokens,
            sampler: SamplerConfig {
                temperature,
                top_k: self.top_k.map_or(defaults.top_k, |k| k as usize),
                top_p,
                min_p,
                repeat_penalty,
                repeat_last_n: defaults.repeat_last_n,
                seed: self.seed.unwrap_or_else(random_seed),
            },
            stop,
            ignore_eos: self.ignore_eos,
            truncate_prompt: false,
            logprobs,
        })
    }
}

fn random_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}

/// `max_tokens`, checked against the context: the default, else the asked number if it fits.
fn max_tokens(asked: Option<u32>, default: usize, ctx: usize) -> Result<usize, ApiError> {
    match asked {
        None => Ok(default),
        Some(n) if n as usize > ctx => Err(ApiError::invalid_param(
            "max_tokens",
            format!("max_tokens is {n}, more than the context of {ctx} tokens"),
        )),
        Some(n) => Ok(n as usize),
    }
}

/// A checked completion request.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// The prompt's text, when `echo` asks for it in the answer.
    pub(crate) echo: Option<String>,
}

impl CompletionRequest {
    /// Checks the request and tokenizes its prompt.
    pub(crate) fn check(&self, tokenizer: &Tokenizer, ctx: usize) -> Result<Completion, ApiError> {
        reject_unknown(&self.rest)?;
        unsupported_if(
            self.best_of.is_some_and(|n| n != 1),
            "best_of",
            "only 1 is supported",
        )?;
        unsupported_if(self.suffix.is_some(), "suffix", "not supported")?;
        let logprobs = match self.logprobs {
            Some(n) if n as usize > 5 => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("logprobs is at most 5, not {n}"),
                ));
            }
            n => n.map(|n| n as usize),
        };
        unsupported_if(
            self.echo && logprobs.is_some(),
            "echo",
            "echo with logprobs is not supported",
        )?;
        let one = "one prompt per request: n = 1";
        let prompt = match &self.prompt {
            None => return Err(ApiError::invalid_param("prompt", "prompt is required")),
            Some(Prompt::Text(t)) => encode(tokenizer, t)?,
            Some(Prompt::Tokens(ids)) => ids.clone(),
            Some(Prompt::Texts(v)) => match v.as_slice() {
                [t] => encode(tokenizer, t)?,
                _ => return Err(ApiError::invalid_param("prompt", one)),
            },
            Some(Prompt::TokenLists(v)) => match v.as_slice() {
                [ids] => ids.clone(),
                _ => return Err(ApiError::invalid_param("prompt", one)),
            },
        };
        let echo = if self.echo {
            Some(
                tokenizer
                    .decode(&prompt, false)
                    .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?,
            )
        } else {
            None
        };
        check_prompt(tokenizer, &prompt, ctx)?;
        let max = max_tokens(self.max_tokens, 16, ctx)?;
        Ok(Completion {
            prompt,
            params: self.sampling.params(max, logprobs)?,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            echo,
        })
    }
}

/// A checked chat request.
#[derive(Debug)]
pub(crate) struct Chat {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// Whether each token's log-probabilities go in the answer.
    pub(crate) logprobs: bool,
}

impl ChatRequest {
    /// The conversation as the template's messages.
    pub(crate) fn messages(&self) -> Result<Vec<Message>, ApiError> {
        let messages = match &self.messages {
            None => return Err(ApiError::invalid_param("messages", "messages is required")),
            Some(m) if m.is_empty() => {
                return Err(ApiError::invalid_param("messages", "messages is empty"));
            }
            Some(m) => m,
        };
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let param = format!("messages[{i}]");
                let role = match m.role.as_str() {
                    "system" | "developer" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(ApiError::invalid_param(
                            &param,
                            format!("role {other:?} is not supported (system, user or assistant)"),
                        ));
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid_param(
                                        &param,
                                        format!(
                                            "content of type {kind:?} is not supported (text only)"
                                        ),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                Ok(Message::new(role, content))
            })
            .collect()
    }

    /// Checks the request; `rendered` is the conversation through the model's template.
    pub(crate) fn check(
        &self,
        tokenizer: &Tokenizer,
        rendered: &str,
        ctx: usize,
    ) -> Result<Chat, ApiError> {
        reject_unknown(&self.rest)?;
        unsupported_if(
            self.tools.is_some(),
            "tools",
            "tool calls are not supported",
        )?;
        unsupported_if(
            self.tool_choice.is_some(),
            "tool_choice",
            "tool calls are not supported",
        )?;
        unsupported_if(
            self.response_format
                .as_ref()
                .is_some_and(|f| f.get("type").and_then(Value::as_str) != Some("text")),
            "response_format",
            "only text is supported",
        )?;
        let top = match self.top_logprobs {
            Some(n) if n as usize > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("top_logprobs is at most {MAX_TOP_LOGPROBS}, not {n}"),
                ));
            }
            Some(_) if !self.logprobs => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ));
            }
            n => n.unwrap_or(0) as usize,
        };
        let prompt = encode(tokenizer, rendered)?;
        check_prompt(tokenizer, &prompt, ctx)?;
        // Without a limit, a chat answer may run to the end of the context.
        let max = max_tokens(self.max_completion_tokens.or(self.max_tokens), ctx, ctx)?;
        Ok(Chat {
            prompt,
            params: self.sampling.params(max, self.logprobs.then_some(top))?,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            logprobs: self.logprobs,
        })
    }
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))
}

/// The prompt must name real tokens, and leave room for at least one more in the context.
fn check_prompt(tokenizer: &Tokenizer, prompt: &[u32], ctx: usize) -> Result<(), ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    let vocab = tokenizer.vocab_size();
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("token {bad} is not in the vocabulary of {vocab}"),
        ));
    }
    if prompt.len() >= ctx {
        return Err(ApiError::context_length(format!(
            "the prompt is {} tokens, and the context holds {ctx}: shorten the prompt (or start \
             the server with a larger --ctx-size)",
            prompt.len()
        )));
    }
    Ok(())
}

/// `usage`.
#[derive(Debug, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) total_tokens: usize,
    pub(crate) prompt_tokens_details: PromptDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Serialize)]
pub(crate) struct PromptDetails {
    /// Prompt tokens found in the slot's cache and not evaluated again.
    pub(crate) cached_tokens: usize,
}

impl Usage {
    pub(crate) fn of(outcome: &Outcome) -> Self {
        Self {
            prompt_tokens: outcome.prompt_tokens,
            completion_tokens: outcome.tokens.len(),
            total_tokens: outcome.prompt_tokens + outcome.tokens.len(),
            prompt_tokens_details: PromptDetails {
                cached_tokens: outcome.cached_tokens,
            },
        }
    }
}

/// `timings`, the extension llama.cpp's server adds, with time to first token and time queued.
#[derive(Debug, Serialize)]
pub(crate) struct ApiTimings {
    pub(crate) cache_n: usize,
    pub(crate) prompt_n: usize,
    pub(crate) prompt_ms: f64,
    pub(crate) prompt_per_second: f64,
    pub(crate) predicted_n: usize,
    pub(crate) predicted_ms: f64,
    pub(crate) predicted_per_second: f64,
    pub(crate) ttft_ms: f64,
    pub(crate) queue_ms: f64,
}

impl ApiTimings {
    pub(crate) fn of(outcome: &Outcome, t: &Timings, queue_ms: f64) -> Self {
        Self {
            cache_n: outcome.cached_tokens,
            prompt_n: outcome.prompt_tokens - outcome.cached_tokens,
            prompt_ms: t.prompt_ms,
            prompt_per_second: t.prompt_tokens_per_s,
            predicted_n: outcome.tokens.len(),
            predicted_ms: t.decode_ms,
            predicted_per_second: t.decode_tokens_per_s,
            ttft_ms: t.ttft_ms,
            queue_ms,
        }
    }
}

/// A token's text for logprobs: its UTF-8 (lossy for a token that is part of a character).
fn piece(tokenizer: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tokenizer.token_bytes(id).unwrap_or_default()).into_owned()
}

/// A completion's `logprobs`, OpenAI's legacy shape.
#[derive(Debug, Default, Serialize)]
pub(crate) struct CompletionLogprobs {
    pub(crate) tokens: Vec<String>,
    pub(crate) token_logprobs: Vec<f32>,
    pub(crate) top_logprobs: Vec<BTreeMap<String, f32>>,
    pub(crate) text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Adds a token that starts `offset` bytes into the answer's text.
    pub(crate) fn push(
        &mut self,
        tokenizer: &Tokenizer,
        id: u32,
        lp: &TokenLogprobs,
        offset: usize,
    ) {
        self.tokens.push(piece(tokenizer, id));
        self.token_logprobs.push(lp.logprob);
        self.top_logprobs.push(
            lp.top
                .iter()
                .map(|&(t, l)| (piece(tokenizer, t), l))
                .collect(),
        );
        self.text_offset.push(offset);
    }
}

/// One entry of a chat answer's `logprobs.content`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatTokenLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
    pub(crate) top_logprobs: Vec<ChatTopLogprob>,
}

/// One alternative in `top_logprobs`.
#[derive(Debug, Serialize)]
pub(crate) struct ChatTopLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
}

impl ChatTokenLogprob {
    pub(crate) fn of(tokenizer: &Tokenizer, id: u32, lp: &TokenLogprobs) -> Self {
        let bytes = |t: u32| tokenizer.token_bytes(t).unwrap_or_default().to_vec();
        Self {
            token: piece(tokenizer, id),
            logprob: lp.logprob,
            bytes: bytes(id),
            top_logprobs: lp
                .top
                .iter()
                .map(|&(t, l)| ChatTopLogprob {
                    token: piece(tokenizer, t),
                    logprob: l,
                    bytes: bytes(t),
                })
                .collect(),
        }
    }
}

/// A chat answer's `logprobs`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ChatLogprobs {
    pub(crate) content: Vec<ChatTokenLogprob>,
}
