//! Dot products of a quantized weight row with an activation row: the scalar reference for every
//! matrix multiply in the model.
//!
//! Like llama.cpp's CPU backend, activations are first quantized to the weight type's partner
//! (`vec_dot_type`): Q8_0 for Q4_0, Q5_0 and Q8_0 weights, Q8_1 for Q4_1 and Q5_1, Q8_K for the
//! K-quants Q4_K, Q5_K and Q6_K. The dot product then runs on integers block by block, which is
//! both what makes it fast and what makes its logits agree with llama.cpp's. Every other weight
//! type (F32, and F16, BF16, Q2_K, Q3_K, decoded to f32 first) takes f32 activations.
//!
//! The integer sums are exact. The float side follows llama.cpp's x86 build operation for
//! operation, because Qwen2's outlier activations turn a one-ulp difference into a different
//! quantized level a few layers later: Q4_0/Q5_0/Q8_0, Q4_1/Q5_1 and Q6_K keep eight lane sums
//! per block and fuse each into its own accumulator (`_mm256_fmadd_ps`, then `hsum_float_8`;
//! Q4_1/Q5_1 add their minimum times the activation's `s` apart), Q6_K in batches of eight rows
//! or more follows the tiled K-quant multiply, Q4_K the repacked `gemm`/`gemv` kernels, and
//! Q8_0/Q8_1 activations round half to even with `127 / max`. Which kernel llama.cpp picks
//! depends on the batch, so each activation row carries its [`BatchRow`]. Q5_K keeps the order
//! of `ggml_vec_dot_q5_K_q8_K_generic`. The order is fixed here, so every platform computes the
//! same values.

use alloc::vec::Vec;

use bytemuck::{Pod, Zeroable, cast_slice};

use super::blocks::*;
use super::simd::Isa;
use super::{QuantError, f16_to_f32};
use crate::dtype::GgmlType;

/// `block_q8_K`: the activation partner of the K-quants. Only ever built in memory, never read
/// from a file, so it keeps natural alignment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale (f32, not f16).
    pub d: f32,
    /// Values.
    pub qs: [i8; QK_K],
    /// Sums of each group of 16 values.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(core::mem::size_of::<BlockQ8K>() == 292);

/// The encoding a weight type's dot product wants its activations in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActKind {
    /// Plain f32 (the weight row is decoded to f32 when it is not F32 already).
    F32,
    /// Blocks of 32 as [`BlockQ8_0`].
    Q8_0,
    /// `block_q8_1`: blocks of 32 as [`BlockQ8_0`], each with its scale times the sum of its
    /// values (the partner of the offset types Q4_1 and Q5_1).
    Q8_1,
    /// Super-blocks of 256 as [`BlockQ8K`].
    Q8K,
}

impl ActKind {
    /// The partner of weight type `ty` (`type_traits_cpu[ty].vec_dot_type` in ggml, for the types
    /// that have an integer kernel here).
    pub const fn for_weight(ty: GgmlType) -> Self {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => Self::Q8_1,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Self::Q8K,
            _ => Self::F32,
        }
    }
}

/// One activation row in the encoding a weight type wants.
#[derive(Clone, Copy, Debug)]
pub enum ActRow<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Q8_0 blocks, with what the SIMD kernels precompute from them.
    Q8_0(&'a [BlockQ8_0], Q8Sums<'a>),
    /// Q8_1 blocks: the values and scale as [`BlockQ8_0`], and per block `s` (the scale times
    /// the values' sum, stored as f16 by llama.cpp) as f32.
    Q8_1(&'a [BlockQ8_0], &'a [f32]),
    /// Q8_K super-blocks, and where the row sits in its batch: llama.cpp picks its K-quant
    /// kernel by batch size, and each sums in its own order.
    Q8K(&'a [BlockQ8K], BatchRow),
}

/// Per Q8_0 activation block, what every weight row's dot product would otherwise recompute:
/// the scale as f32 and, for kernels that take weights as unsigned `q + 128`, the correction
/// `-128 * (qs[4l] + .. + qs[4l + 3])` of each lane `l`. Kernels that find them missing or of
/// the wrong length ignore them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Q8Sums<'a> {
    /// `f16_to_f32(block.d)` per block.
    pub d: &'a [f32],
    /// The eight lane corrections per block.
    pub minus128: &'a [[i32; 8]],
}

/// Row `row` of a batch of `rows` activation rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRow {
    /// Index in the batch.
    pub row: usize,
    /// Rows in the batch.
    pub rows: usize,
}

impl BatchRow {
    /// A row on its own.
    pub const SINGLE: Self = Self { row: 0, rows: 1 };

    /// Whether llama.cpp's repacked Q4_K kernels take this row in a group of four (`gemm`)
    /// rather than alone (`gemv`).
    pub(crate) fn in_group_of_four(self) -> bool {
        self.row < self.rows - self.rows % 4
    }

