//! The vector kernels of attention, scalar reference: f16 conversion of cache rows, the score dot
//! product and the running value sum. [`super::simd::Isa`] has the fast versions, equal bit for
//! bit.
//!
//! The order is llama.cpp's flash attention on its x86 (AVX-512) build, which is what makes the
//! logits agree with it: the query and keys are f16 (for an f16 cache), scores are
//! `ggml_vec_dot_f16`, and the value sum takes one fused multiply-add per value, rounded to f16
//! after each step when the cache is f16.

use alloc::vec::Vec;

/// `x` rounded to the nearest f16 (ties to even) and back.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// f32 values to f16 bits, rounding to nearest even.
pub fn encode_f16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(s).to_bits();
    }
}

/// f16 bits to f32 values (exact).
pub fn decode_f16(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

/// Each value rounded to f16 and back.
pub fn round_f16_slice(x: &mut [f32]) {
    for v in x {
        *v = round_f16(*v);
    }
}

/// `ggml_vec_dot_f16` (and `ggml_vec_dot_f32`) as llama.cpp's AVX-512 build sums them: four
/// accumulators of 16 lanes take fused multiply-adds over each run of 64 values, then fold
/// pairwise (0+2, 1+3, 0+1) and across lanes as `_mm512_reduce_add_ps` does; values past the
/// last whole run are added in f64.
pub fn dot_ggml(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [[0f32; 16]; 4];
    let (xs, ys) = (x.chunks_exact(64), y.chunks_exact(64));
    let (xr, yr) = (xs.remainder(), ys.remainder());
    for (a, b) in xs.zip(ys) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, lane) in lanes.iter_mut().enumerate() {
                *lane = crate::quant::fmaf(a[16 * j + l], b[16 * j + l], *lane);
            }
        }
    }
    let v: [f32; 16] = core::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    reduce16(&v, xr, yr)
}

/// The tail of [`dot_ggml`]: `_mm512_reduce_add_ps` of the folded lanes, then the leftover
/// products in f64.
#[inline]
pub(crate) fn reduce16(v: &[f32; 16], xr: &[f32], yr: &[f32]) -> f32 {
    let h8: [f32; 8] = core::array::from_fn(|l| v[l + 8] + v[l]);
    let h4: [f32; 4] = core::array::from_fn(|l| h8[l + 4] + h8[l]);
    let mut sum = f64::from((h4[0] + h4[2]) + (h4[1] + h4[3]));
    for (a, b) in xr.iter().zip(yr) {
        sum += f64::from(a * b);
    }
    sum as f32
}

/// `acc *= s` (`ggml_vec_scale_f16` / `_f32`), rounded to f16 when `f16` is set.
pub fn scale(acc: &mut [f32], s: f32, f16: bool) {
    for a in acc {
        *a *= s;
        if f16 {
            *a = round_f16(*a);
        }
    }
}

/// `acc += v * s` with one fused multiply-add per value (`ggml_vec_mad_f16` / `_f32`), rounded
/// to f16 when `f16` is set.
pub fn mad(acc: &mut [f32], v: &[f32], s: f32, f16: bool) {
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = crate::quant::fmaf(v, s, *a);
        if f16 {
            *a = round_f16(*a);
        }
    }
}

