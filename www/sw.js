// Offline support: the app shell, the package and the shared model are cached when the service
// worker installs; every request goes to the network first (so updates arrive) and falls back to
// the cache when there is no network. Nothing personal passes through here: the history lives in
// IndexedDB, sealed, and is never fetched or sent.
const CACHE = "hearth-v2";
const FILES = ["/", "/app.js", "/storage.js", "/style.css", "/icon.svg", "/pkg/hearth_web.js", "/pkg/hearth_web_bg.wasm",
  "/model/manifest.json", "/model/global.bin", "/model/catalog.json", "/model/items.shard"];
// The training worker's files are cached when first fetched (not at install: most visits never
// need them), so fine-tuning works offline after it has run once online.
const LATER = ["/train-worker.js", "/pkg/hearth_train.js", "/pkg/hearth_train_bg.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)))).then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== location.origin) return;
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
