//! The loaded model and its chat: the same core as `apr run --chat` and `apr chat` (the model's
//! chat template, the tokenizer, [`Session`]), one token at a time so Stop gets through.
//!
//! The model runs on WebGPU when the browser has it (and the user did not ask for the CPU),
//! else on the CPU in this worker; either way through the same awaited session calls, since a
//! WebGPU read-back completes only once the worker's event loop has run.

use apr_core::backend::KvType;
use apr_core::backend::cpu::Cpu;
use apr_core::backend::either::Either;
use apr_core::backend::gpu::{Gpu, GpuOptions};
use apr_core::chat_template::{ChatTemplate, Message, Role as CoreRole};
use apr_core::format::model::ModelFile;
use apr_core::generate::{GenerateParams, Session, StopReason};
use apr_core::info::ModelInfo;
use apr_core::model::Qwen2;
use apr_core::sample::SamplerConfig;
use apr_core::tokenizer::Tokenizer;
use web_sys::Blob;

use super::cache::{self, CacheWriter};
use super::{io, now_ms, post, stop_requested, yield_now};
use crate::protocol::{
    CacheEntry, ChatMessage, ChatParams, Device, Event, GenStats, ModelSource, Role, Task,
};
use crate::state::{cache_key_for_file, cache_key_for_url, url_file_name};

/// The backend the worker computes on, as the page names it.
pub(crate) fn backend_name() -> String {
    if cfg!(target_feature = "relaxed-simd") {
        "CPU · WebAssembly SIMD128 + relaxed FMA, 1 thread".into()
    } else if cfg!(target_feature = "simd128") {
        "CPU · WebAssembly SIMD128, 1 thread".into()
    } else {
        "CPU · WebAssembly without SIMD, 1 thread".into()
    }
}

/// What a model runs on here: the CPU (WebAssembly SIMD in this worker) or the browser's GPU.
type Engine = Either<Cpu, Gpu>;

/// The model file's bytes. They never move while the session borrows them (a boxed slice's
/// contents stay put when the box moves) and outlive it (see [`Loaded`]'s field order).
struct Bytes(Box<[u8]>);

/// A loaded model, ready to chat.
pub(crate) struct Loaded {
    // Fields drop in declaration order: the session, which borrows `_bytes`, goes first.
    session: Session<'static, Engine>,
    template: ChatTemplate,
    _bytes: Bytes,
}

/// The model on the device asked for, and the backend's name for the page. `Auto` tries WebGPU
/// first and takes the CPU when the browser has no WebGPU, its device fails, or the model does
/// not fit there; the name then says why.
async fn build(
    model: &ModelFile<'static>,
    device: Device,
    ctx: usize,
) -> Result<(Qwen2<'static, Engine>, String), String> {
    let cpu = || {
        Qwen2::load_with_cache(model, Either::Left(Cpu::new(1)), ctx, KvType::default())
            .map_err(|e| format!("cannot load the model: {e}"))
    };
    if device == Device::Cpu {
        return Ok((cpu()?, backend_name()));
    }
    match on_webgpu(model, ctx).await {
        Ok(found) => Ok(found),
        Err(why) if device == Device::Auto => {
            Ok((cpu()?, format!("{} · no WebGPU: {why}", backend_name())))
        }
        Err(why) => Err(format!("cannot run on WebGPU: {why}")),
    }
}

/// The model on the browser's GPU, tried with one token (which compiles every kernel and
/// surfaces any error the device reports) before it is offered.
async fn on_webgpu(
    model: &ModelFile<'static>,
    ctx: usize,
) -> apr_core::Result<(Qwen2<'static, Engine>, String)> {
    let gpu = Gpu::open_async(&GpuOptions::default()).await?;
    // Browsers seldom name the adapter; a fallback adapter (SwiftShader) is a CPU one.
    let adapter = gpu.adapter();
    let name = match (adapter.name.as_str(), adapter.device_type.as_str()) {
        ("", "Cpu") => "WebGPU · software adapter (no GPU)".to_string(),
        ("", _) => "WebGPU".to_string(),
        (named, _) => format!("WebGPU · {named}"),
    };
    let mut qwen = Qwen2::load_with_cache(model, Either::Right(gpu), ctx, KvType::default())?;
    qwen.forward_greedy_async(&[0]).await?;
    qwen.truncate(0);
    Ok((qwen, name))
}

