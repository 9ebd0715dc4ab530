//! The one table between GGUF tensor names and Hugging Face (transformers) tensor names.
//!
//! `blk.N.attn_q.weight` ↔ `model.layers.N.self_attn.q_proj.weight`, `token_embd` ↔
//! `model.embed_tokens`, `output` ↔ `lm_head`, norms and biases alike. Only names change: GGUF
//! lists dimensions innermost first, so its `[896, 151936]` is HF's `[151936, 896]`, and the bytes
//! are the same row-major data either way. Names outside the table pass through unchanged.

use alloc::format;
use alloc::string::String;

/// Whole-model tensors: (GGUF, HF).
const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-block tensors: (GGUF suffix after `blk.N.`, HF suffix after `model.layers.N.`).
const BLOCK: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Splits `prefix N . rest` where N is a decimal layer number.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let dot = rest.find('.')?;
    let (n, suffix) = (&rest[..dot], &rest[dot + 1..]);
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some((n, suffix))
}

/// The HF name of a GGUF tensor name.
pub fn gguf_to_hf(name: &str) -> String {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == name) {
        return (*hf).into();
    }
    if let Some((n, suffix)) = split_layer(name, "blk.")
        && let Some((_, hf)) = BLOCK.iter().find(|(g, _)| *g == suffix)
    {
        return format!("model.layers.{n}.{hf}");
    }
    name.into()
}

/// The GGUF name of an HF tensor name.
pub fn hf_to_gguf(name: &str) -> String {
    if let Some((g, _)) = GLOBAL.iter().find(|(_, h)| *h == name) {
        return (*g).into();
    }
    if let Some((n, suffix)) = split_layer(name, "model.layers.")
        && let Some((g, _)) = BLOCK.iter().find(|(_, h)| *h == suffix)
    {
        return format!("blk.{n}.{g}");
    }
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_round_trips() {
        for (g, h) in GLOBAL {
            assert_eq!(gguf_to_hf(g), *h);
            assert_eq!(hf_to_gguf(h), *g);
        }
        for (g, h) in BLOCK {
            let (g, h) = (format!("blk.17.{g}"), format!("model.layers.17.{h}"));
            assert_eq!(gguf_to_hf(&g), h);
            assert_eq!(hf_to_gguf(&h), g);
        }
    }

    #[test]
    fn unknown_names_pass_through() {
        for name in [
            "blk.x.attn_q.weight",
            "blk..attn_q.weight",
            "rope_freqs",
            "model.layers.3.foo",
        ] {
            assert_eq!(gguf_to_hf(name), name);
            assert_eq!(hf_to_gguf(name), name);
        }
    }
}
