"""The seed-conformance harness itself (tests/seed/conformance.py), without running the commands:
it must take every command out of the document unchanged, substitute only what it says, and
generate a script bash accepts. The run itself is `scripts/test.sh --seed-conformance`."""

import re
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "seed"))
import conformance  # noqa: E402


class SeedConformanceHarness(unittest.TestCase):
    def setUp(self):
        self.doc = conformance.DOC.read_text()
        self.commands, self.expected = conformance.parse(self.doc)

    def test_the_copy_is_the_pinned_seed(self):
        import hashlib

        self.assertEqual(hashlib.sha256(conformance.DOC.read_bytes()).hexdigest(),
                         conformance.DOC_SHA256)

    def test_every_command_is_the_documents_text(self):
        self.assertEqual(len(self.commands), 65)
        for c in self.commands:
            self.assertIn(c.text, self.doc, c.id)
        # Nothing of a bash block is lost: its non-comment lines are exactly the commands'.
        blocks = re.findall(r"```bash\n(.*?)```", self.doc, re.S)
        wanted = [l for b in blocks for l in b.splitlines()
                  if l.strip() and not l.strip().startswith("#")]
        got = [l for c in self.commands for l in c.text.splitlines()
               if l.strip() and not l.strip().startswith("#")]
        self.assertEqual(got, wanted)
        firsts = [c.first_line() for c in self.commands]
        self.assertEqual(firsts[0], "mkdir -p capstone/models")
        self.assertIn("while IFS= read -r prompt; do", firsts)
        self.assertEqual(firsts[-1], "kill -9 $(lsof -t -i :8001)")
        curl = next(c for c in self.commands if c.first_line().startswith("curl -X POST"))
        self.assertTrue(curl.text.endswith("}'"), curl.text)

    def test_the_expected_output_block_is_found(self):
        self.assertEqual(self.expected[0], "Model: Qwen2.5-0.5B-Instruct")
        self.assertEqual(len(self.expected), 9)

    def test_only_the_allowed_substitutions(self):
        before = [c.text for c in self.commands]
        notes = conformance.substitute(self.commands, [8001, 8002, 8003])
        changed = [(b, c.text) for b, c in zip(before, self.commands) if b != c.text]
        self.assertEqual(len(changed), 1, notes)
        self.assertEqual(changed[0][1],
                         changed[0][0].replace(conformance.SEED_REPO, conformance.CODER_REPO))
        commands, _ = conformance.parse(self.doc)
        conformance.substitute(commands, [8001, 9102, 9103])
        texts = "\n".join(c.text for c in commands)
        self.assertNotIn("8002", texts)
        self.assertNotIn("8003", texts)
        self.assertEqual(texts.count("9102"), 4)
        self.assertIn("lsof -i :8001", texts)

    def test_the_generated_script_is_valid_bash_with_the_harness_around_commands(self):
        conformance.substitute(self.commands, [8001, 8002, 8003])
        folders = conformance.project_folders(self.doc)
        self.assertEqual(folders, ["models", "benchmarks", "deployments", "deployments/cli",
                                   "deployments/server", "deployments/wasm"])
        conformance.plan(self.commands, [8001, 8002, 8003], folders)
        cd = next(c for c in self.commands if c.first_line() == "cd capstone")
        self.assertEqual(cd.after, ["mkdir -p " + " ".join(folders)])
        by_design = [c.first_line() for c in self.commands if c.may_fail_with]
        self.assertEqual(len(by_design), 2, by_design)
        self.assertTrue(by_design[0].startswith("apr run models/qwen2.5-coder-0.5b.safetensors"))
        self.assertEqual(by_design[1], "apr import hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF")
        chats = [c for c in self.commands if c.stdin != "/dev/null"]
        self.assertEqual([c.first_line().split()[1] for c in chats], ["chat"] * 3)
        script = conformance.script(self.commands)
        r = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
