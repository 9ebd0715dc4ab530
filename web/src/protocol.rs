//! What the page and the worker say to each other. Every message is one of these enums as JSON
//! in the `json` field of a plain object; model bytes never go through JSON but ride beside it
//! in a `file` field as a `File`/`Blob` (see the `envelope` module).

use apr_core::info::ModelInfo;
use serde::{Deserialize, Serialize};

/// The page asks the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Load a model and make it the one that chats. Replaces any model loaded before.
    Load {
        /// Where its bytes come from.
        source: ModelSource,
        /// KV cache size in tokens.
        context: u32,
        /// Where to run it.
        #[serde(default)]
        device: Device,
    },
    /// Answer the last user message of a conversation.
    Chat {
        /// Echoed in every event of this answer.
        id: u32,
        /// The whole conversation, the system prompt first when there is one.
        messages: Vec<ChatMessage>,
        /// Sampling and length.
        params: ChatParams,
    },
    /// Stop the answer being generated, keeping what was said so far.
    Stop,
    /// Convert the attached file.
    Convert {
        /// Echoed in the answer.
        id: u32,
        /// The input's file name (the output is named after it).
        name: String,
        /// Target format and options.
        options: ConvertOptions,
    },
    /// Describe and check the attached file.
    Inspect {
        /// The file's name, for the report.
        name: String,
    },
    /// List the model cache.
    ListCache,
    /// Delete one cached model (`Some(key)`) or all of them.
    ClearCache {
        /// The entry to delete; `None` deletes every entry.
        key: Option<String>,
    },
}

/// Where a model runs, as the user chose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// WebGPU where the browser has it and the model fits there, else the CPU worker, with the
    /// reason shown.
    #[default]
    Auto,
    /// WebGPU, or a load error saying why not.
    Webgpu,
    /// The CPU: WebAssembly SIMD in the worker.
    Cpu,
}

impl Device {
    /// Every choice, as the page offers them.
    pub const ALL: [Self; 3] = [Self::Auto, Self::Webgpu, Self::Cpu];

    /// The choice's name in the page's settings.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "WebGPU, else CPU",
            Self::Webgpu => "WebGPU only",
            Self::Cpu => "CPU only",
        }
    }

    /// Its value in the settings control and in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Webgpu => "webgpu",
            Self::Cpu => "cpu",
        }
    }
}

/// Where a model's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSource {
    /// A dropped or picked file, attached to the message.
    File {
        /// Its name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A URL fetched by the worker (same origin, or a host that allows CORS).
    Url {
        /// Absolute URL.
        url: String,
    },
    /// A model in the worker's cache.
    Cache {
        /// The cache key.
        key: String,
    },
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// Who speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The system prompt.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// Sampling and length for one answer (the CLI's flags of the same names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass, in (0, 1].
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: u32,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampler seed.
    pub seed: u64,
    /// Continue the text as written, without the chat template (`apr run` without `--chat`):
    /// the prompt is the system prompt and every turn, joined as they are.
    #[serde(default)]
    pub raw: bool,
}

impl Default for ChatParams {
    /// The CLI's defaults (llama.cpp's), with a fixed seed so an answer can be repeated.
    fn default() -> Self {
        let s = apr_core::sample::SamplerConfig::default();
        Self {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k as u32,
            max_tokens: 512,
            seed: 42,
            raw: false,
        }
    }
}

/// Output format of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetFormat {
    /// `.gguf`
    Gguf,
    /// `.safetensors`
    Safetensors,
    /// `.apr`
    Apr,
}

impl TargetFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
            Self::Apr => "apr",
        }
    }
}

/// APR compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionChoice {
    /// Tensors as they are.
    #[default]
    None,
    /// LZ4 (fast).
    Lz4,
    /// Zstd (smaller).
    Zstd,
}

/// What `apr rosetta convert` takes, as the converter page offers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertOptions {
    /// Output format.
    pub target: TargetFormat,
    /// APR compression (`--compression`).
    pub compression: CompressionChoice,
    /// Zstd at its highest level (`--optimize-size`).
    pub optimize_size: bool,
    /// `--quantize TYPE` (e.g. `q8_0`, `q4_k_m`), or none.
    pub quantize: Option<String>,
    /// `--dtype f32|f16|bf16` for float output, or none.
    pub dtype: Option<String>,
    /// Read the output back and compare every tensor with the input (`--verify`).
    pub verify: bool,
}

/// What a task is, in progress and error events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Reading or downloading a model.
    Load,
    /// Generating an answer.
    Chat,
    /// Converting.
    Convert,
    /// Verifying a conversion.
    Verify,
    /// Inspecting and checking.
    Inspect,
    /// Managing the cache.
    Cache,
}

