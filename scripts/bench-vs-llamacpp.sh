#!/usr/bin/env bash
# apr against llama.cpp, side by side on one machine: llama.cpp's llama-bench and `apr showcase`
# on the same GGUF file, with the same threads, prompt length and generation length, run in
# alternation (llama.cpp, apr, llama.cpp, apr, ...) so that both see the same machine. Prints
# the raw numbers of every round and the ratios apr / llama.cpp of decode and prefill speed,
# time to first token and peak RSS.
#
#   scripts/bench-vs-llamacpp.sh [MODEL.gguf]
#
# Environment (defaults in brackets):
#   THREADS   threads for both [physical cores]      ROUNDS  alternations [3]
#   PROMPT    prompt tokens [128]                    GEN     generated tokens [64]
#   REPS      timed repetitions per round and tool, after one warm-up, summarised by their
#             median [3]
#   LLAMA_CPP where llama.cpp is built [target/llama.cpp]; built there from the llama-cpp-python
#             0.3.36 source distribution (llama.cpp 0c1e57098) when llama-bench is missing
#   OUT       raw results [target/bench-vs-llamacpp]
#
# Time to first token: apr measures it (prompt, then the first sampled token); llama-bench
# reports prompt speed only, so its TTFT is PROMPT / prompt speed. Peak RSS is each process's
# maximum resident set, from /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-$(python3 scripts/fetch_model.py)}
PROMPT=${PROMPT:-128}
GEN=${GEN:-64}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
LLAMA_CPP=${LLAMA_CPP:-target/llama.cpp}
OUT=${OUT:-target/bench-vs-llamacpp}
mkdir -p "$OUT" "$LLAMA_CPP"
LLAMA_CPP=$(cd "$LLAMA_CPP" && pwd)

if [[ ! -x /usr/bin/time ]]; then
    echo "bench-vs-llamacpp: /usr/bin/time is needed for peak RSS (Debian package: time)" >&2
    exit 1
fi

bench="$LLAMA_CPP/src/vendor/llama.cpp/build/bin/llama-bench"
if [[ ! -x $bench ]]; then
    echo "bench-vs-llamacpp: building llama.cpp's llama-bench in $LLAMA_CPP (about 15 minutes)" >&2
    python3 -m pip --version >/dev/null
    python3 -m pip install --quiet cmake >/dev/null 2>&1 || true
    python3 -m pip download --quiet --no-binary :all: --no-deps -d "$LLAMA_CPP" llama-cpp-python==0.3.36
    rm -rf "$LLAMA_CPP/src"
    mkdir -p "$LLAMA_CPP/src"
    tar -xzf "$LLAMA_CPP"/llama_cpp_python-0.3.36.tar.gz -C "$LLAMA_CPP/src" --strip-components=1
    cmake -S "$LLAMA_CPP/src/vendor/llama.cpp" -B "$LLAMA_CPP/src/vendor/llama.cpp/build" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build "$LLAMA_CPP/src/vendor/llama.cpp/build" --target llama-bench -j "$(nproc)" >/dev/null
fi
export LD_LIBRARY_PATH="$(dirname "$bench")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cargo build --release --locked -p apr-cli --quiet
apr=target/release/apr
THREADS=${THREADS:-$(python3 - <<'EOF'
import os
cores = set()
package = core = None
try:
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and package is not None and core is not None:
            cores.add((package, core))
            package = core = None
except OSError:
    pass
print(min(len(cores) or os.cpu_count(), len(os.sched_getaffinity(0))))
EOF
)}

echo "bench-vs-llamacpp: $MODEL, $THREADS threads, prompt $PROMPT, generate $GEN, $ROUNDS rounds of $REPS" >&2
for round in $(seq 1 "$ROUNDS"); do
    echo "bench-vs-llamacpp: round $round: llama.cpp" >&2
    /usr/bin/time -f %M -o "$OUT/llama-$round.rss" \
        "$bench" -m "$MODEL" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r "$REPS" -o json \
        >"$OUT/llama-$round.json" 2>"$OUT/llama-$round.log"
    echo "bench-vs-llamacpp: round $round: apr" >&2
    /usr/bin/time -f %M -o "$OUT/apr-$round.rss" \
        "$apr" showcase "$MODEL" --threads "$THREADS" --prompt-tokens "$PROMPT" \
        --gen-tokens "$GEN" --iterations "$REPS" --warmup 1 --output "$OUT/apr-$round.json" \
        >"$OUT/apr-$round.log" 2>&1
done

python3 - "$OUT" "$ROUNDS" "$PROMPT" <<'EOF'
import json, statistics, sys
out, rounds, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rss = lambda path: int(open(path).read().split()[-1]) / 1024  # KiB -> MiB
rows = []
for r in range(1, rounds + 1):
    tests = json.load(open(f"{out}/llama-{r}.json"))
    # The median of llama-bench's repetitions, as apr's report gives its own.
    speed = lambda t: statistics.median(t.get("samples_ts") or [t["avg_ts"]])
    pp = next(speed(t) for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0)
    tg = next(speed(t) for t in tests if t["n_gen"] > 0 and t["n_prompt"] == 0)
    a = json.load(open(f"{out}/apr-{r}.json"))
    rows.append({
        "round": r,
        "llama_decode": tg, "apr_decode": a["decode_tokens_per_s"]["median"],
        "llama_prefill": pp, "apr_prefill": a["prefill_tokens_per_s"]["median"],
        "llama_ttft": prompt / pp * 1000, "apr_ttft": a["ttft_ms"]["median"],
        "llama_rss": rss(f"{out}/llama-{r}.rss"), "apr_rss": rss(f"{out}/apr-{r}.rss"),
    })
print(f"{'round':>5} {'decode tok/s':>21} {'prefill tok/s':>21} {'TTFT ms':>21} {'peak RSS MiB':>21}")
print(f"{'':>5} {'llama.cpp':>10} {'apr':>10} {'llama.cpp':>10} {'apr':>10} {'llama.cpp':>10} {'apr':>10} {'llama.cpp':>10} {'apr':>10}")
for x in rows:
    print(f"{x['round']:>5} {x['llama_decode']:>10.1f} {x['apr_decode']:>10.1f} {x['llama_prefill']:>10.1f} "
          f"{x['apr_prefill']:>10.1f} {x['llama_ttft']:>10.1f} {x['apr_ttft']:>10.1f} {x['llama_rss']:>10.1f} {x['apr_rss']:>10.1f}")
med = lambda k: statistics.median(x[k] for x in rows)
print()
print("medians, apr / llama.cpp (above 1 is better for apr in speed, below 1 in TTFT and RSS):")
for name, k, better in [("decode tok/s", "decode", "higher"), ("prefill tok/s", "prefill", "higher"),
                        ("TTFT ms", "ttft", "lower"), ("peak RSS MiB", "rss", "lower")]:
    l, a = med(f"llama_{k}"), med(f"apr_{k}")
    print(f"  {name:<14} llama.cpp {l:>8.1f}   apr {a:>8.1f}   ratio {a / l:.3f} ({better} is better)")
EOF
