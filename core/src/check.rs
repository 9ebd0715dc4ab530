//! `apr check`: the ten stages of the seed, from magic bytes to an inference smoke test, for all
//! three formats. Each stage passes, fails or is skipped with a reason; a failed stage that
//! leaves nothing to examine skips the rest.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;

use crate::dtype::GgmlType;
use crate::format::Format;
use crate::format::model::ModelFile;
use crate::quant::can_dequantize;

/// A stage's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// It holds.
    Pass,
    /// It does not.
    Fail,
    /// Not applicable or not possible; the detail says why.
    Skip,
}

/// One stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// 1..=10.
    pub number: u8,
    /// The stage's name.
    pub name: &'static str,
    /// Verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
}

/// All stages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The format, once recognised.
    pub format: Option<Format>,
    /// The ten stages in order.
    pub stages: Vec<Stage>,
    /// No stage failed.
    pub pass: bool,
}

/// The stage names, in order.
pub const STAGES: [&str; 10] = [
    "magic",
    "header integrity",
    "metadata completeness",
    "tensor index consistency",
    "data alignment",
    "checksum",
    "tokenizer presence",
    "configuration completeness",
    "architecture compatibility",
    "inference smoke test",
];

/// Architectures apr can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["qwen2"];

struct Stages(Vec<Stage>);

impl Stages {
    fn push(&mut self, status: Status, detail: impl Into<String>) {
        let n = self.0.len();
        self.0.push(Stage {
            number: (n + 1) as u8,
            name: STAGES[n],
            status,
            detail: detail.into(),
        });
    }

    fn result(&mut self, problems: Vec<String>, ok: impl Into<String>) {
        if problems.is_empty() {
            self.push(Status::Pass, ok);
        } else {
            self.push(Status::Fail, problems.join("; "));
        }
    }

    fn skip_rest(&mut self, why: &str) {
        while self.0.len() < STAGES.len() {
            self.push(Status::Skip, why);
        }
    }
}

/// The tensors a qwen2 model must have, with their shapes, from its config.
pub fn expected_qwen2_shapes(model: &ModelFile<'_>) -> Result<Vec<(String, Vec<u64>)>, String> {
    let m = &model.metadata;
    let need = |k: &str| m.arch_u64(k).ok_or_else(|| format!("no {k}"));
    let layers = need("block_count")?;
    // Each layer has tensors, so a count beyond the tensors is a lie (and would be a huge table).
    if layers > model.tensors.len() as u64 {
        return Err(format!(
            "block_count {layers} exceeds the {} tensors in the file",
            model.tensors.len()
        ));
    }
    let hidden = need("embedding_length")?;
    let ffn = need("feed_forward_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = m.arch_u64("attention.head_count_kv").unwrap_or(heads);
    let vocab = m
        .vocab_size()
        .or_else(|| {
            model
                .tensor("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
        })
        .ok_or("no vocabulary size")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(format!(
            "hidden size {hidden} is not a multiple of {heads} heads"
        ));
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!(
            "{heads} heads are not a multiple of {kv_heads} KV heads"
        ));
    }
    let kv = (hidden / heads).saturating_mul(kv_heads);
    let mut v = alloc::vec![
        ("token_embd.weight".to_string(), alloc::vec![vocab, hidden]),
        ("output_norm.weight".to_string(), alloc::vec![hidden]),
    ];
    if model.tensor("output.weight").is_some() {
        v.push(("output.weight".to_string(), alloc::vec![vocab, hidden]));
    }
    for i in 0..layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        v.extend([
            (b("attn_norm.weight"), alloc::vec![hidden]),
            (b("attn_q.weight"), alloc::vec![hidden, hidden]),
            (b("attn_q.bias"), alloc::vec![hidden]),
            (b("attn_k.weight"), alloc::vec![kv, hidden]),
            (b("attn_k.bias"), alloc::vec![kv]),
            (b("attn_v.weight"), alloc::vec![kv, hidden]),
            (b("attn_v.bias"), alloc::vec![kv]),
            (b("attn_output.weight"), alloc::vec![hidden, hidden]),
            (b("ffn_norm.weight"), alloc::vec![hidden]),
            (b("ffn_gate.weight"), alloc::vec![ffn, hidden]),
            (b("ffn_up.weight"), alloc::vec![ffn, hidden]),
            (b("ffn_down.weight"), alloc::vec![hidden, ffn]),
        ]);
    }
    Ok(v)
}

