//! APR, apr's own container (`docs/apr-format.md` is the full description).
//!
//! ```text
//! 0    header, 64 bytes: "APR\0", version 2.0, flags, tensor count, metadata offset/size,
//!      tensor-index offset, data offset, CRC32 of the header (bytes 0..40 and 44..64)
//! 64   metadata: JSON, zero-padded to 64
//!      tensor index: per tensor u16 name length, name, u8 ggml type id, u8 ndim, u64 dims
//!      (row-major, outermost first), u64 offset from the data section, u64 stored size;
//!      zero-padded to 64
//!      data: each tensor on a 64-byte boundary, raw or as one LZ4/Zstd frame
//! end  u32 CRC32 of every byte before it
//! ```
//!
//! Files written by the original `apr` tool (same header, no footer CRC, its own flat JSON keys)
//! are read too; see [`AprFile::legacy`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::dtype::{GgmlType, TypeId};

/// `APR\0`.
pub const MAGIC: [u8; 4] = *b"APR\0";
/// Header size; also the alignment of every section and tensor.
pub const ALIGN: u64 = 64;
/// Header length.
pub const HEADER_LEN: usize = 64;
/// Flag: tensors are LZ4 frames.
pub const FLAG_LZ4: u16 = 1 << 0;
/// Flag: tensors are Zstd frames.
pub const FLAG_ZSTD: u16 = 1 << 1;
/// Flag: some tensors hold ggml quant blocks.
pub const FLAG_QUANTIZED: u16 = 1 << 5;
/// Flag: the metadata carries a tokenizer.
pub const FLAG_HAS_VOCAB: u16 = 1 << 9;
/// Flag: tensors are row-major (always set).
pub const FLAG_ROW_MAJOR: u16 = 1 << 10;
/// The metadata key that marks a file written by this implementation.
pub const WRITER_KEY: &str = "apr_writer";
/// The tensor types an APR file may hold (by ggml id: 0, 1, 2, 3, 6, 7, 8, 10..=14, 30).
pub const STORED_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::BF16,
];
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;

/// How a tensor's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// As they are.
    None,
    /// One LZ4 frame.
    Lz4,
    /// One Zstd frame.
    Zstd,
}

