#!/usr/bin/env python3
"""Load an OpenAI-compatible server: N clients post completions back to back for a fixed time.

    scripts/load_test.py http://127.0.0.1:8080 [--clients 32] [--duration 60] [--max-tokens 32]
                         [--stream-share 0.5] [--api-key KEY] [--json OUT.json]

Every client posts `/v1/completions` with its own seed (temperature 0.8) over a fresh
connection, half of them streamed by default, and waits for the whole answer before the next.
Answers are exactly `--max-tokens` long (llama.cpp's `ignore_eos`, which `apr serve` also takes),
so two servers are compared on the same work; `--allow-eos` lets the model stop early.
Counts every status and every failed connection (refused, reset, closed early, timed out), and
reports request latency percentiles over the 200s, time to first token for the streamed ones,
and generated tokens per second over the whole run (from `usage`, or counted chunks when a
stream has none). Standard library only; loopback only is the intent.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

PROMPTS = [
    "def fibonacci(n):",
    "Write a Python function that checks whether a string is a palindrome.",
    "// A binary search over a sorted slice in Rust\nfn binary_search(",
    "Explain what a mutex is in one paragraph.",
]


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def one_request(host, port, body, headers, stream, timeout):
    """-> (status, latency_s, ttft_s or None, tokens, error or None)"""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            return resp.status, time.perf_counter() - start, None, 0, None
        if not stream:
            answer = json.loads(resp.read())
            tokens = answer.get("usage", {}).get("completion_tokens", 0)
            return 200, time.perf_counter() - start, None, tokens, None
        ttft, chunks, usage, done = None, 0, None, False
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
        if not done:
            return None, time.perf_counter() - start, ttft, 0, "stream ended without [DONE]"
        return 200, time.perf_counter() - start, ttft, usage if usage is not None else chunks, None
    except (OSError, http.client.HTTPException, ValueError) as e:
        return None, time.perf_counter() - start, None, 0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--stream-share", type=float, default=0.5)
    ap.add_argument("--api-key")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--allow-eos", action="store_true", help="let answers end early")
    ap.add_argument("--json", help="write the summary here too")
    args = ap.parse_args()
    url = urlparse(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("load_test: loopback only")
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"

    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + args.duration

    def client(i):
        n = 0
        while time.perf_counter() < deadline:
            stream = (n * args.clients + i) % 100 < args.stream_share * 100
            body = {"prompt": PROMPTS[(i + n) % len(PROMPTS)], "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": i * 100003 + n, "ignore_eos": not args.allow_eos}
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            r = one_request(url.hostname, url.port or 80, body, headers, stream, args.timeout)
            with lock:
                results.append(r)
            n += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began

    statuses = {}
    for status, *_ in results:
        key = str(status) if status is not None else "failed"
        statuses[key] = statuses.get(key, 0) + 1
    ok = [r for r in results if r[0] == 200]
    latency = [r[1] for r in ok]
    ttft = [r[2] for r in ok if r[2] is not None]
    tokens = sum(r[3] for r in ok)
    errors = sorted({r[4] for r in results if r[4]})
    ms = lambda v: None if v is None else round(v * 1000, 1)
    summary = {
        "url": args.url, "clients": args.clients, "duration_s": round(wall, 1),
        "max_tokens": args.max_tokens, "requests": len(results), "statuses": statuses,
        "server_errors": sum(v for k, v in statuses.items() if k.startswith("5")),
        "failed_connections": statuses.get("failed", 0),
        "latency_ms": {"p50": ms(percentile(latency, 0.5)), "p90": ms(percentile(latency, 0.9)),
                       "p99": ms(percentile(latency, 0.99)),
                       "mean": ms(statistics.fmean(latency)) if latency else None},
        "ttft_ms": {"p50": ms(percentile(ttft, 0.5)), "p99": ms(percentile(ttft, 0.99))},
        "generated_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
        "requests_per_s": round(len(ok) / wall, 3), "errors": errors[:10],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
