//! `--verify`: compare a converted file with its source, structure and values (native only).

use std::io::Read;

use serde::Serialize;

use crate::dtype::GgmlType;
use crate::format::model::{ModelFile, Tensor};
use crate::quant::dequantize;
use crate::{Error, Result};

/// The largest error allowed for a lossy conversion to `out`, as a fraction of the source tensor's
/// largest magnitude. `None` means the conversion must be bit-exact.
pub fn threshold(src: GgmlType, out: GgmlType) -> Option<f32> {
    if src == out || out == GgmlType::F32 {
        return None;
    }
    Some(match out {
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 8e-3,
        GgmlType::Q8_0 => 1e-2,
        GgmlType::Q6_K => 4e-2,
        // A block's extreme of the opposite sign to its scale is clamped one level short:
        // up to 1/16 of the block's magnitude for Q5_0, 1/8 for Q4_0.
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 7e-2,
        GgmlType::Q4_0 | GgmlType::Q4_1 => 1.3e-1,
        _ => 1.5e-1,
    })
}

/// One tensor's comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorCheck {
    /// GGUF name.
    pub name: String,
    /// Source type.
    pub src_dtype: GgmlType,
    /// Output type.
    pub out_dtype: GgmlType,
    /// Whether bit-exact values were required.
    pub exact_required: bool,
    /// Whether every value matched bit for bit.
    pub bit_exact: bool,
    /// Largest absolute difference.
    pub max_abs_err: f32,
    /// `max_abs_err` over the source's largest magnitude.
    pub max_rel_err: f32,
    /// The allowed `max_rel_err`, for lossy conversions.
    pub threshold: Option<f32>,
    /// Verdict.
    pub pass: bool,
}

/// The whole comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Tensors in the source.
    pub src_tensors: usize,
    /// Tensors in the output.
    pub out_tensors: usize,
    /// Structural problems: missing tensors, shapes, metadata.
    pub problems: Vec<String>,
    /// Per-tensor results.
    pub tensors: Vec<TensorCheck>,
    /// Verdict.
    pub pass: bool,
}

/// Metadata keys that must survive a conversion, besides the hyperparameters.
const KEYS: &[&str] = &[
    "general.architecture",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.chat_template",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.bos_token_id",
];

/// How [`verify`] reaches each pair of tensors' bytes: `around(s, o, work)` runs `work` on them
/// with their bytes readable ([`in_place`] for files parsed whole; see
/// [`crate::convert::Around`]).
pub type Around<'f, 'a, 'b> = &'f mut dyn FnMut(
    &Tensor<'a>,
    &Tensor<'b>,
    &mut dyn FnMut(&Tensor<'_>, &Tensor<'_>) -> Result<()>,
) -> Result<()>;

/// The [`Around`] of files parsed whole: runs the work on the tensors as they are.
pub fn in_place(
    s: &Tensor<'_>,
    o: &Tensor<'_>,
    work: &mut dyn FnMut(&Tensor<'_>, &Tensor<'_>) -> Result<()>,
) -> Result<()> {
    work(s, o)
}