/// Runs every stage on a whole file. `release` is passed to the parser (see
/// [`ModelFile::parse_with_release`]).
pub fn check(bytes: &[u8], release: &dyn Fn(&[u8])) -> CheckReport {
    let mut s = Stages(Vec::new());
    // 1. magic
    let format = match Format::detect(bytes) {
        Ok(f) => {
            s.push(Status::Pass, format!("{f} magic"));
            f
        }
        Err(e) => {
            s.push(Status::Fail, e.to_string());
            s.skip_rest("the file is not a model file");
            return finish(None, s);
        }
    };
    // 2. header integrity: the whole container parses and every bound holds.
    let model = match ModelFile::parse_with_release(bytes, release) {
        Ok(m) => {
            let what = match (&m.apr, format) {
                (Some(apr), _) => format!(
                    "APR v{}, header CRC32 ok, {} tensors, flags {:#06x}",
                    m.version,
                    m.tensors.len(),
                    apr.flags
                ),
                (None, Format::Gguf) => format!(
                    "GGUF v{}, {} metadata keys, {} tensors, all within the file",
                    m.version,
                    m.metadata.len(),
                    m.tensors.len()
                ),
                _ => format!(
                    "JSON header valid, {} tensors, offsets contiguous",
                    m.tensors.len()
                ),
            };
            s.push(Status::Pass, what);
            m
        }
        Err(e) => {
            s.push(Status::Fail, e.to_string());
            s.skip_rest("the header could not be read");
            return finish(Some(format), s);
        }
    };
    let meta = &model.metadata;
    // 3. metadata completeness
    let arch = meta.architecture().map(str::to_string);
    let mut missing = Vec::new();
    match &arch {
        None => missing.push("general.architecture".to_string()),
        Some(a) => {
            for k in crate::meta::HYPERPARAMETERS {
                if meta.arch(k).is_none() {
                    missing.push(format!("{a}.{k}"));
                }
            }
        }
    }
    if missing.is_empty() {
        s.push(
            Status::Pass,
            format!(
                "{} keys, architecture and hyperparameters present",
                meta.len()
            ),
        );
    } else if meta.is_empty() {
        s.push(
            Status::Fail,
            "no model metadata (a SafeTensors file needs apr.metadata in __metadata__)",
        );
    } else {
        s.push(Status::Fail, format!("missing {}", missing.join(", ")));
    }
    // 4. tensor index consistency
    let mut problems = Vec::new();
    let mut names: Vec<&str> = model.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        problems.push(format!("duplicate tensor {}", w[0]));
    }
    for t in &model.tensors {
        if t.compression != crate::format::apr::Compression::None {
            if let Err(e) = decoded_len_matches(t) {
                problems.push(e);
            }
        } else if t.data.len() as u64 != t.raw_size() {
            problems.push(format!(
                "{}: {} bytes for {} {:?}",
                t.stored_name,
                t.data.len(),
                t.dtype,
                t.shape
            ));
        }
    }
    let expected = if arch.as_deref() == Some("qwen2") {
        expected_qwen2_shapes(&model).ok()
    } else {
        None
    };
    if let Some(expected) = &expected {
        for (name, _) in expected {
            if model.tensor(name).is_none() {
                problems.push(format!("missing {name}"));
            }
        }
        for t in &model.tensors {
            if !expected.iter().any(|(n, _)| *n == t.name) {
                problems.push(format!("unexpected tensor {}", t.stored_name));
            }
        }
    }
    problems.truncate(8);
    s.result(
        problems,
        format!(
            "{} tensors, sizes match their types and shapes{}",
            model.tensors.len(),
            if expected.is_some() {
                ", the set matches the architecture"
            } else {
                ""
            }
        ),
    );
    // 5. data alignment
    let align = model.alignment;
    let misaligned: Vec<String> = model
        .tensors
        .iter()
        .filter(|t| {
            let unit = if format == Format::Safetensors {
                t.dtype.block_bytes().max(1)
            } else {
                align
            };
            t.offset % unit != 0
        })
        .take(5)
        .map(|t| format!("{} at {}", t.stored_name, t.offset))
        .collect();
    let rule = match format {
        Format::Apr => "every tensor on a 64-byte boundary".to_string(),
        Format::Gguf => format!("every tensor on a {align}-byte boundary"),
        Format::Safetensors => "every tensor aligned to its element size".to_string(),
    };
    s.result(
        misaligned
            .iter()
            .map(|m| format!("misaligned: {m}"))
            .collect(),
        rule,
    );
    // 6. checksum
    match (&model.apr, format) {
        (Some(apr), _) if apr.footer_verified => {
            s.push(Status::Pass, "header and file CRC32 verified");
        }
        (Some(_), _) => s.push(
            Status::Skip,
            "header CRC32 verified; no file CRC32 (written by the original apr tool)",
        ),
        (None, f) => s.push(Status::Skip, format!("{f} stores no checksum")),
    }
    // 7. tokenizer presence
    let mut problems = Vec::new();
    let tokens = meta
        .get("tokenizer.ggml.tokens")
        .and_then(crate::meta::MetaValue::as_array);
    match tokens {
        None => problems.push("no tokenizer.ggml.tokens".to_string()),
        Some(t) => {
            if meta.get_str("tokenizer.ggml.model") == Some("gpt2")
                && meta.get("tokenizer.ggml.merges").is_none()
            {
                problems.push("a BPE tokenizer without tokenizer.ggml.merges".into());
            }
            for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"] {
                if let Some(id) = meta.get_u64(key)
                    && id >= t.len() as u64
                {
                    problems.push(format!("{key} {id} is outside the {} tokens", t.len()));
                }
            }
        }
    }
    s.result(
        problems,
        format!(
            "{} model, {} tokens, {} merges, chat template {}",
            meta.get_str("tokenizer.ggml.model").unwrap_or("?"),
            tokens.map_or(0, <[_]>::len),
            meta.get("tokenizer.ggml.merges")
                .and_then(crate::meta::MetaValue::as_array)
                .map_or(0, <[_]>::len),
            if meta.get_str("tokenizer.chat_template").is_some() {
                "present"
            } else {
                "absent"
            }
        ),
    );
    // 8. configuration completeness: the config is consistent and every shape follows from it.
    match (arch.as_deref(), expected_qwen2_shapes(&model)) {
        (Some("qwen2"), Ok(expected)) => {
            let mut problems = Vec::new();
            for (name, shape) in &expected {
                if let Some(t) = model.tensor(name)
                    && &t.shape != shape
                {
                    problems.push(format!(
                        "{} is {:?}, the config says {:?}",
                        t.stored_name, t.shape, shape
                    ));
                }
            }
            if let (Some(tokens), Some(vocab)) =
                (tokens, expected.first().and_then(|(_, s)| s.first()))
                && tokens.len() as u64 > *vocab
            {
                problems.push(format!(
                    "{} tokens but {vocab} embedding rows",
                    tokens.len()
                ));
            }
            problems.truncate(8);
            s.result(
                problems,
                "config is consistent and every tensor shape follows from it",
            );
        }
        (Some("qwen2"), Err(e)) => s.push(Status::Fail, e),
        (Some(a), _) => s.push(Status::Skip, format!("no shape rules for {a}")),
        (None, _) => s.push(Status::Fail, "no architecture"),
    }
    // 9. architecture compatibility
    let undecodable: Vec<GgmlType> = {
        let mut v: Vec<GgmlType> = model
            .tensors
            .iter()
            .map(|t| t.dtype)
            .filter(|d| !can_dequantize(*d))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    match arch.as_deref() {
        Some(a) if SUPPORTED_ARCHITECTURES.contains(&a) && undecodable.is_empty() => {
            s.push(
                Status::Pass,
                format!("{a} is supported and every tensor type has a kernel"),
            );
        }
        Some(a) if !SUPPORTED_ARCHITECTURES.contains(&a) => s.push(
            Status::Fail,
            format!(
                "architecture {a} is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ),
        Some(_) => s.push(Status::Fail, format!("no kernel for {undecodable:?}")),
        None => s.push(Status::Fail, "no architecture"),
    }
    // 10. inference smoke test
    if s.0.iter().any(|st| st.status == Status::Fail) {
        s.push(Status::Skip, "an earlier stage failed");
    } else {
        match smoke_test(&model) {
            Ok(detail) => s.push(Status::Pass, detail),
            Err(why) => s.push(Status::Fail, why),
        }
    }
    finish(Some(format), s)
}

/// Tokens generated by the smoke test.
pub const SMOKE_TOKENS: usize = 4;

/// Generates [`SMOKE_TOKENS`] greedy tokens twice on the CPU backend from a short fixed prompt:
/// every logit must be finite and both runs must pick the same tokens.
pub fn smoke_test(model: &ModelFile<'_>) -> Result<String, String> {
    use crate::backend::cpu::Cpu;
    use crate::model::{Logits, Qwen2};
    #[cfg(feature = "std")]
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    #[cfg(not(feature = "std"))]
    let threads = 1;
    let mut qwen = Qwen2::load(model, Cpu::new(threads), 16).map_err(|e| e.to_string())?;
    let vocab = qwen.config().vocab as u32;
    // Ids spread over the vocabulary; no tokenizer is needed.
    let prompt: Vec<u32> = [1u32, 100, 1000, 10_000]
        .iter()
        .map(|&t| t % vocab)
        .collect();
    let mut runs: Vec<Vec<u32>> = Vec::new();
    for _ in 0..2 {
        qwen.truncate(0);
        let mut picked = Vec::new();
        let mut logits = qwen
            .forward(&prompt, Logits::Last)
            .map_err(|e| e.to_string())?;
        for step in 0..SMOKE_TOKENS {
            if let Some(bad) = logits.iter().position(|l| !l.is_finite()) {
                return Err(format!(
                    "logit {bad} is {} at step {step}: the weights or the kernels are broken",
                    logits[bad]
                ));
            }
            let next = crate::sample::argmax(&logits);
            picked.push(next);
            if step + 1 < SMOKE_TOKENS {
                logits = qwen
                    .forward(&[next], Logits::Last)
                    .map_err(|e| e.to_string())?;
            }
        }
        runs.push(picked);
    }
    if runs[0] != runs[1] {
        return Err(format!(
            "greedy decoding is not deterministic: {:?} then {:?}",
            runs[0], runs[1]
        ));
    }
    Ok(format!(
        "{SMOKE_TOKENS} greedy tokens {:?} twice, logits finite, argmax stable",
        runs[0]
    ))
}

fn finish(format: Option<Format>, s: Stages) -> CheckReport {
    let pass = s.0.iter().all(|st| st.status != Status::Fail);
    CheckReport {
        format,
        stages: s.0,
        pass,
    }
}

/// Decodes a compressed tensor in pieces and checks it yields exactly its size.
#[cfg(feature = "std")]
fn decoded_len_matches(t: &crate::format::model::Tensor<'_>) -> Result<(), String> {
    use std::io::Read;
    let mut reader = t.reader().map_err(|e| e.to_string())?;
    let mut buf = alloc::vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("{}: does not decompress: {e}", t.stored_name))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > t.raw_size() {
            break;
        }
    }
    if total == t.raw_size() {
        Ok(())
    } else {
        Err(format!(
            "{}: decompresses to {}{total} bytes, its type and shape need {}",
            t.stored_name,
            if total > t.raw_size() {
                "more than "
            } else {
                ""
            },
            t.raw_size()
        ))
    }
}

#[cfg(not(feature = "std"))]
fn decoded_len_matches(t: &crate::format::model::Tensor<'_>) -> Result<(), String> {
    t.decode().map(|_| ()).map_err(|e| e.to_string())
}
