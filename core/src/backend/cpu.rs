//! The CPU backend: f32 activations in `Vec`s, weights borrowed from the mapped file, every
//! matrix multiply through the fastest kernels of [`crate::quant::simd`] this CPU runs (bit for
//! bit the scalar reference kernels of [`crate::quant::dot`]).
//!
//! The other ops follow llama.cpp's CPU arithmetic too, so that its logits come out identical:
//! flash attention over an f16 cache with f16 value sums, RMSNorm summing `x * x` in f64, RoPE
//! with the fused multiply-adds that llama.cpp's C gets from its compiler, and SiLU through
//! `ggml_v_expf`.
//!
//! With the `std` feature (and not on wasm) the matrix multiplies and attention are split over a
//! team of `threads` threads, the caller among them; otherwise everything runs on the calling
//! thread.

use alloc::vec;
use alloc::vec::Vec;

use super::{AttnShape, Backend, KvType, MatrixData};
use crate::dtype::GgmlType;
use crate::quant::dot::{ActKind, Activations};
use crate::quant::simd::Isa;
use crate::quant::vec::{AttnHead, KvRows};
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

/// One layer's keys or values on the CPU.
#[derive(Debug)]
pub enum CpuCache {
    /// f16 bits.
    F16(Vec<u16>),
    /// f32 values.
    F32(Vec<f32>),
}

impl CpuCache {
    fn len(&self) -> usize {
        self.rows().len()
    }

    fn rows(&self) -> KvRows<'_> {
        match self {
            Self::F16(v) => KvRows::F16(v),
            Self::F32(v) => KvRows::F32(v),
        }
    }
}

/// Weight rows per tile of a batched product: a tile's rows stay in cache while every
/// activation row passes over them.
const TILE: usize = 16;

/// Output rows `first..` of a matrix product, transposed: `chunk[i * rows + r]` is weight row
/// `first + i` times activation row `r`. Weight rows are taken a tile at a time, so each is read
/// from memory once for the whole batch.
fn matmul_chunk(
    isa: Isa,
    w: &CpuMatrix<'_>,
    acts: &Activations,
    rows: usize,
    first: usize,
    chunk: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let bad = |e| Error::Invalid(alloc::format!("tensor {}: {e}", w.data.name));
    if rows == 1 {
        // Decode: one activation row against every weight row of the chunk, in one call.
        let a = acts
            .row(0)
            .ok_or_else(|| short("matmul activations", 1, 0))?;
        let bytes = &w.data.bytes[first * w.row_bytes..(first + chunk.len()) * w.row_bytes];
        return isa
            .dot_rows(w.dtype(), bytes, a, scratch, chunk)
            .map_err(bad);
    }
    let xs = (0..rows)
        .map(|r| {
            acts.row(r)
                .ok_or_else(|| short("matmul activations", r, rows))
        })
        .collect::<Result<Vec<_>>>()?;
    for (t, cols) in chunk.chunks_mut(TILE * rows).enumerate() {
        let n = cols.len() / rows;
        let start = first + t * TILE;
        let bytes = &w.data.bytes[start * w.row_bytes..(start + n) * w.row_bytes];
        isa.dot_block(w.dtype(), bytes, &xs, scratch, cols)
            .map_err(bad)?;
    }
    Ok(())
}

/// The CPU backend.
#[derive(Debug)]
pub struct Cpu {
    isa: Isa,
    pool: Pool,
    acts: Activations,
    /// `[out_cols, rows]`: matmul results before they are transposed into place.
    transposed: Vec<f32>,
    /// `[heads, rows, head_dim]`: attention output before it is put back in row order.
    head_major: Vec<f32>,
}

impl Cpu {
    /// A backend that splits work over `threads` threads (at least 1; only with `std`, and not
    /// on wasm) and runs the fastest kernels this CPU has.
    pub fn new(threads: usize) -> Self {
        Self::with_isa(threads, Isa::detect())
    }

