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
