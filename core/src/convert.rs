//! Conversion between GGUF, SafeTensors and APR: choosing each tensor's output type, rewriting
//! the metadata, and streaming the tensors through a [`TensorSink`] (native only).
//!
//! Rules:
//! - Same type in and out: the bytes are copied unchanged (GGUF ↔ APR is bit-exact).
//! - To SafeTensors, ggml quant blocks are dequantized to F32, or to `--dtype`.
//! - `--quantize TYPE` quantizes every 2-D weight; 1-D tensors (norms, biases) stay F32. A matrix
//!   whose rows are not a whole number of blocks falls back as llama.cpp does: Q4_K → Q5_0,
//!   Q6_K → Q8_0, and a 32-block type → F16.
//! - `--quantize q4_k_m` is llama.cpp's mixture: Q6_K for `output.weight` and for `attn_v` and
//!   `ffn_down` in the layers `use_more_bits` picks, Q4_K elsewhere, with the fallbacks above.

use std::io::{Read, Seek, Write};

use crate::dtype::GgmlType;
use crate::format::Format;
use crate::format::apr::Compression;
use crate::format::model::{ModelFile, Tensor};
use crate::meta::{MetaValue, Metadata};
use crate::names::gguf_to_hf;
use crate::quant::{can_dequantize, can_quantize, dequantize, quantize};
use crate::write::apr::AprWriter;
use crate::write::gguf::GgufWriter;
use crate::write::safetensors::SafetensorsWriter;
use crate::write::{OutTensor, TensorSink};
use crate::{Error, Result};

/// What `--quantize` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantize {
    /// One type for every 2-D weight.
    Type(GgmlType),
    /// llama.cpp's Q4_K_M mixture.
    Q4KM,
}

impl Quantize {
    /// Parses `f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q6_k|q4_k_m`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "q4_k_m" => Self::Q4KM,
            "f32" => Self::Type(GgmlType::F32),
            "f16" => Self::Type(GgmlType::F16),
            "bf16" => Self::Type(GgmlType::BF16),
            "q8_0" => Self::Type(GgmlType::Q8_0),
            "q4_0" => Self::Type(GgmlType::Q4_0),
            "q4_1" => Self::Type(GgmlType::Q4_1),
            "q5_0" => Self::Type(GgmlType::Q5_0),
            "q5_1" => Self::Type(GgmlType::Q5_1),
            "q4_k" => Self::Type(GgmlType::Q4_K),
            "q6_k" => Self::Type(GgmlType::Q6_K),
            _ => return None,
        })
    }

    /// The `general.file_type` (llama_ftype) this scheme produces.
    pub fn file_type(self) -> u32 {
        match self {
            Self::Q4KM => 15,
            Self::Type(t) => file_type_of(t).unwrap_or(0),
        }
    }
}

/// The llama_ftype for a file whose weights are all `t`.
pub fn file_type_of(t: GgmlType) -> Option<u32> {
    Some(match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 14,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => return None,
    })
}

/// Conversion options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The output container.
    pub target: Format,
    /// `--quantize`.
    pub quantize: Option<Quantize>,
    /// `--dtype`: the float type for dequantized (or all float) tensors.
    pub dtype: Option<GgmlType>,
}

/// One tensor of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Index into the source's tensors.
    pub src: usize,
    /// GGUF name.
    pub name: String,
    /// What to write.
    pub out: OutTensor,
    /// Why the type differs from the one asked for, if it does.
    pub note: Option<String>,
}

/// llama.cpp's `use_more_bits`.
fn use_more_bits(i: u64, n: u64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i.wrapping_sub(n / 8)) % 3 == 2
}

/// The layer number of `blk.N.…`.
fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type a 2-D weight gets under `scheme`, before row-size fallbacks.
fn wanted(scheme: Quantize, name: &str, n_layers: u64) -> GgmlType {
    match scheme {
        Quantize::Type(t) => t,
        Quantize::Q4KM => {
            let more = |name: &str| layer_of(name).is_some_and(|i| use_more_bits(i, n_layers));
            let more_bits = (name.ends_with(".attn_v.weight")
                || name.ends_with(".ffn_down.weight"))
                && more(name);
            if name == "output.weight" || more_bits {
                GgmlType::Q6_K
            } else {
                GgmlType::Q4_K
            }
        }
    }
}

