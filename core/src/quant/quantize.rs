//! Scalar quantization, one function per ggml `quantize_row_*_ref`.

use bytemuck::cast_slice_mut;

use super::blocks::*;
use super::dequant::scale_min_k4;
use super::{f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::dtype::GgmlType;

/// ggml's `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Sizes were checked by the caller.
pub(super) fn row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f32_to_f16(*s));
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f32_to_bf16(*s));
            }
        }
        GgmlType::Q4_0 => each(src, cast_slice_mut(dst), q4_0),
        GgmlType::Q4_1 => each(src, cast_slice_mut(dst), q4_1),
        GgmlType::Q5_0 => each(src, cast_slice_mut(dst), q5_0),
        GgmlType::Q5_1 => each(src, cast_slice_mut(dst), q5_1),
        GgmlType::Q8_0 => each(src, cast_slice_mut(dst), q8_0),
        GgmlType::Q4_K => each(src, cast_slice_mut(dst), q4_k),
        GgmlType::Q6_K => each(src, cast_slice_mut(dst), q6_k),
        // `can_quantize` was checked by the caller.
        _ => {}
    }
}

fn each<B, const N: usize>(src: &[f32], blocks: &mut [B], f: fn(&[f32; N], &mut B)) {
    for (x, b) in src.chunks_exact(N).zip(blocks) {
        if let Ok(x) = <&[f32; N]>::try_from(x) {
            f(x, b);
        }
    }
}

/// ggml's `nearest_int`: round half to even through the float adder, exact for |x| < 2^22.
#[inline]
pub(super) fn nearest_int(x: f32) -> i32 {
    if x.is_nan() || x.abs() > 4_194_303.0 {
        // Out of the trick's range (or NaN); ggml asserts. Saturate instead.
        return if x.is_nan() {
            0
        } else {
            x.clamp(-4_194_303.0, 4_194_303.0) as i32
        };
    }
    let val = x + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The value with the largest magnitude, keeping its sign; the first one on ties.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `quantize_row_q4_0_ref`
fn q4_0(x: &[f32; QK], y: &mut BlockQ4_0) {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f32_to_f16(d);
    for j in 0..QK / 2 {
        let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        y.qs[j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q4_1_ref`
fn q4_1(x: &[f32; QK], y: &mut BlockQ4_1) {
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    let max = x.iter().copied().fold(-f32::MAX, f32::max);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f32_to_f16(d);
    y.m = f32_to_f16(min);
    for j in 0..QK / 2 {
        let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        y.qs[j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q5_0_ref`
fn q5_0(x: &[f32; QK], y: &mut BlockQ5_0) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f32_to_f16(d);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let xi1 = ((x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
        y.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    y.qh = qh.to_le_bytes();
}

/// `quantize_row_q5_1_ref`
fn q5_1(x: &[f32; QK], y: &mut BlockQ5_1) {
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    let max = x.iter().copied().fold(-f32::MAX, f32::max);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f32_to_f16(d);
    y.m = f32_to_f16(min);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = (((x[j] - min) * id + 0.5) as i8).min(31) as u8;
        let xi1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(31) as u8;
        y.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    y.qh = qh.to_le_bytes();
}

/// `quantize_row_q8_0_ref`
pub(super) fn q8_0(x: &[f32; QK], y: &mut BlockQ8_0) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f32_to_f16(d);
    for (q, &v) in y.qs.iter_mut().zip(x) {
        // C's roundf: half away from zero.
        *q = libm::roundf(v * id) as i8;
    }
}

/// `make_qkx2_quants`: the scale and (negated) min of a group with asymmetric levels `0..=nmax`,
/// searched around the min/max fit to minimise the weighted squared error.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(l_aux[i]) + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `quantize_row_q4_K_ref`
fn q4_k(x: &[f32; QK_K], y: &mut BlockQ4K) {
    let mut levels = [0u8; QK_K];
    let mut aux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = libm::sqrtf(sum_x2 / 32.0);
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            15,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            &mut aux,
            -1.0,
            0.1,
            20,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    y.scales = [0; 12];
    for j in 0..QK_K / 32 {
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            y.scales[j] = ls;
            y.scales[j + 4] = lm;
        } else {
            y.scales[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            y.scales[j - 4] |= (ls >> 4) << 6;
            y.scales[j] |= (lm >> 4) << 6;
        }
    }
    y.d = f32_to_f16(max_scale / 63.0);
    y.dmin = f32_to_f16(max_min / 63.0);
    let (d_all, dmin_all) = (f16_to_f32(y.d), f16_to_f32(y.dmin));
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &y.scales);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15);
            levels[32 * j + ii] = l as u8;
        }
    }
    for (chunk, j) in (0..QK_K / 64).zip((0..QK_K).step_by(64)) {
        for l in 0..32 {
            y.qs[chunk * 32 + l] = levels[j + l] | (levels[j + l + 32] << 4);
        }
    }
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights: a symmetric scale for levels
/// `-nmax..nmax`, searched over 18 nearby scales.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        levels[i] = (l + nmax) as u8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let l = nearest_int(iscale * v);
                levels[i] = (nmax + l.clamp(-nmax, nmax - 1)) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref`
fn q6_k(x: &[f32; QK_K], y: &mut BlockQ6K) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut levels[16 * ib..16 * ib + 16],
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *y = bytemuck::Zeroable::zeroed();
        y.d = f32_to_f16(0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    y.d = f32_to_f16(1.0 / iscale);
    for (s, &scale) in y.scales.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8;
    }
    let d_all = f16_to_f32(y.d);
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(y.scales[j]);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            levels[16 * j + ii] = (l + 32) as u8;
        }
    }
    for (n, j) in (0..QK_K / 128).zip((0..QK_K).step_by(128)) {
        let ql = &mut y.ql[n * 64..n * 64 + 64];
        let qh = &mut y.qh[n * 32..n * 32 + 32];
        for l in 0..32 {
            let q1 = levels[j + l] & 0x0f;
            let q2 = levels[j + l + 32] & 0x0f;
            let q3 = levels[j + l + 64] & 0x0f;
            let q4 = levels[j + l + 96] & 0x0f;
            ql[l] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (levels[j + l] >> 4)
                | ((levels[j + l + 32] >> 4) << 2)
                | ((levels[j + l + 64] >> 4) << 4)
                | ((levels[j + l + 96] >> 4) << 6);
        }
    }
}
