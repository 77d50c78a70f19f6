// The edge worker in the real Workers runtime (workerd, through Miniflare).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { startWorker } from "./worker.mjs";

const root = new URL("../../../", import.meta.url);
// The workspace's version (every crate inherits it) and the architecture of the model it serves.
const VERSION = readFileSync(new URL("Cargo.toml", root), "utf8").match(/\[workspace\.package\][^[]*?\nversion = "([^"]+)"/)[1];
const ARCHITECTURE = JSON.parse(readFileSync(new URL("models/ml100k/manifest.json", root), "utf8")).architecture;

const mf = startWorker();
after(() => mf.dispose());

test("GET /health answers ok with this build's version and the served model's architecture", async () => {
  const res = await mf.dispatchFetch("http://localhost/health");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /application\/json/);
  const body = await res.json();
  assert.equal(body.status, "ok");
  assert.equal(body.service, "hearth-edge");
  assert.equal(body.version, VERSION);
  assert.equal(body.architecture, ARCHITECTURE);
  assert.deepEqual(Object.keys(body).sort(), ["architecture", "service", "status", "version"]);
});

test("unknown routes and other methods are refused, not a crash", async () => {
  assert.equal((await mf.dispatchFetch("http://localhost/nope")).status, 404);
  assert.equal((await mf.dispatchFetch("http://localhost/health/x")).status, 404);
  const post = await mf.dispatchFetch("http://localhost/health", { method: "POST", body: "x" });
  assert.ok(post.status === 404 || post.status === 405, `POST /health: ${post.status}`);
  // The instance still answers after them.
  assert.equal((await mf.dispatchFetch("http://localhost/health")).status, 200);
});
