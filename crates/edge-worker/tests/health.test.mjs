// The edge worker in the real Workers runtime (workerd, through Miniflare).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { Miniflare } from "miniflare";

const target = process.env.CARGO_TARGET_DIR ?? path.join(process.env.HOME, ".cache/hearth/target");
const mf = new Miniflare({
  modules: true,
  scriptPath: path.join(target, "edge/entry.mjs"),
  modulesRoot: path.join(target, "edge"),
  modulesRules: [
    { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
    { type: "CompiledWasm", include: ["**/*.wasm"] },
  ],
  compatibilityDate: "2025-09-01",
});
after(() => mf.dispose());

test("GET /health answers ok with the served architecture", async () => {
  const res = await mf.dispatchFetch("http://localhost/health");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /application\/json/);
  const body = await res.json();
  assert.equal(body.status, "ok");
  assert.equal(body.service, "hearth-edge");
  assert.equal(body.architecture, "two-tower-v1");
});

test("unknown routes are 404, not a crash", async () => {
  const res = await mf.dispatchFetch("http://localhost/nope");
  assert.equal(res.status, 404);
});