/// Fetches, reads or takes from the cache the model's bytes, then builds the session.
pub(crate) async fn load(
    source: ModelSource,
    file: Option<Blob>,
    context: u32,
    device: Device,
) -> Result<Loaded, String> {
    let started = now_ms();
    let (bytes, name, from_cache) = bytes_of(source, file).await?;
    let bytes = Bytes(bytes.into_boxed_slice());
    // SAFETY: `bytes` owns this allocation and is stored in the same `Loaded` as the session,
    // after it, so it is freed only once the session is gone; the `'static` reference never
    // leaves `Loaded` (nothing hands out the session or its model).
    let view: &'static [u8] =
        unsafe { core::slice::from_raw_parts(bytes.0.as_ptr(), bytes.0.len()) };
    let model = ModelFile::parse(view).map_err(|e| format!("{name}: {e}"))?;
    let info = ModelInfo::from_model(&model, false);
    let tokenizer = Tokenizer::from_metadata(&model.metadata)
        .map_err(|e| format!("{name}: the model's tokenizer cannot be built: {e}"))?;
    let template = ChatTemplate::from_metadata(&model.metadata)
        .map_err(|e| format!("{name}: the model's chat template cannot be used: {e}"))?;
    let (qwen, backend) = build(&model, device, context.max(1) as usize)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let session = Session::new(qwen, tokenizer);
    post(
        &Event::Loaded {
            model: Box::new(info),
            name,
            load_ms: now_ms() - started,
            from_cache,
            context: session.model().context_size() as u32,
            backend,
        },
        None,
    );
    Ok(Loaded {
        session,
        template,
        _bytes: bytes,
    })
}

/// The model's bytes, its name, and whether they came from the cache.
async fn bytes_of(
    source: ModelSource,
    file: Option<Blob>,
) -> Result<(Vec<u8>, String, bool), String> {
    match source {
        ModelSource::File { name, size } => {
            let file = file.ok_or("no file came with the load request")?;
            let key = cache_key_for_file(&name, size);
            // A file already cached is read as dropped, and not written again.
            let mut writer = if cache::open(&key).await.is_some() {
                None
            } else {
                start_cache(&key, &name, "file").await
            };
            let bytes = io::read_blob(&file, &name, Task::Load, writer.as_mut());
            finish_cache(writer, bytes.is_ok()).await;
            Ok((bytes?, name, false))
        }
        ModelSource::Cache { key } => {
            let (entry, file) = cache::open(&key)
                .await
                .ok_or_else(|| format!("{key} is not in the cache (any more)"))?;
            let bytes = io::read_blob(&file, &entry.name, Task::Load, None)?;
            Ok((bytes, entry.name, true))
        }
        ModelSource::Url { url } => {
            let key = cache_key_for_url(&url);
            let name = match url_file_name(&url) {
                "" => "model".to_string(),
                n => n.to_string(),
            };
            if let Some((entry, file)) = cache::open(&key).await {
                let bytes = io::read_blob(&file, &entry.name, Task::Load, None)?;
                return Ok((bytes, entry.name, true));
            }
            let mut writer = start_cache(&key, &name, &url).await;
            let bytes = io::fetch(&url, writer.as_mut()).await;
            finish_cache(writer, bytes.is_ok()).await;
            Ok((bytes?, name, false))
        }
    }
}