/// llama.cpp's fallback for rows that are not whole blocks.
fn fallback(t: GgmlType, row: u64) -> (GgmlType, Option<String>) {
    let fits = |t: GgmlType| row.is_multiple_of(t.block_size());
    if fits(t) {
        return (t, None);
    }
    let alt = match t {
        GgmlType::Q4_K | GgmlType::Q5_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    let alt = if fits(alt) { alt } else { GgmlType::F16 };
    (
        alt,
        Some(format!(
            "rows of {row} are not whole {t} blocks of {}; used {alt}",
            t.block_size()
        )),
    )
}

fn is_float(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Chooses every tensor's output name and type.
pub fn plan(model: &ModelFile<'_>, opts: &Options) -> Result<Vec<Planned>> {
    if let Some(d) = opts.dtype
        && !is_float(d)
    {
        return Err(Error::Invalid(format!(
            "--dtype must be f32, f16 or bf16, not {d}"
        )));
    }
    let mut quantize = opts.quantize;
    if opts.target == Format::Safetensors {
        match quantize {
            Some(Quantize::Type(t)) if is_float(t) => quantize = None,
            Some(q) => {
                return Err(Error::Invalid(format!(
                    "SafeTensors cannot hold {} blocks; write GGUF or APR to quantize",
                    match q {
                        Quantize::Q4KM => "Q4_K_M".to_string(),
                        Quantize::Type(t) => t.to_string(),
                    }
                )));
            }
            None => {}
        }
    }
    let float_out = opts.dtype.or(match opts.quantize {
        Some(Quantize::Type(t)) if is_float(t) => Some(t),
        _ => None,
    });
    let n_layers = model.metadata.arch_u64("block_count").unwrap_or_else(|| {
        model
            .tensors
            .iter()
            .filter_map(|t| layer_of(&t.name))
            .max()
            .map_or(0, |m| m + 1)
    });
    let mut out = Vec::with_capacity(model.tensors.len());
    for (i, t) in model.tensors.iter().enumerate() {
        let mut note = None;
        let matrix = t.shape.len() == 2 && t.name.ends_with(".weight");
        let dtype = match (quantize, float_out) {
            (Some(q), None) if matrix => {
                let (d, n) = fallback(wanted(q, &t.name, n_layers), t.row_len());
                note = n;
                d
            }
            (_, Some(f)) if matrix || !is_float(t.dtype) || opts.dtype.is_some() => f,
            _ if !is_float(t.dtype)
                && (opts.target == Format::Safetensors || quantize.is_some()) =>
            {
                GgmlType::F32
            }
            _ => t.dtype,
        };
        if dtype != t.dtype {
            if !can_dequantize(t.dtype) {
                return Err(Error::Invalid(format!(
                    "{}: cannot decode {} tensors",
                    t.name, t.dtype
                )));
            }
            if !can_quantize(dtype) {
                return Err(Error::Invalid(format!("{}: cannot encode {dtype}", t.name)));
            }
        }
        let name = match opts.target {
            Format::Gguf => t.name.clone(),
            Format::Safetensors | Format::Apr => gguf_to_hf(&t.name),
        };
        out.push(Planned {
            src: i,
            name: t.name.clone(),
            out: OutTensor {
                name,
                dtype,
                shape: t.shape.clone(),
            },
            note,
        });
    }
    Ok(out)
}

/// The metadata to write: the source's, with `general.file_type` made true for the output.
pub fn output_metadata(model: &ModelFile<'_>, plan: &[Planned], opts: &Options) -> Metadata {
    let mut meta = model.metadata.clone();
    let changed = plan
        .iter()
        .any(|p| p.out.dtype != model.tensors[p.src].dtype);
    if !changed {
        return meta;
    }
    let file_type = match opts.quantize {
        Some(q) => Some(q.file_type()),
        None => {
            let mut weights = plan
                .iter()
                .filter(|p| p.out.shape.len() == 2)
                .map(|p| p.out.dtype);
            let first = weights.next();
            if first.is_some() && weights.all(|d| Some(d) == first) {
                first.and_then(file_type_of)
            } else {
                None
            }
        }
    };
    match file_type {
        Some(ft) => meta.set("general.file_type", MetaValue::U32(ft)),
        None => {
            meta.remove("general.file_type");
        }
    }
    meta
}

/// Values per conversion chunk: a multiple of every block size.
const CHUNK: usize = 1 << 20;

/// Streams one tensor's output bytes into `w`, reporting decoded source bytes to `progress`.
pub fn produce(
    src: &Tensor<'_>,
    out: GgmlType,
    w: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    let mut reader = src.reader()?;
    let read_err = |e: std::io::Error| {
        Error::Invalid(format!("{}: reading tensor data: {e}", src.stored_name))
    };
    if src.dtype == out {
        let mut buf = vec![0u8; 4 << 20];
        let mut left = src.raw_size();
        while left > 0 {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let n = left.min(buf.len() as u64) as usize;
            reader.read_exact(&mut buf[..n]).map_err(read_err)?;
            w.write_all(&buf[..n])?;
            progress(n as u64);
            left -= n as u64;
        }
        return Ok(());
    }
    let total = src.elements() as usize;
    let mut raw = Vec::new();
    let mut values = vec![0f32; CHUNK.min(total)];
    let mut encoded = Vec::new();
    let mut done = 0usize;
    while done < total {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let n = CHUNK.min(total - done);
        let in_bytes = src.dtype.bytes_for(n as u64).unwrap_or(0) as usize;
        let out_bytes = out.bytes_for(n as u64).unwrap_or(0) as usize;
        raw.resize(in_bytes, 0);
        reader.read_exact(&mut raw).map_err(read_err)?;
        // `pieces` counts (values, bytes); decoding reads bytes and writes values.
        let parts: Vec<(usize, usize)> =
            pieces(src.dtype, n).iter().map(|&(v, b)| (b, v)).collect();
        let what =
            |e: crate::quant::QuantError| Error::Invalid(format!("{}: {e}", src.stored_name));
        in_pieces(&parts, &raw, &mut values[..n], |raw, vals| {
            dequantize(src.dtype, raw, vals).map_err(what)
        })?;
        if out == GgmlType::F32 && cfg!(target_endian = "little") {
            // F32 out is the decoded values' own bytes.
            w.write_all(bytemuck::cast_slice(&values[..n]))?;
        } else {
            encoded.resize(out_bytes, 0);
            in_pieces(
                &pieces(out, n),
                &values[..n],
                &mut encoded,
                |vals, bytes| quantize(out, vals, bytes).map_err(what),
            )?;
            w.write_all(&encoded)?;
        }
        progress(in_bytes as u64);
        done += n;
    }
    Ok(())
}

/// Runs `f` on matching pieces of `input` and `output` at once, one piece per core (see
/// [`pieces`]); `parts` gives each piece's (input length, output length).
fn in_pieces<A: Sync, B: Send>(
    parts: &[(usize, usize)],
    input: &[A],
    output: &mut [B],
    f: impl Fn(&[A], &mut [B]) -> Result<()> + Sync,
) -> Result<()> {
    if parts.len() < 2 {
        return f(input, output);
    }
    std::thread::scope(|scope| {
        let (mut input, mut output) = (input, output);
        let mut handles = Vec::with_capacity(parts.len());
        for &(a, b) in parts {
            let (i, rest_i) = input.split_at(a);
            let (o, rest_o) = output.split_at_mut(b);
            (input, output) = (rest_i, rest_o);
            let f = &f;
            handles.push(scope.spawn(move || f(i, o)));
        }
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Invalid("a conversion thread panicked".into())))
        })
    })
}

