//! Tiny synthetic qwen2 models for tests: a few layers, small dimensions, a small byte-level BPE
//! vocabulary, seeded random weights, in any tensor type (native only).
//!
//! The weights are random, so the model says nothing sensible; what matters is that every
//! format, type and code path sees a structurally complete qwen2 file in milliseconds.

use crate::dtype::GgmlType;
use crate::format::gguf::ValueType;
use crate::meta::{MetaValue, Metadata};
use crate::quant::quantize;
use crate::write::gguf::GgufWriter;
use crate::write::{OutTensor, TensorSink};
use crate::{Error, Result};

/// The shape of a synthetic model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Transformer blocks.
    pub layers: u64,
    /// Residual width (a multiple of 256 so every K-quant fits).
    pub hidden: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Feed-forward width (a multiple of 256).
    pub ffn: u64,
    /// BPE merges on top of the 256 byte tokens.
    pub merges: usize,
    /// Weight seed.
    pub seed: u64,
    /// Whether `output.weight` exists (otherwise the embedding is tied).
    pub separate_lm_head: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            layers: 2,
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            ffn: 512,
            merges: 40,
            seed: 7,
            separate_lm_head: true,
        }
    }
}

/// The special tokens, in id order after the byte tokens and merges.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

pub use crate::hf::byte_to_char;

/// xorshift64*; deterministic across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Tokenizer and hyperparameter metadata for `cfg`.
pub fn metadata(cfg: &Config) -> Metadata {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
    let mut merges = Vec::new();
    // Merge common letter pairs: "Ġt", "he", "in", ...
    let pairs = [
        ("Ġ", "t"),
        ("h", "e"),
        ("i", "n"),
        ("Ġ", "a"),
        ("e", "r"),
        ("o", "n"),
        ("Ġt", "he"),
        ("r", "e"),
        ("a", "t"),
        ("Ġ", "s"),
        ("e", "n"),
        ("o", "r"),
        ("Ġ", "w"),
        ("i", "s"),
        ("e", "s"),
        ("Ġ", "c"),
        ("a", "n"),
        ("Ġ", "f"),
        ("l", "l"),
        ("Ġ", "b"),
    ];
    for (a, b) in pairs.iter().cycle().take(cfg.merges) {
        let joined = format!("{a}{b}");
        if !tokens.contains(&joined) {
            tokens.push(joined);
            merges.push(format!("{a} {b}"));
        }
    }
    let first_special = tokens.len();
    tokens.extend(SPECIAL_TOKENS.iter().map(|s| (*s).to_string()));
    let mut types = vec![MetaValue::I32(1); first_special];
    types.extend(std::iter::repeat_n(MetaValue::I32(3), SPECIAL_TOKENS.len()));
    let id = |i: usize| MetaValue::U32((first_special + i) as u32);
    let strings = |v: Vec<String>| {
        MetaValue::Array(
            ValueType::String,
            v.into_iter().map(MetaValue::String).collect(),
        )
    };
    let mut m = Metadata::new();
    let u32v = |v: u64| MetaValue::U32(v as u32);
    m.set("general.architecture", MetaValue::String("qwen2".into()));
    m.set(
        "general.name",
        MetaValue::String("apr synthetic qwen2".into()),
    );
    m.set("qwen2.block_count", u32v(cfg.layers));
    m.set("qwen2.context_length", u32v(512));
    m.set("qwen2.embedding_length", u32v(cfg.hidden));
    m.set("qwen2.feed_forward_length", u32v(cfg.ffn));
    m.set("qwen2.attention.head_count", u32v(cfg.heads));
    m.set("qwen2.attention.head_count_kv", u32v(cfg.kv_heads));
    m.set("qwen2.rope.freq_base", MetaValue::F32(1_000_000.0));
    m.set(
        "qwen2.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-6),
    );
    m.set("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    m.set("tokenizer.ggml.pre", MetaValue::String("qwen2".into()));
    m.set("tokenizer.ggml.tokens", strings(tokens));
    m.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(ValueType::I32, types),
    );
    m.set("tokenizer.ggml.merges", strings(merges));
    m.set("tokenizer.ggml.eos_token_id", id(2));
    m.set("tokenizer.ggml.padding_token_id", id(0));
    m.set("tokenizer.ggml.bos_token_id", id(0));
    m.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    m.set(
        "tokenizer.chat_template",
        MetaValue::String(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        ),
    );
    m
}

/// Every tensor of the model: GGUF name and row-major shape.
pub fn tensors(cfg: &Config, vocab: u64) -> Vec<(String, Vec<u64>)> {
    let (h, f) = (cfg.hidden, cfg.ffn);
    let kv = h / cfg.heads * cfg.kv_heads;
    let mut v = vec![("token_embd.weight".to_string(), vec![vocab, h])];
    for i in 0..cfg.layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        v.extend([
            (b("attn_norm.weight"), vec![h]),
            (b("attn_q.weight"), vec![h, h]),
            (b("attn_q.bias"), vec![h]),
            (b("attn_k.weight"), vec![kv, h]),
            (b("attn_k.bias"), vec![kv]),
            (b("attn_v.weight"), vec![kv, h]),
            (b("attn_v.bias"), vec![kv]),
            (b("attn_output.weight"), vec![h, h]),
            (b("ffn_norm.weight"), vec![h]),
            (b("ffn_gate.weight"), vec![f, h]),
            (b("ffn_up.weight"), vec![f, h]),
            (b("ffn_down.weight"), vec![h, f]),
        ]);
    }
    v.push(("output_norm.weight".to_string(), vec![h]));
    if cfg.separate_lm_head {
        v.push(("output.weight".to_string(), vec![vocab, h]));
    }
    v
}

/// Writes the model as GGUF: matrices in `matrix_type` (norms and biases stay F32).
pub fn gguf(cfg: &Config, matrix_type: GgmlType) -> Result<Vec<u8>> {
    let meta = metadata(cfg);
    let vocab = meta.vocab_size().unwrap_or(0);
    let specs = tensors(cfg, vocab);
    let outs: Vec<OutTensor> = specs
        .iter()
        .map(|(name, shape)| OutTensor {
            name: name.clone(),
            dtype: if shape.len() == 2 {
                matrix_type
            } else {
                GgmlType::F32
            },
            shape: shape.clone(),
        })
        .collect();
    let mut bytes = Vec::new();
    let mut w = GgufWriter::new(&mut bytes, &meta, &outs, 32)?;
    let mut rng = Rng::new(cfg.seed);
    for out in &outs {
        let n = out.elements() as usize;
        let norm = out.name.ends_with("norm.weight");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if norm {
                    1.0 + 0.1 * rng.unit()
                } else {
                    0.05 * rng.unit()
                }
            })
            .collect();
        let mut encoded = vec![0u8; out.size()? as usize];
        quantize(out.dtype, &values, &mut encoded).map_err(|e| Error::Invalid(e.to_string()))?;
        w.write_tensor(&mut |sink| Ok(sink.write_all(&encoded)?))?;
    }
    Box::new(w).finish()?;
    Ok(bytes)
}
