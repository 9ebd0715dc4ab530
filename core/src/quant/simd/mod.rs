//! SIMD implementations of the dot kernels, chosen once per process.
//!
//! The scalar kernels of [`super::dot`] are the specification; every implementation here gives
//! their results bit for bit (integer sums are exact in any order, and the float operations keep
//! the reference's lanes, fusions and reduction order), and the tests run each one the machine
//! has against the reference on seeded random blocks. On x86_64 the level is detected at run
//! time; on aarch64 (NEON) and wasm32 (`simd128`) it is fixed when compiling.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

use alloc::vec::Vec;

#[cfg(any(
    target_arch = "aarch64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
use super::blocks::{BlockQ4_0, BlockQ5_0, BlockQ8_0};
use super::dot::ActRow;
#[cfg(any(
    target_arch = "aarch64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
use super::dot::Q8Sums;
use super::{QuantError, vec};
use crate::dtype::GgmlType;

/// Byte `j` of entry `b` is 0x10 when bit `j` of `b` is set: spreads eight of Q5_0's fifth
/// bits over eight bytes, for the levels without a byte-mask instruction.
#[cfg(any(
    target_arch = "aarch64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
const Q5_SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            if (b >> j) & 1 == 1 {
                t[b] |= 0x10 << (8 * j);
            }
            j += 1;
        }
        b += 1;
    }
    t
};

/// One weight row's dot product per type, for the levels whose kernels are plain functions
/// (NEON, simd128); [`rows`] is their shared loop over weight rows.
#[cfg(any(
    target_arch = "aarch64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
trait RowKernels {
    /// The legacy types take a whole run of weight rows (`w` holds `out.len()` rows of
    /// `y.len()` blocks), so a kernel may share each activation block between rows.
    fn q8_0(w: &[BlockQ8_0], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]);
    fn q5_0(w: &[BlockQ5_0], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]);
    fn q4_0(w: &[BlockQ4_0], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]);
    fn f32(w: &[f32], x: &[f32]) -> f32;
    /// Q4_K in llama.cpp's `gemm` groups or whole (`dot::q4_k_fold`).
    fn q4_k(w: &[super::blocks::BlockQ4K], y: &[super::dot::BlockQ8K], grouped: bool) -> f32 {
        super::dot::q4_k_fold(w, y, grouped, super::dot::q4_k_ints)
    }
    /// Q4_1 against Q8_1 (`dot::offset_fold`).
    fn q4_1(w: &[super::blocks::BlockQ4_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
        super::dot::dot_q4_1(w, y, s)
    }
    /// Q5_1 against Q8_1 (`dot::offset_fold`).
    fn q5_1(w: &[super::blocks::BlockQ5_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
        super::dot::dot_q5_1(w, y, s)
    }
    /// Q5_K (`dot::q5_k_fold`).
    fn q5_k(w: &[super::blocks::BlockQ5K], y: &[super::dot::BlockQ8K]) -> f32 {
        super::dot::q5_k_fold(w, y, super::dot::q5_k_ints)
    }
    /// Q6_K tiled or in lanes (`dot::q6_k_fold`).
    fn q6_k(w: &[super::blocks::BlockQ6K], y: &[super::dot::BlockQ8K], tiled: bool) -> f32 {
        super::dot::q6_k_fold(w, y, tiled, |a, b| super::dot::lanes_q6_k(a, b).1)
    }
}

/// `out[i] = w_i · x` for the weight rows in `bytes` through `K`'s kernels; `None` for the
/// types `K` has none for.
#[cfg(any(
    target_arch = "aarch64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
fn rows<K: RowKernels>(
    ty: GgmlType,
    bytes: &[u8],
    x: ActRow<'_>,
    out: &mut [f32],
) -> Result<Option<()>, QuantError> {
    fn each<B: bytemuck::Pod>(
        ty: GgmlType,
        bytes: &[u8],
        (y, sums): (&[BlockQ8_0], Q8Sums<'_>),
        out: &mut [f32],
        dot: fn(&[B], &[BlockQ8_0], Q8Sums<'_>, &mut [f32]),
    ) -> Result<(), QuantError> {
        let w: &[B] = super::dot::weight_blocks(ty, bytes, y.len() * out.len(), super::QK)?;
        dot(w, y, sums, out);
        Ok(())
    }
    if out.is_empty() {
        return Ok(None);
    }
    match (ty, x) {
        (GgmlType::Q8_0, ActRow::Q8_0(y, s)) if !y.is_empty() => {
            each(ty, bytes, (y, s), out, K::q8_0)?;
        }
        (GgmlType::Q5_0, ActRow::Q8_0(y, s)) if !y.is_empty() => {
            each(ty, bytes, (y, s), out, K::q5_0)?;
        }
        (GgmlType::Q4_0, ActRow::Q8_0(y, s)) if !y.is_empty() => {
            each(ty, bytes, (y, s), out, K::q4_0)?;
        }
        (GgmlType::Q4_1, ActRow::Q8_1(y, s)) if !y.is_empty() && s.len() == y.len() => {
            let w: &[super::blocks::BlockQ4_1] =
                super::dot::weight_blocks(ty, bytes, y.len() * out.len(), super::QK)?;
            for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                *o = K::q4_1(row, y, s);
            }
        }
        (GgmlType::Q5_1, ActRow::Q8_1(y, s)) if !y.is_empty() && s.len() == y.len() => {
            let w: &[super::blocks::BlockQ5_1] =
                super::dot::weight_blocks(ty, bytes, y.len() * out.len(), super::QK)?;
            for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                *o = K::q5_1(row, y, s);
            }
        }
        (GgmlType::Q4_K, ActRow::Q8K(y, at)) if !y.is_empty() => {
            let w: &[super::blocks::BlockQ4K] =
                super::dot::weight_blocks(ty, bytes, y.len() * out.len(), super::QK_K)?;
            for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                *o = K::q4_k(row, y, at.in_group_of_four());
            }
        }
        (GgmlType::Q5_K, ActRow::Q8K(y, _)) if !y.is_empty() => {
            let w: &[super::blocks::BlockQ5K] =
                super::dot::weight_blocks(ty, bytes, y.len() * out.len(), super::QK_K)?;
            for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                *o = K::q5_k(row, y);
            }
        }
        (GgmlType::Q6_K, ActRow::Q8K(y, at)) if !y.is_empty() => {
            let w: &[super::blocks::BlockQ6K] =
                super::dot::weight_blocks(ty, bytes, y.len() * out.len(), super::QK_K)?;
            for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                *o = K::q6_k(row, y, at.tiled());
            }
        }
        (GgmlType::F32, ActRow::F32(y)) if !y.is_empty() => {
            match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                Ok(w) if w.len() == y.len() * out.len() => {
                    for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                        *o = K::f32(row, y);
                    }
                }
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(()))
}

