//! aarch64 NEON kernels (NEON is part of the base architecture, so this level is fixed at compile
//! time). Like the x86 ones they compute exactly the scalar reference: the integer sums of each
//! lane of four values are exact, and the float side keeps the reference's eight lanes (two
//! `float32x4_t`), its fused multiply-adds (`vfmaq_f32`) and its final reduction.
//!
//! Types and operations without a kernel here (the K-quants, attention, SiLU) run the reference.

use core::arch::aarch64::*;

use super::super::blocks::*;
use super::super::dot::{ActRow, hsum8, weight_blocks};
use super::super::{QK, QuantError};
use crate::dtype::GgmlType;

#[inline(always)]
fn load16(bytes: &[i8]) -> int8x16_t {
    assert!(bytes.len() >= 16);
    // SAFETY: at least 16 readable bytes, checked above.
    unsafe { vld1q_s8(bytes.as_ptr()) }
}

/// The eight lane sums of a block: lane `l` is the sum of the products of bytes `4l..4l + 4`.
#[inline(always)]
fn lanes(x: [int8x16_t; 2], y: [int8x16_t; 2]) -> [int32x4_t; 2] {
    // SAFETY: NEON is part of aarch64.
    unsafe {
        let half = |a: int8x16_t, b: int8x16_t| {
            // i8 x i8 fits i16; pairs to i32, then pairs of pairs: runs of four.
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
            let hi = vpaddlq_s16(vmull_high_s8(a, b));
            vpaddq_s32(lo, hi)
        };
        [half(x[0], y[0]), half(x[1], y[1])]
    }
}

/// Byte `j` of entry `b` is 0x10 when bit `j` of `b` is set.
const SPREAD: [u64; 256] = {
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

/// A block's 32 signed values as two vectors.
trait Unpack {
    fn scale(&self) -> [u8; 2];
    fn values(&self) -> [int8x16_t; 2];
}

impl Unpack for BlockQ8_0 {
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [int8x16_t; 2] {
        [load16(&self.qs[..16]), load16(&self.qs[16..])]
    }
}

/// Low nibbles (values 0..16) and high nibbles (16..32) of 16 bytes.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [uint8x16_t; 2] {
    // SAFETY: NEON is part of aarch64; 16 readable bytes.
    unsafe {
        let q = vld1q_u8(qs.as_ptr());
        [vandq_u8(q, vdupq_n_u8(0x0f)), vshrq_n_u8(q, 4)]
    }
}

impl Unpack for BlockQ4_0 {
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [int8x16_t; 2] {
        let [lo, hi] = nibbles(&self.qs);
        // SAFETY: NEON is part of aarch64.
        unsafe {
            let eight = vdupq_n_s8(8);
            [
                vsubq_s8(vreinterpretq_s8_u8(lo), eight),
                vsubq_s8(vreinterpretq_s8_u8(hi), eight),
            ]
        }
    }
}

impl Unpack for BlockQ5_0 {
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [int8x16_t; 2] {
        let [lo, hi] = nibbles(&self.qs);
        let qh = u32::from_le_bytes(self.qh);
        // The fifth bit of value i is bit i of qh, spread to 0x10 in byte i through a table.
        let spread = |bits: u32| -> uint8x16_t {
            let lo = SPREAD[(bits & 0xff) as usize];
            let hi = SPREAD[((bits >> 8) & 0xff) as usize];
            // SAFETY: NEON is part of aarch64.
            unsafe { vcombine_u8(vcreate_u8(lo), vcreate_u8(hi)) }
        };
        // SAFETY: NEON is part of aarch64.
        unsafe {
            let sixteen = vdupq_n_s8(16);
            [
                vsubq_s8(
                    vreinterpretq_s8_u8(vorrq_u8(lo, spread(qh & 0xffff))),
                    sixteen,
                ),
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(hi, spread(qh >> 16))), sixteen),
            ]
        }
    }
}

/// `dot::blocks` for one weight row.
#[inline(always)]
fn legacy<B: Unpack>(w: &[B], y: &[BlockQ8_0]) -> f32 {
    // SAFETY: NEON is part of aarch64.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 2];
        for (b, a) in w.iter().zip(y) {
            let d =
                vdupq_n_f32(super::super::f16_to_f32(b.scale()) * super::super::f16_to_f32(a.d));
            let ys = [load16(&a.qs[..16]), load16(&a.qs[16..])];
            let sums = lanes(b.values(), ys);
            for k in 0..2 {
                acc[k] = vfmaq_f32(acc[k], vcvtq_f32_s32(sums[k]), d);
            }
        }
        let mut lanes = [0f32; 8];
        vst1q_f32(lanes.as_mut_ptr(), acc[0]);
        vst1q_f32(lanes.as_mut_ptr().add(4), acc[1]);
        hsum8(&lanes)
    }
}

/// `dot::dot_f32`: eight running sums of unfused products, then the reference's tail.
pub(super) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    // SAFETY: NEON is part of aarch64; chunks of eight values.
    unsafe {
        let mut v = [vdupq_n_f32(0.0); 2];
        for (a, b) in wc.zip(xc) {
            for (k, lanes) in v.iter_mut().enumerate() {
                let p = vmulq_f32(
                    vld1q_f32(a.as_ptr().add(4 * k)),
                    vld1q_f32(b.as_ptr().add(4 * k)),
                );
                *lanes = vaddq_f32(*lanes, p);
            }
        }
        vst1q_f32(acc.as_mut_ptr(), v[0]);
        vst1q_f32(acc.as_mut_ptr().add(4), v[1]);
    }
    let mut sum = acc.iter().sum::<f32>();
    for (a, b) in wr.iter().zip(xr) {
        sum += a * b;
    }
    sum
}

/// `out[i] = w_i · x` for the weight rows in `bytes`, when NEON has a kernel for `ty`.
pub(super) fn dot_rows(
    ty: GgmlType,
    bytes: &[u8],
    x: ActRow<'_>,
    out: &mut [f32],
) -> Result<Option<()>, QuantError> {
    let rows = out.len();
    match (ty, x) {
        (GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_0, ActRow::Q8_0(y, _))
            if !y.is_empty() && rows > 0 =>
        {
            let n = y.len();
            match ty {
                GgmlType::Q8_0 => {
                    let w: &[BlockQ8_0] = weight_blocks(ty, bytes, n * rows, QK)?;
                    for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
                        *o = legacy(row, y);
                    }
                }
                GgmlType::Q5_0 => {
                    let w: &[BlockQ5_0] = weight_blocks(ty, bytes, n * rows, QK)?;
                    for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
                        *o = legacy(row, y);
                    }
                }
                _ => {
                    let w: &[BlockQ4_0] = weight_blocks(ty, bytes, n * rows, QK)?;
                    for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
                        *o = legacy(row, y);
                    }
                }
            }
            Ok(Some(()))
        }
        (GgmlType::F32, ActRow::F32(y)) if !y.is_empty() && rows > 0 => {
            match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                Ok(w) if w.len() == y.len() * rows => {
                    for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
                        *o = dot_f32(row, y);
                    }
                    Ok(Some(()))
                }
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}
