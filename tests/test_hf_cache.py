"""The model cache that scripts/fetch_model.py fills is the one Python's huggingface_hub reads."""

import os
import subprocess
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


class HuggingFaceCacheTest(unittest.TestCase):
    def test_huggingface_hub_finds_the_fetched_model_offline(self):
        fetched = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "fetch_model.py")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        found = subprocess.run(
            [sys.executable, "-c",
             "from huggingface_hub import hf_hub_download; "
             f"print(hf_hub_download({REPO!r}, {FILENAME!r}))"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout.strip()
        self.assertEqual(found, fetched)
        blob = Path(found).resolve()
        self.assertEqual(blob.name, SHA256, "blobs are named by their sha256")
        self.assertEqual(blob.parent.name, "blobs")
        self.assertFalse(os.path.isabs(os.readlink(found)), "snapshot links are relative")


if __name__ == "__main__":
    unittest.main()
