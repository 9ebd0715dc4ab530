//! APR writer: header, metadata and index are reserved up front (their sizes do not depend on the
//! data) and written last, once compressed sizes are known; the footer CRC is combined from the
//! CRC of the head and the CRC of the streamed data.

use std::io::{Seek, SeekFrom, Write};

use super::{Counter, Fill, OutTensor, TensorSink, align_up, fill_exact, zeros};
use crate::dtype::GgmlType;
use crate::format::apr::{
    ALIGN, Compression, FLAG_HAS_VOCAB, FLAG_LZ4, FLAG_QUANTIZED, FLAG_ROW_MAJOR, FLAG_ZSTD,
    HEADER_LEN, Header, IndexEntry,
};
use crate::{Error, Result};

/// Writes one APR file.
#[derive(Debug)]
pub struct AprWriter<W: Write + Seek> {
    out: W,
    header: Header,
    metadata: Vec<u8>,
    /// Index entries in write order; offsets and sizes fill in as tensors arrive.
    entries: Vec<IndexEntry>,
    expected: Vec<u64>,
    next: usize,
    /// Bytes written into the data section so far.
    data_pos: u64,
    data_crc: crc32fast::Hasher,
    compression: Compression,
    level: i32,
}

impl<W: Write + Seek> AprWriter<W> {
    /// Reserves the head of the file. `level` is the Zstd level (ignored otherwise).
    pub fn new(
        mut out: W,
        metadata: &serde_json::Value,
        tensors: &[OutTensor],
        compression: Compression,
        level: i32,
        has_vocab: bool,
    ) -> Result<Self> {
        let mut meta = serde_json::to_vec(metadata)
            .map_err(|e| Error::Invalid(format!("APR metadata: {e}")))?;
        meta.resize(align_up(meta.len() as u64, ALIGN) as usize, 0);
        let metadata_size = u32::try_from(meta.len())
            .map_err(|_| Error::Invalid("APR metadata is larger than 4 GiB".into()))?;
        let index_len: usize = tensors
            .iter()
            .map(|t| IndexEntry::encoded_len(&t.name, t.shape.len()))
            .sum();
        let index_offset = HEADER_LEN as u64 + meta.len() as u64;
        let data_offset = align_up(index_offset + index_len as u64, ALIGN);
        let mut flags = FLAG_ROW_MAJOR;
        flags |= match compression {
            Compression::None => 0,
            Compression::Lz4 => FLAG_LZ4,
            Compression::Zstd => FLAG_ZSTD,
        };
        if tensors.iter().any(|t| t.dtype.block_size() > 1) {
            flags |= FLAG_QUANTIZED;
        }
        if has_vocab {
            flags |= FLAG_HAS_VOCAB;
        }
        let header = Header {
            version: (2, 0),
            flags,
            tensor_count: u32::try_from(tensors.len())
                .map_err(|_| Error::Invalid("too many tensors".into()))?,
            metadata_offset: HEADER_LEN as u64,
            metadata_size,
            index_offset,
            data_offset,
        };
        // Placeholder head; rewritten by `finish`.
        zeros(&mut out, data_offset)?;
        let mut expected = Vec::with_capacity(tensors.len());
        let mut entries = Vec::with_capacity(tensors.len());
        for t in tensors {
            if !crate::format::apr::STORED_TYPES.contains(&t.dtype) {
                return Err(Error::Invalid(format!(
                    "{}: APR cannot store {} tensors",
                    t.name, t.dtype
                )));
            }
            if t.name.len() > usize::from(u16::MAX) {
                return Err(Error::Invalid(format!("tensor name too long: {}", t.name)));
            }
            expected.push(t.size()?);
            entries.push(IndexEntry {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                offset: 0,
                size: 0,
            });
        }
        Ok(Self {
            out,
            header,
            metadata: meta,
            entries,
            expected,
            next: 0,
            data_pos: 0,
            data_crc: crc32fast::Hasher::new(),
            compression,
            level,
        })
    }
}

impl<W: Write + Seek> TensorSink for AprWriter<W> {
    fn write_tensor(&mut self, fill: Fill<'_>) -> Result<()> {
        let i = self.next;
        let (Some(entry), Some(&expected)) = (self.entries.get(i), self.expected.get(i)) else {
            return Err(Error::Invalid("more tensors than announced".into()));
        };
        let name = entry.name.clone();
        let start = align_up(self.data_pos, ALIGN);
        let mut counter = Counter {
            inner: &mut self.out,
            count: 0,
            crc: Some(&mut self.data_crc),
        };
        zeros(&mut counter, start - self.data_pos)?;
        counter.count = 0;
        match self.compression {
            Compression::None => fill_exact(&mut counter, &name, expected, fill)?,
            Compression::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(&mut counter);
                fill_exact(&mut enc, &name, expected, fill)?;
                enc.finish()
                    .map_err(|e| Error::Invalid(format!("LZ4: {e}")))?;
            }
            Compression::Zstd => zstd_tensor(&mut counter, &name, expected, self.level, fill)?,
        }
        let stored = counter.count;
        let entry = &mut self.entries[i];
        entry.offset = start;
        entry.size = stored;
        self.data_pos = start + stored;
        self.next += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.entries.len() {
            return Err(Error::Invalid("fewer tensors than announced".into()));
        }
        // The index is sorted by name; offsets keep the write order.
        let mut sorted: Vec<&IndexEntry> = self.entries.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut head = Vec::with_capacity(self.header.data_offset as usize);
        head.extend_from_slice(&self.header.to_bytes());
        head.extend_from_slice(&self.metadata);
        for e in sorted {
            e.encode(&mut head);
        }
        head.resize(self.header.data_offset as usize, 0);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&self.data_crc);
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&head)?;
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(feature = "zstd-native")]
fn zstd_tensor(
    w: &mut dyn Write,
    name: &str,
    expected: u64,
    level: i32,
    fill: Fill<'_>,
) -> Result<()> {
    let mut enc = zstd::stream::write::Encoder::new(w, level)?;
    // Big tensors are compressed on every core (zstd splits them into jobs of a few MiB; the
    // frame decodes the same). High levels take minutes per gigabyte on one.
    if expected >= 8 << 20 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        enc.multithread(u32::try_from(cores).unwrap_or(1))?;
    }
    enc.set_pledged_src_size(Some(expected))?;
    enc.include_checksum(false)?;
    fill_exact(&mut enc, name, expected, fill)?;
    enc.finish()?;
    Ok(())
}

#[cfg(not(feature = "zstd-native"))]
fn zstd_tensor(
    w: &mut dyn Write,
    name: &str,
    expected: u64,
    _level: i32,
    fill: Fill<'_>,
) -> Result<()> {
    // The pure-Rust encoder pulls from a reader, so the tensor is gathered first.
    let mut raw = Vec::new();
    fill_exact(&mut raw, name, expected, fill)?;
    ruzstd::encoding::compress(&raw[..], w, ruzstd::encoding::CompressionLevel::Fastest);
    Ok(())
}

/// Whether a dtype is a block quant (used for the QUANTIZED flag).
pub fn is_quantized(t: GgmlType) -> bool {
    t.block_size() > 1
}
