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
use crate::quant::dot::{ActKind, ActRow, Activations};
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

/// Weight rows `start..start + take` of `w` times every activation row in `xs`, into those
/// columns of `out`, through `tile` (scratch for one call's results). A batch is taken [`TILE`]
/// weight rows at a time, so each is read from memory once for all of it.
///
/// # Safety
/// No other thread may write these columns of `out` while this runs.
unsafe fn matmul_rows(
    isa: Isa,
    w: &CpuMatrix<'_>,
    xs: &[ActRow<'_>],
    (start, take): (usize, usize),
    out: &Columns<'_>,
    tile: &mut Vec<f32>,
    scratch: &mut [f32],
) -> Result<()> {
    let bad = |e| Error::Invalid(alloc::format!("tensor {}: {e}", w.data.name));
    let rows = xs.len();
    let bytes = w
        .data
        .bytes
        .get(start * w.row_bytes..(start + take) * w.row_bytes)
        .ok_or_else(|| {
            short(
                "matmul weights",
                (start + take) * w.row_bytes,
                w.data.bytes.len(),
            )
        })?;
    let step = match rows {
        1 => take,
        2..=FEW_ROWS => FEW_ROWS_RUN,
        _ => TILE,
    };
    for (t, bytes) in bytes.chunks(step * w.row_bytes.max(1)).enumerate() {
        let n = bytes.len() / w.row_bytes.max(1);
        tile.resize(n * rows, 0.0);
        if let [x] = xs {
            // Decode: one activation row against every weight row, in one call.
            isa.dot_rows(w.dtype(), bytes, *x, scratch, tile)
                .map_err(bad)?;
        } else if rows <= FEW_ROWS {
            // A few rows (sequences decoded together): each runs the decode kernel over the
            // same run of weight rows, which stays in cache after the first, so the weights
            // still come from memory once. Every kernel equals the reference, so this gives
            // what a tile would.
            for (x, out) in xs.iter().zip(tile.chunks_exact_mut(n)) {
                isa.dot_rows(w.dtype(), bytes, *x, scratch, out)
                    .map_err(bad)?;
            }
        } else {
            isa.dot_block(w.dtype(), bytes, xs, scratch, tile)
                .map_err(bad)?;
        }
        // SAFETY: these columns are the caller's alone.
        unsafe { out.put(start + t * step, n, tile)? };
    }
    Ok(())
}

/// Up to this many activation rows run the decode kernel once each over a shared run of
/// [`FEW_ROWS_RUN`] weight rows, rather than unpacking weights into tiles: for a handful of rows
/// the unpacking costs more than it saves.
const FEW_ROWS: usize = 4;
/// Weight rows per run for [`FEW_ROWS`] activation rows: small enough to stay in L2 between
/// the rows' passes.
const FEW_ROWS_RUN: usize = 64;

/// Claimed units of work per member when a product is split by weight rows: enough that a
/// member slowed by a busy core hands its share to the others, few enough that claiming costs
/// nothing measurable next to a unit.
const UNITS_PER_THREAD: usize = 4;

/// The CPU backend.
#[derive(Debug)]
pub struct Cpu {
    isa: Isa,
    pool: Pool,
    /// Encoded activations, one buffer per member of the team.
    acts: Vec<Activations>,
    /// `[heads, rows, head_dim]`: attention output before it is put back in row order.
    head_major: Vec<f32>,
    /// The used part of an f16 key and value cache, in f32, for the current attention.
    widened: (Vec<f32>, Vec<f32>),
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
            acts: Vec::new(),
            head_major: Vec::new(),
            widened: (Vec::new(), Vec::new()),
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

    /// Runs `f(member, part)` for every part, part `t` on member `t` (at most `threads`
    /// parts; a single part runs on the calling thread).
    fn each<P, F>(&self, parts: Vec<P>, f: F) -> Result<()>
    where
        P: Send,
        F: Fn(usize, P) -> Result<()> + Sync,
    {
        #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
        if parts.len() > 1 {
            use std::sync::Mutex;
            if parts.len() > self.team.threads() {
                return Err(Error::Invalid(alloc::format!(
                    "internal: {} parts for {} threads",
                    parts.len(),
                    self.team.threads()
                )));
            }
            let parts: Vec<Mutex<Option<P>>> =
                parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
            let failed: Mutex<Option<Error>> = Mutex::new(None);
            let ran = self.team.run(&|t| {
                let part = parts
                    .get(t)
                    .and_then(|c| c.lock().unwrap_or_else(|e| e.into_inner()).take());
                if let Some(part) = part
                    && let Err(e) = f(t, part)
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
        for (t, part) in parts.into_iter().enumerate() {
            f(t, part)?;
        }
        Ok(())
    }

    /// Runs `f(first_item, chunk)` over `out` split into at most `threads` runs of whole items
    /// of `item` values each; `parallel` false keeps it on the calling thread.
    fn split<F>(&self, parallel: bool, out: &mut [f32], item: usize, f: F) -> Result<()>
    where
        F: Fn(usize, &mut [f32]) -> Result<()> + Sync,
    {
        let items = out.len() / item.max(1);
        let threads = if parallel { self.threads() } else { 1 };
        let per = items.div_ceil(threads).max(1);
        let parts: Vec<(usize, &mut [f32])> = out
            .chunks_mut(per * item.max(1))
            .enumerate()
            .map(|(t, c)| (t * per, c))
            .collect();
        if parts.is_empty() {
            return f(0, out);
        }
        self.each(parts, |_, (first, chunk)| f(first, chunk))
    }

    /// Runs `f(&mut state, unit)` for every unit in `0..units`. Each member makes its own
    /// state with `init` and claims the next unclaimed unit whenever it finishes one, so a
    /// member on a slower or busier core simply does fewer: a fixed split would leave the
    /// others waiting for it. `parallel` false keeps it on the calling thread. Stops at the
    /// first error.
    fn claim<S, I, F>(&self, parallel: bool, units: usize, init: I, f: F) -> Result<()>
    where
        I: Fn() -> S + Sync,
        F: Fn(&mut S, usize) -> Result<()> + Sync,
    {
        #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
        if parallel && units > 1 && self.team.threads() > 1 {
            use core::sync::atomic::{AtomicUsize, Ordering};
            use std::sync::Mutex;
            let next = AtomicUsize::new(0);
            let failed: Mutex<Option<Error>> = Mutex::new(None);
            let ran = self.team.run(&|_| {
                let mut state = init();
                loop {
                    let unit = next.fetch_add(1, Ordering::Relaxed);
                    if unit >= units {
                        break;
                    }
                    if let Err(e) = f(&mut state, unit) {
                        // The others stop at their next claim.
                        next.store(units, Ordering::Relaxed);
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        break;
                    }
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
        let _ = parallel;
        let mut state = init();
        (0..units).try_for_each(|unit| f(&mut state, unit))
    }
}

/// A row-major output (`rows` rows of `width` values) that several members fill at once, each
/// its own columns.
struct Columns<'o> {
    ptr: *mut f32,
    rows: usize,
    width: usize,
    _out: core::marker::PhantomData<&'o mut [f32]>,
}

// SAFETY: `Columns` hands out no references; every write goes through `put`, and the callers
// (the claimed units of `matmul_run`) never give two threads the same columns.
unsafe impl Sync for Columns<'_> {}

impl<'o> Columns<'o> {
    fn new(out: &'o mut [f32], rows: usize, width: usize) -> Result<Self> {
        let out = slice_mut(out, rows * width, "matmul output")?;
        Ok(Self {
            ptr: out.as_mut_ptr(),
            rows,
            width,
            _out: core::marker::PhantomData,
        })
    }

    /// Writes columns `start..start + take` of every row: row `r`'s from
    /// `tile[r * take..(r + 1) * take]`.
    ///
    /// # Safety
    /// No other thread may write these columns while this runs.
    unsafe fn put(&self, start: usize, take: usize, tile: &[f32]) -> Result<()> {
        if start + take > self.width || tile.len() < take * self.rows {
            return Err(short("matmul output", start + take, self.width));
        }
        for (r, src) in tile.chunks_exact(take.max(1)).take(self.rows).enumerate() {
            // SAFETY: `r * width + start + take <= rows * width`, the length `new` checked, and
            // no other thread writes these columns (the caller's promise).
            let line = unsafe {
                core::slice::from_raw_parts_mut(self.ptr.add(r * self.width + start), take)
            };
            if let (Ok(line), Ok(src)) = (
                <&mut [f32; TILE]>::try_from(&mut *line),
                <&[f32; TILE]>::try_from(src),
            ) {
                // A prompt's tile: a fixed-size copy, four vector moves rather than a call.
                *line = *src;
            } else {
                line.copy_from_slice(src);
            }
        }
        Ok(())
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

impl Cpu {
    /// [`Backend::matmuls`] for matrices that share the input's encoding.
    ///
    /// A batch of at least four rows per thread (a prompt) is encoded by the team, each member
    /// its share of the rows; then the members claim tiles of [`TILE`] weight rows one after
    /// another, each running every activation row against its tile (the tile stays in cache
    /// while the batch passes over it) and writing those columns of the outputs. Claiming
    /// rather than splitting up front keeps both cores busy to the end when one of them runs
    /// slower. Smaller batches and decoding encode the input once and claim larger units of
    /// weight rows, [`UNITS_PER_THREAD`] per member.
    fn matmul_run(
        &mut self,
        ws: &[&CpuMatrix<'_>],
        x: &[f32],
        rows: usize,
        outs: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        let Some(w0) = ws.first() else {
            return Ok(());
        };
        if rows == 0 {
            return Ok(());
        }
        let (k, kind) = (w0.cols(), ActKind::for_weight(w0.dtype()));
        let x = slice(x, rows * k, "matmul input")?;
        let total: usize = ws.iter().map(|w| w.rows()).sum();
        // Small products are not worth a thread.
        let threads = if total * k >= 1 << 16 {
            self.pool.threads()
        } else {
            1
        };
        let bad = |e| Error::Invalid(alloc::format!("{e}"));
        let isa = self.isa;
        // Encode: a batch of at least four rows per member is split between them, member `t`
        // taking rows `t * per..` into its own buffer; anything smaller is encoded once.
        let per = if rows >= 4 * threads {
            rows.div_ceil(threads).next_multiple_of(4)
        } else {
            rows
        };
        let shares = rows.div_ceil(per);
        if self.acts.len() < shares {
            self.acts.resize_with(shares, Activations::default);
        }
        let parts: Vec<_> = self.acts[..shares].iter_mut().enumerate().collect();
        self.pool.each(parts, |_, (t, acts)| {
            let first = t * per;
            let n = (rows - first).min(per);
            acts.encode_part(
                isa,
                kind,
                &x[first * k..(first + n) * k],
                first..first + n,
                rows,
                k,
            )
            .map_err(bad)
        })?;
        let xs = self.acts[..shares]
            .iter()
            .enumerate()
            .flat_map(|(t, acts)| (0..(rows - t * per).min(per)).map(move |r| acts.row(r)))
            .enumerate()
            .map(|(r, row)| row.ok_or_else(|| short("matmul activations", r, rows)))
            .collect::<Result<Vec<_>>>()?;
        // Multiply: units of weight rows, claimed one at a time. A batch claims single tiles
        // (each a long run of work); a few rows claim a few units per member.
        let unit = if rows >= 4 * threads {
            TILE
        } else {
            total
                .div_ceil(threads * UNITS_PER_THREAD)
                .next_multiple_of(TILE)
        };
        let mut columns = Vec::with_capacity(ws.len());
        let mut units = Vec::new();
        for (i, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
            let c = Columns::new(out, rows, w.rows())?;
            // A batch's units start on cache lines of the output (the first unit takes up
            // the misalignment), so that a tile's run of each row fills whole lines.
            let lead = if rows > 1 {
                (64 - c.ptr as usize % 64) % 64 / size_of::<f32>() % TILE
            } else {
                0
            };
            let mut start = 0;
            while start < w.rows() {
                let take = if start == 0 && lead > 0 { lead } else { unit };
                let take = take.min(w.rows() - start);
                units.push((i, start, take));
                start += take;
            }
            columns.push(c);
        }
        let scratch = if kind == ActKind::F32 { k } else { 0 };
        self.pool.claim(
            threads > 1,
            units.len(),
            || (Vec::new(), vec![0f32; scratch]),
            |(tile, scratch): &mut (Vec<f32>, Vec<f32>), u| {
                let (i, start, take) = units[u];
                let w = ws[i];
                // SAFETY: every unit is claimed by exactly one member, and the units of one
                // matrix cover disjoint columns of its output.
                unsafe { matmul_rows(isa, w, &xs, (start, take), &columns[i], tile, scratch) }
            },
        )
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Matrix<'w> = CpuMatrix<'w>;
    type Cache = CpuCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn matrix<'w>(&mut self, data: MatrixData<'w>) -> Result<CpuMatrix<'w>> {
        if !crate::quant::can_dequantize(data.dtype) {
            return Err(data.error(alloc::format!(
                "{} weights cannot be computed with",
                data.dtype
            )));
        }
        let row_bytes = data.row_bytes()?;
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
        // A prompt's rows are worth splitting; one row is not.
        self.pool.split(rows >= 16, out, n, |first, chunk| {
            let x = &x[first * n..];
            for (xr, yr) in x.chunks_exact(n).zip(chunk.chunks_exact_mut(n)) {
                let sum: f64 = xr.iter().map(|&v| f64::from(v * v)).sum();
                let mean = (sum / n as f64) as f32;
                let scale = 1.0 / libm::sqrtf(mean + eps);
                for ((y, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
                    *y = v * scale * w;
                }
            }
            Ok(())
        })
    }

    fn matmul(
        &mut self,
        w: &CpuMatrix<'_>,
        x: &Vec<f32>,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.matmuls(&[w], x, rows, &mut [out])
    }

    /// One encoding of the input for every matrix that reads it the same way, and the rows of
    /// all of them claimed by the team as one pool of work.
    fn matmuls(
        &mut self,
        ws: &[&CpuMatrix<'_>],
        x: &Vec<f32>,
        rows: usize,
        outs: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(Error::Invalid(alloc::format!(
                "internal: {} matrices but {} outputs",
                ws.len(),
                outs.len()
            )));
        }
        let mut first = 0;
        while first < ws.len() {
            // A run of matrices with the same input width and activation encoding.
            let (k, kind) = (ws[first].cols(), ActKind::for_weight(ws[first].dtype()));
            let run = ws[first..]
                .iter()
                .take_while(|w| w.cols() == k && ActKind::for_weight(w.dtype()) == kind)
                .count();
            let end = first + run;
            self.matmul_run(&ws[first..end], x, rows, &mut outs[first..end])?;
            first = end;
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
        self.pool.split(rows >= 16, x, width, |first, chunk| {
            let mut cos_sin = vec![(0f32, 0f32); half];
            for (i, row) in chunk.chunks_exact_mut(width).enumerate() {
                let mut angle = (pos0 + first + i) as f32;
                for cs in cos_sin.iter_mut() {
                    *cs = (libm::cosf(angle), libm::sinf(angle));
                    angle *= theta_scale;
                }
                for head in row.chunks_exact_mut(head_dim) {
                    let (a, b) = head.split_at_mut(half);
                    for ((x0, x1), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(&cos_sin) {
                        let (v0, v1) = (*x0, *x1);
                        // llama.cpp's C, built with FMA, contracts the first product of each.
                        *x0 = crate::quant::fmaf(v0, c, -(v1 * s));
                        *x1 = crate::quant::fmaf(v0, s, v1 * c);
                    }
                }
            }
            Ok(())
        })
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
        // An f16 cache is converted to f32 once per call, not once per query head: the heads
        // of a group share their key and value rows.
        let used = (pos0 + rows) * kv_width;
        let (keys, values) = match (k_cache, v_cache) {
            (CpuCache::F16(k), CpuCache::F16(v)) if group > 1 => {
                for (cache, wide) in [(k, &mut self.widened.0), (v, &mut self.widened.1)] {
                    wide.resize(used, 0.0);
                    self.pool
                        .split(used >= 1 << 16, wide, kv_width, |first, chunk| {
                            let at = first * kv_width;
                            isa.decode_f16(&cache[at..at + chunk.len()], chunk);
                            Ok(())
                        })?;
                }
                (
                    KvRows::Widened(&self.widened.0[..used]),
                    KvRows::Widened(&self.widened.1[..used]),
                )
            }
            _ => (k_cache.rows(), v_cache.rows()),
        };
        let head_major = &mut self.head_major;
        head_major.resize(rows * width, 0.0);
        self.pool
            .split(parallel, head_major, head_dim, |first, chunk| {
                let mut qh = vec![0f32; head_dim];
                let mut k = vec![0f32; head_dim];
                let mut v = vec![0f32; head_dim];
                let mut w = Vec::new();
                for (n, o) in chunk.chunks_exact_mut(head_dim).enumerate() {
                    let item = first + n;
                    let (h, i) = (item / rows, item % rows);
                    qh.copy_from_slice(&q[i * width + h * head_dim..][..head_dim]);
                    let head = AttnHead {
                        keys,
                        values,
                        stride: kv_width,
                        offset: (h / group) * head_dim,
                        len: pos0 + i + 1,
                        scale,
                    };
                    isa.attend(&mut qh, &head, &mut k, &mut v, &mut w, o);
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

#[cfg(all(test, feature = "std"))]
mod tests {
    use alloc::borrow::Cow;
    use alloc::string::ToString;

    use super::*;
    use crate::quant::dot::dot;
    use crate::synth::Rng;

    fn matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> MatrixData<'static> {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        let len = ty.bytes_for((rows * cols) as u64).unwrap_or(0) as usize;
        let mut bytes = vec![0u8; len];
        crate::quant::quantize(ty, &values, &mut bytes).unwrap();
        MatrixData {
            name: ty.to_string(),
            dtype: ty,
            rows,
            cols,
            bytes: Cow::Owned(bytes),
        }
    }

    /// Every unit runs exactly once whoever claims it, and an error stops the rest and comes
    /// back to the caller.
    #[test]
    fn claimed_units_run_once_and_errors_come_back() {
        use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads);
            for parallel in [false, true] {
                let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
                pool.claim(parallel, hits.len(), Vec::<usize>::new, |mine, u| {
                    mine.push(u);
                    hits[u].fetch_add(1, Relaxed);
                    Ok(())
                })
                .unwrap();
                assert!(
                    hits.iter().all(|h| h.load(Relaxed) == 1),
                    "{threads} threads"
                );
                let failed = pool.claim(
                    parallel,
                    1000,
                    || (),
                    |_, u| match u {
                        500 => Err(Error::Invalid("unit 500".into())),
                        _ => Ok(()),
                    },
                );
                assert!(
                    matches!(&failed, Err(Error::Invalid(m)) if m == "unit 500"),
                    "{failed:?}"
                );
            }
        }
    }

    /// Stacked products of ragged heights, in small batches (a few claimed units of weight rows
    /// per thread) and big ones (claimed tiles), on one to three threads: every output equals
    /// the reference kernel's dot of its weight row and input row, which the product must
    /// reproduce bit for bit.
    #[test]
    fn stacked_products_match_the_reference_on_every_split() {
        let mut rng = Rng::new(11);
        let cols = 256;
        for types in [
            [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q5_0],
            [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K],
            [GgmlType::F16, GgmlType::F32, GgmlType::BF16],
        ] {
            // An empty matrix among them must change nothing.
            let data: Vec<_> = types
                .iter()
                .chain(&types[..1])
                .zip([200, 0, 24, 333])
                .map(|(&ty, m)| matrix(ty, m, cols, &mut rng))
                .collect();
            for rows in [0, 1, 3, 7, 8, 37] {
                let x: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
                let mut expect: Vec<Vec<f32>> = Vec::new();
                for d in &data {
                    let kind = ActKind::for_weight(d.dtype);
                    let mut acts = Activations::default();
                    acts.encode(kind, &x, rows, cols).unwrap();
                    let row_bytes = d.bytes.len() / d.rows.max(1);
                    let mut scratch = vec![0f32; cols];
                    let mut out = vec![0f32; rows * d.rows];
                    for r in 0..rows {
                        for i in 0..d.rows {
                            let w = &d.bytes[i * row_bytes..(i + 1) * row_bytes];
                            let a = acts.row(r).unwrap();
                            out[r * d.rows + i] = dot(d.dtype, w, a, &mut scratch).unwrap();
                        }
                    }
                    expect.push(out);
                }
                for threads in [1, 2, 3] {
                    for isa in Isa::available() {
                        let mut cpu = Cpu::with_isa(threads, isa);
                        let ws: Vec<_> = data
                            .iter()
                            .map(|d| cpu.matrix(d.clone()).unwrap())
                            .collect();
                        let refs: Vec<&CpuMatrix<'_>> = ws.iter().collect();
                        let mut outs: Vec<Vec<f32>> =
                            data.iter().map(|d| vec![0f32; rows * d.rows]).collect();
                        let mut out_refs: Vec<&mut Vec<f32>> = outs.iter_mut().collect();
                        cpu.matmuls(&refs, &x, rows, &mut out_refs).unwrap();
                        assert_eq!(
                            outs,
                            expect,
                            "{types:?}, {rows} rows, {threads} threads, {}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}
