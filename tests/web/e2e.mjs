// End-to-end tests of the web app in Debian's headless Chromium, driven by playwright-core.
// native-cli/tests/web.rs prepares the files and the CLI's answers, then runs
//
//   node tests/web/e2e.mjs CONFIG.json
//
// CONFIG: { dist, chromium, screenshots?, tiny?: {...}, real?: {...} } (see web.rs). Prints one
// line per check and exits non-zero when any fails.
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { serve, DEFAULT_MODEL_PATH } from "../../scripts/serve-web.mjs";
import { HOOK } from "./hook.mjs";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const LONG = 30 * 60 * 1000;
let failures = 0;

function check(ok, what, detail = "") {
  console.log(`${ok ? "ok" : "NOT OK"} - ${what}${detail ? `: ${detail}` : ""}`);
  if (!ok) failures += 1;
  return ok;
}


// A browser without relaxed SIMD, as the page sees it: its probe module does not validate.
// (Chromium ships relaxed SIMD with no switch to turn it off.)
const NO_RELAXED_SIMD = `
  const validate = WebAssembly.validate;
  WebAssembly.validate = (bytes, ...rest) => {
    const b = new Uint8Array(bytes.buffer ?? bytes, bytes.byteOffset ?? 0, bytes.byteLength);
    const relaxed = b.some((x, i) => x === 253 && b[i + 1] === 133 && b[i + 2] === 2);
    return relaxed ? false : validate(bytes, ...rest);
  };
`;

async function open(browser, url, relaxed = true) {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.addInitScript(HOOK);
  if (!relaxed) await page.addInitScript(NO_RELAXED_SIMD);
  await page.goto(url);
  await page.waitForFunction(() => window.__apr.events.some((e) => e.type === "ready"), null, { timeout: 60000 });
  return { context, page, consoleErrors };
}

async function events(page) {
  return page.evaluate(() => window.__apr.events);
}

// The first event (from the `from`th on) that `predicate` accepts.
async function waitEvent(page, predicate, timeout = LONG, from = 0) {
  const handle = await page.waitForFunction(
    ({ src, from }) => {
      const p = eval(src);
      return window.__apr.events.slice(from).find(p) ?? null;
    },
    { src: predicate.toString(), from },
    { timeout, polling: 100 },
  );
  return handle.jsonValue();
}

async function drop(page, testid, name, bytes) {
  await page.evaluate(
    ({ testid, name, b64 }) => {
      const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bin], name));
      const el = document.querySelector(`[data-testid="${testid}"]`);
      for (const type of ["dragenter", "dragover", "drop"]) {
        el.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
      }
    },
    { testid, name, b64: Buffer.from(bytes).toString("base64") },
  );
}

async function setNumber(page, testid, value) {
  const input = page.getByTestId(testid);
  await input.fill(String(value));
  await input.dispatchEvent("change");
}

async function ask(page, text) {
  const before = (await events(page)).filter((e) => e.type === "done").length;
  await page.getByTestId("prompt").fill(text);
  await page.getByTestId("send").click();
  return before;
}

async function nthDone(page, n) {
  await page.waitForFunction((n) => window.__apr.events.filter((e) => e.type === "done").length > n, n, {
    timeout: LONG,
    polling: 100,
  });
  const all = await events(page);
  const done = all.filter((e) => e.type === "done")[n];
  const tokens = all.filter((e) => e.type === "token" && e.id === done.id);
  return { done, tokens, text: tokens.map((t) => t.text).join("") };
}

