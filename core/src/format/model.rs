//! One view of a model file, whatever its format: typed metadata keyed as GGUF keys it, and
//! tensors under their GGUF names with row-major shapes and their stored bytes.

use alloc::borrow::Cow;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::Format;
use super::apr::{AprFile, Compression, Footer};
use super::gguf::{Gguf, Limits};
use super::safetensors::{METADATA_KEY, StFile};
use crate::dtype::GgmlType;
use crate::meta::{MetaValue, Metadata};
use crate::names::hf_to_gguf;
use crate::{Error, Result};

/// A tensor in a [`ModelFile`].
#[derive(Debug, Clone)]
pub struct Tensor<'a> {
    /// The GGUF name (`blk.0.attn_q.weight`), whatever the file calls it.
    pub name: String,
    /// The name as the file stores it.
    pub stored_name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Row-major shape, outermost first.
    pub shape: Vec<u64>,
    /// The stored bytes (compressed when `compression` says so); empty when the file was parsed
    /// from its head only ([`ModelFile::parse_head`]) and they lie beyond it.
    pub data: &'a [u8],
    /// How many bytes the file stores for this tensor, at `offset`.
    pub stored_size: u64,
    /// How `data` is encoded.
    pub compression: Compression,
    /// Absolute file offset of `data`.
    pub offset: u64,
}

impl<'a> Tensor<'a> {
    /// Whether `data` holds the stored bytes (always, unless parsed from a head).
    pub fn is_loaded(&self) -> bool {
        self.data.len() as u64 == self.stored_size
    }

    /// This tensor with its stored bytes, read separately from the file at
    /// `offset..offset + stored_size`.
    pub fn with_data<'b>(&self, data: &'b [u8]) -> Result<Tensor<'b>> {
        if data.len() as u64 != self.stored_size {
            return Err(Error::Invalid(alloc::format!(
                "{}: {} bytes read for a tensor of {} stored bytes",
                self.stored_name,
                data.len(),
                self.stored_size
            )));
        }
        Ok(Tensor {
            name: self.name.clone(),
            stored_name: self.stored_name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            data,
            stored_size: self.stored_size,
            compression: self.compression,
            offset: self.offset,
        })
    }

    /// Number of values.
    pub fn elements(&self) -> u64 {
        // Checked when the file was read; saturating keeps a hostile shape from wrapping.
        self.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Size of the decoded bytes.
    pub fn raw_size(&self) -> u64 {
        self.dtype.bytes_for(self.elements()).unwrap_or(0)
    }

    /// Row length (innermost dimension).
    pub fn row_len(&self) -> u64 {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The decoded bytes: borrowed when stored raw, decompressed otherwise.
    pub fn decode(&self) -> Result<Cow<'a, [u8]>> {
        match self.compression {
            Compression::None => Ok(Cow::Borrowed(self.data)),
            #[cfg(feature = "std")]
            _ => {
                use std::io::Read;
                let mut out = Vec::new();
                let expected = self.raw_size();
                self.reader()?
                    .take(expected + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| self.decompress_error(e.to_string()))?;
                if out.len() as u64 != expected {
                    return Err(self.decompress_error(alloc::format!(
                        "decompressed to {} bytes, expected {expected}",
                        out.len()
                    )));
                }
                Ok(Cow::Owned(out))
            }
            #[cfg(not(feature = "std"))]
            _ => Err(self.decompress_error("compressed tensors need the `std` feature".into())),
        }
    }

    fn decompress_error(&self, reason: String) -> Error {
        Error::Apr(super::apr::AprError::Decompress {
            name: self.stored_name.clone(),
            reason,
        })
    }

    /// A reader over the decoded bytes, for streaming.
    #[cfg(feature = "std")]
    pub fn reader(&self) -> Result<alloc::boxed::Box<dyn std::io::Read + 'a>> {
        Ok(match self.compression {
            Compression::None => alloc::boxed::Box::new(self.data),
            Compression::Lz4 => {
                alloc::boxed::Box::new(lz4_flex::frame::FrameDecoder::new(self.data))
            }
            Compression::Zstd => alloc::boxed::Box::new(
                ruzstd::decoding::StreamingDecoder::new(self.data)
                    .map_err(|e| self.decompress_error(e.to_string()))?,
            ),
        })
    }
}

