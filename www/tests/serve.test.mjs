// The demo server over real HTTP on 127.0.0.1: every model file it serves holds items, item tags,
// popularity and the model, and nothing about the training users; the training-only files
// (personal.bin, users.json) are refused however they are asked for; a malformed URL is a 400
// and the server stays up; every response carries the Content-Security-Policy. No browser needed (.ci/test runs it with the other www tests).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { start } from "../serve.mjs";

const MODEL_DIR = new URL("../../models/ml100k/", import.meta.url);
const SERVED = ["manifest.json", "global.bin", "catalog.json", "items.shard"];
let server;
before(async () => {
  server = await start({ port: 0 });
});
after(async () => {
  await server?.close();
});

// Every `{id, tags}` object anywhere in a JSON value.
function records(value, out = []) {
  if (Array.isArray(value)) value.forEach((v) => records(v, out));
  else if (value && typeof value === "object") {
    if ("id" in value && "tags" in value) out.push(value);
    Object.values(value).forEach((v) => records(v, out));
  }
  return out;
}

test("no file the server serves holds a training user", async () => {
  const { users } = JSON.parse(await readFile(new URL("users.json", MODEL_DIR), "utf8"));
  assert.equal(users.length, 943, "the training users are in the model directory, for training");
  const rows = new Set(users.map((u) => `${u.id}|${u.tags.join(",")}`));
  for (const name of SERVED) {
    const res = await fetch(`${server.url}model/${name}`);
    assert.equal(res.status, 200, name);
    const body = Buffer.from(await res.arrayBuffer());
    if (name.endsWith(".json")) {
      const json = JSON.parse(body.toString("utf8"));
      assert.ok(!("users" in json), `${name} has no users`);
      const leaked = records(json).filter((r) => rows.has(`${r.id}|${r.tags.join(",")}`));
      assert.deepEqual(leaked, [], `${name} holds no user row`);
    } else {
      // Tensor files name their tensors: the personal table is never among them.
      assert.ok(!body.includes(Buffer.from("personal")), `${name} holds no personal vectors`);
    }
  }
  // The catalog's records are items (their tags index the item tag vocabulary), never users.
  const catalog = await (await fetch(`${server.url}model/catalog.json`)).json();
  assert.deepEqual(Object.keys(catalog).sort(), ["item_tags", "items", "popularity", "user_tags"]);
  assert.equal(catalog.items.length, 1682);
  assert.ok(catalog.items.every((i) => i.tags.every((t) => t < catalog.item_tags.length)));
});

test("the training-only files are refused however they are asked for", async () => {
  for (const name of ["personal.bin", "users.json"]) {
    // They exist, so the refusals below are the server's rule, not a missing file.
    await readFile(new URL(name, MODEL_DIR));
    for (const path of [`model/${name}`, `model/./${name}`, `model/x/../${name}`, `model/%2e/${name}`, `models/ml100k/${name}`,
      `model/..%2fmodels%2fml100k%2f${name}`, `pkg/../model/${name}`]) {
      const res = await fetch(`${server.url}${path}`);
      assert.ok(res.status === 404 || res.status === 400, `${path}: ${res.status}`);
      assert.ok(!(await res.text()).includes("\"users\""), path);
    }
    const head = await fetch(`${server.url}model/${name}`, { method: "HEAD" });
    assert.equal(head.status, 404, `HEAD ${name}`);
  }
});

test("a malformed URL is a 400 and the server stays up", async () => {
  for (const path of ["%", "model/%E0%A4%A", "%zz"]) {
    const res = await fetch(`${server.url}${path}`);
    assert.equal(res.status, 400, path);
  }
  assert.equal((await fetch(`${server.url}model/manifest.json`)).status, 200);
});

test("every response carries the Content-Security-Policy, and the page carries it too", async () => {
  const { CSP } = await import("../serve.mjs");
  for (const path of ["", "app.js", "model/catalog.json", "pkg/hearth_web.js", "no-such-file", "%"]) {
    const res = await fetch(`${server.url}${path}`);
    assert.equal(res.headers.get("content-security-policy"), CSP, path);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff", path);
  }
  for (const rule of ["default-src 'self'", "object-src 'none'", "frame-ancestors 'none'"]) assert.ok(CSP.includes(rule), rule);
  const html = await readFile(new URL("../index.html", import.meta.url), "utf8");
  const meta = html.match(/http-equiv="Content-Security-Policy" content="([^"]+)"/);
  assert.ok(meta, "index.html has a CSP meta");
  // The meta is the header's policy without frame-ancestors (which a meta cannot carry).
  assert.equal(meta[1], CSP.replace("; frame-ancestors 'none'", ""));
});