    /// Whether llama.cpp's tiled K-quant matrix multiply (batches of 8 rows or more) takes it.
    pub(crate) fn tiled(self) -> bool {
        self.rows >= 8
    }
}

/// Activation rows quantized once and reused against every weight row.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    kind: Option<ActKind>,
    rows: usize,
    cols: usize,
    /// Where the held rows sit in their batch: first row, and the batch's size.
    first: usize,
    batch: usize,
    f32s: Vec<f32>,
    q8_0: Vec<BlockQ8_0>,
    q8_d: Vec<f32>,
    q8_sums: Vec<[i32; 8]>,
    q8_1s: Vec<f32>,
    q8k: Vec<BlockQ8K>,
}

impl Activations {
    /// Encodes `rows` rows of `cols` values from `x` as `kind`, reusing this buffer's memory.
    pub fn encode(
        &mut self,
        kind: ActKind,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<(), QuantError> {
        self.encode_part(Isa::detect(), kind, x, 0..rows, rows, cols)
    }

    /// Encodes rows `part` of a batch of `batch` rows (`x` holds just those rows), so that one
    /// thread can encode and use its own share of a batch: [`Activations::row`] counts from
    /// the part's first row, and each row keeps its place in the whole batch.
    /// The quantization runs on `isa` (every level gives the same bytes).
    pub fn encode_part(
        &mut self,
        isa: Isa,
        kind: ActKind,
        x: &[f32],
        part: core::ops::Range<usize>,
        batch: usize,
        cols: usize,
    ) -> Result<(), QuantError> {
        let rows = part.len();
        let x = x.get(..rows * cols).ok_or(QuantError::SizeMismatch {
            ty: GgmlType::F32,
            bytes: x.len() * 4,
            elements: rows * cols,
        })?;
        if part.end > batch {
            return Err(QuantError::SizeMismatch {
                ty: GgmlType::F32,
                bytes: part.end * cols * 4,
                elements: batch * cols,
            });
        }
        self.kind = Some(kind);
        self.rows = rows;
        self.cols = cols;
        self.first = part.start;
        self.batch = batch;
        match kind {
            ActKind::F32 => {
                self.f32s.clear();
                self.f32s.extend_from_slice(x);
            }
            ActKind::Q8_0 => {
                let per_row = whole_blocks(GgmlType::Q8_0, cols, QK)?;
                let blocks = rows * per_row;
                self.q8_0.resize(blocks, BlockQ8_0::zeroed());
                self.q8_d.resize(blocks, 0.0);
                self.q8_sums.resize(blocks, [0; 8]);
                isa.quantize_q8_0(x, &mut self.q8_0, &mut self.q8_d, &mut self.q8_sums);
            }
            ActKind::Q8_1 => {
                let blocks = rows * whole_blocks(GgmlType::Q4_1, cols, QK)?;
                self.q8_0.resize(blocks, BlockQ8_0::zeroed());
                self.q8_1s.resize(blocks, 0.0);
                quantize_q8_1_rows(x, &mut self.q8_0, &mut self.q8_1s);
            }
            ActKind::Q8K => {
                let per_row = whole_blocks(GgmlType::Q4_K, cols, QK_K)?;
                self.q8k.resize(rows * per_row, BlockQ8K::zeroed());
                isa.quantize_q8_k(x, &mut self.q8k);
            }
        }
        Ok(())
    }

    /// The encoding held.
    pub fn kind(&self) -> Option<ActKind> {
        self.kind
    }

    /// Row `r`, or `None` past the end.
    pub fn row(&self, r: usize) -> Option<ActRow<'_>> {
        let c = self.cols;
        match self.kind? {
            ActKind::F32 => self.f32s.get(r * c..(r + 1) * c).map(ActRow::F32),
            ActKind::Q8_0 => {
                let n = c / QK;
                let range = r * n..(r + 1) * n;
                let sums = Q8Sums {
                    d: self.q8_d.get(range.clone())?,
                    minus128: self.q8_sums.get(range.clone())?,
                };
                self.q8_0.get(range).map(|b| ActRow::Q8_0(b, sums))
            }
            ActKind::Q8_1 => {
                let n = c / QK;
                let range = r * n..(r + 1) * n;
                let s = self.q8_1s.get(range.clone())?;
                self.q8_0.get(range).map(|b| ActRow::Q8_1(b, s))
            }
            ActKind::Q8K => {
                let n = c / QK_K;
                let at = BatchRow {
                    row: self.first + r,
                    rows: self.batch,
                };
                self.q8k.get(r * n..(r + 1) * n).map(|b| ActRow::Q8K(b, at))
            }
        }
    }
}

fn whole_blocks(ty: GgmlType, cols: usize, block: usize) -> Result<usize, QuantError> {
    if cols.is_multiple_of(block) {
        Ok(cols / block)
    } else {
        Err(QuantError::PartialBlock {
            ty,
            elements: cols,
            block,
        })
    }
}

