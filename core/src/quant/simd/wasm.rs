//! wasm32 `simd128` kernels, compiled in when the build enables the feature
//! (`-C target-feature=+simd128`). Like the others they compute exactly the scalar reference.
//!
//! Plain SIMD128 has no fused multiply-add, and the reference fuses. A fused `acc + d * s` is
//! recovered exactly in f64: `d * s` is exact there (24 + 17 bits), the sum is rounded to odd (a
//! two-sum gives its error, which fixes the last bit), and rounding that to f32 is then the
//! correctly rounded fused result. That costs most of a block's work, so the web build also makes
//! a second worker with `-C target-feature=+relaxed-simd`, where the fused step is relaxed SIMD's
//! `madd` (see [`fma_lanes`]); the page picks it where the browser has relaxed SIMD.
//!
//! The K-quants compute their exact integer parts here and share the reference's float side.
//! Types and operations without a kernel here (f16, bf16, attention, SiLU) run the reference.

use core::arch::wasm32::*;

use super::super::blocks::*;
use super::super::dot::{BlockQ8K, hsum8, k4_scales_mins};
use super::super::{QK, f16_to_f32};

#[inline(always)]
fn load16(bytes: &[u8]) -> v128 {
    assert!(bytes.len() >= 16);
    // SAFETY: at least 16 readable bytes, checked above; v128_load needs no alignment.
    unsafe { v128_load(bytes.as_ptr().cast()) }
}

/// Four lane sums of 16 signed bytes: lane `l` is the sum of the products of bytes `4l..4l + 4`.
#[inline(always)]
fn quads(x: v128, y: v128) -> v128 {
    let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(x), i16x8_extend_low_i8x16(y));
    let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(x), i16x8_extend_high_i8x16(y));
    i32x4_add(
        i32x4_shuffle::<0, 2, 4, 6>(lo, hi),
        i32x4_shuffle::<1, 3, 5, 7>(lo, hi),
    )
}

/// `a + b` in f64, rounded to odd: correct to round once more to f32.
#[cfg(not(target_feature = "relaxed-simd"))]
#[inline(always)]
fn add_to_odd(a: v128, b: v128) -> v128 {
    let s = f64x2_add(a, b);
    // Knuth's two-sum: s + err == a + b exactly.
    let bb = f64x2_sub(s, a);
    let err = f64x2_add(f64x2_sub(a, f64x2_sub(s, bb)), f64x2_sub(b, bb));
    // Inexact, finite and even: step one unit in the last place towards the exact value.
    let inexact = f64x2_ne(err, f64x2_splat(0.0));
    let finite = f64x2_lt(f64x2_abs(s), f64x2_splat(f64::INFINITY));
    let even = i64x2_eq(v128_and(s, i64x2_splat(1)), i64x2_splat(0));
    let fix = v128_and(v128_and(inexact, finite), even);
    // Towards the exact value: away from zero when err has the sign of s, else towards zero.
    let same_sign = i64x2_ge(v128_xor(s, err), i64x2_splat(0));
    let step = v128_bitselect(i64x2_splat(1), i64x2_splat(-1), same_sign);
    i64x2_add(s, v128_and(step, fix))
}

/// `fmaf(d, s, acc)` lane by lane: `s` holds i32 lane sums (exact in f32: at most 2^17).
///
/// With relaxed SIMD this is one `f32x4.relaxed_madd`, which engines fuse wherever the CPU has
/// a fused multiply-add (x86-64 with FMA3, every arm64), giving the reference's results bit for
/// bit at a fraction of the cost; on a CPU without one the engine multiplies and adds, and the
/// sums may differ from the reference in the last bit. The page loads this build only where the
/// browser validates relaxed SIMD.
#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
fn fma_lanes(acc: v128, s: v128, d: f32) -> v128 {
    f32x4_relaxed_madd(f32x4_splat(d), f32x4_convert_i32x4(s), acc)
}

