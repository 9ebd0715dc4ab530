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
use super::super::dot::{ActRow, BlockQ8K, hsum8, k4_scales_mins, weight_blocks};
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

/// [`lanes_avx2`] in one `vpdpbusd`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn lanes_vnni(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
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
    ($level:ident, $features:literal, $lanes:ident, $q5_offsets:ident) => {
        pub(super) mod $level {
            use super::*;

            #[target_feature(enable = $features)]
            #[inline]
            fn load32<T: bytemuck::Pod>(bytes: &[T; 32]) -> __m256i {
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
            fn f16x8(bits: [u8; 2]) -> __m256 {
                _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bits)))
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn lanes_f32(v: __m256) -> [f32; 8] {
                let mut out = [0f32; 8];
                // SAFETY: `out` holds eight f32.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
                out
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn lanes_i32(v: __m256i) -> [i32; 8] {
                let mut out = [0i32; 8];
                // SAFETY: `out` holds eight i32.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
                out
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn hsum_i32(v: __m256i) -> i32 {
                lanes_i32(v).iter().fold(0i32, |a, &b| a.wrapping_add(b))
            }

            /// The 32 nibbles of 16 bytes: low nibbles first, then high.
            #[target_feature(enable = $features)]
            #[inline]
            fn nibbles(qs: &[u8; 16]) -> __m256i {
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

            /// A Q6_K block's eight integer lane sums, as `lanes_q6_k` defines them.
            #[target_feature(enable = $features)]
            #[inline]
            fn q6_k_lanes(x: &BlockQ6K, y: &BlockQ8K) -> __m256i {
                let m4 = _mm256_set1_epi8(0x0f);
                let m2 = _mm256_set1_epi8(3);
                let mut sum = _mm256_setzero_si256();
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
                    let levels = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), high[0]),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), high[1]),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high[2]),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high[3]),
                    ];
                    for (c, &q) in levels.iter().enumerate() {
                        let v = 128 * half + 32 * c;
                        let act = load32(y.qs[v..v + 32].try_into().unwrap_or(&[0; 32]));
                        let g = v / 16;
                        let scales = _mm256_set_m128i(
                            _mm_set1_epi16(i16::from(x.scales[g + 1])),
                            _mm_set1_epi16(i16::from(x.scales[g])),
                        );
                        let products = _mm256_maddubs_epi16(q, act);
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(products, scales));
                    }
                }
                // SAFETY: `bsums` is 16 i16, 32 bytes.
                let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
                let scales = _mm256_cvtepi8_epi16(load16(&x.scales));
                let offsets = _mm256_madd_epi16(bsums, scales);
                _mm256_sub_epi32(sum, _mm256_slli_epi32(offsets, 5))
            }

            /// `q4_k_repacked`: per block the scaled level sums and min corrections of each
            /// pair of groups (64 values), summed in `gemm` pairs or whole.
            #[target_feature(enable = $features)]
            #[inline]
            fn q4_k(x: &[BlockQ4K], y: &[BlockQ8K], grouped: bool) -> f32 {
                let m4 = _mm256_set1_epi8(0x0f);
                let (mut acc, mut acc_min) = (0f32, 0f32);
                for (b, a) in x.iter().zip(y) {
                    let (scales, mins) = k4_scales_mins(&b.scales);
                    let mut levels = [_mm256_setzero_si256(); 4];
                    for (p, level) in levels.iter_mut().enumerate() {
                        let q4 = load32(b.qs[32 * p..32 * p + 32].try_into().unwrap_or(&[0; 32]));
                        let lo = _mm256_and_si256(q4, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                        let ylo = load32(a.qs[64 * p..64 * p + 32].try_into().unwrap_or(&[0; 32]));
                        let yhi = load32(
                            a.qs[64 * p + 32..64 * p + 64]
                                .try_into()
                                .unwrap_or(&[0; 32]),
                        );
                        let slo = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(lo, ylo),
                            _mm256_set1_epi16(i16::from(scales[2 * p])),
                        );
                        let shi = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(hi, yhi),
                            _mm256_set1_epi16(i16::from(scales[2 * p + 1])),
                        );
                        *level = _mm256_add_epi32(slo, shi);
                    }
                    // SAFETY: `bsums` is 16 i16, 32 bytes.
                    let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
                    let m: [i16; 16] = core::array::from_fn(|i| i16::from(mins[i / 2]));
                    // SAFETY: `m` is 16 i16, 32 bytes.
                    let m = unsafe { _mm256_loadu_si256(m.as_ptr().cast()) };
                    let corrections = lanes_i32(_mm256_madd_epi16(bsums, m));
                    let d = f16(b.d) * a.d;
                    let dmin = f16(b.dmin) * a.d;
                    if grouped {
                        for (p, level) in levels.iter().enumerate() {
                            let l = hsum_i32(*level);
                            let c = corrections[2 * p].wrapping_add(corrections[2 * p + 1]);
                            acc = fma(l as f32, d, acc);
                            acc_min = fma(c as f32, dmin, acc_min);
                        }
                    } else {
                        let all = _mm256_add_epi32(
                            _mm256_add_epi32(levels[0], levels[1]),
                            _mm256_add_epi32(levels[2], levels[3]),
                        );
                        let c = corrections.iter().fold(0i32, |s, &v| s.wrapping_add(v));
                        acc = fma(hsum_i32(all) as f32, d, acc);
                        acc_min = fma(c as f32, dmin, acc_min);
                    }
                }
                acc - acc_min
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
                    ActRow::Q8_0(y, _) => y.is_empty(),
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

            /// `vec::attend`, the whole loop in this level's instructions.
            #[target_feature(enable = $features)]
            pub fn attend(
                q: &mut [f32],
                head: &vec::AttnHead<'_>,
                k: &mut [f32],
                v: &mut [f32],
                out: &mut [f32],
            ) {
                out.fill(0.0);
                let dim = out.len();
                if q.len() != dim || k.len() != dim || v.len() != dim || !head.fits(dim) {
                    return;
                }
                let f16 = matches!(head.keys, vec::KvRows::F16(_));
                if f16 {
                    round_f16_slice(q);
                }
                let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
                for t in 0..head.len {
                    let at = t * head.stride + head.offset;
                    let s = match head.keys {
                        vec::KvRows::F16(c) => {
                            decode_f16(&c[at..at + dim], k);
                            dot_ggml(q, k)
                        }
                        vec::KvRows::F32(c) => dot_ggml(q, &c[at..at + dim]),
                    } * head.scale;
                    let (mut ms, mut vs) = (1.0f32, 1.0f32);
                    if s > max {
                        ms = vec::expf(max - s);
                        max = s;
                        scale(out, ms, f16);
                    } else {
                        vs = vec::expf(s - max);
                    }
                    match head.values {
                        vec::KvRows::F16(c) => {
                            decode_f16(&c[at..at + dim], v);
                            mad(out, v, vs, true);
                        }
                        vec::KvRows::F32(c) => mad(out, &c[at..at + dim], vs, false),
                    }
                    sum = fma(sum, ms, vs);
                }
                let inv = 1.0 / sum;
                for acc in out.iter_mut() {
                    *acc *= inv;
                }
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

simd_level!(avx2, "avx2,fma,f16c", lanes_avx2, q5_offsets_avx2);
simd_level!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    lanes_vnni,
    q5_offsets_avx512
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
