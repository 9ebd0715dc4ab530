#!/usr/bin/env bash
# Writes the capstone's browser deployment crate into DIR (the seed's deployments/wasm), so that
# its Part 6.3 works as written from there:
#
#   cargo build --target wasm32-unknown-unknown --release
#   wasm-bindgen target/wasm32-unknown-unknown/release/*.wasm --out-dir pkg
#
# The crate, capstone-wasm, is a cdylib of apr-embed (this repository's embed/): a `Completer`
# that loads a GGUF, SafeTensors or APR file from its bytes and completes prompts in the page.
# It is its own workspace wherever DIR is, takes this checkout's Cargo.lock so it builds with
# the versions tested here (wasm-bindgen must match the CLI that scripts/web.sh installs), and
# builds with WebAssembly SIMD. Files already in DIR other than these are left alone.
#
#   scripts/wasm-deployment.sh DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ $# -ne 1 ]]; then
    echo "usage: scripts/wasm-deployment.sh DIR" >&2
    exit 2
fi
dir=$1
mkdir -p "$dir/src" "$dir/.cargo"

cat > "$dir/Cargo.toml" << EOF_TOML
[package]
name = "capstone-wasm"
description = "The capstone's in-browser code completion: apr-embed's Completer for wasm-bindgen."
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
apr-embed = { path = "$root/embed" }

[profile.release]
lto = true
codegen-units = 1

# Its own workspace, wherever the capstone folder is.
[workspace]
EOF_TOML

cat > "$dir/src/lib.rs" << 'EOF_RS'
//! The capstone's in-browser code completion: `new Completer(bytes)`, then
//! `completer.complete(prompt, maxTokens)` (see apr-embed).
pub use apr_embed::Completer;
EOF_RS

cat > "$dir/.cargo/config.toml" << 'EOF_CFG'
# The model's kernels use WebAssembly's 128-bit SIMD, which every current browser has.
[target.wasm32-unknown-unknown]
rustflags = ["-C", "target-feature=+simd128"]
EOF_CFG

cp "$root/Cargo.lock" "$dir/Cargo.lock"
echo "apr: wrote the capstone-wasm crate to $dir (apr-embed from $root/embed)" >&2