/// `fmaf(d, s, acc)` lane by lane, exactly: `s` holds i32 lane sums.
#[cfg(not(target_feature = "relaxed-simd"))]
#[inline(always)]
fn fma_lanes(acc: v128, s: v128, d: f32) -> v128 {
    let d = f64x2_splat(f64::from(d));
    let half = |acc: v128, s: v128| {
        let p = f64x2_mul(d, f64x2_convert_low_i32x4(s));
        f32x4_demote_f64x2_zero(add_to_odd(f64x2_promote_low_f32x4(acc), p))
    };
    let lo = half(acc, s);
    let hi = half(
        i32x4_shuffle::<2, 3, 0, 1>(acc, acc),
        i32x4_shuffle::<2, 3, 0, 1>(s, s),
    );
    i32x4_shuffle::<0, 1, 4, 5>(lo, hi)
}

/// A block's 32 signed values as two vectors, and its scale.
trait Unpack {
    fn scale(&self) -> [u8; 2];
    fn values(&self) -> [v128; 2];
}

impl Unpack for BlockQ8_0 {
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [v128; 2] {
        let q: &[u8; QK] = bytemuck::cast_ref(&self.qs);
        [load16(&q[..16]), load16(&q[16..])]
    }
}

/// Low nibbles (values 0..16) and high nibbles (16..32) of 16 bytes.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [v128; 2] {
    let q = load16(qs);
    [v128_and(q, u8x16_splat(0x0f)), u8x16_shr(q, 4)]
}

impl Unpack for BlockQ4_0 {
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [v128; 2] {
        let [lo, hi] = nibbles(&self.qs);
        [i8x16_sub(lo, i8x16_splat(8)), i8x16_sub(hi, i8x16_splat(8))]
    }
}

impl Unpack for BlockQ5_0 {
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [v128; 2] {
        let [lo, hi] = nibbles(&self.qs);
        let [bits_lo, bits_hi] = fifth_bits(self.qh);
        let sixteen = i8x16_splat(16);
        [
            i8x16_sub(v128_or(lo, bits_lo), sixteen),
            i8x16_sub(v128_or(hi, bits_hi), sixteen),
        ]
    }
}

/// `dot::blocks` for one weight row.
#[inline(always)]
fn legacy<B: Unpack>(w: &[B], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [f32x4_splat(0.0); 2];
    for (b, a) in w.iter().zip(y) {
        let d = f16_to_f32(b.scale()) * f16_to_f32(a.d);
        let x = b.values();
        let ys = a.values();
        acc[0] = fma_lanes(acc[0], quads(x[0], ys[0]), d);
        acc[1] = fma_lanes(acc[1], quads(x[1], ys[1]), d);
    }
    hsum_lanes(acc)
}

/// [`hsum8`] of eight f32 lanes held in two vectors.
#[inline(always)]
fn hsum_lanes(acc: [v128; 2]) -> f32 {
    let lane = |v: v128, i: usize| match i {
        0 => f32x4_extract_lane::<0>(v),
        1 => f32x4_extract_lane::<1>(v),
        2 => f32x4_extract_lane::<2>(v),
        _ => f32x4_extract_lane::<3>(v),
    };
    let lanes: [f32; 8] = core::array::from_fn(|i| lane(acc[i / 4], i % 4));
    hsum8(&lanes)
}

/// `dot::offset_fold` for Q4_1/Q5_1 rows: `parts` gives a block's scale, minimum and levels
/// (unsigned, small enough for i8).
#[inline(always)]
fn offset<B>(
    w: &[B],
    y: &[BlockQ8_0],
    s: &[f32],
    parts: impl Fn(&B) -> ([u8; 2], [u8; 2], [v128; 2]),
) -> f32 {
    let mut acc = [f32x4_splat(0.0); 2];
    let mut summs = 0f32;
    for ((b, a), &s) in w.iter().zip(y).zip(s) {
        let (d, m, x) = parts(b);
        summs += f16_to_f32(m) * s;
        let d = f16_to_f32(d) * f16_to_f32(a.d);
        let ys = a.values();
        acc[0] = fma_lanes(acc[0], quads(x[0], ys[0]), d);
        acc[1] = fma_lanes(acc[1], quads(x[1], ys[1]), d);
    }
    hsum_lanes(acc) + summs
}

