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
#[cfg(feature = "gpu")]
pub(crate) use dequant::scale_min_k4;
pub mod dot;
mod quantize;
pub mod simd;
pub mod vec;

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

/// `fmaf(a, b, c)`, the reference's fused multiply-add: libm's correctly rounded one, or in a
/// WebAssembly build with relaxed SIMD the engine's `relaxed_madd`, which is fused wherever the
/// CPU has an FMA (see `simd/wasm.rs`; its tests check the two agree bit for bit) and costs a
/// few instructions instead of libm's software emulation.
#[inline(always)]
pub(crate) fn fmaf(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    {
        use core::arch::wasm32::{f32x4_extract_lane, f32x4_relaxed_madd, f32x4_splat};
        f32x4_extract_lane::<0>(f32x4_relaxed_madd(
            f32x4_splat(a),
            f32x4_splat(b),
            f32x4_splat(c),
        ))
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
    {
        libm::fmaf(a, b, c)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, seed: u64) -> alloc::vec::Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn q4_0_low_nibbles_hold_the_first_half() {
        // d = 1.0; byte j holds value j of the block in its low nibble, value j + 16 in its high.
        let mut block = [0u8; 18];
        block[..2].copy_from_slice(&f32_to_f16(1.0));
        for j in 0..16 {
            block[2 + j] = ((15 - j as u8) << 4) | j as u8;
        }
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_0, &block, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], j as f32 - 8.0);
            assert_eq!(out[j + 16], 15.0 - j as f32 - 8.0);
        }
    }

    #[test]
    fn every_quantizer_round_trips_within_its_bound() {
        let x = seeded(4096, 42);
        let max = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (ty, bound) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 8e-3),
            (GgmlType::Q8_0, 1e-2),
            (GgmlType::Q6_K, 4e-2),
            (GgmlType::Q5_0, 7e-2),
            (GgmlType::Q5_1, 7e-2),
            (GgmlType::Q4_0, 1.3e-1),
            (GgmlType::Q4_1, 1.3e-1),
            (GgmlType::Q4_K, 1.5e-1),
        ] {
            let mut bytes = alloc::vec![0u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
            quantize(ty, &x, &mut bytes).unwrap();
            let mut y = alloc::vec![0f32; x.len()];
            dequantize(ty, &bytes, &mut y).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(err <= bound * max, "{ty}: max error {err}");
            // Quantizing the dequantized values again changes nothing: the kernels agree.
            let mut again = alloc::vec![0u8; bytes.len()];
            quantize(ty, &y, &mut again).unwrap();
            if matches!(
                ty,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
            ) {
                assert_eq!(again, bytes, "{ty} is idempotent");
            }
        }
    }

    #[test]
    fn sizes_and_types_are_checked() {
        let mut out = [0f32; 31];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut out),
            Err(QuantError::PartialBlock { .. })
        ));
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
            Err(QuantError::SizeMismatch { .. })
        ));
        assert!(matches!(
            quantize(GgmlType::Q2_K, &[0.0; 256], &mut [0; 84]),
            Err(QuantError::Unsupported { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]),
            Err(QuantError::Unsupported { .. })
        ));
    }
}
