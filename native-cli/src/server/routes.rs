//! The HTTP side: routes, request checks, authentication, and turning the engine's events into
//! JSON answers or Server-Sent Events. Handlers stay thin: they check the request, queue it and
//! relay what the engine sends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apr_core::generate::Outcome;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::api::{
    ApiTimings, ChatLogprobs, ChatRequest, ChatTokenLogprob, CompletionLogprobs, CompletionRequest,
    DetokenizeRequest, TokenizeRequest, Usage,
};
use super::engine::{Event, Finished, Job, Loaded};
use super::error::ApiError;
use super::metrics::Metrics;

/// Largest request body.
pub(crate) const BODY_LIMIT: usize = 4 << 20;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    loaded: OnceLock<Arc<Loaded>>,
    jobs: mpsc::Sender<Job>,
    pub(crate) metrics: Arc<Metrics>,
    /// SHA-256 of the API key: comparing digests in constant time says nothing of its length.
    key_digest: Option<[u8; 32]>,
    parallel: usize,
    draining: AtomicBool,
}

impl AppState {
    pub(crate) fn new(
        jobs: mpsc::Sender<Job>,
        metrics: Arc<Metrics>,
        api_key: Option<&str>,
        parallel: usize,
    ) -> Self {
        Self {
            loaded: OnceLock::new(),
            jobs,
            metrics,
            key_digest: api_key.map(|k| Sha256::digest(k.as_bytes()).into()),
            parallel,
            draining: AtomicBool::new(false),
        }
    }

    /// The model is ready.
    pub(crate) fn set_loaded(&self, loaded: Arc<Loaded>) {
        let _ = self.loaded.set(loaded);
    }

    /// The server stops taking new work.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn loaded(&self) -> Result<&Arc<Loaded>, ApiError> {
        self.loaded
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// Requests waiting for a slot.
    pub(crate) fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Queues a generation; its events come back through the returned receiver.
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: apr_core::generate::GenerateParams,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let job = Job {
            prompt,
            params,
            events,
            received: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::busy(format!(
                "the server is busy: {} requests are already waiting; retry later",
                self.jobs.max_capacity()
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(ApiError::unavailable("the server is shutting down"))
            }
        }
    }
}

type Shared = Arc<AppState>;

/// Every route, with authentication, CORS and request counting.
pub(crate) fn router(state: Shared, cors_origins: &[String]) -> Result<Router> {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    if !cors_origins.is_empty() {
        let origins = if cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let list = cors_origins
                .iter()
                .map(|o| HeaderValue::from_str(o).with_context(|| format!("bad CORS origin {o:?}")))
                .collect::<Result<Vec<_>>>()?;
            AllowOrigin::list(list)
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers(Any)
                .max_age(Duration::from_secs(3600)),
        );
    }
    Ok(app
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state))
}

/// Counts each answer by route and status.
async fn count(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let response = next.run(req).await;
    st.metrics.request(&endpoint, response.status().as_u16());
    response
}

/// With an API key set, every route but /health needs `Authorization: Bearer KEY`.
async fn authenticate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let Some(expected) = &st.key_digest else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::unauthorized("missing API key: send `Authorization: Bearer KEY`")
            .into_response(),
        Some(key) => {
            let digest: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
            if bool::from(digest.ct_eq(expected)) {
                next.run(req).await
            } else {
                ApiError::unauthorized("invalid API key").into_response()
            }
        }
    }
}

/// A JSON body, read with a size limit and a deadline, and parsed with the failing field named.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let too_large = || ApiError::too_large(format!("the body is over {BODY_LIMIT} bytes"));
        if req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > BODY_LIMIT as u64)
        {
            return Err(too_large());
        }
        let body = Limited::new(req.into_body(), BODY_LIMIT);
        let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
            Err(_) => return Err(ApiError::timeout("the body did not arrive in time")),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large());
            }
            Ok(Err(e)) => return Err(ApiError::invalid(format!("cannot read the body: {e}"))),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let message = format!("invalid JSON body: {}", e.inner());
            if path == "." || path == "?" {
                ApiError::invalid(message)
            } else {
                ApiError::invalid_param(&path, format!("{path}: {message}"))
            }
        })?;
        de.end()
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
        Ok(Self(value))
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{} does not take {}",
        req.uri().path(),
        req.method()
    ))
}

