// Entry module for workerd: instantiate the wasm-bindgen output synchronously (workerd gives a
// compiled WebAssembly.Module for a .wasm import) and hand requests to the Rust `fetch`.
import wasmModule from "./hearth_edge_bg.wasm";
import * as worker from "./hearth_edge.js";

worker.initSync({ module: wasmModule });

export default {
  fetch(request, env, ctx) {
    return worker.fetch(request, env, ctx);
  },
};
