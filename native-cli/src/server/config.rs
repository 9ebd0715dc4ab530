//! `apr serve`'s settings: the flags, else the `--config` TOML file, else the defaults.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apr_core::backend::KvType;
use serde::Deserialize;

use crate::args::ServeArgs;
use crate::commands::model::Device;

/// The settings the server runs with.
#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub(crate) model: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) api_key: Option<String>,
    pub(crate) ctx_size: usize,
    pub(crate) parallel: usize,
    pub(crate) max_queue: usize,
    pub(crate) cors_origins: Vec<String>,
    pub(crate) device: crate::commands::model::Device,
    pub(crate) kv_type: KvType,
    pub(crate) drain_timeout: Duration,
}

/// The config file: the flags' names, kebab-case as on the command line (snake_case also
/// accepted). An unknown key is an error, so a typo does not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    model: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    #[serde(alias = "api_key")]
    api_key: Option<String>,
    #[serde(alias = "ctx_size")]
    ctx_size: Option<u32>,
    parallel: Option<u16>,
    #[serde(alias = "max_queue")]
    max_queue: Option<u32>,
    #[serde(alias = "cors_origin")]
    cors_origin: Option<Vec<String>>,
    threads: Option<u16>,
    #[serde(alias = "kv_type")]
    kv_type: Option<String>,
    gpu: Option<bool>,
    #[serde(alias = "gpu_adapter")]
    gpu_adapter: Option<String>,
    #[serde(alias = "drain_timeout")]
    drain_timeout: Option<u32>,
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // One line, `FILE:LINE:COLUMN: what`, rather than TOML's drawing of the spot.
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
        anyhow::anyhow!("{}:{line}:{column}: {}", path.display(), e.message().trim())
    })
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    low: T,
    high: T,
) -> Result<T> {
    if value < low || value > high {
        bail!("{key} = {value} is out of range ({low} to {high})");
    }
    Ok(value)
}

impl ServeConfig {
    /// Flags over the config file over the defaults.
    pub(crate) fn resolve(args: ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let Some(model) = args.model.or(file.model) else {
            bail!("name the model: `apr serve MODEL`, or `model = \"...\"` in --config");
        };
        let kv_type = args
            .kv_type
            .or(file.kv_type)
            .unwrap_or_else(|| "f16".into());
        let cors_origins = if args.cors_origin.is_empty() {
            file.cors_origin.unwrap_or_default()
        } else {
            args.cors_origin
        };
        let threads = args
            .threads
            .or(file.threads)
            .map(|t| in_range("threads", t, 1, 1024))
            .transpose()?;
        let gpu_adapter = args.gpu_adapter.or(file.gpu_adapter);
        let device = if args.gpu || file.gpu == Some(true) || gpu_adapter.is_some() {
            if threads.is_some() {
                bail!("--threads is for the CPU: it cannot go with --gpu");
            }
            Device::Gpu {
                adapter: gpu_adapter,
            }
        } else {
            Device::Cpu {
                threads: crate::commands::model::threads(threads),
            }
        };
        Ok(Self {
            model,
            host: args
                .host
                .or(file.host)
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: args.port.or(file.port).unwrap_or(8080),
            api_key: args.api_key.or(file.api_key).filter(|k| !k.is_empty()),
            ctx_size: in_range(
                "ctx-size",
                args.ctx_size.or(file.ctx_size).unwrap_or(4096),
                1,
                131_072,
            )? as usize,
            parallel: usize::from(in_range(
                "parallel",
                args.parallel.or(file.parallel).unwrap_or(4),
                1,
                64,
            )?),
            max_queue: in_range(
                "max-queue",
                args.max_queue.or(file.max_queue).unwrap_or(64),
                1,
                65_536,
            )? as usize,
            cors_origins,
            device,
            kv_type: kv_type
                .parse()
                .map_err(|_| anyhow::anyhow!("kv-type = {kv_type:?}: use f16 or f32"))?,
            drain_timeout: Duration::from_secs(u64::from(in_range(
                "drain-timeout",
                args.drain_timeout.or(file.drain_timeout).unwrap_or(30),
                0,
                3600,
            )?)),
        })
    }
}
