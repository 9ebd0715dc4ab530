//! The qwen2 hyperparameters, read from a file's metadata and tensor shapes. Nothing here is a
//! default for one particular model size.

use alloc::format;
use alloc::string::String;

use crate::format::model::ModelFile;
use crate::{Error, Result};

/// The largest context a session may ask for, whatever the file claims: the KV cache for it is
/// allocated up front.
pub const MAX_CONTEXT: usize = 1 << 17;

/// A qwen2 model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size (`embedding_length`).
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// FFN inner size.
    pub ffn: usize,
    /// Vocabulary rows of the embedding table.
    pub vocab: usize,
    /// Training context (`context_length`).
    pub context: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Whether the LM head is the embedding table (no `output.weight`).
    pub tied: bool,
}

impl Config {
    /// Reads the config of a qwen2 file; errors name the missing key or the odd value.
    pub fn from_model(model: &ModelFile<'_>) -> Result<Self> {
        let m = &model.metadata;
        match m.architecture() {
            Some("qwen2") => {}
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "architecture {other} is not supported for inference (only qwen2)"
                )));
            }
            None => return Err(Error::Invalid("the file names no architecture".into())),
        }
        let need = |key: &str| -> Result<usize> {
            let v = m
                .arch_u64(key)
                .ok_or_else(|| Error::Invalid(format!("metadata has no qwen2.{key}")))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 24)
                .ok_or_else(|| Error::Invalid(format!("qwen2.{key} = {v} is out of range")))
        };
        let layers = need("block_count")?;
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let kv_heads = match m.arch_u64("attention.head_count_kv") {
            Some(_) => need("attention.head_count_kv")?,
            None => heads,
        };
        let ffn = need("feed_forward_length")?;
        let context = need("context_length")?;
        let bad = |why: String| Error::Invalid(why);
        if hidden % heads != 0 {
            return Err(bad(format!(
                "hidden size {hidden} is not a multiple of {heads} heads"
            )));
        }
        if heads % kv_heads != 0 {
            return Err(bad(format!(
                "{heads} heads are not a multiple of {kv_heads} KV heads"
            )));
        }
        let head_dim = hidden / heads;
        if head_dim % 2 != 0 {
            return Err(bad(format!(
                "head size {head_dim} is odd; RoPE needs pairs"
            )));
        }
        let embd = model
            .tensor("token_embd.weight")
            .ok_or_else(|| bad("the file has no token_embd.weight".into()))?;
        let vocab = embd
            .shape
            .first()
            .and_then(|&v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| bad("token_embd.weight has no rows".into()))?;
        let rope_theta = m.arch_f32("rope.freq_base").unwrap_or(10_000.0);
        let eps = m
            .arch_f32("attention.layer_norm_rms_epsilon")
            .unwrap_or(1e-6);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(bad(format!(
                "rope.freq_base {rope_theta} is not a usable base"
            )));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(bad(format!("RMSNorm epsilon {eps} is not positive")));
        }
        Ok(Self {
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            context,
            rope_theta,
            eps,
            tied: model.tensor("output.weight").is_none(),
        })
    }

    /// Width of one position's keys (or values): `kv_heads * head_dim`.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes of an f32 KV cache for `ctx` positions.
    pub fn kv_cache_bytes(&self, ctx: usize) -> u64 {
        2 * self.layers as u64 * ctx as u64 * self.kv_width() as u64 * 4
    }
}
