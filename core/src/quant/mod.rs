//! Quant blocks and the scalar reference kernels: dequantize to f32, quantize from f32.
//!
//! These are the specification. Each kernel mirrors the ggml function named in its comment, with
//! the same operation order, so results match llama.cpp bit for bit; later SIMD and GPU kernels are
//! tested against these on seeded inputs.
//!
//! Dequantize: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//! Quantize: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K.

pub mod blocks;
mod dequant;
mod quantize;

use crate::dtype::GgmlType;

pub use blocks::{QK, QK_K};

/// A quantization kernel was asked for something it cannot do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// No kernel for this type in this direction.
    #[error("{op} is not implemented for {ty}")]
    Unsupported {
        /// The type.
        ty: GgmlType,
        /// `"dequantization"` or `"quantization"`.
        op: &'static str,
    },
    /// The element count is not a whole number of blocks.
    #[error("{elements} values are not a whole number of {ty} blocks of {block}")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Values given.
        elements: usize,
        /// Values per block.
        block: usize,
    },
    /// The byte and value buffers disagree in size.
    #[error("{ty}: {bytes} bytes do not hold {elements} values")]
    SizeMismatch {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Values given.
        elements: usize,
    },
}

/// Whether [`dequantize`] supports `ty`.
pub const fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// Whether [`quantize`] supports `ty`.
pub const fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q6_K
    )
}

fn check(ty: GgmlType, bytes: usize, elements: usize) -> Result<(), QuantError> {
    let block = ty.block_size() as usize;
    if block == 0 || !elements.is_multiple_of(block) {
        return Err(QuantError::PartialBlock {
            ty,
            elements,
            block,
        });
    }
    if (elements / block).checked_mul(ty.block_bytes() as usize) != Some(bytes) {
        return Err(QuantError::SizeMismatch {
            ty,
            bytes,
            elements,
        });
    }
    Ok(())
}

/// Decodes `src`, stored as `ty`, into `dst`. `dst.len()` is the number of values.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::Unsupported {
            ty,
            op: "dequantization",
        });
    }
    check(ty, src.len(), dst.len())?;
    dequant::row(ty, src, dst);
    Ok(())
}

/// Encodes `src` as `ty` into `dst`, which must be exactly `ty.bytes_for(src.len())` long.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported {
            ty,
            op: "quantization",
        });
    }
    check(ty, dst.len(), src.len())?;
    quantize::row(ty, src, dst);
    Ok(())
}

/// `ggml_fp16_to_fp32`.
#[inline]
pub fn f16_to_f32(bits: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(bits)).to_f32()
}

/// `ggml_fp32_to_fp16`: round to nearest even.
#[inline]
pub fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// `ggml_bf16_to_fp32`.
#[inline]
pub fn bf16_to_f32(bits: [u8; 2]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes(bits)) << 16)
}

/// `ggml_compute_fp32_to_bf16`: round to nearest even, NaN made quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> [u8; 2] {
    let u = x.to_bits();
    let h = if (u & 0x7fff_ffff) > 0x7f80_0000 {
        (u >> 16) | 64
    } else {
        (u + (0x7fff + ((u >> 16) & 1))) >> 16
    };
    #[allow(clippy::cast_possible_truncation)]
    (h as u16).to_le_bytes()
}
