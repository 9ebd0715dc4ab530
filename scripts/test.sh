#!/usr/bin/env bash
# Every test: formatting, lints, docs, the native and no_std/wasm32 builds, unit and integration
# tests, and the tests on the real model (which setup.sh fetches). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "apr-core without std (no_std + alloc), natively and for wasm32"
cargo build -p apr-core --no-default-features --locked --quiet
cargo build -p apr-core --no-default-features --target wasm32-unknown-unknown --locked --quiet

step "the web app for wasm32"
cargo check -p apr-web --target wasm32-unknown-unknown --locked --quiet

step "the Hugging Face cache, as Python's huggingface_hub sees it"
python3 -m unittest discover -s tests -p 'test_*.py'

step "unit and integration tests, with those that need the real model"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked -- --include-ignored 2>&1 | tee "$log"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
