//! The compute backends. [`Backend`] is the small set of operations the qwen2 forward pass needs;
//! `model/qwen2.rs` is written once against it, and each backend (the CPU one here, wgpu later)
//! implements it: [`cpu`] always, [`gpu`] (wgpu) with the `gpu` feature.
//!
//! Activations are f32 buffers that live wherever the backend computes (`Backend::Buf`). Weight
//! matrices keep their stored type (`Backend::Matrix`): the CPU backend borrows them straight
//! from the memory-mapped file.
//!
//! Reading a value back is the one step that may have to wait for the host: WebGPU hands a
//! buffer over only once the browser's event loop has run. So the reads have awaitable forms
//! ([`Backend::read_async`], [`Backend::argmax_async`]), the model's passes are written once
//! against them, and the blocking forms resolve them at once ([`resolve_now`]), which every
//! native backend can.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use crate::Result;
use crate::dtype::GgmlType;

pub mod cpu;
pub mod either;
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(all(feature = "std", not(target_arch = "wasm32")))]
mod pool;

/// A backend's answer that may need the host's event loop to run first (a WebGPU read-back).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// `answer`, which must be ready without waiting: every backend's reads are, except WebGPU's,
/// whose callers must await them instead (the browser worker does).
pub fn resolve_now<T>(answer: impl Future<Output = Result<T>>) -> Result<T> {
    let mut answer = core::pin::pin!(answer);
    match answer
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => Err(crate::Error::Invalid(
            "internal: this backend reads back asynchronously (WebGPU); await the *_async calls"
                .into(),
        )),
    }
}

/// A weight matrix as stored: `rows` rows of `cols` values of `dtype`, row-major.
#[derive(Debug, Clone)]
pub struct MatrixData<'w> {
    /// The tensor's name, for errors.
    pub name: alloc::string::String,
    /// Stored type.
    pub dtype: GgmlType,
    /// Output dimension.
    pub rows: usize,
    /// Input dimension (the row length).
    pub cols: usize,
    /// `rows * row_bytes` bytes, borrowed from the file when it stores them raw.
    pub bytes: Cow<'w, [u8]>,
}

impl MatrixData<'_> {
    /// An error about this tensor.
    pub fn error(&self, why: impl core::fmt::Display) -> crate::Error {
        crate::Error::Invalid(alloc::format!("tensor {}: {why}", self.name))
    }

    /// Bytes per row, after checking that rows are whole blocks and the bytes whole rows.
    pub fn row_bytes(&self) -> Result<usize> {
        let row_bytes = self
            .dtype
            .bytes_for(self.cols as u64)
            .filter(|_| (self.cols as u64).is_multiple_of(self.dtype.block_size()))
            .ok_or_else(|| {
                self.error(alloc::format!(
                    "rows of {} values are not whole {} blocks",
                    self.cols,
                    self.dtype
                ))
            })? as usize;
        if row_bytes.checked_mul(self.rows) != Some(self.bytes.len()) {
            return Err(self.error(alloc::format!(
                "{} bytes do not hold {}x{} {} values",
                self.bytes.len(),
                self.rows,
                self.cols,
                self.dtype
            )));
        }
        Ok(row_bytes)
    }
}

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// Half precision, as llama.cpp's default cache: half the memory, and the attention
    /// arithmetic that gives llama.cpp's logits.
    #[default]
    F16,
    /// Single precision: twice the memory, no rounding of keys, values or their running sum.
    F32,
}

impl KvType {
    /// `"f16"` or `"f32"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

impl core::str::FromStr for KvType {
    type Err = alloc::string::String;

    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        match s {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            _ => Err(alloc::format!(
                "unknown KV cache type {s:?} (expected f16 or f32)"
            )),
        }
    }
}