async fn health(State(st): State<Shared>) -> Response {
    let (status, text) = if st.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if st.loaded.get().is_some() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (status, Json(json!({ "status": text }))).into_response()
}

async fn metrics(State(st): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.queued(), st.parallel),
    )
        .into_response()
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: [ModelEntry<'a>; 1],
}

#[derive(Debug, Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    meta: ModelMeta<'a>,
}

#[derive(Debug, Serialize)]
struct ModelMeta<'a> {
    format: apr_core::format::Format,
    params: u64,
    quantization: Option<&'a str>,
    context_length: usize,
    context_length_trained: Option<u64>,
    vocab_size: Option<u64>,
    layers: Option<u64>,
    hidden_size: Option<u64>,
    file_size: u64,
}

async fn models(State(st): State<Shared>) -> Result<Response, ApiError> {
    let m = st.loaded()?;
    let info = &m.info;
    Ok(Json(ModelList {
        object: "list",
        data: [ModelEntry {
            id: &m.id,
            object: "model",
            created: m.created,
            owned_by: "apr",
            meta: ModelMeta {
                format: info.format,
                params: info.parameters,
                quantization: info.quantization.as_deref(),
                context_length: m.ctx,
                context_length_trained: info.context_length,
                vocab_size: info.vocab_size,
                layers: info.layers,
                hidden_size: info.hidden_size,
                file_size: info.file_size,
            },
        }],
    })
    .into_response())
}

async fn tokenize(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let m = st.loaded()?;
    let ids = m
        .tokenizer
        .encode(&req.content, req.parse_special)
        .map_err(|e| ApiError::invalid_param("content", e.to_string()))?;
    if !req.with_pieces {
        return Ok(Json(json!({ "tokens": ids })).into_response());
    }
    let tokens: Vec<_> = ids
        .iter()
        .map(|&id| {
            let bytes = m.tokenizer.token_bytes(id).unwrap_or_default();
            // llama.cpp's shape: the piece as text, or as bytes when it is not whole UTF-8.
            let piece = match std::str::from_utf8(bytes) {
                Ok(text) => json!(text),
                Err(_) => json!(bytes),
            };
            json!({ "id": id, "piece": piece })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

async fn detokenize(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let m = st.loaded()?;
    let vocab = m.tokenizer.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token {bad} is not in the vocabulary of {vocab}"),
        ));
    }
    let content = m
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid_param("tokens", e.to_string()))?;
    Ok(Json(json!({ "content": content })).into_response())
}

/// Fields every answer and chunk carries.
#[derive(Debug, Clone)]
struct Header {
    id: String,
    created: u64,
    model: String,
}

impl Header {
    fn new(prefix: &str, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            id: format!("{prefix}-{}", request_id(created)),
            created: created.as_secs(),
            model: model.to_owned(),
        }
    }

    /// An answer or chunk of type `object` around one choice.
    fn around(&self, object: &str, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
        })
    }
}

