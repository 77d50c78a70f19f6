// Update intake in workerd, in front of a real aggregator that this test starts (the native
// `hearth-aggregator serve` on 127.0.0.1, SQLite in a temporary directory): malformed, oversized
// and other-version messages are refused at the edge, well-formed ones reach the aggregator and
// its typed answers come back unchanged, a device past its rate gets 429; and `hearth-aggregator
// simulate` runs a whole round through the edge (enrollment, plan, model files from the edge's
// R2, the four SecAgg+ stages) and the aggregator publishes the next version.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { aggregatorBin, startWorker } from "./worker.mjs";

const root = new URL("../../../", import.meta.url).pathname;
const ml100k = process.env.HEARTH_ML100K ?? path.join(root, "../shared/data/movielens-100k");
const TOKEN = "intake-test-token";
const DEVICES = 12;
const RATE = 6; // messages a minute per device (address, round and index) at the edge

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });

const dir = mkdtempSync(path.join(tmpdir(), "hearth-intake-"));
let server;
let aggregatorUrl;
let mf;
let edgeUrl;

before(async () => {
  assert.ok(existsSync(aggregatorBin), `${aggregatorBin}: build it first (cargo test --workspace builds it)`);
  const port = await freePort();
  aggregatorUrl = `http://127.0.0.1:${port}`;
  writeFileSync(
    path.join(dir, "aggregator.toml"),
    [
      `listen = "127.0.0.1:${port}"`,
      `data_dir = "${path.join(dir, "data")}"`,
      `model = "${path.join(root, "models/ml100k")}"`,
      `backend = "cpu"`,
      "[round]",
      `devices_per_round = ${DEVICES}`,
      `min_devices = ${DEVICES}`,
      "min_survivors = 6",
      "stage_timeout_ms = 30000",
      "seed = 3",
    ].join("\n"),
  );
  server = spawn(aggregatorBin, ["serve", "--config", path.join(dir, "aggregator.toml"), "--rounds", "1"], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  server.stderr.on("data", (d) => (log += d));
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${aggregatorUrl}/health`)).ok) break;
    } catch {}
    assert.ok(i < 300 && server.exitCode === null, `the aggregator did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  mf = startWorker({ bindings: { PUBLISH_TOKEN: TOKEN, AGGREGATOR_URL: aggregatorUrl }, listen: true, ratelimits: { INTAKE_LIMIT: { namespace_id: "1001", simple: { limit: RATE, period: 60 } } } });
  edgeUrl = (await mf.ready).href.replace(/\/$/, "");
  // The aggregator's v1 at the edge, from its own model store.
  await promisify(execFile)(aggregatorBin, ["publish-edge", "--edge", edgeUrl, "--store", path.join(dir, "data/models")], { env: { ...process.env, HEARTH_EDGE_TOKEN: TOKEN } });
});

after(async () => {
  server?.kill("SIGKILL");
  await mf?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

// An Advertise message as the wire format lays it out (core::secagg::wire): magic, version,
// kind 1, round id, index (u32 LE), two public keys, a 64-byte signature (here not a valid one).
const advertise = ({ version = 1, index = 0 } = {}) => {
  const i = Buffer.alloc(4);
  i.writeUInt32LE(index);
  return Buffer.concat([Buffer.from("HRTHSAGG"), Buffer.from([version, 1]), Buffer.alloc(16, 7), i, Buffer.alloc(64, 1), Buffer.alloc(64, 2)]);
};
const submit = (round, body) => fetch(`${edgeUrl}/v1/rounds/${round}/messages`, { method: "POST", body });
async function refused(res, status, code) {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.equal(JSON.parse(text).error.code, code, text);
}

test("bad messages are refused at the edge with the aggregator's codes", async () => {
  await refused(await submit(99, Buffer.from("not a message")), 400, "malformed");
  await refused(await submit(99, advertise({ version: 2 })), 400, "unsupported_version");
  await refused(await submit(99, advertise().subarray(0, 100)), 400, "malformed");
  await refused(await submit("x", advertise()), 400, "malformed");
});

test("well-formed messages reach the aggregator, whose typed answer comes back; past its rate a device gets 429", async () => {
  for (let i = 0; i < RATE; i++) await refused(await submit(99, advertise({ index: 5 })), 404, "no_round");
  await refused(await submit(99, advertise({ index: 5 })), 429, "rate_limited");
  // Another device (another place in the round) is not limited by that one.
  await refused(await submit(99, advertise({ index: 6 })), 404, "no_round");
  // Reads are forwarded too.
  const res = await fetch(`${edgeUrl}/v1/rounds/99/plan`);
  await refused(res, 404, "no_round");
});

test("one address cycling through devices' places is limited per address; a chunked body past the limit is refused while read", async () => {
  const tight = startWorker({ bindings: { AGGREGATOR_URL: aggregatorUrl, INTAKE_MAX_MESSAGE: "1000" }, ratelimits: { CLIENT_LIMIT: { namespace_id: "2002", simple: { limit: 5, period: 60 } } } });
  try {
    const send = (body, headers = {}) => tight.dispatchFetch("http://localhost/v1/rounds/99/messages", { method: "POST", body, headers, duplex: "half" });
    for (let index = 0; index < 4; index++) await refused(await send(advertise({ index })), 404, "no_round");
    // No length header: the body arrives in chunks and is refused once past 1,000 bytes.
    const chunks = new ReadableStream({
      start(c) {
        for (let i = 0; i < 4; i++) c.enqueue(new Uint8Array(600));
        c.close();
      },
    });
    await refused(await send(chunks), 413, "too_large");
    await refused(await send(advertise({ index: 9 })), 429, "rate_limited");
  } finally {
    await tight.dispose();
  }
});

test("a whole round through the edge: the devices enroll, train and send their four messages, the aggregator publishes v2", async () => {
  const { stdout } = await promisify(execFile)(
    aggregatorBin,
    ["simulate", "--server", edgeUrl, "--devices", String(DEVICES), "--rounds", "1", "--data", ml100k, "--model", path.join(root, "models/ml100k"), "--seed", "3", "--json", "--plot", path.join(dir, "plot.svg"), "--backend", "cpu"],
    { maxBuffer: 1 << 24, timeout: 240_000 },
  );
  const report = JSON.parse(stdout);
  assert.equal(report.rounds.length, 1);
  const [round] = report.rounds;
  assert.equal(round.status, "done", JSON.stringify(round));
  assert.equal(round.survivors, DEVICES);
  assert.equal(round.published, 2);
  // The aggregator itself says so.
  assert.equal((await (await fetch(`${aggregatorUrl}/v1/models/latest`)).json()).version, 2);
  // Every device message went through the edge: 4 per device.
  const messages = report.by_kind.find((k) => k.kind === "message");
  assert.equal(messages.count, 4 * DEVICES);
});
