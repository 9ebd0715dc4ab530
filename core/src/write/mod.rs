//! Streaming writers for GGUF, SafeTensors and APR (native only).
//!
//! Each writer is told every tensor's name, type and shape up front, writes its header, then takes
//! the tensors one at a time in that order through [`TensorSink::write_tensor`]: the caller's
//! closure streams the raw bytes in, so no tensor is ever held whole in memory. Sizes are checked
//! as they arrive.

pub mod apr;
pub mod gguf;
pub mod safetensors;

use std::io::{self, Write};

use crate::dtype::GgmlType;
use crate::{Error, Result};

/// A tensor to write, under the name the target format uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    /// Name in the output file.
    pub name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Row-major shape.
    pub shape: Vec<u64>,
}

impl OutTensor {
    /// Number of values.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Raw size in bytes.
    pub fn size(&self) -> Result<u64> {
        self.dtype.bytes_for(self.elements()).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: {} values are not whole {} blocks",
                self.name,
                self.elements(),
                self.dtype
            ))
        })
    }
}

/// Fills one tensor's raw bytes into a writer.
pub type Fill<'f> = &'f mut dyn FnMut(&mut dyn Write) -> Result<()>;

/// A writer that takes tensors one by one.
pub trait TensorSink {
    /// Writes the next tensor; `fill` streams its raw (uncompressed) bytes.
    fn write_tensor(&mut self, fill: Fill<'_>) -> Result<()>;
    /// Writes whatever follows the last tensor and flushes.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Counts (and optionally checksums) what passes through.
pub(crate) struct Counter<'w, W: Write + ?Sized> {
    pub inner: &'w mut W,
    pub count: u64,
    pub crc: Option<&'w mut crc32fast::Hasher>,
}

impl<W: Write + ?Sized> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        if let Some(crc) = self.crc.as_deref_mut() {
            crc.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `n` zero bytes.
pub(crate) fn zeros(w: &mut dyn Write, n: u64) -> io::Result<()> {
    const Z: [u8; 64] = [0; 64];
    let mut left = n;
    while left > 0 {
        let k = left.min(64) as usize;
        w.write_all(&Z[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// `x` rounded up to a multiple of `a`.
pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Runs `fill` through a counter and checks it wrote exactly `expected` bytes.
pub(crate) fn fill_exact(
    w: &mut dyn Write,
    name: &str,
    expected: u64,
    fill: Fill<'_>,
) -> Result<()> {
    let mut counter = Counter {
        inner: w,
        count: 0,
        crc: None,
    };
    fill(&mut counter)?;
    if counter.count != expected {
        return Err(Error::Invalid(format!(
            "{name}: wrote {} bytes, expected {expected}",
            counter.count
        )));
    }
    Ok(())
}
