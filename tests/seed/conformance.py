#!/usr/bin/env python3
"""The seed-conformance test: the course capstone run as written, against the real model.

tests/seed/capstone.md is the capstone document, copied byte for byte (its SHA-256 is pinned
below). This script takes every command out of its ```bash blocks, in order, and runs them in one
bash session, so `cd`, variables and the servers started with `&` carry on from block to block as
they do for a student typing them. Nothing is retyped: the commands are the document's text.

The only substitutions are the two the issue allows, and both are printed:
  - the repository in Part 1.1's `apr import` names the Coder model, which the offline cache
    holds (the document's own text says it imports Qwen2.5-Coder);
  - ports 8001-8003 become the next free ports if they are taken (none is changed when free).

What the harness adds around the commands, never inside them:
  - after `cd capstone`, the folders of the document's "Project Structure" (its Part 2.3 writes
    deployments/cli/prompts.txt with `cat >`, which needs the folder; no command creates it);
  - HF_HUB_OFFLINE=1, as on a machine without the hub, so the import of a repository that is not
    in the cache fails the same way everywhere;
  - the three chat test cases of Part 2.2 on each `apr chat`'s stdin (every other command gets an
    empty stdin);
  - waiting until the three servers of Part 3.1 answer /health with 200 before Part 3.2's curls;
  - before Part 6.3: `deployments/models -> ../models`, so its `../models/...` (written from
    deployments/wasm) finds the models, and the browser crate that its `cargo build` and
    `wasm-bindgen` build (scripts/wasm-deployment.sh);
  - before the Troubleshooting conversion: input.safetensors, a link to the capstone's
    SafeTensors (the document's placeholder name);
  - after Part 6.2's `--gpu` run: the same command again with no Vulkan driver, which must fail
    with the exact no-adapter error (where the machine has an adapter the first run must work).

Every command must exit 0 except the two that cannot work here by design, whose exact errors are
asserted: `apr import` of a repository that is not in the cache while offline, and `--gpu` without
an adapter. Then every command's output is checked against what the document says it produces:
the "Expected Output" of `apr inspect`, the verification checklist of Part 1.2, the ten stages of
`apr check`, the answers, the servers' JSON, the benchmark files, the equal outputs of Part 5, the
browser build (whose Completer is also run in Node against `apr run`'s greedy text).

    tests/seed/conformance.py WORKDIR     (needs the release apr on PATH, the real model in the
                                           cache, and scripts/setup.sh --tests --web done)

WORKDIR gets the capstone/ folder, seed.sh (the generated script), logs/ with each command's
stdout, stderr and exit status, and result.txt. It takes 60 to 80 minutes on 2 cores; scripts/test.sh
--seed-conformance runs it after the other tests.
"""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = Path(__file__).resolve().with_name("capstone.md")
DOC_SHA256 = "ddc0a69ce0ba4e8f9c5e5c74948c2d0f6789666dddddbbccd0b6d12ea464b8b3"

MODEL_BYTES = 491_400_064
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SEED_REPO = "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF"
CODER_REPO = "hf://Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
CHAT_CASES = [
    "Explain the difference between `==` and `is` in Python",
    "Write a Rust function to reverse a string",
    "Debug this code: `for i in range(10): print(i`",
]
NO_ADAPTER = (
    "error: --gpu: cannot run on the GPU: no GPU adapter found "
    "(tried wgpu's Vulkan, Metal and DX12 backends)\n"
)
END = "__APR_SEED_COMMAND__"


class Command:
    """One command of the document: its text, the heading it is under, and how it is run."""

    def __init__(self, number, part, text):
        self.id = f"{number:02d}"
        self.part = part
        self.text = text
        self.stdin = "/dev/null"
        self.before = []  # harness lines run before it
        self.after = []  # harness lines run after it
        self.may_fail_with = None  # the exact stderr of a failure by design
        self.must_fail = False  # whether that failure is certain here

    def first_line(self):
        return self.text.splitlines()[0]