    /// A backend on a chosen instruction set ([`Isa::SCALAR`] runs the reference kernels).
    pub fn with_isa(threads: usize, isa: Isa) -> Self {
        Self {
            isa,
            pool: Pool::new(threads.max(1)),
            acts: Activations::default(),
            transposed: Vec::new(),
            head_major: Vec::new(),
        }
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The kernels' instruction set.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// The worker threads: a [`Team`](super::pool::Team) natively, the calling thread alone
/// elsewhere.
struct Pool {
    #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
    team: super::pool::Team,
}

impl core::fmt::Debug for Pool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Pool {
    fn new(threads: usize) -> Self {
        #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
        {
            Self {
                team: super::pool::Team::new(threads),
            }
        }
        #[cfg(not(all(feature = "std", not(target_arch = "wasm32"))))]
        {
            let _ = threads;
            Self {}
        }
    }

    fn threads(&self) -> usize {
        #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
        {
            self.team.threads()
        }
        #[cfg(not(all(feature = "std", not(target_arch = "wasm32"))))]
        {
            1
        }
    }

    /// Runs `f(first_item, chunk)` over `out` split into at most `threads` runs of whole items
    /// of `item` values each; `parallel` false keeps it on the calling thread.
    fn split<F>(&self, parallel: bool, out: &mut [f32], item: usize, f: F) -> Result<()>
    where
        F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
    {
        let items = out.len() / item.max(1);
        #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
        if parallel && items > 1 && self.team.threads() > 1 {
            use std::sync::Mutex;
            let per = items.div_ceil(self.team.threads());
            let chunks: Vec<Mutex<Option<&mut [f32]>>> = out
                .chunks_mut(per * item)
                .map(|c| Mutex::new(Some(c)))
                .collect();
            let failed: Mutex<Option<Error>> = Mutex::new(None);
            let ran = self.team.run(&|t| {
                let chunk = chunks
                    .get(t)
                    .and_then(|c| c.lock().unwrap_or_else(|e| e.into_inner()).take());
                if let Some(chunk) = chunk
                    && let Err(e) = f(t * per, chunk)
                {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            });
            if ran.is_err() {
                return Err(Error::Invalid("a compute thread panicked".into()));
            }
            return match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        let _ = (parallel, items);
        f(0, out)
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

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Matrix<'w> = CpuMatrix<'w>;
    type Cache = CpuCache;

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
        let isa = self.isa;
        let decoded = ActKind::for_weight(w.dtype()) == ActKind::F32;
        // Small products are not worth a thread.
        self.pool
            .split(m * k >= 1 << 16, transposed, rows, |first, chunk| {
                let mut scratch = vec![0f32; if decoded { k } else { 0 }];
                matmul_chunk(isa, w, acts, rows, first, chunk, &mut scratch)
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

    fn cache(&mut self, len: usize, ty: KvType) -> Result<CpuCache> {
        Ok(match ty {
            KvType::F16 => CpuCache::F16(vec![0; len]),
            KvType::F32 => CpuCache::F32(vec![0.0; len]),
        })
    }

    fn store(
        &mut self,
        src: &Vec<f32>,
        cache: &mut CpuCache,
        row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let src = slice(src, rows * width, "cache store source")?;
        let have = cache.len();
        let range = row * width..(row + rows) * width;
        let missing = || short("cache store", (row + rows) * width, have);
        match cache {
            CpuCache::F16(c) => self
                .isa
                .encode_f16(src, c.get_mut(range).ok_or_else(missing)?),
            CpuCache::F32(c) => c.get_mut(range).ok_or_else(missing)?.copy_from_slice(src),
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
        k_cache: &CpuCache,
        v_cache: &CpuCache,
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
        for (cache, what) in [(k_cache, "K cache"), (v_cache, "V cache")] {
            if cache.len() < (pos0 + rows) * kv_width {
                return Err(short(what, (pos0 + rows) * kv_width, cache.len()));
            }
        }
        let out = slice_mut(out, rows * width, "attention output")?;
        let scale = 1.0 / libm::sqrtf(head_dim as f32);
        let isa = self.isa;
        // Worth a thread once there is a few hundred thousand multiply-adds to share.
        let parallel = rows * heads * (pos0 + rows) * head_dim >= 1 << 17;
        // One item is one (head, row) pair's output, head-major: later rows attend to more
        // positions, so row-major halves would leave the first thread idle half the time.
        let head_major = &mut self.head_major;
        head_major.resize(rows * width, 0.0);
        self.pool
            .split(parallel, head_major, head_dim, |first, chunk| {
                let mut qh = vec![0f32; head_dim];
                let mut k = vec![0f32; head_dim];
                let mut v = vec![0f32; head_dim];
                for (n, o) in chunk.chunks_exact_mut(head_dim).enumerate() {
                    let item = first + n;
                    let (h, i) = (item / rows, item % rows);
                    qh.copy_from_slice(&q[i * width + h * head_dim..][..head_dim]);
                    let head = AttnHead {
                        keys: k_cache.rows(),
                        values: v_cache.rows(),
                        stride: kv_width,
                        offset: (h / group) * head_dim,
                        len: pos0 + i + 1,
                        scale,
                    };
                    isa.attend(&mut qh, &head, &mut k, &mut v, o);
                }
                Ok(())
            })?;
        for (n, src) in head_major.chunks_exact(head_dim).enumerate() {
            let (h, i) = (n / rows, n % rows);
            out[i * width + h * head_dim..][..head_dim].copy_from_slice(src);
        }
        Ok(())
    }

    /// `ggml_vec_swiglu_f32`: `silu(g) * u` with `silu(g) = g / (1 + e^-g)`, `e^x` as
    /// `ggml_v_expf` computes it.
    fn silu_mul(&mut self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<()> {
        let g = slice_mut(gate, len, "silu_mul")?;
        let u = slice(up, len, "silu_mul")?;
        let isa = self.isa;
        // Items of 64 values; a prompt's worth is worth sharing.
        self.pool.split(len >= 1 << 16, g, 64, |first, chunk| {
            let at = first * 64;
            isa.silu_mul(chunk, &u[at..at + chunk.len()]);
            Ok(())
        })
    }

    fn add(&mut self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<()> {
        let x = slice_mut(x, len, "add")?;
        for (a, b) in x.iter_mut().zip(slice(y, len, "add")?) {
            *a += b;
        }
        Ok(())
    }
}
