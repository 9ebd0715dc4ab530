//! Scalar dequantization, one function per ggml `dequantize_row_*`.

use bytemuck::cast_slice;

use super::blocks::*;
use super::{bf16_to_f32, f16_to_f32};
use crate::dtype::GgmlType;

/// Sizes were checked by the caller.
pub(super) fn row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32([s[0], s[1]]);
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32([s[0], s[1]]);
            }
        }
        GgmlType::Q4_0 => each(cast_slice(src), dst, q4_0),
        GgmlType::Q4_1 => each(cast_slice(src), dst, q4_1),
        GgmlType::Q5_0 => each(cast_slice(src), dst, q5_0),
        GgmlType::Q5_1 => each(cast_slice(src), dst, q5_1),
        GgmlType::Q8_0 => each(cast_slice(src), dst, q8_0),
        GgmlType::Q2_K => each(cast_slice(src), dst, q2_k),
        GgmlType::Q3_K => each(cast_slice(src), dst, q3_k),
        GgmlType::Q4_K => each(cast_slice(src), dst, q4_k),
        GgmlType::Q5_K => each(cast_slice(src), dst, q5_k),
        GgmlType::Q6_K => each(cast_slice(src), dst, q6_k),
        // `can_dequantize` was checked by the caller.
        _ => {}
    }
}

fn each<B, const N: usize>(blocks: &[B], dst: &mut [f32], f: fn(&B, &mut [f32; N])) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(N)) {
        if let Ok(y) = <&mut [f32; N]>::try_from(y) {
            f(b, y);
        }
    }
}

/// `dequantize_row_q4_0`
fn q4_0(b: &BlockQ4_0, y: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    for j in 0..QK / 2 {
        let x0 = i32::from(b.qs[j] & 0x0f) - 8;
        let x1 = i32::from(b.qs[j] >> 4) - 8;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

/// `dequantize_row_q4_1`
fn q4_1(b: &BlockQ4_1, y: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    for j in 0..QK / 2 {
        let x0 = i32::from(b.qs[j] & 0x0f);
        let x1 = i32::from(b.qs[j] >> 4);
        y[j] = x0 as f32 * d + m;
        y[j + QK / 2] = x1 as f32 * d + m;
    }
}

/// `dequantize_row_q5_0`
fn q5_0(b: &BlockQ5_0, y: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK / 2 {
        let xh_0 = ((qh >> j) << 4) & 0x10;
        let xh_1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((u32::from(b.qs[j] & 0x0f) | xh_0) as i32) - 16;
        let x1 = ((u32::from(b.qs[j] >> 4) | xh_1) as i32) - 16;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

/// `dequantize_row_q5_1`
fn q5_1(b: &BlockQ5_1, y: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK / 2 {
        let xh_0 = ((qh >> j) << 4) & 0x10;
        let xh_1 = (qh >> (j + 12)) & 0x10;
        let x0 = u32::from(b.qs[j] & 0x0f) | xh_0;
        let x1 = u32::from(b.qs[j] >> 4) | xh_1;
        y[j] = x0 as f32 * d + m;
        y[j + QK / 2] = x1 as f32 * d + m;
    }
}

/// `dequantize_row_q8_0`
fn q8_0(b: &BlockQ8_0, y: &mut [f32; QK]) {
    let d = f16_to_f32(b.d);
    for (y, &q) in y.iter_mut().zip(&b.qs) {
        *y = f32::from(q) * d;
    }
}

/// `dequantize_row_q2_K`
fn q2_k(b: &BlockQ2K, y: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    let mut out = 0;
    let mut is = 0;
    for n in 0..QK_K / 128 {
        let q = &b.qs[n * 32..n * 32 + 32];
        let mut shift = 0;
        for _ in 0..4 {
            for half in 0..2 {
                let sc = b.scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = min * f32::from(sc >> 4);
                for l in 0..16 {
                    let v = (q[l + 16 * half] >> shift) & 3;
                    y[out] = dl * f32::from(v) - ml;
                    out += 1;
                }
            }
            shift += 2;
        }
    }
}

/// The 16 6-bit scales of a Q3_K block, as `dequantize_row_q3_K` unpacks them.
fn q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, a) in aux.iter().enumerate() {
        for (k, byte) in a.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = *byte as i8;
        }
    }
    out
}

/// `dequantize_row_q3_K`
fn q3_k(b: &BlockQ3K, y: &mut [f32; QK_K]) {
    let d_all = f16_to_f32(b.d);
    let scales = q3_k_scales(&b.scales);
    let mut out = 0;
    let mut is = 0;
    let mut m: u8 = 1;
    for n in 0..QK_K / 128 {
        let q = &b.qs[n * 32..n * 32 + 32];
        let mut shift = 0;
        for _ in 0..4 {
            for half in 0..2 {
                let dl = d_all * f32::from(i16::from(scales[is]) - 32);
                is += 1;
                for l in 0..16 {
                    let i = l + 16 * half;
                    let low = ((q[i] >> shift) & 3) as i8;
                    let high = if b.hmask[i] & m != 0 { 0 } else { 4 };
                    y[out] = dl * f32::from(low - high);
                    out += 1;
                }
            }
            shift += 2;
            m <<= 1;
        }
    }
}

/// `get_scale_min_k4`: scale and min of group `j` of a Q4_K/Q5_K block.
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `dequantize_row_q4_K`
fn q4_k(b: &BlockQ4K, y: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    for (chunk, j) in (0..QK_K / 64).zip((0..).step_by(2)) {
        let q = &b.qs[chunk * 32..chunk * 32 + 32];
        let (sc, m) = scale_min_k4(j, &b.scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(j + 1, &b.scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let y = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            y[l] = d1 * f32::from(q[l] & 0x0f) - m1;
            y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// `dequantize_row_q5_K`
fn q5_k(b: &BlockQ5K, y: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    let (mut u1, mut u2) = (1u8, 2u8);
    for (chunk, j) in (0..QK_K / 64).zip((0..).step_by(2)) {
        let ql = &b.qs[chunk * 32..chunk * 32 + 32];
        let (sc, m) = scale_min_k4(j, &b.scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(j + 1, &b.scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let y = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * f32::from((ql[l] & 0x0f) + h1) - m1;
            y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// `dequantize_row_q6_K`
fn q6_k(b: &BlockQ6K, y: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    for n in 0..QK_K / 128 {
        let ql = &b.ql[n * 64..n * 64 + 64];
        let qh = &b.qh[n * 32..n * 32 + 32];
        let sc = &b.scales[n * 8..n * 8 + 8];
        let y = &mut y[n * 128..n * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is]) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
        }
    }
}
