//! `apr-core`: the format, quantization and inference core shared by the `apr` command line, the
//! `apr serve` REST server and the browser worker.
//!
//! It reads and describes model files ([`mod@format`], [`info`]) and names every ggml tensor type
//! ([`dtype`]). It does no I/O of its own beyond mapping a file ([`mod@file`], with the `std`
//! feature): no network, no printing, no threads unless asked. Without the default `std` feature it
//! is `no_std` + `alloc` and builds for `wasm32-unknown-unknown`.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

extern crate alloc;
// The tokenizer and templates need Rust's standard library (not files): wasm32 has it.
#[cfg(all(feature = "tokenizer", not(feature = "std")))]
extern crate std;

pub mod backend;
#[cfg(feature = "tokenizer")]
pub mod chat_template;
pub mod check;
#[cfg(feature = "std")]
pub mod convert;
pub mod dtype;
pub mod error;
#[cfg(feature = "std")]
pub mod file;
pub mod format;
#[cfg(feature = "tokenizer")]
pub mod generate;
pub mod hf;
pub mod info;
pub mod meta;
pub mod model;
pub mod names;
pub mod quant;
pub mod sample;
#[cfg(feature = "std")]
pub mod synth;
#[cfg(feature = "tokenizer")]
pub mod tokenizer;
#[cfg(feature = "std")]
pub mod validate;
#[cfg(feature = "std")]
pub mod verify;
#[cfg(feature = "std")]
pub mod write;

pub use error::{Error, Result};
