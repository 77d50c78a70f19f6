// The sync relay in workerd: a Durable Object per group on SQLite storage. A person's sealed
// envelopes are stored and handed back by position, pushed live over WebSockets, refused when
// malformed, oversized, for another group, over the group's quota or too fast, deleted after the
// TTL; and the relay's storage, scanned on disk, holds none of the history's plaintext.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startWorker } from "./worker.mjs";

const fixtures = new URL("../../../tests/fixtures/", import.meta.url);
// A real envelope: the fixture history's first sync message, sealed to group secret [9; 32]
// (tests/src/bin/write_fixtures.rs), and the history's plaintext document.
const envelope = readFileSync(new URL("sync-v1.envelope", fixtures));
const plaintext = readFileSync(new URL("history-v1.automerge", fixtures));
const GROUP = envelope.subarray(9, 25).toString("hex");
// Strings that the history's plaintext document holds as they are (automerge compresses the
// rest): the device's name and the profile's keys. None may be readable at the relay.
const SECRETS = ["fixture-phone", "locale", "age_band"];

// An envelope of `group` whose sealed part is `size` random bytes (the relay cannot tell).
const fake = (group, size) => Buffer.concat([Buffer.from("HRTHSYNC"), Buffer.from([1]), Buffer.from(group, "hex"), randomBytes(12 + size)]);
const groupId = () => randomBytes(16).toString("hex");

const persist = mkdtempSync(path.join(tmpdir(), "hearth-relay-"));
const LIMITS = { RELAY_MAX_ENVELOPE: "4096", RELAY_MAX_ENVELOPES: "50", RELAY_MAX_BYTES: "6000", RELAY_POSTS_PER_MINUTE: "10", RELAY_TTL_MS: "1500" };
let mf = startWorker({ bindings: LIMITS, persist });
after(async () => {
  await mf?.dispose();
  rmSync(persist, { recursive: true, force: true });
});
const url = (p) => `http://localhost${p}`;
const post = (group, body) => mf.dispatchFetch(url(`/v1/sync/${group}`), { method: "POST", body });
const since = async (group, n = 0) => {
  const res = await mf.dispatchFetch(url(`/v1/sync/${group}?since=${n}`));
  assert.equal(res.status, 200);
  const body = Buffer.from(await res.arrayBuffer());
  const out = [];
  for (let at = 0; at < body.length; ) {
    const seq = Number(body.readBigUInt64LE(at));
    const len = body.readUInt32LE(at + 8);
    out.push({ seq, bytes: body.subarray(at + 12, at + 12 + len) });
    at += 12 + len;
  }
  return { envelopes: out, next: Number(res.headers.get("x-hearth-next")) };
};
async function refused(res, status, code) {
  assert.equal(res.status, status, `${res.status} ${await res.clone().text()}`);
  assert.equal((await res.json()).error.code, code);
}

test("an envelope is stored and handed back by position, byte for byte", async () => {
  const first = await post(GROUP, envelope);
  assert.equal(first.status, 201, await first.clone().text());
  const { seq } = await first.json();
  const again = await (await post(GROUP, envelope)).json();
  assert.equal(again.seq, seq + 1);
  const all = await since(GROUP);
  assert.deepEqual(all.envelopes.map((e) => e.seq), [seq, seq + 1]);
  assert.ok(all.envelopes.every((e) => e.bytes.equals(envelope)));
  assert.equal(all.next, seq + 2);
  const later = await since(GROUP, seq + 1);
  assert.deepEqual(later.envelopes.map((e) => e.seq), [seq + 1]);
  assert.equal((await since(GROUP, seq + 2)).envelopes.length, 0);
});

test("malformed, oversized, wrong-group, bad ids, over quota and too fast are typed refusals", async () => {
  await refused(await post(GROUP, Buffer.from("not an envelope at all, just some bytes here")), 400, "malformed");
  await refused(await post(groupId(), envelope), 400, "wrong_group");
  await refused(await post(GROUP.toUpperCase(), envelope), 400, "malformed");
  await refused(await post("abc", envelope), 400, "malformed");
  await refused(await post(GROUP, fake(GROUP, 5000)), 413, "too_large");
  // Quota: 6,000 bytes a group; 2,537-byte envelopes: two fit, the third does not.
  const full = groupId();
  for (let i = 0; i < 2; i++) assert.equal((await post(full, fake(full, 2500))).status, 201);
  await refused(await post(full, fake(full, 2500)), 413, "over_quota");
  // Rate: 10 posts a minute a group.
  const busy = groupId();
  for (let i = 0; i < 10; i++) assert.equal((await post(busy, fake(busy, 10))).status, 201, `post ${i}`);
  await refused(await post(busy, fake(busy, 10)), 429, "rate_limited");
  await refused(await mf.dispatchFetch(url(`/v1/sync/${GROUP}?since=x`)), 400, "malformed");
  await refused(await mf.dispatchFetch(url(`/v1/sync/${GROUP}/live`)), 426, "upgrade_required");
});

