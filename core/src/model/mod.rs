//! Models: the qwen2 config and forward pass.

pub mod config;
pub mod qwen2;

pub use config::Config;
pub use qwen2::{KvCache, Logits, Observer, Op, Qwen2};
