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
//! With relaxed SIMD the integer sums take its i8 × i7 dot product ([`quads_u7`]), so weights go
//! in as unsigned levels below 128: Q5_0's and Q4_0's before their offset (removed with the
//! activation's precomputed lane sums), Q8_0's split into low seven bits and sign bit, the
//! K-quants' as they are. A prompt's product ([`dot_block`]) unpacks each weight block once for
//! four activation rows.
//!
//! The K-quants compute their exact integer parts here and share the reference's float side.
//! Attention over an f16 cache converts and rounds f16 with integer lane operations (engines
//! have no f16 instructions) and sums with the fused multiply-add. Types and operations without
//! a kernel here (f16 and bf16 weights, SiLU, the exponentials) run the reference.

use core::arch::wasm32::*;

use super::super::blocks::*;
use super::super::dot::{
    ActRow, BatchRow, BlockQ8K, Q4KFold, Q6KFold, Q8Sums, hsum8, k4_scales_mins,
};
use super::super::vec::{self, AttendOps, AttnHead};
use super::super::{QK, QuantError, f16_to_f32};
use crate::dtype::GgmlType;

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

/// An activation block's 32 values as two vectors.
#[inline(always)]
fn act_values(a: &BlockQ8_0) -> [v128; 2] {
    let q: &[u8; QK] = bytemuck::cast_ref(&a.qs);
    [load16(&q[..16]), load16(&q[16..])]
}

/// Low nibbles (values 0..16) and high nibbles (16..32) of 16 bytes.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [v128; 2] {
    let q = load16(qs);
    [v128_and(q, u8x16_splat(0x0f)), u8x16_shr(q, 4)]
}

/// `quads(levels, y) + add` for levels in `0..128`. Relaxed SIMD's dot product takes one
/// operand as 7-bit (`pmaddubsw` on x86, `smull` and pairwise adds on arm64) and is exact and
/// deterministic when its lanes are in `0..128`, as levels are: two products of a level and an
/// i8 fit i16. Without relaxed SIMD, the widening [`quads`].
///
/// The pairs are widened to quads by a dot product with ones (`pmaddwd`, what engines make of
/// an extending pairwise add too), not by `i32x4.relaxed_dot_i8x16_i7x16_add_s`, which Node
/// 20's V8 (where CI runs these tests) gets wrong: it returns twice the product's sum. LLVM
/// fuses an extending pairwise add followed by an add into that instruction, so this spells
/// the widening another way.
#[inline(always)]
fn quads_u7(levels: v128, y: v128, add: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        let pairs = i16x8_relaxed_dot_i8x16_i7x16(y, levels);
        i32x4_add(i32x4_dot_i16x8(pairs, i16x8_splat(1)), add)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        i32x4_add(quads(levels, y), add)
    }
}

/// `f16_to_f32` without the general conversion's branches: the magnitude's bits moved into an
/// f32 and scaled by 2^112 is exact for normal and subnormal halves alike. Infinities and NaNs
/// (scales no quantizer writes) take the general path.
#[inline(always)]
fn f16_scale(bits: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(bits);
    let magnitude = u32::from(h & 0x7fff);
    if magnitude >= 0x7c00 {
        return f16_to_f32(bits);
    }
    let v = f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(v.to_bits() | (u32::from(h & 0x8000) << 16))
}

/// One activation row of Q8_0 blocks, with the [`Q8Sums`] the encoder made when it has them.
#[derive(Clone, Copy)]
struct ActBlocks<'a> {
    y: &'a [BlockQ8_0],
    sums: Option<Q8Sums<'a>>,
}

impl<'a> ActBlocks<'a> {
    fn new(y: &'a [BlockQ8_0], sums: Q8Sums<'a>) -> Self {
        let whole = sums.d.len() == y.len() && sums.minus128.len() == y.len();
        Self {
            y,
            sums: whole.then_some(sums),
        }
    }

    /// Block `k`: its scale, its values, and its lane corrections `-128 * quad sum` (what
    /// weights given as levels with an offset need; zero where the kernels take signed values).
    #[inline(always)]
    fn block(&self, k: usize) -> (f32, [v128; 2], [v128; 2]) {
        let a = &self.y[k];
        let values = act_values(a);
        match self.sums {
            Some(s) => (s.d[k], values, corrections(&s.minus128[k])),
            None => (f16_to_f32(a.d), values, corrections_of(values)),
        }
    }
}

