// The demo server over real HTTP on 127.0.0.1: every file it serves (page, package, model) holds
// nothing about the training users (no users.json row, no piece of their personal vectors); the
// training-only files (personal.bin, users.json) are refused however they are asked for; a
// malformed URL is a 400 and the server stays up; every response carries the
// Content-Security-Policy. No browser needed (.ci/test runs it with the other www tests).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { start, PAGE, PKG, MODEL } from "../serve.mjs";

const MODEL_DIR = new URL("../../models/ml100k/", import.meta.url);
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

// Every path the server answers 200 for: the page, the package and the model files.
const servedPaths = () => ["", ...[...PAGE], ...[...PKG].map((n) => `pkg/${n}`), ...[...MODEL].map((n) => `model/${n}`)];

// The personal table's rows as bytes: 64-byte pieces of the training users' own vectors, which
// must appear in no served file (a personal table under another tensor name would still match).
async function personalPieces() {
  const bytes = await readFile(new URL("personal.bin", MODEL_DIR));
  const pieces = [];
  for (let at = 64; at + 64 <= bytes.length - 32 && pieces.length < 200; at += Math.floor((bytes.length - 128) / 200)) pieces.push(bytes.subarray(at, at + 64));
  return pieces;
}

test("no file the server serves holds a training user", async () => {
  const { users } = JSON.parse(await readFile(new URL("users.json", MODEL_DIR), "utf8"));
  assert.equal(users.length, 943, "the training users are in the model directory, for training");
  const rows = new Set(users.map((u) => `${u.id}|${u.tags.join(",")}`));
  // A user row as users.json writes it, e.g. {"id":"1","tags":[0,1,2]}: no served file holds one.
  const literal = users.map((u) => Buffer.from(JSON.stringify(u)));
  const pieces = await personalPieces();
  assert.ok(pieces.length >= 100);
  const paths = servedPaths();
  assert.ok(paths.length >= 16, "page, package and model files");
  for (const path of paths) {
    const res = await fetch(`${server.url}${path}`);
    assert.equal(res.status, 200, `${path} is served (run bash .ci/build-web.sh first)`);
    const body = Buffer.from(await res.arrayBuffer());
    assert.ok(body.length > 0, path);
    assert.deepEqual(literal.filter((row) => body.includes(row)).map(String), [], `${path} holds no users.json row`);
    assert.equal(pieces.findIndex((p) => body.includes(p)), -1, `${path} holds no piece of the personal table`);
    // Tensor files name their tensors: the personal table is never among them.
    if (path.startsWith("model/") && !path.endsWith(".json")) assert.ok(!body.includes(Buffer.from("personal")), `${path} names no personal tensor`);
    if (path.endsWith(".json")) {
      const json = JSON.parse(body.toString("utf8"));
      assert.ok(!("users" in json), `${path} has no users`);
      const leaked = records(json).filter((r) => rows.has(`${r.id}|${r.tags.join(",")}`));
      assert.deepEqual(leaked, [], `${path} holds no user row`);
    }
  }
  // The catalog's records are items (their tags index the item tag vocabulary), never users.
  const catalog = await (await fetch(`${server.url}model/catalog.json`)).json();
  assert.deepEqual(Object.keys(catalog).sort(), ["item_tags", "items", "popularity", "user_tags"]);
  assert.equal(catalog.items.length, 1682);
  assert.ok(catalog.items.every((i) => i.tags.every((t) => t < catalog.item_tags.length)));
  // user_tags is the tag vocabulary (age bands, genders, occupations), not anyone's tags.
  assert.ok(catalog.user_tags.every((t) => typeof t === "string"));
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
