#!/usr/bin/env python3
"""Regenerates tests/data/tokenizer_corpus.json: the token ids llama.cpp's llama-tokenize gives
for a broad corpus (code, whitespace runs, digits, scripts, emoji, special and FIM tokens).

    scripts/gen_tokenizer_corpus.py MODEL.gguf PATH/TO/llama-tokenize tests/data/tokenizer_corpus.json

llama-tokenize comes from llama.cpp's source (see tests/reference/README.md for where to get it).
"""
import json
import os
import subprocess
import sys
import tempfile

M, LT, out = sys.argv[1], sys.argv[2], sys.argv[3]
corpus = [
    "def fibonacci(n):\n    if n <= 1:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(2, 3)}`);\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello\")\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "public static void main(String[] args) { System.out.println(\"Hi\"); }",
    "<div class=\"x\"><p>Hello &amp; welcome</p></div>",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "x = [i**2 for i in range(100) if i % 3 == 0]  # squares",
    "    \n\t\t\n   \t  mixed   whitespace    runs\n\n\n\n",
    "a  b   c    d     e      f       g",
    "trailing spaces   \nand tabs\t\t\n",
    "1234567890 3.14159 -0.001 1e-9 0x1F 1,000,000 2024-11-28",
    "Phone: +1 (555) 123-4567, ZIP 90210, 12:34:56.789",
    "日本語のテキストと中文文本，还有한국어 문장。",
    "Привет, мир! Ελληνικά κείμενο. שלום עולם. مرحبا بالعالم",
    "emoji: 🚀🔥👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "naïve café résumé façade Zürich São Paulo",
    "mixed: English中文日本語한국어Русскийالعربية🙂123",
    "I'm you're he's they've we'd she'll IT'S DON'T",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>",
    "text with <|endoftext|> inside and <|im_end|> too",
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
    "tab\tseparated\tvalues\n1\t2\t3\n",
    "CamelCaseIdentifier snake_case_identifier SCREAMING_CASE kebab-case",
    "URL: https://example.com/path?query=1&other=two#frag",
    "math: ∑_{i=1}^{n} i² = n(n+1)/2, ∫ f(x) dx ≈ 0.5 ≤ π",
    "''' triple quotes ''' \"\"\" and `backticks` ```rust\ncode\n```",
    "\r\nwindows\r\nline\r\nendings\r\n",
    "!!!???...,,,;;;:::---___===+++***&&&%%%$$$###@@@",
    "",
    " ",
    "\n",
]
specials = {21: [True, False], 22: [True, False], 23: [True, False]}
cases = []
for i, text in enumerate(corpus):
    for parse in specials.get(i, [True]):
        fd, path = tempfile.mkstemp()
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
        args = [LT, "-m", M, "-f", path, "--ids", "--log-disable", "--no-escape"]
        if not parse:
            args.append("--no-parse-special")
        r = subprocess.run(args, capture_output=True, text=True, check=True)
        os.unlink(path)
        line = [l for l in r.stdout.strip().splitlines() if l.startswith("[")]
        ids = json.loads(line[-1]) if line else []
        cases.append({"text": text, "parse_special": parse, "ids": ids})
json.dump({"source": "llama-tokenize (llama.cpp 0c1e57098) on qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
           "cases": cases}, open(out, "w"), ensure_ascii=False, indent=1)
print(len(cases))
