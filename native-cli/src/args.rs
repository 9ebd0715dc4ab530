//! Every command's flags, with clap derive.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// apr: an LLM runtime and model-format toolkit for GGUF, SafeTensors and APR.
#[derive(Debug, Parser)]
#[command(name = "apr", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Fetch a model from the Hugging Face hub, a URL or a local path.
    ///
    /// Downloads land in the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub or
    /// ~/.cache/huggingface/hub), resume after an interruption and are checked against the size
    /// and sha256 the hub publishes. When the hub cannot be reached, a cached copy is used.
    /// Honours HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN.
    Import(ImportArgs),
    /// Describe a model file: architecture, dimensions, parameters, tensor types.
    Inspect(InspectArgs),
    /// Format tools: `apr rosetta convert IN OUT`.
    Rosetta {
        #[command(subcommand)]
        command: RosettaCommand,
    },
    /// Convert between GGUF, SafeTensors and APR (the same as `apr rosetta convert`).
    Convert(ConvertArgs),
    /// Run the 10 checks of a model file, from magic bytes to an inference smoke test.
    Check(CheckArgs),
    /// Decode every tensor and check its values: no NaN or Inf, shapes match the config,
    /// plausible norms and embeddings. Prints a per-tensor report.
    Validate(ValidateArgs),
    /// Generate text from a prompt (or one prompt per line of --prompts-file or stdin).
    ///
    /// Text streams to stdout as it is generated; timings go to stderr. Special tokens written
    /// in the prompt (<|im_start|>, ...) are parsed as such unless --no-special.
    Run(RunArgs),
    /// Chat with a model, turn by turn, through its own chat template.
    ///
    /// Commands: /clear forgets the conversation, /system TEXT sets the system prompt, /exit
    /// ends. Ctrl-C stops the current answer. When stdin is not a terminal, each line is a turn.
    Chat(ChatArgs),
    /// Run one forward pass over a prompt and write what happened inside to a JSON file:
    /// prompt tokens, the first token's top candidates, per-layer hidden-state statistics and
    /// per-op timings.
    Trace(TraceArgs),
    /// Benchmark throughput: load time (cold and warm), time to first token, prompt and decode
    /// speed over repeated runs, peak memory. Prints a table; --output writes the JSON report.
    ///
    /// Every run starts from an empty cache, evaluates a --prompt-tokens prompt and generates
    /// exactly --gen-tokens greedy tokens. --sweep adds decode speed against tokens in the cache
    /// (128, 512, 2048, 4096) at 1 thread and at --threads, written beside --output as
    /// NAME.sweep.csv and NAME.sweep.svg.
    Showcase(ShowcaseArgs),
    /// Latency percentiles: P50, P95 and P99 of the request, the first token and each token
    /// after it, over --iterations requests of the prompt plus exactly --max-tokens greedy
    /// tokens.
    Profile(ProfileArgs),
    /// Write the benchmark report (Markdown with SVG charts) from the showcase, profile and
    /// trace JSON files in a folder: summary, methodology, results table, format
    /// recommendations and lessons, every number measured.
    Report(ReportArgs),
    /// Serve the model over HTTP with an OpenAI-compatible API: /v1/completions,
    /// /v1/chat/completions (with Server-Sent Events streaming), /v1/models, /health, /metrics,
    /// /tokenize and /detokenize.
    ///
    /// One engine owns the model; --parallel request slots, each with its own KV cache of
    /// --ctx-size positions, decode together in one batch, and up to --max-queue more requests
    /// wait (beyond that: 429). SIGTERM or Ctrl-C stops accepting, lets running requests finish (up
    /// to --drain-timeout seconds) and exits 0. Every option can also come from a TOML --config
    /// file under the same name (`ctx-size = 2048`); flags win.
    Serve(ServeArgs),
    /// Print the token ids of a text.
    Tokenize(TokenizeArgs),
    /// Print the text of token ids.
    Detokenize(DetokenizeArgs),
    /// Evaluate a model.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// GPU tools: `apr gpu list` shows the adapters --gpu can use.
    Gpu {
        #[command(subcommand)]
        command: GpuCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GpuCommand {
    /// List the GPU adapters wgpu finds (Vulkan, Metal, DX12) with their limits and features.
    List(GpuListArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GpuListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EvalCommand {
    /// Perplexity over a text file, as llama.cpp's llama-perplexity computes it: windows of
    /// --ctx-size tokens that do not overlap, each scoring the second half of its tokens.
    Perplexity(PerplexityArgs),
}

/// Where the model runs and how much it remembers.
#[derive(Debug, Args, Clone)]
pub(crate) struct EngineArgs {
    /// Threads for the matrix products (default: the physical cores).
    #[arg(long, short = 't', value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,
    /// Positions the KV cache holds (prompt and answer together).
    #[arg(long, short = 'c', default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=131072))]
    pub(crate) ctx_size: u32,
    /// How the KV cache stores keys and values: f16 (half the memory, llama.cpp's arithmetic)
    /// or f32.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub(crate) kv_type: String,
    /// Run on the GPU through wgpu (Vulkan, Metal or DX12). With no usable adapter this fails:
    /// it never runs on the CPU instead.
    #[arg(long, conflicts_with = "threads")]
    pub(crate) gpu: bool,
    /// The GPU adapter whose name contains NAME, any case (see `apr gpu list`); implies --gpu.
    #[arg(long, value_name = "NAME")]
    pub(crate) gpu_adapter: Option<String>,
}

impl EngineArgs {
    /// The KV cache type asked for.
    pub(crate) fn kv(&self) -> apr_core::backend::KvType {
        self.kv_type.parse().unwrap_or_default()
    }

    /// Where the model runs.
    pub(crate) fn device(&self) -> crate::commands::model::Device {
        use crate::commands::model::Device;
        if self.gpu || self.gpu_adapter.is_some() {
            Device::Gpu {
                adapter: self.gpu_adapter.clone(),
            }
        } else {
            Device::Cpu {
                threads: crate::commands::model::threads(self.threads),
            }
        }
    }
}

/// How tokens are picked.
#[derive(Debug, Args, Clone)]
pub(crate) struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub(crate) temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub(crate) top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub(crate) top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub(crate) min_p: f32,
    /// Penalise the last 64 tokens by this factor (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) repeat_penalty: f32,
    /// Seed for sampling; the same seed gives the same text (default: a random seed).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The model: a .gguf, .safetensors or .apr file, or hf://ORG/REPO[/FILE] from the cache.
    pub(crate) model: String,
    /// The prompt. Without it, prompts come from --prompts-file or stdin, one per line.
    #[arg(long, short = 'p')]
    pub(crate) prompt: Option<String>,
    /// A file of prompts, one per line; each gets its own result.
    #[arg(long, conflicts_with = "prompt")]
    pub(crate) prompts_file: Option<PathBuf>,
    /// Most tokens to generate per prompt.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub(crate) max_tokens: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    /// Keep generating after end-of-generation tokens, up to --max-tokens.
    #[arg(long)]
    pub(crate) ignore_eos: bool,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub(crate) stop: Vec<String>,
    /// Print only the generated text: no timings, no banners.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    pub(crate) chat: bool,
    /// The system prompt for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub(crate) system: Option<String>,
    /// Treat special-token text in the prompt as plain text.
    #[arg(long)]
    pub(crate) no_special: bool,
    /// When the prompt does not fit the context, drop its oldest tokens instead of failing.
    #[arg(long)]
    pub(crate) truncate: bool,
    /// Print one JSON object per prompt instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// The system prompt (default: the template's own).
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, short = 'n', default_value_t = 1024)]
    pub(crate) max_tokens: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// The prompt (special tokens parsed).
    #[arg(long, short = 'p')]
    pub(crate) prompt: String,
    /// Where to write the JSON trace.
    #[arg(long)]
    pub(crate) trace_output: PathBuf,
    /// Add peak RSS and the bytes mapped from the file versus allocated.
    #[arg(long)]
    pub(crate) memory_profile: bool,
    /// Candidates listed for the first token.
    #[arg(long, default_value_t = 10)]
    pub(crate) top: usize,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ShowcaseArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// Timed runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) iterations: u32,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) warmup: u32,
    /// Prompt length of each run, in tokens.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=131_072))]
    pub(crate) prompt_tokens: u32,
    /// Tokens generated by each run.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=131_072))]
    pub(crate) gen_tokens: u32,
    /// Write the JSON report here (replacing it atomically).
    #[arg(long, short = 'o')]
    pub(crate) output: Option<PathBuf>,
    /// Also run the scaling study (decode speed against cache depth and thread count); needs
    /// --output, beside which its CSV and SVG are written.
    #[arg(long, requires = "output")]
    pub(crate) sweep: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// The prompt of every request (special tokens parsed unless --no-special).
    #[arg(long, short = 'p')]
    pub(crate) prompt: String,
    /// Tokens generated by each request.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub(crate) max_tokens: usize,
    /// Timed requests.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) iterations: u32,
    /// Untimed requests before them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) warmup: u32,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Treat special-token text in the prompt as plain text.
    #[arg(long)]
    pub(crate) no_special: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The folder of `apr showcase --output`, `apr profile --json` and `apr trace` JSON files
    /// (one of each per model format).
    pub(crate) bench_dir: PathBuf,
    /// The Markdown report to write; its charts go beside it as STEM-*.svg.
    #[arg(long, short = 'o', default_value = "report.md")]
    pub(crate) output: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The model file or hf:// reference (or `model` in --config).
    pub(crate) model: Option<String>,
    /// A TOML file with any of these options, named as the flags are (`port = 8001`).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1; 0.0.0.0 for every interface].
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Port to listen on [default: 8080; 0 picks a free one].
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "APR_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Positions each slot's KV cache holds (prompt and answer together) [default: 4096].
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u32).range(1..=131072))]
    pub(crate) ctx_size: Option<u32>,
    /// Requests generated at once, decoded together in one batch [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) parallel: Option<u16>,
    /// Requests that may wait for a slot; more are answered 429 [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub(crate) max_queue: Option<u32>,
    /// Allow browsers on these origins (or `*`) to call the API; without it, no CORS headers.
    #[arg(long, num_args = 1..)]
    pub(crate) cors_origin: Vec<String>,
    /// Threads for the matrix products [default: the physical cores].
    #[arg(long, short = 't', value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,
    /// How the KV cache stores keys and values [default: f16].
    #[arg(long, value_parser = ["f16", "f32"])]
    pub(crate) kv_type: Option<String>,
    /// Run on the GPU through wgpu (Vulkan, Metal or DX12); with no usable adapter the server
    /// does not start.
    #[arg(long, conflicts_with = "threads")]
    pub(crate) gpu: bool,
    /// The GPU adapter whose name contains NAME, any case (see `apr gpu list`); implies --gpu.
    #[arg(long, value_name = "NAME")]
    pub(crate) gpu_adapter: Option<String>,
    /// Seconds that running requests get to finish after SIGTERM [default: 30].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub(crate) drain_timeout: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct TokenizeArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// The text.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub(crate) text: Option<String>,
    /// A file holding the text.
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// Print a JSON array.
    #[arg(long)]
    pub(crate) json: bool,
    /// Treat special-token text as plain text.
    #[arg(long)]
    pub(crate) no_special: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DetokenizeArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// Token ids (spaces or commas between them).
    #[arg(required = true, num_args = 1..)]
    pub(crate) ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PerplexityArgs {
    /// The model file or hf:// reference.
    pub(crate) model: String,
    /// The text to score.
    pub(crate) file: PathBuf,
    /// Tokens per window.
    #[arg(long, short = 'c', default_value_t = 512, value_parser = clap::value_parser!(u32).range(4..=131072))]
    pub(crate) ctx_size: u32,
    /// Score at most this many windows.
    #[arg(long)]
    pub(crate) chunks: Option<usize>,
    /// Threads for the matrix products (default: all cores).
    #[arg(long, short = 't', value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RosettaCommand {
    /// Convert between GGUF, SafeTensors and APR. The direction comes from the file extensions
    /// (.gguf, .safetensors, .apr); an OUT that is a folder gets a Hugging Face model folder.
    ///
    /// Same-type tensors are copied byte for byte (GGUF <-> APR is bit-exact). To SafeTensors,
    /// quant blocks are dequantized to F32 (or --dtype). --quantize quantizes 2-D weights; rows
    /// that are not whole blocks fall back as llama.cpp does (Q4_K -> Q5_0, Q6_K -> Q8_0).
    Convert(ConvertArgs),
}

