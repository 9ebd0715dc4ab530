//! `apr-embed`: apr inside your own web page. A [`Completer`] takes a model file's bytes (GGUF,
//! SafeTensors or APR, as `apr rosetta convert` writes them) and completes prompts greedily on
//! the CPU, with WebAssembly SIMD where the build enables it.
//!
//! Built as a `cdylib` for `wasm32-unknown-unknown` and run through `wasm-bindgen`, it is the
//! capstone's browser deployment (`scripts/wasm-deployment.sh` writes that crate). From
//! JavaScript:
//!
//! ```js
//! import { Completer } from "./pkg/capstone_wasm.js";
//! const bytes = new Uint8Array(await (await fetch("model.apr")).arrayBuffer());
//! const completer = new Completer(bytes);
//! console.log(completer.complete("def fibonacci(n):", 64));
//! ```
//!
//! The whole page with chat, conversion and WebGPU is `apr-web`; this is the small API for
//! embedding completion in a page of your own.

use apr_core::backend::KvType;
use apr_core::backend::cpu::Cpu;
use apr_core::format::model::ModelFile;
use apr_core::generate::{GenerateParams, Session};
use apr_core::model::Qwen2;
use apr_core::sample::SamplerConfig;
use apr_core::tokenizer::Tokenizer;
use wasm_bindgen::prelude::*;

/// KV cache positions: prompt and completion together.
pub const CONTEXT: usize = 4096;

/// A loaded model, ready to complete prompts; the Rust API behind [`Completer`].
pub struct Model {
    // Fields drop in declaration order: the session, which borrows `_bytes`, goes first.
    session: Session<'static, Cpu>,
    _bytes: Box<[u8]>,
}

impl core::fmt::Debug for Model {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Model")
            .field("bytes", &self._bytes.len())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Parses the file and builds the model and its tokenizer; the message says what is wrong
    /// with a file that cannot be used.
    pub fn load(bytes: Vec<u8>) -> Result<Self, String> {
        let bytes = bytes.into_boxed_slice();
        // SAFETY: `bytes` owns this allocation, which does not move when the box does, and is
        // stored in the same `Model` as the session, after it, so it is freed only once the
        // session is gone; the `'static` reference never leaves `Model`.
        let view: &'static [u8] =
            unsafe { core::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        let model = ModelFile::parse(view).map_err(|e| format!("cannot read the model: {e}"))?;
        let tokenizer = Tokenizer::from_metadata(&model.metadata)
            .map_err(|e| format!("the model's tokenizer cannot be built: {e}"))?;
        let qwen = Qwen2::load_with_cache(&model, Cpu::new(1), CONTEXT, KvType::default())
            .map_err(|e| format!("cannot load the model: {e}"))?;
        Ok(Self {
            session: Session::new(qwen, tokenizer),
            _bytes: bytes,
        })
    }

    /// The greedy continuation of `prompt`, at most `max_tokens` tokens, up to the model's
    /// end-of-generation token. Special-token text in the prompt is read as special tokens.
    pub fn complete(&mut self, prompt: &str, max_tokens: usize) -> Result<String, String> {
        let ids = self
            .session
            .tokenizer()
            .encode(prompt, true)
            .map_err(|e| format!("cannot tokenize the prompt: {e}"))?;
        let params = GenerateParams {
            max_tokens,
            sampler: SamplerConfig::greedy(),
            ..GenerateParams::default()
        };
        let outcome = self
            .session
            .generate(&ids, &params, |_| core::ops::ControlFlow::Continue(()))
            .map_err(|e| format!("generation failed: {e}"))?;
        Ok(outcome.text)
    }
}

/// Prompt completion in the browser: `new Completer(bytes)`, then `complete(prompt, maxTokens)`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Completer(Model);

#[wasm_bindgen]
impl Completer {
    /// Loads a GGUF, SafeTensors or APR file from its bytes; throws an `Error` saying what is
    /// wrong with a file that cannot be used.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: Vec<u8>) -> Result<Completer, JsError> {
        Model::load(bytes).map(Self).map_err(|e| JsError::new(&e))
    }

    /// The greedy continuation of `prompt`, at most `max_tokens` tokens.
    pub fn complete(&mut self, prompt: &str, max_tokens: usize) -> Result<String, JsError> {
        self.0
            .complete(prompt, max_tokens)
            .map_err(|e| JsError::new(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apr_core::dtype::GgmlType;
    use apr_core::synth::{self, Config};

    #[test]
    fn completes_as_the_core_generates() {
        let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
        let mut model = Model::load(gguf.clone()).unwrap();
        let text = model.complete("hello world", 12).unwrap();

        let file = ModelFile::parse(&gguf).unwrap();
        let tokenizer = Tokenizer::from_metadata(&file.metadata).unwrap();
        let ids = tokenizer.encode("hello world", true).unwrap();
        let qwen = Qwen2::load_with_cache(&file, Cpu::new(1), CONTEXT, KvType::default()).unwrap();
        let mut session = Session::new(qwen, tokenizer);
        let params = GenerateParams {
            max_tokens: 12,
            sampler: SamplerConfig::greedy(),
            ..GenerateParams::default()
        };
        let want = session
            .generate(&ids, &params, |_| core::ops::ControlFlow::Continue(()))
            .unwrap();
        assert!(!want.tokens.is_empty());
        assert_eq!(text, want.text);
        // A second prompt on the same model starts from its own tokens.
        assert_eq!(model.complete("hello world", 12).unwrap(), text);
    }

    #[test]
    fn a_file_that_is_not_a_model_is_refused_clearly() {
        let e = Model::load(b"not a model at all".to_vec()).unwrap_err();
        assert!(e.starts_with("cannot read the model: "), "{e}");
        let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
        let e = Model::load(gguf[..gguf.len() / 2].to_vec()).unwrap_err();
        assert!(e.starts_with("cannot read the model: "), "{e}");
    }
}