impl Compression {
    /// `none`, `lz4` or `zstd`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Why an APR file was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AprError {
    /// Too short to hold a header and footer.
    #[error("truncated: {len} bytes cannot hold the 64-byte header and 4-byte footer")]
    TooShort {
        /// File length.
        len: u64,
    },
    /// Not `APR\0`.
    #[error("bad magic {0:02x?}, expected \"APR\\0\"")]
    BadMagic([u8; 4]),
    /// A version this reader does not know.
    #[error("unsupported APR version {0}.{1} (this reader supports 2.x)")]
    UnsupportedVersion(u8, u8),
    /// Header CRC mismatch.
    #[error("header CRC32 mismatch: stored {stored:08x}, computed {computed:08x}")]
    HeaderCrc {
        /// In the file.
        stored: u32,
        /// Over the bytes.
        computed: u32,
    },
    /// Footer CRC mismatch.
    #[error(
        "file CRC32 mismatch: stored {stored:08x}, computed {computed:08x} (the file is corrupt)"
    )]
    FooterCrc {
        /// In the file.
        stored: u32,
        /// Over the bytes.
        computed: u32,
    },
    /// Both LZ4 and Zstd flags.
    #[error("flags {0:#06x} set both LZ4 and ZSTD")]
    BadFlags(u16),
    /// A section lies outside the file.
    #[error("{section} at {offset}..{end} lies outside the file ({len} bytes)")]
    OutOfBounds {
        /// Which section.
        section: &'static str,
        /// Start.
        offset: u64,
        /// End.
        end: u64,
        /// File length.
        len: u64,
    },
    /// Metadata is not JSON.
    #[error("metadata is not valid JSON: {0}")]
    Metadata(String),
    /// The tensor index ended early or says something impossible.
    #[error("tensor index entry {index}: {reason}")]
    BadIndex {
        /// Entry number.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// More tensors than the index could hold.
    #[error("tensor count {count} cannot fit in a {len}-byte index")]
    TooManyTensors {
        /// Claimed count.
        count: u64,
        /// Index bytes available.
        len: u64,
    },
    /// Two tensors with one name.
    #[error("duplicate tensor {0:?}")]
    DuplicateTensor(String),
    /// A tensor's data is not 64-byte aligned.
    #[error("tensor {name:?} data at {offset} is not 64-byte aligned")]
    Misaligned {
        /// Tensor.
        name: String,
        /// Absolute offset.
        offset: u64,
    },
    /// A tensor's stored size disagrees with its dtype and shape.
    #[error("tensor {name:?}: {stored} bytes stored, {dtype} {shape:?} needs {expected}")]
    BadSize {
        /// Tensor.
        name: String,
        /// Type.
        dtype: GgmlType,
        /// Shape.
        shape: Vec<u64>,
        /// Stored bytes.
        stored: u64,
        /// Required bytes.
        expected: u64,
    },
    /// Tensors share bytes.
    #[error("tensors {0:?} and {1:?} overlap")]
    Overlap(String, String),
    /// A compressed tensor did not decode to its size.
    #[error("tensor {name:?}: {reason}")]
    Decompress {
        /// Tensor.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// The fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Major, minor.
    pub version: (u8, u8),
    /// Flag bits.
    pub flags: u16,
    /// Number of tensors.
    pub tensor_count: u32,
    /// Metadata offset.
    pub metadata_offset: u64,
    /// Metadata size (padding included).
    pub metadata_size: u32,
    /// Tensor index offset.
    pub index_offset: u64,
    /// Data section offset.
    pub data_offset: u64,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Header {
    /// Encodes the header with its CRC.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.version.0;
        b[5] = self.version.1;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.tensor_count.to_le_bytes());
        b[12..20].copy_from_slice(&self.metadata_offset.to_le_bytes());
        b[20..24].copy_from_slice(&self.metadata_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_offset.to_le_bytes());
        let crc = header_crc(&b);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn parse(b: &[u8]) -> Result<Self, AprError> {
        if b.len() < HEADER_LEN {
            return Err(AprError::TooShort {
                len: b.len() as u64,
            });
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(AprError::BadMagic(magic));
        }
        if b[4] != 2 {
            return Err(AprError::UnsupportedVersion(b[4], b[5]));
        }
        let stored = le_u32(b, 40);
        let computed = header_crc(b);
        if stored != computed {
            return Err(AprError::HeaderCrc { stored, computed });
        }
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & FLAG_LZ4 != 0 && flags & FLAG_ZSTD != 0 {
            return Err(AprError::BadFlags(flags));
        }
        Ok(Self {
            version: (b[4], b[5]),
            flags,
            tensor_count: le_u32(b, 8),
            metadata_offset: le_u64(b, 12),
            metadata_size: le_u32(b, 20),
            index_offset: le_u64(b, 24),
            data_offset: le_u64(b, 32),
        })
    }

    /// The compression the flags select.
    pub fn compression(&self) -> Compression {
        if self.flags & FLAG_LZ4 != 0 {
            Compression::Lz4
        } else if self.flags & FLAG_ZSTD != 0 {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// CRC32 of header bytes 0..40 and 44..64.
pub fn header_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..40]);
    h.update(&b[44..64]);
    h.finalize()
}

/// One tensor index entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Name as stored.
    pub name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Row-major dims, outermost first.
    pub shape: Vec<u64>,
    /// Offset from the data section.
    pub offset: u64,
    /// Bytes stored.
    pub size: u64,
}

impl IndexEntry {
    /// Encoded length.
    pub fn encoded_len(name: &str, ndim: usize) -> usize {
        2 + name.len() + 1 + 1 + 8 * ndim + 8 + 8
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        #[allow(clippy::cast_possible_truncation)]
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        #[allow(clippy::cast_possible_truncation)]
        out.push(self.dtype.id() as u8);
        #[allow(clippy::cast_possible_truncation)]
        out.push(self.shape.len() as u8);
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
    }
}

/// A validated APR file borrowing its bytes.
#[derive(Debug, Clone)]
pub struct AprFile<'a> {
    /// The header.
    pub header: Header,
    /// The metadata JSON.
    pub metadata: serde_json::Value,
    /// The tensor index in file order.
    pub index: Vec<IndexEntry>,
    /// Per tensor, its stored bytes.
    pub data: Vec<&'a [u8]>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Written by the original `apr` tool: its own metadata keys, and a footer CRC that may be
    /// absent.
    pub legacy: bool,
    /// Whether a footer CRC was present and verified.
    pub footer_verified: bool,
}

/// The footer CRC of a file: what its last four bytes store and what the bytes before them hash
/// to. They differ only in a damaged file or one of the original tool's, which may have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// The last four bytes, little-endian.
    pub stored: u32,
    /// CRC32 of every byte before them.
    pub computed: u32,
}

