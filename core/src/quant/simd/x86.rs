//! x86_64 kernels: AVX2 (with FMA and F16C) and AVX-512 (with VNNI).
//!
//! Each kernel computes exactly what its scalar reference in [`crate::quant::dot`] computes: the
//! integer sums are exact whatever instructions form them, and the float side keeps the
//! reference's lanes, its fused multiply-adds and its final reduction, so the results are equal
//! bit for bit. The two levels share their code through [`simd_level!`]; they differ in the
//! instruction that forms a block's integer lane sums and in how Q5_0's fifth bits are spread
//! out.

use core::arch::x86_64::*;

use alloc::vec::Vec;

use super::super::blocks::*;
use super::super::dot::{
    ActRow, BatchRow, BlockQ8K, hsum8, k4_scales_mins, q5_k_fold, q5_k_mins, weight_blocks,
};
use super::super::{QK, QK_K, QuantError, vec};
use crate::dtype::GgmlType;

/// Eight i32 lanes, lane `l` the sum of the products of bytes `4l..4l + 4` of `x` (signed) and
/// `y` (signed, never -128), through `vpmaddubsw`: `|x|` times `y` with `x`'s sign cannot
/// saturate while `|y| <= 127`.
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_avx2(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// [`lanes_avx2`] after the signs are moved: `ax = |x|` (unsigned) and `sy = y` with `x`'s sign.
#[target_feature(enable = "avx2")]
#[inline]
fn moved_lanes_avx2(ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// [`moved_lanes_avx2`] in one `vpdpbusd`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn moved_lanes_vnni(ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
}

/// [`lanes_avx2`] in one `vpdpbusd`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn lanes_vnni(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
}

/// `acc` plus the sums of adjacent i16 products of `a` and `b`, per i32 lane.
#[target_feature(enable = "avx2")]
#[inline]
fn wsum_avx2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// [`wsum_avx2`] in one `vpdpwssd`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn wsum_vnni(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

/// The sums of eight vectors of eight i32 lanes: lane `k` is the sum of `v[k]`'s lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn sums8(v: &[__m256i; 8]) -> __m256i {
    // hadd works within 128-bit halves: [a01, a23, b01, b23 | a45, a67, b45, b67].
    let g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(g0, g1),
        _mm256_permute2x128_si256::<0x31>(g0, g1),
    )
}

/// Eight vectors of eight i32 lanes in, four out: out `p` lane `k` is lanes `2p` and `2p + 1`
/// of `v[k]` summed.
#[target_feature(enable = "avx2")]
#[inline]
fn pair_sums8(v: &[__m256i; 8]) -> [__m256i; 4] {
    // [k0p0, k0p1, k1p0, k1p1 | k0p2, k0p3, k1p2, k1p3] for each pair of vectors.
    let h01 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[0], v[1]));
    let h23 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[2], v[3]));
    let h45 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[4], v[5]));
    let h67 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[6], v[7]));
    let even_lo = _mm256_shuffle_ps::<0x88>(h01, h23);
    let odd_lo = _mm256_shuffle_ps::<0xDD>(h01, h23);
    let even_hi = _mm256_shuffle_ps::<0x88>(h45, h67);
    let odd_hi = _mm256_shuffle_ps::<0xDD>(h45, h67);
    [
        _mm256_castps_si256(_mm256_permute2f128_ps::<0x20>(even_lo, even_hi)),
        _mm256_castps_si256(_mm256_permute2f128_ps::<0x20>(odd_lo, odd_hi)),
        _mm256_castps_si256(_mm256_permute2f128_ps::<0x31>(even_lo, even_hi)),
        _mm256_castps_si256(_mm256_permute2f128_ps::<0x31>(odd_lo, odd_hi)),
    ]
}

/// 0xF0 in every byte whose bit in `bits` is clear, 0 elsewhere: OR-ed into a Q5_0 nibble it
/// gives the signed value `(nibble | bit << 4) - 16`.
#[target_feature(enable = "avx2")]
#[inline]
fn q5_offsets_avx2(bits: u32) -> __m256i {
    // Byte i takes byte i / 8 of `bits`, then every bit but i % 8 is set: all ones iff bit i was.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let set = _mm256_cmpeq_epi8(
        _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
        _mm256_set1_epi8(-1),
    );
    _mm256_andnot_si256(set, _mm256_set1_epi8(0xF0u8 as i8))
}

/// [`q5_offsets_avx2`] as one masked move.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
#[inline]
fn q5_offsets_avx512(bits: u32) -> __m256i {
    _mm256_maskz_mov_epi8(!bits, _mm256_set1_epi8(0xF0u8 as i8))
}

const ROWS: usize = 1;
const PREFETCH: usize = 2048;