/// A parsed model file of any format.
#[derive(Debug, Clone)]
pub struct ModelFile<'a> {
    /// The container.
    pub format: Format,
    /// Container version (GGUF 2/3, APR 2, SafeTensors 0).
    pub version: u32,
    /// Size of the file.
    pub file_size: u64,
    /// Metadata, GGUF-keyed.
    pub metadata: Metadata,
    /// Tensors in file order.
    pub tensors: Vec<Tensor<'a>>,
    /// Data alignment the file promises (GGUF `general.alignment`, APR 64, SafeTensors 1).
    pub alignment: u64,
    /// APR details when the file is APR.
    pub apr: Option<AprDetails>,
}

/// What an APR file adds.
#[derive(Debug, Clone, PartialEq)]
pub struct AprDetails {
    /// Header flags.
    pub flags: u16,
    /// Written by the original tool.
    pub legacy: bool,
    /// Footer CRC present and verified.
    pub footer_verified: bool,
    /// The whole metadata JSON.
    pub json: serde_json::Value,
}

impl<'a> ModelFile<'a> {
    /// Parses any supported file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        Self::parse_with_release(bytes, &|_| {})
    }

    /// Like [`ModelFile::parse`]; `release` gets each stretch of the file that a whole-file
    /// checksum has read and no longer needs (see [`AprFile::parse_with_release`]).
    pub fn parse_with_release(bytes: &'a [u8], release: &dyn Fn(&[u8])) -> Result<Self> {
        match Format::detect(bytes)? {
            Format::Gguf => Ok(Self::from_gguf(&Gguf::parse(bytes)?, bytes.len() as u64)),
            Format::Safetensors => {
                Self::from_safetensors(&StFile::parse(bytes)?, bytes.len() as u64)
            }
            Format::Apr => Self::from_apr(
                AprFile::parse_with_release(bytes, release)?,
                bytes.len() as u64,
            ),
        }
    }

    /// Parses a file of `file_len` bytes from its first bytes, `head`, for reading the rest
    /// tensor by tensor ([`Tensor::with_data`]): `head` must hold everything before the tensor
    /// data, and tensors beyond it get empty `data`. An APR file needs its [`Footer`], computed
    /// over the whole file; other formats ignore it. Every check of [`ModelFile::parse`] is made
    /// against `file_len`; when `head` is too short the error is the one a file cut there would
    /// get, so a caller grows `head` until it parses or is the whole file.
    pub fn parse_head(head: &'a [u8], file_len: u64, footer: Footer) -> Result<Self> {
        match Format::detect(head)? {
            Format::Gguf => Ok(Self::from_gguf(
                &Gguf::parse_head(head, file_len, &Limits::default())?,
                file_len,
            )),
            Format::Safetensors => {
                Self::from_safetensors(&StFile::parse_head(head, file_len)?, file_len)
            }
            Format::Apr => Self::from_apr(AprFile::parse_head(head, file_len, footer)?, file_len),
        }
    }

    /// The head [`ModelFile::parse_head`] needs, from a file of `file_len` bytes read piece by
    /// piece: `read(n)` gives its first `n` bytes. Starts at `first` bytes and doubles until the
    /// head parses (then returns it, to be parsed again by the caller, who owns it) or is the
    /// whole file (then returns the whole file's error).
    pub fn read_head(
        file_len: u64,
        footer: Footer,
        first: u64,
        read: &mut dyn FnMut(u64) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut n = first.clamp(1, file_len.max(1));
        loop {
            let head = read(n.min(file_len))?;
            match ModelFile::parse_head(&head, file_len, footer) {
                Ok(_) => return Ok(head),
                Err(e) if n >= file_len => return Err(e),
                Err(_) => n = n.saturating_mul(2),
            }
        }
    }

    /// The view of a parsed GGUF file.
    pub fn from_gguf(gguf: &Gguf<'a>, file_size: u64) -> Self {
        let tensors = gguf
            .tensors()
            .iter()
            .map(|t| Tensor {
                name: t.name.to_string(),
                stored_name: t.name.to_string(),
                dtype: t.ty,
                shape: t.shape(),
                data: gguf.tensor_data(t),
                stored_size: t.size,
                compression: Compression::None,
                offset: gguf.data_offset() + t.offset,
            })
            .collect();
        Self {
            format: Format::Gguf,
            version: gguf.version(),
            file_size,
            metadata: Metadata::from_gguf(gguf),
            tensors,
            alignment: gguf.alignment(),
            apr: None,
        }
    }

    /// The view of a parsed SafeTensors file.
    pub fn from_safetensors(st: &StFile<'a>, file_size: u64) -> Result<Self> {
        let metadata = match st.get(METADATA_KEY) {
            Some(json) => {
                let json: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| Error::Metadata(alloc::format!("{METADATA_KEY}: {e}")))?;
                Metadata::from_json(&json)
                    .map_err(|e| Error::Metadata(alloc::format!("{METADATA_KEY}: {e}")))?
            }
            None => Metadata::new(),
        };
        let tensors = st
            .tensors
            .iter()
            .map(|t| Tensor {
                name: hf_to_gguf(&t.name),
                stored_name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: t.data,
                stored_size: t.stored_size,
                compression: Compression::None,
                offset: t.offset,
            })
            .collect();
        Ok(Self {
            format: Format::Safetensors,
            version: 0,
            file_size,
            metadata,
            tensors,
            alignment: 1,
            apr: None,
        })
    }

    /// The view of a parsed APR file.
    pub fn from_apr(apr: AprFile<'a>, file_size: u64) -> Result<Self> {
        let metadata = match apr.metadata.get("metadata") {
            Some(json) if !apr.legacy => Metadata::from_json(json)
                .map_err(|e| Error::Metadata(alloc::format!("APR metadata: {e}")))?,
            _ => legacy_metadata(&apr.metadata),
        };
        let compression = apr.header.compression();
        let mut tensors: Vec<Tensor<'a>> = apr
            .index
            .iter()
            .zip(&apr.data)
            .map(|(e, data)| Tensor {
                name: hf_to_gguf(&e.name),
                stored_name: e.name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
                data,
                stored_size: e.size,
                compression,
                offset: apr.data_offset + e.offset,
            })
            .collect();
        // The index is sorted by name; the data keeps the order the tensors were written in.
        tensors.sort_by_key(|t| t.offset);
        Ok(Self {
            format: Format::Apr,
            version: u32::from(apr.header.version.0),
            file_size,
            metadata,
            tensors,
            alignment: super::apr::ALIGN,
            apr: Some(AprDetails {
                flags: apr.header.flags,
                legacy: apr.legacy,
                footer_verified: apr.footer_verified,
                json: apr.metadata,
            }),
        })
    }

    /// The tensor with this GGUF name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// GGUF keys from the original apr tool's flat metadata (`architecture`, `hidden_size`, ...).
