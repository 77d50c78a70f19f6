// What left this device: every request that reaches the network, from whichever part of hearth
// made it (the page, the training worker, the service worker), with its method, URL and the body
// bytes sent and received. Each part runs this file in its own global (the page and the worker
// import it as a module; the service worker loads it with importScripts, so it is written as a
// plain script that defines `self.hearthEgress`) and hands its rows to the page's panel.
//
// The rows come from the browser's own resource timing (which sees script, style, image and
// preload loads as well as fetch()), plus a fetch() wrapper for what timing does not give: the
// method and the size of a request body. A request that went through the service worker is left
// to the service worker, which reports the network request it made for it (or none: an answer
// from its offline cache never left the device). Sizes are body bytes, headers not counted.
(() => {
  const here = self.location.origin;
  // fetch() calls by URL: { method, sent (a promise of bytes), at (performance.now() at the call) }.
  // Timing entries do not say which call they are; an entry starts when its call is made, so it is
  // matched to the call closest before its start. (A fetch() answered by a preload makes no entry:
  // its note stays, is never the closest for a later call, and is dropped with the oldest.)
  const pending = new Map();
  const KEEP = 256;
  const count = (body) => new Response(body).arrayBuffer().then((b) => b.byteLength, () => 0);
  const bodySize = async (input, init) => {
    if (init && init.body != null) return count(init.body);
    if (input instanceof Request && input.body) return count(input.clone().body);
    return 0;
  };

  function wrapFetch() {
    const original = self.fetch.bind(self);
    self.fetch = (input, init) => {
      const request = input instanceof Request ? input : null;
      const url = new URL(request ? request.url : String(input), self.location.href).href;
      const method = ((init && init.method) || (request && request.method) || "GET").toUpperCase();
      let sent;
      if (init && typeof ReadableStream !== "undefined" && init.body instanceof ReadableStream) {
        // A stream is read once: one branch goes out, the other is counted.
        const [out, counted] = init.body.tee();
        init = { ...init, body: out };
        sent = count(counted);
      } else {
        sent = bodySize(input, init);
      }
      const notes = pending.get(url) || [];
      notes.push({ method, sent, at: performance.now() });
      if (notes.length > KEEP) notes.shift();
      pending.set(url, notes);
      return original(input, init);
    };
  }

  function claim(url, startTime) {
    const notes = pending.get(url) || [];
    let best = -1;
    for (const [i, n] of notes.entries()) if (n.at <= startTime + 1 && (best < 0 || n.at > notes[best].at)) best = i;
    return best < 0 ? { method: "GET", sent: Promise.resolve(0) } : notes.splice(best, 1)[0];
  }

  // Row ids are unique across restarts of this global (a service worker is stopped when idle).
  const run = Math.random().toString(36).slice(2, 10);
  let seq = 0;
  const shown = (href) => {
    const url = new URL(href, self.location.href);
    return url.origin === here ? url.pathname + url.search : url.href;
  };
  // row = { id, by, method, url, sent, received, at }: body bytes (null: the browser does not
  // show them to scripts), at: ms since the epoch.
  const row = (by, method, href, sent, received, at = performance.timeOrigin + performance.now()) =>
    ({ id: `${by}:${run}:${++seq}`, by, method, url: shown(href), sent, received, at });

  // Calls `report(row)` for every request of this global that reached the network.
  function watch(by, report) {
    wrapFetch();
    let navigation = false;
    const seen = async (e) => {
      if (e.entryType === "navigation") {
        if (navigation) return; // queued again once the page has loaded
        navigation = true;
      }
      // Through the service worker (it reports its own request), or from the HTTP cache.
      if (e.workerStart > 0) return;
      if (e.transferSize === 0 && e.deliveryType === "cache" && new URL(e.name).origin === here) return;
      const fetched = e.initiatorType === "fetch" || e.initiatorType === "xmlhttprequest";
      const { method, sent } = fetched ? claim(e.name, e.startTime) : { method: "GET", sent: 0 };
      const bytes = await sent;
      // No answer at all (offline, refused): a request without a body carried nothing of note,
      // and the browser's log has it as failed, not sent. One with a body is listed all the same.
      if (e.responseStatus === 0 && bytes === 0 && new URL(e.name).origin === here) return;
      report(row(by, method, e.name, bytes, e.encodedBodySize, performance.timeOrigin + e.startTime));
    };
    const observe = (type) => {
      try {
        new PerformanceObserver((list) => list.getEntries().forEach(seen)).observe({ type, buffered: true });
      } catch { /* a global without this entry type (workers have no navigation) */ }
    };
    observe("navigation");
    observe("resource");
  }

  self.hearthEgress = { watch, row };
})();