macro_rules! simd_level {
    ($level:ident, $features:literal, $lanes:ident, $moved:ident, $q5_offsets:ident, $wsum:ident, $krows:literal) => {
        pub(super) mod $level {
            use super::*;

            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn load32<T: bytemuck::Pod>(bytes: &[T; 32]) -> __m256i {
                // SAFETY: 32 readable bytes (T is one byte wide); `loadu` needs no alignment.
                unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn load16<T: bytemuck::Pod>(bytes: &[T]) -> __m128i {
                assert!(bytes.len() * size_of::<T>() >= 16);
                // SAFETY: at least 16 readable bytes, checked above.
                unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
            }

            /// f16 bits to f32, exactly.
            #[target_feature(enable = $features)]
            #[inline]
            fn f16(bits: [u8; 2]) -> f32 {
                _mm_cvtss_f32(f16x4(bits))
            }

            /// f16 bits to f32 in every lane. Broadcasting the bits (rather than inserting
            /// them into a register) keeps the conversion free of any earlier value.
            #[target_feature(enable = $features)]
            #[inline]
            fn f16x4(bits: [u8; 2]) -> __m128 {
                _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bits)))
            }

            /// [`f16x4`] in eight lanes.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn f16x8(bits: [u8; 2]) -> __m256 {
                _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bits)))
            }

            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn lanes_f32(v: __m256) -> [f32; 8] {
                let mut out = [0f32; 8];
                // SAFETY: `out` holds eight f32.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
                out
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn hsum_i32(v: __m256i) -> i32 {
                let h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0b01_00_11_10));
                let h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0b10_11_00_01));
                _mm_cvtsi128_si32(h)
            }

            /// The 32 nibbles of 16 bytes: low nibbles first, then high.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn nibbles(qs: &[u8; 16]) -> __m256i {
                let q = load16(qs);
                _mm256_and_si256(
                    _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
                    _mm256_set1_epi8(0x0f),
                )
            }

            /// `R` rows of blocks of 32 against one row of Q8_0 activations (`ad`: their scales
            /// as f32), each row's lanes fused as `dot::blocks` fuses them: the activation
            /// block is loaded once for all `R` rows.
            #[target_feature(enable = $features)]
            #[inline]
            fn legacy<B, const R: usize>(
                w: [&[B]; R],
                y: &[BlockQ8_0],
                ad: &[f32],
                unpack: impl Fn(&B) -> ([u8; 2], __m256i),
            ) -> [f32; R] {
                let n = y.len();
                assert!(ad.len() == n && w.iter().all(|r| r.len() == n));
                let mut acc = [_mm256_setzero_ps(); R];
                for i in 0..n {
                    let qy = load32(&y[i].qs);
                    let da = _mm256_set1_ps(ad[i]);
                    for r in 0..R {
                        // Weights stream from memory once per token; ask for them early.
                        _mm_prefetch::<_MM_HINT_T0>(
                            w[r].as_ptr()
                                .wrapping_add(i)
                                .cast::<i8>()
                                .wrapping_add(PREFETCH),
                        );
                        let (dw, q) = unpack(&w[r][i]);
                        let d = _mm256_mul_ps(f16x8(dw), da);
                        acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps($lanes(q, qy)), acc[r]);
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum8(&lanes_f32(acc[r]));
                }
                out
            }

            /// One row of blocks of 32 against `C` activation rows: [`legacy`] with the weight
            /// block unpacked once for all of them (the batched products of a prompt).
            #[target_feature(enable = $features)]
            #[inline]
            fn legacy_cols<B, const C: usize>(
                w: &[B],
                ys: [&[BlockQ8_0]; C],
                ads: [&[f32]; C],
                unpack: impl Fn(&B) -> ([u8; 2], __m256i),
            ) -> [f32; C] {
                let n = w.len();
                assert!(ys.iter().all(|y| y.len() == n) && ads.iter().all(|a| a.len() == n));
                let mut acc = [_mm256_setzero_ps(); C];
                for i in 0..n {
                    let (dw, q) = unpack(&w[i]);
                    let dw = f16x8(dw);
                    let ax = _mm256_sign_epi8(q, q);
                    for c in 0..C {
                        let sy = _mm256_sign_epi8(load32(&ys[c][i].qs), q);
                        let d = _mm256_mul_ps(dw, _mm256_set1_ps(ads[c][i]));
                        acc[c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps($moved(ax, sy)), acc[c]);
                    }
                }
                let mut out = [0f32; C];
                for c in 0..C {
                    out[c] = hsum8(&lanes_f32(acc[c]));
                }
                out
            }

            /// `out[r * n + i]` = weight row `i` of the `n` in `w` times activation row `r` of
            /// `ys`, four activation rows at a time.
            #[target_feature(enable = $features)]
            #[inline]
            fn legacy_block<B>(
                w: &[B],
                ys: &[(&[BlockQ8_0], &[f32])],
                out: &mut [f32],
                unpack: impl Fn(&B) -> ([u8; 2], __m256i) + Copy,
            ) {
                let m = ys.len();
                let nb = ys[0].0.len();
                let n = out.len() / m;
                // Four activation rows at a time against every weight row of the tile: both
                // stay in L1 while they meet.
                let mut r = 0;
                while r < m {
                    let take = (m - r).min(4);
                    for (i, row) in w.chunks_exact(nb).enumerate() {
                        let g = &ys[r..r + take];
                        if take == 4 {
                            let res = legacy_cols(
                                row,
                                [g[0].0, g[1].0, g[2].0, g[3].0],
                                [g[0].1, g[1].1, g[2].1, g[3].1],
                                unpack,
                            );
                            for (c, v) in res.into_iter().enumerate() {
                                out[(r + c) * n + i] = v;
                            }
                        } else {
                            for (c, (y, ad)) in g.iter().enumerate() {
                                out[(r + c) * n + i] = legacy_cols(row, [*y], [*ad], unpack)[0];
                            }
                        }
                    }
                    r += take;
                }
            }

            /// Weight rows times several activation rows: `out[i * xs.len() + r]` is row `i`
            /// of `bytes` times `xs[r]`, the layout of a transposed product. `None` when this
            /// level has no batched kernel for `ty` (or the rows lack their precomputed sums).
            #[target_feature(enable = $features)]
            pub fn dot_block(
                ty: GgmlType,
                bytes: &[u8],
                xs: &[ActRow<'_>],
                out: &mut [f32],
            ) -> Result<Option<()>, QuantError> {
                if xs.is_empty() || out.is_empty() || !out.len().is_multiple_of(xs.len()) {
                    return Ok(None);
                }
                if matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) {
                    let mut ys = Vec::with_capacity(xs.len());
                    for x in xs {
                        match x {
                            ActRow::Q8K(y, at) if !y.is_empty() => ys.push((*y, *at)),
                            _ => return Ok(None),
                        }
                    }
                    if ys.iter().any(|(y, _)| y.len() != ys[0].0.len()) {
                        return Ok(None);
                    }
                    k_block(ty, bytes, &ys, out)?;
                    return Ok(Some(()));
                }
                if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_0) {
                    return Ok(None);
                }
                let mut ys = Vec::with_capacity(xs.len());
                for x in xs {
                    match x {
                        ActRow::Q8_0(y, sums) if sums.d.len() == y.len() && !y.is_empty() => {
                            ys.push((*y, sums.d));
                        }
                        _ => return Ok(None),
                    }
                }
                let nb = ys[0].0.len();
                if ys.iter().any(|(y, _)| y.len() != nb) {
                    return Ok(None);
                }
                let blocks = nb * (out.len() / xs.len());
                match ty {
                    GgmlType::Q8_0 => {
                        let w: &[BlockQ8_0] = weight_blocks(ty, bytes, blocks, QK)?;
                        legacy_block(w, &ys, out, |b| (b.d, load32(&b.qs)));
                    }
                    GgmlType::Q5_0 => {
                        let w: &[BlockQ5_0] = weight_blocks(ty, bytes, blocks, QK)?;
                        legacy_block(w, &ys, out, |b| {
                            let bits = u32::from_le_bytes(b.qh);
                            (b.d, _mm256_or_si256(nibbles(&b.qs), $q5_offsets(bits)))
                        });
                    }
                    _ => {
                        let w: &[BlockQ4_0] = weight_blocks(ty, bytes, blocks, QK)?;
                        legacy_block(w, &ys, out, |b| {
                            (b.d, _mm256_sub_epi8(nibbles(&b.qs), _mm256_set1_epi8(8)))
                        });
                    }
                }
                Ok(Some(()))
            }

            /// Every row of `w` (rows of `y.len()` blocks) through [`legacy`], two at a time.
            #[target_feature(enable = $features)]
            #[inline]
            fn legacy_rows<B>(
                w: &[B],
                y: &[BlockQ8_0],
                ad: &[f32],
                out: &mut [f32],
                unpack: impl Fn(&B) -> ([u8; 2], __m256i) + Copy,
            ) {
                let n = y.len();
                let mut rows = w.chunks_exact(ROWS * n);
                let mut outs = out.chunks_exact_mut(ROWS);
                for (group, o) in rows.by_ref().zip(outs.by_ref()) {
                    let w: [&[B]; ROWS] = core::array::from_fn(|r| &group[r * n..(r + 1) * n]);
                    o.copy_from_slice(&legacy(w, y, ad, unpack));
                }
                for (row, o) in rows.remainder().chunks_exact(n).zip(outs.into_remainder()) {
                    *o = legacy([row], y, ad, unpack)[0];
                }
            }

            /// A Q6_K block's 256 unsigned levels (0..63), 32 per vector in value order.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k_levels(x: &BlockQ6K) -> [__m256i; 8] {
                let m4 = _mm256_set1_epi8(0x0f);
                let m2 = _mm256_set1_epi8(3);
                let mut out = [_mm256_setzero_si256(); 8];
                for half in 0..2 {
                    let ql = &x.ql[64 * half..64 * half + 64];
                    let (ql0, ql1) = (
                        load32(ql[..32].try_into().unwrap_or(&[0; 32])),
                        load32(ql[32..].try_into().unwrap_or(&[0; 32])),
                    );
                    let qh = load32(
                        x.qh[32 * half..32 * half + 32]
                            .try_into()
                            .unwrap_or(&[0; 32]),
                    );
                    let high = [
                        qh,
                        _mm256_srli_epi16(qh, 2),
                        _mm256_srli_epi16(qh, 4),
                        _mm256_srli_epi16(qh, 6),
                    ]
                    .map(|h| _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
                    out[4 * half] = _mm256_or_si256(_mm256_and_si256(ql0, m4), high[0]);
                    out[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), high[1]);
                    out[4 * half + 2] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high[2]);
                    out[4 * half + 3] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high[3]);
                }
                out
            }

            /// A Q6_K block's eight integer lane sums, as `lanes_q6_k` defines them, from its
            /// unpacked levels.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k_lanes_of(
                levels: &[__m256i; 8],
                scales: &([__m256i; 8], __m256i),
                y: &BlockQ8K,
            ) -> __m256i {
                let mut sum = _mm256_setzero_si256();
                for (k, (&q, &s)) in levels.iter().zip(&scales.0).enumerate() {
                    let act = load32(y.qs[32 * k..32 * k + 32].try_into().unwrap_or(&[0; 32]));
                    sum = $wsum(sum, _mm256_maddubs_epi16(q, act), s);
                }
                // SAFETY: `bsums` is 16 i16, 32 bytes.
                let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
                let offsets = _mm256_madd_epi16(bsums, scales.1);
                _mm256_sub_epi32(sum, _mm256_slli_epi32(offsets, 5))
            }

            /// A Q6_K block's scales: per run of 32 values its two group scales (eight i16
            /// lanes each), and all sixteen as i16.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k_scales(x: &BlockQ6K) -> ([__m256i; 8], __m256i) {
                let mut runs = [_mm256_setzero_si256(); 8];
                for (k, run) in runs.iter_mut().enumerate() {
                    *run = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(x.scales[2 * k + 1])),
                        _mm_set1_epi16(i16::from(x.scales[2 * k])),
                    );
                }
                (runs, _mm256_cvtepi8_epi16(load16(&x.scales)))
            }

            /// A Q6_K block's eight integer lane sums, as `lanes_q6_k` defines them.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k_lanes(x: &BlockQ6K, y: &BlockQ8K) -> __m256i {
                q6_k_lanes_of(&q6_k_levels(x), &q6_k_scales(x), y)
            }

            /// A Q4_K block unpacked: its 256 nibbles (32 per vector, groups in order), each
            /// group's scale in every i16 lane, and the mins paired with the activation sums.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_k_unpack(b: &BlockQ4K) -> ([__m256i; 8], [__m256i; 8], __m256i) {
                let m4 = _mm256_set1_epi8(0x0f);
                let (scales, mins) = k4_scales_mins(&b.scales);
                let mut q = [_mm256_setzero_si256(); 8];
                for p in 0..4 {
                    let q4 = load32(b.qs[32 * p..32 * p + 32].try_into().unwrap_or(&[0; 32]));
                    q[2 * p] = _mm256_and_si256(q4, m4);
                    q[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                }
                let s = scales.map(|v| _mm256_set1_epi16(i16::from(v)));
                let m: [i16; 16] = core::array::from_fn(|i| i16::from(mins[i / 2]));
                // SAFETY: `m` is 16 i16, 32 bytes.
                let m = unsafe { _mm256_loadu_si256(m.as_ptr().cast()) };
                (q, s, m)
            }

            /// One Q4_K block against one Q8_K block, unpacked by [`q4_k_unpack`]: the scaled
            /// level sums of each pair of groups (eight lanes each) and the eight group min
            /// corrections.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_k_sums(
                q: &[__m256i; 8],
                scales: &[__m256i; 8],
                mins: __m256i,
                a: &BlockQ8K,
            ) -> ([__m256i; 4], __m256i) {
                let levels = core::array::from_fn(|p| q4_k_pair(q, scales, a, p));
                // SAFETY: `bsums` is 16 i16, 32 bytes.
                let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
                (levels, _mm256_madd_epi16(bsums, mins))
            }

            /// Pair `p` of a Q4_K block (groups `2p` and `2p + 1`, 64 values) against a Q8_K
            /// block: the scaled level sums in eight lanes.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_k_pair(q: &[__m256i; 8], scales: &[__m256i; 8], a: &BlockQ8K, p: usize) -> __m256i {
                let ylo = load32(a.qs[64 * p..64 * p + 32].try_into().unwrap_or(&[0; 32]));
                let yhi = load32(a.qs[64 * p + 32..64 * p + 64].try_into().unwrap_or(&[0; 32]));
                let lo = $wsum(_mm256_setzero_si256(), _mm256_maddubs_epi16(q[2 * p], ylo), scales[2 * p]);
                $wsum(lo, _mm256_maddubs_epi16(q[2 * p + 1], yhi), scales[2 * p + 1])
            }

            /// Folds one block's sums into a row's two accumulators, in `gemm` pairs or whole.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_k_fold(
                (levels, corrections): ([__m256i; 4], __m256i),
                d: f32,
                dmin: f32,
                grouped: bool,
                (acc, acc_min): (&mut f32, &mut f32),
            ) {
                if grouped {
                    // The four pair sums of levels and of corrections at once (exact in any
                    // order), then the fused sums in pair order.
                    let h = _mm256_hadd_epi32(
                        _mm256_hadd_epi32(levels[0], levels[1]),
                        _mm256_hadd_epi32(levels[2], levels[3]),
                    );
                    let l = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                    // Corrections are per group: pairs are lanes (0+1, 2+3, 4+5, 6+7).
                    let c = _mm256_hadd_epi32(corrections, corrections);
                    let c = _mm_unpacklo_epi64(
                        _mm256_castsi256_si128(c),
                        _mm256_extracti128_si256(c, 1),
                    );
                    let (mut lv, mut cv) = ([0f32; 4], [0f32; 4]);
                    // SAFETY: four f32 each.
                    unsafe {
                        _mm_storeu_ps(lv.as_mut_ptr(), _mm_cvtepi32_ps(l));
                        _mm_storeu_ps(cv.as_mut_ptr(), _mm_cvtepi32_ps(c));
                    }
                    for p in 0..4 {
                        *acc = fma(lv[p], d, *acc);
                        *acc_min = fma(cv[p], dmin, *acc_min);
                    }
                } else {
                    let all = _mm256_add_epi32(
                        _mm256_add_epi32(levels[0], levels[1]),
                        _mm256_add_epi32(levels[2], levels[3]),
                    );
                    *acc = fma(hsum_i32(all) as f32, d, *acc);
                    *acc_min = fma(hsum_i32(corrections) as f32, dmin, *acc_min);
                }
            }

            /// `dot::offset_fold` for Q4_1/Q5_1 rows against one Q8_1 row: `unpack` gives a
            /// block's scale, minimum and 32 unsigned levels.
            #[target_feature(enable = $features)]
            #[inline]
            fn offset_rows<B>(
                w: &[B],
                y: &[BlockQ8_0],
                s: &[f32],
                out: &mut [f32],
                unpack: impl Fn(&B) -> ([u8; 2], [u8; 2], __m256i),
            ) {
                let n = y.len();
                assert!(s.len() == n && w.len() == n * out.len());
                for (row, o) in w.chunks_exact(n).zip(out) {
                    let mut acc = _mm256_setzero_ps();
                    let mut summs = 0f32;
                    for ((b, a), &s) in row.iter().zip(y).zip(s) {
                        let (d, m, levels) = unpack(b);
                        summs += f16(m) * s;
                        let d = _mm256_set1_ps(f16(d) * f16(a.d));
                        let lanes = _mm256_cvtepi32_ps($moved(levels, load32(&a.qs)));
                        acc = _mm256_fmadd_ps(d, lanes, acc);
                    }
                    *o = hsum8(&lanes_f32(acc)) + summs;
                }
            }

            /// `dot::q5_k_ints`: lane `l` of the result sums the values whose index mod 8 is
            /// `l`, so the products are widened to i32 eight values at a time rather than
            /// summed in pairs.
            #[target_feature(enable = $features)]
            #[inline]
            fn q5_k_ints(x: &BlockQ5K, y: &BlockQ8K) -> ([i32; 8], i32) {
                let (scales, mins) = k4_scales_mins(&x.scales);
                let qh = load32(&x.qh);
                let mut acc = _mm256_setzero_si256();
                for (j, q4) in x.qs.chunks_exact(32).enumerate() {
                    let q4 = load32(q4.try_into().expect("32 bytes"));
                    for (half, &scale) in scales[2 * j..2 * j + 2].iter().enumerate() {
                        let g = 2 * j + half;
                        let low = if half == 0 { q4 } else { _mm256_srli_epi16(q4, 4) };
                        let low = _mm256_and_si256(low, _mm256_set1_epi8(0x0f));
                        let bit = _mm256_set1_epi8((1u8 << g) as i8);
                        let fifth = _mm256_and_si256(
                            _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit),
                            _mm256_set1_epi8(16),
                        );
                        let level = _mm256_or_si256(low, fifth);
                        let a = load32(y.qs[32 * g..32 * g + 32].try_into().expect("32 bytes"));
                        // Levels below 32 times i8 fit i16: values 0..16, then 16..32.
                        let product = |k: i32| {
                            let (l, a) = if k == 0 {
                                (_mm256_castsi256_si128(level), _mm256_castsi256_si128(a))
                            } else {
                                (_mm256_extracti128_si256(level, 1), _mm256_extracti128_si256(a, 1))
                            };
                            _mm256_mullo_epi16(_mm256_cvtepu8_epi16(l), _mm256_cvtepi8_epi16(a))
                        };
                        let (p0, p1) = (product(0), product(1));
                        let wide = |p: __m256i| {
                            _mm256_add_epi32(
                                _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)),
                                _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)),
                            )
                        };
                        let sum = _mm256_add_epi32(wide(p0), wide(p1));
                        acc = _mm256_add_epi32(
                            acc,
                            _mm256_mullo_epi32(sum, _mm256_set1_epi32(i32::from(scale))),
                        );
                    }
                }
                let mut lanes = [0i32; 8];
                // SAFETY: `lanes` holds eight i32.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
                (lanes, q5_k_mins(&mins, y))
            }

            /// `q4_k_repacked`: per block the scaled level sums and min corrections of each
            /// pair of groups (64 values), summed in `gemm` pairs or whole.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_k(x: &[BlockQ4K], y: &[BlockQ8K], grouped: bool) -> f32 {
                let (mut acc, mut acc_min) = (0f32, 0f32);
                for (b, a) in x.iter().zip(y) {
                    let (q, scales, mins) = q4_k_unpack(b);
                    let sums = q4_k_sums(&q, &scales, mins, a);
                    let (d, dmin) = (f16(b.d) * a.d, f16(b.dmin) * a.d);
                    q4_k_fold(sums, d, dmin, grouped, (&mut acc, &mut acc_min));
                }
                acc - acc_min
            }

            /// Q4_K and Q6_K weight rows against a batch of Q8_K rows: `out[r * n + i]` for
            /// the `n` weight rows.
            ///
            /// `$krows` weight rows (four with AVX-512's 32 registers, two with AVX2's 16) and
            /// four activation rows make a tile of products, eight to a vector: each weight
            /// block is unpacked once for the whole batch, each load feeds several products,
            /// the integer sums of eight products are reduced together, and the float folds,
            /// in the reference's order, run lane-wise. Activation rows that llama.cpp's kernels
            /// take alone (the last few of a batch, or every row of a small one) and the weight
            /// rows past the last whole tile go one product at a time.
            #[target_feature(enable = $features)]
            fn k_block(
                ty: GgmlType,
                bytes: &[u8],
                xs: &[(&[BlockQ8K], BatchRow)],
                out: &mut [f32],
            ) -> Result<(), QuantError> {
                let m = xs.len();
                let nb = xs[0].0.len();
                let n = out.len() / m;
                let blocks = nb * n;
                let tiled = |at: &BatchRow| {
                    if ty == GgmlType::Q4_K { at.in_group_of_four() } else { at.tiled() }
                };
                // Rows that llama.cpp groups come first in a batch.
                let fast = xs.iter().take_while(|(_, at)| tiled(at)).count() / 4 * 4;
                let tile_xs = &xs[..fast];
                const R: usize = $krows;
                // Per group of four activation rows, one pair of accumulators per two weight rows.
                let mut acc = alloc::vec![[_mm256_setzero_ps(); 2]; fast / 4 * (R / 2)];
                // `acc` out, for weight rows from `i0`: vector `h` lane `k` is weight row
                // `i0 + 2h + k / 4`, activation `4g + k % 4`.
                let spill = |acc: &[[__m256; 2]], out: &mut [f32], i0: usize, q4: bool| {
                    for (g, pairs) in acc.chunks_exact(R / 2).enumerate() {
                      for (h, a) in pairs.iter().enumerate() {
                        let v = lanes_f32(if q4 { _mm256_sub_ps(a[0], a[1]) } else { a[0] });
                        for (half, lanes) in v.chunks_exact(4).enumerate() {
                            for (c, &x) in lanes.iter().enumerate() {
                                out[(4 * g + c) * n + i0 + 2 * h + half] = x;
                            }
                        }
                      }
                    }
                };
                // Whole tiles of `R` weight rows (`tile` gets them and the first one's index),
                // then one product at a time for the rest.
                fn rows_of<B, const R: usize>(
                    w: &[B],
                    nb: usize,
                    xs: &[(&[BlockQ8K], BatchRow)],
                    fast: usize,
                    out: &mut [f32],
                    mut tile: impl FnMut([&[B]; R], usize, &mut [f32]),
                    one: impl Fn(&[B], &[BlockQ8K], BatchRow) -> f32,
                ) {
                    let n = w.len() / nb;
                    for (t, rows) in w.chunks(R * nb).enumerate() {
                        let i0 = t * R;
                        let tile_rows = if rows.len() == R * nb { fast } else { 0 };
                        if tile_rows > 0 {
                            let mut ws = [&rows[..0]; R];
                            for (r, w) in ws.iter_mut().enumerate() {
                                *w = &rows[r * nb..(r + 1) * nb];
                            }
                            tile(ws, i0, out);
                        }
                        for (k, row) in rows.chunks_exact(nb).enumerate() {
                            for (r, (y, at)) in xs.iter().enumerate().skip(tile_rows) {
                                out[r * n + i0 + k] = one(row, y, *at);
                            }
                        }
                    }
                }
                if ty == GgmlType::Q4_K {
                    let w: &[BlockQ4K] = weight_blocks(ty, bytes, blocks, QK_K)?;
                    rows_of::<_, R>(w, nb, xs, fast, out, |ws, i0, o| {
                        q4_k_tiles::<R>(ws, tile_xs, &mut acc);
                        spill(&acc, o, i0, true);
                    }, |row, y, at| q4_k(row, y, at.in_group_of_four()));
                } else {
                    let w: &[BlockQ6K] = weight_blocks(ty, bytes, blocks, QK_K)?;
                    rows_of::<_, R>(w, nb, xs, fast, out, |ws, i0, o| {
                        q6_k_tiles::<R>(ws, tile_xs, &mut acc);
                        spill(&acc, o, i0, false);
                    }, |row, y, at| if at.tiled() { q6_k_tiled(row, y) } else { q6_k(row, y) });
                }
                Ok(())
            }

            /// `R` Q4_K weight rows (2 or 4) against groups of four activation rows (all taken
            /// in `gemm` groups): for group `g` and rows `2h, 2h + 1`, lane `4r + c` of
            /// `acc[g * R / 2 + h][0]` is the level sum and of `[1]` the min correction of
            /// weight row `2h + r` and activation row `4g + c`.
            #[target_feature(enable = $features)]
            fn q4_k_tiles<const R: usize>(
                w: [&[BlockQ4K]; R],
                xs: &[(&[BlockQ8K], BatchRow)],
                acc: &mut [[__m256; 2]],
            ) {
                acc.fill([_mm256_setzero_ps(); 2]);
                let zero = _mm256_setzero_si256();
                for i in 0..w[0].len() {
                    let mut u = [([zero; 8], [zero; 8], zero); R];
                    let mut bd = [_mm256_setzero_ps(); 2];
                    let mut bmin = [_mm256_setzero_ps(); 2];
                    for h in 0..R / 2 {
                        let (b0, b1) = (&w[2 * h][i], &w[2 * h + 1][i]);
                        u[2 * h] = q4_k_unpack(b0);
                        u[2 * h + 1] = q4_k_unpack(b1);
                        let (d0, d1) = (f16(b0.d), f16(b1.d));
                        let (m0, m1) = (f16(b0.dmin), f16(b1.dmin));
                        bd[h] = _mm256_setr_ps(d0, d0, d0, d0, d1, d1, d1, d1);
                        bmin[h] = _mm256_setr_ps(m0, m0, m0, m0, m1, m1, m1, m1);
                    }
                    for (g, a) in xs.chunks_exact(4).zip(acc.chunks_exact_mut(R / 2)) {
                        let ys = [&g[0].0[i], &g[1].0[i], &g[2].0[i], &g[3].0[i]];
                        let ad = _mm256_setr_ps(
                            ys[0].d, ys[1].d, ys[2].d, ys[3].d, ys[0].d, ys[1].d, ys[2].d, ys[3].d,
                        );
                        let mut d = [_mm256_setzero_ps(); 2];
                        let mut dmin = [_mm256_setzero_ps(); 2];
                        for h in 0..R / 2 {
                            d[h] = _mm256_mul_ps(bd[h], ad);
                            dmin[h] = _mm256_mul_ps(bmin[h], ad);
                        }
                        let mut v = [zero; 16];
                        for p in 0..4 {
                            // Each load serves `R` products (activations) or four (weights).
                            v = [zero; 16];
                            for j in [2 * p, 2 * p + 1] {
                                let y = ys.map(|a| load32(a.qs[32 * j..32 * j + 32].try_into().unwrap_or(&[0; 32])));
                                for (r, u) in u.iter().enumerate() {
                                    let (q, s) = (u.0[j], u.1[j]);
                                    for (c, &y) in y.iter().enumerate() {
                                        v[4 * r + c] = $wsum(v[4 * r + c], _mm256_maddubs_epi16(q, y), s);
                                    }
                                }
                            }
                            for h in 0..R / 2 {
                                let s = sums8(v[8 * h..8 * h + 8].try_into().unwrap_or(&[zero; 8]));
                                a[h][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d[h], a[h][0]);
                            }
                        }
                        for (k, v) in v.iter_mut().enumerate().take(4 * R) {
                            // SAFETY: `bsums` is 16 i16, 32 bytes.
                            let bsums = unsafe { _mm256_loadu_si256(ys[k % 4].bsums.as_ptr().cast()) };
                            *v = _mm256_madd_epi16(bsums, u[k / 4].2);
                        }
                        for h in 0..R / 2 {
                            let c = pair_sums8(v[8 * h..8 * h + 8].try_into().unwrap_or(&[zero; 8]));
                            for c in c {
                                a[h][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), dmin[h], a[h][1]);
                            }
                        }
                    }
                }
            }

            /// `R` Q6_K weight rows (2 or 4) against groups of four activation rows (all in a
            /// tiled batch): lane `4r + c` of `acc[g * R / 2 + h][0]` is weight row `2h + r`
            /// and activation row `4g + c`.
            #[target_feature(enable = $features)]
            fn q6_k_tiles<const R: usize>(
                w: [&[BlockQ6K]; R],
                xs: &[(&[BlockQ8K], BatchRow)],
                acc: &mut [[__m256; 2]],
            ) {
                acc.fill([_mm256_setzero_ps(); 2]);
                let zero = _mm256_setzero_si256();
                for i in 0..w[0].len() {
                    let mut u = [([zero; 8], ([zero; 8], zero)); R];
                    let mut bd = [_mm256_setzero_ps(); 2];
                    for h in 0..R / 2 {
                        let (b0, b1) = (&w[2 * h][i], &w[2 * h + 1][i]);
                        u[2 * h] = (q6_k_levels(b0), q6_k_scales(b0));
                        u[2 * h + 1] = (q6_k_levels(b1), q6_k_scales(b1));
                        let (d0, d1) = (f16(b0.d), f16(b1.d));
                        bd[h] = _mm256_setr_ps(d0, d0, d0, d0, d1, d1, d1, d1);
                    }
                    for (g, a) in xs.chunks_exact(4).zip(acc.chunks_exact_mut(R / 2)) {
                        let ys = [&g[0].0[i], &g[1].0[i], &g[2].0[i], &g[3].0[i]];
                        let ad = _mm256_setr_ps(
                            ys[0].d, ys[1].d, ys[2].d, ys[3].d, ys[0].d, ys[1].d, ys[2].d, ys[3].d,
                        );
                        // `q6_k_lanes_of` for the products, a run of 32 values at a time: each
                        // load serves `R` products (activations) or four (weights).
                        let mut v = [zero; 16];
                        for j in 0..8 {
                            let y = ys.map(|a| load32(a.qs[32 * j..32 * j + 32].try_into().unwrap_or(&[0; 32])));
                            for (r, u) in u.iter().enumerate() {
                                let (q, s) = (u.0[j], u.1.0[j]);
                                for (c, &y) in y.iter().enumerate() {
                                    v[4 * r + c] = $wsum(v[4 * r + c], _mm256_maddubs_epi16(q, y), s);
                                }
                            }
                        }
                        for (k, v) in v.iter_mut().enumerate().take(4 * R) {
                            // SAFETY: `bsums` is 16 i16, 32 bytes.
                            let bsums = unsafe { _mm256_loadu_si256(ys[k % 4].bsums.as_ptr().cast()) };
                            let offsets = _mm256_madd_epi16(bsums, u[k / 4].1.1);
                            *v = _mm256_sub_epi32(*v, _mm256_slli_epi32(offsets, 5));
                        }
                        for h in 0..R / 2 {
                            let s = sums8(v[8 * h..8 * h + 8].try_into().unwrap_or(&[zero; 8]));
                            let result = _mm256_mul_ps(_mm256_cvtepi32_ps(s), bd[h]);
                            a[h][0] = _mm256_fmadd_ps(result, ad, a[h][0]);
                        }
                    }
                }
            }

            /// `out[i] = w_i · x` for the `out.len()` weight rows in `bytes`, when this level
            /// has a kernel for `ty`; `None` when the scalar reference is the only one.
            #[target_feature(enable = $features)]
            pub fn dot_rows(
                ty: GgmlType,
                bytes: &[u8],
                x: ActRow<'_>,
                out: &mut [f32],
            ) -> Result<Option<()>, QuantError> {
                let rows = out.len();
                let empty = match x {
                    ActRow::F32(y) => y.is_empty(),
                    ActRow::Q8_0(y, _) | ActRow::Q8_1(y, _) => y.is_empty(),
                    ActRow::Q8K(y, _) => y.is_empty(),
                };
                if empty || rows == 0 {
                    // Nothing to vectorize; the reference checks and handles it.
                    return Ok(None);
                }
                match (ty, x) {
                    (GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_0, ActRow::Q8_0(y, sums)) => {
                        let own: Vec<f32>;
                        let ad = if sums.d.len() == y.len() {
                            sums.d
                        } else {
                            own = y.iter().map(|b| f16(b.d)).collect();
                            &own
                        };
                        let blocks = y.len() * rows;
                        match ty {
                            GgmlType::Q8_0 => {
                                let w: &[BlockQ8_0] = weight_blocks(ty, bytes, blocks, QK)?;
                                legacy_rows(w, y, ad, out, |b| (b.d, load32(&b.qs)));
                            }
                            GgmlType::Q5_0 => {
                                let w: &[BlockQ5_0] = weight_blocks(ty, bytes, blocks, QK)?;
                                legacy_rows(w, y, ad, out, |b| {
                                    let bits = u32::from_le_bytes(b.qh);
                                    (b.d, _mm256_or_si256(nibbles(&b.qs), $q5_offsets(bits)))
                                });
                            }
                            _ => {
                                let w: &[BlockQ4_0] = weight_blocks(ty, bytes, blocks, QK)?;
                                legacy_rows(w, y, ad, out, |b| {
                                    let q = _mm256_sub_epi8(nibbles(&b.qs), _mm256_set1_epi8(8));
                                    (b.d, q)
                                });
                            }
                        }
                    }
                    (GgmlType::Q4_K, ActRow::Q8K(y, at)) => {
                        let w: &[BlockQ4K] = weight_blocks(ty, bytes, y.len() * rows, QK_K)?;
                        for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len().max(1))) {
                            *o = q4_k(row, y, at.in_group_of_four());
                        }
                    }
                    (GgmlType::Q4_1, ActRow::Q8_1(y, s)) => {
                        let w: &[BlockQ4_1] = weight_blocks(ty, bytes, y.len() * rows, QK)?;
                        offset_rows(w, y, s, out, |b| (b.d, b.m, nibbles(&b.qs)));
                    }
                    (GgmlType::Q5_1, ActRow::Q8_1(y, s)) => {
                        let w: &[BlockQ5_1] = weight_blocks(ty, bytes, y.len() * rows, QK)?;
                        offset_rows(w, y, s, out, |b| {
                            // Q5_0's signed values `level - 16`, moved up by 16.
                            let bits = u32::from_le_bytes(b.qh);
                            let q = _mm256_or_si256(nibbles(&b.qs), $q5_offsets(bits));
                            (b.d, b.m, _mm256_add_epi8(q, _mm256_set1_epi8(16)))
                        });
                    }
                    (GgmlType::Q5_K, ActRow::Q8K(y, _)) => {
                        let w: &[BlockQ5K] = weight_blocks(ty, bytes, y.len() * rows, QK_K)?;
                        for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len().max(1))) {
                            *o = q5_k_fold(row, y, |a, b| q5_k_ints(a, b));
                        }
                    }
                    (GgmlType::Q6_K, ActRow::Q8K(y, at)) => {
                        let w: &[BlockQ6K] = weight_blocks(ty, bytes, y.len() * rows, QK_K)?;
                        for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len().max(1))) {
                            *o = if at.tiled() {
                                q6_k_tiled(row, y)
                            } else {
                                q6_k(row, y)
                            };
                        }
                    }
                    (GgmlType::F32, ActRow::F32(y)) => {
                        let w = match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                            Ok(w) if w.len() == y.len() * rows => w,
                            _ => return Ok(None),
                        };
                        for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len().max(1))) {
                            *o = dot_f32(row, y);
                        }
                    }
                    _ => return Ok(None),
                }
                Ok(Some(()))
            }

            /// `q6_k_tiled`.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k_tiled(w: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
                let mut acc = 0f32;
                for (b, a) in w.iter().zip(y) {
                    let result = hsum_i32(q6_k_lanes(b, a)) as f32 * f16(b.d);
                    acc = fma(result, a.d, acc);
                }
                acc
            }

            /// `k_lanes` with `lanes_q6_k`.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k(w: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
                let mut acc = _mm256_setzero_ps();
                for (b, a) in w.iter().zip(y) {
                    let d = _mm256_mul_ps(_mm256_set1_ps(a.d), f16x8(b.d));
                    let sums = _mm256_cvtepi32_ps(q6_k_lanes(b, a));
                    acc = _mm256_fmadd_ps(d, sums, acc);
                }
                hsum8(&lanes_f32(acc))
            }

            /// `a * b + c` rounded once.
            #[target_feature(enable = $features)]
            #[inline]
            fn fma(a: f32, b: f32, c: f32) -> f32 {
                _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
            }

            /// `vec::encode_f16`.
            #[target_feature(enable = $features)]
            #[inline]
            pub fn encode_f16(src: &[f32], dst: &mut [u16]) {
                let n = src.len().min(dst.len());
                let (src, dst) = (&src[..n], &mut dst[..n]);
                let (mut s, mut d) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
                for (a, b) in s.by_ref().zip(d.by_ref()) {
                    // SAFETY: chunks of eight values.
                    unsafe {
                        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(
                            a.as_ptr(),
                        ));
                        _mm_storeu_si128(b.as_mut_ptr().cast(), h);
                    }
                }
                vec::encode_f16(s.remainder(), d.into_remainder());
            }

            /// `vec::decode_f16`.
            #[target_feature(enable = $features)]
            #[inline]
            pub fn decode_f16(src: &[u16], dst: &mut [f32]) {
                let n = src.len().min(dst.len());
                let (src, dst) = (&src[..n], &mut dst[..n]);
                let (mut s, mut d) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
                for (a, b) in s.by_ref().zip(d.by_ref()) {
                    // SAFETY: chunks of eight values.
                    unsafe {
                        let v = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().cast()));
                        _mm256_storeu_ps(b.as_mut_ptr(), v);
                    }
                }
                vec::decode_f16(s.remainder(), d.into_remainder());
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn round8(v: __m256) -> __m256 {
                _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
            }

            /// `vec::round_f16_slice`.
            #[target_feature(enable = $features)]
            #[inline]
            pub fn round_f16_slice(x: &mut [f32]) {
                let mut c = x.chunks_exact_mut(8);
                for a in c.by_ref() {
                    // SAFETY: chunks of eight values.
                    unsafe {
                        _mm256_storeu_ps(a.as_mut_ptr(), round8(_mm256_loadu_ps(a.as_ptr())))
                    };
                }
                vec::round_f16_slice(c.into_remainder());
            }

            /// `vec::dot_ggml`: the 4 x 16 lanes as 8 x 8.
            #[target_feature(enable = $features)]
            #[inline]
            pub fn dot_ggml(x: &[f32], y: &[f32]) -> f32 {
                let mut acc = [_mm256_setzero_ps(); 8];
                let (xs, ys) = (x.chunks_exact(64), y.chunks_exact(64));
                let (xr, yr) = (xs.remainder(), ys.remainder());
                for (a, b) in xs.zip(ys) {
                    for (j, lanes) in acc.iter_mut().enumerate() {
                        // SAFETY: runs of 64 values, eight at a time.
                        let (a, b) = unsafe {
                            (
                                _mm256_loadu_ps(a.as_ptr().add(8 * j)),
                                _mm256_loadu_ps(b.as_ptr().add(8 * j)),
                            )
                        };
                        *lanes = _mm256_fmadd_ps(a, b, *lanes);
                    }
                }
                // Accumulator j of 16 lanes is acc[2j] (lanes 0..8) and acc[2j + 1] (8..16).
                let lo =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
                let hi =
                    _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
                let (lo, hi) = (lanes_f32(lo), lanes_f32(hi));
                let v: [f32; 16] = core::array::from_fn(|l| if l < 8 { lo[l] } else { hi[l - 8] });
                vec::reduce16(&v, xr, yr)
            }

            /// `vec::scale`.
            #[target_feature(enable = $features)]
            #[inline]
            pub fn scale(acc: &mut [f32], s: f32, f16: bool) {
                let sv = _mm256_set1_ps(s);
                let mut c = acc.chunks_exact_mut(8);
                for a in c.by_ref() {
                    // SAFETY: chunks of eight values.
                    unsafe {
                        let mut v = _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr()), sv);
                        if f16 {
                            v = round8(v);
                        }
                        _mm256_storeu_ps(a.as_mut_ptr(), v);
                    }
                }
                vec::scale(c.into_remainder(), s, f16);
            }

            /// `vec::mad`.
            #[target_feature(enable = $features)]
            #[inline]
            pub fn mad(acc: &mut [f32], v: &[f32], s: f32, f16: bool) {
                let n = acc.len().min(v.len());
                let (acc, v) = (&mut acc[..n], &v[..n]);
                let sv = _mm256_set1_ps(s);
                let (mut c, mut vc) = (acc.chunks_exact_mut(8), v.chunks_exact(8));
                for (a, b) in c.by_ref().zip(vc.by_ref()) {
                    // SAFETY: chunks of eight values.
                    unsafe {
                        let mut r = _mm256_fmadd_ps(
                            _mm256_loadu_ps(b.as_ptr()),
                            sv,
                            _mm256_loadu_ps(a.as_ptr()),
                        );
                        if f16 {
                            r = round8(r);
                        }
                        _mm256_storeu_ps(a.as_mut_ptr(), r);
                    }
                }
                vec::mad(c.into_remainder(), vc.remainder(), s, f16);
            }

            /// `vec::ggml_v_expf` in eight lanes; `None` when a lane's power of two falls
            /// outside the normal range (there the reference's `ldexpf` rounds once, and the
            /// caller takes the reference).
            #[target_feature(enable = $features)]
            #[inline]
            fn v_expf(x: __m256) -> Option<__m256> {
                let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
                let r = c(0x4b40_0000);
                let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
                let n = _mm256_sub_ps(z, r);
                let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
                let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
                let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs, _mm256_set1_ps(192.0));
                let wide = _mm256_cmp_ps::<_CMP_GT_OQ>(abs, _mm256_set1_ps(126.0));
                if _mm256_movemask_ps(_mm256_andnot_ps(huge, wide)) != 0 {
                    return None;
                }
                let u = _mm256_mul_ps(b, b);
                let j = _mm256_fmadd_ps(
                    _mm256_fmadd_ps(
                        _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                        u,
                        _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
                    ),
                    u,
                    _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
                );
                // 2^n built from its exponent bits: exact while |n| <= 126.
                let small = _mm256_blendv_ps(n, _mm256_setzero_ps(), huge);
                let pow = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_add_epi32(_mm256_cvtps_epi32(small), _mm256_set1_epi32(127)),
                    23,
                ));
                let scaled = _mm256_mul_ps(j, pow);
                // |n| > 192: 0 below, infinity above.
                let limit = _mm256_blendv_ps(
                    _mm256_set1_ps(f32::INFINITY),
                    _mm256_setzero_ps(),
                    _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps()),
                );
                Some(_mm256_blendv_ps(scaled, limit, huge))
            }

            /// `vec::silu_mul`.
            #[target_feature(enable = $features)]
            pub fn silu_mul(g: &mut [f32], u: &[f32]) {
                let n = g.len().min(u.len());
                let (g, u) = (&mut g[..n], &u[..n]);
                let (mut gc, mut uc) = (g.chunks_exact_mut(8), u.chunks_exact(8));
                for (a, b) in gc.by_ref().zip(uc.by_ref()) {
                    // SAFETY: chunks of eight values.
                    let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr()), _mm256_loadu_ps(b.as_ptr())) };
                    let neg = _mm256_xor_ps(x, _mm256_set1_ps(-0.0));
                    match v_expf(neg) {
                        Some(e) => {
                            let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                            // SAFETY: as above.
                            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), _mm256_mul_ps(s, y)) };
                        }
                        None => vec::silu_mul(a, b),
                    }
                }
                vec::silu_mul(gc.into_remainder(), uc.remainder());
            }

            /// `vec::attend`.
            #[target_feature(enable = $features)]
            pub fn attend(
                q: &mut [f32],
                head: &vec::AttnHead<'_>,
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
                let f16 = !matches!(head.keys, vec::KvRows::F32(_));
                if f16 {
                    round_f16_slice(q);
                }
                let (scores, weights) = vec::softmax_scratch(w, head.len);
                for (t, s) in scores.iter_mut().enumerate() {
                    let at = t * head.stride + head.offset;
                    *s = match head.keys {
                        vec::KvRows::F16(c) => {
                            decode_f16(&c[at..at + dim], k);
                            dot_ggml(q, k)
                        }
                        vec::KvRows::F32(c) | vec::KvRows::Widened(c) => dot_ggml(q, &c[at..at + dim]),
                    } * head.scale;
                }
                vec::exponents(scores, weights);
                expf_slice(weights);
                let sum = if dim == 64 {
                    // The running sum in eight registers: in memory, each position's update
                    // would wait on the last one's store.
                    let mut acc = [_mm256_setzero_ps(); 8];
                    let sum = value_pass(
                        scores,
                        weights,
                        head,
                        v,
                        &mut acc,
                        |acc, s| {
                            let sv = _mm256_set1_ps(s);
                            for a in acc {
                                *a = _mm256_mul_ps(*a, sv);
                                if f16 {
                                    *a = round8(*a);
                                }
                            }
                        },
                        |acc, row, s, round| {
                            let sv = _mm256_set1_ps(s);
                            for (a, x) in acc.iter_mut().zip(row.chunks_exact(8)) {
                                // SAFETY: chunks of eight values.
                                let x = unsafe { _mm256_loadu_ps(x.as_ptr()) };
                                let r = _mm256_fmadd_ps(x, sv, *a);
                                *a = if round { round8(r) } else { r };
                            }
                        },
                    );
                    for (a, o) in acc.iter().zip(out.chunks_exact_mut(8)) {
                        // SAFETY: chunks of eight values.
                        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
                    }
                    sum
                } else {
                    value_pass(
                        scores,
                        weights,
                        head,
                        v,
                        out,
                        |out, s| scale(out, s, f16),
                        |out, row, s, round| mad(out, row, s, round),
                    )
                };
                let inv = 1.0 / sum;
                for acc in out.iter_mut() {
                    *acc *= inv;
                }
            }

            /// The value pass of [`attend`]'s online softmax over the running sum `acc`:
            /// where the maximum rises, `rescale` it by the weight of the change; otherwise
            /// weigh the position; then `add` the position's values times that weight (rounding
            /// to f16 when the cache is f16). Returns the softmax denominator.
            #[target_feature(enable = $features)]
            #[inline]
            fn value_pass<A: ?Sized>(
                scores: &[f32],
                weights: &[f32],
                head: &vec::AttnHead<'_>,
                v: &mut [f32],
                acc: &mut A,
                rescale: impl Fn(&mut A, f32),
                add: impl Fn(&mut A, &[f32], f32, bool),
            ) -> f32 {
                let dim = v.len();
                let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
                for (t, (&s, &e)) in scores.iter().zip(weights.iter()).enumerate() {
                    let at = t * head.stride + head.offset;
                    let (mut ms, mut vs) = (1.0f32, 1.0f32);
                    if s > max {
                        ms = e;
                        max = s;
                        rescale(acc, ms);
                    } else {
                        vs = e;
                    }
                    match head.values {
                        vec::KvRows::F16(c) => {
                            decode_f16(&c[at..at + dim], v);
                            add(acc, v, vs, true);
                        }
                        vec::KvRows::F32(c) => add(acc, &c[at..at + dim], vs, false),
                        vec::KvRows::Widened(c) => add(acc, &c[at..at + dim], vs, true),
                    }
                    sum = fma(sum, ms, vs);
                }
                sum
            }

            /// The largest of eight f32 lanes, none NaN.
            #[target_feature(enable = $features)]
            #[inline]
            fn hmax(v: __m256) -> f32 {
                let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
            }

            /// The largest `|v|` of a run of values, NaNs ignored (as `f32::max` does).
            #[target_feature(enable = $features)]
            #[inline]
            fn abs_max(x: &[f32]) -> f32 {
                let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
                let mut m = _mm256_setzero_ps();
                for v in x.chunks_exact(8) {
                    // SAFETY: eight f32.
                    let v = unsafe { _mm256_loadu_ps(v.as_ptr()) };
                    // A NaN in the first operand yields the second.
                    m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
                }
                hmax(m)
            }

            /// Eight f32 times `s` through `nearest_int`: rounded half to even, NaN to 0, and
            /// magnitudes past its range saturated to 4194303.
            #[target_feature(enable = $features)]
            #[inline]
            fn scaled_ints(x: &[f32], s: __m256) -> __m256i {
                // SAFETY: eight f32 (callers pass whole chunks).
                let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr()) }, s);
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
                let limit = _mm256_set1_ps(4_194_303.0);
                let v = _mm256_max_ps(_mm256_min_ps(v, limit), _mm256_sub_ps(_mm256_setzero_ps(), limit));
                _mm256_cvtps_epi32(_mm256_andnot_ps(nan, v))
            }

            /// Each i32 lane's low byte, sign-extended: Rust's `as i8`.
            #[target_feature(enable = $features)]
            #[inline]
            fn wrap8(v: __m256i) -> __m256i {
                _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(v))
            }

            /// 32 i32 in four vectors (each within -128..=127) to 32 i8 in order.
            #[target_feature(enable = $features)]
            #[inline]
            fn pack32(i: [__m256i; 4]) -> __m256i {
                let ab = _mm256_packs_epi32(i[0], i[1]);
                let cd = _mm256_packs_epi32(i[2], i[3]);
                _mm256_permutevar8x32_epi32(
                    _mm256_packs_epi16(ab, cd),
                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
                )
            }

            /// `dot::quantize_q8_0_rows`.
            #[target_feature(enable = $features)]
            pub fn quantize_q8_0(
                x: &[f32],
                y: &mut [BlockQ8_0],
                d: &mut [f32],
                minus128: &mut [[i32; 8]],
            ) {
                for (((src, dst), d), m) in x.chunks_exact(QK).zip(y).zip(d).zip(minus128) {
                    let amax = abs_max(src);
                    let scale = amax / 127.0;
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    dst.d = crate::quant::f32_to_f16(scale);
                    *d = f16(dst.d);
                    let s = _mm256_set1_ps(id);
                    let q = pack32([0, 8, 16, 24].map(|o| wrap8(scaled_ints(&src[o..o + 8], s))));
                    // SAFETY: 32 bytes each.
                    unsafe { _mm256_storeu_si256(dst.qs.as_mut_ptr().cast(), q) };
                    // -128 times each run of four, through vpmaddubsw with ones.
                    let fours = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                        _mm256_set1_epi16(1),
                    );
                    let lanes = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(fours));
                    // SAFETY: eight i32.
                    unsafe { _mm256_storeu_si256(m.as_mut_ptr().cast(), lanes) };
                }
            }

            /// `dot::quantize_q8_k_rows`.
            #[target_feature(enable = $features)]
            pub fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
                for (src, dst) in x.chunks_exact(QK_K).zip(y) {
                    let amax = abs_max(src);
                    if amax == 0.0 {
                        *dst = bytemuck::Zeroable::zeroed();
                        continue;
                    }
                    // The first value of the largest magnitude, with its sign.
                    let max = src.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
                    let iscale = -127.0 / max;
                    let s = _mm256_set1_ps(iscale);
                    let top = _mm256_set1_epi32(127);
                    for (k, (qs, sums)) in dst.qs.chunks_exact_mut(32).zip(dst.bsums.chunks_exact_mut(2)).enumerate() {
                        let src = &src[32 * k..32 * k + 32];
                        let i = [0, 8, 16, 24]
                            .map(|o| wrap8(_mm256_min_epi32(scaled_ints(&src[o..o + 8], s), top)));
                        // SAFETY: 32 bytes.
                        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), pack32(i)) };
                        sums[0] = hsum_i32(_mm256_add_epi32(i[0], i[1])) as i16;
                        sums[1] = hsum_i32(_mm256_add_epi32(i[2], i[3])) as i16;
                    }
                    dst.d = 1.0 / iscale;
                }
            }

            /// `vec::expf_slice`, four values at a time in f64 with the reference's
            /// operations in its order (no fused multiply-adds), so every bit agrees.
            #[target_feature(enable = $features)]
            pub fn expf_slice(x: &mut [f32]) {
                use vec::exp;
                let pd = _mm256_set1_pd;
                let (ln2_hi, ln2_lo) = (pd(exp::HI), pd(exp::LO));
                let (shift, inv) = (pd(exp::SHIFT), pd(exp::INV_LN2_32));
                let c = exp::C.map(|c| _mm256_set1_pd(c));
                let one = pd(1.0);
                let mut chunks = x.chunks_exact_mut(4);
                for chunk in &mut chunks {
                    // SAFETY: four f32.
                    let xs = unsafe { _mm_loadu_ps(chunk.as_ptr()) };
                    let clamped = _mm_min_ps(_mm_max_ps(xs, _mm_set1_ps(exp::MIN)), _mm_set1_ps(exp::MAX));
                    let xd = _mm256_cvtps_pd(clamped);
                    let shifted = _mm256_add_pd(_mm256_mul_pd(xd, inv), shift);
                    let kd = _mm256_sub_pd(shifted, shift);
                    let r = _mm256_sub_pd(
                        _mm256_sub_pd(xd, _mm256_mul_pd(kd, ln2_hi)),
                        _mm256_mul_pd(kd, ln2_lo),
                    );
                    let mut p = _mm256_add_pd(c[3], _mm256_mul_pd(r, c[4]));
                    p = _mm256_add_pd(c[2], _mm256_mul_pd(r, p));
                    p = _mm256_add_pd(c[1], _mm256_mul_pd(r, p));
                    p = _mm256_add_pd(c[0], _mm256_mul_pd(r, p));
                    p = _mm256_add_pd(one, _mm256_mul_pd(r, p));
                    p = _mm256_add_pd(one, _mm256_mul_pd(r, p));
                    // k sits in the low half of each lane of `shifted`.
                    let k = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
                        _mm256_castpd_si256(shifted),
                        _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6),
                    ));
                    // SAFETY: every index is in 0..32, inside the table.
                    let t = unsafe {
                        _mm256_i32gather_pd::<8>(
                            vec::EXP2_TABLE.as_ptr(),
                            _mm_and_si128(k, _mm_set1_epi32(31)),
                        )
                    };
                    let m = _mm_add_epi32(_mm_srai_epi32::<5>(k), _mm_set1_epi32(1023));
                    let scale = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_cvtepi32_epi64(m)));
                    let y = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_mul_pd(t, p), scale));
                    // The reference's special cases, from the input.
                    let y = _mm_blendv_ps(y, _mm_setzero_ps(), _mm_cmp_ps::<_CMP_LE_OQ>(xs, _mm_set1_ps(exp::MIN)));
                    let y = _mm_blendv_ps(y, _mm_set1_ps(f32::INFINITY), _mm_cmp_ps::<_CMP_GT_OQ>(xs, _mm_set1_ps(exp::MAX)));
                    let y = _mm_blendv_ps(y, xs, _mm_cmp_ps::<_CMP_UNORD_Q>(xs, xs));
                    // SAFETY: four f32.
                    unsafe { _mm_storeu_ps(chunk.as_mut_ptr(), y) };
                }
                vec::expf_slice(chunks.into_remainder());
            }

            /// `dot_f32`: eight running sums of unfused products, the same tail.
            #[target_feature(enable = $features)]
            pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
                let mut acc = _mm256_setzero_ps();
                let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
                let (wr, xr) = (wc.remainder(), xc.remainder());
                for (a, b) in wc.zip(xc) {
                    // SAFETY: chunks of eight f32.
                    let (a, b) =
                        unsafe { (_mm256_loadu_ps(a.as_ptr()), _mm256_loadu_ps(b.as_ptr())) };
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(a, b));
                }
                let mut sum = lanes_f32(acc).iter().sum::<f32>();
                for (a, b) in wr.iter().zip(xr) {
                    sum += a * b;
                }
                sum
            }
        }
    };
}