def parse(doc):
    """The ```bash blocks' commands, in order, and the "Expected Output" block's lines."""
    commands, expected = [], None
    part, lang, block, after_expected = "", None, [], False
    for line in doc.splitlines():
        if lang is None:
            if line.startswith("## ") or line.startswith("### "):
                part = line.lstrip("#").strip()
            if line.strip() == "**Expected Output:**":
                after_expected = True
            if line.startswith("```"):
                lang, block = line[3:].strip(), []
            continue
        if not line.startswith("```"):
            block.append(line)
            continue
        if lang == "bash":
            for text in split_commands(block):
                commands.append(Command(len(commands) + 1, part, text))
        elif after_expected and expected is None:
            expected = block
        lang = None
    return commands, expected


def project_folders(doc):
    """The folders of the "Project Structure" tree, below capstone/."""
    m = re.search(r"^## Project Structure\n+```\n(.*?)```", doc, re.S | re.M)
    if not m:
        raise SystemExit("conformance: the document's Project Structure was not found")
    stack, folders = [], []
    for line in m.group(1).splitlines():
        entry = re.match(r"^((?:│   |    )*)[├└]── (\S+)/", line)
        if entry:
            depth = len(entry.group(1)) // 4
            stack = stack[:depth] + [entry.group(2)]
            folders.append("/".join(stack))
    return folders


def split_commands(lines):
    """A block's commands: continued lines, quoted strings over several lines, here-documents
    and while loops stay whole; comment lines between commands are dropped (a comment at the end
    of a line stays: bash reads it)."""
    commands, current, heredoc, depth, quote = [], [], None, 0, None
    for line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current.append(line)
        if heredoc is not None:
            if stripped == heredoc:
                heredoc = None
        else:
            if quote is None:
                m = re.search(r"<<-?\s*'?(\w+)'?", line)
                if m:
                    heredoc = m.group(1)
                if re.match(r"(while|for|until|if)\b", stripped):
                    depth += 1
                elif re.match(r"(done|fi)\b", stripped):
                    depth -= 1
            quote = open_quote(line, quote)
        if heredoc is None and quote is None and depth == 0 and not line.endswith("\\"):
            commands.append("\n".join(current))
            current = []
    if current:
        raise SystemExit(f"conformance: an unfinished command in the document: {current}")
    return commands


def open_quote(line, quote):
    """The quote still open at the end of `line`, given the one open at its start."""
    escaped = False
    for i, ch in enumerate(line):
        if quote == "'":
            if ch == "'":
                quote = None
        elif escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote == '"':
            if ch == '"':
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
    return quote


def free_ports(wanted):
    """The document's ports where free, else the next free ones."""
    ports, port = [], wanted[0]
    for _ in wanted:
        while True:
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", port))
                    break
                except OSError:
                    port += 1
        ports.append(port)
        port += 1
    return ports


def substitute(commands, ports):
    """The two allowed substitutions; each must apply exactly where expected."""
    notes = []
    imports = [c for c in commands if c.first_line().startswith(f"apr import {SEED_REPO} ")]
    if len(imports) != 1 or not c_has(imports[0], "-o models/qwen2.5-coder-0.5b.gguf"):
        raise SystemExit("conformance: Part 1.1's apr import is not where it was")
    imports[0].text = imports[0].text.replace(SEED_REPO, CODER_REPO, 1)
    notes.append(f"[{imports[0].id}] {SEED_REPO} -> {CODER_REPO}")
    mapping = {str(8001 + i): str(p) for i, p in enumerate(ports)}
    count = 0
    for c in commands:
        new, n = re.subn(r"\b800[123]\b", lambda m: mapping[m.group(0)], c.text)
        count += n
        if new != c.text:
            notes.append(f"[{c.id}] port {' '.join(f'{k}->{v}' for k, v in mapping.items() if k in c.text)}")
            c.text = new
    if count != 14:
        raise SystemExit(f"conformance: expected 14 uses of ports 8001-8003, found {count}")
    return notes


def c_has(command, text):
    return text in command.text


def cache_root():
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    if env.get("HF_HOME"):
        return f"{env['HF_HOME']}/hub"
    xdg = env.get("XDG_CACHE_HOME") or f"{Path.home()}/.cache"
    return f"{xdg}/huggingface/hub"