/// `quantize_row_q8_0` as llama.cpp's x86 build runs it: the inverse scale is `127 / max`
/// (not `1 / d`) and values round half to even.
pub fn quantize_q8_0_act(x: &[f32; QK], y: &mut BlockQ8_0) {
    q8_0_block(x, y);
}

/// [`quantize_q8_0_act`], returning the block's f32 scale before its rounding to f16.
#[inline(always)]
fn q8_0_block(x: &[f32; QK], y: &mut BlockQ8_0) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    y.d = super::f32_to_f16(d);
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = super::quantize::nearest_int(v * id) as i8;
    }
    d
}

/// [`quantize_q8_0_act`] for every block of `x` into `y`, with each block's [`Q8Sums`] parts:
/// the scale in f32 and the eight lane corrections.
pub fn quantize_q8_0_rows(
    x: &[f32],
    y: &mut [BlockQ8_0],
    d: &mut [f32],
    minus128: &mut [[i32; 8]],
) {
    for (((src, dst), d), m) in x.chunks_exact(QK).zip(y).zip(d).zip(minus128) {
        if let Ok(src) = <&[f32; QK]>::try_from(src) {
            quantize_q8_0_act(src, dst);
        }
        *d = f16_to_f32(dst.d);
        *m = core::array::from_fn(|l| {
            -128 * dst.qs[4 * l..4 * l + 4]
                .iter()
                .map(|&q| i32::from(q))
                .sum::<i32>()
        });
    }
}

/// `quantize_row_q8_1` as llama.cpp's x86 build runs it: the values as [`quantize_q8_0_act`]
/// makes them, and the returned `s`, the f32 scale (before its rounding to f16) times the
/// values' sum, rounded to f16.
pub fn quantize_q8_1_act(x: &[f32; QK], y: &mut BlockQ8_0) -> f32 {
    let d = q8_0_block(x, y);
    let sum: i32 = y.qs.iter().map(|&q| i32::from(q)).sum();
    f16_to_f32(super::f32_to_f16(d * sum as f32))
}

/// [`quantize_q8_1_act`] for every block of `x` into `y` and `s`.
pub fn quantize_q8_1_rows(x: &[f32], y: &mut [BlockQ8_0], s: &mut [f32]) {
    for ((src, dst), s) in x.chunks_exact(QK).zip(y).zip(s) {
        if let Ok(src) = <&[f32; QK]>::try_from(src) {
            *s = quantize_q8_1_act(src, dst);
        }
    }
}

/// [`quantize_q8_k`] for every block of `x` into `y`.
pub fn quantize_q8_k_rows(x: &[f32], y: &mut [BlockQ8K]) {
    for (src, dst) in x.chunks_exact(QK_K).zip(y) {
        if let Ok(src) = <&[f32; QK_K]>::try_from(src) {
            quantize_q8_k(src, dst);
        }
    }
}

/// `quantize_row_q8_K_ref`.
pub fn quantize_q8_k(x: &[f32; QK_K], y: &mut BlockQ8K) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        *y = BlockQ8K::zeroed();
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = super::quantize::nearest_int(iscale * v).min(127) as i8;
    }
    for (s, group) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
        *s = group.iter().map(|&q| i16::from(q)).sum();
    }
    y.d = 1.0 / iscale;
}

/// `w · x` for one weight row stored as `ty` (`row.len()` bytes) and one activation row in
/// `ActKind::for_weight(ty)`'s encoding. `scratch` must hold a row of f32 for the types decoded
/// to f32 first.
#[inline(always)]
pub fn dot(
    ty: GgmlType,
    row: &[u8],
    x: ActRow<'_>,
    scratch: &mut [f32],
) -> Result<f32, QuantError> {
    let mismatch = |elements| QuantError::SizeMismatch {
        ty,
        bytes: row.len(),
        elements,
    };
    match (ty, x) {
        (GgmlType::Q8_0, ActRow::Q8_0(y, _)) => blocks(ty, row, y, unpack_q8_0),
        (GgmlType::Q5_0, ActRow::Q8_0(y, _)) => blocks(ty, row, y, unpack_q5_0),
        (GgmlType::Q4_0, ActRow::Q8_0(y, _)) => blocks(ty, row, y, unpack_q4_0),
        (GgmlType::Q4_1, ActRow::Q8_1(y, s)) => {
            Ok(dot_q4_1(weight_blocks(ty, row, y.len(), QK)?, y, s))
        }
        (GgmlType::Q5_1, ActRow::Q8_1(y, s)) => {
            Ok(dot_q5_1(weight_blocks(ty, row, y.len(), QK)?, y, s))
        }
        (GgmlType::Q4_K, ActRow::Q8K(y, at)) => q4_k_repacked(row, y, at.in_group_of_four()),
        (GgmlType::Q5_K, ActRow::Q8K(y, _)) => {
            let x: &[BlockQ5K] = weight_blocks(ty, row, y.len(), QK_K)?;
            Ok(q5_k_fold(x, y, q5_k_ints))
        }
        (GgmlType::Q6_K, ActRow::Q8K(y, at)) if at.tiled() => q6_k_tiled(row, y),
        (GgmlType::Q6_K, ActRow::Q8K(y, _)) => {
            let x: &[BlockQ6K] = weight_blocks(ty, row, y.len(), QK_K)?;
            Ok(q6_k_fold(x, y, false, |a, b| lanes_q6_k(a, b).1))
        }
        (GgmlType::F32, ActRow::F32(y)) => {
            if row.len() != y.len() * 4 {
                return Err(mismatch(y.len()));
            }
            Ok(match bytemuck::try_cast_slice::<u8, f32>(row) {
                Ok(w) => dot_f32(w, y),
                // Unaligned in the file (SafeTensors promises no alignment): decode first.
                Err(_) => {
                    let w = scratch.get_mut(..y.len()).ok_or(mismatch(y.len()))?;
                    super::dequantize(ty, row, w)?;
                    dot_f32(w, y)
                }
            })
        }
        (_, ActRow::F32(y)) => {
            let w = scratch.get_mut(..y.len()).ok_or(mismatch(y.len()))?;
            super::dequantize(ty, row, w)?;
            Ok(dot_f32(w, y))
        }
        (_, ActRow::Q8_0(y, _) | ActRow::Q8_1(y, _)) => Err(mismatch(y.len() * QK)),
        (_, ActRow::Q8K(y, _)) => Err(mismatch(y.len() * QK_K)),
    }
}