/// Computes a [`Footer`] piece by piece, for a file read in slices.
#[derive(Clone, Debug, Default)]
pub struct FooterCrc(crc32fast::Hasher);

impl FooterCrc {
    /// Nothing hashed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes the next bytes of the file (all but its last four, in order).
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The footer, given the file's last four bytes.
    pub fn finish(self, last: [u8; 4]) -> Footer {
        Footer {
            stored: u32::from_le_bytes(last),
            computed: self.0.finalize(),
        }
    }
}

impl<'a> AprFile<'a> {
    /// Parses and validates everything but the compressed payloads.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, AprError> {
        Self::parse_with_release(bytes, &|_| {})
    }

    /// Like [`AprFile::parse`]; `release` is handed each stretch of the file once the footer CRC
    /// has read it, so a caller with a memory map can drop those pages.
    pub fn parse_with_release(bytes: &'a [u8], release: &dyn Fn(&[u8])) -> Result<Self, AprError> {
        let mut crc = FooterCrc::new();
        let footer = match bytes.len().checked_sub(4) {
            Some(at) if bytes.len() >= HEADER_LEN + 4 => {
                for part in bytes[..at].chunks(64 << 20) {
                    crc.update(part);
                    release(part);
                }
                crc.finish([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
            }
            // Too short for a footer: `parse_head` says so.
            _ => crc.finish([0; 4]),
        };
        Self::parse_head(bytes, bytes.len() as u64, footer)
    }

    /// Parses a file of `file_len` bytes from its first bytes, `head`, and its [`Footer`]
    /// (computed by the caller over the whole file): `head` must hold the header, the metadata
    /// and the tensor index. Everything is checked as [`AprFile::parse`] checks it, and tensors
    /// that lie beyond `head` get empty `data`.
    pub fn parse_head(head: &'a [u8], file_len: u64, footer: Footer) -> Result<Self, AprError> {
        let (bytes, len) = (head, file_len);
        if len < (HEADER_LEN + 4) as u64 || bytes.len() < HEADER_LEN {
            if bytes.len() >= 4 && bytes[..4] != MAGIC {
                return Err(AprError::BadMagic([bytes[0], bytes[1], bytes[2], bytes[3]]));
            }
            return Err(AprError::TooShort {
                len: len.min(bytes.len() as u64),
            });
        }
        let header = Header::parse(bytes)?;
        // A range of the file that must lie inside `head`.
        let in_head = |name: &'static str, range: core::ops::Range<usize>| {
            bytes.get(range.clone()).ok_or(AprError::OutOfBounds {
                section: name,
                offset: range.start as u64,
                end: range.end as u64,
                len: bytes.len() as u64,
            })
        };
        let section = |name: &'static str, offset: u64, size: u64, limit: u64| {
            let end = offset.saturating_add(size);
            if offset < HEADER_LEN as u64 || end > limit {
                Err(AprError::OutOfBounds {
                    section: name,
                    offset,
                    end,
                    len: limit,
                })
            } else {
                Ok(offset as usize..end as usize)
            }
        };
        let meta_range = section(
            "metadata",
            header.metadata_offset,
            header.metadata_size.into(),
            len,
        )?;
        let meta_bytes = in_head("metadata", meta_range)?;
        let meta_end = meta_bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        let meta_bytes = &meta_bytes[..meta_end];
        // Our files carry the writer key and always end in a CRC; the original tool's may not.
        // Deciding this from the raw bytes lets a corrupt file fail before any JSON is parsed.
        let marker = alloc::format!("\"{WRITER_KEY}\"");
        let legacy = !meta_bytes
            .windows(marker.len())
            .any(|w| w == marker.as_bytes());

        let footer_verified = footer.stored == footer.computed;
        if !footer_verified && !legacy {
            return Err(AprError::FooterCrc {
                stored: footer.stored,
                computed: footer.computed,
            });
        }
        let body_len = if footer_verified { len - 4 } else { len };

        // The index runs to the data section if that follows it, else to the end of the body.
        let index_end = if header.data_offset > header.index_offset {
            header.data_offset
        } else {
            body_len
        };
        let index_range = section(
            "tensor index",
            header.index_offset,
            index_end.saturating_sub(header.index_offset),
            body_len,
        )?;
        let index_bytes = in_head("tensor index", index_range)?;
        let count = u64::from(header.tensor_count);
        let min_entry = IndexEntry::encoded_len("", 0) as u64;
        if count.saturating_mul(min_entry) > index_bytes.len() as u64 {
            return Err(AprError::TooManyTensors {
                count,
                len: index_bytes.len() as u64,
            });
        }
        section("data", header.data_offset, 0, body_len)?;
        let data_len = body_len - header.data_offset;

        let mut index = Vec::with_capacity(header.tensor_count as usize);
        let mut pos = 0usize;
        for i in 0..count {
            let bad = |reason: &str| AprError::BadIndex {
                index: i,
                reason: reason.to_string(),
            };
            let take = |pos: &mut usize, n: usize| -> Result<&[u8], AprError> {
                let s = index_bytes
                    .get(*pos..*pos + n)
                    .ok_or_else(|| bad("runs past the end of the index"))?;
                *pos += n;
                Ok(s)
            };
            let name_len = usize::from(u16::from_le_bytes([
                take(&mut pos, 1)?[0],
                take(&mut pos, 1)?[0],
            ]));
            let name = core::str::from_utf8(take(&mut pos, name_len)?)
                .map_err(|_| bad("name is not UTF-8"))?
                .to_string();
            let id = take(&mut pos, 1)?[0];
            let dtype = match GgmlType::from_id(id.into()) {
                TypeId::Known(t) if STORED_TYPES.contains(&t) => t,
                _ => {
                    return Err(bad(&alloc::format!(
                        "unknown dtype id {id} for {name:?} (APR stores F32, F16, BF16, Q4_0, \
                         Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K)"
                    )));
                }
            };
            let ndim = usize::from(take(&mut pos, 1)?[0]);
            if ndim > MAX_DIMS {
                return Err(bad(&alloc::format!(
                    "{name:?} has {ndim} dimensions (at most {MAX_DIMS})"
                )));
            }
            let mut shape = Vec::with_capacity(ndim);
            for _ in 0..ndim {
                shape.push(le_u64(take(&mut pos, 8)?, 0));
            }
            let offset = le_u64(take(&mut pos, 8)?, 0);
            let size = le_u64(take(&mut pos, 8)?, 0);
            let elements = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(&alloc::format!("{name:?}: shape {shape:?} overflows")))?;
            let expected = dtype.bytes_for(elements).ok_or_else(|| {
                bad(&alloc::format!(
                    "{name:?}: {elements} values are not whole {dtype} blocks"
                ))
            })?;
            if header.compression() == Compression::None && size != expected {
                return Err(AprError::BadSize {
                    name,
                    dtype,
                    shape,
                    stored: size,
                    expected,
                });
            }
            let absolute = header.data_offset.saturating_add(offset);
            if !legacy && absolute % ALIGN != 0 {
                return Err(AprError::Misaligned {
                    name,
                    offset: absolute,
                });
            }
            let end = offset.saturating_add(size);
            if end > data_len {
                return Err(AprError::OutOfBounds {
                    section: "tensor data",
                    offset: header.data_offset.saturating_add(offset),
                    end: header.data_offset.saturating_add(end),
                    len: body_len,
                });
            }
            index.push(IndexEntry {
                name,
                dtype,
                shape,
                offset,
                size,
            });
        }
        let mut by_name: Vec<&IndexEntry> = index.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = by_name.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(AprError::DuplicateTensor(w[0].name.clone()));
        }
        let mut by_offset: Vec<&IndexEntry> = index.iter().filter(|e| e.size > 0).collect();
        by_offset.sort_by_key(|e| e.offset);
        if let Some(w) = by_offset
            .windows(2)
            .find(|w| w[0].offset + w[0].size > w[1].offset)
        {
            return Err(AprError::Overlap(w[0].name.clone(), w[1].name.clone()));
        }
        // Parsed last: a JSON document costs more memory than its bytes, so only files whose
        // structure already checked out get this far.
        let metadata: serde_json::Value =
            serde_json::from_slice(meta_bytes).map_err(|e| AprError::Metadata(e.to_string()))?;
        let data = index
            .iter()
            .map(|e| {
                let start = header.data_offset + e.offset;
                usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(start + e.size).ok())
                    .and_then(|(s, e)| bytes.get(s..e))
                    .unwrap_or(&[])
            })
            .collect();
        Ok(Self {
            header,
            metadata,
            index,
            data,
            data_offset: header.data_offset,
            legacy,
            footer_verified,
        })
    }
}
