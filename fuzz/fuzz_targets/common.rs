//! What every target does with an input the reader accepted: decode every tensor it can.

use apr_core::format::model::ModelFile;
use apr_core::quant::{can_dequantize, dequantize};

/// Inputs are small; a tensor claiming more than this is decoded only as far as its bytes go.
const MAX_VALUES: u64 = 1 << 22;

pub fn exercise(bytes: &[u8]) {
    let Ok(model) = ModelFile::parse(bytes) else {
        return;
    };
    let _ = apr_core::info::ModelInfo::from_model(&model, true);
    let _ = apr_core::check::check(bytes, &|_| {});
    for t in &model.tensors {
        if t.elements() > MAX_VALUES || !can_dequantize(t.dtype) {
            continue;
        }
        if let Ok(raw) = t.decode() {
            let mut out = vec![0f32; t.elements() as usize];
            let _ = dequantize(t.dtype, &raw, &mut out);
        }
    }
}
