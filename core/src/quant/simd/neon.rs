//! aarch64 NEON kernels (NEON is part of the base architecture, so this level is fixed at compile
//! time). Like the x86 ones they compute exactly the scalar reference: the integer sums of each
//! lane of four values are exact, and the float side keeps the reference's eight lanes (two
//! `float32x4_t`), its fused multiply-adds (`vfmaq_f32`) and its final reduction.
//!
//! The K-quants compute their exact integer parts here and share the reference's float side.
//! Types and operations without a kernel here (f16, bf16, attention, SiLU) run the reference.

use core::arch::aarch64::*;

use super::super::blocks::*;
use super::super::dot::{BlockQ8K, Q8Sums, hsum8, k4_scales_mins};

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
        // SAFETY: NEON is part of aarch64.
        five_bit_levels(&self.qs, self.qh).map(|v| unsafe { vsubq_s8(v, vdupq_n_s8(16)) })
    }
}

/// Q4_1's 32 levels (0..15, which fit i8).
#[inline(always)]
fn levels_q4_1(b: &BlockQ4_1) -> [int8x16_t; 2] {
    // SAFETY: NEON is part of aarch64.
    nibbles(&b.qs).map(|v| unsafe { vreinterpretq_s8_u8(v) })
}

/// The 32 unsigned five-bit levels (0..31, which fit i8) of Q5_0 and Q5_1 blocks: nibbles, and
/// bit i of `qh` as the fifth bit of value i, spread to 0x10 in byte i through a table.
#[inline(always)]
fn five_bit_levels(qs: &[u8; 16], qh: [u8; 4]) -> [int8x16_t; 2] {
    let [lo, hi] = nibbles(qs);
    let qh = u32::from_le_bytes(qh);
    let spread = |bits: u32| -> uint8x16_t {
        let lo = super::Q5_SPREAD[(bits & 0xff) as usize];
        let hi = super::Q5_SPREAD[((bits >> 8) & 0xff) as usize];
        // SAFETY: NEON is part of aarch64.
        unsafe { vcombine_u8(vcreate_u8(lo), vcreate_u8(hi)) }
    };
    // SAFETY: NEON is part of aarch64.
    unsafe {
        [
            vreinterpretq_s8_u8(vorrq_u8(lo, spread(qh & 0xffff))),
            vreinterpretq_s8_u8(vorrq_u8(hi, spread(qh >> 16))),
        ]
    }
}

/// `dot::offset_fold` over this level's integer lanes; `parts` gives a block's scale, minimum
/// and levels.
#[inline(always)]
fn offset<B>(
    w: &[B],
    y: &[BlockQ8_0],
    s: &[f32],
    parts: impl Fn(&B) -> ([u8; 2], [u8; 2], [int8x16_t; 2]),
) -> f32 {
    super::super::dot::offset_fold(w, y, s, |b, a| {
        let (d, m, levels) = parts(b);
        let sums = lanes(levels, [load16(&a.qs[..16]), load16(&a.qs[16..])]);
        let mut out = [0i32; 8];
        // SAFETY: NEON is part of aarch64; `out` holds eight i32.
        unsafe {
            vst1q_s32(out.as_mut_ptr(), sums[0]);
            vst1q_s32(out.as_mut_ptr().add(4), sums[1]);
        }
        (d, m, out)
    })
}

