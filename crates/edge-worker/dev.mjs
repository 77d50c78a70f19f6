// Runs the edge worker locally in workerd (Miniflare) for the main job (.ci/main): on
// 127.0.0.1:--port, its R2, KV, cache and Durable Objects kept under --persist, forwarding round
// traffic to --aggregator, taking publications with the token in $HEARTH_EDGE_TOKEN. Prints its
// URL once it answers; Ctrl-C (or SIGTERM) stops it.
import { parseArgs } from "node:util";
import { startWorker } from "./tests/worker.mjs";

const { values } = parseArgs({ options: { port: { type: "string", default: "8787" }, persist: { type: "string", default: "data/edge" }, aggregator: { type: "string", default: "http://127.0.0.1:8090" } } });
const token = process.env.HEARTH_EDGE_TOKEN;
if (!token) {
  console.error("set HEARTH_EDGE_TOKEN: the token publish-edge will present");
  process.exit(2);
}
const mf = startWorker({ bindings: { PUBLISH_TOKEN: token, AGGREGATOR_URL: values.aggregator }, listen: true, port: Number(values.port), persistAll: values.persist });
const url = await mf.ready;
console.log(`edge worker: ${url.href}health (data in ${values.persist})`);
const stop = async () => {
  await mf.dispose();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
