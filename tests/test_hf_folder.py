"""The Hugging Face folder apr writes, loaded by the real libraries.

- `tokenizers` loads tokenizer.json and encodes like llama.cpp does with the GGUF vocabulary.
- `transformers` (CPU torch) loads the folder with from_pretrained; its greedy next token after
  "The capital of France is" is " Paris" (12095).

These libraries live in their own virtual environment (torch is large): scripts/setup.sh --tests
creates it, and APR_HF_PYTHON names its interpreter.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_formats_python import apr, real_model  # noqa: E402

HF_PYTHON = os.environ.get("APR_HF_PYTHON") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apr" / "hf-venv" / "bin" / "python")

# llama.cpp's /tokenize answers for the real model (parse_special on).
LLAMA_CPP_TOKENS = [
    ('def fibonacci(n):', [750, 75698, 1445, 1648]),
    ('The capital of France is', [785, 6722, 315, 9625, 374]),
    ('Write a Python function to calculate factorial:', [7985, 264, 13027, 729, 311, 11047, 52962, 25]),
    ('<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n<|im_start|>user\nWrite a Rust function to reverse a string<|im_end|>\n<|im_start|>assistant\n', [151644, 8948, 198, 2610, 525, 264, 10950, 10822, 17847, 13, 151645, 198, 151644, 872, 198, 7985, 264, 33789, 729, 311, 9931, 264, 914, 151645, 198, 151644, 77091, 198]),
    ('12345 + 67890', [16, 17, 18, 19, 20, 488, 220, 21, 22, 23, 24, 15]),
    ('Hello, world!', [9707, 11, 1879, 0]),
    ('<|im_start|>user', [151644, 872]),
    ('  indented\n\tcode', [220, 1257, 15864, 198, 43343]),
    ('naïve café 日本語 🚀', [3376, 37572, 586, 51950, 75402, 21894, 102819, 11162, 248, 222]),
]

PROBE = r"""
import json, sys
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, cases = sys.argv[1], json.loads(sys.argv[2])
tok = Tokenizer.from_file(folder + "/tokenizer.json")
encoded = [tok.encode(text, add_special_tokens=False).ids for text, _ in cases]
auto = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
ids = auto("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits[0, -1]
top = int(logits.argmax())
print(json.dumps({"encoded": encoded, "prompt": ids[0].tolist(), "top": top,
                  "piece": auto.decode([top]), "chat": auto.apply_chat_template(
                      [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)}))
"""


class HuggingFaceFolder(unittest.TestCase):
    def test_issue_3_transformers_loads_the_folder_and_predicts_paris(self):
        self.assertTrue(Path(HF_PYTHON).exists(),
                        f"{HF_PYTHON} is missing: run scripts/setup.sh --tests (or set APR_HF_PYTHON)")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "hf"
            apr("rosetta", "convert", real_model(), f"{folder}/", "--max-shard-size", "1GB")
            names = sorted(p.name for p in folder.iterdir())
            self.assertIn("model.safetensors.index.json", names)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            done = subprocess.run([HF_PYTHON, "-c", PROBE, str(folder), json.dumps(LLAMA_CPP_TOKENS)],
                                  capture_output=True, text=True, env=env)
            self.assertEqual(done.returncode, 0, done.stderr[-3000:])
            got = json.loads(done.stdout.strip().splitlines()[-1])
        for (text, want), ids in zip(LLAMA_CPP_TOKENS, got["encoded"]):
            self.assertEqual(ids, want, text)
        self.assertEqual(got["prompt"], [785, 6722, 315, 9625, 374])
        self.assertEqual((got["top"], got["piece"]), (12095, " Paris"))
        self.assertIn("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", got["chat"])


if __name__ == "__main__":
    unittest.main()
