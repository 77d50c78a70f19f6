// The browser package (wasm-bindgen --target web) run in Node on the committed model: a new
// person rates five films and gets ten recommendations with reasons; the sealed history reopens
// with the same list; a wrong passphrase and a damaged catalog are typed errors.
// Needs `bash .ci/build-web.sh` first (HEARTH_WEB_PKG points at its output).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const pkg = process.env.HEARTH_WEB_PKG;
assert.ok(pkg, "HEARTH_WEB_PKG must name the built package (bash .ci/build-web.sh)");
const { initSync, Hearth, HearthModel } = await import(join(pkg, "hearth_web.js"));
initSync({ module: readFileSync(join(pkg, "hearth_web_bg.wasm")) });

const model = new URL("../../../models/ml100k/", import.meta.url).pathname;
const file = (n) => readFileSync(join(model, n));
const [manifest, global, catalog, shard] = ["manifest.json", "global.bin", "catalog.json", "items.shard"].map(file);
const open = (sealed, pass, shardBytes = shard) =>
  Hearth.open(manifest, global, catalog, shardBytes, sealed, pass, undefined, "laptop", 7);

test("rate five films, get ten with reasons, reopen sealed", async () => {
  const h = open(undefined, "correct horse battery");
  assert.equal(h.capabilities().scorer, "wasm-simd128");
  const picks = ["Star Wars (1977)", "Empire Strikes Back, The (1980)", "Return of the Jedi (1983)",
    "Raiders of the Lost Ark (1981)", "Terminator, The (1984)"];
  picks.forEach((title, i) => {
    const [found] = h.search(title, 1);
    assert.equal(found.title, title);
    h.record(found.id, "rate", 5, 1000 + i, 20);
  });
  const recs = await h.recommend({ k: 10 });
  assert.deepEqual(h.recommendCpu({ k: 10 }), recs);
  assert.equal(h.capabilities().scorer, "wasm-simd128");
  assert.equal(h.capabilities().gpu, null);
  assert.equal(recs.length, 10);
  assert.ok(recs.every((r) => !picks.includes(r.title)));
  assert.ok(recs.filter((r) => r.becauseOf !== null).length >= 8, JSON.stringify(recs));
  assert.ok(recs[0].reason.startsWith("Because you liked "), recs[0].reason);
  const sealed = h.sealed();
  assert.ok(!Buffer.from(sealed).includes("Star Wars"), "sealed bytes hold no title");
  const again = open(sealed, "correct horse battery");
  assert.deepEqual(again.history(), h.history());
  assert.deepEqual(await again.recommend({ k: 10 }), recs);
  assert.throws(() => open(sealed, "wrong horse battery"), (e) => e.code === "wrong-key");
  const bad = Buffer.from(shard);
  bad[bad.length >> 1] ^= 1;
  assert.throws(() => open(undefined, "correct horse battery", bad), (e) => e.code === "shard");
  assert.throws(() => h.record("no-such-item", "like", undefined, 1), (e) => e.code === "bad-input");
});

test("a key derived by WebCrypto's PBKDF2 opens what the wasm's PBKDF2 sealed, and back", async () => {
  const derive = async (pass, params) => {
    const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(pass), "PBKDF2", false, ["deriveBits"]);
    const bits = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: new Uint8Array(params.salt), iterations: params.iterations }, base, 256);
    return new Uint8Array(bits);
  };
  const h = open(undefined, "über-secret passphrase");
  h.record(h.search("Casablanca", 1)[0].id, "like", undefined, 5, 21);
  const sealed = h.sealed();
  const params = Hearth.kdfParams(sealed);
  assert.equal(params.iterations, 600000);
  const key = await derive("über-secret passphrase", params);
  const d = Hearth.openDerived(manifest, global, catalog, shard, sealed, key, params.iterations, new Uint8Array(params.salt), "laptop", 7);
  assert.deepEqual(d.history(), h.history());
  const wrong = await derive("uber-secret passphrase", params);
  assert.throws(() => Hearth.openDerived(manifest, global, catalog, shard, sealed, wrong, params.iterations, new Uint8Array(params.salt), "laptop", 7),
    (e) => e.code === "wrong-key");
  // A new history keyed in WebCrypto opens with the passphrase in wasm.
  const fresh = Hearth.newKdfParams();
  const n = Hearth.openDerived(manifest, global, catalog, shard, undefined, await derive("new passphrase!", fresh), fresh.iterations, new Uint8Array(fresh.salt), "laptop", 7);
  n.record("1", "like", undefined, 9, 9);
  assert.deepEqual(open(n.sealed(), "new passphrase!").history(), n.history());
  assert.equal(Hearth.kdfParams(Hearth.open(manifest, global, catalog, shard, undefined, undefined, new Uint8Array(32), "x", 1).sealed()), null);

  // The model loaded once (what the page does while WebCrypto derives the key) serves several
  // unlock attempts, and gives what Hearth.openDerived gives.
  const loaded = HearthModel.load(manifest, global, catalog, shard);
  assert.throws(() => Hearth.openDerivedWith(loaded, sealed, wrong, params.iterations, new Uint8Array(params.salt), "laptop", 7), (e) => e.code === "wrong-key");
  const w = Hearth.openDerivedWith(loaded, sealed, key, params.iterations, new Uint8Array(params.salt), "laptop", 7);
  assert.deepEqual(w.history(), h.history());
  assert.deepEqual(w.recommendCpu({ k: 10 }), d.recommendCpu({ k: 10 }));
  const other = Buffer.from(shard);
  other[other.length >> 1] ^= 1;
  assert.throws(() => HearthModel.load(manifest, global, catalog, other), (e) => e.code === "shard");
  const broken = Buffer.from(global);
  broken[1000] ^= 1;
  assert.throws(() => HearthModel.load(manifest, broken, catalog, shard), (e) => e.code === "model" && /checksum|SHA-256/i.test(e.message));
});
