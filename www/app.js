// The hearth demo page: everything runs here, in the browser. The history is sealed by the wasm
// module (AES-256-GCM under the person's passphrase) before it reaches IndexedDB; recommendations
// are computed from it on this device. The only requests are for the app and the shared model.
import init, { Hearth, HearthModel } from "/pkg/hearth_web.js";
import * as store from "./storage.js";
import "./egress.js";

const $ = (id) => document.getElementById(id);
const el = (tag, { dataset, ...props } = {}, ...kids) => {
  const n = Object.assign(document.createElement(tag), props);
  Object.assign(n.dataset, dataset || {});
  for (const k of kids) n.append(k);
  return n;
};

// --- What left this device: every request that reached the network (egress.js) ----------------
// This page's own requests, the training worker's (it posts them) and the service worker's (it
// broadcasts them, and keeps the last few for a page that opens after it made them: the request
// for this very page, when it answered it). Since this page opened; sizes are body bytes.
const egress = [];
const egressIds = new Set();
function noteRequest(row) {
  if (egressIds.has(row.id) || row.at < performance.timeOrigin - 1) return;
  egressIds.add(row.id);
  egress.push(row);
  egress.sort((a, b) => a.at - b.at);
  renderEgress();
}
let egressPainting = false;
function renderEgress() {
  const body = $("egress");
  if (!body || egressPainting) return;
  egressPainting = true;
  requestAnimationFrame(() => {
    egressPainting = false;
    body.replaceChildren(...egress.map((r) => el("tr", { dataset: { method: r.method, url: r.url, by: r.by, sent: r.sent ?? "", received: r.received ?? "" } },
      el("td", { textContent: `${r.method} ${r.url}`, title: `made by ${r.by}` }), el("td", { textContent: r.by }),
      el("td", { textContent: size(r.sent) }), el("td", { textContent: size(r.received) }))));
    $("egress-count").textContent = String(egress.length);
  });
}
const size = (n) => (n == null ? "not shown to the page" : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(0)} KiB` : `${n} B`);
self.hearthEgress.watch("page", noteRequest);
new BroadcastChannel("hearth-egress").onmessage = ({ data }) => noteRequest(data);
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.addEventListener("message", ({ data }) => (data?.egress || []).forEach(noteRequest));
  navigator.serviceWorker.controller?.postMessage({ egressSince: performance.timeOrigin });
}

// --- Messages ---------------------------------------------------------------------------------
const MESSAGES = {
  "wrong-key": "That passphrase does not open this history. Nothing was changed; try again.",
  damaged: "The stored history is damaged and could not be opened. It has been left untouched.",
  shard: "The film catalog that was downloaded is damaged, so recommendations cannot start. Your history is untouched; reload to try again.",
  "model-version": "The film catalog belongs to a different model version than the model itself. Your history is untouched; reload to fetch a matching pair.",
  model: "The recommendation model could not be loaded. Your history is untouched; reload to try again.",
  quota: "This browser's storage for this site is full, so your latest changes are kept in this tab only. Your saved history is untouched. Free some space (or allow this site more), then save again.",
  storage: "This browser could not write to its storage (the disk may be full), so your latest changes are kept in this tab only. Your saved history is untouched. Free some space, then save again.",
  "bad-input": "That did not work: ",
};
const explain = (e) => (e && MESSAGES[e.code] ? MESSAGES[e.code] + (e.code === "bad-input" ? e.message : "") : `Something went wrong: ${e?.message || e}`);
// A message above the page, with optional buttons ([label, onclick] pairs).
function notice(text, actions = []) {
  const n = $("notice");
  n.replaceChildren(el("span", { textContent: text }), ...actions.map(([label, onclick]) => el("button", { type: "button", className: "notice-action", textContent: label, onclick })));
  n.hidden = !text;
}

// --- Start -------------------------------------------------------------------------------------
// Timing marks (bench/web.mjs reads them): `name` once the next frame has been painted.
const markPainted = (name) => requestAnimationFrame(() => setTimeout(() => performance.mark(name), 0));

let hearth = null;
let thisDevice = "";
const seed = crypto.getRandomValues(new Uint32Array(1))[0];

async function fetchBytes(path) {
  const r = await fetch(path);
  if (!r.ok) throw Object.assign(new Error(`${path}: HTTP ${r.status}`), { code: "model" });
  return new Uint8Array(await r.arrayBuffer());
}

async function boot() {
  const wasm = init();
  const files = Promise.all(["manifest.json", "global.bin", "catalog.json", "items.shard"].map((n) => fetchBytes(`/model/${n}`)));
  const [stored, device] = await Promise.all([store.load(), store.deviceName()]);
  thisDevice = device;
  await wasm;
  performance.mark("hearth:wasm");
  const model = await files.catch((e) => { notice(explain(e)); throw e; });
  $("status").textContent = "Ready";
  showGate(stored, device, model);
  performance.mark("hearth:gate");
  markPainted("hearth:gate-painted");
}

function showGate(stored, device, model) {
  const returning = Boolean(stored.current || stored.previous);
  $("gate-title").textContent = returning ? "Welcome back" : "Create your private history";
  $("gate-text").textContent = returning
    ? "Enter your passphrase to unlock your history on this device."
    : "Choose a passphrase (8 characters or more). It encrypts your history on this device; nobody else has it, so keep it safe.";
  $("gate-button").textContent = returning ? "Unlock" : "Start";
  $("passphrase").autocomplete = returning ? "current-password" : "new-password";
  $("gate").hidden = false;
  $("passphrase").focus();
  $("gate-form").onsubmit = async (ev) => {
    ev.preventDefault();
    performance.mark("hearth:unlock", { startTime: ev.timeStamp });
    const pass = $("passphrase").value;
    $("gate-error").hidden = true;
    $("gate-button").disabled = true;
    await new Promise((r) => setTimeout(r, 0)); // let the button repaint before key derivation
    try {
      hearth = await openWith(model, stored, pass, device);
      $("passphrase").value = "";
      $("gate").hidden = true;
      $("app").hidden = false;
      showStatus();
      // Tests and the benchmark (bench/web.mjs) call recommend() directly; only with #bench.
      if (location.hash.startsWith("#bench")) {
        window.hearthBench = { recommend: (o) => hearth.recommend(o), recommendGpu: (o) => hearth.recommendGpu(o), scorerTimes: () => scorerTimes, enableGpu: () => hearth.enableGpu(), tunings: () => tunings, tune: () => { autoTune = true; scheduleTuning(); }, recommendCpu: (o) => hearth.recommendCpu(o), capabilities: () => hearth.capabilities() };
      }
      modelShard = model[3];
      await render();
      performance.mark("hearth:first-recommendations");
      markPainted("hearth:first-recommendations-painted");
      $("search").focus();
      if (!returning) {
        changes++; // a new history (its device and document id) is not stored yet
        await persist(); // after the first recommendations are on screen
      }
      // The catalog moves to the GPU (WebGPU) after the first recommendations are on screen; until
      // then, and where there is no WebGPU, the CPU scores it (same results either way).
      if (navigator.gpu) {
        hearth.enableGpu().then(gpuLabel).then(chooseScorer).then(showStatus, () => {}).finally(() => { document.documentElement.dataset.gpu = hearth.capabilities().scorer; });
      } else {
        document.documentElement.dataset.gpu = hearth.capabilities().scorer;
      }
      // Offline use (sw.js caches the app and the model): registered once the first
      // recommendations are on screen, so its downloads never compete with them.
      if ("serviceWorker" in navigator) setTimeout(() => navigator.serviceWorker.register("/sw.js").catch(() => {}), 0);
    } catch (e) {
      $("gate-error").textContent = explain(e);
      $("gate-error").hidden = false;
    } finally {
      $("gate-button").disabled = false;
    }
  };
}

// Browsers often leave the adapter's description empty; its vendor and architecture name it.
let adapterName = "";
async function gpuLabel(info) {
  const a = info.adapter ? null : (await navigator.gpu.requestAdapter())?.info;
  adapterName = info.adapter || [a?.vendor, a?.architecture].filter(Boolean).join(" ") || "unnamed adapter";
}

// Catalog rights (territories, availability windows, usage) are checked on this device against
// the browser's locale and clock; nothing about them is sent anywhere.
function territory() {
  try {
    const l = new Intl.Locale(navigator.language || "en");
    return (l.region || l.maximize().region || "").toUpperCase() || undefined;
  } catch {
    return undefined;
  }
}
const availability = () => ({ territory: territory(), now: Date.now(), usage: "stream" });

// The two scorers give the same lists, so the page keeps the faster: once WebGPU is up it times a
// few lists on each, interleaved after one warm-up each, and keeps the lower median. (A software
// adapter such as SwiftShader is many times slower than wasm SIMD on this catalog.)
let scorerTimes = null; // { gpu, cpu } median ms per list, for the status line and the tests
async function chooseScorer() {
  const opts = { k: 10 };
  await hearth.recommendGpu(opts);
  hearth.recommendCpu(opts);
  const gpu = [], cpu = [];
  for (let i = 0; i < 5; i++) {
    let t = performance.now();
    await hearth.recommendGpu(opts);
    gpu.push(performance.now() - t);
    t = performance.now();
    hearth.recommendCpu(opts);
    cpu.push(performance.now() - t);
  }
  const median = (a) => a.sort((x, y) => x - y)[a.length >> 1];
  scorerTimes = { gpu: median(gpu), cpu: median(cpu) };
  hearth.useScorer(scorerTimes.gpu < scorerTimes.cpu ? "webgpu" : "cpu");
}
const ms = (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`;

