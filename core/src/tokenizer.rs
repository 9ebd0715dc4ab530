//! The tokenizer: Qwen2's byte-level BPE, through the `tokenizers` crate.
//!
//! It is built from a model's own metadata (`tokenizer.ggml.*`, which every format here carries,
//! rebuilt into a `tokenizer.json` by [`crate::hf::tokenizer_json`]) or from a `tokenizer.json`.
//! Control tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`) are matched before BPE when
//! special parsing is on, as llama.cpp does with `parse_special`; user-defined tokens (the FIM
//! markers) are always matched. No BOS is ever added.
//!
//! Decoding goes through each token's raw bytes, so [`TextStream`] can hold back a UTF-8
//! character split over tokens until it is complete.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::meta::Metadata;
use crate::{Error, Result};

/// Texts of end-of-generation tokens, besides the file's `eos_token_id` (llama.cpp's list).
const END_OF_GENERATION: [&str; 6] = [
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
];

/// A byte-level BPE tokenizer with its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    /// Matches control tokens first.
    parsing: tokenizers::Tokenizer,
    /// The same vocabulary with control tokens left to BPE as plain text.
    literal: tokenizers::Tokenizer,
    /// Each id's bytes.
    pieces: Vec<Vec<u8>>,
    /// Which ids are control tokens.
    control: Vec<bool>,
    /// Ids that end generation.
    end_of_generation: Vec<u32>,
}

impl core::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.pieces.len())
            .field("end_of_generation", &self.end_of_generation)
            .finish_non_exhaustive()
    }
}

fn tok_error(e: impl core::fmt::Display) -> Error {
    Error::Invalid(alloc::format!("tokenizer: {e}"))
}

/// GPT-2's byte-to-character map ([`crate::hf::byte_to_char`]) inverted, indexed by code point.
fn char_to_byte_table() -> Vec<Option<u8>> {
    let mut table = alloc::vec![None; 256 + 68];
    for b in 0..=255u8 {
        if let Some(slot) = table.get_mut(crate::hf::byte_to_char(b) as usize) {
            *slot = Some(b);
        }
    }
    table
}

impl Tokenizer {
    /// The tokenizer of a model, from its metadata.
    pub fn from_metadata(meta: &Metadata) -> Result<Self> {
        let json = crate::hf::tokenizer_json(meta).map_err(tok_error)?;
        let mut tok = Self::from_json(json.to_string().as_bytes())?;
        if let Some(eos) = meta.get_u64("tokenizer.ggml.eos_token_id") {
            tok.add_end_of_generation(eos);
        }
        if let Some(eot) = meta.get_u64("tokenizer.ggml.eot_token_id") {
            tok.add_end_of_generation(eot);
        }
        Ok(tok)
    }

    /// A tokenizer from `tokenizer.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let parsing = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_error)?;
        let mut literal = parsing.clone();
        literal.set_encode_special_tokens(true);
        let size = parsing.get_vocab_size(true);
        let mut pieces = alloc::vec![Vec::new(); size];
        let mut control = alloc::vec![false; size];
        let added = parsing.get_added_tokens_decoder();
        let byte_of = char_to_byte_table();
        for (id, piece) in pieces.iter_mut().enumerate() {
            let id32 = id as u32;
            if let Some(t) = added.get(&id32) {
                *piece = t.content.as_bytes().to_vec();
                control[id] = t.special;
            } else if let Some(text) = parsing.id_to_token(id32) {
                *piece = text
                    .chars()
                    .map(|c| byte_of.get(c as usize).copied().flatten().unwrap_or(b'?'))
                    .collect();
            }
        }
        let end_of_generation = (0..size as u32)
            .filter(|&id| {
                control[id as usize]
                    && END_OF_GENERATION
                        .iter()
                        .any(|t| t.as_bytes() == pieces[id as usize].as_slice())
            })
            .collect();
        Ok(Self {
            parsing,
            literal,
            pieces,
            control,
            end_of_generation,
        })
    }

    fn add_end_of_generation(&mut self, id: u64) {
        if let Ok(id) = u32::try_from(id)
            && (id as usize) < self.pieces.len()
            && !self.end_of_generation.contains(&id)
        {
            self.end_of_generation.push(id);
            self.end_of_generation.sort_unstable();
        }
    }

    /// Token ids of `text`. With `parse_special`, control-token texts become those tokens; without
    /// it they are ordinary text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tok = if parse_special {
            &self.parsing
        } else {
            &self.literal
        };
        let enc = tok.encode_fast(text, false).map_err(tok_error)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes of token `id` (`None` outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    /// Token `id`'s text, with any invalid UTF-8 replaced.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.token_bytes(id)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The text of `ids`; control tokens are left out when `skip_special`. Ids outside the
    /// vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let piece = self.token_bytes(id).ok_or_else(|| {
                Error::Invalid(alloc::format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.pieces.len()
                ))
            })?;
            if !(skip_special && self.is_control(id)) {
                bytes.extend_from_slice(piece);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a control or added token given by its text.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.parsing
            .get_added_vocabulary()
            .token_to_id(text, self.parsing.get_model())
    }

    /// Ids that end generation (`<|im_end|>`, `<|endoftext|>`, the file's EOS).
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Whether `id` ends generation.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
}

/// Turns token bytes into text as it becomes valid UTF-8: a character split over tokens comes
/// out whole, once its last byte arrives.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// A stream with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match core::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // Valid by construction.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // Bytes that can never be valid: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still pending, with an incomplete character replaced.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_inverts_gpt2() {
        let table = char_to_byte_table();
        let byte_of = |c: char| table.get(c as usize).copied().flatten();
        assert_eq!(byte_of('A'), Some(b'A'));
        assert_eq!(byte_of('Ġ'), Some(b' '));
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
        assert_eq!(byte_of('ĉ'), Some(b'\t'));
        assert_eq!(byte_of('\u{0100}'), Some(0));
        assert_eq!(byte_of('\u{0143}'), Some(0xad));
        assert_eq!(table.iter().flatten().count(), 256);
    }

    #[test]
    fn text_stream_holds_split_characters() {
        let rocket = "🚀".as_bytes();
        let mut s = TextStream::new();
        assert_eq!(s.push(b"go "), "go ");
        assert_eq!(s.push(&rocket[..2]), "");
        assert_eq!(s.push(&rocket[2..3]), "");
        assert_eq!(s.push(&rocket[3..]), "🚀");
        assert_eq!(s.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(s.push(&rocket[..1]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
