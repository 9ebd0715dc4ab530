//! [`Either`]: one of two backends, chosen at run time, behind the same [`Backend`] trait, so a
//! program can pick the CPU or the GPU from a flag and run one copy of its code over both.
//!
//! Buffers, matrices and caches carry the side that made them. An op handed values from the
//! other side is an internal error, never a silent copy.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::{AttnShape, Backend, KvType, MatrixData, Pending};
use crate::{Error, Result};

/// The left backend or the right one.
#[derive(Debug)]
pub enum Either<L, R> {
    /// The first backend (the CPU, by convention).
    Left(L),
    /// The second backend.
    Right(R),
}

fn mixed(op: &str) -> Error {
    Error::Invalid(alloc::format!(
        "internal: {op} was given values from two different backends"
    ))
}

/// Every item's value on one side, or an error when one is from the other side.
fn sides<T>(items: impl Iterator<Item = Option<T>>) -> Result<Vec<T>> {
    items.map(|i| i.ok_or_else(|| mixed("matmuls"))).collect()
}

/// Runs `$body` with `$b` bound to the backend and each `$v` to its side's value, or fails when
/// the values come from the other side.
macro_rules! both {
    ($self:expr, $op:literal, |$b:ident $(, $v:ident)*| $body:expr) => {
        match $self {
            Either::Left($b) => {
                $(let Either::Left($v) = $v else { return Err(mixed($op)) };)*
                $body
            }
            Either::Right($b) => {
                $(let Either::Right($v) = $v else { return Err(mixed($op)) };)*
                $body
            }
        }
    };
}

impl<L: Backend, R: Backend> Backend for Either<L, R> {
    type Buf = Either<L::Buf, R::Buf>;
    type Matrix<'w> = Either<L::Matrix<'w>, R::Matrix<'w>>;
    type Cache = Either<L::Cache, R::Cache>;