/// `row` as the blocks of a weight row of type `ty`, one per activation block.
#[inline(always)]
pub(crate) fn weight_blocks<B: Pod>(
    ty: GgmlType,
    row: &[u8],
    blocks: usize,
    per_block: usize,
) -> Result<&[B], QuantError> {
    bytemuck::try_cast_slice(row)
        .ok()
        .filter(|x: &&[B]| x.len() == blocks)
        .ok_or(QuantError::SizeMismatch {
            ty,
            bytes: row.len(),
            elements: blocks * per_block,
        })
}

#[inline(always)]
fn blocks<B: Pod>(
    ty: GgmlType,
    row: &[u8],
    y: &[BlockQ8_0],
    unpack: impl Fn(&B) -> (f32, [i8; QK]),
) -> Result<f32, QuantError> {
    let x: &[B] = weight_blocks(ty, row, y.len(), QK)?;
    let mut acc = [0f32; 8];
    for (a, b) in x.iter().zip(y) {
        let (dx, q) = unpack(a);
        let d = dx * f16_to_f32(b.d);
        for (l, lane) in acc.iter_mut().enumerate() {
            let sum: i32 = (4 * l..4 * l + 4)
                .map(|i| i32::from(q[i]) * i32::from(b.qs[i]))
                .sum();
            *lane = crate::quant::fmaf(d, sum as f32, *lane);
        }
    }
    Ok(hsum8(&acc))
}