simd_level!(
    avx2,
    "avx2,fma,f16c",
    lanes_avx2,
    moved_lanes_avx2,
    q5_offsets_avx2,
    wsum_avx2,
    2
);
simd_level!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    lanes_vnni,
    moved_lanes_vnni,
    q5_offsets_avx512,
    wsum_vnni,
    4
);

/// Whether the CPU runs [`avx2`].
pub(super) fn has_avx2() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

/// Whether the CPU runs [`avx512`].
pub(super) fn has_avx512() -> bool {
    #[cfg(feature = "std")]
    {
        has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        has_avx2()
            && cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512vnni"
            ))
    }
}

/// The batched Q4_0/Q5_0/Q8_0 products with VNNI: weights as unsigned `q + 128`, so one
/// `vpdpbusd` seeded with the activation block's `-128 * sum` correction gives the exact lane
/// sums, and a tile of two weight rows by four activation rows shares every load. The float
/// side is `dot::blocks`' lane for lane.
mod vnni_tile {
    use super::avx512::{lanes_f32, load32, nibbles};
    use super::*;
    use crate::quant::f16_to_f32;

    /// A run of activation rows as the tile reads them: blocks, f32 scales, corrections.
    pub(super) type Col<'a> = (&'a [BlockQ8_0], &'a [f32], &'a [[i32; 8]]);

    /// Weight rows unpacked once for every activation row that passes over them: each block's
    /// quants as unsigned bytes (`q + 128`) and its scale in f32, row-major.
    struct Unpacked {
        q: Vec<__m256i>,
        d: Vec<f32>,
        blocks: usize,
    }

    impl Unpacked {
        fn row(&self, r: usize) -> (&[__m256i], &[f32]) {
            let span = r * self.blocks..(r + 1) * self.blocks;
            (&self.q[span.clone()], &self.d[span])
        }
    }

    /// Blocks per pass of [`tile`]: the scale products of a pass live on the stack.
    const PASS: usize = 32;

    /// The widest tile, in weight rows and in activation rows.
    const T: usize = 4;

    /// `R` weight rows times `C` activation rows. Per block and lane this is the reference's
    /// arithmetic: the exact integer dot of four quants, times the product of the two scales
    /// (rounded once), added with one fused multiply-add; the eight lanes are summed at the end.
    /// The scale products are formed a pass at a time, ahead of the integer work, so the inner
    /// loop is a load, a `vpdpbusd`, a conversion and an FMA.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn tile<const R: usize, const C: usize>(
        w: [(&[__m256i], &[f32]); R],
        cols: [Col<'_>; C],
        scales: &mut [[[f32; PASS]; T]; T],
    ) -> [[f32; C]; R] {
        let n = w[0].0.len();
        assert!(w.iter().all(|(q, d)| q.len() == n && d.len() == n));
        assert!(
            cols.iter()
                .all(|(y, d, m)| y.len() == n && d.len() == n && m.len() == n)
        );
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for first in (0..n).step_by(PASS) {
            let len = PASS.min(n - first);
            for (r, (_, dw)) in w.iter().enumerate() {
                for (c, (_, da, _)) in cols.iter().enumerate() {
                    let pass = dw[first..first + len].iter().zip(&da[first..first + len]);
                    for (s, (&a, &b)) in scales[r][c].iter_mut().zip(pass) {
                        *s = a * b;
                    }
                }
            }
            for (j, i) in (first..first + len).enumerate() {
                let u: [__m256i; R] = core::array::from_fn(|r| w[r].0[i]);
                for c in 0..C {
                    let (y, _, m) = cols[c];
                    let qy = load32(&y[i].qs);
                    // SAFETY: eight i32.
                    let pre = unsafe { _mm256_loadu_si256(m[i].as_ptr().cast()) };
                    for r in 0..R {
                        let lanes = _mm256_dpbusd_epi32(pre, u[r], qy);
                        let scale = _mm256_set1_ps(scales[r][c][j]);
                        acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[r][c]);
                    }
                }
            }
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum8(&lanes_f32(acc[r][c]));
            }
        }
        out
    }

    /// `out[r * n + i]` for every weight row `i` of the `n` in `w` and activation row `r` in
    /// `cols`, tiles of four by four where the shape allows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn block(w: &Unpacked, cols: &[Col<'_>], out: &mut [f32]) {
        let m = cols.len();
        let mut scales = [[[0f32; PASS]; T]; T];
        let rows = w.q.len() / w.blocks;
        for c0 in (0..m).step_by(T) {
            let g = &cols[c0..m.min(c0 + T)];
            let mut r0 = 0;
            while r0 < rows {
                if g.len() == T && rows - r0 >= T {
                    let res = tile::<T, T>(
                        core::array::from_fn(|k| w.row(r0 + k)),
                        core::array::from_fn(|c| g[c]),
                        &mut scales,
                    );
                    for (k, line) in res.iter().enumerate() {
                        for (c, &v) in line.iter().enumerate() {
                            out[(c0 + c) * rows + r0 + k] = v;
                        }
                    }
                    r0 += T;
                } else {
                    for (c, &col) in g.iter().enumerate() {
                        out[(c0 + c) * rows + r0] = tile([w.row(r0)], [col], &mut scales)[0][0];
                    }
                    r0 += 1;
                }
            }
        }
    }

    /// Every block of `w` in the tile's form: `unpack!(blocks, per_row, |b| unsigned quants)`.
    /// A macro rather than a function taking a closure, so that the unpacking is compiled
    /// inline with the caller's target features.
    macro_rules! unpack {
        ($w:expr, $blocks:expr, |$b:ident| $unsigned:expr) => {{
            let mut q = Vec::with_capacity($w.len());
            let mut d = Vec::with_capacity($w.len());
            for $b in $w {
                q.push($unsigned);
                d.push(f16_to_f32($b.d));
            }
            Unpacked {
                q,
                d,
                blocks: $blocks,
            }
        }};
    }

    /// The VNNI batched product for Q4_0, Q5_0 and Q8_0 weights; `None` for other types.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot_block(
        ty: GgmlType,
        bytes: &[u8],
        cols: &[Col<'_>],
        out: &mut [f32],
    ) -> Result<Option<()>, QuantError> {
        let per_row = cols[0].0.len();
        let blocks = per_row * (out.len() / cols.len());
        let w = match ty {
            GgmlType::Q8_0 => {
                let w: &[BlockQ8_0] = weight_blocks(ty, bytes, blocks, QK)?;
                let flip = _mm256_set1_epi8(0x80u8 as i8);
                unpack!(w, per_row, |b| _mm256_xor_si256(load32(&b.qs), flip))
            }
            GgmlType::Q5_0 => {
                let w: &[BlockQ5_0] = weight_blocks(ty, bytes, blocks, QK)?;
                let (lo, hi) = (_mm256_set1_epi8(0x70), _mm256_set1_epi8(0x80u8 as i8));
                // (nibble | bit << 4) - 16 + 128: 0x70 + nibble, or 0x80 + nibble.
                unpack!(w, per_row, |b| {
                    let base = _mm256_mask_blend_epi8(u32::from_le_bytes(b.qh), lo, hi);
                    _mm256_or_si256(nibbles(&b.qs), base)
                })
            }
            GgmlType::Q4_0 => {
                let w: &[BlockQ4_0] = weight_blocks(ty, bytes, blocks, QK)?;
                let offset = _mm256_set1_epi8(120);
                unpack!(w, per_row, |b| _mm256_add_epi8(nibbles(&b.qs), offset))
            }
            _ => return Ok(None),
        };
        block(&w, cols, out);
        Ok(Some(()))
    }
}

/// [`vnni_tile`]'s batched product when every activation row carries its corrections.
///
/// # Safety
/// The CPU must have the features of [`has_avx512`].
pub(super) unsafe fn vnni_dot_block(
    ty: GgmlType,
    bytes: &[u8],
    xs: &[ActRow<'_>],
    out: &mut [f32],
) -> Result<Option<()>, QuantError> {
    if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_0)
        || xs.is_empty()
        || out.is_empty()
        || !out.len().is_multiple_of(xs.len())
    {
        return Ok(None);
    }
    let mut cols = Vec::with_capacity(xs.len());
    for x in xs {
        match x {
            ActRow::Q8_0(y, s)
                if !y.is_empty() && s.d.len() == y.len() && s.minus128.len() == y.len() =>
            {
                cols.push((*y, s.d, s.minus128));
            }
            _ => return Ok(None),
        }
    }
    if cols.iter().any(|c| c.0.len() != cols[0].0.len()) {
        return Ok(None);
    }
    // SAFETY: the caller guarantees the features.
    unsafe { vnni_tile::dot_block(ty, bytes, &cols, out) }
}
