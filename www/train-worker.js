// The training worker: loads hearth's second wasm module (burn, WebGPU or CPU) only when the page
// has training to do, and fine-tunes the person's embedding on their own positives. Its input
// (the catalog the page already has, the tower's vector, the positives' indices) and its output
// (the tuned vector, the loss per step) stay on this device; the page seals the result.
import init, { fineTune } from "/pkg/hearth_train.js";
import "/egress.js";

// This worker's own network requests (the module and its wasm, when no service worker fetched
// them for it) go to the page's "What left this device" panel.
self.hearthEgress.watch("training worker", (row) => self.postMessage({ egress: row }));

let ready = null;
self.onmessage = async ({ data }) => {
  try {
    ready ??= init();
    await ready;
    let backend = data.backend;
    if (backend === "auto") backend = self.navigator.gpu && (await self.navigator.gpu.requestAdapter()) ? "webgpu" : "cpu";
    const result = await fineTune(data.shard, data.start, data.positives, { backend, steps: data.steps, seed: data.seed, link: data.link });
    self.postMessage({ ok: true, id: data.id, ...result });
  } catch (e) {
    self.postMessage({ ok: false, id: data.id, message: String(e?.message || e) });
  }
};
