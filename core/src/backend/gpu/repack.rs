//! The GPU's weight layouts, made once at load from the stored GGUF blocks.
//!
//! GGUF blocks are 18, 22, 34 or 210 bytes long, so most of them do not start on the 4-byte
//! boundaries that WGSL's `u32` loads need, and their f16 scales and packed 6-bit scale tables
//! would cost every invocation the same decoding again. So each matrix is repacked, losslessly,
//! into planes of `u32` words that the shaders index directly. Every layout describes rows in
//! *chunks* of 32 values; a chunk's value `e` is `a * q[e] + b`, with the level `q[e]` from the
//! first plane and the f32 `a` and `b` from the scale plane:
//!
//! | layout | stored types | plane 0: levels, words per chunk | plane 1: f32 scales per chunk | plane 2 |
//! |---|---|---|---|---|
//! | `F32` | F32, BF16 | 32 f32 values | none (`a = 1`, `b = 0`) | none |
//! | `F16` | F16 | 16 pairs of f16 values | none | none |
//! | `Q8` | Q8_0 | 8 words of four i8 levels | `a` | none |
//! | `Q8Half` | Q6_K | 8 words of four i8 levels (`q - 32`) | `a` of values 0–15, `a` of 16–31 | none |
//! | `Q4` | Q4_0, Q4_1, Q4_K | 4 words of eight 4-bit levels | `a`, `b` | none |
//! | `Q5` | Q5_0, Q5_1, Q5_K | 4 words of eight low nibbles | `a`, `b` | one word: the fifth bits |
//!
//! Levels are packed in order: value `e` of a chunk is bits `8 * (e % 4)` of word `e / 4` (i8
//! layouts), or bits `4 * (e % 8)` of word `e / 8` (nibbles); the fifth bit of value `e` is bit
//! `e` of its word. `a` and `b` are the products the scalar dequantization computes (`d * sc`,
//! `-dmin * m`, `-16 * d`, ...), and each is exact in f32, so `a * q + b` gives the stored value.
//! The bytes per value are 1.0 + 1/8 (Q8_0), 1.0 + 1/4 (Q6_K), 0.5 + 1/4 (Q4), and 0.5 + 1/4 +
//! 1/32 (Q5); the stored blocks take 1.06, 0.82, 0.56 and 0.69.

use alloc::vec::Vec;

use crate::dtype::GgmlType;
use crate::quant::blocks::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, QK, QK_K,
};
use crate::quant::{bf16_to_f32, f16_to_f32};

/// Values per chunk in every layout.
pub(crate) const CHUNK: usize = 32;

/// How a matrix's values sit in its planes (see the module docs). The discriminant is the
/// `FORMAT` override constant of the weight shaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Layout {
    F32 = 0,
    F16 = 1,
    Q8 = 2,
    Q8Half = 3,
    Q4 = 4,
    Q5 = 5,
}

impl Layout {
    /// The layout for a stored type, or `None` when the GPU cannot compute with it.
    pub(crate) fn of(dtype: GgmlType) -> Option<Self> {
        Some(match dtype {
            GgmlType::F32 | GgmlType::BF16 => Self::F32,
            GgmlType::F16 => Self::F16,
            GgmlType::Q8_0 => Self::Q8,
            GgmlType::Q6_K => Self::Q8Half,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Self::Q4,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => Self::Q5,
            _ => return None,
        })
    }

    /// Words of each plane per chunk: levels, scales, fifth bits.
    pub(crate) fn words_per_chunk(self) -> [usize; 3] {
        match self {
            Self::F32 => [32, 0, 0],
            Self::F16 => [16, 0, 0],
            Self::Q8 => [8, 1, 0],
            Self::Q8Half => [8, 2, 0],
            Self::Q4 => [4, 2, 0],
            Self::Q5 => [4, 2, 1],
        }
    }
}

/// One matrix's rows in its layout: `planes[i]` holds `words_per_chunk()[i]` words per chunk,
/// row after row.
#[derive(Debug)]
pub(crate) struct Packed {
    pub(crate) planes: [Vec<u32>; 3],
}