def plan(commands, ports, folders):
    """The harness around the commands: stdin, waits, set-up and failures by design."""
    chat_input = "$WORK/chat-input.txt"
    wait_done = False
    for c in commands:
        line = c.first_line()
        if line == "cd capstone":
            c.after.append("mkdir -p " + " ".join(folders))
        if line.startswith("apr chat "):
            c.stdin = chat_input
        if line.startswith("curl ") and not wait_done:
            c.before.append("wait_healthy " + " ".join(map(str, ports)))
            wait_done = True
        if line == "cd deployments/wasm":
            c.before.append("ln -sfn ../models deployments/models")
            c.before.append('"$ROOT/scripts/wasm-deployment.sh" deployments/wasm')
        if line.startswith("apr rosetta convert input.safetensors "):
            c.before.append('ln -sfn "$CAPSTONE/models/qwen2.5-coder-0.5b.safetensors" input.safetensors')
        if line.startswith("apr import ") and CODER_REPO not in line:
            repo = line.split("hf://", 1)[1].split()[0]
            folder = f"{cache_root()}/models--{repo.replace('/', '--')}"
            c.may_fail_with = (
                f"error: HF_HUB_OFFLINE is set, and {repo} (revision main) is not in the cache at "
                f"{folder}. To fill the cache, run this import where https://huggingface.co is "
                "reachable (or point HF_ENDPOINT at a mirror)\n"
            )
            c.must_fail = True
        if "--gpu" in c.text:
            c.may_fail_with = NO_ADAPTER
            c.after.append(f"no_adapter_rerun {c.id}")


HEADER = r"""# Generated by tests/seed/conformance.py from tests/seed/capstone.md: the document's commands,
# in order, each between `run_command ID EXPECT STDIN <<'__APR_SEED_COMMAND__'` and its end line.
# EXPECT is 0, or "by-design" for a command whose failure by design is checked afterwards.
cd "$WORK"
pids=()
stop_servers() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; }
trap stop_servers EXIT

run_command() {
    local _id=$1 _expect=$2 _stdin=$3 _cmd _rc
    _cmd=$(cat)
    printf '\n\033[1m[%s] $ %s\033[0m  (at %dm%02ds)\n' "$_id" "$_cmd" $((SECONDS / 60)) $((SECONDS % 60)) >&2
    printf '%s\n' "$_cmd" > "$LOGS/$_id.cmd"
    eval "$_cmd" < "$_stdin" > "$LOGS/$_id.out" 2> "$LOGS/$_id.err"
    _rc=$?
    if [[ "$_cmd" == *"&" ]]; then
        pids+=($!)
        echo $! > "$LOGS/$_id.pid"
    fi
    echo "$_rc" > "$LOGS/$_id.rc"
    head -c 1500 "$LOGS/$_id.out" >&2
    tail -n 4 "$LOGS/$_id.err" >&2
    if [[ "$_expect" == 0 && "$_rc" != 0 ]]; then
        echo "conformance: [$_id] exited $_rc" >&2
        exit 1
    fi
}

# Each server answers /health with 200 once its model is loaded.
wait_healthy() {
    local port code
    for port in "$@"; do
        for _ in $(seq 1800); do
            code=$(curl -s -o /dev/null -w '%{http_code}' "http://localhost:$port/health" || true)
            [[ "$code" == 200 ]] && break
            sleep 0.5
        done
        [[ "$code" == 200 ]] || { echo "conformance: no server answers on port $port" >&2; exit 1; }
    done
}

# The --gpu command again with no Vulkan driver to find: the error a machine without a GPU gets.
no_adapter_rerun() {
    (export VK_ICD_FILENAMES=/nonexistent/apr-no-icd.json; eval "$(cat "$LOGS/$1.cmd")") \
        < /dev/null > "$LOGS/$1-no-adapter.out" 2> "$LOGS/$1-no-adapter.err"
    echo $? > "$LOGS/$1-no-adapter.rc"
}
"""