/// One layer's cached keys or values, as stored.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    /// f16 bits.
    F16(&'a [u16]),
    /// f32 values.
    F32(&'a [f32]),
    /// An f16 cache's values converted to f32 ahead of time (exactly), so that heads sharing
    /// them convert once; attended with the f16 cache's arithmetic.
    Widened(&'a [f32]),
}

impl KvRows<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Self::F16(v) => v.len(),
            Self::F32(v) | Self::Widened(v) => v.len(),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where one query head reads the cache: position `t`'s row for it starts at
/// `t * stride + offset` in both `keys` and `values`, and positions `0..len` are attended to.
#[derive(Clone, Copy, Debug)]
pub struct AttnHead<'a> {
    /// Keys.
    pub keys: KvRows<'a>,
    /// Values, stored like the keys.
    pub values: KvRows<'a>,
    /// Values per cache row (all KV heads).
    pub stride: usize,
    /// This head's first value in a row.
    pub offset: usize,
    /// Positions attended to.
    pub len: usize,
    /// Score scale, `1 / sqrt(head_dim)`.
    pub scale: f32,
}

impl AttnHead<'_> {
    /// Whether every position's rows lie inside both caches, for a head of `dim` values.
    pub fn fits(&self, dim: usize) -> bool {
        let end = self.len.checked_sub(1).map_or(Some(0), |last| {
            last.checked_mul(self.stride)
                .and_then(|v| v.checked_add(self.offset + dim))
        });
        let same = matches!(
            (self.keys, self.values),
            (KvRows::F16(_), KvRows::F16(_))
                | (KvRows::F32(_), KvRows::F32(_))
                | (KvRows::Widened(_), KvRows::Widened(_))
        );
        same && end.is_some_and(|e| e <= self.keys.len() && e <= self.values.len())
    }
}

/// `2^(j / 32)` for `j` in `0..32`, to f64 precision: the Taylor series of `e^(j ln 2 / 32)`,
/// summed smallest term first, evaluated at compile time.
pub(crate) const EXP2_TABLE: [f64; 32] = exp2_table();

const fn exp2_table() -> [f64; 32] {
    let mut table = [0f64; 32];
    let mut j = 0;
    while j < 32 {
        let y = j as f64 * core::f64::consts::LN_2 / 32.0;
        let mut terms = [0f64; 24];
        terms[0] = 1.0;
        let mut n = 1;
        while n < 24 {
            terms[n] = terms[n - 1] * y / n as f64;
            n += 1;
        }
        let mut sum = 0.0;
        while n > 0 {
            n -= 1;
            sum += terms[n];
        }
        table[j] = sum;
        j += 1;
    }
    table
}

/// Constants of [`expf`], shared with the SIMD versions.
pub(crate) mod exp {
    /// `32 / ln 2`.
    pub(crate) const INV_LN2_32: f64 = 32.0 / core::f64::consts::LN_2;
    /// Adding and subtracting it rounds an f64 below 2^51 to an integer (ties to even), and
    /// the sum holds that integer in its low bits.
    pub(crate) const SHIFT: f64 = 6_755_399_441_055_744.0;
    /// `ln 2 / 32` in two parts: `HI` has 20 low zero bits, so `k * HI` is exact for every
    /// `k` [`super::expf`] meets; `LO` is the rest, with `ln 2 - f64(ln 2)`.
    pub(crate) const HI: f64 =
        f64::from_bits((core::f64::consts::LN_2 / 32.0).to_bits() & !0xF_FFFF);
    pub(crate) const LO: f64 =
        (core::f64::consts::LN_2 / 32.0 - HI) + 2.319_046_813_846_299_6e-17 / 32.0;
    /// `1 / n!` for the polynomial's terms of degree 2 to 6.
    pub(crate) const C: [f64; 5] = [1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0];
    /// Below this, `e^x` rounds to 0 in f32; above the other, to infinity.
    pub(crate) const MIN: f32 = -104.0;
    pub(crate) const MAX: f32 = 89.0;
}

/// `e^x` rounded to f32, for attention's softmax.
///
/// Computed in f64 with plain multiplies and adds (no fused ones, so every platform and every
/// SIMD level gets the same bits): `x = (32 m + j + r') ln 2 / 32`, `e^x = 2^m 2^(j/32) e^r`
/// with `|r| <= ln 2 / 64` and `e^r` from its Taylor polynomial of degree 6. The f64 result is
/// within a few units of its last place of `e^x`, so the final rounding to f32 is the correct
/// one except when `e^x` lies within about 1e-15 (relative) of a rounding boundary, as with
/// glibc's `expf`, which llama.cpp calls.
#[inline]
pub fn expf(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x <= exp::MIN {
        return 0.0;
    }
    if x > exp::MAX {
        return f32::INFINITY;
    }
    let x = f64::from(x);
    let kd = (x * exp::INV_LN2_32 + exp::SHIFT) - exp::SHIFT;
    let k = kd as i32;
    let r = (x - kd * exp::HI) - kd * exp::LO;
    let [c2, c3, c4, c5, c6] = exp::C;
    let p = 1.0 + r * (1.0 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * c6)))));
    // 2^m: |k| <= 4801 here, so the biased exponent stays in 872..=1151.
    let scale = f64::from_bits((((k >> 5) + 1023) as u64) << 52);
    ((EXP2_TABLE[(k & 31) as usize] * p) * scale) as f32
}