/// `hsum_float_8`: lanes folded as (l + l+4), then (0 + 2, 1 + 3), then (0 + 1).
#[inline(always)]
pub(crate) fn hsum8(a: &[f32; 8]) -> f32 {
    let h: [f32; 4] = core::array::from_fn(|l| a[l + 4] + a[l]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// f32 dot with eight running sums, as ggml's vectorised `ggml_vec_dot_f32` keeps.
#[inline(always)]
pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (a, b) in wr.iter().zip(xr) {
        sum += a * b;
    }
    sum
}

/// A Q8_0 block's scale and values.
#[inline(always)]
fn unpack_q8_0(x: &BlockQ8_0) -> (f32, [i8; QK]) {
    (f16_to_f32(x.d), x.qs)
}

/// A Q4_0 block's scale and values `q - 8` (low nibbles first).
#[inline(always)]
fn unpack_q4_0(x: &BlockQ4_0) -> (f32, [i8; QK]) {
    let mut q = [0i8; QK];
    for j in 0..QK / 2 {
        q[j] = (x.qs[j] & 0x0f) as i8 - 8;
        q[j + QK / 2] = (x.qs[j] >> 4) as i8 - 8;
    }
    (f16_to_f32(x.d), q)
}

/// A Q5_0 block's scale and values `q - 16`, the fifth bits from `qh`.
#[inline(always)]
fn unpack_q5_0(x: &BlockQ5_0) -> (f32, [i8; QK]) {
    let qh = u32::from_le_bytes(x.qh);
    let mut q = [0i8; QK];
    for j in 0..QK / 2 {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        q[j] = ((x.qs[j] & 0x0f) | h0) as i8 - 16;
        q[j + QK / 2] = ((x.qs[j] >> 4) | h1) as i8 - 16;
    }
    (f16_to_f32(x.d), q)
}

/// The 32 unsigned levels of a block's 16 nibble bytes (low nibbles first).
#[inline(always)]
fn nibble_levels(qs: &[u8; QK / 2]) -> [u8; QK] {
    core::array::from_fn(|i| {
        let b = qs[i % (QK / 2)];
        if i < QK / 2 { b & 0x0f } else { b >> 4 }
    })
}

/// `ggml_vec_dot_q4_1_q8_1` (see [`offset_fold`]), the reference.
pub(crate) fn dot_q4_1(x: &[BlockQ4_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
    offset_fold(x, y, s, |b, a| {
        (b.d, b.m, lanes_q8(&nibble_levels(&b.qs), &a.qs))
    })
}

/// `ggml_vec_dot_q5_1_q8_1` (see [`offset_fold`]), the reference: the fifth bits from `qh`.
pub(crate) fn dot_q5_1(x: &[BlockQ5_1], y: &[BlockQ8_0], s: &[f32]) -> f32 {
    offset_fold(x, y, s, |b, a| {
        let qh = u32::from_le_bytes(b.qh);
        let low = nibble_levels(&b.qs);
        let levels = core::array::from_fn(|i| low[i] | ((((qh >> i) & 1) << 4) as u8));
        (b.d, b.m, lanes_q8(&levels, &a.qs))
    })
}

/// The eight lane sums of unsigned levels times signed values: lane `l` sums values
/// `4l..4l + 4`.
#[inline(always)]
fn lanes_q8(levels: &[u8; QK], qs: &[i8; QK]) -> [i32; 8] {
    core::array::from_fn(|l| {
        (4 * l..4 * l + 4)
            .map(|i| i32::from(levels[i]) * i32::from(qs[i]))
            .sum()
    })
}

/// `ggml_vec_dot_q4_1_q8_1` and `ggml_vec_dot_q5_1_q8_1` as llama.cpp's x86 build computes
/// them, over blocks whose scale, minimum and eight integer lane sums `parts` gives (which any
/// kernel may compute, the sums being exact): per block each lane fused with the product of
/// the two scales, and the minimum times the activation's `s` added to a separate sum (exact,
/// both being f16), which joins the lanes' [`hsum8`] at the end.
#[inline(always)]
pub(crate) fn offset_fold<B>(
    x: &[B],
    y: &[BlockQ8_0],
    s: &[f32],
    parts: impl Fn(&B, &BlockQ8_0) -> ([u8; 2], [u8; 2], [i32; 8]),
) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for ((b, a), &s) in x.iter().zip(y).zip(s) {
        let (d, m, lanes) = parts(b, a);
        summs += f16_to_f32(m) * s;
        let d = f16_to_f32(d) * f16_to_f32(a.d);
        for (acc, &v) in acc.iter_mut().zip(&lanes) {
            *acc = crate::quant::fmaf(d, v as f32, *acc);
        }
    }
    hsum8(&acc) + summs
}

/// The 8 six-bit scales and 8 mins of a Q4_K/Q5_K block, unpacked as the ggml kernels do.
#[inline(always)]
pub(crate) fn k4_scales_mins(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut scales, mut mins) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        let (s, m) = super::dequant::scale_min_k4(j, q);
        scales[j] = s;
        mins[j] = m;
    }
    (scales, mins)
}

/// A Q4_K row times a Q8_K row as llama.cpp's x86 build computes it: Q4_K weights are repacked
/// eight rows at a time (`block_q4_Kx8`) and multiplied by `ggml_gemm_q4_K_8x8_q8_K` for rows in
/// groups of four and `ggml_gemv_q4_K_8x8_q8_K` for the rest. Both sum the scaled levels and the
/// min corrections as exact integers and fuse them into two float accumulators, `gemm` once per
/// 64 values and `gemv` once per 256; the result is their difference.
fn q4_k_repacked(row: &[u8], y: &[BlockQ8K], grouped: bool) -> Result<f32, QuantError> {
    let x: &[BlockQ4K] = weight_blocks(GgmlType::Q4_K, row, y.len(), QK_K)?;
    Ok(q4_k_fold(x, y, grouped, q4_k_ints))
}

/// The exact integer side of [`q4_k_repacked`] for one block: per group of 32 values the scaled
/// level sum and the min correction.
#[inline(always)]
pub(crate) fn q4_k_ints(b: &BlockQ4K, a: &BlockQ8K) -> ([i32; 8], [i32; 8]) {
    let (scales, mins) = k4_scales_mins(&b.scales);
    let mut levels = [0i32; 8];
    for g in 0..8 {
        let q4 = &b.qs[32 * (g / 2)..32 * (g / 2) + 32];
        let sum: i32 = (0..32)
            .map(|i| {
                let q = if g % 2 == 0 { q4[i] & 0x0f } else { q4[i] >> 4 };
                i32::from(q) * i32::from(a.qs[32 * g + i])
            })
            .sum();
        levels[g] = i32::from(scales[g]) * sum;
    }
    (levels, q4_k_corrections(&mins, a))
}

