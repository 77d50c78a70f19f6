// The demo in real Chromium (Debian's, driven by playwright-core): a person creates a history,
// rates five films and sees ten recommendations with reasons; after a reload the history is
// still there; IndexedDB holds no plaintext title or item id; a wrong passphrase, a damaged
// catalog and another model version's catalog are each refused with a clear message and the stored
// history is left as it was; and no request the page makes carries the history.
// Needs `bash .ci/build-web.sh` (the package) and apt chromium; .ci/test runs it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import { start } from "../serve.mjs";

const require = createRequire(import.meta.url);
const CHROMIUM = process.env.HEARTH_CHROMIUM || "/usr/bin/chromium";
const ARGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"];
const FILMS = ["Star Wars (1977)", "Empire Strikes Back, The (1980)", "Return of the Jedi (1983)",
  "Raiders of the Lost Ark (1981)", "Terminator, The (1984)"];
const PASS = "a long passphrase";

let server, browser;
before(async () => {
  server = await start({ port: 0 });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
});
after(async () => {
  await browser?.close();
  await server?.close();
});

async function unlock(page, pass) {
  await page.fill("#passphrase", pass);
  await page.click("#gate-button");
}

async function rateFilm(page, title, stars) {
  await page.fill("#search", title);
  const row = page.locator("#results li", { has: page.locator(".title", { hasText: title }) }).first();
  await row.waitFor();
  await row.locator(`button[title="Rate ${stars} of 5"]`).click();
  await page.locator("#history li .title", { hasText: title }).first().waitFor();
}

// The browser's own network log for a context, every target (pages, their workers, service
// workers): `sent` holds the requests that reached the network, `answered` those a service worker
// answered instead (the page's side of what the service worker then fetched).
function networkLog(context) {
  const log = { sent: [], answered: [] };
  context.on("requestfinished", async (r) => {
    let response, sizes;
    try {
      response = await r.response();
      sizes = await r.sizes();
    } catch (e) {
      // A request that finished as the test closed its context can no longer be measured; the
      // test has compared its log already. Anything else is a real failure.
      if (/has been closed/.test(String(e?.message))) return;
      throw e;
    }
    const url = new URL(r.url());
    (response?.fromServiceWorker() ? log.answered : log.sent).push({ method: r.method(), url: url.pathname + url.search,
      serviceWorker: Boolean(r.serviceWorker()), sent: sizes.requestBodySize, received: sizes.responseBodySize, body: r.postDataBuffer() });
  });
  return log;
}

// The "What left this device" panel, as the page shows it.
const panelRows = (page) => page.$$eval("#egress tr", (trs) => trs.map((tr) => ({ ...tr.dataset })));

// The panel and the network log agree: the same requests (method, URL, and whether the service
// worker or the page/its worker made it), with the same body bytes sent and received. Where the
// log has no size, a second source stands in: the log does not measure a worker's script as it is
// fetched for the worker (the file the server serves does), nor a service worker's request body
// (the page's request it forwarded has it). The only sizes the page cannot see are those of the
// service worker's own scripts, fetched by the browser itself; the panel lists them, size not shown.
async function assertPanelMatchesNetwork(page, log) {
  const key = (r) => `${r.method} ${r.url} ${r.serviceWorker ? "(service worker)" : ""}`;
  let rows = [];
  const deadline = Date.now() + 10_000;
  do {
    await page.waitForTimeout(200);
    rows = (await panelRows(page)).map((r) => ({ ...r, serviceWorker: r.by.includes("service worker") }));
  } while (rows.length !== log.sent.length && Date.now() < deadline);
  assert.deepEqual(rows.map(key).sort(), log.sent.map(key).sort(), "the panel lists every request of the network log, and only those");
  assert.equal(await page.textContent("#egress-count"), String(log.sent.length));
  const served = async (url) => (await (await fetch(new URL(url, server.url))).arrayBuffer()).byteLength;
  const left = [...log.sent];
  for (const row of rows) {
    const [sent, received] = [Number(row.sent), row.received === "" ? null : Number(row.received)];
    if (received === null) assert.equal(row.by, "browser, for the service worker", key(row));
    let i = -1;
    for (const [j, n] of left.entries()) {
      if (key(n) !== key(row)) continue;
      const sentAgrees = n.sent === sent || (n.sent <= 0 && row.serviceWorker && log.answered.some((a) => a.method === row.method && a.url === row.url && a.sent === sent));
      const receivedAgrees = received === null || n.received === received || (n.received <= 0 && row.method === "GET" && (await served(row.url)) === received);
      if (sentAgrees && receivedAgrees) { i = j; break; }
    }
    assert.ok(i >= 0, `${key(row)}: the panel says ${row.sent} B sent, ${row.received || "?"} B received; the network log: ${
      log.sent.filter((n) => key(n) === key(row)).map((n) => `${n.sent} B sent, ${n.received} B received`).join("; ")}`);
    left.splice(i, 1);
  }
  return rows;
}

