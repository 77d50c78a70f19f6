// Opens a hearth history saved by the Rust core (after the vault unsealed it) with the official
// JavaScript automerge, and checks it holds exactly the events the Rust side listed.
// Usage: node tests/js/automerge_interop.mjs <doc.automerge> <events.json>
import { readFileSync } from "node:fs";
import * as A from "@automerge/automerge";

const [docPath, eventsPath] = process.argv.slice(2);
const doc = A.load(new Uint8Array(readFileSync(docPath)));
const want = JSON.parse(readFileSync(eventsPath, "utf8"));

const fail = (msg) => { console.error(`interop: ${msg}`); process.exit(1); };
// Scalar strings written by Rust arrive as ImmutableString: normalise.
const str = (v) => (v === undefined ? v : String(v));
if (str(doc.format) !== "hearth-history" || Number(doc.version) !== 1) fail(`format ${doc.format} v${doc.version}`);

// Each event is one JSON text value (see crates/core/src/person/history.rs).
const got = Object.keys(doc).filter((k) => k.startsWith("e:")).sort().map((id) => {
  const e = JSON.parse(str(doc[id]));
  const context = e.ctx ?? {};
  const out = { id, item: e.item, kind: e.kind, ts: e.ts, device: e.device, context };
  if (e.value !== undefined) out.value = e.value;
  if (e.hour !== undefined) out.hour = e.hour;
  return out;
});
const norm = (xs) => JSON.stringify(xs.map((e) => Object.fromEntries(Object.entries(e).sort())));
if (norm(got) !== norm(want)) fail(`events differ:\n got  ${norm(got)}\n want ${norm(want)}`);
console.log(`interop: ${got.length} events read by @automerge/automerge ${A.stats ? "3" : ""}`.trim());