/// Calls `$call` in the module of `$isa`'s level, or `$scalar` for the reference.
macro_rules! level {
    ($isa:expr, $call:ident($($arg:expr),*), $scalar:expr) => {
        match $isa.0 {
            Level::Scalar => $scalar,
            // SAFETY: an `Isa` of this level exists only when the CPU has its features.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::avx2::$call($($arg),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { x86::avx512::$call($($arg),*) },
            #[cfg(target_arch = "aarch64")]
            Level::Neon => $scalar,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Level::Simd128 => $scalar,
        }
    };
    // The same, with a simd128 kernel too.
    (wasm: $isa:expr, $call:ident($($arg:expr),*), $scalar:expr) => {
        match $isa.0 {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Level::Simd128 => wasm::$call($($arg),*),
            _ => level!($isa, $call($($arg),*), $scalar),
        }
    };
}

/// An instruction set this process may run kernels with. Only [`Isa::detect`] and
/// [`Isa::available`] make one, so holding an `Isa` means the CPU supports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(Level);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Level {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
}

impl Isa {
    /// The portable reference kernels, available everywhere.
    pub const SCALAR: Self = Self(Level::Scalar);

    /// The fastest implementation this CPU runs (detected once, then cached).
    pub fn detect() -> Self {
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        {
            static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
            *BEST.get_or_init(|| Self::available().last().copied().unwrap_or(Self::SCALAR))
        }
        #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
        {
            Self::available().last().copied().unwrap_or(Self::SCALAR)
        }
    }

