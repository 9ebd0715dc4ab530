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
