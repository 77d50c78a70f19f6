// Model versions through the edge worker in workerd: publishing (files, index, latest, each
// checked), then the CDN answers a device gets: 200 with the file's SHA-256 as ETag and an
// immutable Cache-Control, 304, 206 and 416, a moved and a rolled-back `latest`.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { aggregatorBin, startWorker } from "./worker.mjs";

const TOKEN = "test-publisher-token";
const model = new URL("../../../models/ml100k/", import.meta.url);
const FILES = ["manifest.json", "global.bin", "catalog.json", "items.shard"];
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const v1 = Object.fromEntries(FILES.map((f) => [f, readFileSync(new URL(f, model))]));
// Version 2: new global parameters, the other files unchanged (already stored).
const v2 = { ...v1, "global.bin": Buffer.concat([v1["global.bin"], Buffer.from("v2")]) };
const index = (version, files) => ({ version, files: Object.fromEntries(Object.entries(files).map(([n, b]) => [n, sha256(b)])) });

const mf = startWorker({ bindings: { PUBLISH_TOKEN: TOKEN } });
after(() => mf.dispose());
const url = (p) => `http://localhost${p}`;
const auth = { authorization: `Bearer ${TOKEN}` };
const put = (p, body, headers = auth) => mf.dispatchFetch(url(p), { method: "PUT", body, headers });
const get = (p, headers = {}) => mf.dispatchFetch(url(p), { headers });
async function refused(res, status, code) {
  assert.equal(res.status, status, `${res.status} ${await res.clone().text()}`);
  const body = await res.json();
  assert.equal(body.error.code, code, JSON.stringify(body));
  assert.ok(body.error.message.length > 0);
}
async function publish(version, files) {
  for (const bytes of Object.values(files)) {
    const res = await put(`/v1/admin/files/${sha256(bytes)}`, bytes);
    assert.ok(res.status === 201 || res.status === 200, `file: ${res.status} ${await res.text()}`);
  }
  assert.equal((await put(`/v1/admin/versions/${version}`, JSON.stringify(index(version, files)))).status, 201);
  assert.equal((await put("/v1/admin/latest", JSON.stringify({ version }))).status, 200);
}

test("nothing is published yet: latest and files are typed 404s", async () => {
  await refused(await get("/v1/models/latest"), 404, "no_version");
  await refused(await get("/v1/models/1/global.bin"), 404, "no_version");
});

test("publishing refuses missing or wrong tokens, wrong digests, indexes ahead of their files, and moving latest to nothing", async () => {
  const g = v1["global.bin"];
  // Refused before the body is read: small bodies, or workerd resets the connection the client
  // is still writing on.
  await refused(await put(`/v1/admin/files/${sha256(g)}`, "x", {}), 401, "unauthorized");
  await refused(await put(`/v1/admin/files/${sha256(g)}`, "x", { authorization: "Bearer nope" }), 401, "unauthorized");
  await refused(await put(`/v1/admin/files/${sha256(g)}`, Buffer.concat([g, Buffer.from("x")])), 400, "digest_mismatch");
  await refused(await put(`/v1/admin/files/${sha256(g).toUpperCase()}`, "x"), 400, "malformed");
  await refused(await put("/v1/admin/versions/1", JSON.stringify(index(1, v1))), 409, "missing_file");
  await refused(await put("/v1/admin/versions/1", JSON.stringify(index(2, v1))), 400, "malformed");
  await refused(await put("/v1/admin/versions/1", "{not json"), 400, "malformed");
  await refused(await put("/v1/admin/versions/1", " ".repeat(70_000)), 413, "too_large");
  await refused(await put("/v1/admin/latest", JSON.stringify({ version: 1 })), 409, "no_version");
  await refused(await put("/v1/admin/latest", JSON.stringify({ version: "1" })), 400, "malformed");
  await refused(await get("/v1/models/latest"), 404, "no_version");
});

