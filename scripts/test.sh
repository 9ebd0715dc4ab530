#!/usr/bin/env bash
# Every test: formatting, lints, docs, the native and no_std/wasm32 builds, unit and integration
# tests, and the tests on the real model (which setup.sh fetches). CI runs exactly this.
#
#   scripts/test.sh                     everything CI runs (about 40 minutes on 2 cores)
#   scripts/test.sh --seed-conformance  and then the seed-conformance test: the capstone document
#                                       (tests/seed/capstone.md) run as written against the real
#                                       model, 60 to 80 minutes more; the nightly job (.ci/nightly)
set -euo pipefail
cd "$(dirname "$0")/.."

seed_conformance=false
case "${1:-}" in
    --seed-conformance) seed_conformance=true ;;
    "") ;;
    *) echo "usage: scripts/test.sh [--seed-conformance]" >&2; exit 2 ;;
esac

scripts/setup.sh --tests
# Mesa's Vulkan driver (the GPU tests) wants a runtime directory.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

# Each step says when it starts (minutes into the run), so a slow run shows where it went.
SECONDS=0
step() { printf '\n\033[1m== %s\033[0m (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)) >&2; }

# The build, the Python reference tools and the real model's conversions take tens of gigabytes;
# say what the disk had, so a failure for space reads as one.
df -h . "${TMPDIR:-/tmp}" >&2 || true

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
if [[ "$(uname -m)" == x86_64 ]]; then
    cargo clippy -p apr-core --all-targets --locked --target aarch64-unknown-linux-gnu -- -D warnings
fi

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Checks, not builds: these steps prove the crate compiles without std and for wasm32, and the
# web app's release build below compiles it for wasm32 in full anyway.
step "apr-core without std (no_std + alloc), natively and for wasm32"
cargo check -p apr-core --no-default-features --locked --quiet
cargo check -p apr-core --no-default-features --target wasm32-unknown-unknown --locked --quiet

step "apr-core's tokenizer, chat template and generation for wasm32"
cargo check -p apr-core --no-default-features --features tokenizer --target wasm32-unknown-unknown --locked --quiet

step "the web app for wasm32: lints and docs"
cargo clippy -p apr-web --target wasm32-unknown-unknown --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc -p apr-web --target wasm32-unknown-unknown --no-deps --locked --quiet

step "apr-embed for wasm32 (the seed's browser build): lints"
cargo clippy -p apr-embed --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "the web app: trunk build --release (the browser tests load dist/)"
(source scripts/web-env.sh && trunk build --release)

step "the apr binary (the Python tests and the fuzz seeds drive it)"
# The dev build, which the Rust tests below reuse: a release build would compile every
# dependency a second time for no test's sake (the kernels are optimised in dev too).
cargo build --workspace --locked --quiet
export APR_BIN="$PWD/target/debug/apr"

log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$log.web" "$pylog"' EXIT

step "cross-tool tests: huggingface_hub's cache, the Python gguf package, transformers"
python3 -m unittest discover -v -s tests -p 'test_*.py' 2>&1 | tee "$pylog"

step "fuzz every reader for a bounded time"
scripts/fuzz.sh "${APR_FUZZ_SECONDS:-20}"

step "the worker protocol and the page's state types in wasm32, in Node (wasm-bindgen-test)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p apr-web --target wasm32-unknown-unknown --test wasm --locked 2>&1 | tee "$log.web"

step "unit and integration tests, with those that need the real model and the browser"
cargo test --workspace --locked --no-fail-fast -- --include-ignored 2>&1 | tee "$log"
if [[ "$(uname -m)" == x86_64 ]]; then
    step "the NEON kernels against the scalar reference, on aarch64 under qemu"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        cargo test -p apr-core --lib --locked --target aarch64-unknown-linux-gnu -- quant:: \
        2>&1 | tee -a "$log"
fi
cat "$log.web" >> "$log"

step "the simd128 kernels against the scalar reference, in Node (wasm-bindgen-test)"
with_simd128() {
    RUSTFLAGS="-C target-feature=+simd128" \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner "$@"
}
with_simd128 cargo clippy -p apr-core --no-default-features --target wasm32-unknown-unknown --lib \
    --profile test --locked --target-dir target/wasm-simd128 -- -D warnings
with_simd128 cargo test -p apr-core --no-default-features --target wasm32-unknown-unknown --lib \
    --locked --target-dir target/wasm-simd128 -- quant:: 2>&1 | tee -a "$log"

step "the same with relaxed SIMD (the page's faster worker), in Node with relaxed SIMD on"
# Node 20 keeps relaxed SIMD behind a V8 flag that NODE_OPTIONS does not pass: a wrapper does.
nodewrap=$(mktemp -d)
printf '#!/bin/sh\nexec %s --experimental-wasm-relaxed-simd "$@"\n' "$(command -v node)" > "$nodewrap/node"
chmod +x "$nodewrap/node"
PATH="$nodewrap:$PATH" RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p apr-core --no-default-features --target wasm32-unknown-unknown --lib \
    --locked --target-dir target/relaxed-simd -- quant:: 2>&1 | tee -a "$log"
rm -rf "$nodewrap"

# One closing line for the whole suite, summed over every Rust test binary and the Python tests.
py=$(awk '/^Ran [0-9]+ tests? in/ { n += $2 } END { print n + 0 }' "$pylog")
step "done"
awk -v py="$py" '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p + py, f, i }' "$log"

if $seed_conformance; then
    step "the seed-conformance test: every command of the capstone document, as written"
    cargo build --release --locked --quiet -p apr-cli
    # Its models and builds take about 10 GB; the record of the run stays in target/.
    seed_dir=$(mktemp -d "${TMPDIR:-/tmp}/apr-seed.XXXXXX")
    record=target/seed-conformance
    status=0
    (source scripts/web-env.sh && PATH="$PWD/target/release:$PATH" \
        python3 tests/seed/conformance.py "$seed_dir") || status=$?
    rm -rf "$record" && mkdir -p "$record"
    cp -r "$seed_dir/result.txt" "$seed_dir/seed.sh" "$seed_dir/logs" "$record/" 2>/dev/null || true
    if [[ $status == 0 ]]; then
        rm -rf "$seed_dir"
    else
        echo "the seed-conformance test failed; its folder is kept: $seed_dir" >&2
    fi
    echo "seed conformance: $(head -1 "$record/result.txt" 2>/dev/null || echo 'no result') (record in $record)"
    exit "$status"
fi