/// (values, bytes) per piece: whole blocks, one piece per available core, none for small chunks.
fn pieces(ty: GgmlType, n: usize) -> Vec<(usize, usize)> {
    let block = ty.block_size() as usize;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get().min(8));
    if threads < 2 || n < 1 << 16 || block == 0 || !n.is_multiple_of(block) {
        return vec![(n, ty.bytes_for(n as u64).unwrap_or(0) as usize)];
    }
    let blocks = n / block;
    let per = blocks.div_ceil(threads);
    (0..threads)
        .map(|i| blocks.saturating_sub(i * per).min(per))
        .filter(|&b| b > 0)
        .map(|b| (b * block, b * ty.block_bytes() as usize))
        .collect()
}

/// How a conversion reaches each source tensor's bytes: `around(t, work)` runs `work` on `t` with
/// its bytes readable. [`in_place`] is enough for a file parsed whole; a caller may also release
/// the pages after, or read the bytes of a file parsed from its head ([`Tensor::with_data`]).
pub type Around<'f, 'a> =
    &'f mut dyn FnMut(&Tensor<'a>, &mut dyn FnMut(&Tensor<'_>) -> Result<()>) -> Result<()>;

/// The [`Around`] of a file parsed whole: runs the work on the tensor as it is.
pub fn in_place(t: &Tensor<'_>, work: &mut dyn FnMut(&Tensor<'_>) -> Result<()>) -> Result<()> {
    work(t)
}

/// Writes every planned tensor, in plan order, into `sink`, reaching each source tensor through
/// `around`.
pub fn write_all<'a>(
    model: &ModelFile<'a>,
    plan: &[Planned],
    sink: &mut dyn TensorSink,
    progress: &mut dyn FnMut(u64),
    cancelled: &dyn Fn() -> bool,
    around: Around<'_, 'a>,
) -> Result<()> {
    for p in plan {
        around(&model.tensors[p.src], &mut |src| {
            sink.write_tensor(&mut |w| produce(src, p.out.dtype, w, progress, cancelled))
        })?;
    }
    Ok(())
}

/// Zstd level for APR output: `--target wasm` and plain `--compression zstd`.
pub const ZSTD_LEVEL: i32 = 9;
/// Zstd level with `--optimize-size`.
pub const ZSTD_LEVEL_MAX: i32 = 19;

