// Offline support: the app shell, the package and the shared model are cached when the service
// worker installs; every request goes to the network first (so updates arrive) and falls back to
// the cache when there is no network. Nothing personal passes through here: the history lives in
// IndexedDB, sealed, and is never fetched or sent.
//
// Every request the page or its worker makes while this worker controls them passes through here
// (other origins and methods too: they go to the network as they are), so this is where they are
// seen leaving: each network request is broadcast to the pages' "What left this device" panel.
importScripts("/egress.js");

const CACHE = "hearth-v3";
const FILES = ["/", "/app.js", "/storage.js", "/egress.js", "/style.css", "/icon.svg", "/pkg/hearth_web.js", "/pkg/hearth_web_bg.wasm",
  "/model/manifest.json", "/model/global.bin", "/model/catalog.json", "/model/items.shard"];
// The training worker's files are cached when first fetched (not at install: most visits never
// need them), so fine-tuning works offline after it has run once online.
const LATER = ["/train-worker.js", "/pkg/hearth_train.js", "/pkg/hearth_train_bg.wasm"];

// The last requests, for a page that asks once it runs (the one that opened it came through here).
const channel = new BroadcastChannel("hearth-egress");
const recent = [];
function report(row) {
  recent.push(row);
  if (recent.length > 200) recent.shift();
  channel.postMessage(row);
}
self.hearthEgress.watch("service worker", report);
self.addEventListener("message", (event) => {
  const since = event.data?.egressSince;
  if (typeof since === "number") event.source?.postMessage({ egress: recent.filter((r) => r.at >= since) });
});

self.addEventListener("install", (event) => {
  // The browser fetched this script and the one it imports just before installing it, out of
  // sight of every script (so their sizes are not known here).
  for (const script of [self.location.href, "/egress.js"]) report(self.hearthEgress.row("browser, for the service worker", "GET", script, 0, null));
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)))).then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== location.origin) {
    event.respondWith(fetch(event.request));
    return;
  }
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok && (FILES.includes(url.pathname) || LATER.includes(url.pathname))) {
          const copy = response.clone();
          event.waitUntil(caches.open(CACHE).then((c) => c.put(event.request, copy)));
        }
        return response;
      })
      .catch(() => caches.match(event.request, { ignoreSearch: true }).then((hit) => hit || Response.error())),
  );
});
