//! `apr rosetta convert IN OUT` (also `apr convert`): GGUF, SafeTensors and APR in any
//! direction, streamed tensor by tensor into a temporary file that is renamed into place.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use apr_core::convert::{self, Options, Planned};
use apr_core::dtype::GgmlType;
use apr_core::file::MappedFile;
use apr_core::format::Format;
use apr_core::format::apr::Compression;
use apr_core::format::model::ModelFile;
use apr_core::meta::Metadata;
use apr_core::verify::{VerifyReport, verify};
use apr_core::write::safetensors::SafetensorsWriter;
use apr_core::write::{OutTensor, TensorSink};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tempfile::NamedTempFile;

use crate::args::{CompressionArg, ConvertArgs, DtypeArg, TargetArg};
use crate::atomic;
use crate::output::{self, thousands};

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Small enough that the converter's multi-megabyte chunks bypass it (no extra copy), large
/// enough to gather headers, padding and small tensors into few writes.
const WRITE_BUFFER: usize = 256 << 10;
/// transformers' default shard size.
const DEFAULT_SHARD: u64 = 5_000_000_000;

/// What OUT names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    File(Format),
    /// A Hugging Face folder.
    Folder,
}

fn target_of(out: &Path) -> Result<Target> {
    let s = out.as_os_str().to_string_lossy();
    if out.is_dir() || s.ends_with('/') || s.ends_with(std::path::MAIN_SEPARATOR) {
        return Ok(Target::Folder);
    }
    let ext = out.extension().map(|e| e.to_string_lossy());
    Ok(Target::File(
        match ext.as_deref().and_then(Format::from_extension) {
            Some(format) => format,
            None => bail!(
                "cannot tell the output format of {}: use a .gguf, .safetensors or .apr file name, or a folder",
                out.display()
            ),
        },
    ))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub(crate) fn run(args: ConvertArgs) -> Result<()> {
    // Ctrl-C stops the conversion between chunks; the temporary output is then dropped.
    let _ = ctrlc::set_handler(|| CANCELLED.store(true, Ordering::SeqCst));
    let target = target_of(&args.output)?;
    if args.target == Some(TargetArg::Wasm) && target != Target::File(Format::Apr) {
        bail!("--target wasm writes an .apr file; name OUT with the .apr extension");
    }
    if args.compression.is_some_and(|c| c != CompressionArg::None)
        && target != Target::File(Format::Apr)
    {
        bail!("--compression applies to APR output only");
    }
    if same_file(&args.input, &args.output) {
        bail!("IN and OUT are the same file; refusing to overwrite the input");
    }
    if target != Target::Folder && args.output.exists() && !args.force {
        bail!(
            "{} exists; pass --force to replace it",
            args.output.display()
        );
    }
    let input = MappedFile::open(&args.input)
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    let model = input
        .model()
        .with_context(|| args.input.display().to_string())?;
    let format_out = match target {
        Target::File(f) => f,
        Target::Folder => Format::Safetensors,
    };
    let opts = Options {
        target: format_out,
        quantize: args.quantize,
        dtype: args.dtype.map(|d| match d {
            DtypeArg::F32 => GgmlType::F32,
            DtypeArg::F16 => GgmlType::F16,
            DtypeArg::Bf16 => GgmlType::BF16,
        }),
    };
    let plan = convert::plan(&model, &opts)?;
    let meta = convert::output_metadata(&model, &plan, &opts);
    let total = model
        .tensors
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.raw_size()));
    let show = !args.json && std::io::stderr().is_terminal();
    let bar = progress_bar(show, total, "converting");
    let started = Instant::now();

    let source_name = args
        .input
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut written: Vec<PathBuf> = Vec::new();
    match target {
        Target::File(_) => {
            let tmp = atomic::temp_beside(&args.output)?;
            {
                let file = BufWriter::with_capacity(WRITE_BUFFER, tmp.as_file());
                let (compression, zstd_level) = compression(&args);
                let output = convert::FileOutput {
                    compression,
                    zstd_level,
                    source_name: &source_name,
                };
                let mut sink = convert::file_sink(file, &model, &plan, &meta, &opts, &output)?;
                write(&input, &model, &plan, &mut *sink, &bar)?;
                sink.finish()?;
            }
            atomic::commit(tmp, &args.output, args.force)?;
            written.push(args.output.clone());
        }
        Target::Folder => {
            let files = write_folder(&input, &model, &plan, &meta, &args, &bar)?;
            written.extend(files);
        }
    }
    if let Some(dir) = &args.hf_dir {
        let weights = plan
            .iter()
            .map(|p| p.out.dtype)
            .find(|d| d.block_size() == 1);
        written.extend(write_side_files(dir, &meta, &model, weights, args.force)?);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    let verify_report = if args.verify {
        let bar = progress_bar(show, total_out(&plan), "verifying");
        let report = verify_output(&input, &model, &args.output, target, &bar)?;
        bar.finish_and_clear();
        Some(report)
    } else {
        None
    };
    let out_size: u64 = match target {
        Target::File(_) => fs::metadata(&args.output)?.len(),
        Target::Folder => weight_files(&args.output)?
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum(),
    };
    let in_size = model.file_size;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&json!({
            "input": {"path": args.input, "format": model.format, "bytes": in_size},
            "output": {
                "path": args.output,
                "format": format_out,
                "folder": target == Target::Folder,
                "bytes": out_size,
                "files": written,
            },
            "seconds": elapsed,
            "tensors": plan.iter().map(|p| json!({
                "name": p.out.name,
                "from": model.tensors[p.src].dtype,
                "to": p.out.dtype,
                "shape": p.out.shape,
                "note": p.note,
            })).collect::<Vec<_>>(),
            "verify": verify_report,
        }))?;
        s.push('\n');
        s
    } else {
        render(
            &args,
            &model,
            &plan,
            format_out,
            in_size,
            out_size,
            elapsed,
            verify_report.as_ref(),
        )
    };
    output::print(&text)?;
    if let Some(r) = verify_report
        && !r.pass
    {
        bail!("verification failed: {}", first_failure(&r));
    }
    Ok(())
}