/// A chunk's levels and its scales, before packing.
struct Chunk {
    levels: [i32; CHUNK],
    /// `(a, b)` for values 0–15 and 16–31.
    scales: [(f32, f32); 2],
}

impl Chunk {
    fn new() -> Self {
        Self {
            levels: [0; CHUNK],
            scales: [(0.0, 0.0); 2],
        }
    }
}

/// Repacks `rows` rows of `cols` values stored as `dtype` (the caller checked the sizes: `bytes`
/// holds whole rows of whole blocks). Returns `None` for a type the GPU cannot compute with.
pub(crate) fn repack(dtype: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Option<Packed> {
    let layout = Layout::of(dtype)?;
    let chunks = rows * (cols / CHUNK);
    let words = layout.words_per_chunk();
    let mut planes = [
        Vec::with_capacity(chunks * words[0]),
        Vec::with_capacity(chunks * words[1]),
        Vec::with_capacity(chunks * words[2]),
    ];
    match layout {
        Layout::F32 => {
            let width = if dtype == GgmlType::F32 { 4 } else { 2 };
            planes[0].extend(bytes.chunks_exact(width).map(|v| match *v {
                [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
                [a, b] => bf16_to_f32([a, b]).to_bits(),
                _ => 0,
            }));
        }
        Layout::F16 => planes[0].extend(
            bytes
                .chunks_exact(4)
                .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]])),
        ),
        _ => {
            let mut push = |c: &Chunk| pack(layout, c, &mut planes);
            match dtype {
                GgmlType::Q8_0 => each_block(bytes, |b: &BlockQ8_0| {
                    let mut c = Chunk::new();
                    let d = f16_to_f32(b.d);
                    c.scales = [(d, 0.0); 2];
                    for (l, &q) in c.levels.iter_mut().zip(&b.qs) {
                        *l = i32::from(q);
                    }
                    push(&c);
                }),
                GgmlType::Q6_K => each_block(bytes, |b: &BlockQ6K| q6_k(b, &mut push)),
                GgmlType::Q4_0 => each_block(bytes, |b: &BlockQ4_0| {
                    let d = f16_to_f32(b.d);
                    push(&nibbles(&b.qs, None, (d, -8.0 * d)));
                }),
                GgmlType::Q4_1 => each_block(bytes, |b: &BlockQ4_1| {
                    push(&nibbles(&b.qs, None, (f16_to_f32(b.d), f16_to_f32(b.m))));
                }),
                GgmlType::Q5_0 => each_block(bytes, |b: &BlockQ5_0| {
                    let d = f16_to_f32(b.d);
                    push(&nibbles(&b.qs, Some(b.qh), (d, -16.0 * d)));
                }),
                GgmlType::Q5_1 => each_block(bytes, |b: &BlockQ5_1| {
                    let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
                    push(&nibbles(&b.qs, Some(b.qh), (d, m)));
                }),
                GgmlType::Q4_K => each_block(bytes, |b: &BlockQ4K| {
                    k_quant(b.d, b.dmin, &b.scales, &b.qs, None, &mut push);
                }),
                GgmlType::Q5_K => each_block(bytes, |b: &BlockQ5K| {
                    k_quant(b.d, b.dmin, &b.scales, &b.qs, Some(&b.qh), &mut push);
                }),
                _ => return None,
            }
        }
    }
    Some(Packed { planes })
}

fn each_block<B: bytemuck::Pod>(bytes: &[u8], mut f: impl FnMut(&B)) {
    for block in bytes.chunks_exact(core::mem::size_of::<B>()) {
        f(&bytemuck::pod_read_unaligned(block));
    }
}