/// Tensor compression inside an APR file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

/// A float type for dequantized tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DtypeArg {
    F32,
    F16,
    Bf16,
}

/// A deployment target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TargetArg {
    /// The browser: an APR file with the tokenizer embedded, Zstd-compressed (pure-Rust decoding
    /// in wasm).
    Wasm,
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// The model to read (.gguf, .safetensors or .apr).
    pub(crate) input: PathBuf,
    /// Where to write: a .gguf, .safetensors or .apr file, or a folder (existing, or named with a
    /// trailing /) for a Hugging Face model folder.
    pub(crate) output: PathBuf,
    /// Re-read the output and compare it with the input: tensors, shapes, metadata and values
    /// (bit-exact where lossless, bounded error where lossy). Exit 1 on any difference.
    #[arg(long)]
    pub(crate) verify: bool,
    /// Tensor compression for APR output [default: none; zstd with --target wasm].
    #[arg(long, value_enum)]
    pub(crate) compression: Option<CompressionArg>,
    /// Quantize 2-D weights: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k, or q4_k_m
    /// (llama.cpp's mixture).
    #[arg(long, value_name = "TYPE", value_parser = parse_quantize)]
    pub(crate) quantize: Option<apr_core::convert::Quantize>,
    /// The float type for dequantized tensors, or for every tensor when converting between float
    /// types [default: f32].
    #[arg(long, value_enum, conflicts_with = "quantize")]
    pub(crate) dtype: Option<DtypeArg>,
    /// Build for a deployment target.
    #[arg(long, value_enum)]
    pub(crate) target: Option<TargetArg>,
    /// With --target wasm: the smallest file, at Zstd's highest level (slower to write, as fast
    /// to read).
    #[arg(long, requires = "target")]
    pub(crate) optimize_size: bool,
    /// Also write config.json, tokenizer.json, tokenizer_config.json and generation_config.json
    /// into DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) hf_dir: Option<PathBuf>,
    /// For folder output: split the weights into shards of at most this size (e.g. 2GB, 500MB)
    /// with a model.safetensors.index.json [default: 5GB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_shard_size: Option<u64>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub(crate) force: bool,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The model file.
    pub(crate) file: PathBuf,
    /// Print the stages as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The model file.
    pub(crate) file: PathBuf,
    /// Treat warnings (implausible but possible values) as failures.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_quantize(s: &str) -> Result<apr_core::convert::Quantize, String> {
    apr_core::convert::Quantize::parse(s).ok_or_else(|| {
        format!("unknown type {s:?}; use f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k or q4_k_m")
    })
}

/// `2GB`, `500MB`, `64KiB` or a byte count.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 2GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    let bytes = num * mult;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(format!("{s:?} is too small"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// hf://ORG/REPO[/FILE], an http(s):// URL, or a local path.
    pub(crate) source: String,
    /// Where to put the model. Without it, a hub import prints the path of the cached file and a
    /// URL import writes the URL's file name into the current folder.
    #[arg(short, long, value_name = "OUT")]
    pub(crate) output: Option<PathBuf>,
    /// For a hub repo given without a file: pick the GGUF whose name ends in this quantization,
    /// case-insensitively (q4_k_m matches *-q4_k_m.gguf).
    #[arg(long, short = 'q', value_name = "Q")]
    pub(crate) quantization: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The model file.
    pub(crate) file: PathBuf,
    /// Print the `apr.inspect.v1` JSON document (see docs/inspect-json.md) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list every tensor with its type, shape and size.
    #[arg(long)]
    pub(crate) tensors: bool,
}
