//! The CPU backend: f32 activations in `Vec`s, weights borrowed from the mapped file, every
//! matrix multiply through the scalar reference kernels of [`crate::quant::dot`].
//!
//! The other ops follow llama.cpp's CPU arithmetic too, so that its logits come out identical:
//! flash attention over an f16 cache with f16 value sums, RMSNorm summing `x * x` in f64, RoPE
//! with the fused multiply-adds that llama.cpp's C gets from its compiler, and SiLU through
//! `ggml_v_expf`.
//!
//! With the `std` feature the matrix multiplies and attention are split over `threads` scoped
//! threads; without it everything runs on the calling thread.

use alloc::vec;
use alloc::vec::Vec;

use super::{AttnShape, Backend, MatrixData};
use crate::dtype::GgmlType;
use crate::quant::dot::{ActKind, Activations, dot};
use crate::{Error, Result};

/// A weight matrix on the CPU: the stored bytes and how to read them.
#[derive(Debug)]
pub struct CpuMatrix<'w> {
    data: MatrixData<'w>,
    row_bytes: usize,
}

impl CpuMatrix<'_> {
    /// Output dimension.
    pub fn rows(&self) -> usize {
        self.data.rows
    }

    /// Input dimension.
    pub fn cols(&self) -> usize {
        self.data.cols
    }

    /// Stored type.
    pub fn dtype(&self) -> GgmlType {
        self.data.dtype
    }

    fn row(&self, r: usize) -> &[u8] {
        // Bounds were checked when the matrix was made.
        &self.data.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// `x` rounded to the nearest f16 and back: the KV cache and the query are f16 in llama.cpp's
/// attention, and its logits follow from that rounding.
#[inline]
fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// `e^x` correctly rounded to f32 (through f64), as glibc's `expf` gives it in all but the rarest
/// cases; the `libm` crate's f32 version is up to 1 ulp away, which changes attention weights.
#[inline]
fn expf(x: f32) -> f32 {
    libm::exp(f64::from(x)) as f32
}

/// `ggml_v_expf`, the exponential of llama.cpp's vectorised SiLU (the ARM optimized-routines
/// polynomial, at most 1.5 ulp from `e^x`), lane by lane. llama.cpp's activations, and so its
/// logits, follow this approximation rather than a correctly rounded `expf`.
fn ggml_v_expf(x: f32) -> f32 {
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

/// `ggml_vec_dot_f16` as llama.cpp's AVX-512 build sums it: four accumulators of 16 lanes take
/// fused multiply-adds over each run of 64 values, then fold pairwise (0+2, 1+3, 0+1) and across
/// lanes as `_mm512_reduce_add_ps` does; values past the last whole run are added in f64. The
/// inputs are f16 values held in f32. A fixed order, so every platform gets the same scores.
fn dot_f16_ggml(x: &[f32], y: &[f32]) -> f32 {
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
    let mut v = [0f32; 16];
    for l in 0..16 {
        v[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let h8: [f32; 8] = core::array::from_fn(|l| v[l + 8] + v[l]);
    let h4: [f32; 4] = core::array::from_fn(|l| h8[l + 4] + h8[l]);
    let mut sum = f64::from((h4[0] + h4[2]) + (h4[1] + h4[3]));
    for (a, b) in xr.iter().zip(yr) {
        sum += f64::from(a * b);
    }
    sum as f32
}

/// One query row of `ggml_compute_forward_flash_attn_ext_f16_one_chunk` with an f16 cache:
/// online softmax over positions `0..len`, the value sum accumulated in f16. `out` gets the
/// attention output.
fn attend_one<'v>(
    _q: &[f32],
    mut score: impl FnMut(usize) -> f32,
    value: impl Fn(usize) -> &'v [f32],
    len: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    let (mut sum, mut max) = (0.0f32, f32::NEG_INFINITY);
    for t in 0..len {
        let s = score(t);
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > max {
            ms = expf(max - s);
            max = s;
            for acc in out.iter_mut() {
                *acc = f16_round(*acc * ms);
            }
        } else {
            vs = expf(s - max);
        }
        // `ggml_vec_mad_f16`: one fused multiply-add per value, rounded to f16.
        for (acc, &v) in out.iter_mut().zip(value(t)) {
            *acc = f16_round(libm::fmaf(f16_round(v), vs, *acc));
        }
        sum = libm::fmaf(sum, ms, vs);
    }
    let inv = 1.0 / sum;
    for acc in out.iter_mut() {
        *acc *= inv;
    }
}

/// Output rows `first..` of a matrix product, transposed: `chunk[i * rows + r]` is weight row
/// `first + i` times activation row `r`.
#[inline(always)]
fn matmul_chunk(
    w: &CpuMatrix<'_>,
    acts: &Activations,
    rows: usize,
    first: usize,
    chunk: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    for (i, col) in chunk.chunks_exact_mut(rows).enumerate() {
        let wrow = w.row(first + i);
        for (r, y) in col.iter_mut().enumerate() {
            let a = acts
                .row(r)
                .ok_or_else(|| short("matmul activations", r, rows))?;
            *y = dot(w.dtype(), wrow, a, scratch)
                .map_err(|e| Error::Invalid(alloc::format!("tensor {}: {e}", w.data.name)))?;
        }
    }
    Ok(())
}

/// [`matmul_chunk`] compiled for AVX2: the same scalar code, which the compiler vectorizes
/// wider. Integer sums are exact and no float operation is fused or reordered, so the results
/// are bit-identical to the baseline build's.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
fn matmul_chunk_avx2(
    w: &CpuMatrix<'_>,
    acts: &Activations,
    rows: usize,
    first: usize,
    chunk: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    matmul_chunk(w, acts, rows, first, chunk, scratch)
}

/// The CPU backend.
#[derive(Debug)]
pub struct Cpu {
    threads: usize,
    acts: Activations,
    /// `[out_cols, rows]`: matmul results before they are transposed into place.
    transposed: Vec<f32>,
}

impl Cpu {
    /// A backend that splits work over `threads` threads (at least 1; only with `std`).
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            acts: Activations::default(),
            transposed: Vec::new(),
        }
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn short(what: &str, need: usize, have: usize) -> Error {
    Error::Invalid(alloc::format!(
        "internal: {what} needs {need} values but the buffer holds {have}"
    ))
}

fn slice<'b>(buf: &'b [f32], len: usize, what: &str) -> Result<&'b [f32]> {
    buf.get(..len).ok_or_else(|| short(what, len, buf.len()))
}

fn slice_mut<'b>(buf: &'b mut [f32], len: usize, what: &str) -> Result<&'b mut [f32]> {
    let have = buf.len();
    buf.get_mut(..len).ok_or_else(|| short(what, len, have))
}