/// 24 letters and digits, different for every request of this process.
fn request_id(now: Duration) -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut x = (now.as_nanos() as u64)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(std::process::id()) << 40;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..24)
        .map(|_| {
            // SplitMix64.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            char::from(ALPHABET[((z ^ (z >> 31)) % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

const FINGERPRINT: &str = concat!("apr-", env!("CARGO_PKG_VERSION"));

/// Waits for the end of a generation, handing each token to `on_token`.
async fn finish(
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut on_token: impl FnMut(apr_core::generate::Token),
) -> Result<Finished, ApiError> {
    loop {
        match rx.recv().await {
            Some(Event::Token(t)) => on_token(t),
            Some(Event::Done(f)) => return Ok(*f),
            Some(Event::Failed(why)) => return Err(ApiError::internal(why)),
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
}

/// How a stream's chunks look: `wrap` puts a choice inside the fields every chunk carries, and
/// `closing` is the choice of the last chunk, which gets the finish reason.
struct Chunks<W> {
    wrap: W,
    closing: Value,
    include_usage: bool,
}

impl<W: Fn(Value) -> Value> Chunks<W> {
    fn choice(&self, choice: Value) -> SseEvent {
        chunk(&(self.wrap)(choice))
    }

    /// The last chunk (finish reason and timings), then usage when asked for.
    fn close(&self, done: &Finished, out: &mut VecDeque<SseEvent>) {
        let o = &done.outcome;
        let mut closing = self.closing.clone();
        closing["finish_reason"] = json!(o.stop.finish_reason());
        let mut last = (self.wrap)(closing);
        last["timings"] = json!(ApiTimings::of(o, &done.timings, done.queue_ms));
        out.push_back(chunk(&last));
        if self.include_usage {
            let mut usage = (self.wrap)(Value::Null);
            usage["choices"] = json!([]);
            usage["usage"] = json!(Usage::of(o));
            out.push_back(chunk(&usage));
        }
    }
}

/// An event stream from the engine's events: `on_token` turns each token into chunks; the end
/// of generation becomes the closing chunks, a failure an error event, and `data: [DONE]` ends
/// the stream.
fn sse<W: Fn(Value) -> Value + Send + 'static>(
    first: Vec<SseEvent>,
    rx: mpsc::UnboundedReceiver<Event>,
    chunks: Chunks<W>,
    on_token: impl FnMut(apr_core::generate::Token, &Chunks<W>, &mut VecDeque<SseEvent>)
    + Send
    + 'static,
) -> Response {
    struct Pump<W, F> {
        rx: mpsc::UnboundedReceiver<Event>,
        out: VecDeque<SseEvent>,
        chunks: Chunks<W>,
        on_token: F,
        over: bool,
    }
    let pump = Pump {
        rx,
        out: first.into(),
        chunks,
        on_token,
        over: false,
    };
    let stream = futures_util::stream::unfold(pump, |mut p| async move {
        loop {
            if let Some(e) = p.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), p));
            }
            if p.over {
                return None;
            }
            match p.rx.recv().await {
                Some(Event::Token(t)) => {
                    (p.on_token)(t, &p.chunks, &mut p.out);
                    continue;
                }
                Some(Event::Done(done)) => p.chunks.close(&done, &mut p.out),
                Some(Event::Failed(why)) => p.out.push_back(failed(why)),
                None => p.out.push_back(failed("the engine stopped".into())),
            }
            p.out.push_back(SseEvent::default().data("[DONE]"));
            p.over = true;
        }
    });
    sse_response(stream)
}