fn compression(args: &ConvertArgs) -> (Compression, i32) {
    let wasm = args.target == Some(TargetArg::Wasm);
    let c = match args.compression {
        Some(CompressionArg::None) => Compression::None,
        Some(CompressionArg::Lz4) => Compression::Lz4,
        Some(CompressionArg::Zstd) => Compression::Zstd,
        None if wasm => Compression::Zstd,
        None => Compression::None,
    };
    let level = if args.optimize_size {
        convert::ZSTD_LEVEL_MAX
    } else {
        convert::ZSTD_LEVEL
    };
    (c, level)
}

fn progress_bar(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn total_out(plan: &[Planned]) -> u64 {
    plan.iter()
        .fold(0u64, |a, p| a.saturating_add(p.out.size().unwrap_or(0)))
}

fn write(
    input: &MappedFile,
    model: &ModelFile<'_>,
    plan: &[Planned],
    sink: &mut dyn TensorSink,
    bar: &ProgressBar,
) -> Result<()> {
    convert::write_all(
        model,
        plan,
        sink,
        &mut |n| bar.inc(n),
        &|| CANCELLED.load(Ordering::Relaxed),
        &mut |t, work| {
            let done = work(t);
            input.release(t.data);
            done
        },
    )?;
    Ok(())
}

/// Writes `model.safetensors` (or shards and an index) and the side files into a folder. Every
/// file goes to a temporary name first; all are renamed once all are written.
fn write_folder(
    input: &MappedFile,
    model: &ModelFile<'_>,
    plan: &[Planned],
    meta: &Metadata,
    args: &ConvertArgs,
    bar: &ProgressBar,
) -> Result<Vec<PathBuf>> {
    let dir = &args.output;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let limit = args.max_shard_size.unwrap_or(DEFAULT_SHARD);
    let mut shards: Vec<Vec<&Planned>> = vec![Vec::new()];
    let mut size = 0u64;
    for p in plan {
        let s = p.out.size()?;
        if size > 0 && size + s > limit {
            shards.push(Vec::new());
            size = 0;
        }
        size += s;
        if let Some(last) = shards.last_mut() {
            last.push(p);
        }
    }
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".into()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let mut staged: Vec<(NamedTempFile, PathBuf)> = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if path.exists() && !args.force {
            bail!("{} exists; pass --force to replace it", path.display());
        }
    }
    let st_meta = convert::safetensors_metadata(meta);
    for (shard, name) in shards.iter().zip(&names) {
        let path = dir.join(name);
        let tmp = atomic::temp_beside(&path)?;
        {
            let outs: Vec<OutTensor> = shard.iter().map(|p| p.out.clone()).collect();
            let file = BufWriter::with_capacity(WRITE_BUFFER, tmp.as_file());
            let mut sink = SafetensorsWriter::new(file, st_meta.clone(), &outs)?;
            let owned: Vec<Planned> = shard.iter().map(|p| (*p).clone()).collect();
            write(input, model, &owned, &mut sink, bar)?;
            Box::new(sink).finish()?;
        }
        staged.push((tmp, path));
    }
    if n > 1 {
        let mut map = BTreeMap::new();
        for (shard, name) in shards.iter().zip(&names) {
            for p in shard {
                map.insert(p.out.name.clone(), name.clone());
            }
        }
        let index = json!({
            "metadata": {"total_size": total_out(plan)},
            "weight_map": map,
        });
        let path = dir.join("model.safetensors.index.json");
        staged.push((stage_json(&path, &index)?, path));
    }
    let weights = plan
        .iter()
        .map(|p| p.out.dtype)
        .find(|d| d.block_size() == 1);
    staged.extend(side_files(dir, meta, model, weights)?);
    let mut done = Vec::new();
    for (tmp, path) in staged {
        atomic::commit(tmp, &path, true)?;
        done.push(path);
    }
    Ok(done)
}