/// Q5_0's and Q5_1's fifth bits: bit `i` of `qh` as 0x10 in byte `i`, values 0..16 then 16..32.
#[inline(always)]
fn fifth_bits(qh: [u8; 4]) -> [v128; 2] {
    let qh = u32::from_le_bytes(qh);
    let spread = |bits: u32| {
        u64x2(
            super::Q5_SPREAD[(bits & 0xff) as usize],
            super::Q5_SPREAD[((bits >> 8) & 0xff) as usize],
        )
    };
    [spread(qh & 0xffff), spread(qh >> 16)]
}

/// `dot::dot_f32`: eight running sums of unfused products, then the reference's tail.
pub(super) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    let mut v = [f32x4_splat(0.0); 2];
    for (a, b) in wc.zip(xc) {
        for (k, lanes) in v.iter_mut().enumerate() {
            // SAFETY: chunks of eight values.
            let (p, q) = unsafe {
                (
                    v128_load(a.as_ptr().add(4 * k).cast()),
                    v128_load(b.as_ptr().add(4 * k).cast()),
                )
            };
            *lanes = f32x4_add(*lanes, f32x4_mul(p, q));
        }
    }
    let mut acc = [0f32; 8];
    for (k, lanes) in v.iter().enumerate() {
        // SAFETY: `acc` holds eight f32.
        unsafe { v128_store(acc.as_mut_ptr().add(4 * k).cast(), *lanes) };
    }
    let mut sum = acc.iter().sum::<f32>();
    for (a, b) in wr.iter().zip(xr) {
        sum += a * b;
    }
    sum
}

/// This level's kernels for the shared row loop.
pub(super) struct Kernels;

/// The sum of four i32 lanes.
#[inline(always)]
fn hsum4(v: v128) -> i32 {
    i32x4_extract_lane::<0>(v)
        + i32x4_extract_lane::<1>(v)
        + i32x4_extract_lane::<2>(v)
        + i32x4_extract_lane::<3>(v)
}

/// `dot::q4_k_ints`: per group of 32 values the scaled level sum and the min correction.
#[inline(always)]
fn q4_k_ints(b: &BlockQ4K, a: &BlockQ8K) -> ([i32; 8], [i32; 8]) {
    let (scales, mins) = k4_scales_mins(&b.scales);
    let ys: &[u8] = bytemuck::cast_slice(&a.qs);
    let mut levels = [0i32; 8];
    for p in 0..4 {
        let q = [load16(&b.qs[32 * p..]), load16(&b.qs[32 * p + 16..])];
        for (g, nibbles) in [
            (2 * p, q.map(|v| v128_and(v, u8x16_splat(0x0f)))),
            (2 * p + 1, q.map(|v| u8x16_shr(v, 4))),
        ] {
            let s = i32x4_add(
                quads(nibbles[0], load16(&ys[32 * g..])),
                quads(nibbles[1], load16(&ys[32 * g + 16..])),
            );
            levels[g] = i32::from(scales[g]) * hsum4(s);
        }
    }
    (levels, super::super::dot::q4_k_corrections(&mins, a))
}

