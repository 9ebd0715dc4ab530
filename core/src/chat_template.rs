//! Chat prompts: the model's own Jinja `chat_template` (`tokenizer.chat_template`), rendered with
//! minijinja. Nothing here knows ChatML; the template decides every marker, including the default
//! system prompt it inserts when the conversation has none.

use alloc::string::{String, ToString};

use serde::Serialize;

use crate::meta::Metadata;
use crate::{Error, Result};

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = alloc::format!("chat template: {e}");
    let mut source = core::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&alloc::format!(": {s}"));
        source = s.source();
    }
    Error::Invalid(msg)
}

impl ChatTemplate {
    /// The template a model file carries.
    pub fn from_metadata(meta: &Metadata) -> Result<Self> {
        let source = meta.get_str("tokenizer.chat_template").ok_or_else(|| {
            Error::Invalid("the model has no chat template (tokenizer.chat_template)".into())
        })?;
        let bos = meta.token_text("tokenizer.ggml.bos_token_id").unwrap_or("");
        let eos = meta.token_text("tokenizer.ggml.eos_token_id").unwrap_or("");
        Self::new(source, bos, eos)
    }

    /// Compiles `source`; `bos` and `eos` are the texts the template may name as `bos_token` and
    /// `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> core::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_error)?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(template_error)
    }
}