/// How a single output file is written, beyond [`Options`]: what the CLI's flags and the web
/// converter's choices both come down to, so the two write the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOutput<'a> {
    /// APR tensor compression (ignored for other targets).
    pub compression: Compression,
    /// The Zstd level, when compressing with Zstd.
    pub zstd_level: i32,
    /// The input's file name, recorded in APR metadata as its source.
    pub source_name: &'a str,
}

/// The writer for one output file of `opts.target`, its header already written to `out`.
pub fn file_sink<'w, W: Write + Seek + 'w>(
    out: W,
    model: &ModelFile<'_>,
    plan: &[Planned],
    meta: &Metadata,
    opts: &Options,
    file: &FileOutput<'_>,
) -> Result<Box<dyn TensorSink + 'w>> {
    let outs: Vec<OutTensor> = plan.iter().map(|p| p.out.clone()).collect();
    Ok(match opts.target {
        Format::Gguf => {
            // A GGUF keeps its alignment; anything else gets GGUF's default.
            let align = if model.format == Format::Gguf {
                model.alignment
            } else {
                32
            };
            Box::new(GgufWriter::new(out, meta, &outs, align)?)
        }
        Format::Safetensors => Box::new(SafetensorsWriter::new(
            out,
            safetensors_metadata(meta),
            &outs,
        )?),
        Format::Apr => {
            let json = apr_metadata_json(meta, file.source_name, model.format);
            let vocab = meta.get("tokenizer.ggml.tokens").is_some();
            Box::new(AprWriter::new(
                out,
                &json,
                &outs,
                file.compression,
                file.zstd_level,
                vocab,
            )?)
        }
    })
}

/// Converts `model` into one file written to `out`: the writer for `opts.target`, every planned
/// tensor, and the trailer. `progress`, `cancelled` and `around` are as for [`write_all`].
#[allow(clippy::too_many_arguments)]
pub fn write_file<'a, W: Write + Seek>(
    out: W,
    model: &ModelFile<'a>,
    plan: &[Planned],
    opts: &Options,
    file: &FileOutput<'_>,
    progress: &mut dyn FnMut(u64),
    cancelled: &dyn Fn() -> bool,
    around: Around<'_, 'a>,
) -> Result<()> {
    let meta = output_metadata(model, plan, opts);
    let mut sink = file_sink(out, model, plan, &meta, opts, file)?;
    write_all(model, plan, &mut *sink, progress, cancelled, around)?;
    sink.finish()
}

/// The APR metadata JSON: the original tool's flat keys (so it can read our files), provenance,
/// and the full typed metadata under `"metadata"`.
pub fn apr_metadata_json(
    meta: &Metadata,
    source: &str,
    source_format: Format,
) -> serde_json::Value {
    use serde_json::json;
    let arch = meta.architecture();
    let has = |text: &str| {
        meta.get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .is_some_and(|a| a.iter().any(|t| t.as_str() == Some(text)))
    };
    json!({
        crate::format::apr::WRITER_KEY: {"name": "apr", "version": env!("CARGO_PKG_VERSION"), "revision": 1},
        "model_type": arch,
        "architecture": arch,
        "name": meta.get_str("general.name"),
        "hidden_size": meta.arch_u64("embedding_length"),
        "num_layers": meta.arch_u64("block_count"),
        "num_heads": meta.arch_u64("attention.head_count"),
        "num_kv_heads": meta.arch_u64("attention.head_count_kv"),
        "vocab_size": meta.vocab_size(),
        "intermediate_size": meta.arch_u64("feed_forward_length"),
        "max_position_embeddings": meta.arch_u64("context_length"),
        "rope_theta": meta.arch_f32("rope.freq_base").map(crate::meta::f32_json),
        "rope_type": if arch == Some("qwen2") { Some(2) } else { None },
        "rms_norm_eps": meta.arch_f32("attention.layer_norm_rms_epsilon").map(crate::meta::f32_json),
        "chat_template": meta.get_str("tokenizer.chat_template"),
        "special_tokens": {
            "bos_token": meta.token_text("tokenizer.ggml.bos_token_id"),
            "eos_token": meta.token_text("tokenizer.ggml.eos_token_id"),
            "pad_token": meta.token_text("tokenizer.ggml.padding_token_id"),
            "im_start_token": has("<|im_start|>").then_some("<|im_start|>"),
            "im_end_token": has("<|im_end|>").then_some("<|im_end|>"),
        },
        "source": source,
        "original_format": source_format.name().to_ascii_lowercase(),
        "metadata": meta.to_json(),
    })
}

/// The SafeTensors `__metadata__`: `format: pt` for transformers, and the typed metadata.
pub fn safetensors_metadata(meta: &Metadata) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    m.insert("format".to_string(), "pt".to_string());
    if !meta.is_empty() {
        m.insert(
            crate::format::safetensors::METADATA_KEY.to_string(),
            meta.to_json().to_string(),
        );
    }
    m
}
