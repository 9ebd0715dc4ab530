#!/usr/bin/env bash
# Fuzzes each reader (GGUF, SafeTensors, APR) for a bounded time with cargo fuzz, starting from
# small valid files and the regression corpus. A crash is copied into core/tests/corpus, where
# `cargo test` replays it from then on, and this script fails.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Seeds: a tiny GGUF written by the Python gguf package, and apr's conversions of it (by
# $APR_BIN when set, else by a release build).
apr="${APR_BIN:-}"
if [[ -z "$apr" ]]; then
    cargo build --release --locked -q -p apr-cli
    apr=target/release/apr
fi
python3 - "$work/seed.gguf" <<'PY'
import sys
import numpy as np
import gguf
w = gguf.GGUFWriter(sys.argv[1], "qwen2")
w.add_block_count(1)
w.add_tokenizer_model("gpt2")
w.add_token_list(["a", "b", "ab"])
w.add_token_merges(["a b"])
w.add_tensor("token_embd.weight", np.linspace(-1, 1, 3 * 32, dtype=np.float32).reshape(3, 32))
q8 = gguf.quants.quantize(np.linspace(-2, 2, 64, dtype=np.float32).reshape(2, 32), gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("output.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
"$apr" convert "$work/seed.gguf" "$work/seed.safetensors" >/dev/null
"$apr" convert "$work/seed.gguf" "$work/seed.apr" >/dev/null
"$apr" convert "$work/seed.gguf" "$work/seed-lz4.apr" --compression lz4 >/dev/null
"$apr" convert "$work/seed.gguf" "$work/seed-zstd.apr" --compression zstd >/dev/null

status=0
rm -rf fuzz/artifacts
for target in gguf safetensors apr; do
    corpus="$work/corpus-$target"
    mkdir -p "$corpus"
    cp "$work"/seed* core/tests/corpus/*.bin "$corpus"/
    printf '\033[1mfuzz:\033[0m %s for %ss\n' "$target" "$seconds" >&2
    log="$work/$target.log"
    # -malloc_limit_mb catches any allocation sized by a claim in the input rather than its bytes.
    if (cd fuzz && cargo +nightly fuzz run "$target" "$corpus" -- \
            -max_total_time="$seconds" -max_len=65536 -malloc_limit_mb=256 -rss_limit_mb=2048 \
            -print_final_stats=1) >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" >&2 || true
    else
        status=1
        grep -E -A12 'panicked|==ERROR|SUMMARY|deadly signal|out-of-memory|malloc' "$log" | head -n 60 >&2 || tail -n 40 "$log" >&2
    fi
    for crash in fuzz/artifacts/"$target"/*; do
        [[ -f "$crash" ]] || continue
        known=false
        for kept in core/tests/corpus/*.bin; do
            cmp -s "$crash" "$kept" && known=true
        done
        $known && continue
        dest="core/tests/corpus/fuzz-$target-$(basename "$crash").bin"
        cp "$crash" "$dest"
        printf '\033[1mfuzz:\033[0m %s crashed; kept as %s (replayed by cargo test)\n' "$target" "$dest" >&2
    done
done
exit $status