/// A Q4_K block's min corrections per group of 32 values, from its mins and the activation
/// block's sums.
#[inline(always)]
pub(crate) fn q4_k_corrections(mins: &[u8; 8], a: &BlockQ8K) -> [i32; 8] {
    core::array::from_fn(|g| {
        i32::from(mins[g]) * (i32::from(a.bsums[2 * g]) + i32::from(a.bsums[2 * g + 1]))
    })
}

/// Folds the `- 32` offset of Q6_K's levels into its eight lane sums: lane `l` loses 32 times
/// the scaled sums of activation groups `2l` and `2l + 1`.
#[inline(always)]
pub(crate) fn q6_k_offsets(x: &BlockQ6K, y: &BlockQ8K, lanes: &mut [i32; 8]) {
    for (l, lane) in lanes.iter_mut().enumerate() {
        let g = 2 * l;
        let offset = i32::from(y.bsums[g]) * i32::from(x.scales[g])
            + i32::from(y.bsums[g + 1]) * i32::from(x.scales[g + 1]);
        *lane -= offset << 5;
    }
}

/// The float side of [`q4_k_repacked`], over integer parts from `ints` (which any kernel may
/// compute, being exact).
#[inline(always)]
pub(crate) fn q4_k_fold(
    x: &[BlockQ4K],
    y: &[BlockQ8K],
    grouped: bool,
    ints: impl Fn(&BlockQ4K, &BlockQ8K) -> ([i32; 8], [i32; 8]),
) -> f32 {
    let mut fold = Q4KFold::default();
    for (b, a) in x.iter().zip(y) {
        fold.add(b, a, grouped, ints(b, a));
    }
    fold.total()
}

/// [`q4_k_fold`]'s two accumulators, block by block: kernels that take several activation rows
/// per weight block keep one per row.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Q4KFold {
    acc: f32,
    acc_min: f32,
}

impl Q4KFold {
    /// Block `b` times `a`, from their integer parts (scaled level sums, min corrections).
    #[inline(always)]
    pub(crate) fn add(
        &mut self,
        b: &BlockQ4K,
        a: &BlockQ8K,
        grouped: bool,
        (levels, corrections): ([i32; 8], [i32; 8]),
    ) {
        let d = f16_to_f32(b.d) * a.d;
        let dmin = f16_to_f32(b.dmin) * a.d;
        let step = if grouped { 2 } else { 8 };
        for (l, m) in levels
            .chunks_exact(step)
            .zip(corrections.chunks_exact(step))
        {
            self.acc = crate::quant::fmaf(l.iter().sum::<i32>() as f32, d, self.acc);
            self.acc_min = crate::quant::fmaf(m.iter().sum::<i32>() as f32, dmin, self.acc_min);
        }
    }

    /// The row's product.
    #[inline(always)]
    pub(crate) fn total(self) -> f32 {
        self.acc - self.acc_min
    }
}

/// The exact integer side of `ggml_vec_dot_q5_K_q8_K_generic` for one block: eight lane sums,
/// lane `l` taking the values whose index mod 8 is `l` at their unsigned level (0..31) times
/// their group scale, and the mins times the activation's group sums.
#[inline(always)]
pub(crate) fn q5_k_ints(x: &BlockQ5K, y: &BlockQ8K) -> ([i32; 8], i32) {
    let (scales, mins) = k4_scales_mins(&x.scales);
    let mut lanes = [0i32; 8];
    for (j, q4) in x.qs.chunks_exact(32).enumerate() {
        for (half, &scale) in scales[2 * j..2 * j + 2].iter().enumerate() {
            let g = 2 * j + half;
            for (i, &q) in q4.iter().enumerate() {
                let low = if half == 0 { q & 0x0f } else { q >> 4 };
                let level = low | (((x.qh[i] >> g) & 1) << 4);
                lanes[i % 8] += i32::from(scale) * i32::from(level) * i32::from(y.qs[32 * g + i]);
            }
        }
    }
    (lanes, q5_k_mins(&mins, y))
}

/// A Q5_K block's mins times the activation block's group sums (the same exact total as
/// [`q4_k_corrections`]).
#[inline(always)]
pub(crate) fn q5_k_mins(mins: &[u8; 8], y: &BlockQ8K) -> i32 {
    q4_k_corrections(mins, y).iter().sum()
}

/// The float side of `ggml_vec_dot_q5_K_q8_K_generic` over the integer parts from `ints` (which
/// any kernel may compute, being exact): each lane scaled and added to its own sum (not fused),
/// the mins subtracted block by block.
#[inline(always)]
pub(crate) fn q5_k_fold(
    x: &[BlockQ5K],
    y: &[BlockQ8K],
    ints: impl Fn(&BlockQ5K, &BlockQ8K) -> ([i32; 8], i32),
) -> f32 {
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (a, b) in x.iter().zip(y) {
        let (lanes, sumi) = ints(a, b);
        let d = f16_to_f32(a.d) * b.d;
        for (sum, &v) in sums.iter_mut().zip(&lanes) {
            *sum += d * v as f32;
        }
        let dmin = f16_to_f32(a.dmin) * b.d;
        sumf += -dmin * sumi as f32;
    }
    sumf + sums.iter().sum::<f32>()
}