/// A legacy 32-value block: low nibbles are values 0–15, high nibbles 16–31; bit `e` of `qh`
/// is value `e`'s fifth bit.
fn nibbles(qs: &[u8; QK / 2], qh: Option<[u8; 4]>, scale: (f32, f32)) -> Chunk {
    let mut c = Chunk::new();
    c.scales = [scale; 2];
    let qh = qh.map_or(0, u32::from_le_bytes);
    for (j, &q) in qs.iter().enumerate() {
        c.levels[j] = i32::from(q & 0x0f) | (((qh >> j) & 1) << 4) as i32;
        c.levels[j + QK / 2] = i32::from(q >> 4) | (((qh >> (j + QK / 2)) & 1) << 4) as i32;
    }
    c
}

/// Q4_K and Q5_K: four 64-value pieces, each a chunk of low nibbles and a chunk of high ones,
/// with 6-bit scales and mins (`dequantize_row_q4_K`, `dequantize_row_q5_K`).
fn k_quant(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    qs: &[u8; QK_K / 2],
    qh: Option<&[u8; QK_K / 8]>,
    push: &mut impl FnMut(&Chunk),
) {
    let (d, min) = (f16_to_f32(d), f16_to_f32(dmin));
    for piece in 0..QK_K / 64 {
        let q = &qs[piece * 32..piece * 32 + 32];
        for half in 0..2 {
            let j = 2 * piece + half;
            let (sc, m) = crate::quant::scale_min_k4(j, scales);
            let mut c = Chunk::new();
            c.scales = [(d * f32::from(sc), -(min * f32::from(m))); 2];
            for (l, (level, &q)) in c.levels.iter_mut().zip(q).enumerate() {
                let low = if half == 0 { q & 0x0f } else { q >> 4 };
                let high = qh.map_or(0, |h| (h[l] >> j) & 1);
                *level = i32::from(low | (high << 4));
            }
            push(&c);
        }
    }
}

/// Q6_K: eight chunks, each two 16-value groups with their own scale (`dequantize_row_q6_K`).
fn q6_k(b: &BlockQ6K, push: &mut impl FnMut(&Chunk)) {
    let d = f16_to_f32(b.d);
    for n in 0..QK_K / 128 {
        let ql = &b.ql[n * 64..n * 64 + 64];
        let qh = &b.qh[n * 32..n * 32 + 32];
        let sc = &b.scales[n * 8..n * 8 + 8];
        // The four 32-value runs of this 128-value half, in order.
        for run in 0..4 {
            let mut c = Chunk::new();
            for (l, level) in c.levels.iter_mut().enumerate() {
                let low = if run < 2 {
                    ql[l + 32 * run] & 0x0f
                } else {
                    ql[l + 32 * (run - 2)] >> 4
                };
                let high = (qh[l] >> (2 * run)) & 3;
                *level = i32::from(low | (high << 4)) - 32;
            }
            c.scales = [
                (d * f32::from(sc[2 * run]), 0.0),
                (d * f32::from(sc[2 * run + 1]), 0.0),
            ];
            push(&c);
        }
    }
}

fn pack(layout: Layout, c: &Chunk, planes: &mut [Vec<u32>; 3]) {
    match layout {
        Layout::Q8 | Layout::Q8Half => {
            for four in c.levels.chunks_exact(4) {
                planes[0].push(
                    four.iter()
                        .enumerate()
                        .fold(0, |w, (i, &q)| w | (u32::from(q as i8 as u8) << (8 * i))),
                );
            }
            planes[1].push(c.scales[0].0.to_bits());
            if layout == Layout::Q8Half {
                planes[1].push(c.scales[1].0.to_bits());
            }
        }
        _ => {
            for eight in c.levels.chunks_exact(8) {
                planes[0].push(
                    eight
                        .iter()
                        .enumerate()
                        .fold(0, |w, (i, &q)| w | (((q as u32) & 0x0f) << (4 * i))),
                );
            }
            planes[1].push(c.scales[0].0.to_bits());
            planes[1].push(c.scales[0].1.to_bits());
            if layout == Layout::Q5 {
                planes[2].push(
                    c.levels
                        .iter()
                        .enumerate()
                        .fold(0, |w, (i, &q)| w | ((((q as u32) >> 4) & 1) << i)),
                );
            }
        }
    }
}