/// The stored lane corrections as two vectors.
#[inline(always)]
fn corrections(minus128: &[i32; 8]) -> [v128; 2] {
    #[cfg(target_feature = "relaxed-simd")]
    {
        let m: &[u8; 32] = bytemuck::cast_ref(minus128);
        [load16(&m[..16]), load16(&m[16..])]
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        let _ = minus128;
        [i32x4_splat(0); 2]
    }
}

/// The lane corrections computed from the values, for rows encoded without them.
#[inline(always)]
fn corrections_of(values: [v128; 2]) -> [v128; 2] {
    #[cfg(target_feature = "relaxed-simd")]
    {
        values.map(|y| {
            i32x4_mul(
                quads_u7(i8x16_splat(1), y, i32x4_splat(0)),
                i32x4_splat(-128),
            )
        })
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        let _ = values;
        [i32x4_splat(0); 2]
    }
}

/// A 32-value weight block (Q8_0, Q5_0, Q4_0): what it unpacks to once, however many activation
/// rows then meet it, and its exact lane sums `quads(values, y)` against one of them.
trait Legacy: bytemuck::Pod {
    type Unpacked: Copy;
    fn scale(&self) -> [u8; 2];
    fn unpack(&self) -> Self::Unpacked;
    /// `minus128`: the activation block's lane corrections, as [`ActBlocks::block`] gives them.
    fn lanes(w: &Self::Unpacked, y: [v128; 2], minus128: [v128; 2]) -> [v128; 2];
}

impl Legacy for BlockQ8_0 {
    /// With relaxed SIMD, the low seven bits (`0..128`) and the sign bits (0 or 1) of each
    /// value, `q = low - 128 * sign`; without it, the values.
    #[cfg(target_feature = "relaxed-simd")]
    type Unpacked = [[v128; 2]; 2];
    #[cfg(not(target_feature = "relaxed-simd"))]
    type Unpacked = [v128; 2];
    fn scale(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    fn unpack(&self) -> Self::Unpacked {
        let q = act_values(self);
        #[cfg(target_feature = "relaxed-simd")]
        {
            [
                q.map(|v| v128_and(v, u8x16_splat(0x7f))),
                q.map(|v| u8x16_shr(v, 7)),
            ]
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            q
        }
    }
    #[inline(always)]
    fn lanes(w: &Self::Unpacked, y: [v128; 2], _: [v128; 2]) -> [v128; 2] {
        #[cfg(target_feature = "relaxed-simd")]
        {
            let zero = i32x4_splat(0);
            let [low, sign] = w;
            core::array::from_fn(|h| {
                i32x4_sub(
                    quads_u7(low[h], y[h], zero),
                    i32x4_shl(quads_u7(sign[h], y[h], zero), 7),
                )
            })
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            [quads(w[0], y[0]), quads(w[1], y[1])]
        }
    }
}

/// Q8_0 for one activation row at a time: its signed values straight into the widening dot
/// product, which in decode beats splitting them for relaxed SIMD's (measured in Node: about a
/// sixth less time per block), as there are no other rows to share the split with.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
struct Q8Signed(BlockQ8_0);

impl Legacy for Q8Signed {
    type Unpacked = [v128; 2];
    fn scale(&self) -> [u8; 2] {
        self.0.d
    }
    #[inline(always)]
    fn unpack(&self) -> [v128; 2] {
        act_values(&self.0)
    }
    #[inline(always)]
    fn lanes(w: &[v128; 2], y: [v128; 2], _: [v128; 2]) -> [v128; 2] {
        [quads(w[0], y[0]), quads(w[1], y[1])]
    }
}

/// Q5_0's and Q4_0's levels (`0..32` and `0..16`) and offsets (16 and 8, as shifts of the
/// `-128 * quad sum` corrections: 3 and 4).
macro_rules! offset_levels {
    ($block:ty, $shift:literal, $offset:literal, |$b:ident| $levels:expr) => {
        impl Legacy for $block {
            type Unpacked = [v128; 2];
            fn scale(&self) -> [u8; 2] {
                self.d
            }
            #[inline(always)]
            fn unpack(&self) -> [v128; 2] {
                let $b = self;
                let levels: [v128; 2] = $levels;
                #[cfg(target_feature = "relaxed-simd")]
                {
                    levels
                }
                #[cfg(not(target_feature = "relaxed-simd"))]
                {
                    levels.map(|v| i8x16_sub(v, i8x16_splat($offset)))
                }
            }
            #[inline(always)]
            fn lanes(w: &[v128; 2], y: [v128; 2], minus128: [v128; 2]) -> [v128; 2] {
                #[cfg(target_feature = "relaxed-simd")]
                {
                    core::array::from_fn(|h| quads_u7(w[h], y[h], i32x4_shr(minus128[h], $shift)))
                }
                #[cfg(not(target_feature = "relaxed-simd"))]
                {
                    let _ = minus128;
                    [quads(w[0], y[0]), quads(w[1], y[1])]
                }
            }
        }
    };
}

offset_levels!(BlockQ5_0, 3, 16, |b| {
    let [lo, hi] = nibbles(&b.qs);
    let [bits_lo, bits_hi] = fifth_bits(b.qh);
    [v128_or(lo, bits_lo), v128_or(hi, bits_hi)]
});
offset_levels!(BlockQ4_0, 4, 8, |b| nibbles(&b.qs));

/// `dot::blocks` for one weight row against `R` activation rows: the weight block is unpacked
/// once for all of them.
#[inline(always)]
fn legacy<B: Legacy, const R: usize>(w: &[B], acts: &[ActBlocks<'_>; R]) -> [f32; R] {
    let mut acc = [[f32x4_splat(0.0); 2]; R];
    for (k, b) in w.iter().enumerate() {
        let dw = f16_scale(b.scale());
        let unpacked = b.unpack();
        for (acc, act) in acc.iter_mut().zip(acts) {
            let (dy, y, minus128) = act.block(k);
            let s = B::lanes(&unpacked, y, minus128);
            let d = dw * dy;
            acc[0] = fma_lanes(acc[0], s[0], d);
            acc[1] = fma_lanes(acc[1], s[1], d);
        }
    }
    acc.map(hsum_lanes)
}

/// The decode product of a run of weight rows (`w` holds `out.len()` rows of `y.len()`
/// blocks) and one activation row.
fn legacy_rows<B: Legacy>(w: &[B], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]) {
    let act = [ActBlocks::new(y, sums)];
    for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len().max(1))) {
        *o = legacy::<B, 1>(row, &act)[0];
    }
}