fn sse_response(
    stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// An error inside a stream that has already begun: OpenAI's error body as an event.
fn failed(why: String) -> SseEvent {
    data(&ApiError::internal(why).to_json())
}

fn data(json: &str) -> SseEvent {
    SseEvent::default().data(json)
}

fn chunk(value: &impl Serialize) -> SseEvent {
    data(&serde_json::to_string(value).unwrap_or_default())
}

/// `POST /v1/completions`.
async fn completions(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let m = st.loaded()?.clone();
    let c = req.check(&m.tokenizer, m.ctx)?;
    let head = Header::new("cmpl", &m.id);
    let want_logprobs = c.params.logprobs.is_some();
    let rx = st.submit(c.prompt, c.params)?;
    let echo = c.echo.unwrap_or_default();
    if !c.stream {
        let mut logprobs = CompletionLogprobs::default();
        let mut offset = echo.len();
        let done = finish(rx, |t| {
            if let (Some(id), Some(lp)) = (t.id, &t.logprobs) {
                logprobs.push(&m.tokenizer, id, lp, offset);
            }
            offset += t.text.len();
        })
        .await?;
        let o = &done.outcome;
        let mut answer = head.around(
            "text_completion",
            json!({
                "text": format!("{echo}{}", o.text),
                "index": 0,
                "logprobs": want_logprobs.then_some(&logprobs),
                "finish_reason": o.stop.finish_reason(),
            }),
        );
        answer["usage"] = json!(Usage::of(o));
        answer["timings"] = json!(ApiTimings::of(o, &done.timings, done.queue_ms));
        return Ok(Json(answer).into_response());
    }
    let chunks = Chunks {
        wrap: move |choice: Value| head.around("text_completion", choice),
        closing: json!({"text": "", "index": 0, "logprobs": null}),
        include_usage: c.include_usage,
    };
    let mut first = Vec::new();
    if !echo.is_empty() {
        first.push(chunks.choice(json!({
            "text": echo, "index": 0, "logprobs": null, "finish_reason": null,
        })));
    }
    let mut offset = echo.len();
    Ok(sse(first, rx, chunks, move |t, chunks, out| {
        let logprobs = match (t.id, &t.logprobs) {
            (Some(id), Some(lp)) => {
                let mut one = CompletionLogprobs::default();
                one.push(&m.tokenizer, id, lp, offset);
                Some(one)
            }
            _ => None,
        };
        offset += t.text.len();
        if !t.text.is_empty() || logprobs.is_some() {
            out.push_back(chunks.choice(json!({
                "text": t.text, "index": 0, "logprobs": logprobs, "finish_reason": null,
            })));
        }
    }))
}

/// `POST /v1/chat/completions`.
async fn chat(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let m = st.loaded()?.clone();
    let messages = req.messages()?;
    let template = m
        .template
        .as_ref()
        .map_err(|why| ApiError::invalid(format!("{why}; /v1/completions takes plain prompts")))?;
    let rendered = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    let c = req.check(&m.tokenizer, &rendered, m.ctx)?;
    let head = Header::new("chatcmpl", &m.id);
    let rx = st.submit(c.prompt, c.params)?;
    let want_logprobs = c.logprobs;
    if !c.stream {
        let mut logprobs = ChatLogprobs::default();
        let done = finish(rx, |t| {
            if let (Some(id), Some(lp)) = (t.id, &t.logprobs) {
                logprobs
                    .content
                    .push(ChatTokenLogprob::of(&m.tokenizer, id, lp));
            }
        })
        .await?;
        let o: &Outcome = &done.outcome;
        let mut answer = head.around(
            "chat.completion",
            json!({
                "index": 0,
                "message": { "role": "assistant", "content": o.text },
                "logprobs": want_logprobs.then_some(&logprobs),
                "finish_reason": o.stop.finish_reason(),
            }),
        );
        answer["usage"] = json!(Usage::of(o));
        answer["timings"] = json!(ApiTimings::of(o, &done.timings, done.queue_ms));
        return Ok(Json(answer).into_response());
    }
    let chunks = Chunks {
        wrap: move |choice: Value| head.around("chat.completion.chunk", choice),
        closing: json!({"index": 0, "delta": {}, "logprobs": null}),
        include_usage: c.include_usage,
    };
    let first = vec![chunks.choice(json!({
        "index": 0,
        "delta": { "role": "assistant", "content": "" },
        "logprobs": null,
        "finish_reason": null,
    }))];
    Ok(sse(first, rx, chunks, move |t, chunks, out| {
        let logprobs = match (t.id, &t.logprobs) {
            (Some(id), Some(lp)) => Some(ChatLogprobs {
                content: vec![ChatTokenLogprob::of(&m.tokenizer, id, lp)],
            }),
            _ => None,
        };
        if !t.text.is_empty() || logprobs.is_some() {
            out.push_back(chunks.choice(json!({
                "index": 0,
                "delta": { "content": t.text },
                "logprobs": logprobs,
                "finish_reason": null,
            })));
        }
    }))
}
