//! What a model file is: the summary `apr inspect` prints, `apr serve` returns and the web page
//! shows. One set of serde types serves all three.
//!
//! The JSON form is a stable schema, documented in `docs/inspect-json.md`; [`SCHEMA`] names its
//! version, and fields are only ever added to it.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::dtype::{GgmlType, file_type_name};
use crate::format::Format;
use crate::format::model::ModelFile;

/// The schema id carried in every [`ModelInfo`].
pub const SCHEMA: &str = "apr.inspect.v1";

/// A summary of a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The container format.
    pub format: Format,
    /// The container's version (GGUF 2 or 3).
    pub format_version: u32,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// APR tensor compression: `none`, `lz4` or `zstd` (absent for other formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// The model's name (`general.name`).
    pub name: Option<String>,
    /// The architecture (`general.architecture`), e.g. `qwen2`.
    pub architecture: Option<String>,
    /// The whole-file quantization (`general.file_type`), e.g. `Q4_K_M`.
    pub quantization: Option<String>,
    /// Every element of every tensor in the file.
    pub parameters: u64,
    /// The output projection.
    pub lm_head: LmHead,
    /// Vocabulary size.
    pub vocab_size: Option<u64>,
    /// Transformer blocks.
    pub layers: Option<u64>,
    /// Width of the residual stream.
    pub hidden_size: Option<u64>,
    /// Width of the feed-forward layer.
    pub feed_forward_size: Option<u64>,
    /// Query heads.
    pub attention_heads: Option<u64>,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub kv_heads: Option<u64>,
    /// Trained context length in tokens.
    pub context_length: Option<u64>,
    /// RoPE base frequency θ.
    pub rope_theta: Option<f32>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: Option<f32>,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Tensors per element type, most frequent first.
    pub dtypes: Vec<DtypeCount>,
    /// Number of metadata entries.
    pub metadata_count: u64,
    /// Every tensor, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorSummary>>,
}

/// Whether the output projection has its own weights or reuses the token embedding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LmHead {
    /// True when there is no separate output tensor and the embedding is reused.
    pub tied: bool,
    /// The tensor used as the LM head.
    pub tensor: String,
    /// Its element count; counted in [`ModelInfo::parameters`] only when not tied.
    pub parameters: u64,
}

/// How many tensors have one element type, and how much of the model they hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtypeCount {
    /// The element type.
    pub dtype: GgmlType,
    /// Number of tensors of that type.
    pub count: u64,
    /// Their elements.
    pub parameters: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSummary {
    /// Name as stored in the file.
    pub name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Row-major shape, outermost first (GGUF's dims reversed).
    pub shape: Vec<u64>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub bytes: u64,
}

impl ModelInfo {
    /// Summarises a whole model file of any format; `with_tensors` lists every tensor.
    pub fn from_bytes(bytes: &[u8], with_tensors: bool) -> Result<Self, Error> {
        Ok(Self::from_model(&ModelFile::parse(bytes)?, with_tensors))
    }

    /// Summarises a parsed model file.
    pub fn from_model(model: &ModelFile<'_>, with_tensors: bool) -> Self {
        let meta = &model.metadata;
        let tensors = &model.tensors;
        let parameters = tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.elements()));
        let embedding = model.tensor("token_embd.weight");
        let lm_head = match model.tensor("output.weight") {
            Some(t) => LmHead {
                tied: false,
                tensor: t.stored_name.clone(),
                parameters: t.elements(),
            },
            None => LmHead {
                tied: true,
                tensor: embedding.map_or_else(
                    || "token_embd.weight".to_string(),
                    |t| t.stored_name.clone(),
                ),
                parameters: embedding.map_or(0, |t| t.elements()),
            },
        };
        let vocab_size = meta
            .vocab_size()
            .or_else(|| embedding.and_then(|t| t.shape.first().copied()));

        let mut by_type: BTreeMap<GgmlType, DtypeCount> = BTreeMap::new();
        for t in tensors {
            let entry = by_type.entry(t.dtype).or_insert(DtypeCount {
                dtype: t.dtype,
                count: 0,
                parameters: 0,
                bytes: 0,
            });
            entry.count += 1;
            entry.parameters = entry.parameters.saturating_add(t.elements());
            entry.bytes = entry.bytes.saturating_add(t.data.len() as u64);
        }
        let mut dtypes: Vec<DtypeCount> = by_type.into_values().collect();
        dtypes.sort_by(|a, b| b.count.cmp(&a.count).then(a.dtype.cmp(&b.dtype)));
        // Without a recorded file type, a file whose matrices share one type is named by it.
        let quantization = match meta.get_u64("general.file_type") {
            Some(id) => Some(
                file_type_name(id).map_or_else(|| alloc::format!("file type {id}"), str::to_string),
            ),
            None => {
                let mut matrices = tensors
                    .iter()
                    .filter(|t| t.shape.len() == 2)
                    .map(|t| t.dtype);
                let first = matrices.next();
                first
                    .filter(|f| matrices.all(|d| d == *f))
                    .map(|f| f.name().to_string())
            }
        };

        Self {
            schema: SCHEMA.to_string(),
            format: model.format,
            format_version: model.version,
            file_size: model.file_size,
            compression: model.apr.as_ref().map(|_| {
                model
                    .tensors
                    .first()
                    .map_or("none", |t| t.compression.name())
                    .to_string()
            }),
            name: meta.get_str("general.name").map(str::to_string),
            architecture: meta.architecture().map(str::to_string),
            quantization,
            parameters,
            lm_head,
            vocab_size,
            layers: meta.arch_u64("block_count"),
            hidden_size: meta.arch_u64("embedding_length"),
            feed_forward_size: meta.arch_u64("feed_forward_length"),
            attention_heads: meta.arch_u64("attention.head_count"),
            kv_heads: meta.arch_u64("attention.head_count_kv"),
            context_length: meta.arch_u64("context_length"),
            rope_theta: meta.arch_f32("rope.freq_base"),
            rms_norm_eps: meta.arch_f32("attention.layer_norm_rms_epsilon"),
            tensor_count: tensors.len() as u64,
            dtypes,
            metadata_count: meta.len() as u64,
            tensors: with_tensors.then(|| {
                tensors
                    .iter()
                    .map(|t| TensorSummary {
                        name: t.stored_name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        offset: t.offset,
                        bytes: t.data.len() as u64,
                    })
                    .collect()
            }),
        }
    }
}