/// `out[r * n + i]` = weight row `i` times activation row `r` (`n = out.len() / acts.len()`),
/// for the weights in `bytes`: every weight row meets the activation rows four at a time
/// (`four`), then one at a time (`one`), so each weight block is unpacked once per four rows.
fn tiles<W: bytemuck::Pod, A: Copy>(
    ty: GgmlType,
    bytes: &[u8],
    (blocks, values_per_block): (usize, usize),
    acts: &[A],
    out: &mut [f32],
    four: impl Fn(&[W], &[A; 4]) -> [f32; 4],
    one: impl Fn(&[W], &[A; 1]) -> [f32; 1],
) -> Result<(), QuantError> {
    let n = out.len() / acts.len();
    if blocks == 0 || out.len() != n * acts.len() {
        return Err(QuantError::SizeMismatch {
            ty,
            bytes: bytes.len(),
            elements: out.len(),
        });
    }
    let w: &[W] = super::super::dot::weight_blocks(ty, bytes, blocks * n, values_per_block)?;
    for (i, row) in w.chunks_exact(blocks).enumerate() {
        let groups = acts.chunks_exact(4);
        let rest = groups.remainder();
        let mut r = 0;
        for group in groups {
            // Always four: `chunks_exact`.
            if let &[a, b, c, d] = group {
                for got in four(row, &[a, b, c, d]) {
                    out[r * n + i] = got;
                    r += 1;
                }
            }
        }
        for act in rest {
            out[r * n + i] = one(row, &[*act])[0];
            r += 1;
        }
    }
    Ok(())
}