/// The shape of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query rows in this call (consecutive positions).
    pub rows: usize,
    /// Position of the first query row; row `i` attends to cache positions `0..=pos0 + i`.
    pub pos0: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads / kv_heads` queries share one).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// Operations of the forward pass. Every `rows` argument counts the valid leading rows of a
/// buffer that may be allocated larger.
pub trait Backend {
    /// An f32 buffer on the backend's device.
    type Buf;
    /// A weight matrix in its stored type; `'w` is the lifetime of the file's bytes.
    type Matrix<'w>;
    /// One layer's keys or values: `[ctx, kv_heads * head_dim]` in a [`KvType`].
    type Cache;

    /// A short name for reports (`"cpu"`, `"wgpu"`).
    fn name(&self) -> &'static str;
    /// The most values one buffer may hold. The model sizes its batch so that a batch's logits
    /// fit (a GPU's storage-binding limit is often 128 MiB, less than 512 rows of logits).
    fn max_buffer_len(&self) -> usize {
        usize::MAX
    }
    /// Takes a weight matrix onto the device.
    fn matrix<'w>(&mut self, data: MatrixData<'w>) -> Result<Self::Matrix<'w>>;
    /// A buffer holding `values`.
    fn upload(&mut self, values: &[f32]) -> Result<Self::Buf>;
    /// A zeroed buffer of `len` values.
    fn zeros(&mut self, len: usize) -> Result<Self::Buf>;
    /// Copies `out.len()` values starting at `offset` back to the host.
    fn read(&mut self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()>;
    /// `len` values starting at `offset`, read back to the host when they are ready. Only a
    /// backend whose reads complete asynchronously (WebGPU) needs more than [`Backend::read`].
    fn read_async<'a>(
        &'a mut self,
        buf: &'a Self::Buf,
        offset: usize,
        len: usize,
    ) -> Pending<'a, Vec<f32>> {
        Box::pin(async move {
            let mut out = alloc::vec![0.0; len];
            self.read(buf, offset, &mut out)?;
            Ok(out)
        })
    }

    /// `out[i, :] = table[tokens[i], :]`, decoded to f32.
    fn embed(
        &mut self,
        table: &Self::Matrix<'_>,
        tokens: &[u32],
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[i, :] = x[i, :] / rms(x[i, :]) * weight`, over rows of `weight`'s length.
    fn rms_norm(
        &mut self,
        x: &Self::Buf,
        weight: &Self::Buf,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `out[i, :] = w · x[i, :]` for `rows` rows: `x` is `[rows, w.cols]`, `out` `[rows, w.rows]`.
    fn matmul(
        &mut self,
        w: &Self::Matrix<'_>,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Backend::matmul`] for several matrices of the same input width over one input:
    /// `outs[j]` gets `ws[j] · x`. Backends may encode the input once and split the rows of all
    /// the matrices as one piece of work (query, key and value; gate and up).
    fn matmuls(
        &mut self,
        ws: &[&Self::Matrix<'_>],
        x: &Self::Buf,
        rows: usize,
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(crate::Error::Invalid(alloc::format!(
                "internal: {} matrices but {} outputs",
                ws.len(),
                outs.len()
            )));
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, rows, out)?;
        }
        Ok(())
    }
    /// `x[i, :] += bias` for `rows` rows of the bias's length.
    fn add_bias(&mut self, x: &mut Self::Buf, bias: &Self::Buf, rows: usize) -> Result<()>;
    /// NeoX rotary embedding in place: `x` is `[rows, heads * head_dim]`, row `i` at position
    /// `pos0 + i`; each head's halves are rotated by `pos * theta^(-2j / head_dim)`.
    fn rope(
        &mut self,
        x: &mut Self::Buf,
        rows: usize,
        heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
    ) -> Result<()>;
    /// A cache of `len` values stored as `ty`, zeroed.
    fn cache(&mut self, len: usize, ty: KvType) -> Result<Self::Cache>;
    /// Stores `rows` rows of `width` values from `src` into `cache` from row `row` on.
    fn store(
        &mut self,
        src: &Self::Buf,
        cache: &mut Self::Cache,
        row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()>;
    /// Copies `rows` rows of `width` values from `src` (from row `src_row`) into `dst` (from row
    /// `dst_row`): selected rows into scratch.
    fn copy_rows(
        &mut self,
        src: &Self::Buf,
        src_row: usize,
        dst: &mut Self::Buf,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()>;
    /// Causal grouped-query attention of `q` (`[rows, heads * head_dim]`) over the caches
    /// (`[ctx, kv_heads * head_dim]`, positions `0..pos0 + rows` valid) into `out` (like `q`).
    fn attention(
        &mut self,
        q: &Self::Buf,
        k_cache: &Self::Cache,
        v_cache: &Self::Cache,
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `gate = silu(gate) * up` over `len` values.
    fn silu_mul(&mut self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// `x += y` over `len` values.
    fn add(&mut self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()>;
    /// The index of the largest of each of `rows` rows of `width` values (the first of equals;
    /// NaN never wins), as [`crate::sample::argmax`]. A GPU computes it in place and reads back
    /// 4 bytes a row instead of the row.
    fn argmax(&mut self, x: &Self::Buf, rows: usize, width: usize) -> Result<Vec<u32>> {
        resolve_now(self.argmax_async(x, rows, width))
    }
    /// [`Backend::argmax`] when the answer is ready (see [`Backend::read_async`]).
    fn argmax_async<'a>(
        &'a mut self,
        x: &'a Self::Buf,
        rows: usize,
        width: usize,
    ) -> Pending<'a, Vec<u32>> {
        Box::pin(async move {
            let values = self.read_async(x, 0, rows * width).await?;
            Ok(values
                .chunks_exact(width.max(1))
                .map(crate::sample::argmax)
                .collect())
        })
    }
}

/// Reads a whole f32 vector (norm weights, biases) out of stored bytes of any decodable type.
pub fn decode_vector(dtype: GgmlType, bytes: &[u8], len: usize) -> Result<Vec<f32>> {
    let mut v = alloc::vec![0f32; len];
    crate::quant::dequantize(dtype, bytes, &mut v)
        .map_err(|e| crate::Error::Invalid(alloc::format!("{e}")))?;
    Ok(v)
}
