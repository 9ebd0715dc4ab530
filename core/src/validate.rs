//! `apr validate`: decode every tensor and look at the numbers (native only).
//!
//! Failures: a tensor that does not decode, NaN or Inf, a shape the config contradicts.
//! Warnings (failures with `--strict`): norm weights that are all zero or implausibly scaled,
//! embedding rows that are all zero or wildly out of scale.

use std::io::Read;

use serde::Serialize;

use crate::check::expected_qwen2_shapes;
use crate::dtype::GgmlType;
use crate::format::model::{ModelFile, Tensor};
use crate::quant::{can_dequantize, dequantize};

/// One tensor's numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorStats {
    /// Name as stored.
    pub name: String,
    /// Type.
    pub dtype: GgmlType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Smallest finite value.
    pub min: f32,
    /// Largest finite value.
    pub max: f32,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// NaN count.
    pub nan: u64,
    /// Infinity count.
    pub inf: u64,
    /// `OK`, `WARN` or `FAIL`.
    pub status: &'static str,
    /// Why, when not OK.
    pub notes: Vec<String>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValidateReport {
    /// Per tensor.
    pub tensors: Vec<TensorStats>,
    /// Problems not tied to one tensor.
    pub problems: Vec<String>,
    /// Tensors that failed.
    pub failed: usize,
    /// Tensors with warnings.
    pub warned: usize,
    /// Verdict (warnings count under `strict`).
    pub pass: bool,
}

const CHUNK: u64 = 1 << 20;

/// Validates every tensor; `done` gets each tensor once read (to release its pages).
pub fn validate<'a>(
    model: &ModelFile<'a>,
    strict: bool,
    progress: &mut dyn FnMut(u64),
    done: &mut dyn FnMut(&Tensor<'a>),
) -> ValidateReport {
    let mut problems = Vec::new();
    let expected = if model.metadata.architecture() == Some("qwen2") {
        match expected_qwen2_shapes(model) {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(format!("config: {e}"));
                None
            }
        }
    } else {
        problems.push(format!(
            "no shape rules for architecture {:?}",
            model.metadata.architecture()
        ));
        None
    };
    let mut tensors = Vec::with_capacity(model.tensors.len());
    for t in &model.tensors {
        let mut stats = stats(t, progress);
        if let Some(expected) = &expected {
            match expected.iter().find(|(n, _)| *n == t.name) {
                Some((_, shape)) if *shape != t.shape => {
                    stats
                        .notes
                        .push(format!("shape {:?}, the config says {shape:?}", t.shape));
                    stats.status = "FAIL";
                }
                None => {
                    stats.notes.push("not part of the architecture".into());
                    stats.status = "FAIL";
                }
                _ => {}
            }
        }
        done(t);
        tensors.push(stats);
    }
    let failed = tensors.iter().filter(|t| t.status == "FAIL").count();
    let warned = tensors.iter().filter(|t| t.status == "WARN").count();
    let pass = problems.is_empty() && failed == 0 && (!strict || warned == 0);
    ValidateReport {
        tensors,
        problems,
        failed,
        warned,
        pass,
    }
}

fn stats(t: &Tensor<'_>, progress: &mut dyn FnMut(u64)) -> TensorStats {
    let mut s = TensorStats {
        name: t.stored_name.clone(),
        dtype: t.dtype,
        shape: t.shape.clone(),
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        mean: 0.0,
        std: 0.0,
        nan: 0,
        inf: 0,
        status: "OK",
        notes: Vec::new(),
    };
    let fail = |s: &mut TensorStats, why: String| {
        s.notes.push(why);
        s.status = "FAIL";
    };
    if !can_dequantize(t.dtype) {
        fail(&mut s, format!("no kernel decodes {}", t.dtype));
        return s;
    }
    let mut reader = match t.reader() {
        Ok(r) => r,
        Err(e) => {
            fail(&mut s, e.to_string());
            return s;
        }
    };
    let row = t.row_len().max(1);
    let is_embedding = t.name == "token_embd.weight";
    let (mut zero_rows, mut row_norms) = (0u64, Vec::new());
    // Row norms accumulate across chunk boundaries, so chunks need not hold whole rows.
    let (mut row_sum, mut row_pos) = (0f64, 0u64);
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0u64);
    let total = t.elements();
    let mut done = 0u64;
    let (mut raw, mut vals) = (Vec::new(), Vec::new());
    while done < total {
        let k = CHUNK.min(total - done);
        raw.resize(t.dtype.bytes_for(k).unwrap_or(0) as usize, 0);
        if let Err(e) = reader.read_exact(&mut raw) {
            fail(&mut s, format!("does not decode: {e}"));
            return s;
        }
        vals.resize(k as usize, 0.0);
        if let Err(e) = dequantize(t.dtype, &raw, &mut vals) {
            fail(&mut s, format!("does not decode: {e}"));
            return s;
        }
        progress(raw.len() as u64);
        for &v in &vals {
            if v.is_nan() {
                s.nan += 1;
            } else if v.is_infinite() {
                s.inf += 1;
            } else {
                s.min = s.min.min(v);
                s.max = s.max.max(v);
                sum += f64::from(v);
                sum2 += f64::from(v) * f64::from(v);
                n += 1;
            }
            if is_embedding {
                row_sum += f64::from(v) * f64::from(v);
                row_pos += 1;
                if row_pos == row {
                    let norm = row_sum.sqrt();
                    if norm == 0.0 {
                        zero_rows += 1;
                    }
                    row_norms.push(norm);
                    (row_sum, row_pos) = (0.0, 0);
                }
            }
        }
        done += k;
    }
    if n > 0 {
        s.mean = sum / n as f64;
        s.std = (sum2 / n as f64 - s.mean * s.mean).max(0.0).sqrt();
    } else {
        s.min = 0.0;
        s.max = 0.0;
    }
    if s.nan + s.inf > 0 {
        let why = format!("{} NaN and {} Inf values", s.nan, s.inf);
        fail(&mut s, why);
    }
    let warn = |s: &mut TensorStats, why: String| {
        s.notes.push(why);
        if s.status == "OK" {
            s.status = "WARN";
        }
    };
    if t.name.ends_with("norm.weight") {
        let mean_abs = s.mean.abs();
        if s.max == 0.0 && s.min == 0.0 {
            warn(&mut s, "norm weights are all zero".into());
        } else if !(1e-3..=1e3).contains(&mean_abs) {
            let why = format!("norm weights average {:.3e}, outside 1e-3..1e3", s.mean);
            warn(&mut s, why);
        }
    }
    if is_embedding && !row_norms.is_empty() {
        let rows = row_norms.len() as u64;
        row_norms.sort_by(f64::total_cmp);
        let median = row_norms[row_norms.len() / 2];
        let max = row_norms[row_norms.len() - 1];
        if zero_rows * 100 > rows {
            warn(
                &mut s,
                format!("{zero_rows} of {rows} embedding rows are all zero"),
            );
        }
        if median == 0.0 || max / median > 1e3 {
            warn(
                &mut s,
                format!("embedding row norms: median {median:.3e}, max {max:.3e}"),
            );
        }
    }
    s
}
