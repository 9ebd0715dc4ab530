#!/usr/bin/env node
// Serves the built page (dist/) on 127.0.0.1 as any static host would, plus the default model
// under models/ so the page can load it from its own origin. No server code runs in the page;
// this is only a file server. Used by scripts/web.sh and by the browser tests.
//
//   node scripts/serve-web.mjs --dist dist --model /path/to/model.gguf [--port 8080]
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
import { extname, join, normalize, resolve, sep } from "node:path";
import { pathToFileURL } from "node:url";

export const DEFAULT_MODEL_PATH = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
};

/**
 * Starts the server; resolves to { server, url }. `files` maps extra URL paths to files, and
 * `headers` are sent with every answer.
 */
export function serve({ dist, files = {}, port = 0, host = "127.0.0.1", headers = {} }) {
  const root = resolve(dist);
  const server = createServer((req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, "http://x").pathname).replace(/^\/+/, "");
    } catch {
      res.writeHead(400).end("bad path");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    let file = files[path];
    if (!file) {
      file = normalize(join(root, path || "index.html"));
      if (file !== root && !file.startsWith(root + sep)) {
        res.writeHead(403).end("outside the site");
        return;
      }
    }
    let stat;
    try {
      stat = statSync(file);
      if (stat.isDirectory()) {
        file = join(file, "index.html");
        stat = statSync(file);
      }
    } catch {
      res.writeHead(404, { "content-type": "text/plain" }).end(`not found: /${path}\n`);
      return;
    }
    res.writeHead(200, {
      "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "content-length": stat.size,
      "cache-control": "no-cache",
      ...headers,
    });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => {
      const a = server.address();
      ok({ server, url: `http://${a.address}:${a.port}/` });
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const arg = (name, fallback) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
  };
  const dist = arg("dist", "dist");
  const model = arg("model", null);
  const port = Number(arg("port", "8080"));
  const files = model ? { [DEFAULT_MODEL_PATH]: resolve(model) } : {};
  try {
    statSync(join(dist, "index.html"));
  } catch {
    console.error(`serve-web: ${dist}/index.html is missing; build the page first (scripts/web.sh)`);
    process.exit(1);
  }
  serve({ dist, files, port })
    .then(({ url }) => {
      console.log(`apr web: serving ${resolve(dist)}${model ? ` and the default model` : ""}`);
      console.log(`open ${url}`);
    })
    .catch((e) => {
      console.error(`serve-web: cannot listen on 127.0.0.1:${port}: ${e.message}`);
      process.exit(1);
    });
}
