//! SafeTensors writer. The header is built and validated by the `safetensors` crate's own
//! `Metadata`; the data is streamed tensor by tensor.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use safetensors::tensor::{Metadata as StMetadata, TensorInfo};

use super::{Fill, OutTensor, TensorSink, fill_exact};
use crate::format::safetensors::st_dtype;
use crate::{Error, Result};

/// Writes one SafeTensors file.
#[derive(Debug)]
pub struct SafetensorsWriter<W: Write> {
    out: W,
    tensors: Vec<(String, u64)>,
    next: usize,
}

impl<W: Write> SafetensorsWriter<W> {
    /// Writes the header. Every dtype must be one SafeTensors has (F32, F16, BF16, ...).
    pub fn new(
        mut out: W,
        metadata: HashMap<String, String>,
        tensors: &[OutTensor],
    ) -> Result<Self> {
        let mut infos = Vec::with_capacity(tensors.len());
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut offset = 0usize;
        for t in tensors {
            let dtype = st_dtype(t.dtype).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: SafeTensors cannot hold {} tensors; dequantize with --dtype f32|f16|bf16",
                    t.name, t.dtype
                ))
            })?;
            let size = t.size()?;
            let end = offset + size as usize;
            infos.push((
                t.name.clone(),
                TensorInfo {
                    dtype,
                    shape: t.shape.iter().map(|&d| d as usize).collect(),
                    data_offsets: (offset, end),
                },
            ));
            sizes.push((t.name.clone(), size));
            offset = end;
        }
        let bad = |e: &dyn core::fmt::Display| Error::Invalid(format!("SafeTensors header: {e}"));
        // The crate checks the layout; the header is written here, with `__metadata__` in key
        // order, so that the same input always gives the same bytes (the crate's map has none).
        let mut header = serde_json::Map::new();
        let sorted: BTreeMap<&String, &String> = metadata.iter().collect();
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(sorted).map_err(|e| bad(&e))?,
        );
        for (name, info) in &infos {
            header.insert(
                name.clone(),
                serde_json::to_value(info).map_err(|e| bad(&e))?,
            );
        }
        StMetadata::new(Some(metadata), infos).map_err(|e| bad(&e))?;
        let mut json = serde_json::to_vec(&header).map_err(|e| bad(&e))?;
        // The data starts 8-byte aligned, padded with spaces as the crate does.
        let padded = json.len().div_ceil(8) * 8;
        json.resize(padded, b' ');
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(Self {
            out,
            tensors: sizes,
            next: 0,
        })
    }
}

impl<W: Write> TensorSink for SafetensorsWriter<W> {
    fn write_tensor(&mut self, fill: Fill<'_>) -> Result<()> {
        let Some((name, size)) = self.tensors.get(self.next) else {
            return Err(Error::Invalid("more tensors than announced".into()));
        };
        fill_exact(&mut self.out, name, *size, fill)?;
        self.next += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.tensors.len() {
            return Err(Error::Invalid("fewer tensors than announced".into()));
        }
        self.out.flush()?;
        Ok(())
    }
}
