#!/usr/bin/env bash
# Builds the web app (trunk, release) and serves it on 127.0.0.1 with the default model beside
# it, so the printed page can load the model with one click. Installs what is missing first.
#
#   scripts/web.sh              build, then serve on http://127.0.0.1:8080/ until Ctrl-C
#   scripts/web.sh --build      build dist/ only (what any static host can serve)
#   PORT=9000 scripts/web.sh    another port
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --web
source scripts/web-env.sh

printf '\033[1mweb:\033[0m building dist/ (trunk build --release)\n' >&2
trunk build --release
gz=$(gzip -9 -c dist/apr-worker_bg.wasm | wc -c)
printf '\033[1mweb:\033[0m worker wasm %s bytes, %s gzipped\n' \
    "$(wc -c < dist/apr-worker_bg.wasm)" "$gz" >&2
[[ "${1:-}" == "--build" ]] && exit 0

model=$(python3 scripts/fetch_model.py)
exec node scripts/serve-web.mjs --dist dist --model "$model" --port "${PORT:-8080}"