test("one address may start only so many groups a minute; posting to a group it started is not limited by that", async () => {
  const tight = startWorker({ bindings: LIMITS, ratelimits: { NEW_GROUP_LIMIT: { namespace_id: "3003", simple: { limit: 2, period: 60 } } } });
  try {
    const send = (group, headers = {}) => tight.dispatchFetch(url(`/v1/sync/${group}`), { method: "POST", body: fake(group, 10), headers });
    const [a, b, c] = [groupId(), groupId(), groupId()];
    assert.equal((await send(a)).status, 201);
    assert.equal((await send(b)).status, 201);
    assert.equal((await send(a)).status, 201, "a group it started takes more");
    // A made-up address header changes nothing: the worker sets it.
    await refused(await send(c, { "x-hearth-client": "203.0.113.9" }), 429, "too_many_groups");
  } finally {
    await tight.dispose();
  }
});

test("live: a WebSocket gets what others post, over HTTP or over another socket", async () => {
  const group = groupId();
  const open = async () => {
    const res = await mf.dispatchFetch(url(`/v1/sync/${group}/live`), { headers: { Upgrade: "websocket" } });
    assert.equal(res.status, 101);
    const ws = res.webSocket;
    ws.accept();
    const inbox = [];
    ws.addEventListener("message", (e) => inbox.push(e.data));
    return { ws, inbox };
  };
  const a = await open();
  const b = await open();
  const wait = async (cond) => {
    for (let i = 0; i < 100 && !cond(); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(cond(), "timed out");
  };
  const one = fake(group, 100);
  const res = await post(group, one);
  assert.equal(res.status, 201);
  await wait(() => a.inbox.length === 1 && b.inbox.length === 1);
  for (const s of [a, b]) {
    const frame = Buffer.from(s.inbox[0]);
    assert.ok(frame.subarray(12).equals(one), "the posted envelope, framed");
  }
  const two = fake(group, 50);
  a.ws.send(two);
  await wait(() => a.inbox.length === 2 && b.inbox.length === 2);
  assert.equal(JSON.parse(a.inbox[1]).seq, 2, "the sender gets its envelope's position");
  assert.ok(Buffer.from(b.inbox[1]).subarray(12).equals(two), "the other socket gets the envelope");
  a.ws.send(fake(groupId(), 10));
  await wait(() => a.inbox.length === 3);
  assert.equal(JSON.parse(a.inbox[2]).error.code, "wrong_group");
  a.ws.close(1000, "done");
  b.ws.close(1000, "done");
  assert.equal((await since(group)).envelopes.length, 2);
});

test("envelopes are deleted by the alarm once older than the TTL", async () => {
  const group = groupId();
  assert.equal((await post(group, fake(group, 20))).status, 201);
  assert.equal((await since(group)).envelopes.length, 1);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal((await since(group)).envelopes.length, 0);
});

test("the relay's storage on disk holds the sealed envelopes and none of the history's plaintext", async () => {
  // The strings are in the history itself: the scan below would find them if they leaked.
  for (const s of SECRETS) assert.ok(plaintext.includes(s), `the fixture history holds ${s}`);
  assert.equal((await post(GROUP, envelope)).status, 201);
  await mf.dispose(); // flush the objects' SQLite files
  mf = undefined;
  const files = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const p = path.join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(persist);
  assert.ok(files.length > 0, "the Durable Objects' storage is on disk");
  const stored = Buffer.concat(files.map((f) => readFileSync(f)));
  assert.ok(stored.includes(envelope.subarray(40, 120)), "the scan reads the relay's storage (the sealed envelope is in it)");
  for (const s of SECRETS) assert.ok(!stored.includes(Buffer.from(s)), `${s} readable in the relay's storage`);
});
