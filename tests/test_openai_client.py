"""`apr serve` against the official `openai` Python package, on the real model.

The client is pointed at `base_url=http://127.0.0.1:PORT/v1` of a server started for the test on
an ephemeral loopback port. It must complete a chat with and without streaming, and a greedy
request must stream exactly the text it returns whole. Legacy completions, the model list and an
error answer go through the client too.
"""

import os
import re
import subprocess
import threading
import time
import unittest
import urllib.request

import openai

from test_formats_python import apr_bin, real_model


class Server:
    """`apr serve MODEL --port 0`, its address read from its log."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([apr_bin(), "serve", *map(str, args), "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.address = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                found = re.search(r"listening on http://(\S+)", line)
                if found and self.address is None:
                    self.address = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or self.address is None:
            self.close()
            raise AssertionError(f"apr serve did not start: {''.join(self.log)}")
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.address}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"apr serve never became healthy: {''.join(self.log)}")
            time.sleep(0.1)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.returncode


class OpenAIClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(real_model(), "--api-key", "test-key")
        cls.client = openai.OpenAI(base_url=f"http://{cls.server.address}/v1", api_key="test-key",
                                   max_retries=0, timeout=300)

    @classmethod
    def tearDownClass(cls):
        code = cls.server.close()
        assert code == 0, f"apr serve exited {code} after SIGTERM"

    MESSAGES = [
        {"role": "system", "content": "You are a helpful coding assistant."},
        {"role": "user", "content": "Write a Rust function to reverse a string"},
    ]

    def test_issue_6_chat_with_and_without_streaming(self):
        whole = self.client.chat.completions.create(
            model="any", messages=self.MESSAGES, max_tokens=32, temperature=0, seed=42)
        text = whole.choices[0].message.content
        self.assertEqual(whole.choices[0].message.role, "assistant")
        self.assertEqual(whole.choices[0].finish_reason, "length")
        self.assertEqual(whole.usage.completion_tokens, 32)
        self.assertEqual(whole.usage.total_tokens,
                         whole.usage.prompt_tokens + whole.usage.completion_tokens)
        # The first token is a near tie ("Certainly" against llama.cpp's "Here", 0.088 apart),
        # so the wording is not compared; the code is.
        self.assertIn("fn reverse_string(s: &str", text)

        stream = self.client.chat.completions.create(
            model="any", messages=self.MESSAGES, max_tokens=32, temperature=0, seed=42,
            stream=True, stream_options={"include_usage": True})
        pieces, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
        self.assertEqual("".join(pieces), text)
        self.assertGreater(len(pieces), 10, "the answer came in pieces")
        self.assertEqual(finish, "length")
        self.assertEqual(usage.completion_tokens, 32)

    def test_issue_6_completions_models_and_errors(self):
        done = self.client.completions.create(
            model="any", prompt="def fibonacci(n):", max_tokens=16, temperature=0)
        self.assertTrue(done.choices[0].text.startswith("\n    if n <= 0:"), done.choices[0].text)
        self.assertEqual(done.usage.prompt_tokens, 4)
        models = self.client.models.list()
        self.assertEqual(models.data[0].id, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model="any", messages=[], max_tokens=4)
        self.assertIn("messages", str(caught.exception))
        bad_key = openai.OpenAI(base_url=f"http://{self.server.address}/v1", api_key="wrong",
                                max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad_key.models.list()


if __name__ == "__main__":
    unittest.main()
