#!/usr/bin/env node
// In-browser CPU speed of the real model: the apr page against wllama (llama.cpp compiled to
// WebAssembly), in the same headless Chromium, on the same file, with one thread each, on the
// same prompt as a plain completion. Run through scripts/bench-web.sh, which builds and installs
// what this needs. Prints one line per measurement and a table at the end.
//
//   node scripts/bench-web.mjs --model M.gguf --wllama DIR [--runs 3] [--prompt-file F] [--gen 64]
import { readFileSync, writeFileSync, mkdtempSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createRequire } from "node:module";
import { serve, DEFAULT_MODEL_PATH } from "./serve-web.mjs";
import { HOOK } from "../tests/web/hook.mjs";

const require = createRequire(import.meta.url);
const { chromium } = require(join(process.cwd(), "tests/web/node_modules/playwright-core"));

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const model = arg("model");
const wllamaDir = arg("wllama");
const runs = Number(arg("runs", "3"));
const gen = Number(arg("gen", "64"));
const prompt = arg("prompt-file") ? readFileSync(arg("prompt-file"), "utf8") : [
  "# A small library of numeric helpers, written for clarity first.",
  "",
  "def gcd(a, b):",
  '    """Greatest common divisor by Euclid\'s algorithm."""',
  "    while b:",
  "        a, b = b, a % b",
  "    return abs(a)",
  "",
  "def lcm(a, b):",
  '    """Least common multiple, zero when either is zero."""',
  "    return 0 if a == 0 or b == 0 else abs(a * b) // gcd(a, b)",
  "",
  "def is_prime(n):",
  '    """Trial division up to the square root of n."""',
  "    if n < 2:",
  "        return False",
  "    i = 2",
  "    while i * i <= n:",
  "        if n % i == 0:",
  "            return False",
  "        i += 1",
  "    return True",
  "",
  "def fibonacci(n):",
].join("\n");

const LAUNCH = {
  executablePath: process.env.APR_CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
};

// wllama's build uses shared (threaded) memory, which needs a cross-origin isolated page, even
// when told to use one thread.
const ISOLATED = {
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-embedder-policy": "require-corp",
  "cross-origin-resource-policy": "same-origin",
};

const WLLAMA_PAGE = `<!doctype html><meta charset="utf-8"><body><script type="module">
import { Wllama } from "./wllama/index.js";
window.bench = async (prompt, gen) => {
  const w = new Wllama({ default: "./wllama/wasm/wllama.wasm" }, { logger: { debug() {}, log() {}, warn: console.warn, error: console.error } });
  const t0 = performance.now();
  const blob = await (await fetch("./${DEFAULT_MODEL_PATH}")).blob();
  await w.loadModel([blob], { n_threads: 1, n_gpu_layers: 0, n_ctx: 2048, n_batch: 512 });
  const load_ms = performance.now() - t0;
  const out = await w.createCompletion({ prompt, max_tokens: gen, temperature: 0, ignore_eos: true });
  const t = out.timings;
  await w.exit();
  return { load_ms, prompt_n: t.prompt_n, prefill: t.prompt_per_second, predicted_n: t.predicted_n, decode: t.predicted_per_second };
};
window.ready = true;
</script>`;

async function wllamaRun(browser, url) {
  const page = await browser.newPage();
  page.on("console", (m) => m.type() === "error" && console.error("wllama:", m.text()));
  await page.goto(url + "wllama-bench.html");
  await page.waitForFunction(() => window.ready === true);
  const r = await page.evaluate(([p, g]) => window.bench(p, g), [prompt, gen]);
  await page.close();
  return r;
}


async function aprRun(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.addInitScript(HOOK);
  const opened = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => window.__apr.events.some((e) => e.type === "ready"));
  await page.getByTestId("load-default").click();
  const loaded = await page.waitForFunction(() => window.__apr.events.find((e) => e.type === "loaded" || e.type === "failed"), null, { timeout: 0 });
  const l = await loaded.jsonValue();
  if (l.type !== "loaded") throw new Error(l.message);
  await page.getByTestId("raw").check();
  for (const [id, v] of [["temperature", 0], ["max-tokens", gen]]) {
    await page.getByTestId(id).fill(String(v));
    await page.getByTestId(id).dispatchEvent("change");
  }
  await page.getByTestId("prompt").fill(prompt);
  await page.getByTestId("send").click();
  const first = await page.waitForFunction(() => window.__apr.events.some((e) => e.type === "token"), null, { timeout: 0 });
  const firstToken = Date.now() - opened;
  const done = await (await page.waitForFunction(() => window.__apr.events.find((e) => e.type === "done"), null, { timeout: 0 })).jsonValue();
  await context.close();
  const s = done.stats;
  return { load_ms: l.load_ms, prompt_n: s.prompt_tokens, prefill: s.prefill_tok_s, predicted_n: s.generated, decode: s.decode_tok_s, open_to_first_token_ms: firstToken };
}

// wllama's page and its esm folder (linked in as wllama/) in a site of their own.
const site = mkdtempSync(join(tmpdir(), "apr-bench-"));
writeFileSync(join(site, "wllama-bench.html"), WLLAMA_PAGE);
symlinkSync(resolve(wllamaDir), join(site, "wllama"));
const files = { [DEFAULT_MODEL_PATH]: model };
const apr = await serve({ dist: "dist", files });
const wl = await serve({ dist: site, files, headers: ISOLATED });

const browser = await chromium.launch(LAUNCH);
const results = { apr: [], wllama: [] };
try {
  for (let i = 0; i < runs; i++) {
    // Alternate, so a slow minute of the machine hurts both alike.
    const a = await aprRun(browser, apr.url);
    console.log(`apr    run ${i + 1}: ${JSON.stringify(a)}`);
    results.apr.push(a);
    const w = await wllamaRun(browser, wl.url);
    console.log(`wllama run ${i + 1}: ${JSON.stringify(w)}`);
    results.wllama.push(w);
  }
} finally {
  await browser.close();
  apr.server.close();
  wl.server.close();
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const row = (what, key, digits = 2) => {
  const a = median(results.apr.map((r) => r[key]));
  const w = median(results.wllama.map((r) => r[key]));
  console.log(`${what.padEnd(22)} ${w.toFixed(digits).padStart(10)} ${a.toFixed(digits).padStart(10)} ${(a / w).toFixed(2).padStart(9)}`);
};
console.log(`\nmedians of ${runs} runs, 1 thread, ${results.apr[0].prompt_n}-token prompt, ${gen} tokens`);
console.log(`${"".padEnd(22)} ${"wllama".padStart(10)} ${"apr".padStart(10)} ${"apr/wllama".padStart(9)}`);
row("prefill tok/s", "prefill");
row("decode tok/s", "decode");
row("load ms", "load_ms", 0);
console.log(`apr: page open to first token ${median(results.apr.map((r) => r.open_to_first_token_ms))} ms (each run a fresh browser context: the model streams from the origin, then the prompt is prefilled)`);