/// [`expf`] of every value, in place.
pub fn expf_slice(x: &mut [f32]) {
    for v in x {
        *v = expf(*v);
    }
}

/// One query row and head of `ggml_compute_forward_flash_attn_ext_f16_one_chunk`: online softmax
/// over the cache, into `out` (the head's width, like `q`). With an f16 cache the query is
/// rounded to f16 and the value sum is held in f16, as llama.cpp does. `k` and `v` are scratch of
/// the head's width, `w` scratch of any size. A head that does not [`AttnHead::fits`] leaves
/// `out` zeroed.
///
/// The online softmax is computed in three passes that give its exact arithmetic: every score,
/// then every exponential (where the running maximum rises, `e^(old - new)` rescales what came
/// before; elsewhere `e^(s - max)` weighs the position), then the value sum.
pub fn attend(
    q: &mut [f32],
    head: &AttnHead<'_>,
    k: &mut [f32],
    v: &mut [f32],
    w: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_with(&REFERENCE, q, head, k, v, w, out);
}

/// The vector operations [`attend`] is made of. A level with its own kernels for them shares
/// the reference's control flow through [`attend_with`].
pub(crate) struct AttendOps {
    pub round_f16_slice: fn(&mut [f32]),
    pub decode_f16: fn(&[u16], &mut [f32]),
    pub dot_ggml: fn(&[f32], &[f32]) -> f32,
    pub scale: fn(&mut [f32], f32, bool),
    pub mad: fn(&mut [f32], &[f32], f32, bool),
}

/// This module's functions.
const REFERENCE: AttendOps = AttendOps {
    round_f16_slice,
    decode_f16,
    dot_ggml,
    scale,
    mad,
};

/// [`attend`] with `ops`' vector operations.
pub(crate) fn attend_with(
    ops: &AttendOps,
    q: &mut [f32],
    head: &AttnHead<'_>,
    k: &mut [f32],
    v: &mut [f32],
    w: &mut Vec<f32>,
    out: &mut [f32],
) {
    out.fill(0.0);
    let dim = out.len();
    if q.len() != dim || k.len() != dim || v.len() != dim || !head.fits(dim) {
        return;
    }
    let f16 = !matches!(head.keys, KvRows::F32(_));
    if f16 {
        (ops.round_f16_slice)(q);
    }
    // Position `t`'s row as f32: f16 rows converted into `scratch`, f32 rows read in place.
    fn row<'a>(
        decode_f16: fn(&[u16], &mut [f32]),
        rows: KvRows<'a>,
        at: usize,
        scratch: &'a mut [f32],
    ) -> &'a [f32] {
        let dim = scratch.len();
        match rows {
            KvRows::F16(c) => {
                decode_f16(&c[at..at + dim], scratch);
                scratch
            }
            KvRows::F32(c) | KvRows::Widened(c) => &c[at..at + dim],
        }
    }
    let (scores, weights) = softmax_scratch(w, head.len);
    for (t, s) in scores.iter_mut().enumerate() {
        let key = row(ops.decode_f16, head.keys, t * head.stride + head.offset, k);
        *s = (ops.dot_ggml)(q, key) * head.scale;
    }
    exponents(scores, weights);
    expf_slice(weights);
    let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
    for (t, (&s, &e)) in scores.iter().zip(weights.iter()).enumerate() {
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > max {
            ms = e;
            max = s;
            (ops.scale)(out, ms, f16);
        } else {
            vs = e;
        }
        let value = row(
            ops.decode_f16,
            head.values,
            t * head.stride + head.offset,
            v,
        );
        (ops.mad)(out, value, vs, f16);
        sum = crate::quant::fmaf(sum, ms, vs);
    }
    let inv = 1.0 / sum;
    for acc in out.iter_mut() {
        *acc *= inv;
    }
}

