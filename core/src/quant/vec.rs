//! The vector kernels of attention, scalar reference: f16 conversion of cache rows, the score dot
//! product and the running value sum. [`super::simd::Isa`] has the fast versions, equal bit for
//! bit.
//!
//! The order is llama.cpp's flash attention on its x86 (AVX-512) build, which is what makes the
//! logits agree with it: the query and keys are f16 (for an f16 cache), scores are
//! `ggml_vec_dot_f16`, and the value sum takes one fused multiply-add per value, rounded to f16
//! after each step when the cache is f16.

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
                *lane = libm::fmaf(a[16 * j + l], b[16 * j + l], *lane);
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
        *a = libm::fmaf(v, s, *a);
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
}

impl KvRows<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Self::F16(v) => v.len(),
            Self::F32(v) => v.len(),
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
            (KvRows::F16(_), KvRows::F16(_)) | (KvRows::F32(_), KvRows::F32(_))
        );
        same && end.is_some_and(|e| e <= self.keys.len() && e <= self.values.len())
    }
}

/// `e^x` correctly rounded to f32 (through f64), as glibc's `expf` gives it in all but the rarest
/// cases; the `libm` crate's f32 version is up to 1 ulp away, which changes attention weights.
#[inline]
pub fn expf(x: f32) -> f32 {
    libm::exp(f64::from(x)) as f32
}

/// One query row and head of `ggml_compute_forward_flash_attn_ext_f16_one_chunk`: online softmax
/// over the cache, into `out` (the head's width, like `q`). With an f16 cache the query is
/// rounded to f16 and the value sum is held in f16, as llama.cpp does. `k` and `v` are scratch of
/// the head's width. A head that does not [`AttnHead::fits`] leaves `out` zeroed.
pub fn attend(q: &mut [f32], head: &AttnHead<'_>, k: &mut [f32], v: &mut [f32], out: &mut [f32]) {
    out.fill(0.0);
    let dim = out.len();
    if q.len() != dim || k.len() != dim || v.len() != dim || !head.fits(dim) {
        return;
    }
    let f16 = matches!(head.keys, KvRows::F16(_));
    if f16 {
        round_f16_slice(q);
    }
    let row = |rows: KvRows<'_>, t: usize, dst: &mut [f32]| {
        let at = t * head.stride + head.offset;
        match rows {
            KvRows::F16(c) => decode_f16(&c[at..at + dim], dst),
            KvRows::F32(c) => dst.copy_from_slice(&c[at..at + dim]),
        }
    };
    let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
    for t in 0..head.len {
        row(head.keys, t, k);
        let s = dot_ggml(q, k) * head.scale;
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > max {
            ms = expf(max - s);
            max = s;
            scale(out, ms, f16);
        } else {
            vs = expf(s - max);
        }
        row(head.values, t, v);
        mad(out, v, vs, f16);
        sum = libm::fmaf(sum, ms, vs);
    }
    let inv = 1.0 / sum;
    for acc in out.iter_mut() {
        *acc *= inv;
    }
}

/// `ggml_v_expf`, the exponential of llama.cpp's vectorised SiLU (the ARM optimized-routines
/// polynomial, at most 1.5 ulp from `e^x`), lane by lane. llama.cpp's activations, and so its
/// logits, follow this approximation rather than a correctly rounded `expf`.
pub fn ggml_v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = libm::fmaf(x, c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = libm::fmaf(-n, c(0x35bf_be8e), libm::fmaf(-n, c(0x3f31_7200), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = libm::fmaf(
        libm::fmaf(
            libm::fmaf(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            libm::fmaf(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        libm::fmaf(c(0x3f7f_fff6), b, 1.0),
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