/// `dot::lanes_q6_k`'s eight integer lane sums.
#[inline(always)]
fn q6_k_lanes(x: &BlockQ6K, y: &BlockQ8K) -> [i32; 8] {
    let ys: &[u8] = bytemuck::cast_slice(&y.qs);
    let mut acc = [i32x4_splat(0); 2];
    for half in 0..2 {
        let ql = &x.ql[64 * half..64 * half + 64];
        let qh = &x.qh[32 * half..32 * half + 32];
        let low = [load16(ql), load16(&ql[16..])];
        let high = [load16(&ql[32..]), load16(&ql[48..])];
        let bits = [load16(qh), load16(&qh[16..])];
        for c in 0..4 {
            // Run c of 32 values: a nibble of `ql` (which half of it, and which nibble, by c)
            // and two bits of `qh` (shifted by 2c) as the level's top bits.
            let src = if c % 2 == 0 { low } else { high };
            let level = |k: usize| {
                let nibble = if c < 2 {
                    v128_and(src[k], u8x16_splat(0x0f))
                } else {
                    u8x16_shr(src[k], 4)
                };
                let top = v128_and(u8x16_shr(bits[k], 2 * c as u32), u8x16_splat(3));
                v128_or(nibble, i8x16_shl(top, 4))
            };
            let v = 128 * half + 32 * c;
            let s = [
                quads(level(0), load16(&ys[v..])),
                quads(level(1), load16(&ys[v + 16..])),
            ];
            for (k, acc) in acc.iter_mut().enumerate() {
                let scale = i32x4_splat(i32::from(x.scales[v / 16 + k]));
                *acc = i32x4_add(*acc, i32x4_mul(s[k], scale));
            }
        }
    }
    let mut lanes = i32_lanes(acc);
    super::super::dot::q6_k_offsets(x, y, &mut lanes);
    lanes
}

/// Eight i32 lanes held in two vectors, in order.
#[inline(always)]
fn i32_lanes(acc: [v128; 2]) -> [i32; 8] {
    let lane = |v: v128, i: usize| match i {
        0 => i32x4_extract_lane::<0>(v),
        1 => i32x4_extract_lane::<1>(v),
        2 => i32x4_extract_lane::<2>(v),
        _ => i32x4_extract_lane::<3>(v),
    };
    core::array::from_fn(|i| lane(acc[i / 4], i % 4))
}

/// `dot::q5_k_ints`: lane `l` of the result sums the values whose index mod 8 is `l`.
#[inline(always)]
fn q5_k_ints(x: &BlockQ5K, y: &BlockQ8K) -> ([i32; 8], i32) {
    let (scales, mins) = k4_scales_mins(&x.scales);
    let ys: &[u8] = bytemuck::cast_slice(&y.qs);
    // Lanes 0..4 and 4..8.
    let mut acc = [i32x4_splat(0); 2];
    for j in 0..4 {
        // Values 16h..16h + 16 of groups 2j (low nibbles) and 2j + 1 (high nibbles); 16h is a
        // multiple of 8, so each value keeps its lane.
        for h in 0..2 {
            let q4 = load16(&x.qs[32 * j + 16 * h..]);
            let qh = load16(&x.qh[16 * h..]);
            for (half, &scale) in scales[2 * j..2 * j + 2].iter().enumerate() {
                let g = 2 * j + half;
                let low = if half == 0 {
                    v128_and(q4, u8x16_splat(0x0f))
                } else {
                    u8x16_shr(q4, 4)
                };
                let bit = u8x16_splat(1 << g);
                let fifth = v128_and(i8x16_eq(v128_and(qh, bit), bit), u8x16_splat(16));
                let level = v128_or(low, fifth);
                let a = load16(&ys[32 * g + 16 * h..]);
                // Levels below 32 times i8 fit i16: values 0..8, then 8..16.
                let p0 = i16x8_mul(u16x8_extend_low_u8x16(level), i16x8_extend_low_i8x16(a));
                let p1 = i16x8_mul(u16x8_extend_high_u8x16(level), i16x8_extend_high_i8x16(a));
                let s0 = i32x4_add(i32x4_extend_low_i16x8(p0), i32x4_extend_low_i16x8(p1));
                let s1 = i32x4_add(i32x4_extend_high_i16x8(p0), i32x4_extend_high_i16x8(p1));
                let scale = i32x4_splat(i32::from(scale));
                acc[0] = i32x4_add(acc[0], i32x4_mul(s0, scale));
                acc[1] = i32x4_add(acc[1], i32x4_mul(s1, scale));
            }
        }
    }
    (i32_lanes(acc), super::super::dot::q5_k_mins(&mins, y))
}