    /// Every implementation this CPU runs, slowest (scalar) first.
    pub fn available() -> Vec<Self> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut all = alloc::vec![Self::SCALAR];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx2() {
                all.push(Self(Level::Avx2));
            }
            if x86::has_avx512() {
                all.push(Self(Level::Avx512));
            }
        }
        // NEON is part of the aarch64 base architecture.
        #[cfg(target_arch = "aarch64")]
        all.push(Self(Level::Neon));
        // simd128 is a compile-time choice: a module built with it only runs where it exists.
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        all.push(Self(Level::Simd128));
        all
    }

    /// A short name for reports: `scalar`, `avx2`, `avx512-vnni`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Level::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => "avx512-vnni",
            #[cfg(target_arch = "aarch64")]
            Level::Neon => "neon",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Level::Simd128 => "simd128",
        }
    }

    /// `w · x` as [`super::dot::dot`] defines it, with this instruction set where it has a
    /// kernel for `ty` and the reference otherwise.
    #[inline]
    pub fn dot(
        self,
        ty: GgmlType,
        row: &[u8],
        x: ActRow<'_>,
        scratch: &mut [f32],
    ) -> Result<f32, QuantError> {
        let mut out = [0f32];
        self.dot_rows(ty, row, x, scratch, &mut out)?;
        Ok(out[0])
    }

    /// `out[i] = w_i · x` for the `out.len()` rows of equal length that `rows` holds: one call
    /// for a run of weight rows, so the kernel and its checks are chosen once per run.
    pub fn dot_rows(
        self,
        ty: GgmlType,
        rows: &[u8],
        x: ActRow<'_>,
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        let fast: Option<()> = match self.0 {
            Level::Scalar => None,
            // SAFETY: an `Isa` of this level exists only when the CPU has its features.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::avx2::dot_rows(ty, rows, x, out)? },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { x86::avx512::dot_rows(ty, rows, x, out)? },
            #[cfg(target_arch = "aarch64")]
            Level::Neon => self::rows::<neon::Kernels>(ty, rows, x, out)?,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Level::Simd128 => self::rows::<wasm::Kernels>(ty, rows, x, out)?,
        };
        if fast.is_some() {
            return Ok(());
        }
        let n = out.len().max(1);
        if !rows.len().is_multiple_of(n) {
            return Err(QuantError::SizeMismatch {
                ty,
                bytes: rows.len(),
                elements: out.len(),
            });
        }
        for (o, row) in out
            .iter_mut()
            .zip(rows.chunks_exact((rows.len() / n).max(1)))
        {
            *o = self.decoded(ty, row, x, scratch)?;
        }
        Ok(())
    }

    /// Weight rows times several activation rows: `out[r * n + i]` is row `i` of the
    /// `n = out.len() / xs.len()` rows of equal length in `rows`, times `xs[r]` (the layout of
    /// the product's output, a column block of it). The batched products of a prompt: each
    /// weight block is unpacked once for all the activation rows.
    pub fn dot_block(
        self,
        ty: GgmlType,
        rows: &[u8],
        xs: &[ActRow<'_>],
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        let fast: Option<()> = match self.0 {
            Level::Scalar => None,
            // SAFETY: an `Isa` of this level exists only when the CPU has its features.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::avx2::dot_block(ty, rows, xs, out)? },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => match unsafe { x86::vnni_dot_block(ty, rows, xs, out)? } {
                Some(()) => Some(()),
                // SAFETY: as above.
                None => unsafe { x86::avx512::dot_block(ty, rows, xs, out)? },
            },
            #[cfg(target_arch = "aarch64")]
            Level::Neon => None,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Level::Simd128 => wasm::dot_block(ty, rows, xs, out)?,
        };
        if fast.is_some() || xs.is_empty() {
            return Ok(());
        }
        let m = xs.len();
        let n = out.len() / m;
        if out.len() != n * m || (n > 0 && !rows.len().is_multiple_of(n)) {
            return Err(QuantError::SizeMismatch {
                ty,
                bytes: rows.len(),
                elements: out.len(),
            });
        }
        let row_bytes = rows.len().checked_div(n).unwrap_or(0);
        let mut column = [0f32; 1];
        for i in 0..n {
            let row = &rows[i * row_bytes..(i + 1) * row_bytes];
            for (r, &x) in xs.iter().enumerate() {
                self.dot_rows(ty, row, x, scratch, &mut column)?;
                out[r * n + i] = column[0];
            }
        }
        Ok(())
    }

    /// The reference path for the types without an integer kernel here: decode the row to f32
    /// (exact), then this level's f32 dot.
    fn decoded(
        self,
        ty: GgmlType,
        row: &[u8],
        x: ActRow<'_>,
        scratch: &mut [f32],
    ) -> Result<f32, QuantError> {
        let ActRow::F32(y) = x else {
            return super::dot::dot(ty, row, x, scratch);
        };
        let w = scratch.get_mut(..y.len()).ok_or(QuantError::SizeMismatch {
            ty,
            bytes: row.len(),
            elements: y.len(),
        })?;
        super::dequantize(ty, row, w)?;
        Ok(self.dot_f32(w, y))
    }

    /// [`vec::encode_f16`] with this instruction set.
    pub fn encode_f16(self, src: &[f32], dst: &mut [u16]) {
        level!(self, encode_f16(src, dst), vec::encode_f16(src, dst));
    }

    /// [`vec::decode_f16`] with this instruction set.
    pub fn decode_f16(self, src: &[u16], dst: &mut [f32]) {
        level!(wasm: self, decode_f16(src, dst), vec::decode_f16(src, dst));
    }

    /// [`vec::round_f16_slice`] with this instruction set.
    pub fn round_f16_slice(self, x: &mut [f32]) {
        level!(wasm: self, round_f16_slice(x), vec::round_f16_slice(x));
    }

    /// [`vec::dot_ggml`] with this instruction set.
    pub fn dot_ggml(self, x: &[f32], y: &[f32]) -> f32 {
        level!(wasm: self, dot_ggml(x, y), vec::dot_ggml(x, y))
    }

    /// [`vec::scale`] with this instruction set.
    pub fn scale(self, acc: &mut [f32], s: f32, f16: bool) {
        level!(wasm: self, scale(acc, s, f16), vec::scale(acc, s, f16));
    }

    /// [`vec::mad`] with this instruction set.
    pub fn mad(self, acc: &mut [f32], v: &[f32], s: f32, f16: bool) {
        level!(wasm: self, mad(acc, v, s, f16), vec::mad(acc, v, s, f16));
    }

    /// [`vec::silu_mul`] with this instruction set.
    pub fn silu_mul(self, g: &mut [f32], u: &[f32]) {
        level!(self, silu_mul(g, u), vec::silu_mul(g, u));
    }

    /// [`vec::attend`] with this instruction set.
    pub fn attend(
        self,
        q: &mut [f32],
        head: &vec::AttnHead<'_>,
        k: &mut [f32],
        v: &mut [f32],
        w: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        level!(
            wasm: self,
            attend(q, head, k, v, w, out),
            vec::attend(q, head, k, v, w, out)
        );
    }

    /// [`super::dot::quantize_q8_0_rows`] with this instruction set.
    pub fn quantize_q8_0(
        self,
        x: &[f32],
        y: &mut [crate::quant::blocks::BlockQ8_0],
        d: &mut [f32],
        minus128: &mut [[i32; 8]],
    ) {
        level!(
            self,
            quantize_q8_0(x, y, d, minus128),
            super::dot::quantize_q8_0_rows(x, y, d, minus128)
        );
    }

    /// [`super::dot::quantize_q8_k_rows`] with this instruction set.
    pub fn quantize_q8_k(self, x: &[f32], y: &mut [super::dot::BlockQ8K]) {
        level!(
            self,
            quantize_q8_k(x, y),
            super::dot::quantize_q8_k_rows(x, y)
        );
    }

    /// [`vec::expf`] of every value, in place.
    pub fn expf_slice(self, x: &mut [f32]) {
        level!(self, expf_slice(x), vec::expf_slice(x));
    }

    /// [`super::dot::dot_f32`] with this instruction set.
    pub fn dot_f32(self, w: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "aarch64")]
        if self.0 == Level::Neon {
            return neon::dot_f32(w, x);
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if self.0 == Level::Simd128 {
            return wasm::dot_f32(w, x);
        }
        level!(self, dot_f32(w, x), super::dot::dot_f32(w, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dot::{ActKind, Activations, Q8Sums, dot};
    use crate::quant::quantize;

    /// Seeded values with Qwen-like outliers, so scales and signs vary block to block.
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 { u * 40.0 } else { u }
            })
            .collect()
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn every_level_matches_the_scalar_reference_bit_for_bit() {
        let levels = Isa::available();
        assert_eq!(levels[0], Isa::SCALAR);
        let cols = 4 * crate::quant::QK_K;
        let types = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
        ];
        let mut checked = 0;
        for (t, &ty) in types.iter().enumerate() {
            let len = ty.bytes_for(cols as u64).expect("size") as usize;
            let weights = |seed: u64| {
                let w = values(seed, cols);
                let mut bytes = alloc::vec![0u8; len];
                if crate::quant::can_quantize(ty) {
                    quantize(ty, &w, &mut bytes).expect("quantize");
                } else {
                    // Q5_K has no quantizer here: random levels, sane f16 scales.
                    assert_eq!(ty, GgmlType::Q5_K);
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = (w[i % cols].to_bits() >> 7) as u8;
                    }
                    for block in bytes.chunks_exact_mut(176) {
                        block[..2].copy_from_slice(&crate::quant::f32_to_f16(0.01));
                        block[2..4].copy_from_slice(&crate::quant::f32_to_f16(0.002));
                    }
                }
                bytes
            };
            for seed in 0..8u64 {
                let bytes = weights(seed * 31 + t as u64);
                // Batches of 1, 5 (a group of four and a single row) and 9 (tiled).
                for rows in [1usize, 5, 9] {
                    let x = values(1000 + seed, rows * cols);
                    let mut acts = Activations::default();
                    acts.encode(ActKind::for_weight(ty), &x, rows, cols)
                        .expect("encode");
                    let xs: Vec<_> = (0..rows).map(|r| acts.row(r).expect("row")).collect();
                    let mut scratch = alloc::vec![0f32; cols];
                    // Three different weight rows against the whole batch, as a tile of a
                    // product.
                    let mut three = bytes.clone();
                    three.extend_from_slice(&weights(seed * 31 + t as u64 + 500));
                    three.extend_from_slice(&weights(seed * 31 + t as u64 + 900));
                    let mut want = alloc::vec![0f32; 3 * rows];
                    for (i, w) in three.chunks_exact(len).enumerate() {
                        for (r, &a) in xs.iter().enumerate() {
                            want[r * 3 + i] = dot(ty, w, a, &mut scratch).expect("reference");
                        }
                    }
                    for &isa in &levels {
                        let mut got = alloc::vec![0f32; 3 * rows];
                        isa.dot_block(ty, &three, &xs, &mut scratch, &mut got)
                            .expect("block");
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{ty} dot_block on {}: {got:?} vs {want:?}",
                            isa.name()
                        );
                    }
                    let x = values(1000 + seed, rows * cols);
                    let mut acts = Activations::default();
                    acts.encode(ActKind::for_weight(ty), &x, rows, cols)
                        .expect("encode");
                    let mut scratch = alloc::vec![0f32; cols];
                    for r in 0..rows {
                        let a = acts.row(r).expect("row");
                        let want = dot(ty, &bytes, a, &mut scratch).expect("reference");
                        for &isa in &levels {
                            let got = isa.dot(ty, &bytes, a, &mut scratch).expect("kernel");
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{ty} on {}: {got} vs reference {want} (seed {seed}, row {r} of {rows})",
                                isa.name()
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked >= types.len() * 8 * 15);
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn attention_vector_kernels_match_the_reference_on_every_level() {
        for n in [64usize, 128, 7, 72] {
            let x = values(7 + n as u64, n);
            let y = values(8 + n as u64, n);
            let mut halves = alloc::vec![0u16; n];
            vec::encode_f16(&x, &mut halves);
            for isa in Isa::available() {
                let name = isa.name();
                let mut h = alloc::vec![0u16; n];
                isa.encode_f16(&x, &mut h);
                assert_eq!(h, halves, "encode_f16 on {name}");
                let (mut a, mut b) = (alloc::vec![0f32; n], alloc::vec![0f32; n]);
                vec::decode_f16(&halves, &mut a);
                isa.decode_f16(&halves, &mut b);
                assert_eq!(a, b, "decode_f16 on {name}");
                let (mut a, mut b) = (x.clone(), x.clone());
                vec::round_f16_slice(&mut a);
                isa.round_f16_slice(&mut b);
                assert_eq!(a, b, "round_f16_slice on {name}");
                let want = vec::dot_ggml(&x, &y);
                assert_eq!(
                    isa.dot_ggml(&x, &y).to_bits(),
                    want.to_bits(),
                    "dot_ggml on {name}"
                );
                for f16 in [false, true] {
                    let (mut a, mut b) = (x.clone(), x.clone());
                    vec::scale(&mut a, 0.37, f16);
                    isa.scale(&mut b, 0.37, f16);
                    assert_eq!(a, b, "scale on {name}");
                    vec::mad(&mut a, &y, 1.7, f16);
                    isa.mad(&mut b, &y, 1.7, f16);
                    assert_eq!(a, b, "mad on {name}");
                }
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn f16_conversions_match_the_reference_on_every_value_class() {
        // Every half; and f32s at and beside each rounding boundary of every 7th half (ties,
        // carries into the exponent, f16's subnormals), past f16's largest value, f32's own
        // subnormals, infinities and NaNs with payloads. One value more than a multiple of eight
        // runs the kernels' tails too.
        let halves: Vec<u16> = (0..=u16::MAX).chain([0x3c00]).collect();
        let mut floats: Vec<f32> = Vec::new();
        for h in (0..=u16::MAX).step_by(7) {
            let bits = crate::quant::f16_to_f32(h.to_le_bytes()).to_bits();
            for d in [0u32, 1, 0x0fff, 0x1000, 0x1001, 0x1fff] {
                floats.push(f32::from_bits(bits.wrapping_add(d)));
                floats.push(f32::from_bits(bits.wrapping_sub(d)));
            }
        }
        floats.extend([
            65504.0,
            65519.996,
            65520.0,
            65536.0,
            f32::MAX,
            f32::INFINITY,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0x7fbf_ffff),
            f32::from_bits(0xffc1_2345),
            -0.0,
            0.0,
        ]);
        let mut want = alloc::vec![0f32; halves.len()];
        vec::decode_f16(&halves, &mut want);
        let mut rounded = floats.clone();
        vec::round_f16_slice(&mut rounded);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for isa in Isa::available() {
            let mut got = alloc::vec![0f32; halves.len()];
            isa.decode_f16(&halves, &mut got);
            assert!(bits(&got) == bits(&want), "decode_f16 on {}", isa.name());
            let mut got = floats.clone();
            isa.round_f16_slice(&mut got);
            for ((g, w), x) in got.iter().zip(&rounded).zip(&floats) {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "round_f16_slice({x:e} = {:#x}) on {}",
                    x.to_bits(),
                    isa.name()
                );
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn silu_matches_the_reference_on_every_level() {
        // Ordinary activations, plus the edges of the exponential: subnormal and zero results,
        // overflow, infinities, NaN.
        let mut g: Vec<f32> = values(31, 1000).iter().map(|v| v * 8.0).collect();
        g.extend([
            87.0,
            88.7,
            89.0,
            100.0,
            103.9,
            104.0,
            130.0,
            140.0,
            -87.0,
            -88.8,
            -89.0,
            -100.0,
            -130.0,
            200.0,
            -200.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
        ]);
        let u = values(32, g.len());
        let mut want = g.clone();
        vec::silu_mul(&mut want, &u);
        for isa in Isa::available() {
            let mut got = g.clone();
            isa.silu_mul(&mut got, &u);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "silu on {} at {i} (g = {}): {a} vs {b}",
                    isa.name(),
                    g[i]
                );
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn activation_quantization_matches_the_reference_on_every_level() {
        use crate::quant::blocks::BlockQ8_0;
        use crate::quant::dot::{BlockQ8K, quantize_q8_0_rows, quantize_q8_k_rows};
        use bytemuck::Zeroable;
        // Ordinary rows, then blocks of zeros, ties (x.5 after scaling), a repeated largest
        // magnitude of both signs, tiny values, infinities and NaNs.
        let mut x: Vec<f32> = values(51, 256 * 6).iter().map(|v| v * 3.0).collect();
        let mut odd = alloc::vec![0f32; 256];
        for (i, v) in odd.iter_mut().enumerate() {
            *v = (i as f32 - 128.0) * 0.5;
        }
        x.extend(&odd);
        x.extend(core::iter::repeat_n(0.0, 256));
        let mut edges = values(52, 256);
        edges[3] = -9.0;
        edges[200] = 9.0;
        edges[10] = f32::NAN;
        x.extend(&edges);
        let mut tiny = values(53, 256);
        tiny.iter_mut().for_each(|v| *v *= 1e-39);
        x.extend(&tiny);
        let mut inf = values(54, 256);
        inf[77] = f32::INFINITY;
        x.extend(&inf);
        let blocks = x.len() / 32;
        let mut want = (
            alloc::vec![BlockQ8_0::zeroed(); blocks],
            alloc::vec![0f32; blocks],
            alloc::vec![[0i32; 8]; blocks],
            alloc::vec![BlockQ8K::zeroed(); x.len() / 256],
        );
        quantize_q8_0_rows(&x, &mut want.0, &mut want.1, &mut want.2);
        quantize_q8_k_rows(&x, &mut want.3);
        for isa in Isa::available() {
            let mut got = (
                alloc::vec![BlockQ8_0::zeroed(); blocks],
                alloc::vec![0f32; blocks],
                alloc::vec![[0i32; 8]; blocks],
                alloc::vec![BlockQ8K::zeroed(); x.len() / 256],
            );
            isa.quantize_q8_0(&x, &mut got.0, &mut got.1, &mut got.2);
            isa.quantize_q8_k(&x, &mut got.3);
            let bytes = |v: &[BlockQ8_0]| bytemuck::cast_slice::<_, u8>(v).to_vec();
            assert_eq!(bytes(&got.0), bytes(&want.0), "Q8_0 on {}", isa.name());
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.1), bits(&want.1), "Q8_0 scales on {}", isa.name());
            assert_eq!(got.2, want.2, "Q8_0 sums on {}", isa.name());
            for (b, (g, w)) in got.3.iter().zip(&want.3).enumerate() {
                assert_eq!(g.qs, w.qs, "Q8_K block {b} on {}", isa.name());
                assert_eq!(g.bsums, w.bsums, "Q8_K block {b} on {}", isa.name());
                assert_eq!(
                    g.d.to_bits(),
                    w.d.to_bits(),
                    "Q8_K block {b} on {}",
                    isa.name()
                );
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn softmax_exponential_matches_the_reference_on_every_level() {
        // Softmax arguments (mostly negative), every binade's edge cases, and the specials; an
        // odd length so the tails run too.
        let mut x: Vec<f32> = values(41, 2001).iter().map(|v| -v.abs() * 30.0).collect();
        x.extend(values(42, 500).iter().map(|v| v * 100.0));
        x.extend([
            -103.97,
            -103.9,
            -104.0,
            -104.1,
            -87.3,
            88.7,
            89.0,
            89.1,
            1e-30,
            -1e-30,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        let mut want = x.clone();
        vec::expf_slice(&mut want);
        for isa in Isa::available() {
            let mut got = x.clone();
            isa.expf_slice(&mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "expf on {} at {i} (x = {}): {a} vs {b}",
                    isa.name(),
                    x[i]
                );
            }
        }
    }

    fn check_attention(dim: usize) {
        let (kv_heads, len) = (2usize, 40usize);
        let stride = dim * kv_heads;
        let keys = values(21, len * stride);
        let vals = values(22, len * stride);
        let (mut k16, mut v16) = (alloc::vec![0u16; keys.len()], alloc::vec![0u16; vals.len()]);
        vec::encode_f16(&keys, &mut k16);
        vec::encode_f16(&vals, &mut v16);
        let q = values(23, dim);
        for (kr, vr) in [
            (vec::KvRows::F16(&k16), vec::KvRows::F16(&v16)),
            (vec::KvRows::F32(&keys), vec::KvRows::F32(&vals)),
        ] {
            for n in [1, 7, len] {
                let head = vec::AttnHead {
                    keys: kr,
                    values: vr,
                    stride,
                    offset: dim,
                    len: n,
                    scale: 0.125,
                };
                let mut scratch = [alloc::vec![0f32; dim], alloc::vec![0f32; dim]];
                let mut w = Vec::new();
                let (mut want, mut qq) = (alloc::vec![0f32; dim], q.clone());
                let [k, v] = &mut scratch;
                vec::attend(&mut qq, &head, k, v, &mut w, &mut want);
                assert!(want.iter().any(|&x| x != 0.0));
                // An f16 cache converted ahead of time attends the same.
                if let (vec::KvRows::F16(kc), vec::KvRows::F16(vc)) = (kr, vr) {
                    let (mut kw, mut vw) =
                        (alloc::vec![0f32; kc.len()], alloc::vec![0f32; vc.len()]);
                    vec::decode_f16(kc, &mut kw);
                    vec::decode_f16(vc, &mut vw);
                    let widened = vec::AttnHead {
                        keys: vec::KvRows::Widened(&kw),
                        values: vec::KvRows::Widened(&vw),
                        ..head
                    };
                    for isa in Isa::available() {
                        let (mut got, mut qq) = (alloc::vec![0f32; dim], q.clone());
                        isa.attend(&mut qq, &widened, k, v, &mut w, &mut got);
                        assert_eq!(got, want, "widened attend on {} over {n}", isa.name());
                    }
                }
                for isa in Isa::available() {
                    let (mut got, mut qq) = (alloc::vec![0f32; dim], q.clone());
                    isa.attend(&mut qq, &head, k, v, &mut w, &mut got);
                    assert_eq!(got, want, "attend on {} over {n} positions", isa.name());
                }
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn attention_matches_the_reference_on_every_level() {
        // Heads of 64 values (held in registers on x86) and of 40 (the general loop, with a
        // tail past the last run of 16).
        for dim in [64usize, 40] {
            check_attention(dim);
        }
        let (dim, kv_heads, len) = (64usize, 2usize, 40usize);
        let stride = dim * kv_heads;
        let keys = values(21, len * stride);
        let vals = values(22, len * stride);
        let q = values(23, dim);
        // A head reaching past the cache computes nothing rather than reading out of bounds.
        let head = vec::AttnHead {
            keys: vec::KvRows::F32(&keys),
            values: vec::KvRows::F32(&vals),
            stride,
            offset: dim + 1,
            len,
            scale: 1.0,
        };
        for isa in Isa::available() {
            let mut out = alloc::vec![1f32; dim];
            let (mut k, mut v) = (alloc::vec![0f32; dim], alloc::vec![0f32; dim]);
            isa.attend(
                &mut q.clone(),
                &head,
                &mut k,
                &mut v,
                &mut Vec::new(),
                &mut out,
            );
            assert!(out.iter().all(|&x| x == 0.0));
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn q8_0_activations_without_their_sums_give_the_same_products() {
        // `Q8Sums` is an optimisation: a row encoded without it must give the same bits.
        let cols = 128;
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_0] {
            let len = ty.bytes_for(cols as u64).expect("size") as usize;
            let mut bytes = alloc::vec![0u8; 2 * len];
            quantize(ty, &values(7, 2 * cols), &mut bytes).expect("quantize");
            let rows = 5;
            let mut acts = Activations::default();
            acts.encode(ActKind::Q8_0, &values(8, rows * cols), rows, cols)
                .expect("encode");
            let bare: Vec<_> = (0..rows)
                .map(|r| match acts.row(r).expect("row") {
                    ActRow::Q8_0(y, _) => ActRow::Q8_0(y, Q8Sums::default()),
                    _ => unreachable!("Q8_0 rows"),
                })
                .collect();
            let mut want = alloc::vec![0f32; 2 * rows];
            for (i, w) in bytes.chunks_exact(len).enumerate() {
                for (r, &a) in bare.iter().enumerate() {
                    want[r * 2 + i] = dot(ty, w, a, &mut []).expect("reference");
                }
            }
            for isa in Isa::available() {
                let mut got = alloc::vec![0f32; 2 * rows];
                isa.dot_block(ty, &bytes, &bare, &mut [], &mut got)
                    .expect("block");
                assert_eq!(got, want, "{ty} dot_block on {}", isa.name());
                for (r, &a) in bare.iter().enumerate() {
                    let mut pair = [0f32; 2];
                    isa.dot_rows(ty, &bytes, a, &mut [], &mut pair)
                        .expect("rows");
                    assert_eq!(pair[..], want[r * 2..r * 2 + 2], "{ty} on {}", isa.name());
                }
            }
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn hostile_q8_0_weights_at_minus_128_are_exact() {
        // Files can hold -128, which the quantizer never writes; the sign trick must cope.
        let cols = 64;
        let mut bytes = Vec::new();
        for b in 0..cols / 32 {
            bytes.extend_from_slice(&crate::quant::f32_to_f16(0.5 + b as f32));
            bytes.extend((0..32).map(|i| if i % 3 == 0 { 0x80u8 } else { i as u8 }));
        }
        let x: Vec<f32> = (0..cols)
            .map(|i| if i % 2 == 0 { -1.0 } else { 0.75 })
            .collect();
        let mut acts = Activations::default();
        acts.encode(ActKind::Q8_0, &x, 1, cols).expect("encode");
        let a = acts.row(0).expect("row");
        let want = dot(GgmlType::Q8_0, &bytes, a, &mut []).expect("reference");
        for isa in Isa::available() {
            let got = isa.dot(GgmlType::Q8_0, &bytes, a, &mut []).expect("kernel");
            assert_eq!(got.to_bits(), want.to_bits(), "{}", isa.name());
        }
        // And as a prompt's product, where the weights are unpacked once for several rows.
        let rows = 6;
        let xs: Vec<f32> = (0..rows).flat_map(|_| x.iter().copied()).collect();
        let mut acts = Activations::default();
        acts.encode(ActKind::Q8_0, &xs, rows, cols).expect("encode");
        let xs: Vec<_> = (0..rows).map(|r| acts.row(r).expect("row")).collect();
        for isa in Isa::available() {
            let mut got = alloc::vec![0f32; rows];
            isa.dot_block(GgmlType::Q8_0, &bytes, &xs, &mut [], &mut got)
                .expect("block");
            assert!(
                got.iter().all(|g| g.to_bits() == want.to_bits()),
                "{}",
                isa.name()
            );
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn size_mismatches_are_errors_on_every_level() {
        let mut acts = Activations::default();
        acts.encode(ActKind::Q8_0, &[0.5; 64], 1, 64)
            .expect("encode");
        let a = acts.row(0).expect("row");
        for isa in Isa::available() {
            assert!(isa.dot(GgmlType::Q5_0, &[0u8; 21], a, &mut []).is_err());
            assert!(isa.dot(GgmlType::Q8_0, &[0u8; 35], a, &mut []).is_err());
        }
    }
}
