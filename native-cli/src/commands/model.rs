//! What the inference commands share: finding the model (a path or `hf://`), mapping it, and
//! building the tokenizer and the model over the mapped bytes, on the CPU or (`--gpu`) the GPU.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apr_core::backend::KvType;
use apr_core::backend::cpu::Cpu;
use apr_core::backend::either::Either;
use apr_core::backend::gpu::{Gpu, GpuOptions};
use apr_core::file::MappedFile;
use apr_core::format::model::ModelFile;
use apr_core::generate::{GenerateParams, Outcome, Session};
use apr_core::model::Qwen2;
use apr_core::sample::SamplerConfig;
use apr_core::tokenizer::Tokenizer;

use super::import::Source;
use crate::args::{EngineArgs, SamplingArgs};
use crate::hub::{Hub, Pick};

/// A model file: a path, or `hf://ORG/REPO[/FILE]` (or a hub `/resolve/` URL) fetched through
/// the import cache, whose cached copy is used when the hub cannot be reached.
pub(crate) fn resolve(model: &str) -> Result<PathBuf> {
    let hub = Hub::from_env();
    match Source::parse(model, hub.endpoint())? {
        Source::Local(path) => Ok(path),
        Source::Hub {
            repo,
            revision,
            file,
        } => {
            let pick = file.as_deref().map_or(Pick::OnlyGguf, Pick::File);
            Ok(hub.fetch(&repo, &revision, pick)?.path)
        }
        Source::Url(url) => bail!("{url} is not a hub file: download it with `apr import` first"),
    }
}

/// A mapped model file and when its loading began.
pub(crate) struct Opened {
    pub(crate) file: MappedFile,
    pub(crate) started: Instant,
}

/// Maps the model file.
pub(crate) fn open(model: &str) -> Result<Opened> {
    let started = Instant::now();
    let path = resolve(model)?;
    let file =
        MappedFile::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Opened { file, started })
}

impl Opened {
    /// The parsed container.
    pub(crate) fn parse(&self) -> Result<ModelFile<'_>> {
        self.file
            .model()
            .with_context(|| format!("cannot read {}", self.file.path().display()))
    }
}

/// The tokenizer a model file carries.
pub(crate) fn tokenizer(model: &ModelFile<'_>) -> Result<Tokenizer> {
    Tokenizer::from_metadata(&model.metadata).context("the model's tokenizer cannot be built")
}

/// Threads to use: the flag, else the physical cores.
pub(crate) fn threads(flag: Option<u16>) -> usize {
    flag.map_or_else(crate::system::physical_cores, usize::from)
}

/// The backend the commands run on: the CPU, or the GPU with `--gpu`.
pub(crate) type Engine = Either<Cpu, Gpu>;

/// Where the model runs, as the flags say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Device {
    /// The CPU with this many threads.
    Cpu { threads: usize },
    /// The GPU: the adapter whose name contains this, or wgpu's preferred one.
    Gpu { adapter: Option<String> },
}

impl Device {
    /// The backend, with the GPU's adapter named on stderr. A GPU that cannot be opened is an
    /// error that says what was tried; nothing falls back to the CPU.
    pub(crate) fn backend(&self) -> Result<Engine> {
        Ok(match self {
            Self::Cpu { threads } => Either::Left(Cpu::new(*threads)),
            Self::Gpu { adapter } => {
                let gpu = Gpu::open(&GpuOptions {
                    adapter: adapter.clone(),
                    ..GpuOptions::default()
                })
                .context("--gpu: cannot run on the GPU")?;
                eprintln!("apr: GPU: {}", gpu.adapter().describe());
                Either::Right(gpu)
            }
        })
    }
}

/// Where a benchmark ran, as its JSON records it: the CPU's threads and SIMD level, or the GPU
/// adapter (with what one decode step costs it, where measured).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BackendInfo {
    /// `cpu` or `wgpu`.
    pub(crate) backend: &'static str,
    /// CPU threads (CPU only).
    pub(crate) threads: Option<usize>,
    /// The CPU's SIMD level (CPU only).
    pub(crate) simd: Option<&'static str>,
    /// The GPU adapter (GPU only).
    pub(crate) gpu: Option<apr_core::backend::gpu::AdapterSummary>,
}

impl BackendInfo {
    pub(crate) fn of(backend: &Engine) -> Self {
        match backend {
            Either::Left(cpu) => Self {
                backend: "cpu",
                threads: Some(cpu.threads()),
                simd: Some(cpu.isa().name()),
                gpu: None,
            },
            Either::Right(gpu) => Self {
                backend: "wgpu",
                threads: None,
                simd: None,
                gpu: Some(gpu.adapter().clone()),
            },
        }
    }
}

/// What a backend is, for reports: `"2 threads, avx512"` or the GPU adapter.
pub(crate) fn describe(backend: &Engine) -> String {
    match backend {
        Either::Left(cpu) => format!("{} threads, {}", cpu.threads(), cpu.isa().name()),
        Either::Right(gpu) => format!("GPU {}", gpu.adapter().describe()),
    }
}

/// The model on `device`, with a KV cache of `ctx` positions stored as `kv`.
pub(crate) fn load<'w>(
    model: &ModelFile<'w>,
    device: &Device,
    ctx: usize,
    kv: KvType,
) -> Result<Qwen2<'w, Engine>> {
    Qwen2::load_with_cache(model, device.backend()?, ctx, kv).context("cannot load the model")
}

/// A generation session and how long loading took.
pub(crate) fn session<'w>(
    model: &ModelFile<'w>,
    engine: &EngineArgs,
    started: Instant,
) -> Result<(Session<'w, Engine>, Duration)> {
    let tokenizer = tokenizer(model)?;
    let qwen = load(
        model,
        &engine.device(),
        engine.ctx_size as usize,
        engine.kv(),
    )?;
    Ok((Session::new(qwen, tokenizer), started.elapsed()))
}

/// The sampler the flags ask for; without --seed, a fresh one each run.
pub(crate) fn sampler(args: &SamplingArgs) -> Result<SamplerConfig> {
    let seed = args.seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    let config = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: 64,
        seed,
    };
    if let Err(why) = config.validate() {
        bail!("{why}");
    }
    Ok(config)
}

/// Generates after `ids`, writing each piece of text to stdout as it comes when `print` (then a
/// newline at the end). Generation stops early when `stop` is set (Ctrl-C) or stdout fails.
/// Returns the outcome and when the first token came.
pub(crate) fn generate_to_stdout(
    session: &mut Session<'_, Engine>,
    ids: &[u32],
    params: &GenerateParams,
    print: bool,
    stop: &AtomicBool,
) -> Result<(Outcome, Option<Instant>)> {
    let mut first = None;
    let mut out = io::stdout().lock();
    let mut write_error = None;
    let outcome = session.generate(ids, params, |token| {
        first.get_or_insert_with(Instant::now);
        if print
            && let Err(e) = out
                .write_all(token.text.as_bytes())
                .and_then(|()| out.flush())
        {
            write_error = Some(e);
            return ControlFlow::Break(());
        }
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write to stdout");
    }
    if print {
        writeln!(out)?;
        out.flush()?;
    }
    Ok((outcome, first))
}