test("a worker without a publisher token takes no publication", async () => {
  const closed = startWorker();
  try {
    const g = v1["global.bin"];
    await refused(await closed.dispatchFetch(url(`/v1/admin/files/${sha256(g)}`), { method: "PUT", body: "x", headers: auth }), 403, "publishing_disabled");
  } finally {
    await closed.dispose();
  }
});

test("version 1 published: files first, then its index, then latest; again changes nothing; other files under its number are refused", async () => {
  await publish(1, v1);
  const again = await put(`/v1/admin/files/${sha256(v1["items.shard"])}`, v1["items.shard"]);
  assert.equal(again.status, 200);
  assert.equal((await again.json()).stored, false);
  assert.equal((await put("/v1/admin/versions/1", JSON.stringify(index(1, v1)))).status, 200);
  // Another global.bin stored, then offered as version 1's.
  assert.equal((await put(`/v1/admin/files/${sha256(v2["global.bin"])}`, v2["global.bin"])).status, 201);
  await refused(await put("/v1/admin/versions/1", JSON.stringify(index(1, v2))), 409, "version_exists");
  assert.equal((await put("/v1/admin/latest", JSON.stringify({ version: 1 }))).status, 200);
  const latest = await get("/v1/models/latest");
  assert.equal(latest.status, 200);
  assert.match(latest.headers.get("cache-control"), /max-age=30\b/);
  assert.deepEqual(await latest.json(), index(1, v1));
});

test("a file: 200 with its SHA-256 as ETag, immutable, the same bytes from R2 and from the cache; HEAD without a body", async () => {
  const bucket = await mf.getR2Bucket("MODELS");
  for (const name of FILES) {
    for (const pass of ["R2", "cache"]) {
      // The second pass finds the file gone from R2: only the cache can answer it.
      if (pass === "cache") await bucket.delete(`files/${sha256(v1[name])}`);
      const res = await get(`/v1/models/1/${name}`);
      assert.equal(res.status, 200, `${name} (${pass})`);
      assert.equal(res.headers.get("etag"), `"${sha256(v1[name])}"`);
      assert.equal(res.headers.get("cache-control"), "public, max-age=31536000, immutable, no-transform");
      assert.equal(res.headers.get("accept-ranges"), "bytes");
      assert.equal(res.headers.get("content-type"), name.endsWith(".json") ? "application/json" : "application/octet-stream");
      assert.ok(Buffer.from(await res.arrayBuffer()).equals(v1[name]), `${name} (${pass}): the bytes`);
    }
    // Back in R2 for the range requests below (which R2 answers).
    assert.equal((await put(`/v1/admin/files/${sha256(v1[name])}`, v1[name])).status, 201);
  }
  const head = await mf.dispatchFetch(url("/v1/models/1/global.bin"), { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get("etag"), `"${sha256(v1["global.bin"])}"`);
  assert.equal((await head.arrayBuffer()).byteLength, 0);
});

test("conditional requests: 304 for the file's tag (strong, weak or listed), 200 for another", async () => {
  const tag = `"${sha256(v1["global.bin"])}"`;
  for (const inm of [tag, `W/${tag}`, `"other", ${tag}`, "*"]) {
    const res = await get("/v1/models/1/global.bin", { "if-none-match": inm });
    assert.equal(res.status, 304, inm);
    assert.equal(res.headers.get("etag"), tag);
    assert.equal((await res.arrayBuffer()).byteLength, 0);
  }
  assert.equal((await get("/v1/models/1/global.bin", { "if-none-match": '"other"' })).status, 200);
});

test("byte ranges: 206 with Content-Range, suffixes and open ends, 416 past the end, If-Range", async () => {
  const bytes = v1["items.shard"];
  const size = bytes.length;
  const tag = `"${sha256(bytes)}"`;
  for (const [range, first, last] of [["bytes=10-19", 10, 19], ["bytes=-100", size - 100, size - 1], [`bytes=${size - 5}-`, size - 5, size - 1], [`bytes=0-${size + 99}`, 0, size - 1]]) {
    const res = await get("/v1/models/1/items.shard", { range });
    assert.equal(res.status, 206, range);
    assert.equal(res.headers.get("content-range"), `bytes ${first}-${last}/${size}`);
    assert.equal(res.headers.get("etag"), tag);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(bytes.subarray(first, last + 1)), range);
  }
  for (const range of [`bytes=${size}-`, "bytes=-0"]) {
    const res = await get("/v1/models/1/items.shard", { range });
    assert.equal(res.headers.get("content-range"), `bytes */${size}`);
    await refused(res, 416, "range_not_satisfiable");
  }
  // Several ranges, another unit, or a stale If-Range: the whole file.
  for (const headers of [{ range: "bytes=0-1,5-6" }, { range: "items=0-1" }, { range: "bytes=0-9", "if-range": '"stale"' }]) {
    const res = await get("/v1/models/1/items.shard", headers);
    assert.equal(res.status, 200, JSON.stringify(headers));
    assert.equal((await res.arrayBuffer()).byteLength, size);
  }
  assert.equal((await get("/v1/models/1/items.shard", { range: "bytes=0-9", "if-range": tag })).status, 206);
});