function showStatus() {
  const c = hearth.capabilities();
  const t = scorerTimes;
  const on = c.scorer === "webgpu" ? `on the GPU (WebGPU, ${adapterName}${t ? `: ${ms(t.gpu)} per list, the CPU took ${ms(t.cpu)}` : ""})`
    : c.gpu && t ? `on the CPU (wasm SIMD: ${ms(t.cpu)} per list, faster than WebGPU on ${adapterName} at ${ms(t.gpu)})`
    : "on the CPU (wasm SIMD)";
  const tuned = c.tuned ? ` · tuned to you on this device (${c.tuned.positives} films)`
    : c.droppedTuning != null ? ` · your on-device tuning was for model v${c.droppedTuning}, so it was set aside and is being redone for v${c.modelVersion}` : "";
  $("status").textContent = `Model v${c.modelVersion} · ${c.items.toLocaleString()} films · scored on this device, ${on}${tuned}`;
}

// PBKDF2-HMAC-SHA256 runs in WebCrypto (native code off the main thread, ~10x faster than in
// wasm); the wasm module gets the derived key with its parameters and checks it like any other
// key. Resolves once the derivation has started, to `{ key }`, a promise of the key (wrapped: an
// async function returning the promise itself would wait for it).
async function startKeyDerivation(pass, params) {
  const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(pass), "PBKDF2", false, ["deriveBits"]);
  const salt = new Uint8Array(params.salt);
  return { key: crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations: params.iterations }, base, 256).then((b) => new Uint8Array(b)) };
}

