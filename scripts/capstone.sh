#!/usr/bin/env bash
# The course capstone end to end on the real model: every Part of the seed in order, with the
# `apr` built here, filling DIR with the seed's deliverables tree and a report written from what
# was measured.
#
#   scripts/capstone.sh DIR           the seed's counts (showcase 10 + 2 warm-up, profile 100)
#                                     and its --optimize-size: about an hour on 2 cores, a
#                                     third of it Zstd's level 19 on the 2 GB F32 APR
#   scripts/capstone.sh --quick DIR   showcase 3 + 1, profile 10 + 1, 20 tokens instead of 200
#                                     for the --gpu run, and the browser's APR at the default
#                                     Zstd level (about 20 minutes)
#
# DIR ends up holding:
#   models/                 the GGUF, the SafeTensors and the LZ4 APR (and the direct GGUF->APR)
#   benchmarks/             FORMAT-benchmark.json (showcase), FORMAT-profile.json,
#                           FORMAT-trace.json (memory profile), report charts' data
#   deployments/cli/        prompts.txt, and each Part 2 answer
#   deployments/server/     config.toml (which the three servers are started with) and their
#                           answers to /v1/completions, /health and /v1/models
#   deployments/wasm/       the browser's APR (--target wasm --optimize-size); the seed's
#                           "presentar UI" crate (scripts/wasm-deployment.sh: apr-embed's
#                           Completer) and pkg/, its wasm-bindgen build; site/, the built page
#   comparison/             Part 5: the seeded outputs, their diffs and the first-token traces
#   logs/                   every command's output
#   report.md, report-*.svg the benchmark report (apr report)
#
# The import line names the Coder repo (the offline cache holds the Coder model); the servers
# take the seed's ports 8001-8003, or the next free ones. Part 5 records whether the formats'
# seeded outputs are equal rather than failing: the seed itself says quantized GGUF and F32
# SafeTensors may differ. `--gpu` without an adapter is logged as the clear error it is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

quick=false
if [[ "${1:-}" == "--quick" ]]; then
    quick=true
    shift
