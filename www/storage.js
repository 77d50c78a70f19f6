// The person's sealed history in IndexedDB, in two generations like core::store: a save moves
// the current generation to "previous" and writes the new one in one transaction (atomic), reads
// it back, and only then drops the previous one. Nothing here is plaintext: the page stores only
// what Hearth.sealed() returns (AES-256-GCM).
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
  dbPromise ??= new Promise((ok, fail) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore(STORE);
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });
  return dbPromise;
}

/** `{ current, previous }` as Uint8Arrays (or null). */
export async function load() {
  const tx = (await db()).transaction(STORE, "readonly");
  const s = tx.objectStore(STORE);
  const [current, previous] = await Promise.all([request(s.get("current")), request(s.get("previous"))]);
  return { current: current ? new Uint8Array(current) : null, previous: previous ? new Uint8Array(previous) : null };
}

/** A random device name, kept with the vault (not secret). */
export async function deviceName() {
  const d = await db();
  const found = await request(d.transaction(STORE, "readonly").objectStore(STORE).get("device"));
  if (found) return found;
  const name = `browser-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`;
  const tx = d.transaction(STORE, "readwrite");
  tx.objectStore(STORE).put(name, "device");
  await done(tx);
  return name;
}

/** Thrown when the browser refuses to store more: the stored generations are untouched. */
export class QuotaError extends Error {
  constructor() {
    super("this browser's storage for the page is full");
    this.code = "quota";
  }
}

/** Stores a new generation; the old one stays until the new one reads back intact. */
export async function save(bytes) {
  const d = await db();
  try {
    const tx = d.transaction(STORE, "readwrite");
    const s = tx.objectStore(STORE);
    const old = await request(s.get("current"));
    if (old) s.put(old, "previous");
    s.put(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength), "current");
    await done(tx);
  } catch (e) {
    if (e && (e.name === "QuotaExceededError" || e.code === 22)) throw new QuotaError();
    throw e;
  }
  const back = new Uint8Array(await request(d.transaction(STORE, "readonly").objectStore(STORE).get("current")));
  if (back.length !== bytes.length || back.some((b, i) => b !== bytes[i])) throw new Error("the saved history did not read back");
  const tx = d.transaction(STORE, "readwrite");
  tx.objectStore(STORE).delete("previous");
  await done(tx);
}

/** Deletes both generations (the device name stays). */
export async function clear() {
  const tx = (await db()).transaction(STORE, "readwrite");
  tx.objectStore(STORE).delete("current");
  tx.objectStore(STORE).delete("previous");
  await done(tx);
}