/// A cache writer, or none (with the reason shown) when the cache cannot take the model.
async fn start_cache(key: &str, name: &str, origin: &str) -> Option<CacheWriter> {
    if !cache::available() {
        return None;
    }
    let entry = CacheEntry {
        key: key.to_string(),
        name: name.to_string(),
        bytes: 0,
        origin: origin.to_string(),
    };
    match CacheWriter::create(entry).await {
        Ok(w) => Some(w),
        Err(why) => {
            super::fail(Task::Cache, format!("the model will not be cached: {why}"));
            None
        }
    }
}

async fn finish_cache(writer: Option<CacheWriter>, complete: bool) {
    let Some(writer) = writer else { return };
    if !complete {
        writer.abandon().await;
        return;
    }
    match writer.commit().await {
        Ok(_) => cache::report().await,
        Err(why) => super::fail(Task::Cache, why),
    }
}

impl Loaded {
    /// Answers the conversation's last message, streaming tokens to the page.
    pub(crate) async fn chat(
        &mut self,
        id: u32,
        messages: &[ChatMessage],
        params: &ChatParams,
    ) -> Result<(), String> {
        let started = now_ms();
        let prompt = if params.raw {
            messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<String>()
        } else {
            let messages: Vec<Message> = messages
                .iter()
                .map(|m| {
                    let role = match m.role {
                        Role::System => CoreRole::System,
                        Role::User => CoreRole::User,
                        Role::Assistant => CoreRole::Assistant,
                    };
                    Message::new(role, m.content.clone())
                })
                .collect();
            self.template
                .render(&messages, true)
                .map_err(|e| format!("the chat template failed: {e}"))?
        };
        let ids = self
            .session
            .tokenizer()
            .encode(&prompt, true)
            .map_err(|e| e.to_string())?;
        let generate = GenerateParams {
            max_tokens: params.max_tokens as usize,
            sampler: SamplerConfig {
                temperature: params.temperature,
                top_k: params.top_k as usize,
                top_p: params.top_p,
                seed: params.seed,
                ..SamplerConfig::default()
            },
            ..GenerateParams::default()
        };
        let mut generation = self
            .session
            .start_async(&ids, &generate)
            .await
            .map_err(|e| e.to_string())?;
        let prefilled = now_ms();
        let mut first: Option<f64> = None;
        let mut last = prefilled;
        loop {
            if stop_requested() {
                generation.cancel();
            }
            let Some(token) = self
                .session
                .step_async(&mut generation)
                .await
                .map_err(|e| e.to_string())?
            else {
                break;
            };
            let at = now_ms();
            if token.id.is_some() {
                first.get_or_insert(at);
                last = at;
            }
            if token.id.is_some() || !token.text.is_empty() {
                post(
                    &Event::Token {
                        id,
                        token: token.id,
                        text: token.text,
                        at_ms: at - started,
                    },
                    None,
                );
            }
            yield_now().await;
        }
        let outcome = generation.into_outcome();
        let first_at = first.unwrap_or(prefilled);
        let computed = outcome.prompt_tokens.saturating_sub(outcome.cached_tokens);
        let per_s = |n: usize, ms: f64| {
            if ms > 0.0 {
                n as f64 * 1000.0 / ms
            } else {
                0.0
            }
        };
        let stats = GenStats {
            prompt_tokens: outcome.prompt_tokens,
            cached_tokens: outcome.cached_tokens,
            generated: outcome.tokens.len(),
            prefill_tok_s: per_s(computed, prefilled - started),
            decode_tok_s: per_s(outcome.tokens.len().saturating_sub(1), last - first_at),
            ttft_ms: first.map_or(0.0, |f| f - started),
        };
        let reason = match outcome.stop {
            StopReason::Cancelled => "cancelled",
            other => other.finish_reason(),
        };
        post(
            &Event::Done {
                id,
                reason: reason.into(),
                stats,
            },
            None,
        );
        Ok(())
    }
}
