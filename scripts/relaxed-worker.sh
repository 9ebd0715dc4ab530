#!/usr/bin/env bash
# trunk's post-build hook (Trunk.toml): a second build of the worker with WebAssembly relaxed SIMD,
# whose fused multiply-add runs the model's kernels about 2.5 times as fast as the exact emulation
# plain SIMD128 needs. The page loads it only where the browser validates relaxed SIMD, and the
# plain worker elsewhere. Written into trunk's staging folder as apr-worker-relaxed*.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TRUNK_STAGING_DIR:?run by trunk build (Trunk.toml hooks)}"
profile=debug
flags=()
if [[ "${TRUNK_PROFILE:-debug}" == release ]]; then
    profile=release
    flags=(--release)
fi
# Its own target folder: other RUSTFLAGS would otherwise rebuild the plain worker's dependencies.
# Without the page feature: the worker does not need Leptos, and compiling it again with these
# flags would double this build's time.
RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
    cargo build "${flags[@]}" --locked --target wasm32-unknown-unknown -p apr-web --bin apr-worker \
    --no-default-features --target-dir target/relaxed-simd
wasm="target/relaxed-simd/wasm32-unknown-unknown/$profile/apr-worker.wasm"
wasm-bindgen --target no-modules --no-typescript --out-dir "$TRUNK_STAGING_DIR" \
    --out-name apr-worker-relaxed "$wasm"
if [[ "$profile" == release ]]; then
    out="$TRUNK_STAGING_DIR/apr-worker-relaxed_bg.wasm"
    wasm-opt -O3 --enable-simd --enable-relaxed-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
        "$out" -o "$out.opt"
    mv "$out.opt" "$out"
fi
printf 'importScripts("./apr-worker-relaxed.js");wasm_bindgen("./apr-worker-relaxed_bg.wasm");' \
    > "$TRUNK_STAGING_DIR/apr-worker-relaxed_loader.js"