// The model, loaded once (it does not depend on the passphrase).
let loadedModel = null;

async function openWith(model, stored, pass, device) {
  const open = async (sealed) => {
    const params = sealed ? Hearth.kdfParams(sealed) : Hearth.newKdfParams();
    if (!params) throw Object.assign(new Error("not a passphrase-protected history"), { code: "damaged" });
    const derivation = await startKeyDerivation(pass, params);
    // While WebCrypto derives the key, this thread verifies and loads the model.
    loadedModel ??= HearthModel.load(...model);
    performance.mark("hearth:model");
    const derived = await derivation.key;
    performance.mark("hearth:key");
    const h = Hearth.openDerivedWith(loadedModel, sealed, derived, params.iterations, new Uint8Array(params.salt), device, seed);
    performance.mark("hearth:opened");
    return h;
  };
  if (!stored.current && !stored.previous) return open(undefined);
  try {
    return await open(stored.current || stored.previous);
  } catch (e) {
    // A damaged current generation falls back to the previous one (never on a wrong passphrase).
    if (e.code === "damaged" && stored.current && stored.previous) {
      const h = await open(stored.previous);
      notice("Your latest save was damaged; the one before it was restored.");
      return h;
    }
    throw e;
  }
}

// --- Fine-tuning on this device -----------------------------------------------------------------
// When the page is idle and the positives changed, a Web Worker loads the training module (burn,
// WebGPU or CPU) and fine-tunes the person's embedding on them; the result is stored in the
// sealed history and used from then on. Nothing of it leaves the device.
let modelShard = null;
let worker = null;
let tunedFor = "";
let tuning = false;
let trainOn = "auto"; // "cpu" after WebGPU training failed once
// Tests compare scorers before any tuning: `#bench-notune` waits for hearthBench.tune().
let autoTune = !location.hash.includes("notune");
const tunings = []; // {backend, losses, ms, positives}: for the curious and the tests
function scheduleTuning() {
  if (tuning || !hearth || !autoTune) return;
  const input = hearth.trainingInput();
  if (!input || input.positives.length < 3 || input.positives.join() === tunedFor) return;
  const idle = window.requestIdleCallback || ((f) => setTimeout(f, 200));
  tuning = true;
  idle(() => tune(input).finally(() => { tuning = false; scheduleTuning(); }), { timeout: 3000 });
}
async function tune(input) {
  worker ??= new Worker("/train-worker.js", { type: "module" });
  const result = await new Promise((ok) => {
    worker.onmessage = ({ data }) => (data.egress ? noteRequest(data.egress) : ok(data));
    worker.onerror = (e) => ok({ ok: false, message: e.message });
    worker.postMessage({ shard: modelShard, start: input.start, positives: input.positives, link: input.link, backend: trainOn, steps: 40, seed });
  });
  const key = input.positives.join();
  if (!result.ok) {
    // A failed run leaves the module unusable: start a fresh worker next time, on the CPU.
    console.warn("fine-tuning failed:", result.message);
    worker.terminate();
    worker = null;
    if (trainOn === "cpu") tunedFor = key; // no retry of the same input
    trainOn = "cpu";
    return;
  }
  tunedFor = key;
  const current = hearth.trainingInput();
  if (!current || current.positives.join() !== key) return; // the history moved on: tune again
  hearth.setTuned(input.start, new Float32Array(result.vector), input.positives.length);
  changes++;
  tunings.push({ backend: result.backend, losses: result.losses, ms: result.ms, positives: input.positives.length });
  showStatus();
  await persist();
  await render();
  document.documentElement.dataset.tuned = String(tunings.length);
}