/// [`legacy`] for each of the rows of `y.len()` blocks in `w`.
fn legacy_rows<B: Unpack>(w: &[B], y: &[BlockQ8_0], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
        *o = legacy(row, y);
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

/// `dot::q4_k_ints`: per group of 32 values the scaled level sum and the min correction.
#[inline(always)]
fn q4_k_ints(b: &BlockQ4K, a: &BlockQ8K) -> ([i32; 8], [i32; 8]) {
    let (scales, mins) = k4_scales_mins(&b.scales);
    let mut levels = [0i32; 8];
    // SAFETY: NEON is part of aarch64; every load reads 16 bytes inside its block.
    unsafe {
        for p in 0..4 {
            let q = [
                vld1q_u8(b.qs[32 * p..].as_ptr()),
                vld1q_u8(b.qs[32 * p + 16..].as_ptr()),
            ];
            for (g, nibbles) in [
                (2 * p, q.map(|v| vandq_u8(v, vdupq_n_u8(0x0f)))),
                (2 * p + 1, q.map(|v| vshrq_n_u8(v, 4))),
            ] {
                let y = [load16(&a.qs[32 * g..]), load16(&a.qs[32 * g + 16..])];
                let s = lanes(nibbles.map(|v| vreinterpretq_s8_u8(v)), y);
                levels[g] = i32::from(scales[g]) * vaddvq_s32(vaddq_s32(s[0], s[1]));
            }
        }
    }
    (levels, super::super::dot::q4_k_corrections(&mins, a))
}

/// `dot::lanes_q6_k`'s eight integer lane sums.
#[inline(always)]
fn q6_k_lanes(x: &BlockQ6K, y: &BlockQ8K) -> [i32; 8] {
    let mut lanes8 = [0i32; 8];
    // SAFETY: NEON is part of aarch64; every load reads 16 bytes inside its block.
    unsafe {
        let mut acc = [vdupq_n_s32(0); 2];
        for half in 0..2 {
            let ql = &x.ql[64 * half..64 * half + 64];
            let qh = &x.qh[32 * half..32 * half + 32];
            let low = [vld1q_u8(ql.as_ptr()), vld1q_u8(ql[16..].as_ptr())];
            let high = [vld1q_u8(ql[32..].as_ptr()), vld1q_u8(ql[48..].as_ptr())];
            let bits = [vld1q_u8(qh.as_ptr()), vld1q_u8(qh[16..].as_ptr())];
            for c in 0..4 {
                // Run c of 32 values: a nibble of `ql` (which half of it, and which nibble, by
                // c) and two bits of `qh` (shifted by 2c) as the level's top bits.
                let src = if c % 2 == 0 { low } else { high };
                let shift = vdupq_n_s8(-2 * c as i8);
                let level = |k: usize| {
                    let nibble = if c < 2 {
                        vandq_u8(src[k], vdupq_n_u8(0x0f))
                    } else {
                        vshrq_n_u8(src[k], 4)
                    };
                    let top = vandq_u8(vshlq_u8(bits[k], shift), vdupq_n_u8(3));
                    vreinterpretq_s8_u8(vorrq_u8(nibble, vshlq_n_u8(top, 4)))
                };
                let v = 128 * half + 32 * c;
                let ys = [load16(&y.qs[v..]), load16(&y.qs[v + 16..])];
                let s = lanes([level(0), level(1)], ys);
                acc[0] = vmlaq_n_s32(acc[0], s[0], i32::from(x.scales[v / 16]));
                acc[1] = vmlaq_n_s32(acc[1], s[1], i32::from(x.scales[v / 16 + 1]));
            }
        }
        vst1q_s32(lanes8.as_mut_ptr(), acc[0]);
        vst1q_s32(lanes8.as_mut_ptr().add(4), acc[1]);
    }
    super::super::dot::q6_k_offsets(x, y, &mut lanes8);
    lanes8
}

/// `dot::q5_k_ints`: lane `l` of the result sums the values whose index mod 8 is `l`.
#[inline(always)]
fn q5_k_ints(x: &BlockQ5K, y: &BlockQ8K) -> ([i32; 8], i32) {
    let (scales, mins) = k4_scales_mins(&x.scales);
    let mut lanes8 = [0i32; 8];
    // SAFETY: NEON is part of aarch64; every load reads 16 bytes inside its block.
    unsafe {
        // Lanes 0..4 and 4..8.
        let mut acc = [vdupq_n_s32(0); 2];
        for j in 0..4 {
            // Values 16h..16h + 16 of groups 2j (low nibbles) and 2j + 1 (high nibbles); 16h
            // is a multiple of 8, so each value keeps its lane.
            for h in 0..2 {
                let q4 = vld1q_u8(x.qs[32 * j + 16 * h..].as_ptr());
                let qh = vld1q_u8(x.qh[16 * h..].as_ptr());
                for (half, &scale) in scales[2 * j..2 * j + 2].iter().enumerate() {
                    let g = 2 * j + half;
                    let low = if half == 0 {
                        vandq_u8(q4, vdupq_n_u8(0x0f))
                    } else {
                        vshrq_n_u8(q4, 4)
                    };
                    let fifth = vandq_u8(vtstq_u8(qh, vdupq_n_u8(1 << g)), vdupq_n_u8(16));
                    let level = vorrq_u8(low, fifth);
                    let a = load16(&y.qs[32 * g + 16 * h..]);
                    // Levels below 32 times i8 fit i16: values 0..8, then 8..16.
                    let p0 = vmulq_s16(
                        vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(level))),
                        vmovl_s8(vget_low_s8(a)),
                    );
                    let p1 = vmulq_s16(
                        vreinterpretq_s16_u16(vmovl_high_u8(level)),
                        vmovl_high_s8(a),
                    );
                    let s0 = vaddl_s16(vget_low_s16(p0), vget_low_s16(p1));
                    let s1 = vaddl_high_s16(p0, p1);
                    acc[0] = vmlaq_n_s32(acc[0], s0, i32::from(scale));
                    acc[1] = vmlaq_n_s32(acc[1], s1, i32::from(scale));
                }
            }
        }
        vst1q_s32(lanes8.as_mut_ptr(), acc[0]);
        vst1q_s32(lanes8.as_mut_ptr().add(4), acc[1]);
    }
    (lanes8, super::super::dot::q5_k_mins(&mins, y))
}

/// This level's kernels for the shared row loop.
pub(super) struct Kernels;

impl super::RowKernels for Kernels {
    fn q8_0(w: &[BlockQ8_0], y: &[BlockQ8_0], _: Q8Sums<'_>, out: &mut [f32]) {
        legacy_rows(w, y, out);
    }
    fn q5_0(w: &[BlockQ5_0], y: &[BlockQ8_0], _: Q8Sums<'_>, out: &mut [f32]) {
        legacy_rows(w, y, out);
    }
    fn q4_0(w: &[BlockQ4_0], y: &[BlockQ8_0], _: Q8Sums<'_>, out: &mut [f32]) {
        legacy_rows(w, y, out);
    }
    fn f32(w: &[f32], x: &[f32]) -> f32 {
        dot_f32(w, x)
    }
    fn q4_k(w: &[BlockQ4K], y: &[BlockQ8K], grouped: bool) -> f32 {
        super::super::dot::q4_k_fold(w, y, grouped, q4_k_ints)
    }
    fn q4_1(w: &[BlockQ4_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
        offset(w, y, s, |b| (b.d, b.m, levels_q4_1(b)))
    }
    fn q5_1(w: &[BlockQ5_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
        offset(w, y, s, |b| (b.d, b.m, five_bit_levels(&b.qs, b.qh)))
    }
    fn q5_k(w: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
        super::super::dot::q5_k_fold(w, y, q5_k_ints)
    }
    fn q6_k(w: &[BlockQ6K], y: &[BlockQ8K], tiled: bool) -> f32 {
        super::super::dot::q6_k_fold(w, y, tiled, q6_k_lanes)
    }
}