fn stage_json(path: &Path, value: &serde_json::Value) -> Result<NamedTempFile> {
    let mut tmp = atomic::temp_beside(path)?;
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::io::Write::write_all(tmp.as_file_mut(), &text)?;
    Ok(tmp)
}

/// The four side files, staged.
fn side_files(
    dir: &Path,
    meta: &Metadata,
    model: &ModelFile<'_>,
    weights: Option<GgmlType>,
) -> Result<Vec<(NamedTempFile, PathBuf)>> {
    let dtype = match weights {
        Some(GgmlType::F16) => "float16",
        Some(GgmlType::BF16) => "bfloat16",
        _ => "float32",
    };
    let tied = model.tensor("output.weight").is_none();
    let config = apr_core::hf::config_json(meta, dtype, tied).map_err(anyhow::Error::msg)?;
    let tokenizer = apr_core::hf::tokenizer_json(meta).map_err(anyhow::Error::msg)?;
    let files = [
        ("config.json", config),
        ("tokenizer.json", tokenizer),
        (
            "tokenizer_config.json",
            apr_core::hf::tokenizer_config_json(meta),
        ),
        (
            "generation_config.json",
            apr_core::hf::generation_config_json(meta),
        ),
    ];
    files
        .into_iter()
        .map(|(name, value)| {
            let path = dir.join(name);
            Ok((stage_json(&path, &value)?, path))
        })
        .collect()
}

fn write_side_files(
    dir: &Path,
    meta: &Metadata,
    model: &ModelFile<'_>,
    weights: Option<GgmlType>,
    force: bool,
) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staged = side_files(dir, meta, model, weights)?;
    if !force && let Some((_, p)) = staged.iter().find(|(_, p)| p.exists()) {
        bail!("{} exists; pass --force to replace it", p.display());
    }
    let mut done = Vec::new();
    for (tmp, path) in staged {
        atomic::commit(tmp, &path, true)?;
        done.push(path);
    }
    Ok(done)
}

/// The weight files of a folder: the index's shards, or model.safetensors.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = fs::read_to_string(&index)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", index.display()))?;
        let mut files: Vec<String> = json["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if files.iter().any(|f| f.contains('/') || f.contains("..")) {
            bail!("{} names a file outside the folder", index.display());
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Ok(vec![dir.join("model.safetensors")])
}

