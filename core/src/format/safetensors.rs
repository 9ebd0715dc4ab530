//! Hugging Face SafeTensors, read through the `safetensors` crate.
//!
//! apr writes the GGUF metadata (architecture, tokenizer, chat template, ...) into the header's
//! `__metadata__` under [`METADATA_KEY`] as typed JSON, so that nothing is lost on the way back.

use alloc::string::String;
use alloc::vec::Vec;

use safetensors::{Dtype, SafeTensors};

use crate::dtype::GgmlType;

/// The `__metadata__` key holding apr's typed metadata.
pub const METADATA_KEY: &str = "apr.metadata";

/// One tensor as the file stores it.
#[derive(Debug, Clone)]
pub struct StTensor<'a> {
    /// Name as stored.
    pub name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Row-major shape.
    pub shape: Vec<u64>,
    /// The bytes.
    pub data: &'a [u8],
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
        let st = SafeTensors::deserialize(bytes).map_err(|e| StError::Invalid(describe(&e)))?;
        let data_start = 8 + header_len as u64;
        let mut metadata: Vec<(String, String)> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        metadata.sort();
        let mut tensors = Vec::new();
        for (name, info) in meta.tensors() {
            let view = st
                .tensor(&name)
                .map_err(|e| StError::Invalid(describe(&e)))?;
            let dtype = ggml_type(info.dtype).ok_or_else(|| StError::UnsupportedDtype {
                name: name.clone(),
                dtype: alloc::format!("{:?}", info.dtype),
            })?;
            tensors.push(StTensor {
                name,
                dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                data: view.data(),
                offset: data_start + info.data_offsets.0 as u64,
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