fi
if [[ $# -ne 1 ]]; then
    echo "usage: scripts/capstone.sh [--quick] DIR" >&2
    exit 2
fi
mkdir -p "$1"
dir=$(cd "$1" && pwd)

if $quick; then
    iterations=3 warmup=1 profile_iterations=10 profile_warmup=1 gpu_tokens=20 size_flag=()
else
    iterations=10 warmup=2 profile_iterations=100 profile_warmup=1 gpu_tokens=200
    size_flag=(--optimize-size)
fi

SECONDS=0
part() { printf '\n\033[1m== %s\033[0m (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)) >&2; }
# Runs a command, its output also in logs/NAME.log; a failure stops the run.
logged() {
    local name=$1
    shift
    printf '$ %s\n' "$*" >&2
    "$@" 2>&1 | tee "$dir/logs/$name.log"
}

part "setup: tools, the model, a release build of apr and of the page"
"$root/scripts/setup.sh" --web
(cd "$root" && cargo build --release --locked --quiet -p apr-cli)
export PATH="$root/target/release:$PATH"
"$root/scripts/web.sh" --build

cd "$dir"
mkdir -p models benchmarks logs comparison deployments/cli deployments/server deployments/wasm
formats=(gguf safetensors apr)
model() { echo "models/qwen2.5-coder-0.5b.$1"; }

part "Part 1: import, convert and check"
logged import apr import hf://Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF \
    --quantization q4_k_m \
    -o models/qwen2.5-coder-0.5b.gguf
logged inspect-gguf apr inspect models/qwen2.5-coder-0.5b.gguf
logged convert-safetensors apr rosetta convert \
    models/qwen2.5-coder-0.5b.gguf \
    models/qwen2.5-coder-0.5b.safetensors \
    --verify
logged inspect-safetensors apr inspect models/qwen2.5-coder-0.5b.safetensors
logged convert-apr apr rosetta convert \
    models/qwen2.5-coder-0.5b.safetensors \
    models/qwen2.5-coder-0.5b.apr \
    --compression lz4 \
    --verify
logged convert-apr-direct apr rosetta convert \
    models/qwen2.5-coder-0.5b.gguf \
    models/qwen2.5-coder-0.5b-direct.apr \
    --verify
logged inspect-apr apr inspect models/qwen2.5-coder-0.5b.apr --json
for f in "${formats[@]}"; do
    logged "check-$f" apr check "$(model "$f")"
done

part "Part 2: single-shot runs, chat, batch"
PROMPT="Write a Python function to calculate factorial:"
# Answers go to deployments/cli/, timings and banners to logs/.
answer() {
    local out=$1
    shift
    printf '$ %s\n' "$*" >&2
    "$@" > "deployments/cli/$out.txt" 2> "logs/$out.log"
    cat "deployments/cli/$out.txt"
    tail -1 "logs/$out.log" >&2
}
for f in "${formats[@]}"; do
    answer "run-$f" apr run "$(model "$f")" -p "$PROMPT" --max-tokens 100 --temperature 0.7
done
# The seed's three chat test cases, one turn each, in each format's chat.
chat_cases() {
    printf '%s\n' \
        'Explain the difference between `==` and `is` in Python' \
        'Write a Rust function to reverse a string' \
        'Debug this code: `for i in range(10): print(i`'
}
chat_cases | answer chat-gguf apr chat models/qwen2.5-coder-0.5b.gguf \
    --temperature 0.7 --top-p 0.9 --system "You are a helpful coding assistant."
for f in safetensors apr; do
    chat_cases | answer "chat-$f" apr chat "$(model "$f")" --temperature 0.7 --top-p 0.9
done
cat > deployments/cli/prompts.txt << 'EOF'
What is 2 + 2?
Write a hello world in Rust.
Explain async/await in JavaScript.
EOF
while IFS= read -r prompt; do
    echo "=== Prompt: $prompt ==="
    apr run models/qwen2.5-coder-0.5b.gguf \
        -p "$prompt" \
        --max-tokens 50 \
        --quiet
done < deployments/cli/prompts.txt | tee deployments/cli/batch-output.txt

part "Part 3: three servers, their endpoints"
cat > deployments/server/config.toml << 'EOF'
# apr serve's settings for the capstone's three servers, named as the flags are. Each server is
#   apr serve --config deployments/server/config.toml MODEL --port PORT
# (flags win over this file).
host = "0.0.0.0"
ctx-size = 4096
parallel = 4
max-queue = 64
drain-timeout = 30
EOF
# The seed's port, or the next free one.
free_port() {
    python3 - "$1" << 'EOF'
import socket, sys
port = int(sys.argv[1])
while True:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            print(port)
            break
        except OSError:
            port += 1
EOF
}
pids=()
stop_servers() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap stop_servers EXIT
ports=()
next=8001
for f in "${formats[@]}"; do
    port=$(free_port "$next")
    next=$((port + 1))
    ports+=("$port")
    apr serve --config deployments/server/config.toml "$(model "$f")" --port "$port" \
        > "logs/serve-$f.log" 2>&1 &
    pids+=($!)
    # Bind before the next pick: the server listens at once and answers 503 while it loads.
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://localhost:$port/health" && break
        sleep 0.1
    done
done
for i in 0 1 2; do
    f=${formats[$i]} port=${ports[$i]}
    for _ in $(seq 600); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://localhost:$port/health")" == 200 ]] && break
        sleep 0.5
    done
    curl -sf -X POST "http://localhost:$port/v1/completions" \
        -H "Content-Type: application/json" \
        -d '{
            "prompt": "def fibonacci(n):",
            "max_tokens": 100,
            "temperature": 0.7
        }' | tee "deployments/server/$f-completion.json"
    echo
    curl -sf "http://localhost:$port/health" | tee "deployments/server/$f-health.json"
    echo
    curl -sf "http://localhost:$port/v1/models" | tee "deployments/server/$f-models.json"
    echo
done
stop_servers

part "Part 4: throughput, latency and memory"
for f in "${formats[@]}"; do
    logged "showcase-$f" apr showcase "$(model "$f")" \
        --iterations "$iterations" \
        --warmup "$warmup" \
        --output "benchmarks/$f-benchmark.json"
done
for f in "${formats[@]}"; do
    printf '$ apr profile %s --prompt "Hello" --max-tokens 50 --iterations %s --json\n' \
        "$(model "$f")" "$profile_iterations" >&2
    apr profile "$(model "$f")" \
        --prompt "Hello" \
        --max-tokens 50 \
        --iterations "$profile_iterations" \
        --warmup "$profile_warmup" \
        --json > "benchmarks/$f-profile.json"
    jq -r '"p50 \(.request_ms.p50) ms, p95 \(.request_ms.p95) ms, p99 \(.request_ms.p99) ms"' \
        "benchmarks/$f-profile.json"
done
for f in "${formats[@]}"; do
    logged "trace-$f" apr trace "$(model "$f")" \
        -p "Test" \
        --trace-output "benchmarks/$f-trace.json" \
        --memory-profile
done

part "Part 5: output equivalence"
SEED=42
PROMPT="What is the capital of France?"
for f in "${formats[@]}"; do
    apr run "$(model "$f")" -p "$PROMPT" --seed $SEED --max-tokens 20 \
        > "comparison/$f-output.txt" 2> "logs/seeded-$f.log"
done
{
    for pair in "gguf safetensors" "safetensors apr"; do
        set -- $pair
        if diff "comparison/$1-output.txt" "comparison/$2-output.txt" > "comparison/$1-$2.diff"; then
            echo "$1 and $2: identical"
        else
            echo "$1 and $2: differ (comparison/$1-$2.diff)"
        fi
    done
    for f in "${formats[@]}"; do
        apr trace "$(model "$f")" -p "The answer is" --trace-output "comparison/$f-trace.json" \
            2> "logs/argmax-$f.log"
        echo "$f first-token argmax: $(jq '.first_token.argmax' "comparison/$f-trace.json")"
    done
} | tee comparison/summary.txt

part "Part 6: deployment scenarios"
logged edge apr run models/qwen2.5-coder-0.5b.gguf \
    -p "Summarize this in one sentence: Machine learning is..." \
    --max-tokens 30 \
    --threads 4
if apr gpu list > logs/gpu-list.log 2>&1; then
    logged gpu apr run models/qwen2.5-coder-0.5b.safetensors \
        -p "Generate a REST API in Python:" \
        --max-tokens "$gpu_tokens" \
        --gpu
else
    # No adapter: the run must refuse, not fall back to the CPU. Record its message.
    if apr run models/qwen2.5-coder-0.5b.safetensors -p "Generate a REST API in Python:" \
        --max-tokens "$gpu_tokens" --gpu > logs/gpu.log 2>&1; then
        echo "apr run --gpu succeeded although apr gpu list found no adapter" >&2
        exit 1
    fi
    echo "no GPU adapter here; apr run --gpu refused as it should: $(tail -1 logs/gpu.log)"
fi
# The seed's 6.3 runs from deployments/wasm and names ../models: a link makes that the models.
ln -sfn ../models deployments/models
"$root/scripts/wasm-deployment.sh" deployments/wasm
(
    cd deployments/wasm
    logged wasm-apr apr rosetta convert \
        ../models/qwen2.5-coder-0.5b.apr \
        qwen2.5-coder-0.5b-wasm.apr \
        --target wasm \
        "${size_flag[@]}"
    logged wasm-build cargo build --target wasm32-unknown-unknown --release
    logged wasm-bindgen wasm-bindgen target/wasm32-unknown-unknown/release/*.wasm --out-dir pkg
)
rm -rf deployments/wasm/site
cp -r "$root/dist" deployments/wasm/site

part "Part 7: the report"
logged report apr report benchmarks -o report.md

part "done in $((SECONDS / 60))m$((SECONDS % 60))s"
find models benchmarks deployments report.md report-*.svg -maxdepth 2 -type f | sort