fn verify_output(
    input: &MappedFile,
    model: &ModelFile<'_>,
    out: &Path,
    target: Target,
    bar: &ProgressBar,
) -> Result<VerifyReport> {
    let paths = match target {
        Target::File(_) => vec![out.to_path_buf()],
        Target::Folder => weight_files(out)?,
    };
    let maps = paths
        .iter()
        .map(|p| MappedFile::open(p).with_context(|| format!("cannot reopen {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let mut parts = maps
        .iter()
        .zip(&paths)
        .map(|(m, p)| {
            m.model()
                .with_context(|| format!("re-reading {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut combined = parts.remove(0);
    for part in parts {
        combined.tensors.extend(part.tensors);
    }
    let release = |part: &[u8]| {
        for m in &maps {
            m.release(part);
        }
    };
    Ok(verify(
        model,
        &combined,
        &mut |n| bar.inc(n),
        &mut |s, o, work| {
            let done = work(s, o);
            input.release(s.data);
            release(o.data);
            done
        },
    )?)
}

fn first_failure(r: &VerifyReport) -> String {
    if let Some(p) = r.problems.first() {
        return p.clone();
    }
    match r.tensors.iter().find(|t| !t.pass) {
        Some(t) if t.exact_required => format!(
            "{} is not bit-exact ({} → {})",
            t.name, t.src_dtype, t.out_dtype
        ),
        Some(t) => format!(
            "{}: relative error {:.3e} exceeds {:.1e} ({} → {})",
            t.name,
            t.max_rel_err,
            t.threshold.unwrap_or(0.0),
            t.src_dtype,
            t.out_dtype
        ),
        None => "unknown".into(),
    }
}

/// Per conversion kind: tensors, bit-exact ones, worst abs and rel error, limit, failures.
type Row = (usize, usize, f32, f32, Option<f32>, usize);

#[allow(clippy::too_many_arguments)]
fn render(
    args: &ConvertArgs,
    model: &ModelFile<'_>,
    plan: &[Planned],
    format_out: Format,
    in_size: u64,
    out_size: u64,
    seconds: f64,
    report: Option<&VerifyReport>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Converted {} ({}, {} bytes, {}) -> {} ({}, {} bytes, {}) in {seconds:.1} s",
        args.input.display(),
        model.format,
        thousands(in_size),
        output::bytes(in_size),
        args.output.display(),
        format_out,
        thousands(out_size),
        output::bytes(out_size),
    );
    let mut kinds: BTreeMap<(GgmlType, GgmlType), usize> = BTreeMap::new();
    for p in plan {
        *kinds
            .entry((model.tensors[p.src].dtype, p.out.dtype))
            .or_default() += 1;
    }
    let summary: Vec<String> = kinds
        .iter()
        .map(|((a, b), n)| {
            if a == b {
                format!("{n} {a} copied")
            } else {
                format!("{n} {a} -> {b}")
            }
        })
        .collect();
    let _ = writeln!(s, "Tensors: {} ({})", plan.len(), summary.join(", "));
    let notes: Vec<&Planned> = plan.iter().filter(|p| p.note.is_some()).collect();
    if !notes.is_empty() {
        let _ = writeln!(
            s,
            "Fallbacks: {} tensors ({})",
            notes.len(),
            notes.first().and_then(|p| p.note.as_deref()).unwrap_or("")
        );
    }
    if let Some(r) = report {
        let _ = writeln!(
            s,
            "\nVerify: {} ({} tensors in, {} out; {} problems)",
            if r.pass { "PASS" } else { "FAIL" },
            r.src_tensors,
            r.out_tensors,
            r.problems.len()
        );
        for p in &r.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        let mut rows: BTreeMap<(GgmlType, GgmlType), Row> = BTreeMap::new();
        for t in &r.tensors {
            let e =
                rows.entry((t.src_dtype, t.out_dtype))
                    .or_insert((0, 0, 0.0, 0.0, t.threshold, 0));
            e.0 += 1;
            e.1 += usize::from(t.bit_exact);
            e.2 = e.2.max(t.max_abs_err);
            e.3 = e.3.max(t.max_rel_err);
            e.5 += usize::from(!t.pass);
        }
        let _ = writeln!(
            s,
            "  {:<16} {:>7} {:>9} {:>12} {:>12} {:>9}  result",
            "conversion", "tensors", "bit-exact", "max abs err", "max rel err", "limit"
        );
        for ((a, b), (n, exact, abs, rel, limit, failed)) in rows {
            let _ = writeln!(
                s,
                "  {:<16} {:>7} {:>9} {:>12.3e} {:>12.3e} {:>9}  {}",
                format!("{a} -> {b}"),
                n,
                exact,
                abs,
                rel,
                limit.map_or_else(|| "exact".to_string(), |l| format!("{l}")),
                if failed == 0 {
                    "PASS".to_string()
                } else {
                    format!("FAIL ({failed})")
                }
            );
        }
        for t in r.tensors.iter().filter(|t| !t.pass).take(10) {
            let _ = writeln!(
                s,
                "  FAIL {}: {} -> {}, max abs {:.3e}, rel {:.3e}",
                t.name, t.src_dtype, t.out_dtype, t.max_abs_err, t.max_rel_err
            );
        }
    }
    s
}