    fn name(&self) -> &'static str {
        match self {
            Self::Left(b) => b.name(),
            Self::Right(b) => b.name(),
        }
    }

    fn max_buffer_len(&self) -> usize {
        match self {
            Self::Left(b) => b.max_buffer_len(),
            Self::Right(b) => b.max_buffer_len(),
        }
    }

    fn matrix<'w>(&mut self, data: MatrixData<'w>) -> Result<Self::Matrix<'w>> {
        Ok(match self {
            Self::Left(b) => Either::Left(b.matrix(data)?),
            Self::Right(b) => Either::Right(b.matrix(data)?),
        })
    }

    fn upload(&mut self, values: &[f32]) -> Result<Self::Buf> {
        Ok(match self {
            Self::Left(b) => Either::Left(b.upload(values)?),
            Self::Right(b) => Either::Right(b.upload(values)?),
        })
    }

    fn zeros(&mut self, len: usize) -> Result<Self::Buf> {
        Ok(match self {
            Self::Left(b) => Either::Left(b.zeros(len)?),
            Self::Right(b) => Either::Right(b.zeros(len)?),
        })
    }

    fn read(&mut self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()> {
        both!(self, "read", |b, buf| b.read(buf, offset, out))
    }

    fn read_async<'a>(
        &'a mut self,
        buf: &'a Self::Buf,
        offset: usize,
        len: usize,
    ) -> Pending<'a, Vec<f32>> {
        match (self, buf) {
            (Self::Left(b), Either::Left(buf)) => b.read_async(buf, offset, len),
            (Self::Right(b), Either::Right(buf)) => b.read_async(buf, offset, len),
            _ => Box::pin(core::future::ready(Err(mixed("read")))),
        }
    }

    fn embed(
        &mut self,
        table: &Self::Matrix<'_>,
        tokens: &[u32],
        out: &mut Self::Buf,
    ) -> Result<()> {
        both!(self, "embed", |b, table, out| b.embed(table, tokens, out))
    }

    fn rms_norm(
        &mut self,
        x: &Self::Buf,
        weight: &Self::Buf,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        both!(self, "rms_norm", |b, x, weight, out| b
            .rms_norm(x, weight, eps, rows, out))
    }

    fn matmul(
        &mut self,
        w: &Self::Matrix<'_>,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        both!(self, "matmul", |b, w, x, out| b.matmul(w, x, rows, out))
    }

    fn matmuls(
        &mut self,
        ws: &[&Self::Matrix<'_>],
        x: &Self::Buf,
        rows: usize,
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        // Unwrapped into the side's own lists, so its batched implementation runs.
        match (self, x) {
            (Self::Left(b), Either::Left(x)) => {
                let ws = sides(ws.iter().map(|w| match w {
                    Either::Left(w) => Some(w),
                    Either::Right(_) => None,
                }))?;
                let mut outs = sides(outs.iter_mut().map(|o| match &mut **o {
                    Either::Left(o) => Some(o),
                    Either::Right(_) => None,
                }))?;
                b.matmuls(&ws, x, rows, &mut outs)
            }
            (Self::Right(b), Either::Right(x)) => {
                let ws = sides(ws.iter().map(|w| match w {
                    Either::Right(w) => Some(w),
                    Either::Left(_) => None,
                }))?;
                let mut outs = sides(outs.iter_mut().map(|o| match &mut **o {
                    Either::Right(o) => Some(o),
                    Either::Left(_) => None,
                }))?;
                b.matmuls(&ws, x, rows, &mut outs)
            }
            _ => Err(mixed("matmuls")),
        }
    }

    fn add_bias(&mut self, x: &mut Self::Buf, bias: &Self::Buf, rows: usize) -> Result<()> {
        both!(self, "add_bias", |b, x, bias| b.add_bias(x, bias, rows))
    }

    fn rope(
        &mut self,
        x: &mut Self::Buf,
        rows: usize,
        heads: usize,
        head_dim: usize,
        pos0: usize,
        theta: f32,
    ) -> Result<()> {
        both!(self, "rope", |b, x| b
            .rope(x, rows, heads, head_dim, pos0, theta))
    }

    fn cache(&mut self, len: usize, ty: KvType) -> Result<Self::Cache> {
        Ok(match self {
            Self::Left(b) => Either::Left(b.cache(len, ty)?),
            Self::Right(b) => Either::Right(b.cache(len, ty)?),
        })
    }

    fn store(
        &mut self,
        src: &Self::Buf,
        cache: &mut Self::Cache,
        row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        both!(self, "store", |b, src, cache| b
            .store(src, cache, row, rows, width))
    }

    fn copy_rows(
        &mut self,
        src: &Self::Buf,
        src_row: usize,
        dst: &mut Self::Buf,
        dst_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        both!(self, "copy_rows", |b, src, dst| b
            .copy_rows(src, src_row, dst, dst_row, rows, width))
    }

    fn attention(
        &mut self,
        q: &Self::Buf,
        k_cache: &Self::Cache,
        v_cache: &Self::Cache,
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()> {
        both!(self, "attention", |b, q, k_cache, v_cache, out| b
            .attention(q, k_cache, v_cache, shape, out))
    }

    fn silu_mul(&mut self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        both!(self, "silu_mul", |b, gate, up| b.silu_mul(gate, up, len))
    }

    fn argmax(&mut self, x: &Self::Buf, rows: usize, width: usize) -> Result<Vec<u32>> {
        both!(self, "argmax", |b, x| b.argmax(x, rows, width))
    }

    fn argmax_async<'a>(
        &'a mut self,
        x: &'a Self::Buf,
        rows: usize,
        width: usize,
    ) -> Pending<'a, Vec<u32>> {
        match (self, x) {
            (Self::Left(b), Either::Left(x)) => b.argmax_async(x, rows, width),
            (Self::Right(b), Either::Right(x)) => b.argmax_async(x, rows, width),
            _ => Box::pin(core::future::ready(Err(mixed("argmax")))),
        }
    }

    fn add(&mut self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()> {
        both!(self, "add", |b, x, y| b.add(x, y, len))
    }
}
