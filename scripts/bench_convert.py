#!/usr/bin/env python3
"""Benchmark (not a test): GGUF -> F32 SafeTensors of the real model, apr versus the Python path
(`gguf` dequantize + `safetensors.numpy.save_file`), in the same run on the same machine.

Reports wall time, output throughput and peak RSS of each, best of N runs, and the ratio.

    python3 scripts/bench_convert.py [--runs 3] [--out-dir DIR] [--python PY]

PY is an interpreter with numpy, gguf and safetensors (default: the test venv that
scripts/setup.sh --tests makes, ~/.cache/apr/hf-venv).
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PYTHON_PATH = r"""
import sys
import numpy as np
import gguf
from safetensors.numpy import save_file
src, out = sys.argv[1], sys.argv[2]
reader = gguf.GGUFReader(src)
tensors = {}
for t in reader.tensors:
    shape = tuple(reversed([int(d) for d in t.shape]))
    tensors[t.name] = np.ascontiguousarray(
        gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32))
save_file(tensors, out)
"""


def run(cmd):
    """Runs cmd; returns (seconds, peak RSS of the child in bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    # ru_maxrss of children is the max over all children so far; each run is measured in a fresh
    # process via /usr/bin/time when available, for an exact per-run figure.
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(before, after) * 1024


def measure(cmd):
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if not timer:
        return run(cmd)
    with tempfile.NamedTemporaryFile("r") as log:
        start = time.perf_counter()
        subprocess.run([timer, "-f", "%M", "-o", log.name, *cmd], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        rss_kb = int(log.read().strip().splitlines()[-1])
    return seconds, rss_kb * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out-dir", default=None)
    default_py = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apr" / "hf-venv" / "bin" / "python"
    ap.add_argument("--python", default=str(default_py))
    args = ap.parse_args()

    model = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_model.py")],
                           check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "apr-cli"], cwd=ROOT, check=True)
    apr = str(ROOT / "target" / "release" / "apr")
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="apr-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    # The floor: writing the same number of bytes with nothing to compute (dd-like), measured the
    # same way, so the machine's page-cache write speed can be told apart from conversion work.
    floor_script = ("import sys\nn = int(sys.argv[2])\nb = bytes(8 << 20)\n"
                    "with open(sys.argv[1], 'wb') as f:\n"
                    "    while n > 0:\n        f.write(b[:min(n, len(b))]); n -= len(b)\n")
    for name, cmd_for in [
        ("write", lambda out: [sys.executable, "-c", floor_script, out, "2525432832"]),
        ("apr", lambda out: [apr, "rosetta", "convert", model, out, "--force"]),
        ("python", lambda out: [args.python, "-c", PYTHON_PATH, model, out]),
    ]:
        best = None
        for _ in range(args.runs):
            out = str(out_dir / f"{name}.safetensors")
            if os.path.exists(out):
                os.remove(out)
            # Start each run with no dirty pages from the last one still being written back.
            os.sync()
            seconds, rss = measure(cmd_for(out))
            size = os.path.getsize(out)
            if best is None or seconds < best[0]:
                best = (seconds, rss, size)
        results[name] = best
        os.remove(out_dir / f"{name}.safetensors")
    print(f"GGUF -> F32 SafeTensors, {Path(model).name} ({os.path.getsize(model):,} bytes), best of {args.runs}")
    print(f"{'':8} {'seconds':>8} {'output':>14} {'GB/s out':>9} {'peak RSS':>10}")
    for name, (seconds, rss, size) in results.items():
        print(f"{name:8} {seconds:8.2f} {size:14,} {size / seconds / 1e9:9.2f} {rss / 2**20:8.0f} MiB")
    a, p = results["apr"][0], results["python"][0]
    print(f"apr is {p / a:.1f}x faster than the Python path; "
          f"'write' is the same bytes written with no conversion (this machine's floor)")


if __name__ == "__main__":
    main()
