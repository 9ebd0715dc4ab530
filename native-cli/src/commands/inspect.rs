//! `apr inspect FILE [--json] [--tensors]`: what a model file is.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use apr_core::file::MappedFile;
use apr_core::info::ModelInfo;

use crate::args::InspectArgs;
use crate::output::{self, bytes, short_count, thousands};

pub(crate) fn run(args: InspectArgs) -> Result<()> {
    let path = &args.file;
    let file = MappedFile::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let model = file.model().with_context(|| path.display().to_string())?;
    let info = ModelInfo::from_model(&model, args.tensors);
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&info)?;
        json.push('\n');
        json
    } else {
        render(&info, &path.display().to_string())
    };
    output::print(&text)?;
    Ok(())
}

/// The human-readable report.
fn render(info: &ModelInfo, path: &str) -> String {
    let unknown = || "unknown".to_string();
    let count = |v: Option<u64>| v.map_or_else(unknown, thousands);
    let mut rows: Vec<(&str, String)> = vec![
        ("Model", info.name.clone().unwrap_or_else(unknown)),
        (
            "File",
            format!(
                "{path} ({} bytes, {})",
                thousands(info.file_size),
                bytes(info.file_size)
            ),
        ),
        (
            "Format",
            match (info.format_version, &info.compression) {
                // SafeTensors has no version number.
                (0, _) => info.format.to_string(),
                (v, Some(c)) if c != "none" => format!("{} v{v}, {c} compressed", info.format),
                (v, _) => format!("{} v{v}", info.format),
            },
        ),
        (
            "Quantization",
            info.quantization.clone().unwrap_or_else(unknown),
        ),
    ];
    let params = format!(
        "{} ({})",
        short_count(info.parameters),
        thousands(info.parameters)
    );
    if info.lm_head.tied {
        rows.push(("Parameters", params));
        rows.push(("LM head", format!("tied: reuses {}", info.lm_head.tensor)));
    } else {
        let body = info.parameters - info.lm_head.parameters;
        rows.push((
            "Parameters",
            format!("{params}; {} without the LM head", short_count(body)),
        ));
        rows.push((
            "LM head",
            format!(
                "separate {} ({} parameters), not tied to the embedding",
                info.lm_head.tensor,
                short_count(info.lm_head.parameters)
            ),
        ));
    }
    rows.extend([
        (
            "Vocabulary",
            info.vocab_size
                .map_or_else(unknown, |v| format!("{} tokens", thousands(v))),
        ),
        (
            "Architecture",
            info.architecture.clone().unwrap_or_else(unknown),
        ),
        ("Layers", count(info.layers)),
        ("Hidden Size", count(info.hidden_size)),
        ("FFN Size", count(info.feed_forward_size)),
        ("Attention Heads", count(info.attention_heads)),
        ("KV Heads", count(info.kv_heads)),
        ("Context Length", count(info.context_length)),
        (
            "RoPE Theta",
            info.rope_theta.map_or_else(unknown, |v| v.to_string()),
        ),
        (
            "RMS Norm Eps",
            info.rms_norm_eps.map_or_else(unknown, |v| format!("{v:e}")),
        ),
    ]);
    let dtypes: Vec<String> = info
        .dtypes
        .iter()
        .map(|d| format!("{} ×{}", d.dtype, d.count))
        .collect();
    rows.push((
        "Tensors",
        format!("{} ({})", info.tensor_count, dtypes.join(", ")),
    ));
    rows.push(("Metadata", format!("{} keys", info.metadata_count)));

    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{:<width$} {value}", format!("{label}:"));
    }
    if let Some(tensors) = &info.tensors {
        let name_width = tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "\n{:<name_width$}  {:<7}  {:<16}  {:>12}",
            "name", "dtype", "shape", "bytes"
        );
        for t in tensors {
            let shape = format!("{:?}", t.shape);
            let _ = writeln!(
                out,
                "{:<name_width$}  {:<7}  {:<16}  {:>12}",
                t.name,
                t.dtype.name(),
                shape,
                thousands(t.bytes)
            );
        }
    }
    out
}
