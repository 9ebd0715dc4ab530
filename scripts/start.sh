#!/usr/bin/env bash
# Quick start: set up, build apr, import the default model the way the capstone does, and
# describe it. Safe to run any number of times; a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --quiet -p apr-cli
apr=target/release/apr

# The capstone's import line. The hub may be unreachable: setup.sh has filled the cache.
"$apr" import hf://Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF --quantization q4_k_m \
    -o models/qwen2.5-coder-0.5b.gguf >/dev/null
"$apr" inspect models/qwen2.5-coder-0.5b.gguf
