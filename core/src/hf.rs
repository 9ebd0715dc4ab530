//! The Hugging Face side files of a model folder, built from GGUF-keyed metadata:
//! `config.json`, `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`.
//!
//! The tokenizer is rebuilt from `tokenizer.ggml.*`: GPT-2 byte-level BPE with the pre-tokenizer
//! that `tokenizer.ggml.pre` names, control and user-defined tokens as added tokens.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value as Json, json};

use crate::meta::{MetaValue, Metadata};

/// The qwen2 (and llama-3 style) pre-tokenizer split.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte-to-character table: printable bytes map to themselves, the other 68 in order to
/// U+0100 upwards. Byte-level BPE vocabularies spell every byte this way.
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

fn need_u64(meta: &Metadata, key: &str) -> Result<u64, String> {
    meta.arch_u64(key)
        .ok_or_else(|| alloc::format!("metadata has no {key} for the config"))
}

/// `config.json` for `Qwen2ForCausalLM`. `torch_dtype` names the weights' float type.
pub fn config_json(meta: &Metadata, torch_dtype: &str, tied: bool) -> Result<Json, String> {
    let arch = meta
        .architecture()
        .ok_or("metadata has no general.architecture")?;
    if arch != "qwen2" {
        return Err(alloc::format!(
            "a Hugging Face folder can only be written for qwen2 models, not {arch}"
        ));
    }
    let layers = need_u64(meta, "block_count")?;
    let context = need_u64(meta, "context_length")?;
    let vocab = meta.vocab_size().ok_or("metadata has no vocabulary")?;
    let heads = need_u64(meta, "attention.head_count")?;
    Ok(json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": need_u64(meta, "embedding_length")?,
        "intermediate_size": need_u64(meta, "feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.arch_u64("attention.head_count_kv").unwrap_or(heads),
        "max_position_embeddings": context,
        "max_window_layers": layers,
        "sliding_window": context,
        "use_sliding_window": false,
        "rope_theta": crate::meta::f32_json(meta.arch_f32("rope.freq_base").unwrap_or(10_000.0)),
        "rms_norm_eps": crate::meta::f32_json(meta.arch_f32("attention.layer_norm_rms_epsilon").unwrap_or(1e-6)),
        "vocab_size": vocab,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": tied,
        "torch_dtype": torch_dtype,
        "use_cache": true,
        "bos_token_id": meta.get_u64("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get_u64("tokenizer.ggml.eos_token_id"),
    }))
}

fn strings<'m>(meta: &'m Metadata, key: &str) -> Result<Vec<&'m str>, String> {
    let a = meta
        .get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| alloc::format!("metadata has no {key}"))?;
    a.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| alloc::format!("{key} holds a non-string"))
        })
        .collect()
}

/// `tokenizer.json` for the `tokenizers` library.
pub fn tokenizer_json(meta: &Metadata) -> Result<Json, String> {
    match meta.get_str("tokenizer.ggml.model") {
        Some("gpt2") => {}
        other => {
            return Err(alloc::format!(
                "only GPT-2 style BPE tokenizers can be exported, not {other:?}"
            ));
        }
    }
    let tokens = strings(meta, "tokenizer.ggml.tokens")?;
    let merges = strings(meta, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match meta
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
    {
        Some(a) => a
            .iter()
            .map(|v| match v {
                MetaValue::I32(t) => i64::from(*t),
                other => other.as_u64().map_or(1, |t| t as i64),
            })
            .collect(),
        None => alloc::vec![1; tokens.len()],
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, text) in tokens.iter().enumerate() {
        match types.get(id).copied().unwrap_or(1) {
            // CONTROL and USER_DEFINED tokens are matched before BPE.
            t @ (3 | 4) => added.push(json!({
                "id": id,
                "content": text,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": t == 3,
            })),
            // UNUSED padding entries have no text to match.
            5 => {}
            _ => {
                vocab.insert((*text).to_string(), json!(id));
            }
        }
    }
    let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("qwen2");
    let split = match pre {
        "qwen2" | "llama-bpe" | "llama3" => QWEN2_SPLIT,
        other => {
            return Err(alloc::format!(
                "pre-tokenizer {other:?} is not supported for export"
            ));
        }
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// `tokenizer_config.json`, with the chat template.
pub fn tokenizer_config_json(meta: &Metadata) -> Json {
    let add_bos = matches!(
        meta.get("tokenizer.ggml.add_bos_token"),
        Some(MetaValue::Bool(true))
    );
    json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": add_bos,
        "bos_token": if add_bos { meta.token_text("tokenizer.ggml.bos_token_id") } else { None },
        "eos_token": meta.token_text("tokenizer.ggml.eos_token_id"),
        "pad_token": meta.token_text("tokenizer.ggml.padding_token_id"),
        "unk_token": null,
        "chat_template": meta.get_str("tokenizer.chat_template"),
        "model_max_length": meta.arch_u64("context_length"),
        "clean_up_tokenization_spaces": false,
        "split_special_tokens": false,
        "errors": "replace",
    })
}

/// `generation_config.json`: greedy-compatible defaults and the stop tokens.
pub fn generation_config_json(meta: &Metadata) -> Json {
    let eos = meta.get_u64("tokenizer.ggml.eos_token_id");
    let pad = meta.get_u64("tokenizer.ggml.padding_token_id");
    let mut stop: Vec<u64> = eos.into_iter().collect();
    if let Some(p) = pad
        && !stop.contains(&p)
    {
        stop.push(p);
    }
    json!({
        "bos_token_id": meta.get_u64("tokenizer.ggml.bos_token_id"),
        "eos_token_id": stop,
        "pad_token_id": pad,
    })
}