/// The products of a prompt's rows (see [`tiles`]) for the weight types with a tile kernel
/// here: Q8_0, Q5_0 and Q4_0 against Q8_0 rows, Q4_K and Q6_K against Q8_K rows. `None` for
/// the others, or for rows not all in the encoding the weights want.
pub(super) fn dot_block(
    ty: GgmlType,
    bytes: &[u8],
    xs: &[ActRow<'_>],
    out: &mut [f32],
) -> Result<Option<()>, QuantError> {
    fn legacy_tiles<B: Legacy>(
        ty: GgmlType,
        bytes: &[u8],
        acts: &[ActBlocks<'_>],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        let blocks = (acts[0].y.len(), QK);
        tiles(ty, bytes, blocks, acts, out, legacy::<B, 4>, legacy::<B, 1>)
    }
    fn k_tiles<B: KQuant>(
        ty: GgmlType,
        bytes: &[u8],
        acts: &[(&[BlockQ8K], BatchRow)],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        let blocks = (acts[0].0.len(), super::super::QK_K);
        tiles(ty, bytes, blocks, acts, out, k_rows::<B, 4>, k_rows::<B, 1>)
    }
    match (ty, xs.first()) {
        (_, Some(ActRow::Q8_0([], _) | ActRow::Q8K([], _))) => return Ok(None),
        (GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_0, Some(ActRow::Q8_0(first, _))) => {
            let mut acts = alloc::vec::Vec::with_capacity(xs.len());
            for x in xs {
                match x {
                    ActRow::Q8_0(y, sums) if y.len() == first.len() => {
                        acts.push(ActBlocks::new(y, *sums));
                    }
                    _ => return Ok(None),
                }
            }
            match ty {
                GgmlType::Q8_0 => legacy_tiles::<BlockQ8_0>(ty, bytes, &acts, out)?,
                GgmlType::Q5_0 => legacy_tiles::<BlockQ5_0>(ty, bytes, &acts, out)?,
                _ => legacy_tiles::<BlockQ4_0>(ty, bytes, &acts, out)?,
            }
        }
        (GgmlType::Q4_K | GgmlType::Q6_K, Some(ActRow::Q8K(first, _))) => {
            let mut acts = alloc::vec::Vec::with_capacity(xs.len());
            for x in xs {
                match x {
                    ActRow::Q8K(y, at) if y.len() == first.len() => acts.push((*y, *at)),
                    _ => return Ok(None),
                }
            }
            match ty {
                GgmlType::Q4_K => k_tiles::<BlockQ4K>(ty, bytes, &acts, out)?,
                _ => k_tiles::<BlockQ6K>(ty, bytes, &acts, out)?,
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(()))
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
        let ys = act_values(a);
        acc[0] = fma_lanes(acc[0], quads_u7(x[0], ys[0], i32x4_splat(0)), d);
        acc[1] = fma_lanes(acc[1], quads_u7(x[1], ys[1], i32x4_splat(0)), d);
    }
    hsum_lanes(acc) + summs
}

/// Q5_0's and Q5_1's fifth bits: bit `i` of `qh` as 0x10 in byte `i`, values 0..16 then 16..32.
/// (A table lookup per eight bits: on V8 it beats spreading the bits with shuffles and masks.)
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

/// `fmaf(a, b, c)` lane by lane: relaxed SIMD's fused multiply-add (see [`fma_lanes`] for when
/// engines fuse it), or exactly in f64 without it (the product of two f32 is exact there).
#[inline(always)]
fn fma4(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, c)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        let half = |a: v128, b: v128, c: v128| {
            let p = f64x2_mul(f64x2_promote_low_f32x4(a), f64x2_promote_low_f32x4(b));
            f32x4_demote_f64x2_zero(add_to_odd(f64x2_promote_low_f32x4(c), p))
        };
        let high = |v: v128| i32x4_shuffle::<2, 3, 0, 1>(v, v);
        let lo = half(a, b, c);
        let hi = half(high(a), high(b), high(c));
        i32x4_shuffle::<0, 1, 4, 5>(lo, hi)
    }
}

/// Four f16s (the low halves of i32 lanes) as f32, exactly: [`f16_scale`]'s scaling, with
/// infinities and NaNs (quieted, as the general conversion does) selected apart.
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    let magnitude = v128_and(h, u32x4_splat(0x7fff));
    let shifted = i32x4_shl(magnitude, 13);
    let finite = f32x4_mul(shifted, f32x4_splat(f32::from_bits(0x7780_0000)));
    let nan = i32x4_gt(magnitude, i32x4_splat(0x7c00));
    let special = v128_or(
        v128_or(shifted, u32x4_splat(0x7000_0000)),
        v128_and(nan, u32x4_splat(0x0040_0000)),
    );
    let value = v128_bitselect(special, finite, i32x4_ge(magnitude, i32x4_splat(0x7c00)));
    v128_or(value, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

/// Each lane rounded to f16 (to nearest, ties to even) and back, as `half` converts.
#[inline(always)]
fn round_f16x4(x: v128) -> v128 {
    let abs = v128_and(x, u32x4_splat(0x7fff_ffff));
    // f16's normal range: ten mantissa bits, to nearest even; a carry may reach the exponent.
    let odd = v128_and(u32x4_shr(abs, 13), u32x4_splat(1));
    let normal = v128_and(
        i32x4_add(abs, i32x4_add(odd, u32x4_splat(0x0fff))),
        u32x4_splat(0xffff_e000),
    );
    // Below f16's smallest normal (2^-14): multiples of 2^-24, which adding and taking away 0.5
    // rounds to (exactly, to nearest even: the sum's unit in the last place is 2^-24).
    let half = f32x4_splat(0.5);
    let subnormal = f32x4_sub(f32x4_add(abs, half), half);
    let r = v128_bitselect(subnormal, normal, i32x4_lt(abs, i32x4_splat(0x3880_0000)));
    // From 65520 up, f16 overflows to infinity.
    let r = v128_bitselect(
        u32x4_splat(0x7f80_0000),
        r,
        i32x4_ge(abs, i32x4_splat(0x477f_f000)),
    );
    // NaNs keep their top ten mantissa bits and come back quiet.
    let nan = v128_or(
        v128_and(abs, u32x4_splat(0xffff_e000)),
        u32x4_splat(0x0040_0000),
    );
    let r = v128_bitselect(nan, r, i32x4_gt(abs, i32x4_splat(0x7f80_0000)));
    v128_or(r, v128_and(x, u32x4_splat(0x8000_0000)))
}

/// `vec::decode_f16`.
pub(super) fn decode_f16(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let (sc, mut dc) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
    for (s, d) in sc.clone().zip(&mut dc) {
        let h = load16(bytemuck::cast_slice(s));
        let lo = f16x4_to_f32(u32x4_extend_low_u16x8(h));
        let hi = f16x4_to_f32(u32x4_extend_high_u16x8(h));
        // SAFETY: `d` holds eight f32.
        unsafe {
            v128_store(d.as_mut_ptr().cast(), lo);
            v128_store(d.as_mut_ptr().add(4).cast(), hi);
        }
    }
    vec::decode_f16(sc.remainder(), dc.into_remainder());
}

/// `f(v)` for each run of four values, in place; the rest through the reference `tail`.
#[inline(always)]
fn each4(x: &mut [f32], f: impl Fn(v128, usize) -> v128, tail: impl FnOnce(&mut [f32], usize)) {
    let mut chunks = x.chunks_exact_mut(4);
    let mut at = 0;
    for c in &mut chunks {
        // SAFETY: `c` holds four f32.
        unsafe {
            let v = v128_load(c.as_ptr().cast());
            v128_store(c.as_mut_ptr().cast(), f(v, at));
        }
        at += 4;
    }
    tail(chunks.into_remainder(), at);
}

/// `vec::round_f16_slice`.
pub(super) fn round_f16_slice(x: &mut [f32]) {
    each4(
        x,
        |v, _| round_f16x4(v),
        |rest, _| vec::round_f16_slice(rest),
    );
}

/// `vec::scale`.
pub(super) fn scale(acc: &mut [f32], s: f32, f16: bool) {
    let sv = f32x4_splat(s);
    each4(
        acc,
        |a, _| {
            let a = f32x4_mul(a, sv);
            if f16 { round_f16x4(a) } else { a }
        },
        |rest, _| vec::scale(rest, s, f16),
    );
}

/// `vec::mad`.
pub(super) fn mad(acc: &mut [f32], v: &[f32], s: f32, f16: bool) {
    let n = acc.len().min(v.len());
    let (acc, v) = (&mut acc[..n], &v[..n]);
    let sv = f32x4_splat(s);
    each4(
        acc,
        |a, at| {
            // SAFETY: `at + 4 <= n`: `each4` passes whole runs of four within `acc[..n]`.
            let x = unsafe { v128_load(v.as_ptr().add(at).cast()) };
            let a = fma4(x, sv, a);
            if f16 { round_f16x4(a) } else { a }
        },
        |rest, at| vec::mad(rest, &v[at..], s, f16),
    );
}

/// `vec::dot_ggml`: each of its 64 lanes (16 vectors here) runs over the whole runs of 64 on its
/// own, then they fold in the reference's order.
pub(super) fn dot_ggml(x: &[f32], y: &[f32]) -> f32 {
    let runs = (x.len() / 64).min(y.len() / 64);
    let acc: [v128; 16] = core::array::from_fn(|g| {
        let mut a = f32x4_splat(0.0);
        for r in 0..runs {
            let at = 64 * r + 4 * g;
            // SAFETY: `at + 4 <= 64 * runs`, within both slices.
            let (p, q) = unsafe {
                (
                    v128_load(x.as_ptr().add(at).cast()),
                    v128_load(y.as_ptr().add(at).cast()),
                )
            };
            a = fma4(p, q, a);
        }
        a
    });
    // Lane l of accumulator j is vector 4j + l / 4 here.
    let v: [v128; 4] = core::array::from_fn(|m| {
        f32x4_add(
            f32x4_add(acc[m], acc[8 + m]),
            f32x4_add(acc[4 + m], acc[12 + m]),
        )
    });
    let h4 = f32x4_add(f32x4_add(v[3], v[1]), f32x4_add(v[2], v[0]));
    let lane = |i: usize| match i {
        0 => f32x4_extract_lane::<0>(h4),
        1 => f32x4_extract_lane::<1>(h4),
        2 => f32x4_extract_lane::<2>(h4),
        _ => f32x4_extract_lane::<3>(h4),
    };
    let mut sum = f64::from((lane(0) + lane(2)) + (lane(1) + lane(3)));
    // The leftovers past each slice's last whole run, as the reference pairs them.
    let (xr, yr) = (
        x.chunks_exact(64).remainder(),
        y.chunks_exact(64).remainder(),
    );
    for (a, b) in xr.iter().zip(yr) {
        sum += f64::from(a * b);
    }
    sum as f32
}

/// This level's kernels for [`vec::attend_with`].
const ATTEND: AttendOps = AttendOps {
    round_f16_slice,
    decode_f16,
    dot_ggml,
    scale,
    mad,
};

/// `vec::attend` with this level's vector kernels.
pub(super) fn attend(
    q: &mut [f32],
    head: &AttnHead<'_>,
    k: &mut [f32],
    v: &mut [f32],
    w: &mut alloc::vec::Vec<f32>,
    out: &mut [f32],
) {
    vec::attend_with(&ATTEND, q, head, k, v, w, out);
}

/// This level's kernels for the shared row loop.
pub(super) struct Kernels;

/// The lane sums of four vectors: `(Σa, Σb, Σc, Σd)`.
#[inline(always)]
fn hsums(v: [v128; 4]) -> v128 {
    let pairs = |a: v128, b: v128| {
        i32x4_add(
            i32x4_shuffle::<0, 2, 4, 6>(a, b),
            i32x4_shuffle::<1, 3, 5, 7>(a, b),
        )
    };
    let (ab, cd) = (pairs(v[0], v[1]), pairs(v[2], v[3]));
    pairs(ab, cd)
}

/// Four bytes widened to i32 lanes.
#[inline(always)]
fn widen4(b: [u8; 4]) -> v128 {
    u32x4(
        u32::from(b[0]),
        u32::from(b[1]),
        u32::from(b[2]),
        u32::from(b[3]),
    )
}

/// A Q4_K block unpacked once for the activation rows that meet it: its 256 levels (`0..16`),
/// 16 at a time, group `g` in vectors `2g` and `2g + 1`, and its group scales and mins.
struct Q4KUnpacked {
    nibbles: [v128; 16],
    scales: [v128; 2],
    mins: [u8; 8],
}

#[inline(always)]
fn q4_k_unpack(b: &BlockQ4K) -> Q4KUnpacked {
    let (scales, mins) = k4_scales_mins(&b.scales);
    let mut nibbles = [i32x4_splat(0); 16];
    for p in 0..4 {
        // Groups 2p (low nibbles) and 2p + 1 (high nibbles) share 32 bytes.
        let q = [load16(&b.qs[32 * p..]), load16(&b.qs[32 * p + 16..])];
        for (k, q) in q.into_iter().enumerate() {
            nibbles[4 * p + k] = v128_and(q, u8x16_splat(0x0f));
            nibbles[4 * p + 2 + k] = u8x16_shr(q, 4);
        }
    }
    let lanes = |g: usize| widen4([scales[g], scales[g + 1], scales[g + 2], scales[g + 3]]);
    Q4KUnpacked {
        nibbles,
        scales: [lanes(0), lanes(4)],
        mins,
    }
}

/// `dot::q4_k_ints`: per group of 32 values the scaled level sum and the min correction.
#[inline(always)]
fn q4_k_ints(u: &Q4KUnpacked, a: &BlockQ8K) -> ([i32; 8], [i32; 8]) {
    let ys: &[u8] = bytemuck::cast_slice(&a.qs);
    let group: [v128; 8] = core::array::from_fn(|g| {
        quads_u7(
            u.nibbles[2 * g],
            load16(&ys[32 * g..]),
            quads_u7(
                u.nibbles[2 * g + 1],
                load16(&ys[32 * g + 16..]),
                i32x4_splat(0),
            ),
        )
    });
    let sums = [
        hsums([group[0], group[1], group[2], group[3]]),
        hsums([group[4], group[5], group[6], group[7]]),
    ];
    let levels = i32_lanes([
        i32x4_mul(sums[0], u.scales[0]),
        i32x4_mul(sums[1], u.scales[1]),
    ]);
    (levels, super::super::dot::q4_k_corrections(&u.mins, a))
}

/// A Q6_K block unpacked once for the activation rows that meet it: its 256 levels (`0..64`),
/// 16 at a time, and each run's scale in every lane. Run `i` meets activation values
/// `16i..16i + 16` and has scale `scales[i]`.
struct Q6KUnpacked {
    levels: [v128; 16],
    scales: [v128; 16],
}

/// Each of a Q6_K block's 16 runs of 16 levels (`0..64`) in order: `each(i, levels)`.
#[inline(always)]
fn q6_k_levels(x: &BlockQ6K, mut each: impl FnMut(usize, v128)) {
    for half in 0..2 {
        let ql = &x.ql[64 * half..64 * half + 64];
        let qh = &x.qh[32 * half..32 * half + 32];
        let low = [load16(ql), load16(&ql[16..])];
        let high = [load16(&ql[32..]), load16(&ql[48..])];
        let bits = [load16(qh), load16(&qh[16..])];
        for c in 0..4 {
            // Values 128 half + 32c..: a nibble of `ql` (which half of it, and which nibble, by
            // c) and two bits of `qh` (shifted by 2c) as the level's top bits.
            let src = if c % 2 == 0 { low } else { high };
            for k in 0..2 {
                let nibble = if c < 2 {
                    v128_and(src[k], u8x16_splat(0x0f))
                } else {
                    u8x16_shr(src[k], 4)
                };
                let top = v128_and(u8x16_shr(bits[k], 2 * c as u32), u8x16_splat(3));
                each(8 * half + 2 * c + k, v128_or(nibble, i8x16_shl(top, 4)));
            }
        }
    }
}

#[inline(always)]
fn q6_k_unpack(x: &BlockQ6K) -> Q6KUnpacked {
    let mut levels = [i32x4_splat(0); 16];
    q6_k_levels(x, |i, v| levels[i] = v);
    Q6KUnpacked {
        levels,
        scales: core::array::from_fn(|i| i32x4_splat(i32::from(x.scales[i]))),
    }
}

/// `dot::lanes_q6_k`'s eight integer lane sums.
#[inline(always)]
fn q6_k_lanes(u: &Q6KUnpacked, x: &BlockQ6K, y: &BlockQ8K) -> [i32; 8] {
    let ys: &[u8] = bytemuck::cast_slice(&y.qs);
    let mut acc = [i32x4_splat(0); 2];
    for (i, (&level, &scale)) in u.levels.iter().zip(&u.scales).enumerate() {
        let s = quads_u7(level, load16(&ys[16 * i..]), i32x4_splat(0));
        acc[i % 2] = i32x4_add(acc[i % 2], i32x4_mul(s, scale));
    }
    let mut lanes = i32_lanes(acc);
    super::super::dot::q6_k_offsets(x, y, &mut lanes);
    lanes
}

/// [`q6_k_lanes`] for one activation row (decode): each run of levels meets the activation as
/// it is made, with nothing unpacked to hold.
#[inline(always)]
fn q6_k_lanes_direct(x: &BlockQ6K, y: &BlockQ8K) -> [i32; 8] {
    let ys: &[u8] = bytemuck::cast_slice(&y.qs);
    let mut acc = [i32x4_splat(0); 2];
    q6_k_levels(x, |i, level| {
        let s = quads_u7(level, load16(&ys[16 * i..]), i32x4_splat(0));
        let scale = i32x4_splat(i32::from(x.scales[i]));
        acc[i % 2] = i32x4_add(acc[i % 2], i32x4_mul(s, scale));
    });
    let mut lanes = i32_lanes(acc);
    super::super::dot::q6_k_offsets(x, y, &mut lanes);
    lanes
}

/// A K-quant weight block: unpacked once for every activation row it meets, then folded into
/// each row's accumulators as the reference folds it.
trait KQuant: bytemuck::Pod {
    type Unpacked;
    type Fold: Copy;
    fn unpack(&self) -> Self::Unpacked;
    fn fold(at: BatchRow) -> Self::Fold;
    fn add(fold: &mut Self::Fold, w: &Self, u: &Self::Unpacked, a: &BlockQ8K);
    fn total(fold: Self::Fold) -> f32;
}

impl KQuant for BlockQ4K {
    type Unpacked = Q4KUnpacked;
    /// The accumulators, and whether the row sums in llama.cpp's groups of four rows.
    type Fold = (Q4KFold, bool);
    #[inline(always)]
    fn unpack(&self) -> Q4KUnpacked {
        q4_k_unpack(self)
    }
    #[inline(always)]
    fn fold(at: BatchRow) -> Self::Fold {
        (Q4KFold::default(), at.in_group_of_four())
    }
    #[inline(always)]
    fn add((fold, grouped): &mut Self::Fold, w: &Self, u: &Q4KUnpacked, a: &BlockQ8K) {
        fold.add(w, a, *grouped, q4_k_ints(u, a));
    }
    #[inline(always)]
    fn total((fold, _): Self::Fold) -> f32 {
        fold.total()
    }
}

impl KQuant for BlockQ6K {
    type Unpacked = Q6KUnpacked;
    type Fold = Q6KFold;
    #[inline(always)]
    fn unpack(&self) -> Q6KUnpacked {
        q6_k_unpack(self)
    }
    #[inline(always)]
    fn fold(at: BatchRow) -> Q6KFold {
        Q6KFold::new(at.tiled())
    }
    #[inline(always)]
    fn add(fold: &mut Q6KFold, w: &Self, u: &Q6KUnpacked, a: &BlockQ8K) {
        fold.add(w, a, &q6_k_lanes(u, w, a));
    }
    #[inline(always)]
    fn total(fold: Q6KFold) -> f32 {
        fold.total()
    }
}

/// One K-quant weight row against `R` activation rows.
#[inline(always)]
fn k_rows<B: KQuant, const R: usize>(w: &[B], acts: &[(&[BlockQ8K], BatchRow); R]) -> [f32; R] {
    let mut folds = acts.map(|(_, at)| B::fold(at));
    for (k, b) in w.iter().enumerate() {
        let unpacked = b.unpack();
        for (fold, (y, _)) in folds.iter_mut().zip(acts) {
            B::add(fold, b, &unpacked, &y[k]);
        }
    }
    folds.map(B::total)
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
    fn q8_0(w: &[BlockQ8_0], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]) {
        legacy_rows::<Q8Signed>(bytemuck::cast_slice(w), y, sums, out);
    }
    fn q5_0(w: &[BlockQ5_0], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]) {
        legacy_rows(w, y, sums, out);
    }
    fn q4_0(w: &[BlockQ4_0], y: &[BlockQ8_0], sums: Q8Sums<'_>, out: &mut [f32]) {
        legacy_rows(w, y, sums, out);
    }
    fn f32(w: &[f32], x: &[f32]) -> f32 {
        dot_f32(w, x)
    }
    fn q4_k(w: &[BlockQ4K], y: &[BlockQ8K], grouped: bool) -> f32 {
        super::super::dot::q4_k_fold(w, y, grouped, |b, a| q4_k_ints(&q4_k_unpack(b), a))
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
        super::super::dot::q6_k_fold(w, y, tiled, q6_k_lanes_direct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every half, bit for bit as the general conversion gives it.
    #[wasm_bindgen_test::wasm_bindgen_test]
    fn scales_convert_like_the_general_conversion() {
        for h in 0..=u16::MAX {
            let bits = h.to_le_bytes();
            assert_eq!(
                f16_scale(bits).to_bits(),
                f16_to_f32(bits).to_bits(),
                "{h:#06x}"
            );
        }
    }

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
