//! Model file formats: recognising them and reading them.
//!
//! Each format lives in one module with its reader (and, as they land, its writer); the module doc
//! gives the byte layout. Today GGUF is read; SafeTensors and APR are recognised by their first
//! bytes so that tools can say what a file is even before they can read it.

pub mod apr;
pub mod gguf;
pub mod model;
pub mod safetensors;

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A model file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// llama.cpp's GGUF.
    Gguf,
    /// Hugging Face SafeTensors.
    Safetensors,
    /// apr's own format.
    Apr,
}

impl Format {
    /// Recognises a format from the first bytes of a file (16 are enough).
    pub fn sniff(head: &[u8]) -> Option<Self> {
        match head {
            [b'G', b'G', b'U', b'F', ..] => Some(Self::Gguf),
            [b'A', b'P', b'R', 0, ..] => Some(Self::Apr),
            // SafeTensors: a u64 header length, then a JSON object.
            [_, _, _, _, _, _, _, _, b'{', ..] => Some(Self::Safetensors),
            _ => None,
        }
    }

    /// Like [`Format::sniff`], with an error that shows the bytes found.
    pub fn detect(head: &[u8]) -> Result<Self, Error> {
        if head.is_empty() {
            return Err(Error::Empty);
        }
        Self::sniff(head).ok_or_else(|| Error::UnknownFormat {
            head: head.iter().take(8).copied().collect(),
        })
    }

    /// The format a file extension names (`gguf`, `safetensors`, `apr`, in any case).
    pub fn from_extension(ext: &str) -> Option<Self> {
        [Self::Gguf, Self::Safetensors, Self::Apr]
            .into_iter()
            .find(|f| f.extension().eq_ignore_ascii_case(ext))
    }

    /// The file extension of the format, without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
            Self::Apr => "apr",
        }
    }

    /// The name users know the format by.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gguf => "GGUF",
            Self::Safetensors => "SafeTensors",
            Self::Apr => "APR",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