/// Compares `out` with `src`, reaching each pair of tensors through `around`.
pub fn verify<'a, 'b>(
    src: &ModelFile<'a>,
    out: &ModelFile<'b>,
    progress: &mut dyn FnMut(u64),
    around: Around<'_, 'a, 'b>,
) -> Result<VerifyReport> {
    let mut problems = Vec::new();
    if src.tensors.len() != out.tensors.len() {
        problems.push(format!(
            "tensor count: {} in the source, {} in the output",
            src.tensors.len(),
            out.tensors.len()
        ));
    }
    let mut keys: Vec<String> = KEYS.iter().map(|k| (*k).to_string()).collect();
    if let Some(arch) = src.metadata.architecture() {
        keys.extend(
            crate::meta::HYPERPARAMETERS
                .iter()
                .map(|k| format!("{arch}.{k}")),
        );
    }
    for key in keys {
        let (a, b) = (src.metadata.get(&key), out.metadata.get(&key));
        if a.is_some() && a != b {
            problems.push(format!(
                "metadata {key}: {a:?} in the source, {b:?} in the output"
            ));
        }
    }
    if src.metadata.vocab_size() != out.metadata.vocab_size() {
        problems.push(format!(
            "vocabulary: {:?} tokens in the source, {:?} in the output",
            src.metadata.vocab_size(),
            out.metadata.vocab_size()
        ));
    }
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
    ] {
        if src.metadata.get(key) != out.metadata.get(key) {
            problems.push(format!("metadata {key} differs"));
        }
    }
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for s in &src.tensors {
        let Some(o) = out.tensor(&s.name) else {
            problems.push(format!("tensor {} is missing from the output", s.name));
            continue;
        };
        if o.shape != s.shape {
            problems.push(format!(
                "tensor {}: shape {:?} in the source, {:?} in the output",
                s.name, s.shape, o.shape
            ));
            continue;
        }
        let mut check = None;
        around(s, o, &mut |s, o| {
            check = Some(compare(s, o, progress)?);
            Ok(())
        })?;
        tensors.push(check.ok_or_else(|| {
            Error::Invalid(format!("tensor {}: its bytes were never compared", s.name))
        })?);
    }
    for o in &out.tensors {
        if src.tensor(&o.name).is_none() {
            problems.push(format!(
                "tensor {} is in the output but not the source",
                o.name
            ));
        }
    }
    let pass = problems.is_empty() && tensors.iter().all(|t| t.pass);
    Ok(VerifyReport {
        src_tensors: src.tensors.len(),
        out_tensors: out.tensors.len(),
        problems,
        tensors,
        pass,
    })
}

const CHUNK: u64 = 1 << 20;

fn compare(s: &Tensor<'_>, o: &Tensor<'_>, progress: &mut dyn FnMut(u64)) -> Result<TensorCheck> {
    let threshold = threshold(s.dtype, o.dtype);
    let mut check = TensorCheck {
        name: s.name.clone(),
        src_dtype: s.dtype,
        out_dtype: o.dtype,
        exact_required: threshold.is_none(),
        bit_exact: true,
        max_abs_err: 0.0,
        max_rel_err: 0.0,
        threshold,
        pass: true,
    };
    let (mut rs, mut ro) = (s.reader()?, o.reader()?);
    let err = |name: &str, e: std::io::Error| Error::Invalid(format!("{name}: {e}"));
    let total = s.elements();
    let mut done = 0u64;
    let (mut bs, mut bo) = (Vec::new(), Vec::new());
    let (mut fs, mut fo) = (Vec::new(), Vec::new());
    let mut max_src = 0f32;
    while done < total {
        let n = CHUNK.min(total - done);
        bs.resize(s.dtype.bytes_for(n).unwrap_or(0) as usize, 0);
        bo.resize(o.dtype.bytes_for(n).unwrap_or(0) as usize, 0);
        rs.read_exact(&mut bs).map_err(|e| err(&s.stored_name, e))?;
        ro.read_exact(&mut bo).map_err(|e| err(&o.stored_name, e))?;
        progress(bo.len() as u64);
        done += n;
        if s.dtype == o.dtype && bs == bo {
            // Same bytes: same values; the magnitudes are still needed only for lossy checks.
            continue;
        }
        fs.resize(n as usize, 0.0);
        fo.resize(n as usize, 0.0);
        dequantize(s.dtype, &bs, &mut fs)
            .map_err(|e| Error::Invalid(format!("{}: {e}", s.name)))?;
        dequantize(o.dtype, &bo, &mut fo)
            .map_err(|e| Error::Invalid(format!("{}: {e}", o.name)))?;
        for (a, b) in fs.iter().zip(&fo) {
            if a.to_bits() != b.to_bits() {
                check.bit_exact = false;
                let d = (a - b).abs();
                // A NaN on either side counts as an infinite error.
                let d = if d.is_nan() { f32::INFINITY } else { d };
                check.max_abs_err = check.max_abs_err.max(d);
            }
            max_src = max_src.max(a.abs());
        }
    }
    check.max_rel_err = if max_src > 0.0 {
        check.max_abs_err / max_src
    } else if check.max_abs_err > 0.0 {
        f32::INFINITY
    } else {
        0.0
    };
    check.pass = match threshold {
        None => check.bit_exact,
        Some(t) => check.max_rel_err <= t,
    };
    Ok(check)
}