/// `ggml_vec_dot_q6_K_q8_K` as llama.cpp's x86 build computes it, one block: the scale and eight
/// integer lane sums. Lane `l` takes the values whose index mod 32 is in `4l..4l + 4` at their
/// unsigned level (0..63) times their group scale, less 32 times the scaled sums of activation
/// groups `2l` and `2l + 1` (the `- 32` offset, folded in the way the SIMD kernel folds it).
#[inline(always)]
pub(crate) fn lanes_q6_k(x: &BlockQ6K, y: &BlockQ8K) -> (f32, [i32; 8]) {
    let mut lanes = [0i32; 8];
    for half in 0..2 {
        let ql = &x.ql[64 * half..64 * half + 64];
        let qh = &x.qh[32 * half..32 * half + 32];
        for b in 0..32 {
            let levels = [
                (ql[b] & 0x0f) | ((qh[b] & 3) << 4),
                (ql[b + 32] & 0x0f) | (((qh[b] >> 2) & 3) << 4),
                (ql[b] >> 4) | (((qh[b] >> 4) & 3) << 4),
                (ql[b + 32] >> 4) | (((qh[b] >> 6) & 3) << 4),
            ];
            for (c, &q) in levels.iter().enumerate() {
                let v = 128 * half + 32 * c + b;
                lanes[b / 4] += i32::from(x.scales[v / 16]) * i32::from(q) * i32::from(y.qs[v]);
            }
        }
    }
    q6_k_offsets(x, y, &mut lanes);
    (y.d * f16_to_f32(x.d), lanes)
}

/// A Q6_K row times a Q8_K row as llama.cpp's tiled K-quant multiply computes it for batches of
/// eight rows or more: per super-block the exact integer sum times the weight scale, then fused
/// with the activation scale into the running sum.
fn q6_k_tiled(row: &[u8], y: &[BlockQ8K]) -> Result<f32, QuantError> {
    let x: &[BlockQ6K] = weight_blocks(GgmlType::Q6_K, row, y.len(), QK_K)?;
    Ok(q6_k_fold(x, y, true, |a, b| lanes_q6_k(a, b).1))
}

/// The float side of the Q6_K dot products over the lane sums of [`lanes_q6_k`] (from `lanes`,
/// which any kernel may compute, being exact): [`q6_k_tiled`]'s when `tiled`, else
/// eight lane sums fused each into its own accumulator and folded by [`hsum8`].
#[inline(always)]
pub(crate) fn q6_k_fold(
    x: &[BlockQ6K],
    y: &[BlockQ8K],
    tiled: bool,
    lanes: impl Fn(&BlockQ6K, &BlockQ8K) -> [i32; 8],
) -> f32 {
    let mut fold = Q6KFold::new(tiled);
    for (a, b) in x.iter().zip(y) {
        fold.add(a, b, &lanes(a, b));
    }
    fold.total()
}

/// [`q6_k_fold`]'s accumulators, block by block: kernels that take several activation rows per
/// weight block keep one per row.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Q6KFold {
    Tiled(f32),
    Lanes([f32; 8]),
}

impl Q6KFold {
    /// Nothing summed yet, in the tiled kernel's order or the vector kernel's.
    #[inline(always)]
    pub(crate) fn new(tiled: bool) -> Self {
        if tiled {
            Self::Tiled(0.0)
        } else {
            Self::Lanes([0.0; 8])
        }
    }

    /// Block `a` times `b`, from their integer lane sums.
    #[inline(always)]
    pub(crate) fn add(&mut self, a: &BlockQ6K, b: &BlockQ8K, lanes: &[i32; 8]) {
        match self {
            Self::Tiled(acc) => {
                let result = lanes.iter().sum::<i32>() as f32 * f16_to_f32(a.d);
                *acc = crate::quant::fmaf(result, b.d, *acc);
            }
            Self::Lanes(acc) => {
                let d = b.d * f16_to_f32(a.d);
                for (lane, &v) in acc.iter_mut().zip(lanes) {
                    *lane = crate::quant::fmaf(d, v as f32, *lane);
                }
            }
        }
    }

    /// The row's product.
    #[inline(always)]
    pub(crate) fn total(self) -> f32 {
        match self {
            Self::Tiled(acc) => acc,
            Self::Lanes(acc) => hsum8(&acc),
        }
    }
}