/// `w` as two runs of `len` values: the scores and their weights.
pub(crate) fn softmax_scratch(w: &mut Vec<f32>, len: usize) -> (&mut [f32], &mut [f32]) {
    w.clear();
    w.resize(2 * len, 0.0);
    w.split_at_mut(len)
}

/// The arguments of the online softmax's exponentials, from the scores in order: where the
/// running maximum rises, the old maximum minus the new; elsewhere, the score minus the maximum.
pub(crate) fn exponents(scores: &[f32], out: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for (&s, o) in scores.iter().zip(out) {
        if s > max {
            *o = max - s;
            max = s;
        } else {
            *o = s - max;
        }
    }
}

/// `ggml_v_expf`, the exponential of llama.cpp's vectorised SiLU (the ARM optimized-routines
/// polynomial, at most 1.5 ulp from `e^x`), lane by lane. llama.cpp's activations, and so its
/// logits, follow this approximation rather than a correctly rounded `expf`.
pub fn ggml_v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = crate::quant::fmaf(x, c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = crate::quant::fmaf(
        -n,
        c(0x35bf_be8e),
        crate::quant::fmaf(-n, c(0x3f31_7200), x),
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = crate::quant::fmaf(
        crate::quant::fmaf(
            crate::quant::fmaf(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            crate::quant::fmaf(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        crate::quant::fmaf(c(0x3f7f_fff6), b, 1.0),
    );
    // `_mm512_scalef_ps`: j * 2^n, n a whole number here.
    libm::ldexpf(j, n as i32)
}

/// `ggml_vec_swiglu_f32`: `g = silu(g) * u` with `silu(g) = g / (1 + e^-g)`, `e^x` as
/// [`ggml_v_expf`] computes it.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + ggml_v_expf(-*g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 97th f32 from -104 to 89 (about 600 thousand values, all binades, both signs) and
    /// the edges: [`expf`] equals `e^x` correctly rounded (through the `libm` crate's f64 `exp`,
    /// within an f64 unit of its last place), and the special values behave.
    #[test]
    fn expf_is_correctly_rounded_across_its_range() {
        let mut checked = 0;
        let mut wrong = Vec::new();
        let mut bits = 0u32;
        while bits < u32::MAX - 96 {
            let x = f32::from_bits(bits);
            if x.is_finite() && x > exp::MIN && x <= exp::MAX {
                let want = libm::exp(f64::from(x)) as f32;
                if expf(x).to_bits() != want.to_bits() {
                    wrong.push(x);
                }
                checked += 1;
            }
            bits += 97;
        }
        assert!(checked > 500_000, "{checked}");
        assert!(
            wrong.is_empty(),
            "{} of {checked} differ: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(8)]
        );
        for (x, want) in [
            (0.0f32, 1.0f32),
            (-0.0, 1.0),
            (f32::NEG_INFINITY, 0.0),
            (-104.0, 0.0),
            (-1000.0, 0.0),
            (89.0, libm::exp(89.0) as f32),
            (89.5, f32::INFINITY),
            (f32::INFINITY, f32::INFINITY),
            (-103.9, libm::exp(-103.9f32 as f64) as f32),
            (-87.5, libm::exp(-87.5f32 as f64) as f32),
        ] {
            assert_eq!(expf(x).to_bits(), want.to_bits(), "e^{x}");
        }
        assert!(expf(f32::NAN).is_nan());
        assert!(expf(-103.9) > 0.0, "a subnormal, not zero");
    }
}
