//! Hugging Face SafeTensors, read through the `safetensors` crate.
//!
//! apr writes the GGUF metadata (architecture, tokenizer, chat template, ...) into the header's
//! `__metadata__` under [`METADATA_KEY`] as typed JSON, so that nothing is lost on the way back.

use alloc::string::String;
use alloc::vec::Vec;

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::dtype::GgmlType;

/// The `__metadata__` key holding apr's typed metadata.
pub const METADATA_KEY: &str = "apr.metadata";

/// The largest header the `safetensors` crate reads.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as the file stores it.
#[derive(Debug, Clone)]
pub struct StTensor<'a> {
    /// Name as stored.
    pub name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Row-major shape.
    pub shape: Vec<u64>,
    /// The bytes (empty when parsed from a head that ends before them).
    pub data: &'a [u8],
    /// How many bytes the file holds for it.
    pub stored_size: u64,
    /// Absolute file offset of the bytes.
    pub offset: u64,
}

/// A validated SafeTensors file.
#[derive(Debug, Clone)]
pub struct StFile<'a> {
    /// Header length in bytes (after the 8-byte length).
    pub header_len: u64,
    /// `__metadata__`, if any.
    pub metadata: Vec<(String, String)>,
    /// Tensors in data order.
    pub tensors: Vec<StTensor<'a>>,
}

/// Maps a SafeTensors dtype to the ggml type with the same bytes.
pub fn ggml_type(dtype: Dtype) -> Option<GgmlType> {
    Some(match dtype {
        Dtype::F32 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        Dtype::F64 => GgmlType::F64,
        Dtype::I8 => GgmlType::I8,
        Dtype::I16 => GgmlType::I16,
        Dtype::I32 => GgmlType::I32,
        Dtype::I64 => GgmlType::I64,
        _ => return None,
    })
}

/// The SafeTensors dtype of a ggml type, for the types SafeTensors can hold.
pub fn st_dtype(ty: GgmlType) -> Option<Dtype> {
    Some(match ty {
        GgmlType::F32 => Dtype::F32,
        GgmlType::F16 => Dtype::F16,
        GgmlType::BF16 => Dtype::BF16,
        GgmlType::F64 => Dtype::F64,
        GgmlType::I8 => Dtype::I8,
        GgmlType::I16 => Dtype::I16,
        GgmlType::I32 => Dtype::I32,
        GgmlType::I64 => Dtype::I64,
        _ => return None,
    })
}

/// Why a SafeTensors file was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StError {
    /// The crate rejected the header or layout.
    #[error("{0}")]
    Invalid(String),
    /// A dtype apr has no ggml equivalent for.
    #[error("tensor {name:?} has dtype {dtype}, which apr cannot convert")]
    UnsupportedDtype {
        /// Tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
}

impl<'a> StFile<'a> {
    /// Parses and validates a whole file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, StError> {
        let (header_len, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| StError::Invalid(describe(&e)))?;
        Self::from_metadata(bytes, header_len, &meta)
    }

    /// Parses a file of `file_len` bytes from its first bytes, `head`, which must hold the
    /// header; the layout is checked against `file_len` as [`StFile::parse`] checks it against the
    /// whole file, and tensors that lie beyond `head` get empty `data`.
    pub fn parse_head(head: &'a [u8], file_len: u64) -> Result<Self, StError> {
        use safetensors::SafeTensorError as E;
        if head.len() as u64 == file_len {
            return Self::parse(head);
        }
        let invalid = |e: E| StError::Invalid(describe(&e));
        let len: [u8; 8] = head
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(invalid(E::HeaderTooSmall))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER {
            return Err(invalid(E::HeaderTooLarge));
        }
        let json = usize::try_from(8 + n)
            .ok()
            .and_then(|end| head.get(8..end))
            .ok_or(invalid(E::InvalidHeaderLength))?;
        let meta: Metadata = serde_json::from_slice(json)
            .map_err(|e| invalid(E::InvalidHeaderDeserialization(e)))?;
        // Tensors are validated to follow one another from offset 0.
        let data_len = meta
            .tensors()
            .values()
            .map(|t| t.data_offsets.1 as u64)
            .max()
            .unwrap_or(0);
        if 8 + n + data_len != file_len {
            return Err(invalid(E::MetadataIncompleteBuffer));
        }
        Self::from_metadata(head, n as usize, &meta)
    }

    /// The tensors `meta` describes, with the bytes of those inside `bytes`.
    fn from_metadata(bytes: &'a [u8], header_len: usize, meta: &Metadata) -> Result<Self, StError> {
        let data_start = 8 + header_len;
        let mut metadata: Vec<(String, String)> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        metadata.sort();
        let mut tensors = Vec::new();
        for (name, info) in meta.tensors() {
            let dtype = ggml_type(info.dtype).ok_or_else(|| StError::UnsupportedDtype {
                name: name.clone(),
                dtype: alloc::format!("{:?}", info.dtype),
            })?;
            let (start, end) = info.data_offsets;
            let data = data_start
                .checked_add(start)
                .zip(data_start.checked_add(end))
                .and_then(|(s, e)| bytes.get(s..e))
                .unwrap_or(&[]);
            tensors.push(StTensor {
                name,
                dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                data,
                stored_size: (end - start) as u64,
                offset: data_start as u64 + start as u64,
            });
        }
        tensors.sort_by_key(|t| t.offset);
        Ok(Self {
            header_len: header_len as u64,
            metadata,
            tensors,
        })
    }

    /// A `__metadata__` value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "truncated: the file is shorter than its 8-byte header length".into(),
        E::HeaderTooLarge => "the header length is larger than 100 MB".into(),
        E::InvalidHeaderLength => "the header length points past the end of the file".into(),
        E::InvalidHeader(_) => "the header is not UTF-8 JSON".into(),
        E::InvalidHeaderDeserialization(m) => alloc::format!("the header JSON is malformed: {m}"),
        E::MetadataIncompleteBuffer => {
            "truncated: the header describes more data than the file holds".into()
        }
        other => alloc::format!("{other}"),
    }
}