// --- Saving ------------------------------------------------------------------------------------
// Saves run one at a time (a save is three IndexedDB transactions: write, read back, drop the
// previous generation), and each seals the history as it is when it starts. `changes` counts
// edits, `savedUpTo` the edits the newest successful save holds: while they differ, the tab holds
// changes the device does not, and leaving the page asks first.
let saves = 0;
let changes = 0;
let savedUpTo = 0;
let queued = null;
let running = Promise.resolve();
let saveFailed = false;
const unsaved = () => changes > savedUpTo;
function persist() {
  queued ??= running.then(() => { queued = null; return saveNow(); });
  running = queued;
  return queued;
}
async function saveNow() {
  const upTo = changes;
  try {
    await store.save((current, previous) => hearth.savePlan(current, previous), thisDevice);
    savedUpTo = Math.max(savedUpTo, upTo);
    document.documentElement.dataset.saves = String(++saves); // for tests and the curious
    if (saveFailed && !unsaved()) {
      saveFailed = false;
      const text = "Saved: your history on this device is up to date.";
      notice(text);
      setTimeout(() => { if ($("notice").textContent === text) notice(""); }, 5000);
    }
  } catch (e) {
    saveFailed = true;
    notice(explain(e), [["Save again", () => persist()]]);
  }
  document.documentElement.dataset.unsaved = String(unsaved());
}
window.addEventListener("beforeunload", (e) => {
  if (hearth && unsaved()) {
    e.preventDefault();
    e.returnValue = ""; // older browsers
  }
});