/// The worker tells the page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The worker runs and takes requests.
    Ready {
        /// The compute backend, as the page should name it.
        backend: String,
        /// Whether the model cache (the origin private file system) works here.
        cache: bool,
    },
    /// Bytes done of a task.
    Progress {
        /// Which task.
        task: Task,
        /// Bytes (or tensors' bytes) done.
        done: u64,
        /// The total, 0 when unknown.
        total: u64,
    },
    /// A model is loaded and ready to chat.
    Loaded {
        /// What it is.
        model: Box<ModelInfo>,
        /// Its file name.
        name: String,
        /// Milliseconds from the request to ready.
        load_ms: f64,
        /// Whether the bytes came from the cache.
        from_cache: bool,
        /// The KV cache size in tokens.
        context: u32,
        /// Where it runs, as the page should name it (with, on the CPU, why not WebGPU).
        backend: String,
    },
    /// One piece of an answer.
    Token {
        /// The request's id.
        id: u32,
        /// The token's id; `None` for text held back until the answer ended.
        token: Option<u32>,
        /// Its text (may be empty inside a multi-byte character).
        text: String,
        /// Milliseconds since the request arrived.
        at_ms: f64,
    },
    /// An answer ended.
    Done {
        /// The request's id.
        id: u32,
        /// `stop` (end of turn), `length` (max tokens or context) or `cancelled` (Stop).
        reason: String,
        /// Timings.
        stats: GenStats,
    },
    /// A conversion finished; the output file rides beside this message.
    Converted {
        /// The request's id.
        id: u32,
        /// The output's file name.
        name: String,
        /// Its size.
        bytes: u64,
        /// Seconds the conversion took (without verification).
        seconds: f64,
        /// Tensors written.
        tensors: usize,
        /// The verification's verdict, when asked for.
        verify: Option<VerifySummary>,
        /// The worker's WebAssembly memory afterwards: what the conversion needed at most on top
        /// of what the worker held before (the memory never shrinks).
        memory: u64,
    },
    /// A file's facts and check stages.
    Inspected {
        /// The file's name.
        name: String,
        /// `apr inspect`'s facts; absent when the file cannot be parsed.
        info: Option<Box<ModelInfo>>,
        /// `apr check`'s ten stages.
        stages: Vec<StageRow>,
        /// No stage failed.
        pass: bool,
    },
    /// The cache's entries.
    Cache {
        /// Every complete cached model.
        entries: Vec<CacheEntry>,
    },
    /// A task failed; the message is for people.
    Failed {
        /// Which task.
        task: Task,
        /// What went wrong and, where possible, what to do.
        message: String,
    },
}

/// Timings of one answer, as `apr run` reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenStats {
    /// Prompt tokens (after the cache's shared prefix was reused, the ones computed).
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the previous turn's cache.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub generated: usize,
    /// Prefill speed.
    pub prefill_tok_s: f64,
    /// Decode speed, from the first token to the last.
    pub decode_tok_s: f64,
    /// Milliseconds from the request to the first token.
    pub ttft_ms: f64,
}

/// A conversion's verification, in short.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifySummary {
    /// Every tensor matched within its tolerance.
    pub pass: bool,
    /// Tensors compared.
    pub tensors: usize,
    /// The first failure, if any.
    pub first_failure: Option<String>,
}

/// One `apr check` stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRow {
    /// 1..=10.
    pub number: u8,
    /// The stage's name.
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub status: String,
    /// What was found.
    pub detail: String,
}

/// A cached model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key to load or delete it by.
    pub key: String,
    /// The model's file name.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
    /// Where it came from: a URL, or `file`.
    pub origin: String,
}

/// The output file name the CLI's users would pick: the input's stem and the target's
/// extension, e.g. `model.gguf` → `model.apr`. An input already named with the target's
/// extension gets `.converted` before it, so the names differ.
pub fn output_name(input: &str, target: TargetFormat) -> String {
    let stem = match input.rsplit_once('.') {
        Some((stem, ext))
            if ["gguf", "safetensors", "apr"].contains(&ext.to_ascii_lowercase().as_str()) =>
        {
            stem
        }
        _ => input,
    };
    let stem = if stem.is_empty() { "model" } else { stem };
    let ext = target.extension();
    if input.to_ascii_lowercase().ends_with(&format!(".{ext}")) {
        format!("{stem}.converted.{ext}")
    } else {
        format!("{stem}.{ext}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let requests = [
            Request::Load {
                source: ModelSource::File {
                    name: "m.gguf".into(),
                    size: 10,
                },
                context: 2048,
                device: Device::Webgpu,
            },
            Request::Chat {
                id: 3,
                messages: vec![ChatMessage {
                    role: Role::User,
                    content: "hi \"there\"\n".into(),
                }],
                params: ChatParams::default(),
            },
            Request::Stop,
            Request::Convert {
                id: 1,
                name: "m.gguf".into(),
                options: ConvertOptions {
                    target: TargetFormat::Apr,
                    compression: CompressionChoice::Zstd,
                    optimize_size: true,
                    quantize: Some("q8_0".into()),
                    dtype: None,
                    verify: true,
                },
            },
            Request::ClearCache { key: None },
        ];
        for r in requests {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r, "{json}");
        }
    }

    #[test]
    fn the_wire_names_are_stable() {
        let json = serde_json::to_value(Request::Load {
            source: ModelSource::Url {
                url: "https://x/m.gguf".into(),
            },
            context: 4096,
            device: Device::Auto,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "load", "source": {"kind": "url", "url": "https://x/m.gguf"}, "context": 4096, "device": "auto"})
        );
        // A request from before the setting existed runs where WebGPU allows.
        let old = r#"{"type": "load", "source": {"kind": "cache", "key": "k"}, "context": 512}"#;
        let Request::Load { device, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not a load: {old}");
        };
        assert_eq!(device, Device::Auto);
        for d in Device::ALL {
            assert_eq!(serde_json::to_value(d).unwrap(), d.key());
        }
        let json = serde_json::to_value(Event::Failed {
            task: Task::Load,
            message: "no".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "failed", "task": "load", "message": "no"})
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "{\"type\":\"warp\"}",
            "{\"type\":\"chat\"}",
            "[1,2]",
            "null",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<Event>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_names_follow_the_cli() {
        assert_eq!(output_name("qwen.gguf", TargetFormat::Apr), "qwen.apr");
        assert_eq!(
            output_name("a.b.safetensors", TargetFormat::Gguf),
            "a.b.gguf"
        );
        assert_eq!(
            output_name("qwen.apr", TargetFormat::Apr),
            "qwen.converted.apr"
        );
        assert_eq!(output_name("weights", TargetFormat::Apr), "weights.apr");
        assert_eq!(output_name(".gguf", TargetFormat::Apr), "model.apr");
    }
}
