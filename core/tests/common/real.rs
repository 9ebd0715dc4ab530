//! The real model, fetched and verified by `scripts/fetch_model.py`, and the llama.cpp
//! reference outputs copied into `tests/reference/`.
#![allow(dead_code)]

use std::path::PathBuf;

/// The real model's path (fetched on first use).
pub fn real_model() -> PathBuf {
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/fetch_model.py"
        ))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A file of the llama.cpp reference outputs.
pub fn reference(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reference")).join(name)
}