/// Runs `f(first_item, chunk)` over `out` split into at most `threads` runs of whole items of
/// `item` values each.
fn split_work<F>(threads: usize, out: &mut [f32], item: usize, f: F) -> Result<()>
where
    F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
{
    let items = out.len() / item.max(1);
    #[cfg(feature = "std")]
    if threads > 1 && items > 1 {
        let per = items.div_ceil(threads);
        return std::thread::scope(|s| {
            let handles: Vec<_> = out
                .chunks_mut(per * item)
                .enumerate()
                .map(|(t, chunk)| {
                    let f = &f;
                    s.spawn(move || f(t * per, chunk))
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| Error::Invalid("a compute thread panicked".into()))?
            })
        });
    }
    let _ = (threads, items);
    f(0, out)
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Matrix<'w> = CpuMatrix<'w>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn matrix<'w>(&mut self, data: MatrixData<'w>) -> Result<CpuMatrix<'w>> {
        let bad = |why: alloc::string::String| {
            Error::Invalid(alloc::format!("tensor {}: {why}", data.name))
        };
        if !crate::quant::can_dequantize(data.dtype) {
            return Err(bad(alloc::format!(
                "{} weights cannot be computed with",
                data.dtype
            )));
        }
        let row_bytes = data
            .dtype
            .bytes_for(data.cols as u64)
            .filter(|_| (data.cols as u64).is_multiple_of(data.dtype.block_size()))
            .ok_or_else(|| {
                bad(alloc::format!(
                    "rows of {} values are not whole {} blocks",
                    data.cols,
                    data.dtype
                ))
            })? as usize;
        if row_bytes.checked_mul(data.rows) != Some(data.bytes.len()) {
            return Err(bad(alloc::format!(
                "{} bytes do not hold {}x{} {} values",
                data.bytes.len(),
                data.rows,
                data.cols,
                data.dtype
            )));
        }
        Ok(CpuMatrix { data, row_bytes })
    }

    fn upload(&mut self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn zeros(&mut self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn read(&mut self, buf: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        let src = buf
            .get(offset..offset + out.len())
            .ok_or_else(|| short("read", offset + out.len(), buf.len()))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn embed(&mut self, table: &CpuMatrix<'_>, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let cols = table.cols();
        let out = slice_mut(out, tokens.len() * cols, "embed")?;
        for (&t, row) in tokens.iter().zip(out.chunks_exact_mut(cols)) {
            let t = t as usize;
            if t >= table.rows() {
                return Err(Error::Invalid(alloc::format!(
                    "token id {t} is outside the vocabulary of {}",
                    table.rows()
                )));
            }
            crate::quant::dequantize(table.dtype(), table.row(t), row)
                .map_err(|e| Error::Invalid(alloc::format!("{e}")))?;
        }
        Ok(())
    }

    /// `ggml_rms_norm` (sum of squares in f64) followed by the weight multiply.
    fn rms_norm(
        &mut self,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        eps: f32,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = weight.len();
        let x = slice(x, rows * n, "rms_norm")?;
        let out = slice_mut(out, rows * n, "rms_norm")?;
        for (xr, yr) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let sum: f64 = xr.iter().map(|&v| f64::from(v * v)).sum();
            let mean = (sum / n as f64) as f32;
            let scale = 1.0 / libm::sqrtf(mean + eps);
            for ((y, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
                *y = v * scale * w;
            }
        }
        Ok(())
    }

    fn matmul(
        &mut self,
        w: &CpuMatrix<'_>,
        x: &Vec<f32>,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (m, k) = (w.rows(), w.cols());
        let x = slice(x, rows * k, "matmul input")?;
        let out = slice_mut(out, rows * m, "matmul output")?;
        self.acts
            .encode(ActKind::for_weight(w.dtype()), x, rows, k)
            .map_err(|e| Error::Invalid(alloc::format!("{e}")))?;
        let acts = &self.acts;
        let transposed = &mut self.transposed;
        transposed.resize(m * rows, 0.0);
        // Small products are not worth a thread.
        let threads = if m * k < 1 << 16 { 1 } else { self.threads };
        split_work(threads, transposed, rows, |first, chunk| {
            let mut scratch = vec![
                0f32;
                if ActKind::for_weight(w.dtype()) == ActKind::F32 {
                    k
                } else {
                    0
                }
            ];
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { matmul_chunk_avx2(w, acts, rows, first, chunk, &mut scratch) };
            }
            matmul_chunk(w, acts, rows, first, chunk, &mut scratch)
        })?;
        for (j, col) in transposed.chunks_exact(rows).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                out[r * m + j] = v;
            }
        }
        Ok(())
    }

    fn add_bias(&mut self, x: &mut Vec<f32>, bias: &Vec<f32>, rows: usize) -> Result<()> {
        let n = bias.len();
        let x = slice_mut(x, rows * n, "add_bias")?;
        for row in x.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        Ok(())
    }

    /// `ggml_rope_ext` in NeoX mode: the angle advances by repeated multiplication, as ggml's
    /// cache does.
    fn rope(
        &mut self,
        x: &mut Vec<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
    ) -> Result<()> {
        let width = heads * head_dim;
        let x = slice_mut(x, rows * width, "rope")?;
        let half = head_dim / 2;
        let theta_scale = libm::powf(theta, -2.0 / head_dim as f32);
        let mut cos_sin = vec![(0f32, 0f32); half];
        for (i, row) in x.chunks_exact_mut(width).enumerate() {
            let mut angle = (pos0 + i) as f32;
            for cs in cos_sin.iter_mut() {
                *cs = (libm::cosf(angle), libm::sinf(angle));
                angle *= theta_scale;
            }
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for ((x0, x1), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(&cos_sin) {
                    let (v0, v1) = (*x0, *x1);
                    // llama.cpp's C, built with FMA, contracts the first product of each.
                    *x0 = libm::fmaf(v0, c, -(v1 * s));
                    *x1 = libm::fmaf(v0, s, v1 * c);
                }
            }
        }
        Ok(())
    }

    fn copy_rows(
        &mut self,
        src: &Vec<f32>,
        src_row: usize,
        dst: &mut Vec<f32>,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let src = src
            .get(src_row * width..(src_row + rows) * width)
            .ok_or_else(|| short("copy_rows source", (src_row + rows) * width, src.len()))?;
        let have = dst.len();
        dst.get_mut(dst_row * width..(dst_row + rows) * width)
            .ok_or_else(|| short("copy_rows destination", (dst_row + rows) * width, have))?
            .copy_from_slice(src);
        Ok(())
    }

    fn attention(
        &mut self,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        shape: AttnShape,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let AttnShape {
            rows,
            pos0,
            heads,
            kv_heads,
            head_dim,
        } = shape;
        let width = heads * head_dim;
        let kv_width = kv_heads * head_dim;
        let group = heads / kv_heads.max(1);
        let q = slice(q, rows * width, "attention query")?;
        let keys = slice(k_cache, (pos0 + rows) * kv_width, "K cache")?;
        let values = slice(v_cache, (pos0 + rows) * kv_width, "V cache")?;
        let out = slice_mut(out, rows * width, "attention output")?;
        let scale = 1.0 / libm::sqrtf(head_dim as f32);
        let threads = if rows * (pos0 + rows) < 256 {
            1
        } else {
            self.threads
        };
        // One item is one (row, head) pair's output.
        split_work(threads, out, head_dim, |first, chunk| {
            let mut q16 = vec![0f32; head_dim];
            let mut k16 = vec![0f32; head_dim];
            let mut acc = vec![0f32; head_dim];
            for (n, o) in chunk.chunks_exact_mut(head_dim).enumerate() {
                let item = first + n;
                let (i, h) = (item / heads, item % heads);
                let kvh = h / group;
                for (d, &v) in q16
                    .iter_mut()
                    .zip(&q[i * width + h * head_dim..][..head_dim])
                {
                    *d = f16_round(v);
                }
                attend_one(
                    &q16,
                    |t| {
                        for (d, &v) in k16
                            .iter_mut()
                            .zip(&keys[t * kv_width + kvh * head_dim..][..head_dim])
                        {
                            *d = f16_round(v);
                        }
                        dot_f16_ggml(&q16, &k16) * scale
                    },
                    |t| &values[t * kv_width + kvh * head_dim..][..head_dim],
                    pos0 + i + 1,
                    &mut acc,
                );
                o.copy_from_slice(&acc);
            }
            Ok(())
        })
    }

    /// `ggml_vec_swiglu_f32`: `silu(g) * u` with `silu(g) = g / (1 + e^-g)`, `e^x` as
    /// `ggml_v_expf` computes it.
    fn silu_mul(&mut self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<()> {
        let g = slice_mut(gate, len, "silu_mul")?;
        let u = slice(up, len, "silu_mul")?;
        for (g, &u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + ggml_v_expf(-*g)) * u;
        }
        Ok(())
    }

    fn add(&mut self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<()> {
        let x = slice_mut(x, len, "add")?;
        for (a, b) in x.iter_mut().zip(slice(y, len, "add")?) {
            *a += b;
        }
        Ok(())
    }
}