/// Casts for the tests and the backends: a row of blocks as bytes.
pub fn as_bytes<B: Pod>(blocks: &[B]) -> &[u8] {
    cast_slice(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize};

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Every integer kernel agrees with "decode both sides to f32 and multiply" to within the
    /// rounding of the f32 sums.
    #[test]
    fn integer_kernels_match_the_decoded_product() {
        use GgmlType::*;
        for ty in [
            Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, F32, F16, BF16, Q4_1, Q5_1,
        ] {
            for seed in 1..6u64 {
                let n = 512;
                let mut r = rng(seed * 31 + ty as u64);
                let w: Vec<f32> = (0..n).map(|_| r() * 0.1).collect();
                let x: Vec<f32> = (0..n).map(|_| r() * 3.0).collect();
                // Q5_K has no quantizer here: take Q4_K's bytes with a zero fifth-bit plane.
                let wq = if ty == Q5_K {
                    let mut q4 = vec![0u8; Q4_K.bytes_for(n as u64).unwrap() as usize];
                    quantize(Q4_K, &w, &mut q4).unwrap();
                    let mut out = Vec::new();
                    for b in q4.chunks_exact(144) {
                        out.extend_from_slice(&b[..16]);
                        out.extend_from_slice(&[0u8; 32]);
                        out.extend_from_slice(&b[16..]);
                    }
                    out
                } else {
                    let mut q = vec![0u8; ty.bytes_for(n as u64).unwrap() as usize];
                    quantize(ty, &w, &mut q).unwrap();
                    q
                };
                let mut wd = vec![0f32; n];
                dequantize(ty, &wq, &mut wd).unwrap();
                let kind = ActKind::for_weight(ty);
                let mut acts = Activations::default();
                acts.encode(kind, &x, 1, n).unwrap();
                // The activation side as the kernel sees it.
                let xd: Vec<f32> = match acts.row(0).unwrap() {
                    ActRow::F32(v) => v.to_vec(),
                    ActRow::Q8_0(b, _) | ActRow::Q8_1(b, _) => {
                        let mut v = vec![0f32; n];
                        dequantize(Q8_0, as_bytes(b), &mut v).unwrap();
                        v
                    }
                    ActRow::Q8K(b, _) => b
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&q| f32::from(q) * b.d))
                        .collect(),
                };
                let mut want: f64 = wd
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                if let ActRow::Q8_1(b, s) = acts.row(0).unwrap() {
                    // The minimum meets each block's `s` (its sum scaled before the scale's
                    // rounding to f16, and rounded to f16 itself), not the decoded values.
                    let block = wq.len() / b.len();
                    for ((b, &s), w) in b.iter().zip(s).zip(wq.chunks_exact(block)) {
                        let m = f64::from(f16_to_f32([w[2], w[3]]));
                        let sum: f64 = b.qs.iter().map(|&q| f64::from(q)).sum();
                        want += m * (f64::from(s) - f64::from(f16_to_f32(b.d)) * sum);
                    }
                }
                let mut scratch = vec![0f32; n];
                let scale: f64 = wd
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| f64::from((a * b).abs()))
                    .sum();
                // Alone, in a group of four and in a tiled batch: each summation order agrees.
                for rows in [1, 5, 8] {
                    let batch: Vec<f32> = x.iter().copied().cycle().take(rows * n).collect();
                    acts.encode(kind, &batch, rows, n).unwrap();
                    for r in 0..rows {
                        let got = dot(ty, &wq, acts.row(r).unwrap(), &mut scratch).unwrap();
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-5 * scale + 1e-6,
                            "{ty:?} seed {seed} row {r} of {rows}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_k_matches_its_definition() {
        let mut r = rng(7);
        let x: [f32; QK_K] = core::array::from_fn(|_| r() * 5.0);
        let mut b = BlockQ8K::zeroed();
        quantize_q8_k(&x, &mut b);
        let max = x
            .iter()
            .copied()
            .fold(0.0f32, |a, v| if v.abs() > a.abs() { v } else { a });
        assert_eq!(b.d, 1.0 / (-127.0 / max));
        for (g, s) in b.bsums.iter().enumerate() {
            let want: i16 = b.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&q| i16::from(q))
                .sum();
            assert_eq!(*s, want);
        }
        for (q, v) in b.qs.iter().zip(&x) {
            assert!((f32::from(*q) * b.d - v).abs() <= b.d.abs() * 0.5 + 1e-6);
        }
        let mut z = BlockQ8K::zeroed();
        quantize_q8_k(&[0.0; QK_K], &mut z);
        assert_eq!(z.d, 0.0);
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let mut acts = Activations::default();
        assert!(acts.encode(ActKind::Q8_0, &[0.0; 40], 1, 40).is_err());
        acts.encode(ActKind::Q8_0, &[0.0; 64], 1, 64).unwrap();
        let row = acts.row(0).unwrap();
        assert!(dot(GgmlType::Q8_0, &[0u8; 34], row, &mut []).is_err());
        assert!(dot(GgmlType::Q4_K, &[0u8; 144], row, &mut []).is_err());
        assert!(dot(GgmlType::F16, &[0u8; 128], ActRow::F32(&[0.0; 64]), &mut []).is_err());
    }
}
