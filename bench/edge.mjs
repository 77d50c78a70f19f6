// Edge benchmark: the worker in workerd (Miniflare, real HTTP on 127.0.0.1) serving a cached model
// file and the cached `latest` index, beside a plain Node static server serving the same bytes from
// disk, in the same run; p50/p99 per request at bounded concurrency, with ratios; and the worker's
// size, raw and gzip. Build the worker first (bash .ci/build-edge.sh).
//
//   node bench/edge.mjs [--requests N] [--concurrency C] [--runs R]
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { startWorker, target } from "../crates/edge-worker/tests/worker.mjs";

const arg = (name, d) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : d;
};
const REQUESTS = arg("requests", 2000);
const CONCURRENCY = arg("concurrency", 8);
const RUNS = arg("runs", 3);
const root = new URL("../", import.meta.url).pathname;
const modelDir = path.join(root, "models/ml100k");
const FILES = ["manifest.json", "global.bin", "catalog.json", "items.shard"];
const sha256 = (b) => createHash("sha256").update(b).digest("hex");

const quantile = (xs, q) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))];
/** p50/p99 (ms) of `n` GETs of `url` at `c` in flight; checks every answer's size. */
async function load(url, n, c, bytes) {
  const times = [];
  let next = 0;
  const one = async () => {
    while (next < n) {
      next++;
      const t = performance.now();
      const res = await fetch(url);
      const body = await res.arrayBuffer();
      times.push(performance.now() - t);
      if (res.status !== 200 || (bytes !== null && body.byteLength !== bytes)) throw new Error(`${url}: ${res.status}, ${body.byteLength} bytes`);
    }
  };
  await Promise.all(Array.from({ length: c }, one));
  times.sort((a, b) => a - b);
  return { p50: quantile(times, 0.5), p99: quantile(times, 0.99) };
}

const TOKEN = "bench";
const mf = startWorker({ bindings: { PUBLISH_TOKEN: TOKEN }, listen: true });
const edge = (await mf.ready).href.replace(/\/$/, "");
const files = Object.fromEntries(FILES.map((f) => [f, readFileSync(path.join(modelDir, f))]));
const put = (p, body) => fetch(`${edge}${p}`, { method: "PUT", body, headers: { authorization: `Bearer ${TOKEN}` } });
for (const b of Object.values(files)) await put(`/v1/admin/files/${sha256(b)}`, b);
const index = { version: 1, files: Object.fromEntries(Object.entries(files).map(([n, b]) => [n, sha256(b)])) };
await put("/v1/admin/versions/1", JSON.stringify(index));
await put("/v1/admin/latest", JSON.stringify({ version: 1 }));
const latestBytes = Buffer.byteLength(JSON.stringify(index));

// The peer: a static file server (read from disk per request, as `serve-static` does).
const statics = createServer((req, res) => {
  const name = req.url === "/latest.json" ? null : path.basename(req.url);
  const body = name ? readFileSync(path.join(modelDir, name)) : Buffer.from(JSON.stringify(index));
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length });
  res.end(body);
});
await new Promise((r) => statics.listen(0, "127.0.0.1", r));
const peer = `http://127.0.0.1:${statics.address().port}`;

const cases = [
  ["/health (no binding: the floor)", `${edge}/health`, `${peer}/latest.json`, null],
  ["model file global.bin", `${edge}/v1/models/1/global.bin`, `${peer}/global.bin`, files["global.bin"].length],
  ["model file manifest.json", `${edge}/v1/models/1/manifest.json`, `${peer}/manifest.json`, files["manifest.json"].length],
  ["latest (KV)", `${edge}/v1/models/latest`, `${peer}/latest.json`, latestBytes],
];
const rows = [];
for (let run = 1; run <= RUNS; run++) {
  for (const [name, worker, staticUrl, bytes] of cases) {
    await load(worker, 50, 2, bytes); // warm: the cache holds the file after the first miss
    await load(staticUrl, 50, 2, bytes);
    const w = await load(worker, REQUESTS, CONCURRENCY, bytes);
    const s = await load(staticUrl, REQUESTS, CONCURRENCY, bytes);
    rows.push({ run, name, bytes, w, s });
  }
}
await mf.dispose();
statics.close();

console.log(`${REQUESTS} GETs a case at ${CONCURRENCY} in flight, ${RUNS} runs; worker in workerd (Miniflare) vs a Node static server, both on 127.0.0.1\n`);
console.log("| case | bytes | run | worker p50 / p99 (ms) | static p50 / p99 (ms) | worker / static p50 |");
console.log("|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.name} | ${r.bytes} | ${r.run} | ${r.w.p50.toFixed(2)} / ${r.w.p99.toFixed(2)} | ${r.s.p50.toFixed(2)} / ${r.s.p99.toFixed(2)} | ${(r.w.p50 / r.s.p50).toFixed(2)} |`);
}
const edgeDir = path.join(target, "edge");
const wasm = readFileSync(path.join(edgeDir, "hearth_edge_bg.wasm"));
const js = Buffer.concat([readFileSync(path.join(edgeDir, "hearth_edge.js")), readFileSync(path.join(edgeDir, "entry.mjs"))]);
const all = Buffer.concat([wasm, js]);
console.log(`\nworker size: ${all.length} bytes raw (wasm ${wasm.length}, JS ${js.length}), ${gzipSync(all, { level: 9 }).length} bytes gzip -9 (${statSync(path.join(edgeDir, "hearth_edge_bg.wasm")).size} wasm on disk)`);