// A person's first visit: a new history, five films rated, ten recommendations; the tests below
// look at it one property at a time, in order (each needs the ones before).
describe("a first visit, then a reload and a visit offline", () => {
  let context, page, log;
  const errors = [];
  const before5 = [];
  before(async () => {
    context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
    log = networkLog(context);
    page = await context.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(server.url);
    await page.locator("#gate:not([hidden])").waitFor();
    assert.equal(await page.textContent("#gate-title"), "Create your private history");
    await unlock(page, PASS);
    await page.locator("#app:not([hidden])").waitFor();
    for (const f of FILMS) await rateFilm(page, f, 5);
    await page.fill("#search", "");
    await page.locator("#results li").first().waitFor({ state: "detached" });
    await page.locator("#recs:not([aria-busy])").waitFor(); // the newest list, not one in flight
  });
  after(() => context?.close());

  test("ten recommendations, none of them a rated film, most with a reason", async () => {
    const recs = page.locator("#recs li");
    await assert.doesNotReject(recs.nth(9).waitFor());
    assert.equal(await recs.count(), 10);
    const titles = await page.locator("#recs li .title").allTextContents();
    const reasons = await page.locator("#recs li .reason").allTextContents();
    const matches = await page.locator("#recs li .match").allTextContents();
    assert.ok(titles.every((t) => !FILMS.includes(t)), titles.join(" | "));
    assert.ok(reasons.filter((r) => r.startsWith("Because you liked ")).length >= 8, reasons.join(" | "));
    assert.ok(matches.every((m) => /^\d{1,3}% match$/.test(m)), matches.join(" | "));
    await page.waitForFunction((n) => Number(document.documentElement.dataset.saves) >= n, FILMS.length + 1);
    await page.locator("html[data-gpu]").waitFor({ state: "attached" });
    await page.screenshot({ path: new URL("../screenshot.png", import.meta.url).pathname, fullPage: false });
  });

  test("IndexedDB holds only sealed bytes: no title, no item id of the rated films", async () => {
    const raw = await page.evaluate(async () => {
      const db = await new Promise((ok, fail) => { const r = indexedDB.open("hearth"); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
      const all = await new Promise((ok) => { const r = db.transaction("vault").objectStore("vault").getAll(); r.onsuccess = () => ok(r.result); });
      return all.map((v) => (typeof v === "string" ? v : Array.from(new Uint8Array(v))));
    });
    const bytes = Buffer.concat(raw.map((v) => (typeof v === "string" ? Buffer.from(v) : Buffer.from(v))));
    assert.ok(bytes.length > 500, `a sealed history is stored (${bytes.length} bytes)`);
    for (const needle of [...FILMS, "Star Wars", "\"item\":\"50\"", "rate"]) assert.ok(!bytes.includes(needle), `IndexedDB holds ${needle}`);
  });

  test("\"What left this device\" lists what the browser's network log shows: the page's, the training worker's and the service worker's requests", async () => {
    // The five films are tuned into the person's embedding by the training worker (its module and
    // wasm come through the service worker, which by now controls the page).
    await page.locator("html[data-tuned]").waitFor({ state: "attached", timeout: 120_000 });
    await page.evaluate(() => navigator.serviceWorker.ready);
    // A request with a body (the server refuses it): its bytes sent are counted.
    assert.equal(await page.evaluate(() => fetch("/model/manifest.json", { method: "POST", body: "x".repeat(1234) }).then((r) => r.status)), 405);
    const rows = await assertPanelMatchesNetwork(page, log);
    const by = (who) => rows.filter((r) => r.by === who).map((r) => r.url);
    assert.ok(by("page").includes("/pkg/hearth_web_bg.wasm"), "the page's first load, before the service worker");
    assert.ok(by("service worker").includes("/pkg/hearth_train_bg.wasm"), "the training worker's wasm, fetched through the service worker");
    assert.ok(by("service worker").includes("/model/items.shard"), "the service worker's install-time downloads");
    assert.deepEqual(by("browser, for the service worker").sort(), ["/egress.js", "/sw.js"]);
    assert.ok(rows.some((r) => r.method === "POST" && r.sent === "1234"), JSON.stringify(rows.filter((r) => r.method !== "GET")));
  });

  test("every request but that test's POST: a GET of the app or the shared model, no body, nothing personal in its URL", async () => {
    const requests = [...log.sent, ...log.answered].filter((r) => !(r.method === "POST" && r.url === "/model/manifest.json"));
    assert.ok(requests.length >= 6);
    for (const r of requests) {
      assert.equal(r.method, "GET", r.url);
      assert.ok(!r.body || r.body.length === 0, r.url);
      assert.match(r.url, /^\/(|app\.js|storage\.js|egress\.js|style\.css|icon\.svg|sw\.js|train-worker\.js|pkg\/hearth_(web|train)(\.js|_bg\.wasm)|model\/(manifest\.json|global\.bin|catalog\.json|items\.shard))$/, r.url);
    }
  });

  test("a reload: a wrong passphrase is refused, the right one opens the same history; the panel starts again and still agrees", async () => {
    before5.push(...(await page.locator("#history li .title").allTextContents()));
    assert.equal(before5.length, FILMS.length);
    log.sent.length = 0;
    log.answered.length = 0;
    await page.reload();
    await page.locator("#gate:not([hidden])").waitFor();
    assert.equal(await page.textContent("#gate-title"), "Welcome back");
    await unlock(page, "not the passphrase");
    await page.locator("#gate-error:not([hidden])").waitFor();
    assert.match(await page.textContent("#gate-error"), /does not open this history/);
    await unlock(page, PASS);
    await page.locator("#app:not([hidden])").waitFor();
    assert.deepEqual(await page.locator("#history li .title").allTextContents(), before5);
    assert.deepEqual(await page.locator("#recs li .title").count(), 10);
    // Controlled by the service worker now: it made every request (this page's own included).
    const rows = await assertPanelMatchesNetwork(page, log);
    assert.ok(rows.some((r) => r.url === "/" && r.by === "service worker"), "the request for the page itself");
  });

  test("offline after the first load: the service worker serves the app and the model, nothing leaves", async () => {
    await context.setOffline(true);
    await page.reload();
    await page.locator("#gate:not([hidden])").waitFor();
    await unlock(page, PASS);
    await page.locator("#recs li").nth(9).waitFor();
    assert.deepEqual(await page.locator("#history li .title").allTextContents(), before5);
    assert.deepEqual(await panelRows(page), [], "offline, nothing reached the network");
    await context.setOffline(false);
    assert.deepEqual(errors, []);
  });
});

test("with no service worker, the training worker's own requests are in the panel, as in the network log", async () => {
  const context = await browser.newContext({ serviceWorkers: "block" });
  const log = networkLog(context);
  const page = await context.newPage();
  await page.goto(server.url);
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  for (const f of FILMS.slice(0, 3)) await rateFilm(page, f, 5);
  await page.locator("html[data-tuned]").waitFor({ state: "attached", timeout: 120_000 });
  assert.equal(await page.evaluate(() => fetch("/model/global.bin", { method: "PUT", body: new Uint8Array(4321) }).then((r) => r.status)), 405);
  const rows = await assertPanelMatchesNetwork(page, log);
  assert.ok(rows.some((r) => r.by === "page" && r.method === "PUT" && r.sent === "4321"), JSON.stringify(rows.filter((r) => r.method !== "GET")));
  assert.deepEqual(rows.filter((r) => r.by === "training worker").map((r) => r.url).sort(), ["/pkg/hearth_train_bg.wasm"]);
  assert.ok(rows.some((r) => r.by === "page" && r.url === "/train-worker.js"), "the worker's script, fetched for the page");
  await context.close();
});

test("a damaged catalog and another model's catalog: clear messages, nothing lost", async () => {
  const { readFileSync } = await import("node:fs");
  const { createHash } = await import("node:crypto");
  const shard = readFileSync(new URL("../../models/ml100k/items.shard", import.meta.url));
  const damaged = Buffer.from(shard);
  damaged[damaged.length >> 1] ^= 1;
  // The same catalog relabelled as model version 2, with a valid checksum: only the version is wrong.
  const other = Buffer.from(shard);
  assert.equal(other.readUInt16LE(20), 1);
  other[22] = "2".charCodeAt(0);
  createHash("sha256").update(other.subarray(0, other.length - 32)).digest().copy(other, other.length - 32);

  // The damaged files are swapped in by routing, which does not see a service worker's fetches.
  const context = await browser.newContext({ serviceWorkers: "block" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(server.url);
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  await rateFilm(page, "Casablanca (1942)", 5);
  await page.locator('html[data-saves="2"]').waitFor({ state: "attached" });
  const stored = () => page.evaluate(async () => {
    const db = await new Promise((ok) => { const r = indexedDB.open("hearth"); r.onsuccess = () => ok(r.result); });
    const v = await new Promise((ok) => { const r = db.transaction("vault").objectStore("vault").get("current"); r.onsuccess = () => ok(r.result); });
    db.close();
    return Array.from(new Uint8Array(v));
  });
  const saved = await stored();

  // A damaged catalog, then another model version's: each refused with its own message.
  for (const [body, message] of [[damaged, /catalog that was downloaded is damaged/], [other, /different model version/]]) {
    await page.route("**/model/items.shard", (r) => r.fulfill({ body, contentType: "application/octet-stream" }));
    await page.reload();
    await page.locator("#gate:not([hidden])").waitFor();
    await unlock(page, PASS);
    await page.locator("#gate-error:not([hidden])").waitFor();
    assert.match(await page.textContent("#gate-error"), message);
    assert.match(await page.textContent("#gate-error"), /history is untouched/);
    assert.deepEqual(await stored(), saved);
    await page.unroute("**/model/items.shard");
  }

  // With the right catalog again, the history opens as it was saved.
  await page.reload();
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  assert.deepEqual(await page.locator("#history li .title").allTextContents(), ["Casablanca (1942)"]);
  assert.deepEqual(errors, []);
  await context.close();
});

test("model version 2 is published: v1's catalog is refused, the v1 tuning is set aside with a status line, the history kept", async () => {
  const { readFileSync } = await import("node:fs");
  const { createHash } = await import("node:crypto");
  const dir = new URL("../../models/ml100k/", import.meta.url);
  const shard = readFileSync(new URL("items.shard", dir));
  const manifest = JSON.parse(readFileSync(new URL("manifest.json", dir), "utf8"));
  assert.equal(manifest.model_version, 1);
  // Version 2 as the aggregator publishes it: the shard names its version, the manifest its digest.
  const v2shard = Buffer.from(shard);
  assert.equal(v2shard.readUInt16LE(20), 1);
  v2shard[22] = "2".charCodeAt(0);
  createHash("sha256").update(v2shard.subarray(0, v2shard.length - 32)).digest().copy(v2shard, v2shard.length - 32);
  const v2manifest = Buffer.from(JSON.stringify({ ...manifest, model_version: 2,
    files: { ...manifest.files, "items.shard": createHash("sha256").update(v2shard).digest("hex") } }));

  const context = await browser.newContext({ serviceWorkers: "block" }); // routing does not see a worker's fetches
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(server.url);
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  for (const f of FILMS.slice(0, 3)) await rateFilm(page, f, 5);
  await page.locator("html[data-tuned]").waitFor({ state: "attached", timeout: 120_000 }); // tuned for v1 and saved
  assert.match(await page.textContent("#status"), /Model v1 .* tuned to you on this device \(3 films\)/);

  // v2's manifest with v1's catalog: refused, nothing changed.
  await page.route("**/model/manifest.json", (r) => r.fulfill({ body: v2manifest, contentType: "application/json" }));
  await page.goto("about:blank"); // (a hash change alone would not reload the page)
  await page.goto(`${server.url}#bench-notune`); // no new tuning, so the status line stays put
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#gate-error:not([hidden])").waitFor();
  assert.match(await page.textContent("#gate-error"), /different model version/);

  // v2 whole: the history opens, the v1 offset is set aside and the status line says so.
  await page.route("**/model/items.shard", (r) => r.fulfill({ body: v2shard, contentType: "application/octet-stream" }));
  await page.reload();
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  const status = await page.textContent("#status");
  assert.match(status, /^Model v2 /);
  assert.match(status, /your on-device tuning was for model v1, so it was set aside and is being redone for v2/);
  const caps = await page.evaluate(() => window.hearthBench.capabilities());
  assert.deepEqual([caps.modelVersion, caps.tuned, caps.droppedTuning], [2, null, 1]);
  assert.deepEqual((await page.locator("#history li .title").allTextContents()).sort(), FILMS.slice(0, 3).sort());
  assert.deepEqual(errors, []);
  await context.close();
});

// A catalog with rights, as an operator publishes it: the model's own files, its catalog.json with
// rules on three of the most popular films (which a new person's first list is made of) and the
// manifest's digest of it. Served by routing, like another version above.
function catalogWithRights(rules) {
  const { readFileSync } = require("node:fs");
  const { createHash } = require("node:crypto");
  const dir = new URL("../../models/ml100k/", import.meta.url);
  const catalog = JSON.parse(readFileSync(new URL("catalog.json", dir), "utf8"));
  for (const item of catalog.items) Object.assign(item, rules[item.title] || {});
  const body = Buffer.from(JSON.stringify(catalog));
  const manifest = JSON.parse(readFileSync(new URL("manifest.json", dir), "utf8"));
  manifest.files["catalog.json"] = createHash("sha256").update(body).digest("hex");
  return { catalog: body, manifest: Buffer.from(JSON.stringify(manifest)) };
}

test("catalog rights: the page ranks with the browser's locale and clock, leaving out what they do not allow and what is trusted below 0.6", async () => {
  const DAY = 86_400_000;
  const { catalog, manifest } = catalogWithRights({
    "Star Wars (1977)": { rights: { territories: ["CH"] } },
    "Fargo (1996)": { rights: { from: Date.now() + 365 * DAY } },
    "Contact (1997)": { trust: 0.3 },
  });
  // A new person's first list (the popular films, by the same rules) in a browser of `locale`
  // whose clock is `shift` ms ahead.
  const firstList = async (locale, shift = 0) => {
    const context = await browser.newContext({ locale, serviceWorkers: "block" });
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    if (shift) await page.addInitScript((ms) => { const real = Date.now; Date.now = () => real() + ms; }, shift);
    await page.route("**/model/manifest.json", (r) => r.fulfill({ body: manifest, contentType: "application/json" }));
    await page.route("**/model/catalog.json", (r) => r.fulfill({ body: catalog, contentType: "application/json" }));
    await page.goto(`${server.url}#bench-notune`);
    await page.locator("#gate:not([hidden])").waitFor();
    await unlock(page, PASS);
    await page.locator("#recs li").nth(9).waitFor();
    await page.locator("#recs:not([aria-busy])").waitFor();
    const titles = await page.locator("#recs li .title").allTextContents();
    assert.deepEqual(errors, []);
    await context.close();
    return titles;
  };
  const swiss = await firstList("de-CH");
  assert.ok(swiss.includes("Star Wars (1977)"), `offered in Switzerland: ${swiss.join(" | ")}`);
  assert.ok(!swiss.includes("Fargo (1996)"), "not available before next year");
  assert.ok(!swiss.includes("Contact (1997)"), "trusted 0.3 < 0.6");
  const american = await firstList("en-US");
  assert.ok(!american.includes("Star Wars (1977)"), `only in Switzerland: ${american.join(" | ")}`);
  assert.ok(!american.includes("Fargo (1996)") && !american.includes("Contact (1997)"));
  const nextYear = await firstList("de-CH", 400 * DAY);
  assert.ok(nextYear.includes("Fargo (1996)"), `available once the browser's clock passes its date: ${nextYear.join(" | ")}`);
  assert.ok(nextYear.includes("Star Wars (1977)") && !nextYear.includes("Contact (1997)"));
});

// The person's stored generations as they are in IndexedDB (byte arrays, or null).
const storedBytes = (page) => page.evaluate(async () => {
  const db = await new Promise((ok, fail) => { const r = indexedDB.open("hearth"); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  const get = (k) => new Promise((ok, fail) => { const r = db.transaction("vault").objectStore("vault").get(k); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  const [current, previous] = [await get("current"), await get("previous")];
  db.close();
  return { current: current ? Array.from(new Uint8Array(current)) : null, previous: previous ? Array.from(new Uint8Array(previous)) : null };
});

// A page opened from the previous generation because the current one is damaged on disk:
// returns the page, the good generation's bytes and the page's errors.
async function openedFromPrevious(context) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(server.url);
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  await rateFilm(page, "Casablanca (1942)", 5);
  await page.locator('html[data-saves="2"]').waitFor({ state: "attached" });
  const good = (await storedBytes(page)).current;
  assert.ok(good);
  // The current generation damaged on disk, the previous one good.
  await page.evaluate(async (bytes) => {
    const damaged = new Uint8Array(bytes);
    damaged[damaged.length - 1] ^= 1;
    const db = await new Promise((ok) => { const r = indexedDB.open("hearth"); r.onsuccess = () => ok(r.result); });
    const tx = db.transaction("vault", "readwrite");
    tx.objectStore("vault").put(damaged.buffer, "current");
    tx.objectStore("vault").put(new Uint8Array(bytes).buffer, "previous");
    await new Promise((ok) => { tx.oncomplete = ok; });
    db.close();
  }, good);
  await page.reload();
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  assert.deepEqual(await page.locator("#history li .title").allTextContents(), ["Casablanca (1942)"], "opened from the previous generation");
  return { page, good, errors };
}

async function reopen(page) {
  await page.reload();
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  return (await page.locator("#history li .title").allTextContents()).sort();
}

test("the current generation is damaged: the page opens from the previous one and a save never moves the damage over it", async () => {
  const context = await browser.newContext();
  const { page, good, errors } = await openedFromPrevious(context);
  // The next save writes its generation but fails before it may drop the previous one.
  await page.evaluate(() => { IDBObjectStore.prototype.delete = function () { throw new DOMException("simulated failure", "UnknownError"); }; });
  await rateFilm(page, "Fargo (1996)", 4);
  await page.locator('html[data-unsaved="true"]').waitFor({ state: "attached" });
  const after = await storedBytes(page);
  assert.deepEqual(after.previous, good, "the good generation the page opened from is kept, not the damaged one");
  assert.notDeepEqual(after.current, good);
  // Both generations open: the reload reads the new one.
  assert.deepEqual(await reopen(page), ["Casablanca (1942)", "Fargo (1996)"]);
  assert.deepEqual(errors, []);
  await context.close();
});

test("the current generation is damaged and the next save does not read back: the good previous one is still there to open", async () => {
  const context = await browser.newContext();
  const { page, good, errors } = await openedFromPrevious(context);
  // The storage writes the new current generation wrongly (a flipped byte), so its read-back
  // fails. Had the save moved the damaged generation into "previous", nothing good would be left.
  await page.evaluate(() => {
    const put = IDBObjectStore.prototype.put;
    IDBObjectStore.prototype.put = function (value, key) {
      if (key === "current") {
        const b = new Uint8Array(value.slice(0));
        b[b.length >> 1] ^= 0xff;
        value = b.buffer;
      }
      return put.call(this, value, key);
    };
  });
  await rateFilm(page, "Fargo (1996)", 4);
  await page.locator('html[data-unsaved="true"]').waitFor({ state: "attached" });
  assert.match(await page.textContent("#notice span"), /could not write|kept in this tab/);
  const after = await storedBytes(page);
  assert.deepEqual(after.previous, good, "the generation the page opened from is kept as the previous one");
  assert.notDeepEqual(after.current, good);
  // The reload falls back to it: the last saved history opens, with nothing invented.
  assert.deepEqual(await reopen(page), ["Casablanca (1942)"]);
  assert.deepEqual(errors, []);
  await context.close();
});

// Chromium's own quota enforcement, with an origin's quota set through the DevTools protocol
// (Storage.overrideQuotaForOrigin). Chromium lets a site keep writing for up to 30 s on free space
// it looked up before (BucketContext::kBucketSpaceCacheTimeLimit), so a quota lowered under an
// open history bites only after that.
const BUCKET_SPACE_CACHE_MS = 31_000;

test("storage full from the start: the page still opens, says so, and saves once there is room", async () => {
  // A fresh origin (localhost, not 127.0.0.1) whose quota is gone before the page first loads.
  const url = server.url.replace("127.0.0.1", "localhost");
  const origin = new URL(url).origin;
  const context = await browser.newContext({ serviceWorkers: "block" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const cdp = await context.newCDPSession(page);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: 1 });
  await page.goto(`${url}#bench-notune`);
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  await page.locator('html[data-unsaved="true"]').waitFor({ state: "attached" });
  assert.match(await page.textContent("#notice span"), /storage for this site is full, so your latest changes are kept in this tab only/);
  await rateFilm(page, "Casablanca (1942)", 5);
  assert.equal(await page.evaluate(() => document.documentElement.dataset.saves), undefined, "nothing could be saved");
  await cdp.send("Storage.overrideQuotaForOrigin", { origin });
  await page.locator("#notice button", { hasText: "Save again" }).click();
  await page.locator('html[data-saves="1"][data-unsaved="false"]').waitFor({ state: "attached" });
  await page.reload();
  await page.locator("#gate:not([hidden])").waitFor();
  assert.equal(await page.textContent("#gate-title"), "Welcome back");
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  assert.deepEqual(await page.locator("#history li .title").allTextContents(), ["Casablanca (1942)"]);
  assert.deepEqual(errors, []);
  await context.close();
});

test("storage fills under an open history, then site data is cleared: clear messages, nothing lost", async () => {
  const context = await browser.newContext({ serviceWorkers: "block" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.type()); d.dismiss().catch(() => {}); });
  const cdp = await context.newCDPSession(page);
  const origin = new URL(server.url).origin;
  await page.goto(`${server.url}#bench-notune`); // no fine-tuning: its saves would count too
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  await rateFilm(page, "Casablanca (1942)", 5);
  await page.locator('html[data-saves="2"][data-unsaved="false"]').waitFor({ state: "attached" });
  const saved = await storedBytes(page);
  assert.ok(saved.current.length > 200 && saved.previous === null, `${saved.current.length} bytes, previous ${saved.previous}`);

  // No room for one more byte: the next saves fail, the tab keeps the changes, storage keeps its bytes.
  const { usage } = await cdp.send("Storage.getUsageAndQuota", { origin });
  await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: usage });
  await page.waitForTimeout(BUCKET_SPACE_CACHE_MS);
  await rateFilm(page, "Vertigo (1958)", 4);
  await page.locator('html[data-unsaved="true"]').waitFor({ state: "attached" });
  await page.locator("#notice:not([hidden])").waitFor();
  assert.match(await page.textContent("#notice span"), /storage for this site is full, so your latest changes are kept in this tab only\. Your saved history is untouched/);
  await rateFilm(page, "Rear Window (1954)", 5);
  await page.waitForFunction(() => document.querySelector("#notice button")?.textContent === "Save again");
  assert.deepEqual(await storedBytes(page), saved, "the stored generations are untouched");
  assert.equal(await page.evaluate(() => document.documentElement.dataset.saves), "2");
  assert.deepEqual(await page.locator("#history li .title").allTextContents(), ["Rear Window (1954)", "Vertigo (1958)", "Casablanca (1942)"]);
  // Leaving now would lose the changes: the browser asks first.
  await page.close({ runBeforeUnload: true });
  await expectSoon(() => dialogs.includes("beforeunload"), "a beforeunload prompt");
  assert.equal(page.isClosed(), false);

  // Room again: "Save again" stores everything.
  await cdp.send("Storage.overrideQuotaForOrigin", { origin });
  await page.locator("#notice button", { hasText: "Save again" }).click();
  await page.locator('html[data-unsaved="false"]').waitFor({ state: "attached" });
  assert.match(await page.textContent("#notice"), /Saved: your history on this device is up to date/);
  assert.notDeepEqual((await storedBytes(page)).current, saved.current);

  // The site's data cleared under the open page (Chromium closes its IndexedDB connections): the
  // page reopens one and its next save stores the whole history again.
  await cdp.send("Storage.clearDataForOrigin", { origin, storageTypes: "indexeddb" });
  assert.deepEqual(await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name)), []);
  await rateFilm(page, "Notorious (1946)", 4);
  await page.locator('html[data-saves="4"][data-unsaved="false"]').waitFor({ state: "attached" });

  const device = await page.evaluate(async () => {
    const db = await new Promise((ok) => { const r = indexedDB.open("hearth"); r.onsuccess = () => ok(r.result); });
    const v = await new Promise((ok) => { const r = db.transaction("vault").objectStore("vault").get("device"); r.onsuccess = () => ok(r.result); });
    db.close();
    return v;
  });
  assert.match(device, /^browser-[0-9a-f]+$/, "the device name is stored again too");

  // Reload: all four films, and no prompt (nothing unsaved).
  dialogs.length = 0;
  await page.reload();
  await page.locator("#gate:not([hidden])").waitFor();
  assert.equal(await page.textContent("#gate-title"), "Welcome back");
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  assert.deepEqual(await page.locator("#history li .title").allTextContents(),
    ["Notorious (1946)", "Rear Window (1954)", "Vertigo (1958)", "Casablanca (1942)"]);
  assert.deepEqual(dialogs, []);
  assert.deepEqual(errors, []);
  await context.close();
});

// A real full disk: Chromium's profile on a small tmpfs that the test fills mid-session. Mounting
// needs root or passwordless sudo (as the README's set-up does); without either the test fails.
test("the disk fills under an open history: the save that fails is reported, nothing is lost", async () => {
  const { execFileSync } = await import("node:child_process");
  const { mkdtempSync, rmSync, readFileSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const root = process.getuid?.() === 0;
  const sh = (cmd, args) => execFileSync(root ? cmd : "sudo", root ? args : ["-n", cmd, ...args], { stdio: "pipe" });
  const dir = mkdtempSync(`${tmpdir()}/hearth-disk-`);
  try {
    sh("mount", ["-t", "tmpfs", "-o", "size=96m", "tmpfs", dir]);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    assert.fail(`mounting a 96 MB tmpfs for Chromium's profile needs root or passwordless sudo: ${e.stderr || e.message}`);
  }
  let context;
  try {
    context = await chromium.launchPersistentContext(`${dir}/profile`, { executablePath: CHROMIUM, args: ARGS, headless: true, serviceWorkers: "block" });
    const page = context.pages()[0] || await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${server.url}#bench-notune`);
    await page.locator("#gate:not([hidden])").waitFor();
    await unlock(page, PASS);
    await page.locator("#app:not([hidden])").waitFor();
    await rateFilm(page, "Casablanca (1942)", 5);
    await page.locator('html[data-saves="2"][data-unsaved="false"]').waitFor({ state: "attached" });

    // Fill the disk, then rate until a save fails (the database's free pages absorb the first
    // saves; the history grows with each film, so one soon needs a new page).
    const filler = `${dir}/filler`;
    try { execFileSync("dd", ["if=/dev/zero", `of=${filler}`, "bs=1M", "count=200"], { stdio: "pipe" }); } catch { /* "No space left": full */ }
    const catalog = JSON.parse(readFileSync(new URL("../../models/ml100k/catalog.json", import.meta.url)));
    const films = [...new Set(catalog.items.slice(0, 40).map((i) => i.title))];
    const rated = ["Casablanca (1942)"];
    let failedAt = -1;
    let lastSaved = null;
    for (const [i, film] of films.entries()) {
      const before = await storedBytes(page);
      const saves = await page.evaluate(() => document.documentElement.dataset.saves);
      await rateFilm(page, film, 4);
      rated.unshift(film);
      await page.waitForFunction((n) => document.documentElement.dataset.unsaved === "true" || document.documentElement.dataset.saves !== n, saves);
      if (await page.evaluate(() => document.documentElement.dataset.unsaved === "true")) {
        failedAt = i;
        lastSaved = before;
        break;
      }
    }
    assert.ok(failedAt >= 0, "a save failed on the full disk");
    assert.match(await page.textContent("#notice span"), /could not write to its storage \(the disk may be full\), so your latest changes are kept in this tab only/);
    assert.deepEqual(await page.locator("#history li .title").allTextContents(), rated);

    // Space again: what is stored is the last generation saved before the failure; "Save again"
    // then stores everything, and a reload shows it.
    rmSync(filler);
    assert.deepEqual(await storedBytes(page), lastSaved, "the failed save left the stored generations as they were");
    await page.locator("#notice button", { hasText: "Save again" }).click();
    await page.locator('html[data-unsaved="false"]').waitFor({ state: "attached" });
    await page.reload();
    await page.locator("#gate:not([hidden])").waitFor();
    await unlock(page, PASS);
    await page.locator("#app:not([hidden])").waitFor();
    assert.deepEqual(await page.locator("#history li .title").allTextContents(), rated);
    assert.deepEqual(errors, []);
    console.log(`# full disk: save ${failedAt + 1} after filling failed; after freeing space all ${rated.length} films were saved`);
  } finally {
    await context?.close();
    try { sh("umount", [dir]); } finally { rmSync(dir, { recursive: true, force: true }); }
  }
});

async function expectSoon(check, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Rates the five films in a fresh page of `b` (the #bench hook exposes recommend()) and waits until
// the page has settled on its scorer.
async function ratedPage(b) {
  const context = await b.newContext();
  const page = await context.newPage();
  await page.goto(`${server.url}#bench-notune`);
  await page.locator("#gate:not([hidden])").waitFor();
  await unlock(page, PASS);
  await page.locator("#app:not([hidden])").waitFor();
  for (const f of FILMS) await rateFilm(page, f, 5);
  await page.locator("html[data-gpu]").waitFor({ state: "attached" });
  return { context, page, scorer: await page.evaluate(() => document.documentElement.dataset.gpu) };
}
const top = (page, opts) => page.evaluate(async (o) => (await window.hearthBench.recommend(o)).map((r) => `${r.id} ${r.matchPercent}% ${r.reason}`), opts);
// Scored on the WebGPU device whichever scorer the page kept.
const topGpu = (page, opts) => page.evaluate(async (o) => (await window.hearthBench.recommendGpu(o)).map((r) => `${r.id} ${r.matchPercent}% ${r.reason}`), opts);

// Lets the page fine-tune the person's embedding in its training worker and checks that it
// really trained on `backend`: the loss fell and the vector recommendations use moved.
async function tunedOn(page, backend) {
  const before = await page.evaluate(() => window.hearthBench.capabilities().tuned);
  assert.equal(before, null);
  await page.evaluate(() => window.hearthBench.tune());
  await page.locator("html[data-tuned]").waitFor({ state: "attached", timeout: 120_000 });
  const [t] = await page.evaluate(() => window.hearthBench.tunings());
  assert.equal(t.backend, backend);
  assert.equal(t.positives, FILMS.length);
  assert.equal(t.losses.length, 40);
  assert.ok(t.losses.at(-1) < 0.8 * t.losses[0], `the loss fell: ${t.losses.join(", ")}`);
  const tuned = await page.evaluate(() => window.hearthBench.capabilities().tuned);
  assert.ok(tuned.norm > 0.01, `the embedding changed by ${tuned.norm}`);
  assert.match(await page.textContent("#status"), /tuned to you on this device \(5 films\)/);
  return t;
}

test("WebGPU (SwiftShader) and the CPU (WebGPU disabled) give the same top-10; the worker trains on both", async () => {
  const gpu = await ratedPage(browser);
  const caps = await gpu.page.evaluate(() => window.hearthBench.capabilities());
  assert.ok(caps.gpu, "SwiftShader's WebGPU adapter holds the catalog");
  assert.equal(caps.gpu.kernel, "packed", "SwiftShader has packed_4x8_integer_dot_product");
  // The page timed both scorers and kept the faster (the lists are the same), and says so.
  const times = await gpu.page.evaluate(() => window.hearthBench.scorerTimes());
  console.log(`# scorer timing in Chromium: WebGPU (SwiftShader) ${times.gpu.toFixed(2)} ms, CPU ${times.cpu.toFixed(2)} ms per list -> ${gpu.scorer}`);
  assert.equal(gpu.scorer, times.gpu < times.cpu ? "webgpu" : "wasm-simd128", "the faster scorer is kept");
  assert.match(await gpu.page.textContent("#status"), gpu.scorer === "webgpu" ? /on the GPU \(WebGPU, .*per list, the CPU took/ : /on the CPU \(wasm SIMD: .* per list, faster than WebGPU on .* at /);

  const cpuBrowser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS.filter((a) => a !== "--enable-unsafe-webgpu").concat("--disable-webgpu"), headless: true });
  try {
    const cpu = await ratedPage(cpuBrowser);
    assert.equal(cpu.scorer, "wasm-simd128");
    assert.equal(await cpu.page.evaluate(async () => Boolean(await navigator.gpu?.requestAdapter())), false, "no WebGPU adapter");
    assert.match(await cpu.page.textContent("#status"), /on the CPU \(wasm SIMD\)/);
    // Exploration is seeded per session, so the pages are compared without it; within one page
    // (one seed) the GPU and CPU lists are compared with it too.
    for (const opts of [{ k: 10, explore: 0 }, { k: 10, explore: 0, diversity: 0 }, { k: 40, explore: 0 }]) {
      const onGpu = await topGpu(gpu.page, opts);
      assert.equal(onGpu.length, opts.k);
      assert.deepEqual(await top(cpu.page, opts), onGpu, JSON.stringify(opts));
    }
    const withExplore = await topGpu(gpu.page, { k: 10 });
    assert.deepEqual(await top(gpu.page, { k: 10 }), withExplore, "the kept scorer gives the same list");
    assert.deepEqual(await gpu.page.evaluate(() => window.hearthBench.recommendCpu({ k: 10 }).map((r) => `${r.id} ${r.matchPercent}% ${r.reason}`)), withExplore);

    // The training worker (second wasm module) fine-tunes on WebGPU and on the CPU.
    const [onGpu, onCpu] = await Promise.all([tunedOn(gpu.page, "webgpu"), tunedOn(cpu.page, "cpu")]);
    console.log(`# fine-tuning, 40 steps: WebGPU ${onGpu.ms} ms, loss ${onGpu.losses[0].toFixed(3)} -> ${onGpu.losses.at(-1).toFixed(3)}; CPU ${onCpu.ms} ms, loss ${onCpu.losses[0].toFixed(3)} -> ${onCpu.losses.at(-1).toFixed(3)}`);
    // And the tuned vector scores the same on the GPU and the CPU.
    const tunedTop = await topGpu(gpu.page, { k: 10 });
    assert.notDeepEqual(tunedTop, withExplore, "recommendations moved with the tuned embedding");
    assert.deepEqual(await gpu.page.evaluate(() => window.hearthBench.recommendCpu({ k: 10 }).map((r) => `${r.id} ${r.matchPercent}% ${r.reason}`)), tunedTop);
    await cpu.context.close();
  } finally {
    await cpuBrowser.close();
  }
  await gpu.context.close();
});
