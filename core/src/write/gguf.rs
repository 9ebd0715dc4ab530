//! GGUF v3 writer.

use std::io::Write;

use super::{Fill, OutTensor, TensorSink, align_up, fill_exact, zeros};
use crate::Result;
use crate::meta::{MetaValue, Metadata};

/// Writes a GGUF v3 file: header, metadata, tensor infos (dims innermost first), then the data
/// with every tensor aligned to `alignment`.
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<(OutTensor, u64)>,
    next: usize,
    pos: u64,
    alignment: u64,
    data_start: u64,
    offsets: Vec<u64>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value_body(b: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(u8::from(*x)),
        MetaValue::String(s) => put_str(b, s),
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(item, values) => {
            b.extend_from_slice(&item.id().to_le_bytes());
            b.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                put_value_body(b, v);
            }
        }
    }
}

/// Encodes the metadata section (without the header).
pub fn encode_metadata(metadata: &Metadata) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in metadata.entries() {
        put_str(&mut b, k);
        b.extend_from_slice(&v.value_type().id().to_le_bytes());
        put_value_body(&mut b, v);
    }
    b
}

impl<W: Write> GgufWriter<W> {
    /// Writes everything before the data. `alignment` must be a power of two; it is recorded as
    /// `general.alignment` unless it is the default 32.
    pub fn new(
        mut out: W,
        metadata: &Metadata,
        tensors: &[OutTensor],
        alignment: u64,
    ) -> Result<Self> {
        let mut meta = metadata.clone();
        if alignment != 32 {
            meta.set(
                "general.alignment",
                MetaValue::U32(u32::try_from(alignment).unwrap_or(32)),
            );
        }
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        head.extend_from_slice(&encode_metadata(&meta));
        let mut offset = 0u64;
        let mut sized = Vec::with_capacity(tensors.len());
        let mut offsets = Vec::with_capacity(tensors.len());
        for t in tensors {
            let size = t.size()?;
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.dtype.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = align_up(offset + size, alignment);
            sized.push((t.clone(), size));
        }
        let data_start = align_up(head.len() as u64, alignment);
        out.write_all(&head)?;
        zeros(&mut out, data_start - head.len() as u64)?;
        Ok(Self {
            out,
            tensors: sized,
            next: 0,
            pos: data_start,
            alignment,
            data_start,
            offsets,
        })
    }
}

impl<W: Write> TensorSink for GgufWriter<W> {
    fn write_tensor(&mut self, fill: Fill<'_>) -> Result<()> {
        let Some((t, size)) = self.tensors.get(self.next) else {
            return Err(crate::Error::Invalid("more tensors than announced".into()));
        };
        let start = self.data_start + self.offsets[self.next];
        zeros(&mut self.out, start - self.pos)?;
        fill_exact(&mut self.out, &t.name, *size, fill)?;
        self.pos = start + size;
        self.next += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.tensors.len() {
            return Err(crate::Error::Invalid("fewer tensors than announced".into()));
        }
        // Pad the last tensor like the others, as llama.cpp's writer does.
        let end = align_up(self.pos, self.alignment);
        zeros(&mut self.out, end - self.pos)?;
        self.out.flush()?;
        Ok(())
    }
}