// --- Actions -----------------------------------------------------------------------------------
async function act(fn) {
  try {
    fn();
    changes++;
    const shown = render();
    await persist();
    await shown;
  } catch (e) {
    notice(explain(e));
  }
}
const now = () => Date.now();
const hour = () => new Date().getHours();
const rate = (id, stars) => act(() => hearth.record(id, "rate", stars, now(), hour()));
const like = (id) => act(() => hearth.record(id, "like", undefined, now(), hour()));
const dislike = (id) => act(() => hearth.record(id, "dislike", undefined, now(), hour()));

function ratingButtons(id, current) {
  const box = el("div", { className: "actions" });
  for (let s = 1; s <= 5; s++) {
    box.append(el("button", { type: "button", textContent: `${s}★`, className: current === s ? "on" : "", title: `Rate ${s} of 5`, onclick: () => rate(id, s) }));
  }
  box.append(el("button", { type: "button", textContent: "Like", title: "Like", onclick: () => like(id) }));
  box.append(el("button", { type: "button", textContent: "Not for me", title: "Not for me", onclick: () => dislike(id) }));
  return box;
}

// --- Rendering ---------------------------------------------------------------------------------
let query = "";
let renders = 0;
async function render() {
  const mine = ++renders;
  const history = hearth.history();
  const rated = new Map(history.map((h) => [h.id, h.rating]));
  // Search results.
  const results = query ? hearth.search(query, 8) : [];
  $("results").replaceChildren(...results.map((f) =>
    el("li", { dataset: { id: f.id } }, el("span", { className: "title", textContent: f.title }), ratingButtons(f.id, rated.get(f.id)))));
  $("results-empty").hidden = results.length > 0;
  // History.
  $("history").replaceChildren(...history.map((h) => {
    const what = h.rating != null ? `rated ${h.rating}★` : Object.keys(h.counts).join(", ");
    return el("li", { dataset: { id: h.id } },
      el("div", {}, el("div", { className: "title", textContent: h.title }), el("div", { className: "what", textContent: what })),
      el("button", { type: "button", className: "link", textContent: "Remove", title: `Forget ${h.title} everywhere`, onclick: () => act(() => hearth.forget(h.id, now())) }));
  }));
  $("history-empty").hidden = history.length > 0;
  // Recommendations (on the GPU they arrive asynchronously; a newer render wins, and the list is
  // aria-busy until the newest one is on screen).
  $("recs").setAttribute("aria-busy", "true");
  let recs;
  try {
    recs = await hearth.recommend({ k: 10, diversity: Number($("diversity").value), ...availability() });
  } catch (e) {
    notice(explain(e));
    recs = null;
  }
  if (mine !== renders) return;
  $("recs").removeAttribute("aria-busy");
  if (!recs) return;
  $("recs").replaceChildren(...recs.map((r) =>
    el("li", { className: r.source === "explore" ? "explore" : "", dataset: { id: r.id } },
      el("span", { className: "title", textContent: r.title }),
      el("span", { className: "match", textContent: `${r.matchPercent}% match` }),
      el("span", { className: "reason", textContent: r.reason }),
      Object.assign(ratingButtons(r.id), { className: "actions rec-actions" }))));
  scheduleTuning();
}

let debounce = 0;
$("search").addEventListener("input", (e) => {
  clearTimeout(debounce);
  debounce = setTimeout(() => { query = e.target.value; if (hearth) render(); }, 150);
});
$("diversity").addEventListener("input", () => hearth && render());
$("wipe").addEventListener("click", () => {
  if (confirm("Delete your whole history on this device? This cannot be undone.")) act(() => hearth.wipe(now()));
});

boot().catch((e) => {
  $("status").textContent = navigator.onLine ? "Could not start" : "Offline, and this device has not stored hearth yet";
  notice(explain(e));
});