async function tiny(browser, url, t, relaxed) {
  const { context, page, consoleErrors } = await open(browser, url, relaxed);
  const backend = await page.getByTestId("backend").innerText();
  check(relaxed ? /SIMD128 \+ relaxed FMA/.test(backend) : /SIMD128, 1 thread/.test(backend),
    `the page names its backend (${relaxed ? "the relaxed-SIMD worker" : "the plain SIMD128 worker, relaxed SIMD switched off"})`, backend);

  // Load by a simulated drop.
  await drop(page, "model-drop", t.name, readFileSync(t.model));
  const loaded = await waitEvent(page, (e) => e.type === "loaded" || e.type === "failed", 60000);
  check(loaded.type === "loaded", "a dropped model loads", JSON.stringify(loaded).slice(0, 300));
  await page.getByTestId("model-loaded").waitFor();

  // One greedy turn: the streamed tokens are the CLI's answer.
  await setNumber(page, "temperature", 0);
  await setNumber(page, "max-tokens", t.max_tokens);
  await page.evaluate(() => {
    window.__apr.snapshots = [];
    new MutationObserver(() => {
      const el = document.querySelector('[data-testid="answer-streaming"] [data-testid="message-text"]');
      if (el) window.__apr.snapshots.push(el.textContent);
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  const n0 = await ask(page, t.prompt);
  const first = await nthDone(page, n0);
  const firstIds = first.tokens.filter((e) => e.token !== null).map((e) => e.token);
  check(JSON.stringify(firstIds) === JSON.stringify(t.expected_ids),
    "greedy tokens equal the CLI's (apr run --chat --temperature 0)",
    `page ${JSON.stringify(firstIds)} vs cli ${JSON.stringify(t.expected_ids)}`);
  check(first.text === t.expected_text, "and so does their text", JSON.stringify(first.text));
  check(first.tokens.length > 1, "the answer came as a stream of tokens", `${first.tokens.length} token events`);
  const snapshots = await page.evaluate(() => [...new Set(window.__apr.snapshots)].length);
  check(snapshots > 1, "the page showed the answer growing while it streamed", `${snapshots} distinct states`);
  const shown = await page.locator('[data-testid="message"][data-role="Model"] [data-testid="message-text"]').last().textContent();
  check(shown === t.expected_text, "the transcript shows the answer", JSON.stringify(shown));
  check(/decode .* tok\/s/.test(await page.getByTestId("stats").innerText()), "the readout shows prefill and decode speed and TTFT",
    await page.getByTestId("stats").innerText());

  // A follow-up: the history goes through the chat template (as apr chat renders it), and the
  // first turn's tokens are reused from the KV cache.
  const nf = await ask(page, t.follow_up);
  const follow = await nthDone(page, nf);
  check(follow.text === t.follow_up_text, "a follow-up answers as apr chat does",
    `page ${JSON.stringify(follow.text)} vs cli ${JSON.stringify(t.follow_up_text)}`);
  check(follow.done.stats.cached_tokens > 0, "the follow-up reuses the conversation's KV cache",
    `${follow.done.stats.cached_tokens} tokens reused`);
  check((await page.locator('[data-testid="message"]').count()) === 4, "both turns show in the transcript");

  // A sampled answer in a fresh chat (the CLI answers one prompt at a time): the same seed
  // gives the same tokens.
  await page.getByRole("button", { name: "New chat" }).click();
  await setNumber(page, "temperature", 0.8);
  await setNumber(page, "seed", 7);
  const ns = await ask(page, t.sampled_prompt);
  const sampled = await nthDone(page, ns);
  const sampledIds = sampled.tokens.filter((e) => e.token !== null).map((e) => e.token);
  check(JSON.stringify(sampledIds) === JSON.stringify(t.sampled_ids),
    "sampled tokens (temperature 0.8, seed 7) equal the CLI's",
    `page ${JSON.stringify(sampledIds)} vs cli ${JSON.stringify(t.sampled_ids)}`);
  await page.getByRole("button", { name: "New chat" }).click();
  await setNumber(page, "temperature", 0);

  // Stop mid-answer.
  await setNumber(page, "max-tokens", t.stop_max_tokens);
  const n1 = await ask(page, t.stop_prompt);
  await page.getByTestId("answer-streaming").waitFor();
  await page.getByTestId("stop").click();
  const stopped = await nthDone(page, n1);
  check(stopped.done.reason === "cancelled" && stopped.done.stats.generated < t.stop_max_tokens,
    "Stop ends the answer mid-way", `${stopped.done.reason} after ${stopped.done.stats.generated} of ${t.stop_max_tokens}`);
  check(/stopped/.test(await page.getByTestId("stats").innerText()), "the readout says the answer was stopped");
  check((await page.locator('[data-testid="message"]').count()) === 2, "the stopped answer stays in the transcript");

  // The cache: the dropped model was cached; after a reload it loads from there.
  await page.getByTestId("cache").locator("summary").click();
  const cached = await waitEvent(page, (e) => e.type === "cache" && e.entries.length > 0, 30000).catch(() => null);
  check(cached !== null, "the dropped model is in the cache", cached ? JSON.stringify(cached.entries) : "no entries");
  await page.reload();
  await page.waitForFunction(() => window.__apr.events.some((e) => e.type === "cache" && e.entries.length > 0), null, { timeout: 30000 });
  await page.getByTestId("cache").locator("summary").click();
  await page.getByTestId("cache").getByRole("button", { name: "Load" }).first().click();
  const again = await waitEvent(page, (e) => e.type === "loaded" || e.type === "failed", 60000);
  check(again.type === "loaded" && again.from_cache === true, "after a reload the model loads from the cache", JSON.stringify(again).slice(0, 200));
  await page.getByTestId("cache-clear").click();
  await waitEvent(page, (e) => e.type === "cache" && e.entries.length === 0, 30000);
  check(true, "the cache can be cleared");

  // Broken files: a clear message on the page.
  await drop(page, "model-drop", "broken.gguf", readFileSync(t.truncated));
  await page.getByTestId("error").waitFor({ timeout: 30000 });
  const loadError = await page.getByTestId("error").innerText();
  check(/broken\.gguf/.test(loadError), "a truncated model shows an error on the page", loadError.replace(/\s+/g, " "));
  await page.getByRole("button", { name: "Dismiss" }).click();

  // Inspect and check: a good file passes the ten stages, noise fails them.
  await page.getByRole("tab", { name: "Inspect" }).click();
  await drop(page, "inspect-drop", t.name, readFileSync(t.model));
  await page.getByTestId("inspected").waitFor({ timeout: 60000 });
  check((await page.getByTestId("check-verdict").innerText()) === "PASS", "inspect: a good model passes apr check");
  check((await page.locator(".stages tbody tr").count()) === 10, "inspect: ten check stages");
  const facts = await page.locator(".facts").innerText();
  check(/qwen2/.test(facts) && /Layers\s+2/.test(facts), "inspect: apr inspect's facts", facts.split("\n").slice(0, 4).join(" | "));
  await drop(page, "inspect-drop", "noise.apr", readFileSync(t.noise));
  await page.waitForFunction(() => document.querySelector('[data-testid="inspected"] h3')?.textContent === "noise.apr", null, { timeout: 30000 });
  check((await page.getByTestId("check-verdict").innerText()) === "FAIL", "inspect: a file of noise fails apr check");

  // Convert GGUF → APR: the download is the CLI's file, byte for byte.
  await page.getByRole("tab", { name: "Convert" }).click();
  await drop(page, "convert-drop", t.name, readFileSync(t.model));
  await page.getByTestId("verify").check();
  await page.getByTestId("convert").click();
  await page.getByTestId("download").waitFor({ timeout: 120000 });
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download").click()]);
  const saved = join(t.work, "downloaded.apr");
  await download.saveAs(saved);
  check(download.suggestedFilename() === t.cli_apr_name, "the download is named like the CLI's output", download.suggestedFilename());
  const ours = readFileSync(saved);
  const cli = readFileSync(t.cli_apr);
  check(ours.equals(cli), "GGUF→APR in the page equals apr rosetta convert, byte for byte", `${ours.length} vs ${cli.length} bytes`);
  check(/verified/.test(await page.getByTestId("converted").innerText()), "the page verified the conversion");
  if (config.screenshots && relaxed) {
    await page.screenshot({ path: join(config.screenshots, "converter.png"), fullPage: true });
  }
  // A broken input: the error shows, nothing is offered for download.
  await drop(page, "convert-drop", "broken.gguf", readFileSync(t.truncated));
  await page.getByTestId("convert").click();
  await page.getByTestId("error").waitFor({ timeout: 30000 });
  check(/broken\.gguf/.test(await page.getByTestId("error").innerText()), "converting a truncated file shows an error");

  check(consoleErrors.length === 0, "nothing went to the console only", consoleErrors.join(" | "));
  await context.close();

  // A browser whose WebAssembly has no SIMD, as the page sees it: a clear message on the page.
  const bare = await browser.newContext();
  const old = await bare.newPage();
  await old.addInitScript(`
    const validate = WebAssembly.validate;
    WebAssembly.validate = (bytes, ...rest) => {
      const b = new Uint8Array(bytes.buffer ?? bytes, bytes.byteOffset ?? 0, bytes.byteLength);
      return b.includes(253) ? false : validate(bytes, ...rest);
    };
  `);
  await old.goto(url);
  const notice = await old.getByTestId("unsupported").innerText({ timeout: 30000 }).catch(() => "");
  check(/SIMD/.test(notice), "a browser without WebAssembly SIMD is told so on the page", notice);
  await bare.close();
}

async function real(browser, url, r) {
  const { context, page, consoleErrors } = await open(browser, url);
  // Converting the real GGUF to APR in a fresh worker reads it a tensor at a time: the worker's
  // memory stays near the largest tensor, far below the file.
  await page.getByRole("tab", { name: "Convert" }).click();
  await page.evaluate(async (path) => {
    const blob = await (await fetch(path)).blob();
    const dt = new DataTransfer();
    dt.items.add(new File([blob], path.split("/").pop()));
    const el = document.querySelector('[data-testid="convert-drop"]');
    for (const type of ["dragenter", "dragover", "drop"]) {
      el.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
  }, DEFAULT_MODEL_PATH);
  await page.getByTestId("convert").click();
  const converted = await waitEvent(page, (e) => e.type === "converted" || e.type === "failed", LONG);
  check(converted.type === "converted", "the real GGUF converts to APR in the page", JSON.stringify(converted).slice(0, 300));
  const MB = (n) => `${(n / 1e6).toFixed(0)} MB`;
  const bound = 1.5 * r.largest_tensor + 64e6;
  check(converted.memory <= bound,
    `converting the ${MB(r.file_bytes)} GGUF needs at most 1.5x its largest tensor (${MB(r.largest_tensor)}) plus 64 MB of worker memory`,
    `worker memory ${MB(converted.memory)}, bound ${MB(bound)}; output ${converted.name}, ${MB(converted.bytes)} in ${converted.seconds.toFixed(1)} s`);
  await page.getByRole("tab", { name: "Chat" }).click();

  const opened = Date.now();
  await page.getByTestId("load-default").click();
  const loaded = await waitEvent(page, (e) => e.type === "loaded" || e.type === "failed", LONG);
  check(loaded.type === "loaded", "the default model loads from the page's origin", JSON.stringify(loaded).slice(0, 300));
  // This browser has no WebGPU (no --enable-unsafe-webgpu): the page says the model runs on the
  // CPU and why.
  const shown = await page.getByTestId("backend").innerText();
  check(/^CPU · .* · no WebGPU: no GPU adapter found \(tried the browser's WebGPU\)$/.test(shown) && shown === loaded.backend,
    "without WebGPU the page reports the CPU fallback and its reason", shown);
  await page.getByTestId("raw").check();
  await setNumber(page, "temperature", 0);
  await setNumber(page, "max-tokens", r.max_tokens);
  const n0 = await ask(page, r.prompt);
  const answer = await nthDone(page, n0);
  const firstTokenAt = Date.now();
  const ids = answer.tokens.filter((t) => t.token !== null).map((t) => t.token);
  check(r.safe_prefix.length > 0 && r.safe_prefix.every((id, i) => ids[i] === id),
    `greedy answer to prompt (a): the ${r.safe_prefix.length} safe-prefix tokens equal llama.cpp's`,
    `page ${JSON.stringify(ids.slice(0, r.safe_prefix.length))} vs reference ${JSON.stringify(r.safe_prefix)}`);
  const s = answer.done.stats;
  console.log(`bench: load ${loaded.load_ms.toFixed(0)} ms, prefill ${s.prompt_tokens} tokens at ${s.prefill_tok_s.toFixed(2)} tok/s, ` +
    `decode ${s.generated} tokens at ${s.decode_tok_s.toFixed(2)} tok/s, TTFT ${s.ttft_ms.toFixed(0)} ms, ` +
    `page open to last token ${((firstTokenAt - opened) / 1000).toFixed(1)} s`);
  if (r.decode_tokens) {
    // A longer greedy answer for the decode-speed benchmark (chat template, stops at EOS or max).
    await page.getByTestId("raw").uncheck();
    await setNumber(page, "max-tokens", r.decode_tokens);
    const n1 = await ask(page, "Write a Python function that checks whether a number is prime.");
    const long = await nthDone(page, n1);
    const l = long.done.stats;
    console.log(`bench: chat answer ${l.generated} tokens at ${l.decode_tok_s.toFixed(2)} tok/s decode, prefill ${l.prompt_tokens} tokens at ${l.prefill_tok_s.toFixed(2)} tok/s`);
  }
  if (config.screenshots) {
    await page.screenshot({ path: join(config.screenshots, "chat.png"), fullPage: true });
  }
  // Forcing WebGPU where there is none is a clear load error, not a quiet CPU run.
  await page.getByTestId("device").selectOption("webgpu");
  const before = (await events(page)).length;
  await page.getByTestId("load-default").click();
  const forced = await waitEvent(page, (e) => e.type === "loaded" || e.type === "failed", LONG, before);
  check(forced.type === "failed" && /cannot run on WebGPU: no GPU adapter found/.test(forced.message),
    "\"WebGPU only\" without WebGPU fails to load, saying why", JSON.stringify(forced).slice(0, 300));
  check(/cannot run on WebGPU/.test(await page.getByTestId("error").innerText()), "and the page shows that error");
  check(consoleErrors.length === 0, "nothing went to the console only", consoleErrors.join(" | "));
  await context.close();
}

// The same page in a browser with WebGPU (SwiftShader, a CPU-emulated adapter: correct, slow).
async function webgpu(browser, url, r) {
  const { context, page, consoleErrors } = await open(browser, url);
  await page.getByTestId("load-default").click();
  const loaded = await waitEvent(page, (e) => e.type === "loaded" || e.type === "failed", LONG);
  check(loaded.type === "loaded" && /^WebGPU/.test(loaded.backend), "with WebGPU the default model loads onto it",
    JSON.stringify(loaded.backend ?? loaded).slice(0, 300));
  const shown = await page.getByTestId("backend").innerText();
  check(shown === loaded.backend, "the page reports the WebGPU backend", shown);
  await page.getByTestId("raw").check();
  await setNumber(page, "temperature", 0);
  await setNumber(page, "max-tokens", r.safe_prefix.length);
  const answer = await nthDone(page, await ask(page, r.prompt));
  const ids = answer.tokens.filter((t) => t.token !== null).map((t) => t.token);
  check(r.safe_prefix.length > 0 && r.safe_prefix.every((id, i) => ids[i] === id),
    `on WebGPU, greedy answer to prompt (a): the ${r.safe_prefix.length} safe-prefix tokens equal llama.cpp's`,
    `page ${JSON.stringify(ids.slice(0, r.safe_prefix.length))} vs reference ${JSON.stringify(r.safe_prefix)}`);
  const s = answer.done.stats;
  console.log(`bench (WebGPU, ${loaded.backend}): load ${loaded.load_ms.toFixed(0)} ms, prefill ${s.prompt_tokens} tokens at ` +
    `${s.prefill_tok_s.toFixed(2)} tok/s, decode ${s.generated} tokens at ${s.decode_tok_s.toFixed(2)} tok/s`);
  // The setting forces the CPU even where WebGPU works.
  await page.getByTestId("device").selectOption("cpu");
  const before = (await events(page)).length;
  await page.getByTestId("load-default").click();
  const cpu = await waitEvent(page, (e) => e.type === "loaded" || e.type === "failed", LONG, before);
  check(cpu.type === "loaded" && /^CPU · WebAssembly SIMD128[^·]*, 1 thread$/.test(cpu.backend),
    "\"CPU only\" loads the model on the CPU, with no fallback note", JSON.stringify(cpu.backend ?? cpu).slice(0, 300));
  check(consoleErrors.length === 0, "nothing went to the console only", consoleErrors.join(" | "));
  await context.close();
}

const files = config.real ? { [DEFAULT_MODEL_PATH]: config.real.model } : {};
const { server, url } = await serve({ dist: config.dist, files });
if (config.screenshots) mkdirSync(config.screenshots, { recursive: true });
const ARGS = [
  "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
// The page picks the relaxed-SIMD worker where the browser has relaxed SIMD, as Chromium does;
// where it has not, the plain SIMD128 worker must give the same answers.
const modes = config.tiny ? [true, false] : [true];
try {
  for (const relaxed of modes) {
    const browser = await chromium.launch({ executablePath: config.chromium, args: ARGS });
    try {
      if (config.tiny) await tiny(browser, url, config.tiny, relaxed);
      if (config.real && relaxed) await real(browser, url, config.real);
    } finally {
      await browser.close();
    }
  }
  if (config.real) {
    const browser = await chromium.launch({ executablePath: config.chromium, args: [...ARGS, "--enable-unsafe-webgpu"] });
    try {
      await webgpu(browser, url, config.real);
    } finally {
      await browser.close();
    }
  }
} catch (e) {
  check(false, "the browser run finished", e.stack ?? String(e));
} finally {
  server.close();
}
console.log(failures === 0 ? "all browser checks passed" : `${failures} browser check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
