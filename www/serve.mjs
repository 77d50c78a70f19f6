// Serves the hearth demo on 127.0.0.1: the page (www/), the browser package built by
// .ci/build-web.sh, and the model files a device needs (`hearth_core::bundle::SERVED`; never
// personal.bin or users.json: the training users' own vectors and tags).
//
//   node www/serve.mjs [--port 8080] [--pkg DIR] [--model DIR]
//
// Also importable: `start({ port, pkg, model })` resolves to `{ url, close }` (used by the tests).
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { join, extname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const root = resolve(here, "..");
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".bin": "application/octet-stream",
  ".shard": "application/octet-stream",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".webmanifest": "application/manifest+json",
};
// What the page may load and run: its own files only (wasm compiled from them), nothing inline,
// no plugins, no framing. The same policy is in index.html's <meta> for hosts that send no headers.
export const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; " +
  "img-src 'self' data:; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
// What the server serves, by folder (exported for the test that reads every served file).
export const PAGE = new Set(["index.html", "app.js", "storage.js", "egress.js", "sw.js", "train-worker.js", "style.css", "icon.svg"]);
export const MODEL = new Set(["manifest.json", "global.bin", "catalog.json", "items.shard"]);
export const PKG = new Set(["hearth_web.js", "hearth_web_bg.wasm", "hearth_train.js", "hearth_train_bg.wasm"]);

// A short text answer with its length (not chunked: a client counts exactly the body's bytes).
function plain(res, status, text, headers = {}) {
  const body = Buffer.from(`${text}\n`);
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": body.length, ...headers }).end(body);
}

export function start({ port = 8080, pkg, model, log = false } = {}) {
  const target = process.env.CARGO_TARGET_DIR || join(process.env.HOME || "", ".cache/hearth/target");
  const pkgDir = pkg || join(target, "web/pkg");
  const modelDir = model || join(root, "models/ml100k");
  const server = createServer(async (req, res) => {
    res.setHeader("content-security-policy", CSP);
    res.setHeader("x-content-type-options", "nosniff");
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname);
    } catch {
      plain(res, 400, "malformed URL");
      return;
    }
    let file = null;
    if (req.method !== "GET" && req.method !== "HEAD") {
      plain(res, 405, "method not allowed", { allow: "GET, HEAD" });
      return;
    }
    const name = path.split("/").pop();
    if (path === "/" || (path === `/${name}` && PAGE.has(name))) file = join(here, path === "/" ? "index.html" : name);
    else if (path === `/pkg/${name}` && PKG.has(name)) file = join(pkgDir, name);
    else if (path === `/model/${name}` && MODEL.has(name)) file = join(modelDir, name);
    if (log) console.log(`${req.method} ${path}`);
    if (!file) {
      plain(res, 404, "not found");
      return;
    }
    try {
      const body = await readFile(file);
      const s = await stat(file);
      res.writeHead(200, {
        "content-type": TYPES[extname(file)] || "application/octet-stream",
        "content-length": body.length,
        "cache-control": "no-cache",
        "last-modified": s.mtime.toUTCString(),
      });
      res.end(req.method === "HEAD" ? undefined : body);
    } catch {
      plain(res, 404, `${path} is missing (run bash .ci/build-web.sh?)`);
    }
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, "127.0.0.1", () => {
      const url = `http://127.0.0.1:${server.address().port}/`;
      ok({ url, close: () => new Promise((done) => server.close(done)) });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const { url } = await start({ port: Number(arg("--port", 8080)), pkg: arg("--pkg"), model: arg("--model"), log: true });
  console.log(`hearth demo: ${url}`);
}