def script(commands):
    out = [HEADER]
    for c in commands:
        out.append(f"\n# [{c.id}] {c.part}")
        out.extend(c.before)
        expect = "by-design" if c.may_fail_with else "0"
        out.append(f"run_command {c.id} {expect} \"{c.stdin}\" <<'{END}'")
        out.append(c.text)
        out.append(END)
        out.extend(c.after)
        if c.first_line().startswith("kill ") and "lsof" in c.text:
            # Killed (a zombie until reaped) or gone: nothing but "Z" may be left of it.
            # (grep finding no line must not end the script with its status 1.)
            out.append(f"sleep 1; ps -o stat= -p \"${{pids[0]}}\" | {{ grep -v '^Z' || true; }} > \"$LOGS/{c.id}-alive\"")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# What each command must have produced.


class Checks:
    def __init__(self, work, commands, expected_output):
        self.work = work
        self.logs = work / "logs"
        self.capstone = work / "capstone"
        self.commands = commands
        self.expected_output = expected_output
        self.failures = []
        self.passed = 0

    def out(self, c, suffix="out"):
        p = self.logs / f"{c.id}.{suffix}"
        return p.read_text(errors="replace") if p.exists() else None

    def rc(self, c):
        p = self.logs / f"{c.id}.rc"
        return int(p.read_text()) if p.exists() else None

    def expect(self, c, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"[{c.id}] {c.first_line()}: {what}")

    def apr_json(self, *args):
        r = subprocess.run(["apr", *args], capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def run(self):
        gguf_info = None
        for c in self.commands:
            rc = self.rc(c)
            if rc is None:
                self.failures.append(f"[{c.id}] {c.first_line()}: never ran")
                continue
            out, err = self.out(c), self.out(c, "err")
            if c.may_fail_with:
                if rc != 0 or c.must_fail:
                    self.expect(c, rc == 1 and err == c.may_fail_with,
                                f"exit {rc}, stderr {err!r}, wanted exit 1 and {c.may_fail_with!r}")
            else:
                self.expect(c, rc == 0, f"exit {rc}")
            line, text = c.first_line(), c.text
            if line.startswith(f"apr import {CODER_REPO}"):
                self.model_file(c)
            elif line == "apr inspect models/qwen2.5-coder-0.5b.gguf":
                gguf_info = self.inspect_expected(c, out)
            elif line == "apr inspect models/qwen2.5-coder-0.5b.safetensors":
                self.inspect_converted(c, out, gguf_info)
            elif line == "apr inspect models/qwen2.5-coder-0.5b.apr --json":
                self.inspect_apr(c, out)
            elif line.startswith("apr rosetta convert") and "--verify" in text:
                self.verified(c, out + err)
            elif line.startswith("apr check "):
                self.check_stages(c, out, line.endswith(".apr"))
            elif line.startswith("apr run ") and "--gpu" in text:
                self.gpu(c, rc, out, err)
            elif line.startswith("apr run ") and "--seed" in text:
                target = text.split("> ")[-1].strip()
                self.expect(c, Path(target).exists() and Path(target).read_text().strip(),
                            f"{target} is empty")
            elif line.startswith("apr run ") and "--threads 4" in text:
                self.expect(c, out.strip() != "", "no text")
                self.expect(c, "4 threads" in err, f"not on 4 threads: {err!r}")
            elif line.startswith("apr run "):
                self.expect(c, out.strip() != "", "no text")
            elif line.startswith("apr chat "):
                self.expect(c, out.strip() != "", "no answers")
            elif line.startswith("while IFS= read -r prompt"):
                self.batch(c, out)
            elif line.startswith("apr serve "):
                self.expect(c, (self.logs / f"{c.id}.pid").exists(), "not started in the background")
            elif line.startswith("curl -X POST"):
                self.completion(c, out)
            elif line.startswith("curl ") and line.endswith("/health"):
                self.expect(c, self.json(out) == {"status": "ok"}, f"health {out!r}")
            elif line.startswith("curl ") and line.endswith("/v1/models"):
                self.models(c, out)
            elif line.startswith("apr showcase "):
                self.showcase(c, text)
            elif line.startswith("apr profile "):
                self.profile(c, out)
            elif line.startswith("apr trace "):
                self.trace(c, text)
            elif line.startswith("jq '.first_token.argmax'"):
                self.expect(c, re.fullmatch(r"\d+\n", out or "") is not None, f"argmax {out!r}")
            elif line.startswith("diff "):
                self.expect(c, out == "", f"the outputs differ:\n{out}")
            elif line.startswith("apr rosetta convert ") and "--target wasm" in text:
                self.wasm_apr(c)
            elif line.startswith("cargo build --target wasm32-unknown-unknown"):
                wasm = list((self.capstone / "deployments/wasm/target/wasm32-unknown-unknown/release").glob("*.wasm"))
                self.expect(c, len(wasm) == 1, f"{len(wasm)} .wasm files")
            elif line.startswith("wasm-bindgen "):
                self.browser_build(c)
            elif line.startswith("apr rosetta convert input.safetensors"):
                info = self.apr_json("inspect", str(self.capstone / "deployments/wasm/output.apr"), "--json")
                self.expect(c, info and info["compression"] == "zstd" and info["tensor_count"] == 291,
                            f"output.apr: {info and info['compression']}")
            elif line.startswith("lsof -i"):
                self.expect(c, re.search(r"^apr\s.*\(LISTEN\)$", out or "", re.M) is not None,
                            f"lsof shows no apr server listening: {out!r}")
            elif line.startswith("kill -9 "):
                alive = self.logs / f"{c.id}-alive"
                self.expect(c, alive.exists() and alive.read_text().strip() == "",
                            "the server on that port is still running")
        self.argmax_agree()

    @staticmethod
    def json(text):
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            return None

    def model_file(self, c):
        path = self.capstone / "models/qwen2.5-coder-0.5b.gguf"
        ok = path.exists() and path.stat().st_size == MODEL_BYTES
        if ok:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            ok = h.hexdigest() == MODEL_SHA256
        self.expect(c, ok, f"{path} is not the Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF")

    def fields(self, text):
        got = {}
        for line in (text or "").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                got.setdefault(k.strip(), v.strip())
        return got

    def inspect_expected(self, c, out):
        """The document's Expected Output, line by line. Its model name follows the import's
        substitution; "494M" is the parameter count without the LM head, as ours also prints."""
        got = self.fields(out)
        for line in self.expected_output:
            key, want = (s.strip() for s in line.split(":", 1))
            have = got.get(key, "")
            if key == "Model":
                want_name = want.replace("Qwen2.5-", "Qwen2.5-Coder-").replace("-", " ").lower()
                ok = have.replace("-", " ").lower().startswith(want_name)
            elif key == "Parameters":
                ok = any(f"{round(float(x))}M" == want for x in re.findall(r"([\d.]+)M", have))
            else:
                ok = have == want
            self.expect(c, ok, f"{key}: {have!r}, the document says {want!r}")
        return got

    def inspect_converted(self, c, out, gguf):
        got = self.fields(out)
        gguf = gguf or {}
        count = lambda v: (v or "").split(" ")[0]
        self.expect(c, count(got.get("Tensors")) == count(gguf.get("Tensors")) != "",
                    f"tensor count {got.get('Tensors')!r} against the GGUF's {gguf.get('Tensors')!r}")
        for key in ("Vocabulary", "Architecture", "Layers", "Hidden Size", "Attention Heads"):
            self.expect(c, got.get(key) == gguf.get(key), f"{key} {got.get(key)!r} != {gguf.get(key)!r}")
        st = self.capstone / "models/qwen2.5-coder-0.5b.safetensors"
        self.expect(c, st.exists() and st.stat().st_size > MODEL_BYTES, "not larger than the GGUF")

    def inspect_apr(self, c, out):
        info = self.json(out) or {}
        self.expect(c, info.get("format") == "apr" and info.get("compression") == "lz4",
                    f"format {info.get('format')}, compression {info.get('compression')}")
        self.expect(c, info.get("tensor_count") == 291 and info.get("vocab_size") == 151936
                    and info.get("architecture") == "qwen2", "metadata not preserved")

    def verified(self, c, text):
        self.expect(c, " PASS" in text and " FAIL" not in text, "no passing verification")

    def check_stages(self, c, out, apr):
        stages = re.findall(r"^\s*(\d+)\. (.+?)\s{2,}(PASS|SKIP|FAIL)\s+(.*)$", out or "", re.M)
        self.expect(c, [int(s[0]) for s in stages] == list(range(1, 11)), f"{len(stages)} stages")
        self.expect(c, all(s[2] != "FAIL" for s in stages), "a stage failed")
        self.expect(c, "OK:" in (out or ""), "no OK line")
        if apr and len(stages) == 10:
            self.expect(c, "64" in stages[4][3] and stages[4][2] == "PASS", "not 64-byte aligned")
            self.expect(c, stages[5][2] == "PASS", "checksums not verified")

    def gpu(self, c, rc, out, err):
        if rc == 0:
            self.expect(c, "apr: GPU: " in err and out.strip() != "", f"no GPU answer: {err!r}")
        rerun_rc = (self.logs / f"{c.id}-no-adapter.rc").read_text().strip()
        rerun_err = (self.logs / f"{c.id}-no-adapter.err").read_text()
        self.expect(c, rerun_rc == "1" and rerun_err == NO_ADAPTER,
                    f"without an adapter: exit {rerun_rc}, {rerun_err!r}")

    def batch(self, c, out):
        heads = re.findall(r"^=== Prompt: (.*) ===$", out or "", re.M)
        prompts = (self.capstone / "deployments/cli/prompts.txt").read_text().splitlines()
        self.expect(c, heads == prompts, f"prompts {heads}")
        # An answer may be empty: sampled at the default temperature, the model's first token for
        # "What is 2 + 2?" without the chat template is <|im_end|> about one time in seven.
        answers = re.split(r"^=== Prompt: .* ===$", out or "", flags=re.M)[1:]
        self.expect(c, len(answers) == 3 and any(a.strip() for a in answers), "no answers")

    def completion(self, c, out):
        r = self.json(out) or {}
        choice = (r.get("choices") or [{}])[0]
        self.expect(c, r.get("object") == "text_completion" and choice.get("text", "").strip(),
                    f"completion {out!r}")
        self.expect(c, 0 < (r.get("usage") or {}).get("completion_tokens", 0) <= 100, "usage")

    def models(self, c, out):
        r = self.json(out) or {}
        data = r.get("data") or [{}]
        self.expect(c, r.get("object") == "list" and data[0].get("id", "").startswith("qwen2.5-coder-0.5b."),
                    f"models {out!r}")

    def showcase(self, c, text):
        path = self.capstone / text.split("--output")[1].split()[0]
        r = self.json(path.read_text()) if path.exists() else {}
        s = (r or {}).get("settings", {})
        self.expect(c, r and r.get("schema") == "apr-showcase/1" and s.get("iterations") == 10
                    and s.get("warmup") == 2 and len(r.get("runs", [])) == 10,
                    f"{path}: {s}")

    def profile(self, c, out):
        self.expect(c, re.search(r"^100 requests: ", out or "", re.M) is not None, "not 100 requests")
        row = re.search(r"^request\s+" + r"\s+".join([r"[\d.]+"] * 6) + r"$", out or "", re.M)
        header = re.search(r"p50\s+p95\s+p99", out or "")
        self.expect(c, row is not None and header is not None, "no P50/P95/P99 latencies")

    def trace(self, c, text):
        path = Path(text.split("--trace-output")[1].split()[0])
        if not path.is_absolute():
            path = self.capstone / path
        r = self.json(path.read_text()) if path.exists() else None
        self.expect(c, r and r.get("schema") == "apr.trace.v1"
                    and isinstance(r.get("first_token", {}).get("argmax"), int), f"{path}")
        if r and "--memory-profile" in text:
            self.expect(c, (r.get("memory") or {}).get("peak_rss_bytes", 0) > 0, "no memory profile")

    def argmax_agree(self):
        jq = [c for c in self.commands if c.first_line().startswith("jq '.first_token.argmax'")]
        values = {(self.out(c) or "").strip() for c in jq}
        if jq:
            self.expect(jq[-1], len(jq) == 3 and len(values) == 1, f"first tokens differ: {values}")

    def wasm_apr(self, c):
        path = self.capstone / "deployments/wasm/qwen2.5-coder-0.5b-wasm.apr"
        info = self.apr_json("inspect", str(path), "--json")
        self.expect(c, info and info["compression"] == "zstd" and info["tensor_count"] == 291,
                    f"{path}: {info and info['compression']}")

    def browser_build(self, c):
        """The pkg wasm-bindgen wrote, loaded in Node: its greedy completion of the GGUF must be
        the native `apr run`'s."""
        pkg = self.capstone / "deployments/wasm/pkg"
        names = sorted(p.name for p in pkg.glob("*")) if pkg.exists() else []
        want = ["capstone_wasm.d.ts", "capstone_wasm.js", "capstone_wasm_bg.js",
                "capstone_wasm_bg.wasm", "capstone_wasm_bg.wasm.d.ts"]
        self.expect(c, names == want, f"pkg holds {names}")
        if names != want:
            return
        gguf = self.capstone / "models/qwen2.5-coder-0.5b.gguf"
        prompt, n = "def fibonacci(n):", 16
        probe = self.work / "completer.mjs"
        probe.write_text(
            'import { readFileSync } from "node:fs";\n'
            f'import {{ Completer }} from "{pkg}/capstone_wasm.js";\n'
            "const c = new Completer(readFileSync(process.argv[2]));\n"
            f"process.stdout.write(c.complete({json.dumps(prompt)}, {n}));\n"
        )
        node = subprocess.run(["node", "--experimental-wasm-modules", "--no-warnings", str(probe), str(gguf)],
                              capture_output=True, text=True)
        native = subprocess.run(["apr", "run", str(gguf), "-p", prompt, "--temperature", "0",
                                 "--max-tokens", str(n), "--quiet"], capture_output=True, text=True)
        self.expect(c, node.returncode == 0 and node.stdout != ""
                    and node.stdout == native.stdout.removesuffix("\n"),
                    f"the browser build completes {node.stdout!r} ({node.stderr.strip()}), "
                    f"apr run {native.stdout!r}")


def main():
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[-2], file=sys.stderr)
        sys.exit(2)
    doc = DOC.read_bytes()
    if hashlib.sha256(doc).hexdigest() != DOC_SHA256:
        sys.exit(f"conformance: {DOC} is not the seed as copied (SHA-256 differs)")
    commands, expected_output = parse(doc.decode())
    if not expected_output:
        sys.exit("conformance: the document's Expected Output block was not found")
    ports = free_ports([8001, 8002, 8003])
    notes = substitute(commands, ports)
    plan(commands, ports, project_folders(doc.decode()))

    work = Path(sys.argv[1]).resolve()
    if (work / "capstone").exists():
        sys.exit(f"conformance: {work}/capstone exists; give an empty folder")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "chat-input.txt").write_text("\n".join(CHAT_CASES) + "\n")
    generated = script(commands)
    (work / "seed.sh").write_text(generated)
    print(f"conformance: {len(commands)} commands from {DOC.relative_to(ROOT)}", file=sys.stderr)
    for n in notes:
        print(f"conformance: substituted {n}", file=sys.stderr)

    env = dict(os.environ, HF_HUB_OFFLINE="1", WORK=str(work), LOGS=str(work / "logs"),
               ROOT=str(ROOT), CAPSTONE=str(work / "capstone"))
    started = time.monotonic()
    ran = subprocess.run(["bash", str(work / "seed.sh")], env=env, cwd=work)
    minutes = (time.monotonic() - started) / 60

    checks = Checks(work, commands, expected_output)
    checks.run()
    lines = [f"seed conformance: {len(commands)} commands, {checks.passed} checks passed, "
             f"{len(checks.failures)} failed, in {minutes:.0f} min"]
    lines += [f"  {n}" for n in notes]
    for c in commands:
        rc = checks.rc(c)
        tag = "by design" if c.may_fail_with and rc == 1 else ""
        lines.append(f"  [{c.id}] exit {rc if rc is not None else '-'} {tag:9} {c.part}: {c.first_line()}")
    lines += [f"FAILED {f}" for f in checks.failures]
    if ran.returncode != 0:
        lines.append(f"FAILED the script stopped (exit {ran.returncode})")
    (work / "result.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if not checks.failures and ran.returncode == 0 else 1)


if __name__ == "__main__":
    main()