fn legacy_metadata(json: &serde_json::Value) -> Metadata {
    let mut m = Metadata::new();
    let arch = json
        .get("architecture")
        .or_else(|| json.get("model_type"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("qwen2")
        .to_string();
    m.set("general.architecture", MetaValue::String(arch.clone()));
    if let Some(name) = json.get("name").and_then(serde_json::Value::as_str) {
        m.set("general.name", MetaValue::String(name.to_string()));
    }
    let ints = [
        ("hidden_size", "embedding_length"),
        ("num_layers", "block_count"),
        ("num_heads", "attention.head_count"),
        ("num_kv_heads", "attention.head_count_kv"),
        ("vocab_size", "vocab_size"),
        ("intermediate_size", "feed_forward_length"),
        ("max_position_embeddings", "context_length"),
    ];
    for (from, to) in ints {
        if let Some(v) = json.get(from).and_then(serde_json::Value::as_u64)
            && let Ok(v) = u32::try_from(v)
        {
            m.set(&alloc::format!("{arch}.{to}"), MetaValue::U32(v));
        }
    }
    #[allow(clippy::cast_possible_truncation)]
    for (from, to) in [
        ("rope_theta", "rope.freq_base"),
        ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    ] {
        if let Some(v) = json.get(from).and_then(serde_json::Value::as_f64) {
            m.set(&alloc::format!("{arch}.{to}"), MetaValue::F32(v as f32));
        }
    }
    if let Some(t) = json
        .get("chat_template")
        .and_then(serde_json::Value::as_str)
    {
        m.set("tokenizer.chat_template", MetaValue::String(t.to_string()));
    }
    let strings = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(|s| MetaValue::String(s.to_string())))
                    .collect::<Vec<_>>()
            })
    };
    if let Some(vocab) = strings("vocab") {
        m.set("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
        m.set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(super::gguf::ValueType::String, vocab),
        );
    }
    if let Some(merges) = strings("merges") {
        m.set(
            "tokenizer.ggml.merges",
            MetaValue::Array(super::gguf::ValueType::String, merges),
        );
    }
    m
}
