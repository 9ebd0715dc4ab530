#!/usr/bin/env bash
# In-browser speed of the real model, apr's page against wllama (npm @wllama/wllama, llama.cpp in
# WebAssembly), one thread each, in headless Chromium. A benchmark, not a test.
#
#   scripts/bench-web.sh [--runs N] [--gen TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
scripts/web.sh --build
wllama=target/wllama-bench
if [[ ! -f "$wllama/node_modules/@wllama/wllama/esm/index.js" ]]; then
    mkdir -p "$wllama"
    npm install --prefix "$wllama" --no-audit --no-fund --silent @wllama/wllama@3.13.0
fi
model=$(python3 scripts/fetch_model.py)
exec node scripts/bench-web.mjs --model "$model" --wllama "$wllama/node_modules/@wllama/wllama/esm" "$@"
