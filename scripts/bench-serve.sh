#!/usr/bin/env bash
# `apr serve` against llama.cpp's `llama-server` under the same load, one after the other on
# the same machine and model: CLIENTS clients posting completions back to back for DURATION
# seconds (scripts/load_test.py), then the ratios apr / llama.cpp of throughput and latency.
#
#   scripts/bench-serve.sh [MODEL.gguf]
#
# Environment (defaults in brackets):
#   CLIENTS   concurrent clients [32]        DURATION  seconds per server [60]
#   MAX_TOKENS tokens per answer [32]        PARALLEL  slots in both servers [4]
#   THREADS   threads for both [2]           CTX       positions per slot [4096]
#   LLAMA_CPP where llama.cpp is built [target/llama.cpp]; llama-server is built there from the
#             llama-cpp-python 0.3.36 source distribution when missing (as bench-vs-llamacpp.sh)
#   OUT       results [target/bench-serve]
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-$(python3 scripts/fetch_model.py)}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-60}
MAX_TOKENS=${MAX_TOKENS:-32}
PARALLEL=${PARALLEL:-4}
THREADS=${THREADS:-2}
CTX=${CTX:-4096}
LLAMA_CPP=${LLAMA_CPP:-target/llama.cpp}
OUT=${OUT:-target/bench-serve}
mkdir -p "$OUT" "$LLAMA_CPP"
LLAMA_CPP=$(cd "$LLAMA_CPP" && pwd)

server="$LLAMA_CPP/src/vendor/llama.cpp/build/bin/llama-server"
if [[ ! -x $server ]]; then
    echo "bench-serve: building llama.cpp's llama-server in $LLAMA_CPP (about 20 minutes)" >&2
    python3 -m pip install --quiet cmake >/dev/null 2>&1 || true
    if [[ ! -d $LLAMA_CPP/src/vendor/llama.cpp ]]; then
        python3 -m pip download --quiet --no-binary :all: --no-deps -d "$LLAMA_CPP" llama-cpp-python==0.3.36
        mkdir -p "$LLAMA_CPP/src"
        tar -xzf "$LLAMA_CPP"/llama_cpp_python-0.3.36.tar.gz -C "$LLAMA_CPP/src" --strip-components=1
    fi
    cmake -S "$LLAMA_CPP/src/vendor/llama.cpp" -B "$LLAMA_CPP/src/vendor/llama.cpp/build" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=ON >/dev/null
    cmake --build "$LLAMA_CPP/src/vendor/llama.cpp/build" --target llama-server -j "$(nproc)" >/dev/null
fi
export LD_LIBRARY_PATH="$(dirname "$server")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cargo build --release --locked -p apr-cli --quiet

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_healthy() {
    for _ in $(seq 600); do
        if python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2).status != 200)" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "bench-serve: the server on port $1 never became healthy" >&2
    return 1
}
pid=
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null || true' EXIT
run() { # NAME PORT COMMAND...
    local name=$1 port=$2
    shift 2
    "$@" >"$OUT/$name.log" 2>&1 &
    pid=$!
    wait_healthy "$port"
    echo "bench-serve: $name: $CLIENTS clients for $DURATION s" >&2
    python3 scripts/load_test.py "http://127.0.0.1:$port" --clients "$CLIENTS" \
        --duration "$DURATION" --max-tokens "$MAX_TOKENS" --json "$OUT/$name.json" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
}

port=$(free_port)
run apr "$port" target/release/apr serve "$MODEL" --port "$port" --parallel "$PARALLEL" \
    --threads "$THREADS" --ctx-size "$CTX" --max-queue 64
port=$(free_port)
run llama "$port" "$server" -m "$MODEL" --port "$port" -np "$PARALLEL" -t "$THREADS" \
    -c $((CTX * PARALLEL))

python3 - "$OUT" <<'EOF_PY'
import json, sys
out = sys.argv[1]
apr, llama = (json.load(open(f"{out}/{n}.json")) for n in ("apr", "llama"))
rows = [("requests", "requests"), ("tokens/s", "tokens_per_s")]
print(f"{'':24}{'llama-server':>14}{'apr serve':>14}{'apr/llama':>11}")
def line(label, a, l, ratio=True):
    r = f"{a / l:.3f}" if ratio and a and l else ""
    print(f"{label:24}{l!s:>14}{a!s:>14}{r:>11}")
line("requests answered", apr["requests"], llama["requests"])
line("5xx / failed", f"{apr['server_errors']}/{apr['failed_connections']}",
     f"{llama['server_errors']}/{llama['failed_connections']}", False)
line("statuses", json.dumps(apr["statuses"]), json.dumps(llama["statuses"]), False)
line("generated tokens/s", apr["tokens_per_s"], llama["tokens_per_s"])
for p in ("p50", "p99"):
    line(f"latency {p} ms", apr["latency_ms"][p], llama["latency_ms"][p])
    line(f"TTFT {p} ms (streams)", apr["ttft_ms"][p], llama["ttft_ms"][p])
EOF_PY