test("unknown versions, files and malformed paths are typed refusals", async () => {
  await refused(await get("/v1/models/7/global.bin"), 404, "no_version");
  await refused(await get("/v1/models/1/personal.bin"), 404, "no_file");
  await refused(await get("/v1/models/01/global.bin"), 400, "malformed");
  await refused(await get("/v1/models/1/.hidden"), 400, "malformed");
  await refused(await get("/v1/models/x/global.bin"), 400, "malformed");
});

test("latest moves to version 2 and back (a rollback); version 1 stays served as it was", async () => {
  await publish(2, v2);
  assert.deepEqual(await (await get("/v1/models/latest")).json(), index(2, v2));
  const g2 = await get("/v1/models/2/global.bin");
  assert.equal(g2.headers.get("etag"), `"${sha256(v2["global.bin"])}"`);
  assert.ok(Buffer.from(await g2.arrayBuffer()).equals(v2["global.bin"]));
  const g1 = await get("/v1/models/1/global.bin");
  assert.ok(Buffer.from(await g1.arrayBuffer()).equals(v1["global.bin"]));
  assert.equal((await put("/v1/admin/latest", JSON.stringify({ version: 1 }))).status, 200);
  assert.equal((await (await get("/v1/models/latest")).json()).version, 1);
});

test("the aggregator's publish-edge copies a model over HTTP: files, index, latest; again stores nothing; a wrong token fails", async () => {
  assert.ok(existsSync(aggregatorBin), `${aggregatorBin}: build it first (cargo test --workspace builds it)`);
  const edge = startWorker({ bindings: { PUBLISH_TOKEN: TOKEN }, listen: true });
  try {
    const base = (await edge.ready).href;
    const run = (token) => promisify(execFile)(aggregatorBin, ["publish-edge", "--edge", base, "--model", new URL(".", model).pathname, "--json"], { env: { ...process.env, HEARTH_EDGE_TOKEN: token } });
    const first = JSON.parse((await run(TOKEN)).stdout);
    const version = JSON.parse(v1["manifest.json"]).model_version;
    assert.equal(first.version, version);
    assert.deepEqual([...first.files_stored].sort(), [...FILES].sort());
    assert.equal(first.index_stored, true);
    const again = JSON.parse((await run(TOKEN)).stdout);
    assert.deepEqual(again.files_stored, []);
    assert.equal(again.index_stored, false);
    const latest = await (await fetch(new URL("v1/models/latest", base))).json();
    assert.deepEqual(latest, index(version, v1));
    const shard = await fetch(new URL(`v1/models/${version}/items.shard`, base));
    assert.ok(Buffer.from(await shard.arrayBuffer()).equals(v1["items.shard"]));
    await assert.rejects(run("wrong-token"), (e) => e.code === 1 && /unauthorized/.test(e.stderr));
  } finally {
    await edge.dispose();
  }
});
