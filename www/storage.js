// The person's sealed history in IndexedDB, in two generations. Which bytes go where is decided by
// core's rule (Hearth.savePlan, core::person::store::plan_save), not here: this file writes the
// plan's two generations in one transaction (atomic), reads the current one back, and only then
// drops the previous one. Nothing here is plaintext: the page stores only sealed bytes (AES-256-GCM).
//
// A failed write leaves both stored generations as they were (the transaction aborts whole) and
// is reported as a `StorageError` with a code the page explains: `quota` when the browser refuses
// more data for this site, `storage` when the write itself failed (Chromium reports a full disk as
// an IO error and then closes every connection of the origin; the next call reopens one).
const DB = "hearth";
const STORE = "vault";

function request(r) {
  return new Promise((ok, fail) => {
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });
}

function done(tx) {
  return new Promise((ok, fail) => {
    tx.oncomplete = () => ok();
    tx.onabort = () => fail(tx.error || new DOMException("transaction aborted", "AbortError"));
    tx.onerror = () => fail(tx.error);
  });
}

let dbPromise = null;
function db() {
  if (dbPromise) return dbPromise;
  const opening = new Promise((ok, fail) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore(STORE);
    r.onsuccess = () => {
      const d = r.result;
      const forget = () => { if (dbPromise === opening) dbPromise = null; };
      // The browser closed the connection (an IO error, the site's data cleared): reopen next time.
      d.onclose = forget;
      // Another tab upgrades the database: let it.
      d.onversionchange = () => { d.close(); forget(); };
      ok(d);
    };
    r.onerror = () => fail(r.error);
  });
  dbPromise = opening;
  opening.catch(() => { if (dbPromise === opening) dbPromise = null; });
  return opening;
}

/** Runs `fn(db)`, reopening the connection once if the browser closed it under us. */
async function withDb(fn) {
  try {
    return await fn(await db());
  } catch (e) {
    if (e?.name !== "InvalidStateError") throw e;
    dbPromise = null;
    return fn(await db());
  }
}

/** Thrown when a save fails; the stored generations are untouched. */
export class StorageError extends Error {
  constructor(code, cause) {
    super(code === "quota" ? "this browser's storage for the page is full" : `the browser could not write its storage: ${cause?.name || ""} ${cause?.message || cause || ""}`.trim());
    this.code = code;
    this.cause = cause;
  }
}

function storageError(e) {
  if (e instanceof StorageError) return e;
  if (e?.name === "QuotaExceededError" || e?.code === 22) return new StorageError("quota", e);
  return new StorageError("storage", e);
}

/** `{ current, previous }` as Uint8Arrays (or null). */
export async function load() {
  return withDb(async (d) => {
    const s = d.transaction(STORE, "readonly").objectStore(STORE);
    const [current, previous] = await Promise.all([request(s.get("current")), request(s.get("previous"))]);
    return { current: current ? new Uint8Array(current) : null, previous: previous ? new Uint8Array(previous) : null };
  });
}

/** A random device name, kept with the vault (not secret). When the browser refuses to store a
 * new one, it is still returned; every save stores it too. */
export async function deviceName() {
  return withDb(async (d) => {
    const found = await request(d.transaction(STORE, "readonly").objectStore(STORE).get("device"));
    if (found) return found;
    const name = `browser-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`;
    try {
      const tx = d.transaction(STORE, "readwrite");
      tx.objectStore(STORE).put(name, "device");
      await done(tx);
    } catch {
      // Storage is full: the first save that succeeds stores it.
    }
    return name;
  });
}

/** Saves through `planFor(current, previous)` (the stored generations as Uint8Arrays or null ->
 * `{ current, previous }`, i.e. `Hearth.savePlan`): read and write happen in one transaction, so
 * the plan is made over exactly what it replaces; then, once the current generation reads back
 * intact, the previous one is dropped. Throws a `StorageError` (stored generations as they were)
 * when the browser refuses the write, or the plan's own error (e.g. `wrong-key`), writing nothing. */
export async function save(planFor, device) {
  const buf = (b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  let bytes = null;
  try {
    await withDb(async (d) => {
      const tx = d.transaction(STORE, "readwrite");
      const s = tx.objectStore(STORE);
      const [current, previous] = await Promise.all([request(s.get("current")), request(s.get("previous"))]);
      let plan;
      try {
        plan = planFor(current ? new Uint8Array(current) : null, previous ? new Uint8Array(previous) : null);
      } catch (e) {
        tx.abort();
        throw Object.assign(e, { fromPlan: true });
      }
      bytes = plan.current;
      if (plan.previous) s.put(buf(plan.previous), "previous");
      else s.delete("previous");
      s.put(buf(bytes), "current");
      if (device) s.put(device, "device");
      await done(tx);
    });
    await withDb(async (d) => {
      const back = new Uint8Array(await request(d.transaction(STORE, "readonly").objectStore(STORE).get("current")));
      if (back.length !== bytes.length || back.some((b, i) => b !== bytes[i])) throw new StorageError("storage", new Error("the saved history did not read back"));
      const tx = d.transaction(STORE, "readwrite");
      tx.objectStore(STORE).delete("previous");
      await done(tx);
    });
  } catch (e) {
    if (e?.fromPlan) throw e;
    throw storageError(e);
  }
}

/** Deletes both generations (the device name stays). */
export async function clear() {
  return withDb(async (d) => {
    const tx = d.transaction(STORE, "readwrite");
    tx.objectStore(STORE).delete("current");
    tx.objectStore(STORE).delete("previous");
    await done(tx);
  });
}