impl super::RowKernels for Kernels {
    fn q8_0(w: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
        legacy(w, y)
    }
    fn q5_0(w: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
        legacy(w, y)
    }
    fn q4_0(w: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
        legacy(w, y)
    }
    fn f32(w: &[f32], x: &[f32]) -> f32 {
        dot_f32(w, x)
    }
    fn q4_k(w: &[BlockQ4K], y: &[BlockQ8K], grouped: bool) -> f32 {
        super::super::dot::q4_k_fold(w, y, grouped, q4_k_ints)
    }
    fn q4_1(w: &[BlockQ4_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
        offset(w, y, s, |b| (b.d, b.m, nibbles(&b.qs)))
    }
    fn q5_1(w: &[BlockQ5_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
        offset(w, y, s, |b| {
            let [lo, hi] = nibbles(&b.qs);
            let [bits_lo, bits_hi] = fifth_bits(b.qh);
            (b.d, b.m, [v128_or(lo, bits_lo), v128_or(hi, bits_hi)])
        })
    }
    fn q5_k(w: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
        super::super::dot::q5_k_fold(w, y, q5_k_ints)
    }
    fn q6_k(w: &[BlockQ6K], y: &[BlockQ8K], tiled: bool) -> f32 {
        super::super::dot::q6_k_fold(w, y, tiled, q6_k_lanes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact fused multiply-add against libm's, on values chosen to round both ways,
    /// including near ties where rounding twice would go wrong.
    #[wasm_bindgen_test::wasm_bindgen_test]
    fn fused_multiply_add_is_exact() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..200_000u32 {
            let r = next();
            let acc =
                f32::from_bits((r as u32 & 0x807f_ffff) | (((r >> 32) as u32 % 40 + 100) << 23));
            let d = f32::from_bits(
                ((r >> 16) as u32 & 0x807f_ffff) | ((((r >> 48) as u32) % 30 + 110) << 23),
            );
            let s = (next() as i32) >> (15 + i % 16);
            let v = fma_lanes(f32x4_splat(acc), i32x4_splat(s), d);
            let got = f32x4_extract_lane::<0>(v);
            let want = libm::fmaf(d, s as f32, acc);
            assert_eq!(got.to_bits(), want.to_bits(), "fma({d}, {s}, {acc})");
            // The scalar one the reference uses, too.
            let scalar = crate::quant::fmaf(d, s as f32, acc);
            assert_eq!(scalar.to_bits(), want.to_bits(), "fmaf({d}, {s}, {acc})");
        }
        // Sums a hair above an f32 midpoint, by less than an f64 unit: rounding the f64 sum to
        // nearest and then to f32 lands on the midpoint and rounds the wrong way.
        let n = (1u64 << 30) + 1;
        let mut near_ties = 0;
        for s in 64..=131_072u64 {
            if n.is_multiple_of(s) && n / s < 1 << 24 {
                let d = (n / s) as f32 * 2f32.powi(-54);
                for (acc, d) in [(1.0f32, d), (-1.0, -d)] {
                    let v = fma_lanes(f32x4_splat(acc), i32x4_splat(s as i32), d);
                    let want = libm::fmaf(d, s as f32, acc);
                    assert_ne!(want, acc, "a near tie must round away from {acc}");
                    assert_eq!(f32x4_extract_lane::<0>(v).to_bits(), want.to_bits());
                    near_ties += 1;
                }
            }
        }
        assert!(near_ties >= 8);
        // Infinities pass through as the reference has them.
        let v = fma_lanes(f32x4_splat(1.0), i32x4_splat(3), f32::INFINITY);
        assert_eq!(f32x4_extract_lane::<0>(v), f32::INFINITY);
    }
}
